//! The batch writer: group commit of events from the rings.
//!
//! Two writer tasks run on the storage core, each with its own connection: while one
//! batch commits, the other fills and sends the next, so a batch is whatever arrived
//! during the previous commit (natural group commit), capped at `batch_events_max`
//! events and `batch_bytes_max` bytes. Each batch is one statement, committed on its
//! own (autocommit, `synchronous_commit` on); only after PostgreSQL answers are the
//! waiting requests completed. Back of the envelope: at ~15 µs of PostgreSQL CPU per
//! row plus ~55 µs per fsync, 512 rows commit in ~8 ms, i.e. the write path is bound
//! by PostgreSQL's per-row cost, not by round trips.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::metrics::StorageMetrics;
use super::pg::Db;
use crate::handoff::{EventRecord, Handoff, Outcome};

/// The one statement per batch. The dedup ledger is claimed first; an event is
/// inserted only if it has no dedup_id or won its claim, and is due for delivery at
/// once if its organisation has a webhook. The final SELECT lists the events that were
/// not inserted (with the original's id where the snapshot sees it) and the inserted
/// ones to push, which go straight to the delivery engine.
const INSERT_BATCH_SQL: &str = "
WITH input AS (
    SELECT t.*, timestamptz 'epoch' + t.created_us * interval '1 microsecond' AS created_at
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int8[])
        AS t(id, org_id, type, body, dedup_id, created_us)
),
claimed AS (
    INSERT INTO event_dedup AS d (org_id, dedup_id, event_id, created_at)
    SELECT org_id, dedup_id, id, created_at
    FROM input WHERE dedup_id IS NOT NULL
    ON CONFLICT (org_id, dedup_id) DO UPDATE
        SET event_id = excluded.event_id, created_at = excluded.created_at
        WHERE d.created_at <= excluded.created_at - interval '24 hours'
    RETURNING d.event_id
),
inserted AS (
    INSERT INTO events (org_id, id, type, payload, dedup_id, created_at, next_attempt_at)
    SELECT i.org_id, i.id, i.type, i.body::jsonb -> 'payload', i.dedup_id, i.created_at,
           CASE WHEN o.webhook_url IS NOT NULL THEN i.created_at END
    FROM input i LEFT JOIN organizations o ON o.org_id = i.org_id
    WHERE i.dedup_id IS NULL OR i.id IN (SELECT event_id FROM claimed)
    ON CONFLICT DO NOTHING
    RETURNING id, next_attempt_at IS NOT NULL AS push
)
SELECT i.id, d.event_id, x.id IS NOT NULL
FROM input i
LEFT JOIN inserted x ON x.id = i.id
LEFT JOIN event_dedup d ON x.id IS NULL AND d.org_id = i.org_id AND d.dedup_id = i.dedup_id
WHERE x.id IS NULL OR x.push";

/// A duplicate whose claim was committed by the other writer while this statement ran
/// is invisible to its snapshot; a fresh statement finds it.
const FIND_CLAIM_SQL: &str = "SELECT event_id FROM event_dedup WHERE org_id = $1 AND dedup_id = $2";

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub events_max: usize,
    pub bytes_max: usize,
    /// Longest the batch's statements may run before PostgreSQL cancels them (503).
    pub statement_timeout: Duration,
}

struct WriterConnection {
    client: Client,
    insert: Statement,
    find_claim: Statement,
}

/// Reconnection back-off bounds.
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);

/// Where committed events to push go: (organisation, event) pairs, one message per
/// batch. Bounded by its creator; a full queue drops the message (the events are due
/// in the database, and the delivery engine's poller finds them).
pub type Committed = mpsc::Sender<Vec<(Uuid, Uuid)>>;

/// One writer task's parts.
pub struct Writer {
    /// Its number, for logs; also where its round-robin over the rings starts.
    pub number: usize,
    pub handoff: Arc<Handoff>,
    pub db: Rc<Db>,
    pub limits: BatchLimits,
    pub metrics: Arc<StorageMetrics>,
    pub committed: Option<Committed>,
    /// Wakes partition maintenance when a batch finds its day's partition missing.
    pub partitions_wanted: Rc<Notify>,
}

