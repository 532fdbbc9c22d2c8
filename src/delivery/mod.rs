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
//! all, so a slow or dead receiver holds a few slots, never the engine. When an
//! organisation's attempts finish while it has more due, the engine claims for it
//! again at once (`scheduler::Scheduler::org_claim`), not at the next poll.
//!
//! Outcomes are written in batches: an attempt that ends queues its outcome, and one
//! writer task writes whatever is queued in one statement (one commit) while the next
//! batch fills. An attempt's slot is freed when the receiver answers; its event stays
//! leased until the outcome is written, so no claim takes it meanwhile.
//!
//! Prefetch: an organisation at its limit keeps up to a few rounds of `per_org_max`
//! more claimed attempts ready (leased, not started; as many rounds as the lease
//! outlasts, `scheduler::prefetch_rounds`); each starts in the slot the moment an
//! attempt of its organisation is answered, in the same task, so a slot does not wait
//! for a claim round trip. Shutdown gives their leases back.
//!
//! The decisions (limits, claim times, the backlog, which attempts start) live in
//! [`scheduler`], a plain struct that takes `now`; the `Engine` here is its I/O: the
//! loop, the SQL and the tasks.

mod client;
mod guard;
pub(crate) mod metrics;
pub(crate) mod schedule;
mod scheduler;
mod signing;
pub mod store;

use std::cell::{Cell, RefCell, RefMut};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
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
use schedule::AttemptResult;
use schedule::{Decision, RetrySchedule};
use scheduler::{Admission, Limits, Scheduler};
use store::{AttemptLog, Claimed, DeliveryStatements, Outcome, Record};

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
    /// Log successful attempts at INFO too (with the access log), so every attempt has
    /// a line at INFO or above; otherwise successes are DEBUG.
    pub log_every_attempt: bool,
}

/// Shared with the main thread for shutdown: stop claiming, and how many attempts are
/// still in flight.
#[derive(Debug, Default)]
pub struct DeliveryControl {
    pub stop: std::sync::atomic::AtomicBool,
    /// Attempts started and not yet answered (a gauge).
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// Leases this process still holds and will write or give back: attempts in flight,
    /// answered and not yet recorded, ready, and being given back. Shutdown waits for 0.
    pub leases_held: std::sync::atomic::AtomicUsize,
}

/// How often the due-queue gauges are refreshed.
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// Handed-over batches waiting for the engine; beyond it the writer drops the hand-off
/// and the poller finds those events (they are already due in the database).
pub const HANDOFF_QUEUE_MAX: usize = 256;
/// Outcomes written per statement at most. The queue itself holds at most one outcome
/// per attempt in flight (`in_flight_max`). One statement costs one fdatasync (~50-250
/// µs here) however many rows it holds; at the tens of µs of PostgreSQL CPU a row of
/// the ingest path costs (issue 16), 256 rows keep a batch to a few milliseconds.
const RECORD_BATCH_MAX: usize = 256;
/// Outcomes answered and not yet written at which claims and prefetch pause
/// (`scheduler::Limits::outcomes_queued_max`): four batches, a few ms of writing.
const OUTCOMES_QUEUED_MAX: usize = 4 * RECORD_BATCH_MAX;

/// The I/O around the `Scheduler`: it reads the clock, runs the SQL, spawns the
/// attempts, and asks the scheduler every question of how many, when and which.
pub struct Engine {
    /// This process's lease owner id.
    owner: Uuid,
    config: DeliveryConfig,
    client: WebhookClient,
    /// The engine's own connection (claims, give-backs, stats), reopened when it closes;
    /// with `store::SESSION`, so that a claim reads only the head of a backlog.
    connection: LazyConnection<DeliveryStatements>,
    /// The outcome writer's connection: a batch's commit does not queue in front of
    /// the next claim (PostgreSQL runs one connection's statements one at a time).
    writer_connection: LazyConnection<DeliveryStatements>,
    /// Counts, limits and claim times. Borrowed only between awaits.
    scheduler: RefCell<Scheduler>,
    /// Woken by a completion that asks for a claim (the scheduler moved its wake-up, or
    /// has an organisation claim to make).
    wake: Notify,
    /// Outcomes of attempts that ended, not yet written: at most `OUTCOMES_QUEUED_MAX`
    /// plus the attempts in flight and ready (see `scheduler`). Taken by
    /// `write_outcomes`. Borrowed only between awaits.
    outcomes: RefCell<Vec<Outcome>>,
    /// Claimed attempts kept ready per organisation, oldest first; as many as the
    /// scheduler counts (`Scheduler::ready_of`). Filled by `carry_out`, taken by
    /// `next_ready` or given back by `release_ready`. Borrowed only between awaits.
    ready: RefCell<AHashMap<Uuid, VecDeque<Claimed>>>,
    /// Gives-back still running, counted in `DeliveryControl::leases_held`.
    releasing: Cell<usize>,
    /// Woken when an outcome is queued.
    outcomes_queued: Notify,
    metrics: Arc<DeliveryMetrics>,
    /// Shared with the main thread: `stop` is read into the scheduler before each
    /// decision; `in_flight` mirrors the scheduler's count after each change.
    control: Arc<DeliveryControl>,
    jitter_state: Cell<u64>,
}

