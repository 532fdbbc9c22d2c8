//! The delivery engine's SQL. Every statement takes `now` (µs since the epoch) as a
//! parameter instead of calling `now()`, so leases and schedules are tested with an
//! injected clock against a real PostgreSQL.
//!
//! An attempt is claimed by setting a lease (`lease_owner`, `lease_until`) in the same
//! statement that selects it `FOR UPDATE SKIP LOCKED`: two processes never claim the
//! same attempt, and a process that dies mid-delivery loses its leases when they expire.
//!
//! An outcome (or a give-back) names its lease, owner and expiry, and is written only
//! while the event still holds that lease. The owner alone is not enough: after a
//! redelivery, or after its own lease expired, the same process may claim the event
//! again while its earlier attempt still runs, and that attempt's outcome would then
//! be recorded under the new lease and clear it, so the new attempt's outcome was
//! refused and lost (and a retry recorded by it could be claimed while the new attempt
//! was still in flight). A claim's expiry is `now + lease` at its own clock reading, so
//! two claims of one event hold different leases. An outcome waiting for the event's
//! row lock behind a redelivery is rechecked by PostgreSQL on the row's new version,
//! whose lease is gone: it is refused, and the redelivery happens.

use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::metrics::Backlog;
use crate::handoff::commands::ATTEMPTS_KEPT;

const NOW: &str = "(timestamptz 'epoch' + $2::int8 * interval '1 microsecond')";

/// The instant `micros` (an SQL expression, µs since the epoch). A claim writes its
/// lease's expiry with it and outcomes compare the lease with it, the same expression
/// of the same number, so equality is exact.
fn at_micros(micros: &str) -> String {
    format!("(timestamptz 'epoch' + {micros}::int8 * interval '1 microsecond')")
}

/// `lease_until` as an outcome names it: the lease expiring at `micros`.
fn lease_is(micros: &str) -> String {
    format!("lease_until = {}", at_micros(micros))
}

/// Settings of the engine's claiming connection (`Engine::connection`). A claim is
/// `ORDER BY next_attempt_at LIMIT n` per organisation over every daily partition; the only plan that reads O(n) rows is a
/// Merge Append of the partitions' `events_due` range scans. The statistics of
/// `next_attempt_at` are mostly taken while little is due (an ANALYZE of a table whose
/// events are pulled or delivered sees it all NULL), so the planner believes an
/// organisation has one due row and prefers to read its whole backlog and sort it: with
/// 10 000 due per organisation a claim read 10 000 rows per organisation instead of 16
/// (10 ms instead of 0.1), and push ran at 895 deliveries/s (issue 16). So that
/// connection never sorts where an ordered scan exists (as the stream lane,
/// `storage::stream::SESSION`), and keeps one generic plan per statement: the
/// organisation claim got a custom plan at every call, 1-2 ms of planning each. A
/// generic plan guesses a `LIMIT $n` at a tenth of the rows, and then joined the few
/// claimed rows back to `events` by hashing a scan of the whole partition (40 000 rows
/// read for a claim of 16 in `a_claim_reads_only_the_head_of_a_backlog`): so no hash or
/// merge joins either; every statement of this connection finds its rows by index. (The
/// outcome writer's connection needs none of this.)
///
/// And its commits do not wait for the WAL flush (`synchronous_commit = off`): what it
/// writes is leases (claims and give-backs), and a lease lost in a crash of PostgreSQL
/// only makes its attempt claimable again: a second delivery, which at-least-once
/// allows (a crash between the receiver's answer and the outcome's commit does the
/// same). An outcome, written on the other connection with the flush, is durable only
/// with every WAL record before it, so a recorded outcome never loses its claim. A claim
/// then waits for no fdatasync: push to 4 fast local receivers went from 8 812-10 863
/// to 10 919-12 004 deliveries/s, in three pairs of runs taken in turn (issue 16).
pub const SESSION: &str = "SET enable_sort = off; SET enable_hashjoin = off; SET enable_mergejoin = off; \
     SET plan_cache_mode = force_generic_plan; SET synchronous_commit = off";

