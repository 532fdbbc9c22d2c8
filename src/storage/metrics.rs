//! The write path's counters; written by the writers, which share the storage thread
//! (one writer at a time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::util::stats::{bump, Exposition, Histogram, BATCH_BUCKETS, LATENCY_BUCKETS_SECONDS};

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

    pub fn batch(&self, events: usize, elapsed: Duration, failed: bool) {
        self.batch_size.observe(events as f64);
        self.commit_seconds.observe_duration(elapsed);
        if failed {
            bump(&self.batch_failures, 1);
        } else {
            bump(&self.events_written, events as u64);
        }
    }

    pub fn expose(&self, exposition: &mut Exposition) {
        exposition.counter(
            "triggerd_storage_events_written_total",
            "Events in committed batches (accepted or duplicate).",
            self.events_written.load(Ordering::Relaxed),
        );
        exposition.counter(
            "triggerd_storage_batch_failures_total",
            "Batches that failed as a whole.",
            self.batch_failures.load(Ordering::Relaxed),
        );
        exposition.counter(
            "triggerd_storage_batch_statements_total",
            "Insert statements sent for batches (more than one per batch only while isolating refused events).",
            self.batch_statements.load(Ordering::Relaxed),
        );
        exposition.histogram(
            "triggerd_storage_batch_size_events",
            "Events per written batch.",
            BATCH_BUCKETS,
            &self.batch_size,
        );
        exposition.histogram(
            "triggerd_storage_commit_duration_seconds",
            "Time to write and commit one batch.",
            LATENCY_BUCKETS_SECONDS,
            &self.commit_seconds,
        );
    }
}
