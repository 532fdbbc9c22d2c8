//! The storage core: one thread with a tokio current-thread runtime that owns every
//! PostgreSQL connection. It runs the batch writers (group commit of the events the
//! HTTP cores push onto their rings), executes commands sent by the HTTP cores, and
//! broadcasts control messages (key revocation) back to them.
//!
//! Nothing on an HTTP core ever waits on PostgreSQL directly: it pushes onto a ring or
//! sends a command and awaits the answer.

pub mod listener;
pub mod local_pg;
pub mod migrations;
pub mod queries;
pub mod retention;
pub mod writer;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ahash::AHashMap;
use tokio::sync::{mpsc, Semaphore};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::delivery::{DeliveryConfig, DeliveryControl, Engine, HANDOFF_QUEUE_MAX};
use crate::handoff::Handoff;
use crate::metrics::{DeliveryMetrics, StorageMetrics};
use crate::shard::ratelimit::RateWindow;
use queries::Statements;
pub use queries::{Command, Lane};
pub use writer::BatchLimits;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
}

/// Health of the write path, read by `/health/ready` on every core.
#[derive(Debug, Default)]
pub struct StorageStatus {
    /// PostgreSQL answered the prober's last check (writers clear it at once when a
    /// write fails for lack of a connection).
    pub db_ok: AtomicBool,
}

impl StorageStatus {
    /// A write found the database unreachable.
    pub fn lost(&self) {
        self.db_ok.store(false, Ordering::Relaxed);
    }
}

/// How often the prober checks the database, and how long a check may take.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest a connection attempt may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Partition maintenance every `interval`, and at once when a writer found a
/// partition missing, on a connection of its own.
async fn maintain_periodically(db: Rc<Db>, config: retention::RetentionConfig) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = db.partitions_wanted.notified() => {}
        }
        let now = crate::http::date::unix_micros(std::time::SystemTime::now());
        let result = match db.connect().await {
            Ok(client) => retention::maintain(&client, now, &config).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(report) => tracing::info!(?report, "partition maintenance"),
            Err(e) => tracing::warn!(error = %e, "partition maintenance failed; retrying next interval"),
        }
    }
}

/// Keeps `db_ok` true exactly while PostgreSQL answers, even with no traffic.
async fn probe(db: Rc<Db>) {
    let mut client: Option<Client> = None;
    loop {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = tokio::time::timeout(PROBE_TIMEOUT, db.connect()).await.ok().and_then(Result::ok);
        }
        let ok = match &client {
            Some(c) => {
                matches!(tokio::time::timeout(PROBE_TIMEOUT, c.simple_query("SELECT 1")).await, Ok(Ok(_)))
            }
            None => false,
        };
        if !ok {
            client = None;
        }
        db.status.db_ok.store(ok, Ordering::Relaxed);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// How to reach PostgreSQL; owned by the storage core.
pub struct Db {
    config: tokio_postgres::Config,
    pub status: Arc<StorageStatus>,
    /// Wakes partition maintenance before its interval (a write found a day's
    /// partition missing).
    pub partitions_wanted: tokio::sync::Notify,
}

impl Db {
    /// Opens a connection and drives it on the storage core's runtime.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "database connection closed");
            }
        });
        Ok(client)
    }
}

/// Settings of the storage core.
pub struct StorageConfig {
    pub database: tokio_postgres::Config,
    pub batch: BatchLimits,
    /// Writer tasks, each with its own connection (2: one commits while one fills).
    pub writers: usize,
    /// Commands that may wait in each lane's queue before HTTP cores get "overloaded".
    pub command_queue_max: usize,
    /// Commands executing at once per lane (pipelined on the lane's connection).
    pub commands_in_flight_max: usize,
    /// Longest a statement on the request path (writers, commands) may run; beyond
    /// it PostgreSQL cancels it and the request gets 503.
    pub statement_timeout: std::time::Duration,
    /// CPU to pin the storage thread to, if any.
    pub cpu: Option<usize>,
    /// Batch and commit metrics, written by the writers.
    pub metrics: Arc<StorageMetrics>,
    /// Partition maintenance and retention.
    pub retention: retention::RetentionConfig,
    /// The webhook delivery engine's settings and metrics.
    pub delivery: DeliveryConfig,
    pub delivery_metrics: Arc<DeliveryMetrics>,
}

