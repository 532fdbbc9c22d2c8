//! The delivery engine: webhook push with signed, retried, leased attempts. It runs as
//! tokio tasks on the storage thread, with its own PostgreSQL connection.
//!
//! Work arrives two ways. Events committed for an organisation with a webhook are
//! handed over by the batch writer right after the commit (no polling delay); the
//! database is the fallback and the record: every `poll_interval` the engine claims
//! due attempts (first attempts it was not handed, retries whose time has come, leases
//! of a dead process that expired). Each attempt is claimed with a lease
//! (`FOR UPDATE SKIP LOCKED`), so two processes on one database attempt it once.
//!
//! Isolation: at most `per_org_max` attempts of one organisation are in flight (a
//! saturated organisation is excluded from claims), and at most `in_flight_max` in
//! all, so a slow or dead receiver holds a few slots, never the engine.

pub mod client;
pub mod guard;
pub mod metrics;
pub mod schedule;
pub mod scheduler;
pub mod signing;
pub mod store;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ahash::AHashMap;
use hyper::body::Bytes;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use crate::storage::pg::{Db, LazyConnection, Prepared};
use crate::util::json::ObjectWriter;
use crate::util::time::unix_micros;
use client::WebhookClient;
use metrics::DeliveryMetrics;
use schedule::{Decision, RetrySchedule};
use store::{Claimed, DeliveryStatements, Record};

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub schedule: RetrySchedule,
    /// Deliver to loopback and private addresses (local development, tests).
    pub allow_private: bool,
    /// Whole-attempt timeout (connect, TLS, request, response).
    pub timeout: Duration,
    /// How long a claimed attempt stays leased; longer than `timeout`.
    pub lease: Duration,
    pub in_flight_max: usize,
    pub per_org_max: usize,
    /// How often due attempts are claimed from the database.
    pub poll_interval: Duration,
}

/// Shared with the main thread for shutdown: stop claiming, and how many attempts are
/// still in flight.
#[derive(Debug, Default)]
pub struct DeliveryControl {
    pub stop: std::sync::atomic::AtomicBool,
    pub in_flight: std::sync::atomic::AtomicUsize,
}

/// Attempts claimed per database round trip at most.
const CLAIM_BATCH_MAX: usize = 256;
/// Least time between two claims of due attempts. A claim skips saturated
/// organisations by filtering, so with a large backlog it reads past their due rows:
/// completions may ask for a claim, but not more often than this.
const CLAIM_SPACING_MIN: Duration = Duration::from_millis(100);
/// How often the due-queue gauges are refreshed.
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// Handed-over batches waiting for the engine; beyond it the writer drops the hand-off
/// and the poller finds those events (they are already due in the database).
pub const HANDOFF_QUEUE_MAX: usize = 256;

pub struct Engine {
    /// This process's lease owner id.
    owner: Uuid,
    config: DeliveryConfig,
    client: WebhookClient,
    /// The engine's own connection (claims and outcomes), reopened when it closes.
    connection: LazyConnection<DeliveryStatements>,
    in_flight: Cell<usize>,
    /// In-flight attempts per organisation; entries leave at zero.
    per_org: RefCell<AHashMap<Uuid, usize>>,
    /// Set when a claim was cut short by a limit: completions then wake the poller.
    backlog: Cell<bool>,
    /// When the last claim of due attempts ran.
    last_claim: Cell<Instant>,
    wake: Notify,
    metrics: Arc<DeliveryMetrics>,
    control: Arc<DeliveryControl>,
    jitter_state: Cell<u64>,
}

fn now_micros() -> i64 {
    unix_micros(SystemTime::now())
}

/// Header-safe rendering of an event type: visible ASCII kept, other bytes %-encoded.
fn header_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The webhook body: `{"event_id", "type", "payload", "created_at"}`.
pub fn delivery_body(claimed: &Claimed) -> Vec<u8> {
    let mut body = Vec::with_capacity(claimed.payload.len() + 160);
    ObjectWriter::new(&mut body)
        .uuid("event_id", &claimed.id)
        .str("type", &claimed.event_type)
        .raw("payload", &claimed.payload)
        .time("created_at", claimed.created_at_micros)
        .finish();
    body
}

