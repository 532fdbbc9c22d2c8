//! `/metrics`: assembles what each subsystem exposes. The counters themselves belong to
//! their subsystems (`shard::metrics` per HTTP core, `storage::metrics`,
//! `delivery::metrics`); this module only holds the handles and renders them in order.

use std::sync::Arc;

use crate::delivery::metrics::DeliveryMetrics;
use crate::shard::metrics::{self as core_metrics, CoreMetrics};
use crate::storage::metrics::StorageMetrics;
use crate::util::stats::Exposition;

/// Everything `/metrics` reads. Built once by the runtime; shared by every core.
pub struct Registry {
    /// One per HTTP core, written only by that core.
    pub cores: Vec<Arc<CoreMetrics>>,
    /// Route names by route number, for the per-route series.
    pub routes: &'static [&'static str],
    pub storage: Arc<StorageMetrics>,
    pub deliveries: Arc<DeliveryMetrics>,
}

impl Registry {
    pub fn new(cores: usize, routes: &'static [&'static str]) -> Arc<Registry> {
        Arc::new(Registry {
            cores: (0..cores).map(|_| Arc::new(CoreMetrics::new(routes.len()))).collect(),
            routes,
            storage: Arc::new(StorageMetrics::default()),
            deliveries: Arc::new(DeliveryMetrics::default()),
        })
    }

    /// Prometheus text exposition (format 0.0.4). `gauges` are read at scrape time by
    /// the caller: (name, help, value).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut exposition = Exposition::new();
        core_metrics::expose(&self.cores, self.routes, &mut exposition);
        self.storage.expose(&mut exposition);
        self.deliveries.expose(&mut exposition);
        for (name, help, value) in gauges {
            exposition.gauge(name, help, *value);
        }
        exposition.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn merges_cores_and_renders_cumulative_buckets() {
        let registry = Registry::new(2, &["none", "health"]);
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
