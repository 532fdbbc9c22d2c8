//! The storage core: one thread with a tokio current-thread runtime that owns every
//! PostgreSQL connection (`pg`). It runs the batch writers (`writer`: group commit of
//! the events the HTTP cores push onto their rings), executes the commands the HTTP
//! cores queue on its three lanes (`queries`, `stream`; rate-limit leases, batched on a
//! connection of their own, in `ratelimit`),
//! broadcasts control messages (key revocation) back to them (`listener`), keeps the daily partitions (`retention`),
//! applies migrations (`migrations`) and can run a private cluster (`local_pg`).
//!
//! Nothing on an HTTP core ever waits on PostgreSQL directly: it pushes onto a ring or
//! sends a command and awaits the answer. What else runs on this thread (the delivery
//! engine) is started by the runtime through `StorageConfig::on_start`.

pub mod control;
pub mod leases;
mod listener;
pub mod local_pg;
pub(crate) mod metrics;
pub mod migrations;
pub mod notifier;
pub mod pg;
pub mod queries;
pub mod ratelimit;
pub mod retention;
pub mod stream;
pub mod tls;
mod writer;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ahash::AHashMap;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::handoff::commands::{Command, CommandError, Lane, StorageStatus};
use crate::handoff::Handoff;
use crate::model::ratelimit::RateWindow;
use metrics::StorageMetrics;
use pg::{Db, LazyConnection, Prepared};
use queries::Statements;
pub use writer::{BatchLimits, Committed};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
}

impl From<StorageError> for CommandError {
    fn from(error: StorageError) -> CommandError {
        match error {
            StorageError::Db(e) => CommandError::Database(crate::util::error_chain(&e)),
            StorageError::Corrupt(what) => CommandError::Corrupt(what),
        }
    }
}

/// How often the prober checks the database, and how long a check may take.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Inbox pages read at once; each holds up to ~4.3 MiB of rows on this thread.
const INBOX_READS_MAX: usize = 16;

/// Partition maintenance every `interval`, and at once when a writer found a
/// partition missing, on a connection of its own.
async fn maintain_periodically(
    db: Rc<Db>,
    config: retention::RetentionConfig,
    wanted: Rc<Notify>,
    metrics: Arc<StorageMetrics>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = wanted.notified() => {}
        }
        let now = crate::util::time::now_micros();
        let result = match db.connect().await {
            Ok(client) => retention::maintain(&client, now, &config).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(report) => {
                metrics.maintained(&report);
                tracing::info!(?report, "partition maintenance")
            }
            Err(e) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "partition maintenance failed; retrying next interval")
            }
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

/// What else runs on the storage thread, started once the database is ready (the
/// runtime passes the delivery engine here).
pub type OnStart = Box<dyn FnOnce(Rc<Db>) + Send>;

/// Settings of the storage core.
pub struct StorageConfig {
    pub database: pg::Target,
    pub batch: BatchLimits,
    /// Writer tasks, each with its own connection; they take turns (`writer::turn`).
    pub writers: usize,
    /// Commands executing at once per lane (pipelined on the lane's connection).
    pub commands_in_flight_max: usize,
    /// Longest a statement on the request path (writers, commands) may run; beyond
    /// it PostgreSQL cancels it and the request gets 503.
    pub statement_timeout: Duration,
    /// CPU to pin the storage thread to, if any.
    pub cpu: Option<usize>,
    /// Batch and commit metrics, written by the writers.
    pub metrics: Arc<StorageMetrics>,
    /// Partition maintenance and retention.
    pub retention: retention::RetentionConfig,
    /// Where the writers hand events to push once committed, if anyone pushes.
    pub committed: Option<Committed>,
    /// Started on the storage thread once the database is reachable and migrated.
    pub on_start: Option<OnStart>,
}

/// State of the storage core, living on its thread.
pub struct Storage {
    db: Rc<Db>,
    handoff: Arc<Handoff>,
    /// One command connection per `Lane`, indexed by it, pipelining that lane's
    /// commands; reopened when it closes.
    connections: [LazyConnection<Statements>; 3],
    /// Inbox reads in progress at most (`INBOX_READS_MAX`).
    inbox_reads: Semaphore,
    /// One rate window per organisation seen, shared by every core. Bounded by the
    /// number of organisations in the database.
    rate_windows: RefCell<AHashMap<Uuid, Arc<RateWindow>>>,
    /// Counters of this thread (writers, maintenance, rate-limit leases).
    metrics: Arc<StorageMetrics>,
    /// Rate-limit leases waiting for the next batch (`ratelimit::run` sends them).
    rate_leases: Rc<ratelimit::LeaseQueue>,
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

/// Starts the storage thread; returns once the database is reachable and migrated.
/// `lanes` are the receiving ends of the command queues (`CommandSender::channels`).
pub fn start(
    config: StorageConfig,
    handoff: Arc<Handoff>,
    lanes: [mpsc::Receiver<Command>; 3],
    status: Arc<StorageStatus>,
) -> Result<(), StartError> {
    let (ready, started) = std::sync::mpsc::channel::<Result<(), StartError>>();
    std::thread::Builder::new().name("triggerd-storage".into()).spawn(move || {
        if let Some(cpu) = config.cpu {
            crate::util::sys::pin_current_thread(cpu);
        }
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = ready.send(Err(StartError::Thread(e)));
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, run(config, handoff, status, lanes, ready));
    })?;
    started.recv().map_err(|_| StartError::Connect("the storage thread died during start-up".into()))?
}

