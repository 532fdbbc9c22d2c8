//! Metrics without locks on the request path.
//!
//! Each HTTP core owns one `CoreMetrics` and is its only writer (relaxed load + store,
//! no locked instruction); the storage thread owns `StorageMetrics`. `GET /metrics`,
//! on whichever core it lands, reads every core's atomics and sums them. Everything is
//! fixed-size arrays: the memory is bounded whatever the traffic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Route labels, in the order of the per-route arrays. `none`: the request never
/// reached a route (protocol error, 404).
pub const ROUTE_LABELS: &[&str] = &[
    "none",
    "health",
    "health_ready",
    "metrics",
    "keys_generate",
    "keys",
    "keys_rotate",
    "events",
    "events_batch",
    "inbox",
    "ack",
    "ack_batch",
    "webhook_config",
];

/// Status codes counted individually; anything else is counted as `other`.
const STATUSES: &[u16] = &[100, 200, 201, 202, 400, 401, 404, 405, 408, 409, 413, 415, 429, 431, 500, 503];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Request latency bucket upper bounds, in seconds.
pub const LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Batch size bucket upper bounds, in events.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Adds `n` to a counter that only the calling thread writes.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// A histogram with fixed buckets; single writer.
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket counts (not cumulative); the last slot is +Inf.
    counts: Box<[AtomicU64]>,
    /// Sum of observations in micro-units (µs for seconds, milli-events for sizes).
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let slot = self.bounds.iter().position(|&bound| value <= bound).unwrap_or(self.bounds.len());
        bump(&self.counts[slot], 1);
        bump(&self.sum_micros, (value * 1e6) as u64);
    }

    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    fn snapshot(&self) -> (Vec<u64>, u64) {
        (
            self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            self.sum_micros.load(Ordering::Relaxed),
        )
    }
}

/// Counters of one HTTP core.
pub struct CoreMetrics {
    /// Requests by route and status slot.
    requests: Box<[[AtomicU64; STATUS_SLOTS]]>,
    /// Latency by route.
    latency: Box<[Histogram]>,
    pub events_accepted: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_rate_limited: AtomicU64,
    pub events_overloaded: AtomicU64,
    pub events_invalid: AtomicU64,
    pub auth_cache_hits: AtomicU64,
    pub auth_cache_misses: AtomicU64,
    /// Key checks that found the key wrong or unknown.
    pub auth_failures: AtomicU64,
    /// Key checks refused by a throttle before any database or Argon2 work.
    pub auth_throttled: AtomicU64,
    /// Argon2 verifications submitted to the pool.
    pub auth_argon2_verifications: AtomicU64,
}

impl Default for CoreMetrics {
    fn default() -> Self {
        CoreMetrics {
            requests: (0..ROUTE_LABELS.len()).map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect(),
            latency: (0..ROUTE_LABELS.len()).map(|_| Histogram::new(LATENCY_BUCKETS_SECONDS)).collect(),
            events_accepted: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            events_rate_limited: AtomicU64::new(0),
            events_overloaded: AtomicU64::new(0),
            events_invalid: AtomicU64::new(0),
            auth_cache_hits: AtomicU64::new(0),
            auth_cache_misses: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            auth_throttled: AtomicU64::new(0),
            auth_argon2_verifications: AtomicU64::new(0),
        }
    }
}

impl CoreMetrics {
    /// Records one answered request. `route` indexes `ROUTE_LABELS`.
    pub fn request(&self, route: usize, status: u16, elapsed: Duration) {
        debug_assert!(route < ROUTE_LABELS.len());
        let slot = STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len());
        bump(&self.requests[route][slot], 1);
        self.latency[route].observe_duration(elapsed);
    }

    pub fn count(counter: &AtomicU64, n: u64) {
        bump(counter, n);
    }
}

/// Counters of the storage thread.
pub struct StorageMetrics {
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub events_written: AtomicU64,
    pub batch_failures: AtomicU64,
    /// Insert statements sent: one per batch, more only when PostgreSQL refused a
    /// batch and its refused events were isolated by bisection.
    pub batch_statements: AtomicU64,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            batch_size: Histogram::new(BATCH_BUCKETS),
            commit_seconds: Histogram::new(LATENCY_BUCKETS_SECONDS),
            events_written: AtomicU64::new(0),
            batch_failures: AtomicU64::new(0),
            batch_statements: AtomicU64::new(0),
        }
    }
}

impl StorageMetrics {
    pub fn statements(&self, statements: u64) {
        bump(&self.batch_statements, statements);
    }

    /// Called by the storage thread's writers, which share the thread: one writer at a time.
    pub fn batch(&self, events: usize, elapsed: Duration, failed: bool) {
        self.batch_size.observe(events as f64);
        self.commit_seconds.observe_duration(elapsed);
        if failed {
            bump(&self.batch_failures, 1);
        } else {
            bump(&self.events_written, events as u64);
        }
    }
}

