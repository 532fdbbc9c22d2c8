//! The delivery engine's counters; written by the engine on the storage thread.

use std::sync::atomic::{AtomicU64, Ordering};

use super::store::Record;
use crate::util::stats::{bump, Exposition, Histogram, LATENCY_BUCKETS_SECONDS};

/// Outcome labels, in the order of `DeliveryMetrics::outcomes`.
pub const DELIVERY_OUTCOMES: [&str; 5] = ["delivered", "retry", "failed", "gone", "push_off"];

pub struct DeliveryMetrics {
    /// By outcome, in the order of `DELIVERY_OUTCOMES`.
    outcomes: [AtomicU64; 5],
    pub latency: Histogram,
    due: AtomicU64,
    oldest_due_micros: AtomicU64,
}

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

    pub fn set_due(&self, due: u64, oldest_due_micros: u64) {
        self.due.store(due, Ordering::Relaxed);
        self.oldest_due_micros.store(oldest_due_micros, Ordering::Relaxed);
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
        exposition.gauge(
            "triggerd_deliveries_due",
            "Delivery attempts due now (refreshed every 5 s).",
            self.due.load(Ordering::Relaxed) as f64,
        );
        exposition.gauge(
            "triggerd_delivery_oldest_due_seconds",
            "Age of the oldest due attempt (refreshed every 5 s).",
            self.oldest_due_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
    }
}
