//! The composition root: the one place that assembles the layers. `serve` checks the
//! host, opens the database (the embedded cluster or `--database-url`), starts the
//! storage thread with the delivery engine on it, the Argon2 pool and the HTTP cores,
//! prints the listening line, and on SIGINT/SIGTERM shuts down in order. Everything
//! below is built from here and knows nothing of what sits above it.

pub mod check;
pub mod config;
pub mod config_file;
mod cores;
pub mod notify;

use std::io::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::auth::pool::HashPool;
use crate::delivery::{DeliveryControl, Engine, HANDOFF_QUEUE_MAX};
use crate::handoff::commands::{CommandSender, StorageStatus};
use crate::handoff::{Control, Handoff};
use crate::http::response::CONTENT_TYPE_TEXT;
use crate::http::ConnectionLimits;
use crate::metrics::{Registry, Scrape, Scraper, Sources};
use crate::shard::{ShardParts, ShardSettings};
use crate::storage::local_pg::LocalPg;
use crate::storage::pg::Target;
use crate::storage::retention::RetentionConfig;
use crate::storage::{self, BatchLimits, StorageConfig};
use crate::util::logsink::LogSink;
use crate::util::{error_chain, sys};
use config::{LogFormat, ServeConfig};
pub use cores::{HttpCores, HTTP_CORE_STACK_BYTES, IO_MEMORY_BYTES, MEMLOCK_BYTES_MIN};

/// Commands executing at once per lane on the storage thread.
const COMMANDS_IN_FLIGHT_MAX: usize = 256;

/// The embedded cluster this process uses, and whether this process started it.
struct Managed {
    cluster: LocalPg,
    started_here: bool,
    /// Held for the process's life: one `serve` per data directory.
    _lock: std::fs::File,
}

/// Runs `triggerd serve` until a shutdown signal; `Err` is the message to print.
pub fn serve(mut config: ServeConfig) -> Result<(), String> {
    let notifier = notify::Notifier::from_environment()?.map(Arc::new);
    config.read_secret_files()?;
    config.validate()?;
    init_logging(&config.log, config.log_format);
    let signals = block_shutdown_signals();
    check_host()?;
    check_port_free(config.listen, "--listen")?;
    let (database, managed) = open_database(&config)?;
    let result = run(&config, database, &signals, notifier);
    if let Some(managed) = managed {
        // A failed start stops only a cluster it started; a clean exit honours
        // --pg-stop-on-exit.
        let stop = match &result {
            Ok(()) => config.pg_stop_on_exit,
            Err(_) => managed.started_here,
        };
        if stop {
            if let Err(e) = managed.cluster.stop() {
                tracing::warn!(error = %e, "could not stop the embedded PostgreSQL");
            }
        }
    }
    result
}