/// Webhook deliveries; written by the delivery engine on the storage thread.
pub struct DeliveryMetrics {
    /// By outcome, in the order of `DELIVERY_OUTCOMES`.
    outcomes: [AtomicU64; 5],
    pub latency: Histogram,
    due: AtomicU64,
    oldest_due_micros: AtomicU64,
}

pub const DELIVERY_OUTCOMES: [&str; 5] = ["delivered", "retry", "failed", "gone", "push_off"];

impl Default for DeliveryMetrics {
    fn default() -> Self {
        DeliveryMetrics {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Histogram::new(LATENCY_BUCKETS_SECONDS),
            due: AtomicU64::new(0),
            oldest_due_micros: AtomicU64::new(0),
        }
    }
}

impl DeliveryMetrics {
    pub fn outcome(&self, record: &crate::delivery::store::Record) {
        use crate::delivery::store::Record;
        let slot = match record {
            Record::Delivered => 0,
            Record::Retry { .. } => 1,
            Record::Failed { .. } => 2,
            Record::Gone => 3,
            Record::PushOff => 4,
        };
        bump(&self.outcomes[slot], 1);
    }

    pub fn set_due(&self, due: u64, oldest_due_micros: u64) {
        self.due.store(due, Ordering::Relaxed);
        self.oldest_due_micros.store(oldest_due_micros, Ordering::Relaxed);
    }
}

/// Everything `/metrics` reads.
pub struct Registry {
    pub cores: Vec<Arc<CoreMetrics>>,
    pub storage: Arc<StorageMetrics>,
    pub deliveries: Arc<DeliveryMetrics>,
}

impl Registry {
    pub fn new(cores: usize) -> Arc<Registry> {
        Arc::new(Registry {
            cores: (0..cores).map(|_| Arc::new(CoreMetrics::default())).collect(),
            storage: Arc::new(StorageMetrics::default()),
            deliveries: Arc::new(DeliveryMetrics::default()),
        })
    }

    fn sum(&self, field: impl Fn(&CoreMetrics) -> &AtomicU64) -> u64 {
        self.cores.iter().map(|core| field(core).load(Ordering::Relaxed)).sum()
    }

