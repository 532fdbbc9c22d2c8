//! `triggerd`: serve, migrate, and manage the embedded PostgreSQL cluster.
//!
//! Start-up order: io_uring probe → database (embedded cluster or DATABASE_URL) →
//! storage core (connect, migrate, writers) → Argon2 pool → HTTP cores → "listening"
//! line on stdout. Shutdown (SIGINT/SIGTERM): stop the embedded cluster if we started
//! it, exit 0.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;
use std::fmt::Write as _;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use triggerd::auth::pool::HashPool;
use triggerd::config::{LogFormat, ServeConfig};
use triggerd::config_file;
use triggerd::handoff::{Control, Handoff};
use triggerd::http::ConnectionLimits;
use triggerd::metrics::Registry;
use triggerd::runtime;
use triggerd::shard::{ShardParts, ShardSettings};
use triggerd::storage::local_pg::LocalPg;
use triggerd::storage::{self, BatchLimits, StorageConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "triggerd", version, about = "Durable, low-latency event ingestion (Triggers API)")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Serve the HTTP API.
    Serve(Box<ServeConfig>),
    /// Inspect this host: io_uring, memlock, cores, sysctls, CPU governor. Exits 1 when
    /// the service cannot run here.
    Check {
        /// HTTP cores the service will run (default: all CPUs but one).
        #[arg(long, env = "TRIGGERD_HTTP_CORES")]
        http_cores: Option<usize>,
        #[arg(long, env = "TRIGGERD_CONNECTIONS_PER_CORE_MAX", default_value_t = 10_000)]
        connections_per_core_max: usize,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Start or stop a private PostgreSQL cluster (used by scripts/test).
    LocalPg {
        #[command(subcommand)]
        action: LocalPgAction,
    },
}

#[derive(Subcommand)]
enum LocalPgAction {
    /// Initialise (if needed) and start; prints the connection string.
    Start {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 54329)]
        port: u16,
    },
    /// Stop a cluster started with `start`.
    Stop {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 54329)]
        port: u16,
    },
}

/// Applies the configuration file (if any) as environment variables that are not set
/// already; returns the options it set.
fn apply_config_file() -> Result<BTreeSet<String>, String> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("serve") {
        return Ok(BTreeSet::new());
    }
    let Some(path) = config_file::path_from(&args) else { return Ok(BTreeSet::new()) };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("--config {path}: {e}"))?;
    let command = Cli::command();
    let known: Vec<String> = command
        .find_subcommand("serve")
        .map(|serve| serve.get_arguments().filter_map(|a| a.get_long().map(str::to_string)).collect())
        .unwrap_or_default();
    let entries = config_file::parse(&text, &known).map_err(|e| format!("--config {path}: {e}"))?;
    let mut applied = BTreeSet::new();
    for (option, value) in entries {
        let variable = config_file::env_name(&option);
        if std::env::var_os(&variable).is_none() {
            // Edition 2021, single-threaded here: no thread has started yet.
            std::env::set_var(&variable, value);
            applied.insert(option);
        }
    }
    Ok(applied)
}

/// `--print-config`: every option of `serve`, its effective value and its source.
fn print_config(matches: &clap::ArgMatches, from_file: &BTreeSet<String>) {
    let command = Cli::command();
    let Some(serve) = command.find_subcommand("serve") else { return };
    let mut out = String::new();
    for argument in serve.get_arguments() {
        let (Some(long), id) = (argument.get_long(), argument.get_id().as_str()) else { continue };
        if long == "print-config" || long == "help" {
            continue;
        }
        let value = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>().join(","))
            .map(|v| config_file::masked(long, &v));
        let source = match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => "flag",
            Some(clap::parser::ValueSource::EnvVariable) if from_file.contains(long) => "file",
            Some(clap::parser::ValueSource::EnvVariable) => "environment",
            Some(clap::parser::ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let _ = writeln!(out, "{long} = {}  # {source}", value.unwrap_or_else(|| "(unset)".into()));
    }
    let _ = write!(std::io::stdout(), "{out}");
}

