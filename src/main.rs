//! `triggerd`: the command line. `serve` hands its configuration to
//! `runtime::serve`, which assembles and runs the service; the other subcommands
//! (`check`, `migrate`, `local-pg`) are one-shot tools.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use triggerd::runtime::{self, config, config::ServeConfig, config_file};
use triggerd::storage;
use triggerd::storage::local_pg::LocalPg;

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
        /// HTTP cores the service will run (default: all CPUs but one), to size the
        /// memlock and open-file checks.
        #[arg(long, env = "TRIGGERD_HTTP_CORES")]
        http_cores: Option<usize>,
        /// Connections per HTTP core the service will accept, to size the open-file check.
        #[arg(long, env = "TRIGGERD_CONNECTIONS_PER_CORE_MAX", default_value_t = 10_000)]
        connections_per_core_max: usize,
        /// The service's configuration file (`serve --config`): its values apply here
        /// too, below flags and environment.
        #[arg(long, env = "TRIGGERD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Apply pending database migrations and exit, or show where each one stands.
    /// Refuses a database whose applied migrations differ from this binary's or that
    /// has migrations this binary does not know.
    Migrate {
        /// PostgreSQL to migrate (URL or key=value; sslmode and sslrootcert as libpq).
        #[arg(
            long,
            env = "DATABASE_URL",
            hide_env_values = true,
            required_unless_present = "database_url_file"
        )]
        database_url: Option<String>,
        /// File holding the database URL (first line), instead of --database-url.
        #[arg(long, env = "TRIGGERD_DATABASE_URL_FILE", conflicts_with = "database_url")]
        database_url_file: Option<PathBuf>,
        /// List every migration (applied, pending, or unknown to this binary) with its
        /// SHA-256 checksum and change nothing; exits 1 if the database would be refused.
        #[arg(long)]
        status: bool,
        /// The service's configuration file (`serve --config`): its values apply here
        /// too, below flags and environment.
        #[arg(long, env = "TRIGGERD_CONFIG")]
        config: Option<PathBuf>,
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
        /// Directory of the cluster (created if missing): data, socket and log.
        #[arg(long)]
        data_dir: PathBuf,
        /// Port of the cluster's Unix socket (and of TCP 127.0.0.1 with TLS).
        #[arg(long, default_value_t = 54329)]
        port: u16,
        /// Server certificate chain (PEM): also listen on TCP 127.0.0.1 with TLS, and
        /// refuse TCP connections without TLS. Needs --ssl-key-file.
        #[arg(long, requires = "ssl_key_file")]
        ssl_cert_file: Option<PathBuf>,
        /// Private key (PEM) of --ssl-cert-file.
        #[arg(long, requires = "ssl_cert_file")]
        ssl_key_file: Option<PathBuf>,
    },
    /// Stop a cluster started with `start`.
    Stop {
        /// Directory the cluster was started in.
        #[arg(long)]
        data_dir: PathBuf,
        /// Port it was started on.
        #[arg(long, default_value_t = 54329)]
        port: u16,
    },
}

/// The subcommands that read `--config`.
const READ_CONFIG: &[&str] = &["serve", "check", "migrate"];