/// One writer task; runs for the life of the storage core.
pub async fn run(parts: Writer) {
    let Writer { number: writer, handoff, db, limits, metrics, committed, partitions_wanted } = parts;
    let mut connection: Option<WriterConnection> = None;
    let mut next_attempt = Instant::now();
    let mut delay = RECONNECT_DELAY_MIN;
    let mut batch: Vec<(usize, EventRecord)> = Vec::with_capacity(limits.events_max);
    let mut cursor = writer;
    let mut touched = vec![false; handoff.links.len()];
    loop {
        batch.clear();
        handoff.drain(&mut batch, &mut cursor, limits.events_max, limits.bytes_max);
        if batch.is_empty() {
            handoff.wait_for_events().await;
            continue;
        }
        if connection.as_ref().is_none_or(|c| c.client.is_closed()) {
            connection = None;
            if Instant::now() >= next_attempt {
                match connect(&db, limits.statement_timeout).await {
                    Ok(c) => {
                        connection = Some(c);
                        delay = RECONNECT_DELAY_MIN;
                    }
                    Err(e) => {
                        tracing::warn!(writer, error = %e, retry_in_ms = delay.as_millis() as u64, "writer cannot connect");
                        next_attempt = Instant::now() + delay;
                        delay = (delay * 2).min(RECONNECT_DELAY_MAX);
                    }
                }
            }
        }
        let started = Instant::now();
        let mut to_push = Vec::new();
        let outcomes = match &connection {
            Some(c) => {
                let written = write_batch(c, &batch, &mut to_push).await;
                metrics.statements(written.statements);
                if written.partition_missing {
                    // Maintenance creates it now; the clients retry after Retry-After.
                    partitions_wanted.notify_one();
                }
                written.outcomes
            }
            None => vec![Outcome::Unavailable; batch.len()],
        };
        // Committed: hand the events to push to the engine. If its queue is full they
        // are not lost: they are due in the database and its poller claims them.
        if let Some(committed) = committed.as_ref().filter(|_| !to_push.is_empty()) {
            let _ = committed.try_send(to_push);
        }
        let failed = outcomes.iter().all(|o| *o == Outcome::Unavailable);
        metrics.batch(batch.len(), started.elapsed(), failed);
        if connection.as_ref().is_some_and(|c| c.client.is_closed()) {
            connection = None;
            next_attempt = Instant::now();
        }
        if connection.is_none() {
            db.status.lost();
        }
        for ((core, record), outcome) in batch.iter().zip(outcomes) {
            handoff.links[*core].complete(record.slot, outcome);
            touched[*core] = true;
        }
        for (core, touched) in touched.iter_mut().enumerate() {
            if std::mem::take(touched) {
                handoff.links[core].wake();
            }
        }
    }
}

async fn connect(db: &Db, statement_timeout: Duration) -> Result<WriterConnection, tokio_postgres::Error> {
    let client = db.connect().await?;
    super::pg::set_statement_timeout(&client, statement_timeout).await?;
    let insert = client.prepare(INSERT_BATCH_SQL).await?;
    let find_claim = client.prepare(FIND_CLAIM_SQL).await?;
    Ok(WriterConnection { client, insert, find_claim })
}

/// What writing one batch came to.
struct BatchWrite {
    /// One per record, in order.
    outcomes: Vec<Outcome>,
    /// Insert statements sent (1 unless PostgreSQL refused the batch).
    statements: u64,
    /// The batch failed because a daily partition does not exist.
    partition_missing: bool,
}

impl BatchWrite {
    fn unavailable(events: usize, statements: u64, partition_missing: bool) -> BatchWrite {
        BatchWrite { outcomes: vec![Outcome::Unavailable; events], statements, partition_missing }
    }
}

/// Writes one batch.
async fn write_batch(
    connection: &WriterConnection,
    batch: &[(usize, EventRecord)],
    to_push: &mut Vec<(Uuid, Uuid)>,
) -> BatchWrite {
    let started = Instant::now();
    // Two events of one organisation with one dedup_id in the same batch: only the
    // first goes to PostgreSQL (ON CONFLICT cannot touch a row twice in a statement);
    // the later ones get the first one's fate.
    let mut first_claim: AHashMap<(Uuid, &str), usize> = AHashMap::new();
    let mut follows: Vec<Option<usize>> = vec![None; batch.len()];
    let mut primaries: Vec<usize> = Vec::with_capacity(batch.len());
    for (index, (_, record)) in batch.iter().enumerate() {
        if let Some(dedup_id) = record.dedup_id.as_deref() {
            if let Some(&first) = first_claim.get(&(record.org_id, dedup_id)) {
                follows[index] = Some(first);
                continue;
            }
            first_claim.insert((record.org_id, dedup_id), index);
        }
        primaries.push(index);
    }

    let mut outcomes = vec![Outcome::Accepted; batch.len()];
    let mut statements = 1;
    match insert(connection, batch, &primaries, &mut outcomes, to_push).await {
        Ok(()) => {}
        Err(e) if is_missing_partition(&e) => {
            tracing::warn!(error = %e, "no partition for this batch's day; creating it, the batch is retried by its clients");
            return BatchWrite::unavailable(batch.len(), statements, true);
        }
        Err(e) if is_data_error(&e) => {
            // The JSON gate admits only what PostgreSQL stores, so this is a defence:
            // find the refused events by bisection, never one commit per event.
            tracing::warn!(error = %e, events = primaries.len(), "batch refused; isolating the refused events");
            let isolated = isolate_refused(connection, batch, &primaries, &mut outcomes, to_push).await;
            statements += isolated.statements;
            if let Err(e) = isolated.result {
                tracing::error!(error = %e, "batch write failed while isolating refused events");
                to_push.clear();
                return BatchWrite::unavailable(batch.len(), statements, is_missing_partition(&e));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "batch write failed");
            return BatchWrite::unavailable(batch.len(), statements, false);
        }
    }
    for (index, first) in follows.iter().enumerate() {
        if let Some(first) = *first {
            outcomes[index] = match &outcomes[first] {
                Outcome::Accepted => Outcome::Duplicate { original: batch[first].1.id },
                other => other.clone(),
            };
        }
    }
    tracing::trace!(
        events = batch.len(),
        commit_us = started.elapsed().as_micros() as u64,
        "batch committed"
    );
    BatchWrite { outcomes, statements, partition_missing: false }
}

