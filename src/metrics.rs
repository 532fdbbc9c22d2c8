//! `/metrics`: assembles what each subsystem exposes. The counters themselves belong to
//! their subsystems (`shard::metrics` per HTTP core, `storage::metrics`,
//! `delivery::metrics`); this module holds the handles, reads the gauges and the
//! process's own figures at scrape time, and renders them in order.
//!
//! Rendering never runs on an HTTP core: reading /proc is file I/O, and counting open
//! descriptors is O(connections). A scrape on the public port asks the scrape thread
//! (`Scraper::start`) and awaits its answer; the `--metrics-listen` listener renders on
//! its own thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::delivery::metrics::DeliveryMetrics;
use crate::delivery::DeliveryControl;
use crate::handoff::commands::{CommandSender, Lane, StorageStatus};
use crate::handoff::Handoff;
use crate::shard::metrics::{self as core_metrics, CoreMetrics};
use crate::storage::metrics::StorageMetrics;
use crate::util::logsink::LogSink;
use crate::util::stats::Exposition;
use crate::util::sys::ProcessStats;

/// Scrapes from the HTTP cores that may wait for the scrape thread; beyond it, 503.
pub const SCRAPES_QUEUED_MAX: usize = 4;

/// The commit the binary was built from: `TRIGGERD_BUILD_COMMIT` at build time
/// (`scripts/run` and `scripts/bench` set it from git), else `unknown`.
pub const BUILD_COMMIT: &str = match option_env!("TRIGGERD_BUILD_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// Every subsystem's counters. Built once by the runtime; shared by every core.
pub struct Registry {
    /// One per HTTP core, written only by that core.
    pub cores: Vec<Arc<CoreMetrics>>,
    /// Route names by route number, for the per-route series.
    pub routes: &'static [&'static str],
    pub storage: Arc<StorageMetrics>,
    pub deliveries: Arc<DeliveryMetrics>,
}

/// What the gauges are read from at scrape time: handles the subsystems that own
/// them share.
pub struct Sources {
    pub handoff: Arc<Handoff>,
    pub status: Arc<StorageStatus>,
    pub commands: CommandSender,
    /// Open connections over all HTTP cores.
    pub connections: Arc<AtomicUsize>,
    pub deliveries: Arc<DeliveryControl>,
    pub access_log: Option<LogSink>,
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

    /// Prometheus text exposition (format 0.0.4) of the counters, the gauges read from
    /// `sources` now, and the process's figures (`process`, read from /proc by the
    /// caller).
    pub fn render(&self, sources: &Sources, process: Option<ProcessStats>) -> String {
        let mut exposition = Exposition::new();
        core_metrics::expose(&self.cores, self.routes, &mut exposition);
        self.storage.expose(&mut exposition);
        self.deliveries.expose(&mut exposition);
        self.expose_gauges(sources, &mut exposition);
        expose_process(process, &mut exposition);
        exposition.finish()
    }

    fn expose_gauges(&self, sources: &Sources, exposition: &mut Exposition) {
        let handoff = &sources.handoff;
        let capacity: usize = handoff.links.iter().map(|link| link.events.capacity()).sum();
        let database_up = if sources.status.db_ok.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
        let gauges = [
            (
                "triggerd_ring_depth_events",
                "Events waiting in the rings for the storage core.",
                handoff.depth() as f64,
            ),
            ("triggerd_ring_capacity_events", "Capacity of all rings together.", capacity as f64),
            ("triggerd_database_up", "1 while the last write reached PostgreSQL.", database_up),
            ("triggerd_http_cores", "HTTP cores serving.", self.cores.len() as f64),
            (
                "triggerd_http_connections_open",
                "Connections open over all HTTP cores.",
                sources.connections.load(Ordering::Relaxed) as f64,
            ),
            (
                "triggerd_deliveries_in_flight",
                "Webhook attempts in flight.",
                sources.deliveries.in_flight.load(Ordering::Relaxed) as f64,
            ),
            (
                "triggerd_ingest_shedding_cores",
                "HTTP cores shedding load: their events' wait for a commit is a standing queue (503 beyond two writer rounds waiting).",
                handoff.links.iter().filter(|link| link.shedding.load(Ordering::Relaxed)).count() as f64,
            ),
            (
                "triggerd_stream_reads_held",
                "Stream reads (long-polls and event streams) waiting for a commit.",
                handoff.stream_waiters.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, value) in gauges {
            exposition.gauge(name, help, value);
        }
        let name = "triggerd_command_queue_depth";
        exposition.family(name, "Commands queued for the storage core, by lane.", "gauge");
        for lane in Lane::ALL {
            exposition.sample(name, &format!("lane=\"{}\"", lane.name()), sources.commands.depth(lane));
        }
        exposition.counter(
            "triggerd_access_log_dropped_total",
            "Access-log lines dropped because stderr fell behind (never waited for).",
            sources.access_log.as_ref().map_or(0, LogSink::dropped),
        );
        let name = "triggerd_build_info";
        exposition.family(name, "The running build: 1, labelled with its version and commit.", "gauge");
        let labels =
            format!("version=\"{}\",commit=\"{}\"", env!("CARGO_PKG_VERSION"), label_safe(BUILD_COMMIT));
        exposition.sample(name, &labels, 1);
    }
}

/// A label value as given, less anything the exposition format would need escaped.
fn label_safe(value: &str) -> String {
    value.chars().filter(|c| !matches!(c, '"' | '\\' | '\n')).collect()
}

/// The standard `process_*` series (Prometheus client conventions).
fn expose_process(process: Option<ProcessStats>, exposition: &mut Exposition) {
    let Some(process) = process else { return };
    exposition.family(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
    );
    exposition.sample("process_cpu_seconds_total", "", process.cpu_seconds);
    exposition.gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        process.resident_memory_bytes as f64,
    );
    exposition.gauge("process_open_fds", "Number of open file descriptors.", process.open_fds as f64);
    exposition.gauge("process_max_fds", "Maximum number of open file descriptors.", process.max_fds as f64);
    exposition.gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        process.start_time_seconds,
    );
}

