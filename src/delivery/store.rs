//! The delivery engine's SQL. Every statement takes `now` (µs since the epoch) as a
//! parameter instead of calling `now()`, so leases and schedules are tested with an
//! injected clock against a real PostgreSQL.
//!
//! An attempt is claimed by setting a lease (`lease_owner`, `lease_until`) in the same
//! statement that selects it `FOR UPDATE SKIP LOCKED`: two processes never claim the
//! same attempt, and a process that dies mid-delivery loses its leases when they expire.
//! Outcomes are recorded only by the lease's owner.

use tokio_postgres::{Client, Statement};
use uuid::Uuid;

const NOW: &str = "(timestamptz 'epoch' + $2::int8 * interval '1 microsecond')";

/// An attempt this process holds the lease for.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub org_id: Uuid,
    pub id: Uuid,
    pub event_type: String,
    /// The payload as JSON text.
    pub payload: String,
    pub created_at_micros: i64,
    /// Attempts made before this one.
    pub attempts: i32,
    /// `None` when push was switched off since the event was stored.
    pub webhook_url: Option<String>,
    pub signing_secret: String,
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
    claim_ids: Statement,
    release: Statement,
    delivered: Statement,
    retry: Statement,
    failed: Statement,
    stop_push: Statement,
    switch_off: Statement,
    due_stats: Statement,
}

fn claim_sql(due: &str) -> String {
    format!(
        "WITH due AS ({due})
         UPDATE events e SET lease_owner = $1, lease_until = {NOW} + $3::int8 * interval '1 millisecond'
         FROM due, organizations o
         WHERE e.org_id = due.org_id AND e.id = due.id AND o.org_id = e.org_id
         RETURNING e.org_id, e.id, e.type, e.payload::text,
                   (extract(epoch FROM e.created_at) * 1000000)::int8, e.attempts,
                   o.webhook_url, o.signing_secret"
    )
}

/// Shared condition: a pending delivery whose attempt nobody holds.
const CLAIMABLE: &str = "e.status = 'pending' AND (e.lease_until IS NULL OR e.lease_until < {NOW})";

fn only_owner(set: &str) -> String {
    format!(
        "UPDATE events SET {set}, lease_owner = NULL, lease_until = NULL
         WHERE org_id = $3 AND id = $4 AND lease_owner = $1 AND $2::int8 IS NOT NULL"
    )
}

impl crate::storage::pg::PrepareStatements for DeliveryStatements {
    async fn prepare(client: &Client) -> Result<DeliveryStatements, tokio_postgres::Error> {
        let claimable = CLAIMABLE.replace("{NOW}", NOW);
        Ok(DeliveryStatements {
            // Per organisation with a webhook, its oldest due attempts (at most $6);
            // then the oldest of those overall (at most $4).
            claim_due: client
                .prepare(&claim_sql(&format!(
                    "SELECT d.org_id, d.id FROM organizations o
                     CROSS JOIN LATERAL (
                         SELECT e.org_id, e.id, e.next_attempt_at FROM events e
                         WHERE e.org_id = o.org_id AND e.next_attempt_at <= {NOW} AND {claimable}
                         ORDER BY e.next_attempt_at LIMIT $6 FOR UPDATE SKIP LOCKED) d
                     WHERE o.webhook_url IS NOT NULL AND o.org_id <> ALL($5::uuid[])
                     ORDER BY d.next_attempt_at LIMIT $4"
                )))
                .await?,
            claim_ids: client
                .prepare(&claim_sql(&format!(
                    "SELECT e.org_id, e.id FROM events e
                     JOIN unnest($4::uuid[], $5::uuid[]) AS w(org_id, id) ON e.org_id = w.org_id AND e.id = w.id
                     WHERE e.next_attempt_at IS NOT NULL AND {claimable}
                     FOR UPDATE OF e SKIP LOCKED"
                )))
                .await?,
            release: client
                .prepare(
                    "UPDATE events SET lease_owner = NULL, lease_until = NULL
                     WHERE org_id = $2 AND id = $3 AND lease_owner = $1",
                )
                .await?,
            delivered: client
                .prepare(&only_owner(&format!(
                    "status = 'delivered', delivered_at = coalesce(delivered_at, {NOW}), attempts = attempts + 1,
                     next_attempt_at = NULL, last_error = NULL"
                )))
                .await?,
            retry: client
                .prepare(&only_owner(&format!(
                    "attempts = attempts + 1, last_error = $6,
                     next_attempt_at = CASE WHEN status = 'delivered' THEN NULL
                                            ELSE {NOW} + $5::int8 * interval '1 millisecond' END"
                )))
                .await?,
            failed: client
                .prepare(&only_owner(
                    "status = CASE WHEN status = 'delivered' THEN status ELSE 'failed' END,
                     attempts = attempts + 1, last_error = $5, next_attempt_at = NULL",
                ))
                .await?,
            stop_push: client
                .prepare(&only_owner(
                    "attempts = attempts + $5::int4, last_error = coalesce($6, last_error), next_attempt_at = NULL",
                ))
                .await?,
            switch_off: client.prepare(crate::storage::queries::SWITCH_OFF_SQL).await?,
            due_stats: client
                .prepare(&format!(
                    "SELECT count(*), (min(next_attempt_at) IS NOT NULL),
                            coalesce((extract(epoch FROM {NOW} - min(next_attempt_at)) * 1000000)::int8, 0)
                     FROM events WHERE next_attempt_at <= {NOW} AND $1::int4 IS NOT NULL"
                ))
                .await?,
        })
    }
}

