//! The batch writer: group commit of events from the rings. Its decisions (dedup
//! folding, what a row means, bisection) are plain functions in `plan`; this file is
//! the IO around them.
//!
//! Two writer tasks run on the storage core, each with its own connection, taking turns
//! (`turn`): a batch is whatever arrived during the previous commit (natural group
//! commit), capped at `batch_events_max` events and `batch_bytes_max` bytes, and the
//! second writer sends beside the first only when the batch in flight is slow (5 ms),
//! so a bisecting or blocked batch does not hold up the events behind it. Each batch is
//! one statement, committed on its own (autocommit, `synchronous_commit` on); only
//! after PostgreSQL answers are the waiting requests completed. Back of the envelope,
//! from pgbench on the 2-vCPU bench machine: ~18 µs of PostgreSQL CPU per row plus
//! ~700 µs per commit, so 30 rows (64 connections) cost ~41 µs a row and 512 rows ~9
//! ms in all: the fewer commits an event shares, the more of the machine it takes.

mod plan;
mod turn;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::metrics::StorageMetrics;
use super::pg::{set_statement_timeout, Backoff, Db};
use crate::handoff::{EventRecord, Handoff, Outcome};
use crate::util::error_chain;
use plan::{verdict, Bisection, Plan, RowVerdict};
use turn::{Turn, Turns, OVERLAP_AFTER};

/// The statement of a batch (or a bisection part) whose events carry no `dedup_id`,
/// the common case: one insert straight from the arrays, the organisation's webhook
/// and type filter deciding whether each event is due for push at once, and the ids
/// to push as the answer. Event ids are fresh UUIDv7s, so there is no conflict to
/// arbitrate.
const INSERT_PLAIN_SQL: &str = "
WITH inserted AS (
    INSERT INTO events (org_id, id, type, payload, created_at, next_attempt_at)
    SELECT i.org_id, i.id, i.type, i.payload::jsonb, i.created_at,
           CASE WHEN o.webhook_url IS NOT NULL AND triggerd_type_matches(o.event_types, i.type)
                THEN i.created_at END
    FROM (SELECT t.*, timestamptz 'epoch' + t.created_us * interval '1 microsecond' AS created_at
          FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[])
              AS t(id, org_id, type, payload, created_us)) i
    LEFT JOIN organizations o ON o.org_id = i.org_id
    RETURNING id, next_attempt_at IS NOT NULL AS push
)
SELECT id, NULL::uuid, true FROM inserted WHERE push";

/// The statement of a batch with `dedup_id`s. The dedup ledger is claimed first; an
/// event is inserted only if it has no dedup_id or won its claim, and is due for
/// delivery at once if its organisation's webhook takes its type. The final SELECT
/// lists the events that were not inserted (with the original's id where the
/// snapshot sees it) and the inserted ones to push, which go straight to the delivery
/// engine.
const INSERT_DEDUP_SQL: &str = "
WITH input AS (
    SELECT t.*, timestamptz 'epoch' + t.created_us * interval '1 microsecond' AS created_at
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::text[])
        AS t(id, org_id, type, payload, created_us, dedup_id)
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
    SELECT i.org_id, i.id, i.type, i.payload::jsonb, i.dedup_id, i.created_at,
           CASE WHEN o.webhook_url IS NOT NULL AND triggerd_type_matches(o.event_types, i.type)
                THEN i.created_at END
    FROM input i LEFT JOIN organizations o ON o.org_id = i.org_id
    WHERE i.dedup_id IS NULL OR i.id IN (SELECT event_id FROM claimed)
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
    insert_plain: Statement,
    insert_dedup: Statement,
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
    /// Tells other instances which organisations got events.
    pub broadcast: Rc<super::notifier::CommitBroadcast>,
    /// Shared by all writers of the storage core: whose turn it is to send a batch.
    pub gate: Rc<Gate>,
}

/// The writers' turns (see `turn`), and the wake-up of a writer waiting for one when
/// a batch ends. Lives as long as the storage core.
#[derive(Debug, Default)]
pub struct Gate {
    /// The batches in flight; borrowed only between awaits.
    turns: RefCell<Turns>,
    /// Woken (all waiters) whenever a batch ends.
    ended: Notify,
}

impl Gate {
    /// Returns when this writer may send a batch: none in flight, or the newest in
    /// flight older than `OVERLAP_AFTER`.
    async fn wait_turn(&self) {
        loop {
            // Created before the check: a batch ending after it still wakes this one.
            let ended = self.ended.notified();
            let turn = self.turns.borrow().turn(Instant::now(), OVERLAP_AFTER);
            match turn {
                Turn::Go => return,
                Turn::WaitUntil(deadline) => {
                    tokio::select! {
                        _ = ended => {}
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
                    }
                }
            }
        }
    }

    fn start(&self, now: Instant) -> u64 {
        self.turns.borrow_mut().start(now)
    }

