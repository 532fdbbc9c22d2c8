//! The delivery engine's counters; written by the engine on the storage thread.

use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use super::schedule::AttemptResult;
use super::store::Record;
use crate::util::stats::{bump, Exposition, Histogram, LATENCY_BUCKETS_SECONDS};

/// Attempt classes, in the order of `DeliveryMetrics::classes`: the receiver's status
/// class, or why no answer came.
pub const ATTEMPT_CLASSES: [&str; 6] = ["2xx", "3xx", "4xx", "5xx", "timeout", "error"];

/// From an event's creation (its commit) to the 2xx that delivered it: retries make
/// this minutes or hours.
pub const DELIVERED_AFTER_BUCKETS_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21_600.0,
    86_400.0,
];

/// Upper bounds of the backlog histogram: organisations by how many attempts they have
/// due. A fixed set of series whatever the number of organisations.
pub const BACKLOG_BUCKETS: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

/// The due attempts as the engine last counted them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub due: u64,
    pub oldest_due_micros: u64,
    /// The largest backlog of one organisation.
    pub largest: u64,
    /// Organisations with at most `BACKLOG_BUCKETS[i]` due attempts (cumulative); the
    /// last is every organisation with any.
    pub organizations: [u64; 7],
}

/// Outcome labels, in the order of `DeliveryMetrics::outcomes`.
pub const DELIVERY_OUTCOMES: [&str; 5] = ["delivered", "retry", "failed", "gone", "push_off"];

pub struct DeliveryMetrics {
    /// By outcome, in the order of `DELIVERY_OUTCOMES`.
    outcomes: [AtomicU64; 5],
    /// Attempts made, by the order of `ATTEMPT_CLASSES`.
    classes: [AtomicU64; 6],
    pub latency: Histogram,
    delivered_after: Histogram,
    /// Written by the engine every 5 s, read by scrapes (atomics: no lock on any
    /// core; a scrape may mix two refreshes, which a gauge tolerates).
    due: AtomicU64,
    oldest_due_micros: AtomicU64,
    largest: AtomicU64,
    organizations: [AtomicU64; 7],
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        DeliveryMetrics {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            classes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Histogram::new(LATENCY_BUCKETS_SECONDS),
            delivered_after: Histogram::new(DELIVERED_AFTER_BUCKETS_SECONDS),
            due: AtomicU64::new(0),
            oldest_due_micros: AtomicU64::new(0),
            largest: AtomicU64::new(0),
            organizations: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl DeliveryMetrics {
    pub fn outcome(&self, record: &Record) {
        let slot = match record {
            Record::Delivered => 0,
            Record::Retry { .. } => 1,
            Record::Failed { .. } => 2,
            Record::Gone => 3,
            Record::PushOff => 4,
        };
        bump(&self.outcomes[slot], 1);
    }

    /// Counts one attempt made (an answer or none) and its duration.
    pub fn attempt(&self, result: &AttemptResult, elapsed: Duration) {
        let class = match result {
            AttemptResult::Status { code, .. } => match code {
                200..=299 => 0,
                300..=399 => 1,
                400..=499 => 2,
                _ => 3,
            },
            AttemptResult::Error(error) if error.starts_with("timed out") => 4,
            AttemptResult::Error(_) => 5,
        };
        bump(&self.classes[class], 1);
        self.latency.observe_duration(elapsed);
    }

    /// A delivery succeeded this long after its event was created.
    pub fn delivered_after(&self, elapsed: Duration) {
        self.delivered_after.observe_duration(elapsed);
    }

    pub fn set_backlog(&self, backlog: Backlog) {
        self.due.store(backlog.due, Ordering::Relaxed);
        self.oldest_due_micros.store(backlog.oldest_due_micros, Ordering::Relaxed);
        self.largest.store(backlog.largest, Ordering::Relaxed);
        for (slot, count) in self.organizations.iter().zip(backlog.organizations) {
            slot.store(count, Ordering::Relaxed);
        }
    }

    fn backlog(&self) -> Backlog {
        Backlog {
            due: self.due.load(Ordering::Relaxed),
            oldest_due_micros: self.oldest_due_micros.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
            organizations: std::array::from_fn(|i| self.organizations[i].load(Ordering::Relaxed)),
        }
    }

    pub fn expose(&self, exposition: &mut Exposition) {
        exposition.family("triggerd_deliveries_total", "Webhook delivery attempts, by outcome.", "counter");
        for (outcome, counter) in DELIVERY_OUTCOMES.iter().zip(&self.outcomes) {
            let labels = format!("outcome=\"{outcome}\"");
            exposition.sample("triggerd_deliveries_total", &labels, counter.load(Ordering::Relaxed));
        }
        exposition.histogram(
            "triggerd_delivery_duration_seconds",
            "Time of one delivery attempt.",
            LATENCY_BUCKETS_SECONDS,
            &self.latency,
        );
        exposition.family(
            "triggerd_delivery_attempts_total",
            "Webhook attempts made, by the receiver's status class or why no answer came.",
            "counter",
        );
        for (class, counter) in ATTEMPT_CLASSES.iter().zip(&self.classes) {
            let labels = format!("class=\"{class}\"");
            exposition.sample("triggerd_delivery_attempts_total", &labels, counter.load(Ordering::Relaxed));
        }
        exposition.histogram(
            "triggerd_delivery_latency_seconds",
            "From an event's creation to the 2xx that delivered it (retries included).",
            DELIVERED_AFTER_BUCKETS_SECONDS,
            &self.delivered_after,
        );
        let backlog = self.backlog();
        exposition.gauge(
            "triggerd_deliveries_due",
            "Delivery attempts due now (refreshed every 5 s).",
            backlog.due as f64,
        );
        exposition.gauge(
            "triggerd_delivery_oldest_due_seconds",
            "Age of the oldest due attempt (refreshed every 5 s).",
            backlog.oldest_due_micros as f64 / 1e6,
        );
        exposition.gauge(
            "triggerd_delivery_backlog_largest",
            "Due attempts of the organisation with the most (refreshed every 5 s).",
            backlog.largest as f64,
        );
        exposition.family(
            "triggerd_delivery_backlog_organizations",
            "Organisations with due attempts, by how many they have at most (cumulative; refreshed every 5 s).",
            "gauge",
        );
        let bounds = BACKLOG_BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".to_string()]);
        for (bound, count) in bounds.zip(backlog.organizations) {
            let labels = format!("le=\"{bound}\"");
            exposition.sample("triggerd_delivery_backlog_organizations", &labels, count);
        }
    }
}
