//! Every knob of `triggerd serve`, with its default. Each `--some-name` option also
//! reads `TRIGGERD_SOME_NAME`; `--database-url` reads `DATABASE_URL`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

use crate::auth::keys::ARGON2_MEMORY_KIB;

/// `--listen`: `ip:port`, or `host:port` resolved to its first address.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not an address like 127.0.0.1:8080 or localhost:8080 ({e})"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address every HTTP core listens on (SO_REUSEPORT). Port 0 picks a free port,
    /// printed on the "listening" line.
    /// A host name works too (`localhost:8080`): its first address is used.
    #[arg(long, help_heading = "Network", env = "TRIGGERD_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Serve GET /metrics on this address (`ip:port` or `host:port`), from a thread of
    /// its own, instead of on the public --listen port (which then answers 404 there).
    /// Port 0 picks one, printed as "triggerd metrics on http://…/metrics".
    #[arg(long, help_heading = "Network", env = "TRIGGERD_METRICS_LISTEN", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// Number of HTTP cores (glommio executors, one pinned thread each). Default: all
    /// CPUs but one, at least one. May exceed the CPU count (cores then share CPUs).
    #[arg(long, help_heading = "Cores", env = "TRIGGERD_HTTP_CORES")]
    pub http_cores: Option<usize>,

    /// CPU for the storage thread. Default: the last CPU if the HTTP cores leave one
    /// free, otherwise unpinned.
    #[arg(long, help_heading = "Cores", env = "TRIGGERD_STORAGE_CPU")]
    pub storage_cpu: Option<usize>,

    /// PostgreSQL to use (URL or key=value). `sslmode` (disable, prefer (default),
    /// require, verify-ca, verify-full) and `sslrootcert` mean what they mean to libpq.
    /// Unset: the embedded private cluster under --data-dir is initialised and started.
    #[arg(long, help_heading = "Database", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// File holding the --database-url (first line), e.g. a systemd credential
    /// (`LoadCredential=`, then `%d/database-url`): keeps the password out of the
    /// environment and the unit. Instead of --database-url.
    #[arg(
        long,
        help_heading = "Database",
        env = "TRIGGERD_DATABASE_URL_FILE",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<PathBuf>,

    /// Directory of the embedded PostgreSQL cluster (used without DATABASE_URL).
    #[arg(long, help_heading = "Database", env = "TRIGGERD_DATA_DIR", default_value = ".triggerd")]
    pub data_dir: PathBuf,

    /// Port of the embedded cluster's Unix socket.
    #[arg(long, help_heading = "Database", env = "TRIGGERD_PG_PORT", default_value_t = 54329)]
    pub pg_port: u16,

    /// Stop the embedded cluster when triggerd exits.
    #[arg(long, help_heading = "Database", env = "TRIGGERD_PG_STOP_ON_EXIT", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub pg_stop_on_exit: bool,

    /// Bearer token required by POST /api/keys/generate. Unset (or empty): sign-up is
    /// open, which `serve` allows on a loopback --listen address only, unless
    /// --open-signup is given.
    #[arg(long, help_heading = "Sign-up and keys", env = "TRIGGERD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the --admin-token (first line), e.g. a systemd credential
    /// (`LoadCredential=`, then `%d/admin-token`). Instead of --admin-token.
    #[arg(
        long,
        help_heading = "Sign-up and keys",
        env = "TRIGGERD_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// Allow open sign-up (no --admin-token) on a non-loopback --listen address: anyone
    /// who can reach the port can then create organisations. Without it, `serve` refuses
    /// that combination.
    #[arg(long, help_heading = "Sign-up and keys", env = "TRIGGERD_OPEN_SIGNUP", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub open_signup: bool,

    /// Events each HTTP core may have waiting for the storage core (ring size and
    /// ticket slots). Beyond it, 503 with Retry-After.
    #[arg(long, help_heading = "Limits", env = "TRIGGERD_RING_CAPACITY", default_value_t = 4096)]
    pub ring_capacity: usize,

    /// Load shedding: when no event of the last 100 ms waited less than this for its
    /// commit (a standing queue), an HTTP core takes new events only while fewer than
    /// 4 x --batch-events-max of its own wait (four full batches; at most half of
    /// --ring-capacity), and answers the rest 503 with Retry-After at once. 0: off (only
    /// --ring-capacity bounds the queue).
    #[arg(long, help_heading = "Limits", env = "TRIGGERD_QUEUE_TARGET_MS", default_value_t = 50)]
    pub queue_target_ms: u64,

    /// Most events written in one batch (one statement, one commit).
    #[arg(long, help_heading = "Limits", env = "TRIGGERD_BATCH_EVENTS_MAX", default_value_t = 512)]
    pub batch_events_max: usize,

    /// Most bytes of events written in one batch.
    #[arg(long, help_heading = "Limits", env = "TRIGGERD_BATCH_BYTES_MAX", default_value_t = 8 * 1024 * 1024)]
    pub batch_bytes_max: usize,

    /// Batch writers, each with its own connection. They take turns (one batch in
    /// flight, so each commit carries everything that arrived during the previous one);
    /// another sends beside it only when the batch in flight has run for 5 ms (a slow,
    /// bisecting or full batch).
    #[arg(long, help_heading = "Database", env = "TRIGGERD_WRITERS", default_value_t = 2)]
    pub writers: usize,

    /// Connections one HTTP core serves at once; beyond it a new connection gets 503
    /// with Retry-After and is closed.
    #[arg(
        long,
        help_heading = "Network",
        env = "TRIGGERD_CONNECTIONS_PER_CORE_MAX",
        default_value_t = 10_000
    )]
    pub connections_per_core_max: usize,

    /// Time from a request's first byte to the end of its head (then 408).
    #[arg(long, help_heading = "Network", env = "TRIGGERD_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Time from the end of the head to the end of the body (then 408).
    #[arg(long, help_heading = "Network", env = "TRIGGERD_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// Idle keep-alive connections are closed after this.
    #[arg(long, help_heading = "Network", env = "TRIGGERD_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// A Server-Sent Events stream with nothing to send writes a keep-alive comment this
    /// often (below the idle timeout of any proxy in front; it costs no query).
    #[arg(
        long,
        help_heading = "Network",
        env = "TRIGGERD_STREAM_KEEP_ALIVE_MS",
        default_value_t = 15_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub stream_keep_alive_ms: u64,

    /// A client that does not read its response within this is disconnected.
    #[arg(long, help_heading = "Network", env = "TRIGGERD_WRITE_TIMEOUT_MS", default_value_t = 30_000)]
    pub write_timeout_ms: u64,

    /// Threads of the Argon2 pool (key verification on cache misses, key hashing).
    #[arg(long, help_heading = "Sign-up and keys", env = "TRIGGERD_ARGON2_THREADS", default_value_t = 1)]
    pub argon2_threads: usize,

    /// Argon2 jobs that may wait; beyond it, requests needing one get 503.
    #[arg(long, help_heading = "Sign-up and keys", env = "TRIGGERD_ARGON2_QUEUE_MAX", default_value_t = 64)]
    pub argon2_queue_max: usize,

    /// Argon2id memory cost (KiB) for new key hashes.
    #[arg(long, help_heading = "Sign-up and keys", env = "TRIGGERD_ARGON2_MEMORY_KIB", default_value_t = ARGON2_MEMORY_KIB)]
    pub argon2_memory_kib: u32,

    /// Verified keys cached per HTTP core.
    #[arg(
        long,
        help_heading = "Sign-up and keys",
        env = "TRIGGERD_KEY_CACHE_MAX",
        default_value_t = 100_000
    )]
    pub key_cache_max: usize,

    /// Wrong keys remembered per HTTP core (60 s each).
    #[arg(
        long,
        help_heading = "Sign-up and keys",
        env = "TRIGGERD_NEGATIVE_CACHE_MAX",
        default_value_t = 10_000
    )]
    pub negative_cache_max: usize,

    /// Longest a request-path statement (batch insert, key lookup, inbox read, ack) may
    /// run before PostgreSQL cancels it and the request gets 503.
    #[arg(long, help_heading = "Database", env = "TRIGGERD_STATEMENT_TIMEOUT_MS", default_value_t = 5_000)]
    pub statement_timeout_ms: u64,

    /// Failed API key checks one lookup id (the key's first part) may cause per minute
    /// on each HTTP core before further checks of it are refused with 429, without
    /// reaching the database or Argon2. Checks in flight count too. 0 turns it off.
    #[arg(long, help_heading = "Limits", env = "TRIGGERD_KEY_FAILURES_PER_ID_MAX", default_value_t = 5)]
    pub key_failures_per_id_max: u32,

    /// Failed API key checks one client address (IPv6: its /64) may cause per minute
    /// on each HTTP core, likewise. Behind a proxy every client shares its address:
    /// raise it or turn it off (0) there.
    #[arg(
        long,
        help_heading = "Limits",
        env = "TRIGGERD_KEY_FAILURES_PER_ADDRESS_MAX",
        default_value_t = 20
    )]
    pub key_failures_per_address_max: u32,

    /// Sign-ups (POST /api/keys/generate) one client address may make per minute on
    /// each HTTP core; each costs an Argon2 hash. 0 turns it off.
    #[arg(long, help_heading = "Limits", env = "TRIGGERD_SIGNUPS_PER_ADDRESS_MAX", default_value_t = 10)]
    pub signups_per_address_max: u32,

    /// Commands (key lookups, sign-ups, reads) that may queue for the storage core.
    #[arg(long, help_heading = "Limits", env = "TRIGGERD_COMMAND_QUEUE_MAX", default_value_t = 1024)]
    pub command_queue_max: usize,

    /// Webhook retry schedule: delays between attempts (ms, s, m, h, d). After the last
    /// one fails, the event is `failed`.
    #[arg(long, help_heading = "Webhooks", env = "TRIGGERD_RETRY_SCHEDULE", default_value = crate::delivery::schedule::DEFAULT_SCHEDULE)]
    pub retry_schedule: String,

    /// Deliver webhooks to loopback, private and link-local addresses too (local
    /// development and tests only: it exposes internal services to whoever configures
    /// a webhook).
    #[arg(long, help_heading = "Webhooks", env = "TRIGGERD_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub webhook_allow_private: bool,

    /// Timeout of one webhook attempt (connect, TLS, request, response).
    #[arg(long, help_heading = "Webhooks", env = "TRIGGERD_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,

    /// How long a claimed delivery attempt stays leased to this process; must exceed
    /// the webhook timeout. A process that dies loses its leases after this.
    #[arg(long, help_heading = "Webhooks", env = "TRIGGERD_DELIVERY_LEASE_MS", default_value_t = 60_000)]
    pub delivery_lease_ms: u64,

    /// Delivery attempts in flight at most.
    #[arg(long, help_heading = "Webhooks", env = "TRIGGERD_DELIVERIES_IN_FLIGHT_MAX", default_value_t = 256)]
    pub deliveries_in_flight_max: usize,

    /// Delivery attempts of one organisation in flight at most.
    #[arg(long, help_heading = "Webhooks", env = "TRIGGERD_DELIVERIES_PER_ORG_MAX", default_value_t = 8)]
    pub deliveries_per_org_max: usize,

    /// How often due delivery attempts (retries, leftovers) are claimed from the database.
    #[arg(long, help_heading = "Webhooks", env = "TRIGGERD_DELIVERY_POLL_MS", default_value_t = 1_000)]
    pub delivery_poll_ms: u64,

    /// Delivered events are kept at least this many days; older days are dropped as
    /// whole partitions once all their events are delivered.
    #[arg(long, help_heading = "Retention", env = "TRIGGERD_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,

    /// Undelivered events are kept at most this many days: a day past it is dropped
    /// whole even if some of its events were never delivered (they are counted in
    /// triggerd_events_dropped_undelivered_total and logged). 0 keeps them until
    /// delivered, however long. At least --retention-days.
    #[arg(
        long,
        help_heading = "Retention",
        env = "TRIGGERD_UNDELIVERED_RETENTION_DAYS",
        default_value_t = 90
    )]
    pub undelivered_retention_days: u32,

    /// Daily event partitions created ahead of today.
    #[arg(long, help_heading = "Retention", env = "TRIGGERD_PARTITIONS_AHEAD_DAYS", default_value_t = 3)]
    pub partitions_ahead_days: u32,

    /// How often partitions are created ahead and old ones dropped.
    #[arg(
        long,
        help_heading = "Retention",
        env = "TRIGGERD_MAINTENANCE_INTERVAL_MS",
        default_value_t = 3_600_000
    )]
    pub maintenance_interval_ms: u64,

    /// On SIGTERM/SIGINT: time to finish requests in progress and deliveries in flight
    /// before exiting anyway (acknowledged events are committed either way).
    #[arg(long, help_heading = "Process", env = "TRIGGERD_SHUTDOWN_TIMEOUT_MS", default_value_t = 30_000)]
    pub shutdown_timeout_ms: u64,

    /// Log line format.
    #[arg(long, help_heading = "Logging", env = "TRIGGERD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Access log: one JSON line per request on stderr (request id, method, path, route,
    /// status, duration, organisation, client), written off the HTTP cores (lines are
    /// dropped and counted, never waited for, if stderr falls behind). Also logs every
    /// webhook attempt at INFO, successes included.
    #[arg(long, help_heading = "Process", env = "TRIGGERD_ACCESS_LOG", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub access_log: bool,

    /// Configuration file: `name = value` lines, names being these options' long names
    /// (e.g. `http-cores = 3`). Flags and environment variables take precedence.
    #[arg(long, help_heading = "Process", env = "TRIGGERD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (secrets masked), with where each value came
    /// from, and exit.
    #[arg(long, help_heading = "Process", env = "TRIGGERD_PRINT_CONFIG", default_value_t = false)]
    pub print_config: bool,

    /// Log filter (tracing EnvFilter syntax, e.g. "info" or "triggerd=debug").
    #[arg(long, help_heading = "Logging", env = "TRIGGERD_LOG", default_value = "info")]
    pub log: String,
}