fn now_micros() -> i64 {
    unix_micros(SystemTime::now())
}

/// One line per attempt, with the organisation, the event, the attempt number, its
/// duration (none when push was off) and the status or error: failures (and push
/// switched off) as warnings; successes at INFO when `every` (the access log is on),
/// else at DEBUG.
fn log_attempt(claimed: &Claimed, record: &Record, elapsed: Option<Duration>, every: bool) {
    let (org, event, attempt) = (claimed.org_id, claimed.id, claimed.attempts.max(0) + 1);
    let duration_ms = elapsed.map_or(0, |e| e.as_millis() as u64);
    match record {
        Record::Delivered if every => tracing::info!(%org, %event, attempt, duration_ms, "webhook delivered"),
        Record::Delivered => tracing::debug!(%org, %event, attempt, duration_ms, "webhook delivered"),
        Record::Retry { delay_ms, error } => {
            tracing::warn!(%org, %event, attempt, duration_ms, error = %error, retry_in_ms = delay_ms, "webhook attempt failed; will retry")
        }
        Record::Failed { error } => {
            tracing::warn!(%org, %event, attempt, duration_ms, error = %error, "webhook attempt failed; no retries left, the event is failed")
        }
        Record::Gone => {
            tracing::warn!(%org, %event, attempt, duration_ms, "webhook answered 410 Gone; push switched off for the organisation")
        }
        Record::PushOff => tracing::debug!(%org, %event, "push is off; the event stays pending for pull"),
    }
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

/// `v1,<signature>`, and while a rotated-out secret still signs, its signature after
/// a space (Standard Webhooks: a receiver accepts the request if any one verifies).
fn signature(claimed: &Claimed, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = signing::sign(&claimed.signing_secret, id, timestamp, body);
    if let Some(previous) = &claimed.previous_secret {
        header.push(' ');
        header.push_str(&signing::sign(previous, id, timestamp, body));
    }
    header
}

/// The request headers of one attempt, signed over `body` at `timestamp` (s since the epoch).
fn signed_headers(claimed: &Claimed, body: &[u8], timestamp: i64) -> [(&'static str, String); 7] {
    let id = claimed.id.to_string();
    [
        ("content-type", "application/json".to_string()),
        ("user-agent", concat!("triggerd/", env!("CARGO_PKG_VERSION")).to_string()),
        ("x-event-id", id.clone()),
        ("x-event-type", header_safe(&claimed.event_type)),
        ("webhook-id", id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature(claimed, &id, timestamp, body)),
    ]
}

/// The attempt log row of one attempt: the status when an answer came, the error
/// unless it was a 2xx.
fn attempt_log(result: &AttemptResult, attempted_at_micros: i64, elapsed: Duration) -> AttemptLog {
    let (status_code, error) = match result {
        AttemptResult::Status { code: code @ 200..=299, .. } => (Some(*code as i16), None),
        AttemptResult::Status { code, .. } => (Some(*code as i16), Some(format!("HTTP {code}"))),
        AttemptResult::Error(error) => (None, Some(error.clone())),
    };
    let duration_ms = i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX);
    AttemptLog { attempted_at_micros, status_code, error, duration_ms }
}

/// What woke the engine's loop.
enum Wake {
    Handed(Vec<(Uuid, Uuid)>),
    /// The hand-off channel closed: the process ends.
    Closed,
    /// A completion asked for a claim; the loop only needs to re-read `next_wake`.
    Asked,
    Timer,
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
        let limits = Limits {
            in_flight_max: config.in_flight_max,
            per_org_max: config.per_org_max,
            ready_per_org_max: config
                .per_org_max
                .saturating_mul(scheduler::prefetch_rounds(config.lease, config.timeout)),
            poll_interval: config.poll_interval,
            outcomes_queued_max: OUTCOMES_QUEUED_MAX,
        };
        Rc::new(Engine {
            connection: LazyConnection::new(Rc::clone(&db)).with_session(store::SESSION),
            writer_connection: LazyConnection::new(db),
            owner: Uuid::now_v7(),
            client: WebhookClient::new(config.allow_private, config.timeout, config.per_org_max),
            scheduler: RefCell::new(Scheduler::new(limits, Instant::now())),
            config,
            wake: Notify::new(),
            outcomes: RefCell::default(),
            ready: RefCell::default(),
            releasing: Cell::new(0),
            outcomes_queued: Notify::new(),
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

    /// The scheduler, told first if shutdown began. Never held across an await.
    fn scheduler(&self) -> RefMut<'_, Scheduler> {
        let mut scheduler = self.scheduler.borrow_mut();
        if self.control.stop.load(Ordering::Acquire) {
            scheduler.stop();
        }
        scheduler
    }

    /// Mirrors the counts for the gauge and the shutdown wait.
    fn publish_in_flight(&self) {
        let (in_flight, held) = {
            let scheduler = self.scheduler.borrow();
            (scheduler.in_flight(), scheduler.leases_held())
        };
        self.control.in_flight.store(in_flight, Ordering::Release);
        self.control.leases_held.store(held + self.releasing.get(), Ordering::Release);
    }

    /// Once shutdown began, gives back the leases of every ready attempt.
    fn release_ready(self: &Rc<Self>) {
        let released = self.scheduler().release_ready();
        if released.is_empty() {
            return;
        }
        let mut ready = self.ready.borrow_mut();
        let mut given_back = Vec::new();
        for (org, count) in released {
            let queue = ready.remove(&org).unwrap_or_default();
            assert_eq!(queue.len(), count, "the ready queue and the scheduler disagree");
            given_back.extend(queue);
        }
        assert!(ready.is_empty(), "ready attempts the scheduler does not count");
        drop(ready);
        for claimed in given_back {
            self.give_back(claimed);
        }
        self.publish_in_flight();
    }

    /// Runs until the hand-off channel closes (the process ends).
    pub async fn run(self: Rc<Self>, mut handed: mpsc::Receiver<Vec<(Uuid, Uuid)>>) {
        tokio::task::spawn_local(Rc::clone(&self).write_outcomes());
        let mut next_stats = Instant::now();
        loop {
            self.release_ready();
            let deadline = tokio::time::Instant::from_std(self.scheduler().next_wake());
            let wake = tokio::select! {
                batch = handed.recv() => batch.map_or(Wake::Closed, Wake::Handed),
                _ = self.wake.notified() => Wake::Asked,
                _ = tokio::time::sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Handed(events) => self.claim_handed(events).await,
                Wake::Closed => return,
                Wake::Asked => self.claim_orgs().await,
                Wake::Timer => self.poll_due().await,
            }
            if Instant::now() >= next_stats {
                self.refresh_stats().await;
                next_stats = Instant::now() + STATS_INTERVAL;
            }
        }
    }

    /// Claims the handed-over events the scheduler admits; the rest stay due in the
    /// database for `poll_due`.
    async fn claim_handed(self: &Rc<Self>, events: Vec<(Uuid, Uuid)>) {
        let events = self.scheduler().admit_handed(events);
        if events.is_empty() {
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
            Ok(claimed) => {
                debug_assert!(claimed.iter().all(|c| events.contains(&(c.org_id, c.id))));
                let orgs: Vec<Uuid> = claimed.iter().map(|c| c.org_id).collect();
                let admissions = self.scheduler().on_claimed(&orgs);
                self.carry_out(claimed, admissions);
            }
            Err(e) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "claiming handed-over deliveries failed; the poller will retry")
            }
        }
    }

    /// Claims due attempts, if the scheduler says a claim is due and there is room.
    async fn poll_due(self: &Rc<Self>) {
        let Some(request) = self.scheduler().poll_claim(Instant::now()) else { return };
        let connection = match self.connection().await {
            Ok(connection) => connection,
            Err(e) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "delivery engine cannot reach the database");
                return;
            }
        };
        let claimed = store::claim_due(
            &connection.client,
            &connection.statements,
            self.owner,
            now_micros(),
            self.config.lease.as_millis() as i64,
            request.limit as i64,
            request.per_org as i64,
            &request.excluded_orgs,
        )
        .await;
        match claimed {
            Ok(claimed) => {
                let orgs: Vec<Uuid> = claimed.iter().map(|c| c.org_id).collect();
                let admissions = self.scheduler().on_polled(&request, &orgs);
                self.carry_out(claimed, admissions);
            }
            Err(e) => tracing::warn!(error = %crate::util::error_chain(&e), "claiming due deliveries failed"),
        }
    }

    /// Claims for the organisations whose completions freed slots while they have more
    /// due, if the scheduler has such a claim.
    async fn claim_orgs(self: &Rc<Self>) {
        let Some(request) = self.scheduler().org_claim() else { return };
        let claimed = match self.connection().await {
            Ok(c) => {
                let lease_ms = self.config.lease.as_millis() as i64;
                store::claim_orgs(&c.client, &c.statements, self.owner, now_micros(), lease_ms, &request.orgs)
                    .await
            }
            Err(e) => Err(e),
        };
        match claimed {
            Ok(claimed) => {
                let orgs: Vec<Uuid> = claimed.iter().map(|c| c.org_id).collect();
                let admissions = self.scheduler().on_org_claimed(&request, &orgs);
                self.carry_out(claimed, admissions);
            }
            // Those organisations keep their backlog: their next completion, or the
            // poller, claims for them again.
            Err(e) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "claiming an organisation's due deliveries failed")
            }
        }
    }

    /// Starts, keeps ready or gives back each claimed attempt, as the scheduler
    /// admitted it.
    fn carry_out(self: &Rc<Self>, claimed: Vec<Claimed>, admissions: Vec<Admission>) {
        assert_eq!(claimed.len(), admissions.len());
        for (claimed, admission) in claimed.into_iter().zip(admissions) {
            match admission {
                Admission::Start => self.start(claimed),
                Admission::Ready => {
                    self.ready.borrow_mut().entry(claimed.org_id).or_default().push_back(claimed)
                }
                Admission::GiveBack => self.give_back(claimed),
            }
        }
        self.publish_in_flight();
    }

    /// One slot as its own task: the attempt, then each ready attempt of its
    /// organisation that the scheduler gives the slot to when the previous is answered.
    /// Each queues its outcome for `write_outcomes`.
    fn start(self: &Rc<Self>, claimed: Claimed) {
        let engine = Rc::clone(self);
        tokio::task::spawn_local(async move {
            let mut next = Some(claimed);
            while let Some(claimed) = next {
                let org = claimed.org_id;
                engine.deliver(claimed).await;
                next = engine.answered(org);
            }
        });
    }

    /// Tells the scheduler an attempt of `org` was answered; returns the ready attempt
    /// to start in its slot, if the scheduler gives it one.
    fn answered(self: &Rc<Self>, org: Uuid) -> Option<Claimed> {
        let answered = self.scheduler().on_answered(org);
        let next = answered.start_ready.then(|| {
            let mut ready = self.ready.borrow_mut();
            let queue = ready.get_mut(&org).expect("a ready attempt the engine does not hold");
            let claimed = queue.pop_front().expect("a ready attempt the engine does not hold");
            if queue.is_empty() {
                ready.remove(&org);
            }
            claimed
        });
        self.release_ready();
        self.publish_in_flight();
        if answered.wake {
            self.wake.notify_one();
        }
        next
    }

    /// Writes queued outcomes, as many as are queued (at most `RECORD_BATCH_MAX`) per
    /// statement, and reports them recorded. Runs as long as the engine.
    async fn write_outcomes(self: Rc<Self>) {
        loop {
            let batch: Vec<Outcome> = {
                let mut queued = self.outcomes.borrow_mut();
                let n = queued.len().min(RECORD_BATCH_MAX);
                queued.drain(..n).collect()
            };
            if batch.is_empty() {
                self.outcomes_queued.notified().await;
                continue;
            }
            self.record_batch(&batch).await;
            let wake = self.scheduler().on_recorded(batch.len());
            self.publish_in_flight();
            if wake {
                self.wake.notify_one();
            }
        }
    }

    /// Releases the lease of an attempt not started; it stays due for a later claim.
    fn give_back(self: &Rc<Self>, claimed: Claimed) {
        let engine = Rc::clone(self);
        self.releasing.set(self.releasing.get() + 1);
        tokio::task::spawn_local(async move {
            let released = match engine.connection().await {
                Ok(c) => store::release(&c.client, &c.statements, engine.owner, &claimed).await,
                Err(e) => Err(e),
            };
            if let Err(e) = released {
                // The lease expires instead: the attempt is only later.
                tracing::debug!(event = %claimed.id, error = %crate::util::error_chain(&e), "giving back a claimed delivery failed");
            }
            engine.releasing.set(engine.releasing.get() - 1);
            engine.publish_in_flight();
        });
    }

    /// One attempt, start to record.
    async fn deliver(&self, claimed: Claimed) {
        let mut elapsed = None;
        let (record, log) = match claimed.webhook_url.as_deref() {
            // Nothing is sent: no attempt to log.
            None => (Record::PushOff, AttemptLog::default()),
            Some(url) => {
                let body = delivery_body(&claimed);
                let attempted_at = SystemTime::now();
                let timestamp =
                    attempted_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
                let headers = signed_headers(&claimed, &body, timestamp);
                let started = Instant::now();
                let result = self.client.post(url, &headers, Bytes::from(body)).await;
                let took = started.elapsed();
                elapsed = Some(took);
                self.metrics.attempt(&result, took);
                let log = attempt_log(&result, unix_micros(attempted_at), took);
                let record =
                    match self.config.schedule.decide(claimed.scheduled_attempts(), &result, self.jitter()) {
                        Decision::Delivered => {
                            let since_created = now_micros().saturating_sub(claimed.created_at_micros).max(0);
                            self.metrics.delivered_after(Duration::from_micros(since_created as u64));
                            Record::Delivered
                        }
                        // Rounded up to whole ms: a receiver's Retry-After is a floor.
                        Decision::Retry { delay, error } => {
                            Record::Retry { delay_ms: delay.as_nanos().div_ceil(1_000_000) as i64, error }
                        }
                        Decision::Failed { error } => Record::Failed { error },
                        Decision::Gone => Record::Gone,
                    };
                (record, log)
            }
        };
        self.metrics.outcome(&record);
        log_attempt(&claimed, &record, elapsed, self.config.log_every_attempt);
        let outcome = Outcome {
            org_id: claimed.org_id,
            id: claimed.id,
            lease_until_micros: claimed.lease_until_micros,
            record,
            log,
        };
        self.outcomes.borrow_mut().push(outcome);
        self.outcomes_queued.notify_one();
    }

    /// Writes outcomes in one statement. Only the holder of an attempt's own lease may
    /// (`store` filters by owner and lease expiry); a lease lost meanwhile means another
    /// claim owns the attempt now. If the statement fails, each outcome is tried alone,
    /// so that one bad row costs only its own attempt a repeat.
    async fn record_batch(&self, batch: &[Outcome]) {
        let written = match self.writer_connection.get().await {
            Ok(c) => store::record_batch(&c.client, &c.statements, self.owner, now_micros(), batch).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(recorded) => {
                for outcome in batch.iter().filter(|o| !recorded.contains(&o.attempt())) {
                    tracing::warn!(event = %outcome.id, "lease lost before the outcome was recorded");
                }
            }
            Err(e) if batch.len() > 1 => {
                tracing::warn!(outcomes = batch.len(), error = %crate::util::error_chain(&e), "recording delivery outcomes together failed; recording them one by one");
                for outcome in batch {
                    self.record(outcome).await;
                }
            }
            Err(e) => {
                // The lease expires and the attempt is made again: at-least-once.
                tracing::warn!(event = %batch[0].id, error = %crate::util::error_chain(&e), "recording a delivery outcome failed")
            }
        }
    }

    /// Writes one attempt's outcome alone (`record_batch`'s fallback).
    async fn record(&self, outcome: &Outcome) {
        let written = match self.writer_connection.get().await {
            Ok(c) => store::record(&c.client, &c.statements, self.owner, now_micros(), outcome).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(true) => {}
            Ok(false) => tracing::warn!(event = %outcome.id, "lease lost before the outcome was recorded"),
            // The lease expires and the attempt is made again: at-least-once.
            Err(e) => {
                tracing::warn!(event = %outcome.id, error = %crate::util::error_chain(&e), "recording a delivery outcome failed")
            }
        }
    }

    async fn refresh_stats(&self) {
        let Ok(c) = self.connection().await else { return };
        if let Ok(backlog) = store::due_stats(&c.client, &c.statements, now_micros()).await {
            self.metrics.set_backlog(backlog);
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
            lease_until_micros: 0,
            attempts: 0,
            retry_from: 0,
            webhook_url: None,
            signing_secret: String::new(),
            previous_secret: None,
        };
        assert_eq!(
            String::from_utf8(delivery_body(&claimed)).unwrap(),
            r#"{"event_id":"00000000-0000-0000-0000-000000000001","type":"t\"x","payload":{"n": 1.50},"created_at":"1970-01-01T00:00:00.000000Z"}"#
        );
    }
}