impl Engine {
    pub fn new(
        db: Rc<Db>,
        config: DeliveryConfig,
        metrics: Arc<DeliveryMetrics>,
        control: Arc<DeliveryControl>,
    ) -> Rc<Engine> {
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        Rc::new(Engine {
            connection: LazyConnection::new(db),
            owner: Uuid::now_v7(),
            client: WebhookClient::new(config.allow_private, config.timeout),
            config,
            in_flight: Cell::new(0),
            per_org: RefCell::default(),
            backlog: Cell::new(false),
            last_claim: Cell::new(Instant::now()),
            wake: Notify::new(),
            metrics,
            control,
            jitter_state: Cell::new(u64::from_le_bytes(seed) | 1),
        })
    }

    /// Uniform in [-1, 1] (xorshift; jitter needs no cryptographic quality).
    fn jitter(&self) -> f64 {
        let mut x = self.jitter_state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    async fn connection(&self) -> Result<Rc<Prepared<DeliveryStatements>>, tokio_postgres::Error> {
        self.connection.get().await
    }

    /// Runs until the hand-off channel closes (the process ends).
    pub async fn run(self: Rc<Self>, mut handed: mpsc::Receiver<Vec<(Uuid, Uuid)>>) {
        let mut next_poll = tokio::time::Instant::now();
        let mut next_stats = Instant::now();
        loop {
            tokio::select! {
                batch = handed.recv() => match batch {
                    Some(events) => self.claim_handed(events).await,
                    None => return,
                },
                _ = self.wake.notified() => {
                    let spacing = CLAIM_SPACING_MIN.min(self.config.poll_interval);
                    let next = self.last_claim.get() + spacing;
                    if Instant::now() < next {
                        // Too soon: the timer claims at `next` instead.
                        next_poll = next_poll.min(tokio::time::Instant::from_std(next));
                    } else {
                        self.poll_due().await;
                    }
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    self.poll_due().await;
                    next_poll = tokio::time::Instant::now() + self.config.poll_interval;
                }
            }
            if Instant::now() >= next_stats {
                self.refresh_stats().await;
                next_stats = Instant::now() + STATS_INTERVAL;
            }
        }
    }

    /// Attempts that may be claimed now (none once shutdown began).
    fn room(&self) -> usize {
        if self.control.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return 0;
        }
        self.config.in_flight_max.saturating_sub(self.in_flight.get()).min(CLAIM_BATCH_MAX)
    }

    fn set_in_flight(&self, n: usize) {
        self.in_flight.set(n);
        self.control.in_flight.store(n, std::sync::atomic::Ordering::Release);
    }

    fn saturated_orgs(&self) -> Vec<Uuid> {
        let per_org = self.per_org.borrow();
        per_org.iter().filter(|(_, &n)| n >= self.config.per_org_max).map(|(org, _)| *org).collect()
    }

    async fn claim_handed(self: &Rc<Self>, mut events: Vec<(Uuid, Uuid)>) {
        {
            let per_org = self.per_org.borrow();
            events.retain(|(org, _)| per_org.get(org).copied().unwrap_or(0) < self.config.per_org_max);
        }
        events.truncate(self.room());
        if events.is_empty() {
            // Left for the poller: they are due in the database.
            self.backlog.set(true);
            return;
        }
        let claimed = match self.connection().await {
            Ok(c) => {
                let lease_ms = self.config.lease.as_millis() as i64;
                store::claim_ids(&c.client, &c.statements, self.owner, now_micros(), lease_ms, &events).await
            }
            Err(e) => Err(e),
        };
        match claimed {
            Ok(claimed) => claimed.into_iter().for_each(|c| self.start(c)),
            Err(e) => {
                tracing::warn!(error = %e, "claiming handed-over deliveries failed; the poller will retry")
            }
        }
    }