/// Everything a scrape reads, shared by the scrape thread and the metrics listener.
pub struct Scrape {
    pub registry: Arc<Registry>,
    pub sources: Sources,
}

impl Scrape {
    /// The whole exposition now, /proc included: call it off the HTTP cores.
    pub fn render(&self) -> String {
        self.registry.render(&self.sources, crate::util::sys::process_stats())
    }
}

/// The HTTP cores' way to a scrape: a bounded queue to the scrape thread. Cheap to clone.
#[derive(Clone)]
pub struct Scraper {
    /// Where each scrape's answer goes; the thread owns the receiver.
    jobs: SyncSender<oneshot::Sender<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("too many scrapes are waiting")]
pub struct ScrapesFull;

impl Scraper {
    /// Starts the scrape thread.
    pub fn start(scrape: Arc<Scrape>) -> std::io::Result<Scraper> {
        let (jobs, receiver) = sync_channel::<oneshot::Sender<String>>(SCRAPES_QUEUED_MAX);
        std::thread::Builder::new().name("triggerd-scrape".into()).spawn(move || {
            while let Ok(reply) = receiver.recv() {
                let _ = reply.send(scrape.render());
            }
        })?;
        Ok(Scraper { jobs })
    }

    /// Asks for a scrape without waiting; the exposition arrives on the receiver.
    pub fn request(&self) -> Result<oneshot::Receiver<String>, ScrapesFull> {
        let (reply, answer) = oneshot::channel();
        match self.jobs.try_send(reply) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(ScrapesFull),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sources() -> Sources {
        Sources {
            handoff: Handoff::new(2, 8),
            status: Arc::new(StorageStatus::default()),
            commands: CommandSender::channels(4).0,
            connections: Arc::new(AtomicUsize::new(3)),
            deliveries: Arc::new(DeliveryControl::default()),
            access_log: None,
        }
    }

    #[test]
    fn merges_cores_and_renders_cumulative_buckets() {
        let registry = Registry::new(2, &["none", "health"]);
        registry.cores[0].request(1, 200, Duration::from_micros(50));
        registry.cores[1].request(1, 200, Duration::from_millis(3));
        registry.cores[1].request(1, 599, Duration::from_secs(20));
        CoreMetrics::count(&registry.cores[0].events_accepted, 3);
        CoreMetrics::count(&registry.cores[1].events_accepted, 4);
        let text = registry.render(&sources(), None);
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
        assert!(text.contains("triggerd_ring_depth_events 0\n"));
        assert!(text.contains("triggerd_http_connections_open 3\n"));
        assert!(text.contains("triggerd_command_queue_depth{lane=\"keys\"} 0\n"));
        assert!(text.contains(&format!("triggerd_build_info{{version=\"{}\",", env!("CARGO_PKG_VERSION"))));
        assert!(!text.contains("process_"), "no /proc figures given, none rendered");
    }

    #[test]
    fn process_figures_render_in_the_client_conventions() {
        let process = ProcessStats {
            cpu_seconds: 1.5,
            resident_memory_bytes: 4096,
            open_fds: 12,
            max_fds: 1024,
            start_time_seconds: 1_790_000_000.25,
        };
        let text = Registry::new(1, &["none"]).render(&sources(), Some(process));
        for line in [
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n",
            "process_resident_memory_bytes 4096\n",
            "process_open_fds 12\n",
            "process_max_fds 1024\n",
            "process_start_time_seconds 1790000000.25\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn a_scrape_is_rendered_on_the_scrape_thread() {
        let scrape = Arc::new(Scrape { registry: Registry::new(1, &["none"]), sources: sources() });
        let scraper = Scraper::start(scrape).unwrap();
        let text = scraper.request().unwrap().blocking_recv().unwrap();
        assert!(text.contains("process_open_fds "), "the scrape thread reads /proc");
    }
}
