//! The counters of one HTTP core: requests by route and status, latency by route,
//! event outcomes and key checks. Only its own core writes them (`stats::bump`); a
//! scrape on any core sums every core's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::stats::{bump, merge, Exposition, Histogram, LATENCY_BUCKETS_SECONDS};

/// Status codes counted individually; anything else is counted as `other`.
const STATUSES: &[u16] = &[100, 200, 201, 202, 400, 401, 404, 405, 408, 409, 413, 415, 429, 431, 500, 503];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Counters of one HTTP core, indexed by route number (the API's routes; index 0 is
/// "no route"). Lives as long as the process.
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
    /// Requests that found this process's rate-limit slice empty and waited for a lease.
    pub rate_limit_waits: AtomicU64,
}

impl CoreMetrics {
    /// Counters for `routes` routes.
    pub fn new(routes: usize) -> CoreMetrics {
        CoreMetrics {
            requests: (0..routes).map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect(),
            latency: (0..routes).map(|_| Histogram::new(LATENCY_BUCKETS_SECONDS)).collect(),
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
            rate_limit_waits: AtomicU64::new(0),
        }
    }

    /// Records one answered request.
    pub fn request(&self, route: usize, status: u16, elapsed: Duration) {
        debug_assert!(route < self.requests.len());
        let slot = STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len());
        bump(&self.requests[route][slot], 1);
        self.latency[route].observe_duration(elapsed);
    }

    pub fn count(counter: &AtomicU64, n: u64) {
        bump(counter, n);
    }
}

/// Reads one counter of a core.
type CounterOf = fn(&CoreMetrics) -> &AtomicU64;

/// The counters of every core, summed; `routes` names route numbers.
pub fn expose(cores: &[Arc<CoreMetrics>], routes: &[&str], exposition: &mut Exposition) {
    let sum =
        |field: CounterOf| -> u64 { cores.iter().map(|core| field(core).load(Ordering::Relaxed)).sum() };
    exposition.family(
        "triggerd_http_requests_total",
        "HTTP requests answered, by route and status.",
        "counter",
    );
    for (route, label) in routes.iter().enumerate() {
        for slot in 0..STATUS_SLOTS {
            let count: u64 = cores.iter().map(|c| c.requests[route][slot].load(Ordering::Relaxed)).sum();
            if count > 0 {
                let status = STATUSES.get(slot).map_or("other".to_string(), u16::to_string);
                let labels = format!("route=\"{label}\",status=\"{status}\"");
                exposition.sample("triggerd_http_requests_total", &labels, count);
            }
        }
    }
    let name = "triggerd_http_request_duration_seconds";
    exposition.family(name, "Time from a complete request to its response, by route.", "histogram");
    for (route, label) in routes.iter().enumerate() {
        let snapshot = merge(cores.iter().map(|core| &core.latency[route]), LATENCY_BUCKETS_SECONDS.len());
        if snapshot.0.iter().any(|&n| n > 0) {
            exposition.histogram_series(
                name,
                &format!("route=\"{label}\""),
                LATENCY_BUCKETS_SECONDS,
                &snapshot,
            );
        }
    }
    let counters: [(&str, &str, CounterOf); 11] = [
        ("triggerd_events_accepted_total", "Events committed and answered 202.", |c| &c.events_accepted),
        ("triggerd_events_duplicate_total", "Events refused as duplicates (409).", |c| &c.events_duplicate),
        ("triggerd_events_rate_limited_total", "Events refused by the rate limit (429).", |c| &c.events_rate_limited),
        (
            "triggerd_events_overloaded_total",
            "Events refused for overload or an unreachable database (503).",
            |c| &c.events_overloaded,
        ),
        ("triggerd_events_invalid_total", "Events refused as invalid (400).", |c| &c.events_invalid),
        ("triggerd_auth_cache_hits_total", "API keys found in a core's key table.", |c| &c.auth_cache_hits),
        (
            "triggerd_auth_cache_misses_total",
            "API keys resolved through the database and Argon2.",
            |c| &c.auth_cache_misses,
        ),
        ("triggerd_auth_failures_total", "Key checks that found the key wrong or unknown.", |c| &c.auth_failures),
        (
            "triggerd_auth_throttled_total",
            "Key checks refused (429) for too many failures per key id or address, before any database or Argon2 work.",
            |c| &c.auth_throttled,
        ),
        (
            "triggerd_auth_argon2_verifications_total",
            "Argon2 verifications of presented keys.",
            |c| &c.auth_argon2_verifications,
        ),
        (
            "triggerd_rate_limit_waits_total",
            "Requests that found this process's slice of their organisation's rate window empty and waited for a lease.",
            |c| &c.rate_limit_waits,
        ),
    ];
    for (name, help, field) in counters {
        exposition.counter(name, help, sum(field));
    }
}