/// Starts everything on `database`, serves until a signal, shuts down in order.
fn run(
    config: &ServeConfig,
    database: Target,
    signals: &libc::sigset_t,
    notifier: Option<Arc<notify::Notifier>>,
) -> Result<(), String> {
    let http_cores = config.http_cores(sys::available_cpus());
    let watchdog = notifier.as_ref().and(notify::watchdog_period());
    // One heartbeat per HTTP core, then the storage thread's.
    let heartbeats = notify::Heartbeats::new(http_cores + 1, watchdog);
    let mut plan = cores::plan_placement(http_cores, &sys::allowed_cpus());
    if config.storage_cpu.is_some() {
        plan.storage_cpu = config.storage_cpu;
    }
    let handoff = Handoff::new(http_cores, config.ring_capacity);
    let registry = Registry::new(http_cores, crate::api::ROUTE_LABELS);
    let status = Arc::new(StorageStatus::default());
    let (commands, lanes) = CommandSender::channels(config.command_queue_max);
    let deliveries = Arc::new(DeliveryControl::default());
    let mut storage_config = storage_config(config, database, plan.storage_cpu, &registry, &deliveries)?;
    storage_config.on_start =
        storage_config.on_start.map(|start| beat_on_storage(start, &heartbeats, http_cores));
    storage::start(storage_config, Arc::clone(&handoff), lanes, Arc::clone(&status))
        .map_err(|e| e.to_string())?;
    let hash_pool = HashPool::start(config.argon2_threads, config.argon2_queue_max, config.argon2_memory_kib)
        .map_err(|e| e.to_string())?;
    let (access_log, log_writer) = match config.access_log {
        true => {
            LogSink::start().map(|(sink, writer)| (Some(sink), Some(writer))).map_err(|e| e.to_string())?
        }
        false => (None, None),
    };
    let connections = Arc::new(AtomicUsize::new(0));
    let sources = Sources {
        handoff: Arc::clone(&handoff),
        status: Arc::clone(&status),
        commands: commands.clone(),
        connections: Arc::clone(&connections),
        deliveries: Arc::clone(&deliveries),
        access_log: access_log.clone(),
    };
    let scraper = start_metrics(config, Arc::new(Scrape { registry: Arc::clone(&registry), sources }))?;
    let instance_id = random_instance_id();
    let setup = cores::CoreSetup {
        parts: ShardParts {
            handoff: Arc::clone(&handoff),
            commands: commands.clone(),
            status: Arc::clone(&status),
            hash_pool,
            metrics: registry.cores.clone(),
            settings: Arc::new(shard_settings(config, instance_id)),
        },
        metrics: scraper,
        limits: connection_limits(config),
        connections_max: config.connections_per_core_max,
        heartbeats: Arc::clone(&heartbeats),
        access_log,
    };
    warn_if_open_files_short(config, http_cores);
    let cores = cores::start_http_cores(config.listen, &plan.http_cpus, setup, connections)
        .map_err(|e| e.to_string())?;
    let instance = format!("{instance_id:016x}");
    tracing::info!(http_cpus = ?plan.http_cpus, storage_cpu = ?plan.storage_cpu, instance, "cores started");
    announce(config.log_format, &format!("triggerd listening on http://{}", cores.local_addr))?;
    let watchdog = start_watchdog(notifier.as_ref(), watchdog, heartbeats, cores.local_addr)?;
    let signal = wait_for_signal(signals);
    if let Some(notifier) = &notifier {
        notifier.send("STOPPING=1");
    }
    if let Some((stop, thread)) = watchdog {
        stop.store(true, Ordering::Relaxed);
        thread.thread().unpark();
        let _ = thread.join();
    }
    shut_down(signal, config, &handoff, &deliveries, cores, &commands);
    status.closing.store(true, Ordering::Relaxed);
    if let Some(writer) = log_writer {
        if !writer.close(LOG_FLUSH_TIMEOUT) {
            tracing::warn!("access-log lines still queued at exit were lost (stderr not read)");
        }
    }
    Ok(())
}

/// Wraps the storage thread's start hook so that thread beats its heartbeat too.
fn beat_on_storage(
    start: storage::OnStart,
    heartbeats: &Arc<notify::Heartbeats>,
    thread: usize,
) -> storage::OnStart {
    let heartbeats = Arc::clone(heartbeats);
    Box::new(move |db| {
        tokio::task::spawn_local(async move {
            loop {
                heartbeats.beat(thread, heartbeats.now_ms());
                tokio::time::sleep(heartbeats.interval).await;
            }
        });
        start(db)
    })
}

type Watchdog = (Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>);

/// Tells systemd the service is ready and, if it asked for a watchdog, starts pinging.
fn start_watchdog(
    notifier: Option<&Arc<notify::Notifier>>,
    period: Option<Duration>,
    heartbeats: Arc<notify::Heartbeats>,
    address: std::net::SocketAddr,
) -> Result<Option<Watchdog>, String> {
    let Some(notifier) = notifier else { return Ok(None) };
    notifier.send(&format!("READY=1\nSTATUS=listening on http://{address}"));
    let Some(period) = period else { return Ok(None) };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (notifier, stopping) = (Arc::clone(notifier), Arc::clone(&stop));
    let thread = std::thread::Builder::new()
        .name("triggerd-watchdog".into())
        .spawn(move || notify::run_watchdog(notifier, period, heartbeats, stopping))
        .map_err(|e| format!("cannot start the watchdog thread: {e}"))?;
    Ok(Some((stop, thread)))
}

/// Longest the exit waits for queued access-log lines to be written.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A random id for this process: the prefix of its request ids.
fn random_instance_id() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No entropy: the time still tells restarts apart.
        return crate::util::time::now_micros() as u64;
    }
    u64::from_le_bytes(bytes)
}

/// The lines tests and scripts wait for, on stdout: "triggerd listening on http://…"
/// once every core accepts (and, before it, "triggerd metrics on http://…/metrics" with
/// `--metrics-listen`): plain text, or one JSON object with `--log-format json` (its
/// message is the same text).
fn announce(format: LogFormat, line: &str) -> Result<(), String> {
    let mut stdout = std::io::stdout();
    match format {
        LogFormat::Text => writeln!(stdout, "{line}"),
        LogFormat::Json => {
            let address = line.rsplit(' ').next().unwrap_or_default();
            let mut json = Vec::new();
            crate::util::json::ObjectWriter::new(&mut json)
                .str("level", "INFO")
                .str("message", line)
                .str("address", address)
                .finish();
            writeln!(stdout, "{}", String::from_utf8_lossy(&json))
        }
    }
    .and_then(|()| stdout.flush())
    .map_err(|e| e.to_string())
}