/// An attempt this process holds the lease for.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub org_id: Uuid,
    pub id: Uuid,
    pub event_type: String,
    /// The payload as JSON text.
    pub payload: String,
    pub created_at_micros: i64,
    /// When this claim's lease expires (µs since the epoch): with the owner, which lease
    /// of the event is this attempt's (see the module's comment).
    pub lease_until_micros: i64,
    /// Attempts made before this one.
    pub attempts: i32,
    /// Attempts made before the event was last redelivered or replayed: the retry
    /// schedule counts from there.
    pub retry_from: i32,
    /// `None` when push was switched off since the event was stored.
    pub webhook_url: Option<String>,
    pub signing_secret: String,
    /// The secret a rotation replaced, while it still signs (24 h).
    pub previous_secret: Option<String>,
}

impl Claimed {
    /// Attempts made since the event was (re)scheduled, as the retry schedule counts.
    pub fn scheduled_attempts(&self) -> u32 {
        (self.attempts - self.retry_from).max(0) as u32
    }
}

/// What one attempt did, for the attempt log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptLog {
    pub attempted_at_micros: i64,
    /// `None` when no HTTP answer came.
    pub status_code: Option<i16>,
    /// `None` on a 2xx.
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// What to write after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Delivered,
    Retry {
        delay_ms: i64,
        error: String,
    },
    Failed {
        error: String,
    },
    /// 410 Gone: push off for the organisation; the event stays pending.
    Gone,
    /// Push was off when the attempt came due: nothing was sent.
    PushOff,
}

pub struct DeliveryStatements {
    claim_due: Statement,
    claim_orgs: Statement,
    claim_ids: Statement,
    release: Statement,
    delivered: Statement,
    retry: Statement,
    failed: Statement,
    gone: Statement,
    push_off: Statement,
    record_batch: Statement,
    switch_off: Statement,
    due_stats: Statement,
}

fn claim_sql(due: &str) -> String {
    let until = at_micros("$3");
    format!(
        "WITH due AS ({due})
         UPDATE events e SET lease_owner = $1, lease_until = {until}
         FROM due, organizations o
         WHERE e.org_id = due.org_id AND e.id = due.id AND o.org_id = e.org_id
         RETURNING e.org_id, e.id, e.type, e.payload::text,
                   (extract(epoch FROM e.created_at) * 1000000)::int8, e.attempts,
                   o.webhook_url, o.signing_secret,
                   CASE WHEN o.previous_secret_expires_at > {NOW} THEN o.previous_signing_secret END,
                   e.retry_from"
    )
}

/// Shared condition: a pending delivery whose attempt nobody holds.
const CLAIMABLE: &str = "e.status = 'pending' AND (e.lease_until IS NULL OR e.lease_until < {NOW})";

/// The outcome `set` of event $3/$4 if $1 still holds the lease expiring at $5 (µs).
fn only_owner(set: &str) -> String {
    format!(
        "UPDATE events SET {set}, lease_owner = NULL, lease_until = NULL
         WHERE org_id = $3 AND id = $4 AND lease_owner = $1 AND {} AND $2::int8 IS NOT NULL",
        lease_is("$5")
    )
}

/// An outcome written together with its attempt's log row, in one statement: $6 when
/// the attempt started (µs), $7 the status code, $8 the error, $9 the duration (ms);
/// the outcome's own parameters follow from $10. Attempt n takes slot n % 50, so the
/// last 50 are kept.
fn logged(set: &str) -> String {
    format!(
        "WITH recorded AS ({} RETURNING org_id, id, attempts)
         INSERT INTO delivery_attempts AS a
             (org_id, event_id, slot, attempt, attempted_at, status_code, error, duration_ms)
         SELECT org_id, id, attempts % {ATTEMPTS_KEPT}, attempts,
                timestamptz 'epoch' + $6::int8 * interval '1 microsecond', $7::int2, $8::text, $9::int4
         FROM recorded
         ON CONFLICT (org_id, event_id, slot) DO UPDATE
             SET attempt = excluded.attempt, attempted_at = excluded.attempted_at,
                 status_code = excluded.status_code, error = excluded.error, duration_ms = excluded.duration_ms",
        only_owner(set)
    )
}

/// `Record` as the batch statement's `kind` column.
fn kind(record: &Record) -> i16 {
    match record {
        Record::Delivered => 0,
        Record::Retry { .. } => 1,
        Record::Failed { .. } => 2,
        Record::Gone => 3,
        Record::PushOff => 4,
    }
}

