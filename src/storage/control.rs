//! Delivery control for operators of a receiver (contract v2, "Delivery control"): one
//! event and its attempt log, redelivery, replay, and signing-secret rotation. These
//! only change what the delivery engine finds in the database (`next_attempt_at`,
//! secrets); the engine claims and leases the attempts as every other, so two instances
//! never push one scheduled attempt twice.

use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::queries::{event_columns, inbox_event, micros};
use super::{Lane, Storage, StorageError};
use crate::handoff::commands::{Attempt, InboxEvent, Redelivery, Replay, REPLAY_MAX};

/// How long a replaced signing secret keeps signing deliveries.
pub const PREVIOUS_SECRET_HOURS: i32 = 24;

pub struct ControlStatements {
    rotate_secret: Statement,
    get_event: Statement,
    attempts: Statement,
    redeliver: Statement,
    replay_failed: Statement,
    replay_all: Statement,
}

/// Makes an event due now with a fresh retry schedule; it is `pending` until that
/// attempt ends. An attempt in flight loses its lease: its outcome would otherwise take
/// the event off the schedule again (the request asked for a push after it), so it is
/// not recorded and the new attempt follows.
pub const RESCHEDULE: &str =
    "status = 'pending', delivered_at = NULL, next_attempt_at = now(), retry_from = e.attempts,
     lease_owner = NULL, lease_until = NULL";

/// Parameters: $1 org, $2 since (µs), $3 how many at most. Candidates are read in id
/// order (which is creation order) from `since` on, one more than the page to know
/// whether more remain; the organisation's type filter applies.
fn replay_sql(status_filter: &str) -> String {
    format!(
        "WITH o AS (SELECT webhook_url IS NOT NULL AS pushing, event_types FROM organizations WHERE org_id = $1),
         since AS (SELECT timestamptz 'epoch' + $2::int8 * interval '1 microsecond' AS at),
         candidates AS (
             SELECT e.org_id, e.id, e.created_at FROM events e, o, since
             WHERE o.pushing AND e.org_id = $1 AND e.id >= triggerd_uuid_at(since.at)
               AND e.created_at >= since.at {status_filter}
               AND triggerd_type_matches(o.event_types, e.type)
             ORDER BY e.id LIMIT $3::int8 + 1),
         picked AS (SELECT org_id, id FROM candidates ORDER BY id LIMIT $3::int8),
         scheduled AS (
             UPDATE events e SET {RESCHEDULE}
             FROM picked p WHERE e.org_id = p.org_id AND e.id = p.id
             RETURNING 1)
         SELECT coalesce((SELECT pushing FROM o), false), (SELECT count(*) FROM scheduled),
                (SELECT {} FROM candidates ORDER BY id OFFSET $3::int8 LIMIT 1)",
        micros("created_at")
    )
}

pub async fn prepare(client: &Client) -> Result<ControlStatements, tokio_postgres::Error> {
    Ok(ControlStatements {
        rotate_secret: client
            .prepare(&format!(
                "UPDATE organizations
                 SET previous_signing_secret = signing_secret,
                     previous_secret_expires_at = now() + {PREVIOUS_SECRET_HOURS} * interval '1 hour',
                     signing_secret = $2, updated_at = now()
                 WHERE org_id = $1
                 RETURNING {}",
                micros("previous_secret_expires_at")
            ))
            .await?,
        get_event: client
            .prepare(&format!("SELECT {} FROM events e WHERE e.org_id = $1 AND e.id = $2", event_columns()))
            .await?,
        attempts: client
            .prepare(&format!(
                "SELECT a.attempt, {}, a.status_code, a.error, a.duration_ms
                 FROM events e
                 LEFT JOIN delivery_attempts a ON a.org_id = e.org_id AND a.event_id = e.id
                 WHERE e.org_id = $1 AND e.id = $2
                 ORDER BY a.attempt",
                micros("a.attempted_at")
            ))
            .await?,
        redeliver: client
            .prepare(&format!(
                "WITH o AS (SELECT webhook_url IS NOT NULL AS pushing FROM organizations WHERE org_id = $1),
                 scheduled AS (
                     UPDATE events e SET {RESCHEDULE}
                     WHERE e.org_id = $1 AND e.id = $2 AND (SELECT pushing FROM o)
                     RETURNING 1)
                 SELECT EXISTS (SELECT 1 FROM events WHERE org_id = $1 AND id = $2),
                        coalesce((SELECT pushing FROM o), false)"
            ))
            .await?,
        // The literal `status <> 'delivered'` lets the planner use the partial index of
        // undelivered events.
        replay_failed: client
            .prepare(&replay_sql("AND e.status <> 'delivered' AND e.status = 'failed'"))
            .await?,
        replay_all: client.prepare(&replay_sql("")).await?,
    })
}

impl Storage {
    pub(super) async fn rotate_secret(
        &self,
        org_id: Uuid,
        secret: String,
    ) -> Result<Option<i64>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let statement = &connection.statements.control.rotate_secret;
        let row = connection.client.query_opt(statement, &[&org_id, &secret]).await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    pub(super) async fn get_event(&self, org_id: Uuid, id: Uuid) -> Result<Option<InboxEvent>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let row =
            connection.client.query_opt(&connection.statements.control.get_event, &[&org_id, &id]).await?;
        Ok(row.as_ref().map(inbox_event).transpose()?)
    }

    pub(super) async fn attempts(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Vec<Attempt>>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let rows = connection.client.query(&connection.statements.control.attempts, &[&org_id, &id]).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut attempts = Vec::with_capacity(rows.len());
        for row in &rows {
            // The event without attempts: one row of nulls.
            let Some(attempt) = row.try_get::<_, Option<i32>>(0)? else { continue };
            attempts.push(Attempt {
                attempt,
                attempted_at_micros: row.try_get(1)?,
                status_code: row.try_get(2)?,
                error: row.try_get(3)?,
                duration_ms: row.try_get(4)?,
            });
        }
        Ok(Some(attempts))
    }

    pub(super) async fn redeliver(&self, org_id: Uuid, id: Uuid) -> Result<Redelivery, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let row =
            connection.client.query_one(&connection.statements.control.redeliver, &[&org_id, &id]).await?;
        let (exists, pushing): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
        Ok(match (exists, pushing) {
            (false, _) => Redelivery::NotFound,
            (true, false) => Redelivery::NoWebhook,
            (true, true) => Redelivery::Scheduled,
        })
    }

    pub(super) async fn replay(
        &self,
        org_id: Uuid,
        since_micros: i64,
        all: bool,
    ) -> Result<Replay, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let statements = &connection.statements.control;
        let statement = if all { &statements.replay_all } else { &statements.replay_failed };
        let row = connection.client.query_one(statement, &[&org_id, &since_micros, &REPLAY_MAX]).await?;
        if !row.try_get::<_, bool>(0)? {
            return Ok(Replay::NoWebhook);
        }
        Ok(Replay::Scheduled { count: row.try_get(1)?, next_since_micros: row.try_get(2)? })
    }
}