/// The result of `isolate_refused` and the statements it sent.
struct Isolated {
    result: Result<(), tokio_postgres::Error>,
    statements: u64,
}

/// Writes `indexes` in one transaction, splitting every part that PostgreSQL refuses
/// for its data in two (a savepoint per part) until the refused events stand alone:
/// one bad event among n costs about 2·log2(n) statements, and every other event
/// commits with the rest of its group in one commit. `Err` (everything rolled back)
/// on any error that is not the data's.
async fn isolate_refused(
    connection: &WriterConnection,
    batch: &[(usize, EventRecord)],
    indexes: &[usize],
    outcomes: &mut [Outcome],
    to_push: &mut Vec<(Uuid, Uuid)>,
) -> Isolated {
    let mut statements = 0;
    let client = &connection.client;
    let result = async {
        client.batch_execute("BEGIN").await?;
        // The whole set was just refused: start from its halves.
        let mut parts: Vec<&[usize]> = Vec::new();
        let (left, right) = indexes.split_at(indexes.len() / 2);
        parts.extend([right, left].into_iter().filter(|part| !part.is_empty()));
        while let Some(part) = parts.pop() {
            let pushed = to_push.len();
            client.batch_execute("SAVEPOINT part").await?;
            statements += 1;
            match insert(connection, batch, part, outcomes, to_push).await {
                Ok(()) => client.batch_execute("RELEASE SAVEPOINT part").await?,
                Err(e) if is_data_error(&e) && !is_missing_partition(&e) => {
                    client.batch_execute("ROLLBACK TO SAVEPOINT part").await?;
                    to_push.truncate(pushed);
                    part.iter().for_each(|&i| outcomes[i] = Outcome::Accepted);
                    match part {
                        [only] => {
                            let message =
                                e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_owned());
                            outcomes[*only] = Outcome::Rejected { message };
                        }
                        _ => {
                            let (left, right) = part.split_at(part.len() / 2);
                            parts.extend([right, left]);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        client.batch_execute("COMMIT").await
    }
    .await;
    if result.is_err() && !client.is_closed() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    Isolated { result, statements }
}

/// A row for a day without a partition: SQLSTATE 23514 (check_violation) raised by
/// tuple routing, which names no constraint (a real CHECK violation names its own).
/// Maintenance fell behind or the clock jumped; not the event's fault.
fn is_missing_partition(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::CHECK_VIOLATION && db.constraint().is_none()
    })
}

/// True for errors caused by the data of an event: SQLSTATE classes 22 (data
/// exception) and 23 (integrity constraint violation). Every other error (a backend
/// terminated by an administrator, 57P01; a lost connection; 08xxx) is transient and
/// says nothing about the events.
fn is_data_error(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23"))
}

/// Runs the batch statement for `indexes` and records non-accepted outcomes.
async fn insert(
    connection: &WriterConnection,
    batch: &[(usize, EventRecord)],
    indexes: &[usize],
    outcomes: &mut [Outcome],
    to_push: &mut Vec<(Uuid, Uuid)>,
) -> Result<(), tokio_postgres::Error> {
    let records = || indexes.iter().map(|&i| &batch[i].1);
    let ids: Vec<Uuid> = records().map(|r| r.id).collect();
    let orgs: Vec<Uuid> = records().map(|r| r.org_id).collect();
    let types: Vec<&str> = records().map(|r| r.event_type.as_str()).collect();
    let bodies: Vec<&str> = records().map(|r| r.body.as_str()).collect();
    let dedups: Vec<Option<&str>> = records().map(|r| r.dedup_id.as_deref()).collect();
    let created: Vec<i64> = records().map(|r| r.created_at_micros).collect();
    let rows = connection
        .client
        .query(&connection.insert, &[&ids, &orgs, &types, &bodies, &dedups, &created])
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let position: AHashMap<Uuid, usize> = indexes.iter().map(|&i| (batch[i].1.id, i)).collect();
    for row in rows {
        let id: Uuid = row.try_get(0)?;
        let original: Option<Uuid> = row.try_get(1)?;
        let inserted: bool = row.try_get(2)?;
        let Some(&index) = position.get(&id) else { continue };
        let record = &batch[index].1;
        if inserted {
            to_push.push((record.org_id, id));
            continue;
        }
        let original = match (original, record.dedup_id.as_deref()) {
            (Some(original), _) => Some(original),
            (None, Some(dedup_id)) => connection
                .client
                .query_opt(&connection.find_claim, &[&record.org_id, &dedup_id])
                .await?
                .map(|row| row.try_get(0))
                .transpose()?,
            (None, None) => None,
        };
        outcomes[index] = match original {
            Some(original) => Outcome::Duplicate { original },
            // Neither inserted nor a duplicate: an id collision; let the client retry.
            None => Outcome::Unavailable,
        };
    }
    Ok(())
}