/// Many outcomes in one statement, each as its own `Record`'s statement would write it
/// (see `DeliveryStatements::prepare`), by `kind`: 0 delivered, 1 retry, 2 failed, 3
/// gone, 4 push off (no attempt row). $1 owner, $2 now; then one array per column:
/// $3 org, $4 id, $5 kind, $6 retry delay (ms), $7 the event's `last_error`, $8 when
/// the attempt started (µs), $9 its status code, $10 its logged error, $11 its
/// duration (ms), $12 the expiry of the attempt's lease (µs). Returns the outcomes
/// recorded, as (org, event, lease expiry): those whose lease `owner` still held.
fn record_batch_sql() -> String {
    let leased = lease_is("i.lease_until");
    format!(
        "WITH input AS (
             SELECT * FROM unnest($3::uuid[], $4::uuid[], $5::int2[], $6::int8[], $7::text[],
                                  $8::int8[], $9::int2[], $10::text[], $11::int4[], $12::int8[])
                 AS i(org_id, id, kind, delay_ms, last_error, attempted_at, status_code, error, duration_ms,
                      lease_until)),
         recorded AS (
             UPDATE events e SET
                 status = CASE WHEN i.kind = 0 THEN 'delivered'
                               WHEN i.kind = 2 AND e.status <> 'delivered' THEN 'failed'
                               ELSE e.status END,
                 delivered_at = CASE WHEN i.kind = 0 THEN coalesce(e.delivered_at, {NOW}) ELSE e.delivered_at END,
                 attempts = e.attempts + CASE WHEN i.kind = 4 THEN 0 ELSE 1 END,
                 next_attempt_at = CASE WHEN i.kind = 1 AND e.status <> 'delivered'
                                        THEN {NOW} + i.delay_ms * interval '1 millisecond' END,
                 last_error = CASE WHEN i.kind = 0 THEN NULL WHEN i.kind = 4 THEN e.last_error
                                   ELSE i.last_error END,
                 lease_owner = NULL, lease_until = NULL
             FROM input i
             WHERE e.org_id = i.org_id AND e.id = i.id AND e.lease_owner = $1 AND e.{leased}
             RETURNING e.org_id, e.id, e.attempts, i.kind, i.attempted_at, i.status_code, i.error, i.duration_ms,
                       i.lease_until),
         logged AS (
             INSERT INTO delivery_attempts AS a
                 (org_id, event_id, slot, attempt, attempted_at, status_code, error, duration_ms)
             SELECT org_id, id, attempts % {ATTEMPTS_KEPT}, attempts,
                    timestamptz 'epoch' + attempted_at * interval '1 microsecond', status_code, error, duration_ms
             FROM recorded WHERE kind <> 4
             ON CONFLICT (org_id, event_id, slot) DO UPDATE
                 SET attempt = excluded.attempt, attempted_at = excluded.attempted_at,
                     status_code = excluded.status_code, error = excluded.error,
                     duration_ms = excluded.duration_ms)
         SELECT org_id, id, lease_until FROM recorded"
    )
}

/// The statement of a claim of due attempts (public so a test can EXPLAIN it): per
/// organisation with a webhook, its oldest due attempts (at most $6); then the oldest
/// of those overall (at most $4). $5: organisations left out.
pub fn claim_due_sql() -> String {
    let claimable = CLAIMABLE.replace("{NOW}", NOW);
    claim_sql(&format!(
        "SELECT d.org_id, d.id FROM organizations o
         CROSS JOIN LATERAL (
             SELECT e.org_id, e.id, e.next_attempt_at FROM events e
             WHERE e.org_id = o.org_id AND e.next_attempt_at <= {NOW} AND {claimable}
             ORDER BY e.next_attempt_at LIMIT $6 FOR UPDATE SKIP LOCKED) d
         WHERE o.webhook_url IS NOT NULL AND o.org_id <> ALL($5::uuid[])
         ORDER BY d.next_attempt_at LIMIT $4"
    ))
}

/// The statement of an organisation claim (public so a test can EXPLAIN it): the
/// listed organisations ($5, with a webhook), each its oldest due attempts, at most its
/// own count ($6).
pub fn claim_orgs_sql() -> String {
    let claimable = CLAIMABLE.replace("{NOW}", NOW);
    claim_sql(&format!(
        "SELECT d.org_id, d.id FROM unnest($5::uuid[], $6::int8[]) AS r(org_id, room)
         JOIN organizations o ON o.org_id = r.org_id
         CROSS JOIN LATERAL (
             SELECT e.org_id, e.id FROM events e
             WHERE e.org_id = r.org_id AND e.next_attempt_at <= {NOW} AND {claimable}
             ORDER BY e.next_attempt_at LIMIT r.room FOR UPDATE SKIP LOCKED) d
         WHERE o.webhook_url IS NOT NULL AND $4::int8 IS NOT NULL"
    ))
}

