//! PostgreSQL connections, shared by every user on the storage thread (writers,
//! command lanes, the revocation listener, maintenance, the prober and the delivery
//! engine): how to reach the database (`Target`: the one connect, with TLS as
//! `sslmode` says, also used by `migrate` and the embedded cluster's set-up),
//! connections opened lazily and reopened after a loss, statements prepared once per
//! connection, the request path's statement timeout, and the back-off between attempts
//! to reconnect.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::tls::{self, SslMode, Tls};
use crate::handoff::commands::StorageStatus;

/// Longest a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection whose driving future the caller runs (spawns) itself.
pub type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tls::TlsStream<tokio_postgres::Socket>>;

/// Where and how to connect: the connection string as tokio-postgres reads it, and the
/// TLS settings (`sslmode`, `sslrootcert`) it does not. Every PostgreSQL connection of
/// the process is opened by `Target::connect`.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: Tls,
}

impl Target {
    /// Parses a connection string (URL or key=value) and loads the roots it names.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (rest, settings) = tls::split_tls_settings(url)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| crate::util::error_chain(&e))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        // No JIT: every statement here reads or writes a page of rows, and a plan whose
        // cost estimate crosses `jit_above_cost` (a large table, a disabled plan node)
        // would spend a second compiling it. Appended to the user's own options.
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} -c jit=off"),
            _ => "-c jit=off".to_string(),
        };
        config.options(&options);
        // tokio-postgres refuses TLS without a host name; with only hostaddr given, the
        // address is the name (libpq checks it against the certificate's IP entries).
        if config.get_hosts().is_empty() {
            for address in config.get_hostaddrs().to_vec() {
                config.host(address.to_string());
            }
        }
        // libpq never negotiates TLS on a Unix socket, whatever sslmode says.
        let socket_only = !config.get_hosts().is_empty()
            && config.get_hosts().iter().all(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)));
        config.ssl_mode(if socket_only {
            SslMode::Disable.negotiation()
        } else {
            settings.mode.negotiation()
        });
        Ok(Target { config, tls: Tls::new(&settings)? })
    }

    /// Opens a connection. `prefer` retries without TLS when the handshake fails, as
    /// libpq does; the other modes fail.
    pub async fn connect(&self) -> Result<(Client, Connection), tokio_postgres::Error> {
        match self.config.connect(self.tls.clone()).await {
            Err(e) if self.tls.mode() == SslMode::Prefer && tls::is_handshake_failure(&e) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "TLS failed; sslmode=prefer connects without it");
                let mut plain = self.config.clone();
                plain.ssl_mode(SslMode::Disable.negotiation());
                plain.connect(self.tls.clone()).await
            }
            result => result,
        }
    }
}

/// How to reach PostgreSQL; owned by the storage thread.
pub struct Db {
    target: Target,
    /// The health every HTTP core reads (`/health/ready`); cleared when a write finds
    /// the database gone, set by the prober.
    pub status: Arc<StorageStatus>,
}

impl Db {
    pub fn new(target: Target, status: Arc<StorageStatus>) -> Db {
        Db { target, status }
    }

    /// Opens a connection and drives it on the storage thread's runtime.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.target.connect().await?;
        let status = Arc::clone(&self.status);
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                if status.closing.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::debug!(error = %crate::util::error_chain(&e), "database connection closed at shutdown");
                } else {
                    tracing::warn!(error = %crate::util::error_chain(&e), "database connection closed");
                }
            }
        });
        Ok(client)
    }

    /// True once the process shuts down: a lost connection is expected then.
    pub fn closing(&self) -> bool {
        self.status.closing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// For a user that drives its connection itself (the listener reads
    /// notifications from it).
    pub fn target(&self) -> &Target {
        &self.target
    }
}

/// Bounds a session's statements (request-path connections).
pub async fn set_statement_timeout(client: &Client, timeout: Duration) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&format!("SET statement_timeout = {}", timeout.as_millis().max(1))).await
}