/// A secret from a file: its first line, without the line end. An empty one is refused
/// (it would silently mean "unset").
pub fn read_secret_file(option: &str, path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{option} {}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or_default().trim_end().to_string();
    if secret.is_empty() {
        return Err(format!("{option} {}: the file is empty", path.display()));
    }
    Ok(secret)
}

impl ServeConfig {
    /// Reads --admin-token-file and --database-url-file into the values they stand for.
    pub fn read_secret_files(&mut self) -> Result<(), String> {
        if let Some(path) = &self.admin_token_file {
            self.admin_token = Some(read_secret_file("--admin-token-file", path)?);
        }
        if let Some(path) = &self.database_url_file {
            self.database_url = Some(read_secret_file("--database-url-file", path)?);
        }
        Ok(())
    }

    /// The delivery engine's settings (call after `validate`).
    pub fn delivery(&self) -> Result<crate::delivery::DeliveryConfig, String> {
        use std::time::Duration;
        Ok(crate::delivery::DeliveryConfig {
            schedule: crate::delivery::schedule::RetrySchedule::parse(&self.retry_schedule)?,
            allow_private: self.webhook_allow_private,
            timeout: Duration::from_millis(self.webhook_timeout_ms),
            lease: Duration::from_millis(self.delivery_lease_ms),
            in_flight_max: self.deliveries_in_flight_max,
            per_org_max: self.deliveries_per_org_max,
            poll_interval: Duration::from_millis(self.delivery_poll_ms),
            log_every_attempt: self.access_log,
        })
    }