/// Applies the configuration file (if any) as environment variables that are not set
/// already; returns the options it set. The file holds `serve`'s options; `check` and
/// `migrate` read it too and use those they share (the database, the core counts).
fn apply_config_file() -> Result<BTreeSet<String>, String> {
    let args: Vec<String> = std::env::args().collect();
    if !args.get(1).is_some_and(|command| READ_CONFIG.contains(&command.as_str())) {
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

/// A clap error, with the environment variable named when the bad value came from one
/// (clap names only the flag, which the user never typed).
fn exit_naming_the_variable(error: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        error.exit();
    }
    let Some(ContextValue::String(argument)) = error.get(ContextKind::InvalidArg) else { error.exit() };
    let long = argument.trim_start_matches("--").split([' ', '=']).next().unwrap_or_default().to_string();
    let typed =
        std::env::args().any(|arg| arg == format!("--{long}") || arg.starts_with(&format!("--{long}=")));
    let variable = Cli::command().get_subcommands().find_map(|sub| {
        sub.get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .and_then(|a| a.get_env())
            .map(|env| env.to_string_lossy().into_owned())
    });
    match variable.filter(|v| !typed && std::env::var_os(v).is_some()) {
        Some(variable) => {
            let _ = error.print();
            eprintln!("\nThe value came from the environment variable {variable} (or the --config file), not from the command line.");
            std::process::exit(2)
        }
        None => error.exit(),
    }
}

/// `--print-config`: every option of `serve`, its effective value and its source.
/// Options whose default is computed at start-up show the value they will take.
fn print_config(matches: &clap::ArgMatches, from_file: &BTreeSet<String>, config: &ServeConfig) {
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
        let (value, source) = match (value, long) {
            (Some(value), _) => (value, source.to_string()),
            (None, "http-cores") => {
                let cpus = triggerd::util::sys::available_cpus();
                (
                    config.http_cores(cpus).to_string(),
                    format!("default: all {cpus} CPUs but one, at least one"),
                )
            }
            (None, "storage-cpu") => ("(unpinned unless a CPU is left over)".into(), "default".into()),
            (None, "database-url") if config.database_url_file.is_some() => {
                ("(read from --database-url-file)".into(), "default".into())
            }
            (None, "admin-token") if config.admin_token_file.is_some() => {
                ("(read from --admin-token-file)".into(), "default".into())
            }
            (None, "database-url") => {
                ("(unset: the embedded cluster under --data-dir)".into(), "default".into())
            }
            (None, "admin-token") => ("(unset: sign-up open on loopback only)".into(), "default".into()),
            (None, _) => ("(unset)".into(), source.to_string()),
        };
        let _ = writeln!(out, "{long} = {value}  # {source}");
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
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(error) => exit_naming_the_variable(error),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Commands::Serve(mut config) if config.print_config => {
            if let Some(serve) = matches.subcommand_matches("serve") {
                print_config(serve, &from_file, &config);
            }
            // Printed first, so every value is there to see; then the verdict on them.
            config.read_secret_files().and_then(|()| config.validate())
        }
        Commands::Serve(config) => runtime::serve(*config),
        Commands::Migrate { database_url, database_url_file, status, config: _ } => {
            migrate(database_url, database_url_file, status)
        }
        Commands::Check { http_cores, connections_per_core_max, config: _ } => {
            let cpus = triggerd::util::sys::available_cpus();
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

fn local_pg(action: LocalPgAction) -> Result<(), String> {
    match action {
        LocalPgAction::Start { data_dir, port, ssl_cert_file, ssl_key_file } => {
            let mut cluster = LocalPg::new(&data_dir, port).map_err(|e| e.to_string())?;
            if let (Some(certificate), Some(key)) = (ssl_cert_file, ssl_key_file) {
                cluster = cluster.with_tls(&certificate, &key);
            }
            cluster.start().map_err(|e| e.to_string())?;
            runtime::block_on(cluster.ensure_database())?.map_err(|e| e.to_string())?;
            writeln!(std::io::stdout(), "{}", cluster.database_url()).map_err(|e| e.to_string())
        }
        LocalPgAction::Stop { data_dir, port } => {
            LocalPg::new(&data_dir, port).and_then(|cluster| cluster.stop()).map_err(|e| e.to_string())
        }
    }
}

fn migrate(url: Option<String>, url_file: Option<PathBuf>, status: bool) -> Result<(), String> {
    let url = match url_file {
        Some(path) => config::read_secret_file("--database-url-file", &path)?,
        None => url.unwrap_or_default(),
    };
    let target = storage::pg::Target::parse(&url).map_err(|e| format!("DATABASE_URL: {e}"))?;
    if !status {
        // Each migration is logged as it starts and with its duration when done.
        runtime::init_logging("info", config::LogFormat::Text);
    }
    runtime::block_on(async move {
        let (mut client, connection) = target.connect().await.map_err(|e| triggerd::util::error_chain(&e))?;
        tokio::spawn(connection);
        if status {
            let statuses =
                storage::migrations::status(&client).await.map_err(|e| triggerd::util::error_chain(&e))?;
            return print_migration_status(&statuses);
        }
        let applied = storage::migrations::migrate(&mut client).await.map_err(|e| e.to_string())?;
        writeln!(std::io::stdout(), "applied {applied} migration(s)").map_err(|e| e.to_string())
    })?
}

/// `migrate --status`: one line per migration; `Err` when `serve` would refuse the database.
fn print_migration_status(statuses: &[storage::migrations::Status]) -> Result<(), String> {
    use storage::migrations::State;
    let mut out = String::from("version  name                      state                  applied at            checksum (SHA-256 of the SQL)\n");
    let mut refused = Vec::new();
    for status in statuses {
        let state = match &status.state {
            State::Applied => "applied",
            State::AppliedWithoutChecksum => "applied, no checksum",
            State::ChecksumDiffers { .. } => "CHECKSUM DIFFERS",
            State::Pending => "pending",
            State::Unknown => "UNKNOWN TO THIS BINARY",
        };
        let at = status.applied_at.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "{:>7}  {:<25} {state:<22} {at:<21} {}",
            status.version, status.name, status.checksum
        );
        match &status.state {
            State::ChecksumDiffers { recorded } => {
                let _ = writeln!(out, "{:>7}  {:<25} {:<22} {:<21} {recorded}", "", "", "(recorded)", "");
                refused.push(format!("migration {} differs from this binary's", status.version));
            }
            State::Unknown => refused.push(format!("migration {} is newer than this binary", status.version)),
            _ => {}
        }
    }
    let _ = write!(std::io::stdout(), "{out}");
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!("serve and migrate would refuse this database: {}", refused.join("; ")))
    }
}