    fn end(&self, ticket: u64) {
        self.turns.borrow_mut().end(ticket);
        self.ended.notify_waiters();
    }
}

/// The writer's connection, opened lazily and reopened after a loss with back-off;
/// while it is down (and before the next attempt is due) batches fail at once (503).
struct Link {
    connection: Option<WriterConnection>,
    next_attempt: Instant,
    backoff: Backoff,
}

impl Link {
    async fn get(&mut self, parts: &Writer) -> Option<&WriterConnection> {
        if self.connection.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.connection = None;
        }
        if self.connection.is_none() && Instant::now() >= self.next_attempt {
            match connect(&parts.db, parts.limits.statement_timeout).await {
                Ok(c) => {
                    self.connection = Some(c);
                    self.backoff.succeeded();
                }
                Err(e) => {
                    let delay = self.backoff.failed();
                    tracing::warn!(writer = parts.number, error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "writer cannot connect");
                    self.next_attempt = Instant::now() + delay;
                }
            }
        }
        self.connection.as_ref()
    }
}

/// One writer task; runs for the life of the storage core.
pub async fn run(parts: Writer) {
    let mut link = Link {
        connection: None,
        next_attempt: Instant::now(),
        backoff: Backoff::new(RECONNECT_DELAY_MIN, RECONNECT_DELAY_MAX),
    };
    let mut batch: Vec<(usize, EventRecord)> = Vec::with_capacity(parts.limits.events_max);
    let mut cursor = parts.number;
    loop {
        // No await from here to `gate.start`: the turn is taken in the same poll that
        // was given it, so two writers never both see it free.
        parts.gate.wait_turn().await;
        batch.clear();
        parts.handoff.drain(&mut batch, &mut cursor, parts.limits.events_max, parts.limits.bytes_max);
        if batch.is_empty() {
            parts.handoff.wait_for_events().await;
            continue;
        }
        debug_assert!(batch.len() <= parts.limits.events_max, "a batch within its limits");
        let started = Instant::now();
        let ticket = parts.gate.start(started);
        let mut to_push = Vec::new();
        let outcomes = match link.get(&parts).await {
            Some(connection) => {
                let written = write_batch(connection, &batch, &mut to_push).await;
                parts.metrics.statements(written.statements);
                if written.partition_missing {
                    // Maintenance creates it now; the clients retry after Retry-After.
                    parts.partitions_wanted.notify_one();
                }
                written.outcomes
            }
            None => vec![Outcome::Unavailable; batch.len()],
        };
        parts.gate.end(ticket);
        // Committed: hand the events to push to the engine. If its queue is full they
        // are not lost: they are due in the database and its poller claims them.
        if let Some(committed) = parts.committed.as_ref().filter(|_| !to_push.is_empty()) {
            let _ = committed.try_send(to_push);
        }
        let failed = outcomes.iter().all(|o| *o == Outcome::Unavailable);
        parts.metrics.batch(batch.len(), started.elapsed(), failed);
        if link.connection.as_ref().is_some_and(|c| c.client.is_closed()) {
            // Lost during this batch: the next one tries to reconnect at once.
            link.connection = None;
            link.next_attempt = Instant::now();
        }
        if link.connection.is_none() {
            parts.db.status.lost();
        }
        let committed = committed_orgs(&batch, &outcomes);
        complete(&parts.handoff, &batch, outcomes);
        // Held stream reads of these organisations look again, here and elsewhere.
        parts.handoff.committed(Some(&committed));
        parts.broadcast.add(&committed);
    }
}

/// The organisations that got events committed, each once.
fn committed_orgs(batch: &[(usize, EventRecord)], outcomes: &[Outcome]) -> Vec<Uuid> {
    let mut orgs: Vec<Uuid> = batch
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| **outcome == Outcome::Accepted)
        .map(|((_, record), _)| record.org_id)
        .collect();
    orgs.sort_unstable();
    orgs.dedup();
    orgs
}

/// Gives every event of the batch its outcome, then wakes each core that had one.
fn complete(handoff: &Handoff, batch: &[(usize, EventRecord)], outcomes: Vec<Outcome>) {
    assert_eq!(batch.len(), outcomes.len(), "one outcome per event: every ticket is completed once");
    let mut touched = 0u128;
    for ((core, record), outcome) in batch.iter().zip(outcomes) {
        handoff.links[*core].complete(record.slot, outcome);
        touched |= 1 << (*core % 128);
    }
    for (core, link) in handoff.links.iter().enumerate() {
        if touched & (1 << (core % 128)) != 0 {
            link.wake();
        }
    }
}

