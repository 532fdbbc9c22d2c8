//! The write path's counters, and partition maintenance's; written on the storage
//! thread only (by the writers and the maintenance task, one at a time).

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
    /// Stream page statements run (held reads run one when woken, never while waiting).
    pub stream_pages: AtomicU64,
    /// Undelivered events dropped with their partition past the undelivered retention.
    pub events_dropped_undelivered: AtomicU64,
    /// Old partitions the last maintenance pass kept for their undelivered events (a gauge).
    pub partitions_kept: AtomicU64,
    /// Rate-limit leases answered, and the tokens they granted.
    pub rate_leases: AtomicU64,
    pub rate_tokens_leased: AtomicU64,
    /// Unused rate-limit tokens given back to their window (at shutdown).
    pub rate_tokens_returned: AtomicU64,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            batch_size: Histogram::new(BATCH_BUCKETS),
            commit_seconds: Histogram::new(LATENCY_BUCKETS_SECONDS),
            events_written: AtomicU64::new(0),
            batch_failures: AtomicU64::new(0),
            batch_statements: AtomicU64::new(0),
            stream_pages: AtomicU64::new(0),
            events_dropped_undelivered: AtomicU64::new(0),
            partitions_kept: AtomicU64::new(0),
            rate_leases: AtomicU64::new(0),
            rate_tokens_leased: AtomicU64::new(0),
            rate_tokens_returned: AtomicU64::new(0),
        }
    }
}

impl StorageMetrics {
    pub fn statements(&self, statements: u64) {
        bump(&self.batch_statements, statements);
    }

    pub fn stream_page(&self) {
        bump(&self.stream_pages, 1);
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

    /// What a maintenance pass dropped for good and kept.
    pub fn maintained(&self, report: &super::retention::Report) {
        let dropped: u64 = report.undelivered_dropped.iter().map(|(_, events)| events).sum();
        bump(&self.events_dropped_undelivered, dropped);
        self.partitions_kept.store(report.kept.len() as u64, Ordering::Relaxed);
    }

    pub fn rate_leased(&self, tokens: u32) {
        bump(&self.rate_leases, 1);
        bump(&self.rate_tokens_leased, u64::from(tokens));
    }

    pub fn rate_returned(&self, tokens: u64) {
        bump(&self.rate_tokens_returned, tokens);
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
        exposition.counter(
            "triggerd_stream_pages_read_total",
            "Stream page statements run (a held read runs one when woken, none while it waits).",
            self.stream_pages.load(Ordering::Relaxed),
        );
        exposition.counter(
            "triggerd_events_dropped_undelivered_total",
            "Undelivered events dropped with their day's partition past --undelivered-retention-days.",
            self.events_dropped_undelivered.load(Ordering::Relaxed),
        );
        exposition.gauge(
            "triggerd_partitions_kept",
            "Days past --retention-days kept because they hold undelivered events (last maintenance pass).",
            self.partitions_kept.load(Ordering::Relaxed) as f64,
        );
        exposition.counter(
            "triggerd_rate_leases_total",
            "Slices of organisations' rate windows leased from PostgreSQL by this instance.",
            self.rate_leases.load(Ordering::Relaxed),
        );
        exposition.counter(
            "triggerd_rate_tokens_leased_total",
            "Admissions those leases granted.",
            self.rate_tokens_leased.load(Ordering::Relaxed),
        );
        exposition.counter(
            "triggerd_rate_tokens_returned_total",
            "Unused admissions given back to their window at shutdown.",
            self.rate_tokens_returned.load(Ordering::Relaxed),
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