impl crate::storage::pg::PrepareStatements for DeliveryStatements {
    async fn prepare(client: &Client) -> Result<DeliveryStatements, tokio_postgres::Error> {
        let claimable = CLAIMABLE.replace("{NOW}", NOW);
        Ok(DeliveryStatements {
            claim_due: client.prepare(&claim_due_sql()).await?,
            claim_orgs: client.prepare(&claim_orgs_sql()).await?,
            claim_ids: client
                .prepare(&claim_sql(&format!(
                    "SELECT e.org_id, e.id FROM events e
                     JOIN unnest($4::uuid[], $5::uuid[]) AS w(org_id, id) ON e.org_id = w.org_id AND e.id = w.id
                     WHERE e.next_attempt_at IS NOT NULL AND {claimable}
                     FOR UPDATE OF e SKIP LOCKED"
                )))
                .await?,
            release: client
                .prepare(&format!(
                    "UPDATE events SET lease_owner = NULL, lease_until = NULL
                     WHERE org_id = $2 AND id = $3 AND lease_owner = $1 AND {}",
                    lease_is("$4")
                ))
                .await?,
            delivered: client
                .prepare(&logged(&format!(
                    "status = 'delivered', delivered_at = coalesce(delivered_at, {NOW}), attempts = attempts + 1,
                     next_attempt_at = NULL, last_error = NULL"
                )))
                .await?,
            retry: client
                .prepare(&logged(&format!(
                    "attempts = attempts + 1, last_error = $11,
                     next_attempt_at = CASE WHEN status = 'delivered' THEN NULL
                                            ELSE {NOW} + $10::int8 * interval '1 millisecond' END"
                )))
                .await?,
            failed: client
                .prepare(&logged(
                    "status = CASE WHEN status = 'delivered' THEN status ELSE 'failed' END,
                     attempts = attempts + 1, last_error = $10, next_attempt_at = NULL",
                ))
                .await?,
            gone: client
                .prepare(&logged(
                    "attempts = attempts + 1, last_error = $10::text, next_attempt_at = NULL",
                ))
                .await?,
            push_off: client.prepare(&only_owner("next_attempt_at = NULL")).await?,
            record_batch: client.prepare(&record_batch_sql()).await?,
            switch_off: client.prepare(crate::storage::queries::SWITCH_OFF_SQL).await?,
            // Per organisation, then summed: the totals, the largest, and how many
            // organisations have at most 1, 10, … 100 000 due (a fixed set of series).
            due_stats: client
                .prepare(&format!(
                    "WITH per_org AS (
                         SELECT org_id, count(*) AS n, min(next_attempt_at) AS oldest FROM events
                         WHERE next_attempt_at <= {NOW} AND $1::int4 IS NOT NULL GROUP BY org_id)
                     SELECT coalesce(sum(n), 0)::int8,
                            coalesce((extract(epoch FROM {NOW} - min(oldest)) * 1000000)::int8, 0),
                            coalesce(max(n), 0)::int8,
                            count(*) FILTER (WHERE n <= 1), count(*) FILTER (WHERE n <= 10),
                            count(*) FILTER (WHERE n <= 100), count(*) FILTER (WHERE n <= 1000),
                            count(*) FILTER (WHERE n <= 10000), count(*) FILTER (WHERE n <= 100000),
                            count(*)
                     FROM per_org"
                ))
                .await?,
        })
    }
}

/// A claim's lease expiry: `now + lease`, µs.
fn lease_until(now_micros: i64, lease_ms: i64) -> i64 {
    now_micros.saturating_add(lease_ms.saturating_mul(1000))
}

fn rows_to_claimed(
    rows: Vec<tokio_postgres::Row>,
    lease_until_micros: i64,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    rows.iter()
        .map(|row| {
            Ok(Claimed {
                org_id: row.try_get(0)?,
                id: row.try_get(1)?,
                event_type: row.try_get(2)?,
                payload: row.try_get(3)?,
                created_at_micros: row.try_get(4)?,
                lease_until_micros,
                attempts: row.try_get(5)?,
                webhook_url: row.try_get(6)?,
                signing_secret: row.try_get(7)?,
                previous_secret: row.try_get(8)?,
                retry_from: row.try_get(9)?,
            })
        })
        .collect()
}