/// A connection with its prepared statements.
pub struct Prepared<S> {
    pub client: Client,
    pub statements: S,
}

/// Statements prepared once per connection.
pub trait PrepareStatements: Sized {
    fn prepare(client: &Client) -> impl std::future::Future<Output = Result<Self, tokio_postgres::Error>>;
}

/// A connection opened on first use and reopened (with its statements) after it
/// closes; concurrent users wait for one reopening instead of each opening one.
pub struct LazyConnection<S> {
    db: Rc<Db>,
    current: RefCell<Option<Rc<Prepared<S>>>>,
    reopening: tokio::sync::Mutex<()>,
    /// Set for request-path connections: every statement on them is bounded.
    statement_timeout: Option<Duration>,
    /// Settings of the session, run before its statements are prepared.
    session: Option<&'static str>,
}

impl<S: PrepareStatements> LazyConnection<S> {
    pub fn new(db: Rc<Db>) -> LazyConnection<S> {
        LazyConnection {
            db,
            current: RefCell::new(None),
            reopening: tokio::sync::Mutex::new(()),
            statement_timeout: None,
            session: None,
        }
    }

    /// Runs `settings` (`SET` commands) on each connection it opens.
    pub fn with_session(self, settings: &'static str) -> LazyConnection<S> {
        LazyConnection { session: Some(settings), ..self }
    }

    /// A connection whose statements PostgreSQL cancels after `timeout`.
    pub fn with_statement_timeout(db: Rc<Db>, timeout: Duration) -> LazyConnection<S> {
        LazyConnection { statement_timeout: Some(timeout), ..LazyConnection::new(db) }
    }

    fn open_one(&self) -> Option<Rc<Prepared<S>>> {
        self.current.borrow().as_ref().filter(|c| !c.client.is_closed()).map(Rc::clone)
    }

    pub async fn get(&self) -> Result<Rc<Prepared<S>>, tokio_postgres::Error> {
        if let Some(connection) = self.open_one() {
            return Ok(connection);
        }
        let _guard = self.reopening.lock().await;
        if let Some(connection) = self.open_one() {
            return Ok(connection);
        }
        let client = self.db.connect().await?;
        if let Some(timeout) = self.statement_timeout {
            set_statement_timeout(&client, timeout).await?;
        }
        if let Some(settings) = self.session {
            client.batch_execute(settings).await?;
        }
        let statements = S::prepare(&client).await?;
        let connection = Rc::new(Prepared { client, statements });
        *self.current.borrow_mut() = Some(Rc::clone(&connection));
        Ok(connection)
    }
}

/// Exponential back-off between reconnection attempts: doubles from `min` to `max`
/// after each failure, back to `min` after a success. Plain data; the caller sleeps.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        assert!(min <= max);
        Backoff { min, max, next: min }
    }

    /// The delay before the next attempt, after a failure.
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn succeeded(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_never_negotiate_tls_and_a_bare_address_gets_a_name() {
        use tokio_postgres::config::{Host, SslMode as Negotiation};
        let socket = Target::parse("host=/run/postgresql sslmode=verify-full").unwrap();
        assert_eq!(socket.config.get_ssl_mode(), Negotiation::Disable);
        let tcp = Target::parse("postgresql://db.example/app?sslmode=verify-ca").unwrap();
        assert_eq!(tcp.config.get_ssl_mode(), Negotiation::Require);
        let bare = Target::parse("hostaddr=127.0.0.1 sslmode=require").unwrap();
        assert!(matches!(bare.config.get_hosts(), [Host::Tcp(name)] if name == "127.0.0.1"));
        assert_eq!(Target::parse("host=h").unwrap().config.get_ssl_mode(), Negotiation::Prefer);
        assert_eq!(Target::parse("host=h").unwrap().config.get_options(), Some("-c jit=off"));
        let given = Target::parse("host=h options='-c work_mem=8MB'").unwrap();
        assert_eq!(given.config.get_options(), Some("-c work_mem=8MB -c jit=off"), "the user's options stay");
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(100));
    }
}