fn rows_to_claimed(rows: Vec<tokio_postgres::Row>) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    rows.iter()
        .map(|row| {
            Ok(Claimed {
                org_id: row.try_get(0)?,
                id: row.try_get(1)?,
                event_type: row.try_get(2)?,
                payload: row.try_get(3)?,
                created_at_micros: row.try_get(4)?,
                attempts: row.try_get(5)?,
                webhook_url: row.try_get(6)?,
                signing_secret: row.try_get(7)?,
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
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&owner, &now_micros, &lease_ms, &limit, &excluded, &per_org];
    let rows = client.query(&statements.claim_due, &parameters).await?;
    rows_to_claimed(rows)
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
    let rows = client.query(&statements.claim_ids, &[&owner, &now_micros, &lease_ms, &orgs, &ids]).await?;
    rows_to_claimed(rows)
}

/// Gives a claimed attempt back unattempted.
pub async fn release(
    client: &Client,
    statements: &DeliveryStatements,
    owner: Uuid,
    org_id: Uuid,
    id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client.execute(&statements.release, &[&owner, &org_id, &id]).await.map(drop)
}

/// Writes an attempt's outcome if `owner` still holds the lease; `false` if not.
pub async fn record(
    client: &Client,
    statements: &DeliveryStatements,
    owner: Uuid,
    now_micros: i64,
    org_id: Uuid,
    id: Uuid,
    outcome: &Record,
) -> Result<bool, tokio_postgres::Error> {
    let key: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&owner, &now_micros, &org_id, &id];
    let updated = match outcome {
        Record::Delivered => client.execute(&statements.delivered, &key).await?,
        Record::Retry { delay_ms, error } => {
            client.execute(&statements.retry, &[key[0], key[1], key[2], key[3], delay_ms, error]).await?
        }
        Record::Failed { error } => {
            client.execute(&statements.failed, &[key[0], key[1], key[2], key[3], error]).await?
        }
        Record::Gone => {
            let error = Some("HTTP 410 Gone: push switched off for the organisation");
            let updated = client
                .execute(&statements.stop_push, &[key[0], key[1], key[2], key[3], &1i32, &error])
                .await?;
            client.execute(&statements.switch_off, &[&org_id]).await?;
            updated
        }
        Record::PushOff => {
            let error: Option<&str> = None;
            client.execute(&statements.stop_push, &[key[0], key[1], key[2], key[3], &0i32, &error]).await?
        }
    };
    // The key is the primary key and the owner filter is in the WHERE: one row or none.
    debug_assert!(updated <= 1, "an outcome updated {updated} rows");
    Ok(updated == 1)
}

/// (due attempts, age of the oldest in µs) at `now`.
pub async fn due_stats(
    client: &Client,
    statements: &DeliveryStatements,
    now_micros: i64,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client.query_one(&statements.due_stats, &[&0i32, &now_micros]).await?;
    Ok((row.try_get(0)?, row.try_get(2)?))
}
