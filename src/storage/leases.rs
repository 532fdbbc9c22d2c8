//! Leased consumption: competing consumers of one organisation's inbox, each event held
//! by at most one live lease, expiry decided by the database clock (`now()`), and an
//! event leased `LEASES_MAX` times without an acknowledgement set aside as `failed`.
//!
//! A claim is one statement and costs O(page) at any backlog: free events come from the
//! head of `events_leaseable` (pending, no lease; oldest first by `created_at, id`, the
//! order of ids too, since an event's id carries its `created_at` to the microsecond,
//! `util::ids`; no other index gives that order, so the planner does not take the
//! primary key and walk past the acknowledged events: migration 0010) and expired ones from
//! the head of `events_leased` (pending, leased; earliest expiry first), both locked
//! with `FOR UPDATE SKIP LOCKED` so concurrent claims, here or on another instance,
//! never take the same event; the oldest `limit` of those candidates are leased. Live
//! leases are never scanned: the expired ones are taken back only when claimed.

use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::queries::micros;
use super::{Lane, Storage, StorageError};
use crate::handoff::commands::{Lease, LEASES_MAX};

/// What a poisoned event's `last_error` says.
const POISON_ERROR: &str = "leased 5 times without an acknowledgement: set aside as poison";

/// Lease statements, prepared on the read lane's connection.
pub struct LeaseStatements {
    claim: Statement,
    live: Statement,
    ack: Statement,
    release: Statement,
}

/// Parameters: $1 org, $2 limit, $3 lease id, $4 lease seconds, $5 leases max, $6 the
/// poison error.
fn claim_sql() -> String {
    format!(
        "WITH free AS (
             SELECT id FROM events
             WHERE org_id = $1 AND status = 'pending' AND consumer_lease IS NULL
             ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED),
         expired AS (
             SELECT id, leases FROM events
             WHERE org_id = $1 AND status = 'pending' AND consumer_lease IS NOT NULL
               AND consumer_lease_until < now()
             ORDER BY consumer_lease_until LIMIT $2 FOR UPDATE SKIP LOCKED),
         poisoned AS (
             UPDATE events e SET status = 'failed', last_error = $6, next_attempt_at = NULL,
                                 consumer_lease = NULL, consumer_lease_until = NULL
             FROM expired x WHERE e.org_id = $1 AND e.id = x.id AND x.leases >= $5
             RETURNING e.id),
         chosen AS (
             SELECT id FROM (SELECT id FROM free UNION ALL SELECT id FROM expired WHERE leases < $5) c
             ORDER BY id LIMIT $2),
         leased AS (
             UPDATE events e SET consumer_lease = $3, leases = e.leases + 1,
                                 consumer_lease_until = now() + $4::int8 * interval '1 second'
             FROM chosen c WHERE e.org_id = $1 AND e.id = c.id
             RETURNING e.id, e.type, e.payload::text AS payload, e.dedup_id, e.status, e.attempts,
                       {} AS created_us, {} AS delivered_us, e.last_error, e.leases),
         recorded AS (
             INSERT INTO consumer_leases (org_id, lease_id, expires_at)
             SELECT $1, $3, now() + $4::int8 * interval '1 second' WHERE EXISTS (SELECT 1 FROM leased))
         SELECT *, {} AS expires_us FROM leased ORDER BY id",
        micros("e.created_at"),
        micros("e.delivered_at"),
        micros("now() + $4::int8 * interval '1 second'")
    )
}

/// The statement of a lease claim (public so a test can EXPLAIN it).
pub fn lease_claim_sql() -> String {
    claim_sql()
}

pub async fn prepare(client: &Client) -> Result<LeaseStatements, tokio_postgres::Error> {
    Ok(LeaseStatements {
        claim: client.prepare(&claim_sql()).await?,
        live: client
            .prepare(
                "SELECT 1 FROM consumer_leases WHERE org_id = $1 AND lease_id = $2 AND expires_at > now()",
            )
            .await?,
        // Idempotent: events this lease already acknowledged are listed again. Ids come
        // back in id order (UPDATE … RETURNING has none), so answers are repeatable.
        ack: client
            .prepare(
                "WITH done AS (
                     UPDATE events SET status = 'delivered', delivered_at = coalesce(delivered_at, now()),
                                       next_attempt_at = NULL
                     WHERE org_id = $1 AND consumer_lease = $2 AND consumer_lease_until > now()
                       AND status <> 'failed' AND ($3::uuid[] IS NULL OR id = ANY($3))
                     RETURNING id)
                 SELECT id FROM done ORDER BY id",
            )
            .await?,
        // A released event that has used up its leases is set aside like an expired one.
        release: client
            .prepare(
                "WITH done AS (
                     UPDATE events SET consumer_lease = NULL, consumer_lease_until = NULL,
                         status = CASE WHEN leases >= $4 THEN 'failed' ELSE status END,
                         last_error = CASE WHEN leases >= $4 THEN $5 ELSE last_error END
                     WHERE org_id = $1 AND consumer_lease = $2 AND consumer_lease_until > now()
                       AND status = 'pending' AND ($3::uuid[] IS NULL OR id = ANY($3))
                     RETURNING id)
                 SELECT id FROM done ORDER BY id",
            )
            .await?,
    })
}

impl Storage {
    pub(super) async fn lease(
        &self,
        org_id: Uuid,
        limit: i64,
        lease_seconds: i64,
    ) -> Result<Lease, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let lease_id = Uuid::now_v7();
        let statements = &connection.statements.leases;
        let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&org_id, &limit, &lease_id, &lease_seconds, &LEASES_MAX, &POISON_ERROR];
        let rows = connection.client.query(&statements.claim, &parameters).await?;
        let mut expires_at_micros = crate::util::time::now_micros() + lease_seconds * 1_000_000;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.push(super::queries::inbox_event(row)?);
            expires_at_micros = row.try_get("expires_us")?;
        }
        debug_assert!(events.len() as i64 <= limit);
        Ok(Lease { lease_id, expires_at_micros, events })
    }

    /// `None` when the lease is unknown, expired or another organisation's.
    pub(super) async fn lease_ack(
        &self,
        org_id: Uuid,
        lease_id: Uuid,
        ids: Option<Vec<Uuid>>,
    ) -> Result<Option<Vec<Uuid>>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let statements = &connection.statements.leases;
        if connection.client.query_opt(&statements.live, &[&org_id, &lease_id]).await?.is_none() {
            return Ok(None);
        }
        let rows = connection.client.query(&statements.ack, &[&org_id, &lease_id, &ids]).await?;
        Ok(Some(rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?))
    }

    /// `None` when the lease is unknown, expired or another organisation's.
    pub(super) async fn lease_release(
        &self,
        org_id: Uuid,
        lease_id: Uuid,
        ids: Option<Vec<Uuid>>,
    ) -> Result<Option<Vec<Uuid>>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let statements = &connection.statements.leases;
        if connection.client.query_opt(&statements.live, &[&org_id, &lease_id]).await?.is_none() {
            return Ok(None);
        }
        let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&org_id, &lease_id, &ids, &LEASES_MAX, &POISON_ERROR];
        let rows = connection.client.query(&statements.release, &parameters).await?;
        Ok(Some(rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?))
    }
}