    /// Prometheus text exposition (format 0.0.4). `gauges` are extra (name, help, value).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("# HELP triggerd_http_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE triggerd_http_requests_total counter\n");
        for (route, label) in ROUTE_LABELS.iter().enumerate() {
            for slot in 0..STATUS_SLOTS {
                let count: u64 =
                    self.cores.iter().map(|c| c.requests[route][slot].load(Ordering::Relaxed)).sum();
                if count == 0 {
                    continue;
                }
                let status = STATUSES.get(slot).map_or("other".to_string(), u16::to_string);
                let _ = writeln!(
                    out,
                    "triggerd_http_requests_total{{route=\"{label}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str("# HELP triggerd_http_request_duration_seconds Time from a complete request to its response, by route.\n");
        out.push_str("# TYPE triggerd_http_request_duration_seconds histogram\n");
        for (route, label) in ROUTE_LABELS.iter().enumerate() {
            let mut counts = vec![0u64; LATENCY_BUCKETS_SECONDS.len() + 1];
            let mut sum = 0u64;
            for core in &self.cores {
                let (c, s) = core.latency[route].snapshot();
                counts.iter_mut().zip(c).for_each(|(total, n)| *total += n);
                sum += s;
            }
            if counts.iter().all(|&n| n == 0) {
                continue;
            }
            write_histogram(
                &mut out,
                "triggerd_http_request_duration_seconds",
                &format!("route=\"{label}\""),
                LATENCY_BUCKETS_SECONDS,
                &counts,
                sum,
            );
        }
        let counters: [(&str, &str, u64); 10] = [
            (
                "triggerd_events_accepted_total",
                "Events committed and answered 202.",
                self.sum(|c| &c.events_accepted),
            ),
            (
                "triggerd_events_duplicate_total",
                "Events refused as duplicates (409).",
                self.sum(|c| &c.events_duplicate),
            ),
            (
                "triggerd_events_rate_limited_total",
                "Events refused by the rate limit (429).",
                self.sum(|c| &c.events_rate_limited),
            ),
            (
                "triggerd_events_overloaded_total",
                "Events refused for overload or an unreachable database (503).",
                self.sum(|c| &c.events_overloaded),
            ),
            (
                "triggerd_events_invalid_total",
                "Events refused as invalid (400).",
                self.sum(|c| &c.events_invalid),
            ),
            (
                "triggerd_auth_cache_hits_total",
                "API keys found in a core's key table.",
                self.sum(|c| &c.auth_cache_hits),
            ),
            (
                "triggerd_auth_cache_misses_total",
                "API keys resolved through the database and Argon2.",
                self.sum(|c| &c.auth_cache_misses),
            ),
            (
                "triggerd_auth_failures_total",
                "Key checks that found the key wrong or unknown.",
                self.sum(|c| &c.auth_failures),
            ),
            (
                "triggerd_auth_throttled_total",
                "Key checks refused (429) for too many failures per key id or address, before any database or Argon2 work.",
                self.sum(|c| &c.auth_throttled),
            ),
            (
                "triggerd_auth_argon2_verifications_total",
                "Argon2 verifications of presented keys.",
                self.sum(|c| &c.auth_argon2_verifications),
            ),
        ];
        for (name, help, value) in counters {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n");
        }
        let storage = &self.storage;
        let _ = write!(
            out,
            "# HELP triggerd_storage_events_written_total Events in committed batches (accepted or duplicate).\n\
             # TYPE triggerd_storage_events_written_total counter\ntriggerd_storage_events_written_total {}\n\
             # HELP triggerd_storage_batch_failures_total Batches that failed as a whole.\n\
             # TYPE triggerd_storage_batch_failures_total counter\ntriggerd_storage_batch_failures_total {}\n\
             # HELP triggerd_storage_batch_statements_total Insert statements sent for batches (more than one per batch only while isolating refused events).\n\
             # TYPE triggerd_storage_batch_statements_total counter\ntriggerd_storage_batch_statements_total {}\n",
            storage.events_written.load(Ordering::Relaxed),
            storage.batch_failures.load(Ordering::Relaxed),
            storage.batch_statements.load(Ordering::Relaxed)
        );
        out.push_str("# HELP triggerd_storage_batch_size_events Events per written batch.\n# TYPE triggerd_storage_batch_size_events histogram\n");
        let (counts, sum) = storage.batch_size.snapshot();
        write_histogram(&mut out, "triggerd_storage_batch_size_events", "", BATCH_BUCKETS, &counts, sum);
        out.push_str("# HELP triggerd_storage_commit_duration_seconds Time to write and commit one batch.\n# TYPE triggerd_storage_commit_duration_seconds histogram\n");
        let (counts, sum) = storage.commit_seconds.snapshot();
        write_histogram(
            &mut out,
            "triggerd_storage_commit_duration_seconds",
            "",
            LATENCY_BUCKETS_SECONDS,
            &counts,
            sum,
        );
        let deliveries = &self.deliveries;
        out.push_str("# HELP triggerd_deliveries_total Webhook delivery attempts, by outcome.\n# TYPE triggerd_deliveries_total counter\n");
        for (outcome, counter) in DELIVERY_OUTCOMES.iter().zip(&deliveries.outcomes) {
            let _ = writeln!(
                out,
                "triggerd_deliveries_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP triggerd_delivery_duration_seconds Time of one delivery attempt.\n# TYPE triggerd_delivery_duration_seconds histogram\n");
        let (counts, sum) = deliveries.latency.snapshot();
        write_histogram(
            &mut out,
            "triggerd_delivery_duration_seconds",
            "",
            LATENCY_BUCKETS_SECONDS,
            &counts,
            sum,
        );
        let _ = write!(
            out,
            "# HELP triggerd_deliveries_due Delivery attempts due now (refreshed every 5 s).\n\
             # TYPE triggerd_deliveries_due gauge\ntriggerd_deliveries_due {}\n\
             # HELP triggerd_delivery_oldest_due_seconds Age of the oldest due attempt (refreshed every 5 s).\n\
             # TYPE triggerd_delivery_oldest_due_seconds gauge\ntriggerd_delivery_oldest_due_seconds {}\n",
            deliveries.due.load(Ordering::Relaxed),
            deliveries.oldest_due_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        for (name, help, value) in gauges {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n");
        }
        out
    }
}

fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: &[u64],
    sum_micros: u64,
) {
    let separator = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}");
    }
    cumulative += counts[bounds.len()];
    let _ = writeln!(out, "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}");
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", sum_micros as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_cores_and_renders_cumulative_buckets() {
        let registry = Registry::new(2);
        registry.cores[0].request(1, 200, Duration::from_micros(50));
        registry.cores[1].request(1, 200, Duration::from_millis(3));
        registry.cores[1].request(1, 599, Duration::from_secs(20));
        CoreMetrics::count(&registry.cores[0].events_accepted, 3);
        CoreMetrics::count(&registry.cores[1].events_accepted, 4);
        let text = registry.render(&[("triggerd_ring_depth_events", "Events waiting.", 5.0)]);
        assert!(text.contains("triggerd_http_requests_total{route=\"health\",status=\"200\"} 2\n"));
        assert!(text.contains("triggerd_http_requests_total{route=\"health\",status=\"other\"} 1\n"));
        assert!(text
            .contains("triggerd_http_request_duration_seconds_bucket{route=\"health\",le=\"0.0001\"} 1\n"));
        assert!(
            text.contains("triggerd_http_request_duration_seconds_bucket{route=\"health\",le=\"0.005\"} 2\n")
        );
        assert!(
            text.contains("triggerd_http_request_duration_seconds_bucket{route=\"health\",le=\"+Inf\"} 3\n")
        );
        assert!(text.contains("triggerd_events_accepted_total 7\n"));
        assert!(text.contains("triggerd_ring_depth_events 5\n"));
    }
}