/// What the HTTP cores hold to talk to the storage core. Cheap to clone.
#[derive(Clone)]
pub struct StorageHandle {
    /// One queue per `Lane`, indexed by it.
    commands: [mpsc::Sender<Command>; 2],
    pub status: Arc<StorageStatus>,
    /// The delivery engine's shutdown switch and in-flight count.
    pub deliveries: Arc<DeliveryControl>,
}

#[derive(Debug, thiserror::Error)]
#[error("the storage core's command queue is full")]
pub struct QueueFull;

impl StorageHandle {
    /// Queues a command without waiting; `QueueFull` means answer 503.
    pub fn send(&self, command: Command) -> Result<(), QueueFull> {
        self.commands[command.lane() as usize].try_send(command).map_err(|_| QueueFull)
    }
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
    statement_timeout: Option<std::time::Duration>,
}

impl<S: PrepareStatements> LazyConnection<S> {
    pub fn new(db: Rc<Db>) -> LazyConnection<S> {
        LazyConnection {
            db,
            current: RefCell::new(None),
            reopening: tokio::sync::Mutex::new(()),
            statement_timeout: None,
        }
    }

    /// A connection whose statements PostgreSQL cancels after `timeout`.
    pub fn with_statement_timeout(db: Rc<Db>, timeout: std::time::Duration) -> LazyConnection<S> {
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
        let statements = S::prepare(&client).await?;
        let connection = Rc::new(Prepared { client, statements });
        *self.current.borrow_mut() = Some(Rc::clone(&connection));
        Ok(connection)
    }
}

/// Bounds a session's statements (request-path connections).
pub async fn set_statement_timeout(
    client: &Client,
    timeout: std::time::Duration,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&format!("SET statement_timeout = {}", timeout.as_millis().max(1))).await
}

/// Inbox pages read at once; each holds up to ~4.3 MiB of rows on this thread.
const INBOX_READS_MAX: usize = 16;

/// State of the storage core, living on its thread.
pub struct Storage {
    db: Rc<Db>,
    handoff: Arc<Handoff>,
    /// One command connection per `Lane`, indexed by it, pipelining that lane's
    /// commands; reopened when it closes.
    connections: [LazyConnection<Statements>; 2],
    /// Inbox reads in progress at most (`INBOX_READS_MAX`).
    inbox_reads: Semaphore,
    /// One rate window per organisation seen, shared by every core. Bounded by the
    /// number of organisations in the database.
    rate_windows: RefCell<AHashMap<Uuid, Arc<RateWindow>>>,
}

impl Storage {
    async fn commands(&self, lane: Lane) -> Result<Rc<Prepared<Statements>>, StorageError> {
        Ok(self.connections[lane as usize].get().await?)
    }