async fn connect(db: &Db, statement_timeout: Duration) -> Result<WriterConnection, tokio_postgres::Error> {
    let client = db.connect().await?;
    set_statement_timeout(&client, statement_timeout).await?;
    let insert_plain = client.prepare(INSERT_PLAIN_SQL).await?;
    let insert_dedup = client.prepare(INSERT_DEDUP_SQL).await?;
    let find_claim = client.prepare(FIND_CLAIM_SQL).await?;
    Ok(WriterConnection { client, insert_plain, insert_dedup, find_claim })
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

/// Writes one batch: one statement, or, when PostgreSQL refuses it for its data,
/// bisection inside one transaction.
async fn write_batch(
    connection: &WriterConnection,
    batch: &[(usize, EventRecord)],
    to_push: &mut Vec<(Uuid, Uuid)>,
) -> BatchWrite {
    let plan = Plan::new(batch.iter().map(|(_, r)| (r.org_id, r.dedup_id.as_deref())));
    let mut outcomes = vec![Outcome::Accepted; batch.len()];
    let mut statements = 1;
    match insert(connection, batch, &plan.primaries, &mut outcomes, to_push).await {
        Ok(()) => {}
        Err(e) if is_missing_partition(&e) => {
            tracing::warn!(error = %error_chain(&e), "no partition for this batch's day; creating it, the batch is retried by its clients");
            return BatchWrite::unavailable(batch.len(), statements, true);
        }
        Err(e) if is_data_error(&e) => {
            // The JSON gate admits only what PostgreSQL stores, so this is a defence:
            // find the refused events by bisection, never one commit per event.
            tracing::warn!(error = %error_chain(&e), events = plan.primaries.len(), "batch refused; isolating the refused events");
            let isolated = isolate_refused(connection, batch, &plan.primaries, &mut outcomes, to_push).await;
            statements += isolated.statements;
            if let Err(e) = isolated.result {
                tracing::error!(error = %error_chain(&e), "batch write failed while isolating refused events");
                to_push.clear();
                return BatchWrite::unavailable(batch.len(), statements, is_missing_partition(&e));
            }
        }
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "batch write failed");
            return BatchWrite::unavailable(batch.len(), statements, false);
        }
    }
    plan.settle_followers(&mut outcomes, |index| batch[index].1.id);
    BatchWrite { outcomes, statements, partition_missing: false }
}

/// The result of `isolate_refused` and the statements it sent.
struct Isolated {
    result: Result<(), tokio_postgres::Error>,
    statements: u64,
}

/// Writes `indexes` in one transaction, a savepoint per part of the bisection
/// (`plan::Bisection`), so the refused events stand alone and every other event
/// commits with the rest of its group in one commit. `Err` (everything rolled back) on
/// any error that is not the data's.
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
        let mut bisection = Bisection::of(indexes);
        while let Some(part) = bisection.next_part() {
            let pushed = to_push.len();
            client.batch_execute("SAVEPOINT part").await?;
            statements += 1;
            match insert(connection, batch, part, outcomes, to_push).await {
                Ok(()) => client.batch_execute("RELEASE SAVEPOINT part").await?,
                Err(e) if is_data_error(&e) && !is_missing_partition(&e) => {
                    client.batch_execute("ROLLBACK TO SAVEPOINT part").await?;
                    to_push.truncate(pushed);
                    part.iter().for_each(|&i| outcomes[i] = Outcome::Accepted);
                    if let Some(alone) = bisection.refused(part) {
                        let message =
                            e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_owned());
                        outcomes[alone] = Outcome::Rejected { message };
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
    let payloads: Vec<&str> = records().map(|r| r.payload.as_str()).collect();
    let created: Vec<i64> = records().map(|r| r.created_at_micros).collect();
    let rows = if records().any(|r| r.dedup_id.is_some()) {
        let dedups: Vec<Option<&str>> = records().map(|r| r.dedup_id.as_deref()).collect();
        let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&ids, &orgs, &types, &payloads, &created, &dedups];
        connection.client.query(&connection.insert_dedup, &parameters).await?
    } else {
        connection.client.query(&connection.insert_plain, &[&ids, &orgs, &types, &payloads, &created]).await?
    };
    if rows.is_empty() {
        return Ok(());
    }
    let position: AHashMap<Uuid, usize> = indexes.iter().map(|&i| (batch[i].1.id, i)).collect();
    for row in rows {
        let id: Uuid = row.try_get(0)?;
        let Some(&index) = position.get(&id) else { continue };
        let record = &batch[index].1;
        outcomes[index] = match verdict(row.try_get(2)?, row.try_get(1)?, record.dedup_id.is_some()) {
            RowVerdict::Push => {
                to_push.push((record.org_id, id));
                continue;
            }
            RowVerdict::Duplicate(original) => Outcome::Duplicate { original },
            RowVerdict::LookUpClaim => {
                let claim = connection
                    .client
                    .query_opt(&connection.find_claim, &[&record.org_id, &record.dedup_id])
                    .await?;
                match claim.map(|row| row.try_get(0)).transpose()? {
                    Some(original) => Outcome::Duplicate { original },
                    None => Outcome::Unavailable,
                }
            }
            RowVerdict::Collision => Outcome::Unavailable,
        };
    }
    Ok(())
}