    /// Refuses settings that cannot work, with the option's name.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--http-cores", self.http_cores.unwrap_or(1)),
            ("--ring-capacity", self.ring_capacity),
            ("--batch-events-max", self.batch_events_max),
            ("--batch-bytes-max", self.batch_bytes_max),
            ("--writers", self.writers),
            ("--argon2-threads", self.argon2_threads),
            ("--argon2-queue-max", self.argon2_queue_max),
            ("--key-cache-max", self.key_cache_max),
            ("--negative-cache-max", self.negative_cache_max),
            ("--command-queue-max", self.command_queue_max),
            ("--connections-per-core-max", self.connections_per_core_max),
            ("--statement-timeout-ms", self.statement_timeout_ms as usize),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.deliveries_in_flight_max == 0
            || self.deliveries_per_org_max == 0
            || self.delivery_poll_ms == 0
        {
            return Err("--deliveries-in-flight-max, --deliveries-per-org-max and --delivery-poll-ms must be at least 1".into());
        }
        if self.partitions_ahead_days == 0 || self.maintenance_interval_ms == 0 {
            return Err("--partitions-ahead-days and --maintenance-interval-ms must be at least 1".into());
        }
        if self.metrics_listen.is_some_and(|m| m.port() != 0 && m.port() == self.listen.port()) {
            return Err("--metrics-listen must use another port than --listen".into());
        }
        if self.undelivered_retention_days != 0 && self.undelivered_retention_days < self.retention_days {
            return Err(
                "--undelivered-retention-days must be 0 (no ceiling) or at least --retention-days".into()
            );
        }
        if self.delivery_lease_ms <= self.webhook_timeout_ms {
            return Err("--delivery-lease-ms must exceed --webhook-timeout-ms".into());
        }
        crate::delivery::schedule::RetrySchedule::parse(&self.retry_schedule)
            .map_err(|e| format!("--retry-schedule: {e}"))?;
        if self.ring_capacity > 1 << 20 {
            return Err("--ring-capacity must be at most 1048576".into());
        }
        if !(8..=1 << 22).contains(&self.argon2_memory_kib) {
            return Err("--argon2-memory-kib must be between 8 and 4194304".into());
        }
        self.validate_signup()
    }

    /// Open sign-up is for local use: on an address other machines can reach, it needs
    /// the operator to say so.
    fn validate_signup(&self) -> Result<(), String> {
        let has_admin_token = self.admin_token.as_deref().is_some_and(|token| !token.is_empty());
        if self.listen.ip().to_canonical().is_loopback() || has_admin_token || self.open_signup {
            return Ok(());
        }
        Err(format!(
            "refusing to serve open sign-up on {}, a non-loopback address: anyone who can reach \
             the port could create organisations. Set an admin token (--admin-token or \
             TRIGGERD_ADMIN_TOKEN) to close sign-up, or pass --open-signup (TRIGGERD_OPEN_SIGNUP=true) \
             to keep it open on purpose",
            self.listen
        ))
    }

    pub fn http_cores(&self, cpus: usize) -> usize {
        self.http_cores.unwrap_or(cpus.saturating_sub(1)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ServeConfig;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    fn signup_check(args: &[&str]) -> Result<(), String> {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.serve.validate_signup()
    }

    #[test]
    fn open_signup_on_loopback_needs_nothing() {
        for listen in ["127.0.0.1:8080", "127.0.0.2:0", "[::1]:8080", "[::ffff:127.0.0.1]:0"] {
            assert_eq!(signup_check(&["--listen", listen]), Ok(()), "{listen}");
        }
    }

    #[test]
    fn open_signup_elsewhere_needs_a_token_or_the_flag() {
        for listen in ["0.0.0.0:8080", "[::]:8080", "10.0.0.7:80", "[2001:db8::1]:443"] {
            let refused = signup_check(&["--listen", listen]).unwrap_err();
            for words in ["create organisations", "--admin-token", "TRIGGERD_ADMIN_TOKEN", "--open-signup"] {
                assert!(refused.contains(words), "{listen}: {refused}");
            }
            let empty_token = signup_check(&["--listen", listen, "--admin-token", ""]);
            assert!(empty_token.is_err(), "an empty token leaves sign-up open");
            assert_eq!(signup_check(&["--listen", listen, "--admin-token", "x"]), Ok(()));
            assert_eq!(signup_check(&["--listen", listen, "--open-signup"]), Ok(()));
            assert_eq!(signup_check(&["--listen", listen, "--open-signup=true"]), Ok(()));
            assert!(signup_check(&["--listen", listen, "--open-signup=false"]).is_err());
        }
    }
}