    fn rate_window(&self, org_id: Uuid) -> Arc<RateWindow> {
        Arc::clone(self.rate_windows.borrow_mut().entry(org_id).or_default())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the storage thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(String),
    #[error("migrations failed: {0}")]
    Migrate(String),
}

/// Starts the storage core; returns once the database is reachable and migrated.
pub fn start(config: StorageConfig, handoff: Arc<Handoff>) -> Result<StorageHandle, StartError> {
    let (keys, keys_receiver) = mpsc::channel(config.command_queue_max);
    let (reads, reads_receiver) = mpsc::channel(config.command_queue_max);
    let status = Arc::new(StorageStatus::default());
    let (ready, started) = std::sync::mpsc::channel::<Result<(), StartError>>();
    let thread_status = Arc::clone(&status);
    let deliveries = Arc::new(DeliveryControl::default());
    let thread_deliveries = Arc::clone(&deliveries);
    std::thread::Builder::new().name("triggerd-storage".into()).spawn(move || {
        if let Some(cpu) = config.cpu {
            crate::runtime::pin_current_thread(cpu);
        }
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = ready.send(Err(StartError::Thread(e)));
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        let receivers = [keys_receiver, reads_receiver];
        local.block_on(&runtime, run(config, handoff, thread_status, thread_deliveries, receivers, ready));
    })?;
    started.recv().map_err(|_| StartError::Connect("the storage thread died during start-up".into()))??;
    Ok(StorageHandle { commands: [keys, reads], status, deliveries })
}

async fn run(
    config: StorageConfig,
    handoff: Arc<Handoff>,
    status: Arc<StorageStatus>,
    deliveries_control: Arc<DeliveryControl>,
    receivers: [mpsc::Receiver<Command>; 2],
    ready: std::sync::mpsc::Sender<Result<(), StartError>>,
) {
    let mut database = config.database;
    database.connect_timeout(CONNECT_TIMEOUT);
    let db = Rc::new(Db { config: database, status, partitions_wanted: tokio::sync::Notify::new() });
    match db.connect().await {
        Ok(mut client) => {
            if let Err(e) = migrations::migrate(&mut client).await {
                let _ = ready.send(Err(StartError::Migrate(e.to_string())));
                return;
            }
            // Partitions for today and ahead must exist before the first insert.
            let now = crate::http::date::unix_micros(std::time::SystemTime::now());
            if let Err(e) = retention::maintain(&client, now, &config.retention).await {
                let _ = ready.send(Err(StartError::Migrate(format!("partition maintenance: {e}"))));
                return;
            }
        }
        Err(e) => {
            let _ = ready.send(Err(StartError::Connect(e.to_string())));
            return;
        }
    }
    db.status.db_ok.store(true, Ordering::Relaxed);
    tokio::task::spawn_local(probe(Rc::clone(&db)));
    tokio::task::spawn_local(maintain_periodically(Rc::clone(&db), config.retention));
    let (deliveries, handed) = mpsc::channel(HANDOFF_QUEUE_MAX);
    let engine = Engine::new(Rc::clone(&db), config.delivery, config.delivery_metrics, deliveries_control);
    tokio::task::spawn_local(engine.run(handed));
    for writer in 0..config.writers.max(1) {
        tokio::task::spawn_local(writer::run(
            writer,
            Arc::clone(&handoff),
            Rc::clone(&db),
            config.batch,
            Arc::clone(&config.metrics),
            deliveries.clone(),
        ));
    }
    let timeout = config.statement_timeout;
    let storage = Rc::new(Storage {
        handoff,
        connections: Lane::ALL.map(|_| LazyConnection::with_statement_timeout(Rc::clone(&db), timeout)),
        inbox_reads: Semaphore::new(INBOX_READS_MAX),
        db,
        rate_windows: RefCell::new(AHashMap::new()),
    });
    tokio::task::spawn_local(listener::listen(Rc::clone(&storage)));
    let _ = ready.send(Ok(()));
    let [keys, reads] = receivers;
    tokio::task::spawn_local(serve_lane(Rc::clone(&storage), keys, config.commands_in_flight_max));
    serve_lane(storage, reads, config.commands_in_flight_max).await;
}

/// Runs one lane's commands as they arrive, at most `in_flight_max` at once.
async fn serve_lane(storage: Rc<Storage>, mut receiver: mpsc::Receiver<Command>, in_flight_max: usize) {
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    while let Some(command) = receiver.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let storage = Rc::clone(&storage);
        tokio::task::spawn_local(async move {
            storage.execute(command).await;
            drop(permit);
        });
    }
}