/// Claims up to `limit` due attempts, at most `per_org` of each organisation, oldest
/// first, skipping `excluded` organisations.
#[allow(clippy::too_many_arguments)]
pub async fn claim_due(
    client: &Client,
    statements: &DeliveryStatements,
    owner: Uuid,
    now_micros: i64,
    lease_ms: i64,
    limit: i64,
    per_org: i64,
    excluded: &[Uuid],
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let until = lease_until(now_micros, lease_ms);
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&owner, &now_micros, &until, &limit, &excluded, &per_org];
    let rows = client.query(&statements.claim_due, &parameters).await?;
    rows_to_claimed(rows, until)
}

/// Claims, of each organisation `(org, n)` in `orgs`, up to `n` due attempts, oldest first.
pub async fn claim_orgs(
    client: &Client,
    statements: &DeliveryStatements,
    owner: Uuid,
    now_micros: i64,
    lease_ms: i64,
    orgs: &[(Uuid, usize)],
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = orgs.iter().map(|(org, _)| *org).collect();
    let rooms: Vec<i64> = orgs.iter().map(|(_, n)| *n as i64).collect();
    let total: i64 = rooms.iter().sum();
    let until = lease_until(now_micros, lease_ms);
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&owner, &now_micros, &until, &total, &ids, &rooms];
    let rows = client.query(&statements.claim_orgs, &parameters).await?;
    rows_to_claimed(rows, until)
}

/// Claims the given events (just committed) if their first attempt is still unclaimed.
pub async fn claim_ids(
    client: &Client,
    statements: &DeliveryStatements,
    owner: Uuid,
    now_micros: i64,
    lease_ms: i64,
    events: &[(Uuid, Uuid)],
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let orgs: Vec<Uuid> = events.iter().map(|(org, _)| *org).collect();
    let ids: Vec<Uuid> = events.iter().map(|(_, id)| *id).collect();
    let until = lease_until(now_micros, lease_ms);
    let rows = client.query(&statements.claim_ids, &[&owner, &now_micros, &until, &orgs, &ids]).await?;
    rows_to_claimed(rows, until)
}

/// Gives a claimed attempt back unattempted, if its lease is still held.
pub async fn release(
    client: &Client,
    statements: &DeliveryStatements,
    owner: Uuid,
    claimed: &Claimed,
) -> Result<(), tokio_postgres::Error> {
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&owner, &claimed.org_id, &claimed.id, &claimed.lease_until_micros];
    client.execute(&statements.release, &parameters).await.map(drop)
}

/// The message of a 410: push is switched off for the organisation.
pub const GONE_ERROR: &str = "HTTP 410 Gone: push switched off for the organisation";