/// Connects, migrates and makes today's partitions; the start-up's verdict.
async fn prepare(
    db: &Db,
    retention: &retention::RetentionConfig,
    metrics: &StorageMetrics,
) -> Result<(), StartError> {
    let mut client = db.connect().await.map_err(|e| StartError::Connect(crate::util::error_chain(&e)))?;
    migrations::migrate(&mut client).await.map_err(|e| StartError::Migrate(crate::util::error_chain(&e)))?;
    // Partitions for today and ahead must exist before the first insert.
    let report =
        retention::maintain(&client, crate::util::time::now_micros(), retention).await.map_err(|e| {
            StartError::Migrate(format!("partition maintenance: {}", crate::util::error_chain(&e)))
        })?;
    metrics.maintained(&report);
    Ok(())
}

async fn run(
    config: StorageConfig,
    handoff: Arc<Handoff>,
    status: Arc<StorageStatus>,
    lanes: [mpsc::Receiver<Command>; 3],
    ready: std::sync::mpsc::Sender<Result<(), StartError>>,
) {
    let db = Rc::new(Db::new(config.database, status));
    if let Err(e) = prepare(&db, &config.retention, &config.metrics).await {
        let _ = ready.send(Err(e));
        return;
    }
    db.status.db_ok.store(true, Ordering::Relaxed);
    let partitions_wanted = Rc::new(Notify::new());
    tokio::task::spawn_local(probe(Rc::clone(&db)));
    tokio::task::spawn_local(maintain_periodically(
        Rc::clone(&db),
        config.retention,
        Rc::clone(&partitions_wanted),
        Arc::clone(&config.metrics),
    ));
    if let Some(on_start) = config.on_start {
        on_start(Rc::clone(&db));
    }
    let broadcast = Rc::new(notifier::CommitBroadcast::default());
    tokio::task::spawn_local(notifier::run(Rc::clone(&db), Rc::clone(&broadcast)));
    let gate = Rc::new(writer::Gate::default());
    for writer in 0..config.writers.max(1) {
        tokio::task::spawn_local(writer::run(writer::Writer {
            number: writer,
            handoff: Arc::clone(&handoff),
            db: Rc::clone(&db),
            limits: config.batch,
            metrics: Arc::clone(&config.metrics),
            committed: config.committed.clone(),
            partitions_wanted: Rc::clone(&partitions_wanted),
            broadcast: Rc::clone(&broadcast),
            gate: Rc::clone(&gate),
        }));
    }
    let timeout = config.statement_timeout;
    let rate_leases = Rc::new(ratelimit::LeaseQueue::default());
    tokio::task::spawn_local(ratelimit::run(
        Rc::clone(&rate_leases),
        Rc::new(LazyConnection::with_statement_timeout(Rc::clone(&db), timeout)),
        Arc::clone(&config.metrics),
    ));
    let storage = Rc::new(Storage {
        handoff,
        connections: Lane::ALL.map(|lane| {
            let connection = LazyConnection::with_statement_timeout(Rc::clone(&db), timeout);
            match lane {
                Lane::Stream => connection.with_session(stream::SESSION),
                Lane::Keys | Lane::Reads => connection,
            }
        }),
        inbox_reads: Semaphore::new(INBOX_READS_MAX),
        db,
        rate_windows: RefCell::new(AHashMap::new()),
        metrics: Arc::clone(&config.metrics),
        rate_leases,
    });
    tokio::task::spawn_local(listener::listen(Rc::clone(&storage)));
    let _ = ready.send(Ok(()));
    let [keys, reads, stream] = lanes;
    tokio::task::spawn_local(serve_lane(Rc::clone(&storage), keys, config.commands_in_flight_max));
    tokio::task::spawn_local(serve_lane(Rc::clone(&storage), stream, config.commands_in_flight_max));
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