fn main() -> ExitCode {
    let from_file = match apply_config_file() {
        Ok(applied) => applied,
        Err(message) => {
            eprintln!("triggerd: {message}");
            return ExitCode::FAILURE;
        }
    };
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Commands::Serve(config) if config.print_config => {
            if let Some(serve) = matches.subcommand_matches("serve") {
                print_config(serve, &from_file);
            }
            Ok(())
        }
        Commands::Serve(config) => serve(*config),
        Commands::Migrate { database_url } => migrate(&database_url),
        Commands::Check { http_cores, connections_per_core_max } => {
            let cpus = runtime::available_cpus();
            let cores = http_cores.unwrap_or(cpus.saturating_sub(1)).max(1);
            let (report, runnable) =
                runtime::check::report(&runtime::check::inspect(cores, connections_per_core_max));
            let _ = write!(std::io::stdout(), "{report}");
            if runnable {
                Ok(())
            } else {
                Err("this host cannot run triggerd as it is (see FAIL above)".into())
            }
        }
        Commands::LocalPg { action } => local_pg(action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("triggerd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    Ok(runtime.block_on(future))
}

fn local_pg(action: LocalPgAction) -> Result<(), String> {
    match action {
        LocalPgAction::Start { data_dir, port } => {
            let cluster = LocalPg::new(&data_dir, port).map_err(|e| e.to_string())?;
            cluster.start().map_err(|e| e.to_string())?;
            block_on(cluster.ensure_database())?.map_err(|e| e.to_string())?;
            writeln!(std::io::stdout(), "{}", cluster.database_url()).map_err(|e| e.to_string())
        }
        LocalPgAction::Stop { data_dir, port } => {
            LocalPg::new(&data_dir, port).and_then(|cluster| cluster.stop()).map_err(|e| e.to_string())
        }
    }
}

fn migrate(database_url: &str) -> Result<(), String> {
    let config = tokio_postgres::Config::from_str(database_url).map_err(|e| format!("DATABASE_URL: {e}"))?;
    block_on(async move {
        let (mut client, connection) =
            config.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let applied = storage::migrations::migrate(&mut client).await.map_err(|e| e.to_string())?;
        writeln!(std::io::stdout(), "applied {applied} migration(s)").map_err(|e| e.to_string())
    })?
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

/// Graceful shutdown, bounded by --shutdown-timeout-ms: every core stops accepting and
/// closes idle connections; requests in progress are answered (with Connection: close).
/// An ingest request is answered only after its commit, so once the connections are
/// gone every acknowledged event is committed. Then deliveries in flight may finish.
fn shut_down(
    signal: i32,
    config: &ServeConfig,
    handoff: &Handoff,
    storage: &storage::StorageHandle,
    cores: &runtime::HttpCores,
) {
    use std::sync::atomic::Ordering;
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
    storage.deliveries.stop.store(true, Ordering::Release);
    wait("deliveries", &|| storage.deliveries.in_flight.load(Ordering::Acquire));
    tracing::info!("shut down cleanly");
}

fn serve(config: ServeConfig) -> Result<(), String> {
    config.validate()?;
    init_logging(&config.log, config.log_format);
    let signals = block_shutdown_signals();
    runtime::check_io_uring()?;
    if let Some(limit) = runtime::memlock_bytes().filter(|&l| l < runtime::MEMLOCK_BYTES_MIN) {
        return Err(format!(
            "the memlock limit is {limit} bytes; io_uring needs at least {} (ulimit -l 512, or LimitMEMLOCK= in systemd)",
            runtime::MEMLOCK_BYTES_MIN
        ));
    }
    let cpus = runtime::available_cpus();
    let http_cores = config.http_cores(cpus);
    let mut plan = runtime::plan_placement(http_cores, &runtime::allowed_cpus());
    if config.storage_cpu.is_some() {
        plan.storage_cpu = config.storage_cpu;
    }

    let (database, managed) = match &config.database_url {
        Some(url) => (tokio_postgres::Config::from_str(url).map_err(|e| format!("DATABASE_URL: {e}"))?, None),
        None => {
            let cluster = LocalPg::new(&config.data_dir, config.pg_port).map_err(|e| e.to_string())?;
            cluster.start().map_err(|e| e.to_string())?;
            block_on(cluster.ensure_database())?.map_err(|e| e.to_string())?;
            tracing::info!(data_dir = %config.data_dir.display(), "embedded PostgreSQL running");
            let url = cluster.database_url();
            (tokio_postgres::Config::from_str(&url).map_err(|e| e.to_string())?, Some(cluster))
        }
    };

    let handoff = Handoff::new(http_cores, config.ring_capacity);
    let shutdown_handoff = Arc::clone(&handoff);
    let metrics = Registry::new(http_cores);
    let storage = storage::start(
        StorageConfig {
            database,
            batch: BatchLimits {
                events_max: config.batch_events_max,
                bytes_max: config.batch_bytes_max,
                statement_timeout: Duration::from_millis(config.statement_timeout_ms),
            },
            statement_timeout: Duration::from_millis(config.statement_timeout_ms),
            writers: config.writers,
            command_queue_max: config.command_queue_max,
            commands_in_flight_max: 256,
            cpu: plan.storage_cpu,
            metrics: Arc::clone(&metrics.storage),
            delivery: config.delivery()?,
            retention: triggerd::storage::retention::RetentionConfig {
                retention_days: config.retention_days,
                ahead_days: config.partitions_ahead_days,
                interval: Duration::from_millis(config.maintenance_interval_ms),
            },
            delivery_metrics: Arc::clone(&metrics.deliveries),
        },
        Arc::clone(&handoff),
    )
    .map_err(|e| e.to_string())?;
    let hash_pool = HashPool::start(config.argon2_threads, config.argon2_queue_max, config.argon2_memory_kib)
        .map_err(|e| e.to_string())?;
    let parts = ShardParts {
        handoff,
        storage: storage.clone(),
        hash_pool,
        metrics,
        settings: Arc::new(ShardSettings {
            admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
            key_cache_max: config.key_cache_max,
            negative_cache_max: config.negative_cache_max,
            key_failures_per_id_max: config.key_failures_per_id_max,
            key_failures_per_address_max: config.key_failures_per_address_max,
            signups_per_address_max: config.signups_per_address_max,
        }),
    };
    let limits = ConnectionLimits {
        header_timeout: Duration::from_millis(config.header_timeout_ms),
        body_timeout: Duration::from_millis(config.body_timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        write_timeout: Duration::from_millis(config.write_timeout_ms),
    };
    let open_files = runtime::raise_open_files_limit();
    let connections = config.connections_per_core_max.saturating_mul(http_cores) as u64;
    if open_files < connections + 64 {
        tracing::warn!(
            open_files,
            connections,
            "the open-file limit is below the connection limit (ulimit -n)"
        );
    }
    let cores = runtime::start_http_cores(
        config.listen,
        &plan.http_cpus,
        parts,
        limits,
        config.connections_per_core_max,
    )
    .map_err(|e| e.to_string())?;
    tracing::info!(http_cpus = ?plan.http_cpus, storage_cpu = ?plan.storage_cpu, "cores started");
    // The line tests and scripts wait for: printed once every core accepts.
    writeln!(std::io::stdout(), "triggerd listening on http://{}", cores.local_addr)
        .map_err(|e| e.to_string())?;
    std::io::stdout().flush().map_err(|e| e.to_string())?;

    let signal = wait_for_signal(&signals);
    shut_down(signal, &config, &shutdown_handoff, &storage, &cores);
    if let Some(cluster) = managed.filter(|_| config.pg_stop_on_exit) {
        if let Err(e) = cluster.stop() {
            tracing::warn!(error = %e, "could not stop the embedded PostgreSQL");
        }
    }
    Ok(())
}