/// Where `GET /metrics` is rendered: with `--metrics-listen`, a listener of its own
/// (and the public port answers 404); otherwise the scrape thread the cores ask.
fn start_metrics(config: &ServeConfig, scrape: Arc<Scrape>) -> Result<Option<Scraper>, String> {
    let Some(address) = config.metrics_listen else {
        return Scraper::start(scrape).map(Some).map_err(|e| format!("cannot start the scrape thread: {e}"));
    };
    check_port_free(address, "--metrics-listen")?;
    let listener =
        std::net::TcpListener::bind(address).map_err(|e| format!("--metrics-listen {address}: {e}"))?;
    let bound =
        crate::http::exporter::start(listener, "/metrics", CONTENT_TYPE_TEXT, move || scrape.render())
            .map_err(|e| format!("--metrics-listen {address}: {e}"))?;
    announce(config.log_format, &format!("triggerd metrics on http://{bound}/metrics"))?;
    Ok(None)
}

/// Refuses to start on a port another process listens on. SO_REUSEPORT would
/// otherwise let two servers share it silently, each answering some requests.
fn check_port_free(listen: std::net::SocketAddr, option: &str) -> Result<(), String> {
    if listen.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(listen) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let holder = match sys::port_holder(listen.port()) {
                Some((pid, command)) => format!(" by process {pid} ({command})"),
                None => String::new(),
            };
            Err(format!(
                "{listen} is already in use{holder}; stop that process or choose another {option} port"
            ))
        }
        Err(e) => Err(format!("cannot listen on {listen}: {e}")),
    }
}

/// The storage thread's settings, with the delivery engine started on it.
fn storage_config(
    config: &ServeConfig,
    database: Target,
    cpu: Option<usize>,
    registry: &Registry,
    deliveries: &Arc<DeliveryControl>,
) -> Result<StorageConfig, String> {
    let statement_timeout = Duration::from_millis(config.statement_timeout_ms);
    let (committed, handed) = mpsc::channel(HANDOFF_QUEUE_MAX);
    let (delivery, metrics, control) =
        (config.delivery()?, Arc::clone(&registry.deliveries), Arc::clone(deliveries));
    Ok(StorageConfig {
        database,
        batch: BatchLimits {
            events_max: config.batch_events_max,
            bytes_max: config.batch_bytes_max,
            statement_timeout,
        },
        writers: config.writers,
        commands_in_flight_max: COMMANDS_IN_FLIGHT_MAX,
        statement_timeout,
        cpu,
        metrics: Arc::clone(&registry.storage),
        retention: RetentionConfig {
            retention_days: config.retention_days,
            undelivered_retention_days: config.undelivered_retention_days,
            ahead_days: config.partitions_ahead_days,
            interval: Duration::from_millis(config.maintenance_interval_ms),
        },
        committed: Some(committed),
        on_start: Some(Box::new(move |db| {
            let engine = Engine::new(db, delivery, metrics, control);
            tokio::task::spawn_local(Rc::clone(&engine).run(handed));
        })),
    })
}

fn shard_settings(config: &ServeConfig, instance_id: u64) -> ShardSettings {
    ShardSettings {
        admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
        key_cache_max: config.key_cache_max,
        negative_cache_max: config.negative_cache_max,
        key_failures_per_id_max: config.key_failures_per_id_max,
        key_failures_per_address_max: config.key_failures_per_address_max,
        signups_per_address_max: config.signups_per_address_max,
        instance_id,
        queue_target: (config.queue_target_ms > 0).then(|| Duration::from_millis(config.queue_target_ms)),
        // Four full batches (the writers take turns, so a round is one batch): 16
        // clients sending 100-event batches back to back (1 600 waiting) are a busy
        // write path, not a standing queue to shed.
        queue_floor: crate::handoff::shedding::FLOOR_BATCHES * config.batch_events_max,
        stream_keep_alive: Duration::from_millis(config.stream_keep_alive_ms),
    }
}

fn connection_limits(config: &ServeConfig) -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_millis(config.header_timeout_ms),
        body_timeout: Duration::from_millis(config.body_timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        write_timeout: Duration::from_millis(config.write_timeout_ms),
    }
}

/// What the kernel must allow before anything starts.
fn check_host() -> Result<(), String> {
    sys::check_io_uring()?;
    if let Some(limit) = sys::memlock_bytes().filter(|&l| l < MEMLOCK_BYTES_MIN) {
        return Err(format!(
            "the memlock limit is {limit} bytes; io_uring needs at least {MEMLOCK_BYTES_MIN} (ulimit -l 512, or LimitMEMLOCK= in systemd)"
        ));
    }
    Ok(())
}

