//! Counters and histograms without locks: each has a single writer (a relaxed load and
//! store, no locked instruction), and a scrape on any thread reads them. Fixed-size, so
//! their memory is bounded whatever the traffic. Each subsystem owns its own; `metrics`
//! only renders them (`Exposition`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Request latency bucket upper bounds, in seconds.
pub const LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Batch size bucket upper bounds, in events.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Adds `n` to a counter that only the calling thread writes.
pub fn bump(counter: &AtomicU64, n: u64) {
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

    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        (
            self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            self.sum_micros.load(Ordering::Relaxed),
        )
    }
}

/// Sums histograms of the same buckets (one per core) into one snapshot.
pub fn merge<'h>(histograms: impl IntoIterator<Item = &'h Histogram>, buckets: usize) -> (Vec<u64>, u64) {
    let mut counts = vec![0u64; buckets + 1];
    let mut sum = 0u64;
    for histogram in histograms {
        let (c, s) = histogram.snapshot();
        counts.iter_mut().zip(c).for_each(|(total, n)| *total += n);
        sum += s;
    }
    (counts, sum)
}

/// The Prometheus text exposition format (0.0.4), written series by series. Each
/// subsystem exposes its own metrics through it; `metrics` only assembles them.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition { out: String::with_capacity(16 * 1024) }
    }

    /// `# HELP` and `# TYPE` lines; samples of the family follow.
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample; `labels` is `key="value",…` or empty.
    pub fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        match labels {
            "" => {
                let _ = writeln!(self.out, "{name} {value}");
            }
            _ => {
                let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
            }
        }
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, "counter");
        self.sample(name, "", value);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, help, "gauge");
        self.sample(name, "", value);
    }

    /// One series of a histogram family (write `family(.., "histogram")` first):
    /// cumulative buckets, sum and count.
    pub fn histogram_series(&mut self, name: &str, labels: &str, bounds: &[f64], snapshot: &(Vec<u64>, u64)) {
        let (counts, sum_micros) = snapshot;
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            let _ = writeln!(self.out, "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts[bounds.len()];
        let _ = writeln!(self.out, "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}");
        self.sample(&format!("{name}_sum"), labels, *sum_micros as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    /// A whole histogram family of one unlabelled series.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], histogram: &Histogram) {
        self.family(name, help, "histogram");
        self.histogram_series(name, "", bounds, &histogram.snapshot());
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let histogram = Histogram::new(&[1.0, 2.0]);
        for value in [0.5, 1.5, 1.7, 9.0] {
            histogram.observe(value);
        }
        let mut exposition = Exposition::new();
        exposition.histogram("x_seconds", "X.", &[1.0, 2.0], &histogram);
        let text = exposition.finish();
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"2\"} 3\n"));
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("x_seconds_count 4\n") && text.contains("x_seconds_sum 12.7\n"));
    }
}