    async fn poll_due(self: &Rc<Self>) {
        self.last_claim.set(Instant::now());
        let room = self.room();
        if room == 0 {
            self.backlog.set(true);
            return;
        }
        let connection = match self.connection().await {
            Ok(connection) => connection,
            Err(e) => {
                tracing::warn!(error = %e, "delivery engine cannot reach the database");
                return;
            }
        };
        let lease_ms = self.config.lease.as_millis() as i64;
        let excluded = self.saturated_orgs();
        let claimed = store::claim_due(
            &connection.client,
            &connection.statements,
            self.owner,
            now_micros(),
            lease_ms,
            room as i64,
            self.config.per_org_max as i64,
            &excluded,
        )
        .await;
        match claimed {
            Ok(claimed) => {
                let full = claimed.len() == room;
                claimed.into_iter().for_each(|c| self.start(c));
                self.backlog.set(full);
                if full {
                    self.wake.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "claiming due deliveries failed"),
        }
    }

    /// Starts one attempt, or gives it back if its organisation is at its limit.
    fn start(self: &Rc<Self>, claimed: Claimed) {
        let org_id = claimed.org_id;
        let admitted = {
            let mut per_org = self.per_org.borrow_mut();
            let count = per_org.entry(org_id).or_default();
            if *count < self.config.per_org_max {
                *count += 1;
                true
            } else {
                false
            }
        };
        let engine = Rc::clone(self);
        if !admitted {
            tokio::task::spawn_local(async move {
                if let Ok(c) = engine.connection().await {
                    let _ =
                        store::release(&c.client, &c.statements, engine.owner, claimed.org_id, claimed.id)
                            .await;
                }
            });
            self.backlog.set(true);
            return;
        }
        self.set_in_flight(self.in_flight.get() + 1);
        tokio::task::spawn_local(async move {
            engine.deliver(claimed).await;
            engine.set_in_flight(engine.in_flight.get() - 1);
            let mut per_org = engine.per_org.borrow_mut();
            if let Some(count) = per_org.get_mut(&org_id) {
                *count -= 1;
                if *count == 0 {
                    per_org.remove(&org_id);
                }
            }
            drop(per_org);
            if engine.backlog.get() {
                engine.wake.notify_one();
            }
        });
    }

    /// One attempt, start to record.
    async fn deliver(&self, claimed: Claimed) {
        let record = match claimed.webhook_url.as_deref() {
            None => Record::PushOff,
            Some(url) => {
                let body = delivery_body(&claimed);
                let timestamp = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let id = claimed.id.to_string();
                let headers = [
                    ("content-type", "application/json".to_string()),
                    ("user-agent", concat!("triggerd/", env!("CARGO_PKG_VERSION")).to_string()),
                    ("x-event-id", id.clone()),
                    ("x-event-type", header_safe(&claimed.event_type)),
                    ("webhook-id", id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signing::sign(&claimed.signing_secret, &id, timestamp, &body)),
                ];
                let started = Instant::now();
                let result = self.client.post(url, &headers, Bytes::from(body)).await;
                self.metrics.latency.observe_duration(started.elapsed());
                match self.config.schedule.decide(claimed.attempts.max(0) as u32, &result, self.jitter()) {
                    Decision::Delivered => Record::Delivered,
                    // Rounded up to whole ms: a receiver's Retry-After is a floor.
                    Decision::Retry { delay, error } => {
                        Record::Retry { delay_ms: delay.as_nanos().div_ceil(1_000_000) as i64, error }
                    }
                    Decision::Failed { error } => Record::Failed { error },
                    Decision::Gone => Record::Gone,
                }
            }
        };
        self.metrics.outcome(&record);
        let written = match self.connection().await {
            Ok(c) => {
                store::record(
                    &c.client,
                    &c.statements,
                    self.owner,
                    now_micros(),
                    claimed.org_id,
                    claimed.id,
                    &record,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match written {
            Ok(true) => {}
            Ok(false) => tracing::warn!(event = %claimed.id, "lease lost before the outcome was recorded"),
            // The lease expires and the attempt is made again: at-least-once.
            Err(e) => tracing::warn!(event = %claimed.id, error = %e, "recording a delivery outcome failed"),
        }
    }

    async fn refresh_stats(&self) {
        let Ok(c) = self.connection().await else { return };
        if let Ok((due, oldest_micros)) = store::due_stats(&c.client, &c.statements, now_micros()).await {
            self.metrics.set_due(due.max(0) as u64, oldest_micros.max(0) as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_made_header_safe() {
        assert_eq!(header_safe("order.created"), "order.created");
        assert_eq!(header_safe("a b\r\nc%é"), "a%20b%0D%0Ac%25%C3%A9");
    }

    #[test]
    fn body_carries_the_contract_fields() {
        let claimed = Claimed {
            org_id: Uuid::nil(),
            id: Uuid::from_u128(1),
            event_type: "t\"x".into(),
            payload: r#"{"n": 1.50}"#.into(),
            created_at_micros: 0,
            attempts: 0,
            webhook_url: None,
            signing_secret: String::new(),
        };
        assert_eq!(
            String::from_utf8(delivery_body(&claimed)).unwrap(),
            r#"{"event_id":"00000000-0000-0000-0000-000000000001","type":"t\"x","payload":{"n": 1.50},"created_at":"1970-01-01T00:00:00.000000Z"}"#
        );
    }
}