/// Writes an attempt's outcome and its log row (`outcome.log`) if `owner` still holds
/// the attempt's lease; `false` if not. `Record::PushOff` only takes the event off the
/// schedule: nothing was sent, so no log row is written.
pub async fn record(
    client: &Client,
    statements: &DeliveryStatements,
    owner: Uuid,
    now_micros: i64,
    outcome: &Outcome,
) -> Result<bool, tokio_postgres::Error> {
    type Parameter<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let attempt = &outcome.log;
    let key: [Parameter<'_>; 5] =
        [&owner, &now_micros, &outcome.org_id, &outcome.id, &outcome.lease_until_micros];
    let mut parameters: Vec<Parameter<'_>> = key.to_vec();
    parameters.extend([
        &attempt.attempted_at_micros as Parameter<'_>,
        &attempt.status_code,
        &attempt.error,
        &attempt.duration_ms,
    ]);
    let statement = match &outcome.record {
        Record::PushOff => {
            parameters.truncate(5);
            &statements.push_off
        }
        Record::Delivered => &statements.delivered,
        Record::Retry { delay_ms, error } => {
            parameters.extend([delay_ms as Parameter<'_>, error]);
            &statements.retry
        }
        Record::Failed { error } => {
            parameters.push(error);
            &statements.failed
        }
        Record::Gone => {
            parameters.push(&GONE_ERROR);
            &statements.gone
        }
    };
    let updated = client.execute(statement, &parameters).await?;
    // A 410 switches push off only if its attempt still held the lease, as in `record_batch`.
    if outcome.record == Record::Gone && updated == 1 {
        client.execute(&statements.switch_off, &[&outcome.org_id]).await?;
    }
    // The key is the primary key and the owner filter is in the WHERE: one row or none.
    debug_assert!(updated <= 1, "an outcome updated {updated} rows");
    Ok(updated == 1)
}

/// One attempt's outcome for `record_batch`.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub org_id: Uuid,
    pub id: Uuid,
    /// The expiry of the attempt's lease (`Claimed::lease_until_micros`): which lease of
    /// the event the outcome is for.
    pub lease_until_micros: i64,
    pub record: Record,
    pub log: AttemptLog,
}

impl Outcome {
    /// Which attempt this is, as `record_batch` lists those it recorded: (organisation,
    /// event, lease expiry). One batch may hold two outcomes of one event (an attempt
    /// from before a redelivery and the redelivery's).
    pub fn attempt(&self) -> (Uuid, Uuid, i64) {
        (self.org_id, self.id, self.lease_until_micros)
    }
}

/// Writes many outcomes in one statement (one commit), as `record` writes each, if
/// `owner` still holds their attempts' leases. Returns the attempts written
/// (`Outcome::attempt`); the others' leases were lost. The rows are given in (org, id)
/// order, so that concurrent statements locking events in key order wait for it instead
/// of deadlocking with it.
pub async fn record_batch(
    client: &Client,
    statements: &DeliveryStatements,
    owner: Uuid,
    now_micros: i64,
    outcomes: &[Outcome],
) -> Result<Vec<(Uuid, Uuid, i64)>, tokio_postgres::Error> {
    let mut order: Vec<&Outcome> = outcomes.iter().collect();
    order.sort_unstable_by_key(|o| (o.org_id, o.id));
    let org_ids: Vec<Uuid> = order.iter().map(|o| o.org_id).collect();
    let ids: Vec<Uuid> = order.iter().map(|o| o.id).collect();
    let kinds: Vec<i16> = order.iter().map(|o| kind(&o.record)).collect();
    let delays_ms: Vec<i64> = order
        .iter()
        .map(|o| if let Record::Retry { delay_ms, .. } = o.record { delay_ms } else { 0 })
        .collect();
    let last_errors: Vec<Option<&str>> = order
        .iter()
        .map(|o| match &o.record {
            Record::Retry { error, .. } | Record::Failed { error } => Some(error.as_str()),
            Record::Gone => Some(GONE_ERROR),
            Record::Delivered | Record::PushOff => None,
        })
        .collect();
    let attempted_at: Vec<i64> = order.iter().map(|o| o.log.attempted_at_micros).collect();
    let status_codes: Vec<Option<i16>> = order.iter().map(|o| o.log.status_code).collect();
    let errors: Vec<Option<&str>> = order.iter().map(|o| o.log.error.as_deref()).collect();
    let durations_ms: Vec<i32> = order.iter().map(|o| o.log.duration_ms).collect();
    let leases_until: Vec<i64> = order.iter().map(|o| o.lease_until_micros).collect();
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
        &owner,
        &now_micros,
        &org_ids,
        &ids,
        &kinds,
        &delays_ms,
        &last_errors,
        &attempted_at,
        &status_codes,
        &errors,
        &durations_ms,
        &leases_until,
    ];
    let rows = client.query(&statements.record_batch, &parameters).await?;
    let recorded = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect::<Result<Vec<(Uuid, Uuid, i64)>, tokio_postgres::Error>>()?;
    for outcome in order.iter().filter(|o| o.record == Record::Gone) {
        if recorded.contains(&outcome.attempt()) {
            client.execute(&statements.switch_off, &[&outcome.org_id]).await?;
        }
    }
    Ok(recorded)
}

/// The due attempts at `now`: how many, the oldest's age, and by organisation.
pub async fn due_stats(
    client: &Client,
    statements: &DeliveryStatements,
    now_micros: i64,
) -> Result<Backlog, tokio_postgres::Error> {
    let row = client.query_one(&statements.due_stats, &[&0i32, &now_micros]).await?;
    let count =
        |i: usize| -> Result<u64, tokio_postgres::Error> { Ok(row.try_get::<_, i64>(i)?.max(0) as u64) };
    let mut organizations = [0u64; 7];
    for (i, slot) in organizations.iter_mut().enumerate() {
        *slot = count(3 + i)?;
    }
    Ok(Backlog { due: count(0)?, oldest_due_micros: count(1)?, largest: count(2)?, organizations })
}