fn warn_if_open_files_short(config: &ServeConfig, http_cores: usize) {
    let open_files = sys::raise_open_files_limit();
    let connections = config.connections_per_core_max.saturating_mul(http_cores) as u64;
    if open_files < connections + 64 {
        tracing::warn!(
            open_files,
            connections,
            "the open-file limit is below the connection limit (ulimit -n)"
        );
    }
}

/// The database to use, and the embedded cluster if there is one.
fn open_database(config: &ServeConfig) -> Result<(Target, Option<Managed>), String> {
    if let Some(url) = &config.database_url {
        return Ok((Target::parse(url).map_err(|e| format!("DATABASE_URL: {e}"))?, None));
    }
    let cluster = LocalPg::new(&config.data_dir, config.pg_port).map_err(|e| e.to_string())?;
    // One serve per data directory: a second one would share the cluster, and stopping
    // either would stop it under the other.
    let lock = sys::lock_file(&config.data_dir.join("triggerd.lock")).map_err(|holder| {
        let holder = if holder.is_empty() { String::new() } else { format!(" by process {holder}") };
        format!(
            "the data directory {} is in use{holder} (another triggerd serve); stop it, or give this one \
             its own --data-dir (instances that share data use one database: --database-url)",
            config.data_dir.display()
        )
    })?;
    let started_here = cluster.start().map_err(|e| e.to_string())?;
    let managed = Managed { cluster, started_here, _lock: lock };
    let ready = block_on(managed.cluster.ensure_database()).and_then(|r| r.map_err(|e| error_chain(&e)));
    if let Err(e) = ready {
        if managed.started_here {
            let _ = managed.cluster.stop();
        }
        return Err(e);
    }
    tracing::info!(data_dir = %config.data_dir.display(), "embedded PostgreSQL running");
    let url = managed.cluster.database_url();
    Ok((Target::parse(&url)?, Some(managed)))
}

pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Runs a future to completion on a throwaway current-thread runtime (start-up and
/// one-shot subcommands only).
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    Ok(runtime.block_on(future))
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts later, so that
/// `wait_for_signal` receives them synchronously.
fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use; the mask
    // change affects only signal delivery.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` is an initialised sigset_t and `signal` a live local.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

/// Gives the unused rate-limit tokens of this instance back to their windows, so the
/// other instances can admit them (otherwise they lapse when the window ends).
fn return_rate_tokens(commands: &CommandSender, deadline: Instant) {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let now_ms = crate::util::time::now_ms();
    if commands.send(crate::handoff::commands::Command::ReturnRateTokens { now_ms, reply }).is_err() {
        return;
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    match block_on(async move { tokio::time::timeout(remaining, answer).await }) {
        Ok(Ok(Ok(Ok(returned)))) => tracing::info!(returned, "unused rate-limit tokens given back"),
        Ok(Ok(Ok(Err(e)))) => {
            tracing::warn!(error = %e, "could not give rate-limit tokens back; they lapse at their window's end")
        }
        _ => tracing::warn!("no answer giving rate-limit tokens back; they lapse at their window's end"),
    }
}

/// Graceful shutdown, bounded by --shutdown-timeout-ms: every core stops accepting and
/// closes idle connections; requests in progress are answered (with Connection: close).
/// An ingest request is answered only after its commit, so once the connections are
/// gone every acknowledged event is committed. Then deliveries in flight may finish.
fn shut_down(
    signal: i32,
    config: &ServeConfig,
    handoff: &Handoff,
    deliveries: &DeliveryControl,
    cores: HttpCores,
    commands: &CommandSender,
) {
    let deadline = Instant::now() + Duration::from_millis(config.shutdown_timeout_ms);
    tracing::info!(signal, "shutting down: draining connections");
    for link in &handoff.links {
        while link.send_control(Control::Drain).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let wait = |what: &str, busy: &dyn Fn() -> usize| {
        while busy() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if busy() > 0 {
            tracing::warn!(left = busy(), "shutdown timeout reached with {what} still open");
        }
    };
    wait("connections", &|| cores.connections.load(Ordering::Acquire));
    return_rate_tokens(commands, deadline);
    deliveries.stop.store(true, Ordering::Release);
    wait("deliveries", &|| deliveries.leases_held.load(Ordering::Acquire));
    if cores.connections.load(Ordering::Acquire) == 0 {
        // Every core has closed its listener and connections: its executor ends.
        for handle in cores.handles {
            let _ = handle.join();
        }
    }
    tracing::info!("shut down cleanly");
}
