//! Commands from the HTTP cores that need the database (`handoff::commands`), executed
//! as tasks on the storage core, pipelined on their lane's connection. Every statement is prepared once per connection;
//! every one has `org_id` in its key or its `WHERE`, and request data only ever
//! travels as parameters.

use std::sync::Arc;

use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::{Storage, StorageError};
use crate::handoff::commands::{
    Command, CommandError, InboxEvent, InboxQuery, InboxView, KeyCandidate, Lane, NewKeyForOrg, NewOrg,
    WebhookConfig,
};
use crate::handoff::{Barrier, Control};
use crate::model::{Org, OrgView, Tier};

/// Switches push off for an organisation: its URL goes, and its pending deliveries
/// that nobody holds are no longer due (claims only look at organisations with a URL).
/// Used by a config call with `null` and by the delivery engine on a receiver's 410.
pub const SWITCH_OFF_SQL: &str = "
WITH org AS (UPDATE organizations SET webhook_url = NULL, updated_at = now() WHERE org_id = $1 RETURNING org_id)
UPDATE events SET next_attempt_at = NULL
WHERE org_id = (SELECT org_id FROM org) AND next_attempt_at IS NOT NULL AND lease_owner IS NULL";

const MICROS: &str = "(extract(epoch FROM {}) * 1000000)::int8";

pub(super) fn micros(column: &str) -> String {
    MICROS.replace("{}", column)
}

/// Prepared statements of the command connection.
pub struct Statements {
    lookup_key: Statement,
    create_org: Statement,
    rotate_key: Statement,
    get_org: Statement,
    inbox_undelivered: Statement,
    inbox_delivered: Statement,
    inbox_all: Statement,
    ack_one: Statement,
    find_acked: Statement,
    ack_many: Statement,
    find_existing: Statement,
    set_webhook: Statement,
    get_webhook: Statement,
    stop_deliveries: Statement,
    pub(super) leases: super::leases::LeaseStatements,
    pub(super) stream: super::stream::StreamStatements,
    pub(super) control: super::control::ControlStatements,
}

/// The SQL of the inbox page query for a view (public so a test can EXPLAIN it).
/// Parameters: $1 org_id, $2 cursor id, $3 limit, $4 offset, $5 page bytes, and for
/// the undelivered views $6 the statuses. The literal `status <> 'delivered'` lets the
/// planner use the partial index.
pub fn inbox_view_sql(view: InboxView) -> String {
    match view {
        InboxView::Undelivered | InboxView::Pending | InboxView::Failed => {
            inbox_sql("AND status <> 'delivered' AND status = ANY($6::text[])")
        }
        InboxView::Delivered => inbox_sql("AND status = 'delivered'"),
        InboxView::All => inbox_sql(""),
    }
}

/// An inbox event object from a row with the columns of `EVENT_COLUMNS` (by name),
/// and the page's running size when the row has `running`.
pub(super) fn inbox_event(row: &tokio_postgres::Row) -> Result<InboxEvent, tokio_postgres::Error> {
    let sized = row.columns().iter().any(|column| column.name() == "running");
    Ok(InboxEvent {
        id: row.try_get("id")?,
        event_type: row.try_get("type")?,
        payload: row.try_get("payload")?,
        dedup_id: row.try_get("dedup_id")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        created_at_micros: row.try_get("created_us")?,
        delivered_at_micros: row.try_get("delivered_us")?,
        last_error: row.try_get("last_error")?,
        leases: row.try_get("leases")?,
        page_bytes: if sized { row.try_get("running")? } else { 0 },
    })
}

/// The columns of an inbox event object, as `inbox_event` reads them (of `events`
/// aliased `e`).
pub(super) fn event_columns() -> String {
    format!(
        "e.id, e.type, e.payload::text AS payload, e.dedup_id, e.status, e.attempts, {} AS created_us,
         {} AS delivered_us, e.last_error, e.leases",
        micros("e.created_at"),
        micros("e.delivered_at")
    )
}

/// Bytes an event's fields other than its texts take in a page, at most: id, status,
/// counts, timestamps, names and punctuation.
pub const INBOX_EVENT_OVERHEAD_BYTES: i64 = 256;

/// The columns an inbox page returns, and its order. `id < $2` is the cursor (the
/// largest UUID when there is none); id order is (created_at, id) order. The page is
/// cut where its running size passes $5 bytes: the innermost query reads at most
/// `limit` rows in index order (its payload text once), the window sums their sizes
/// as they stream, and the outer filter keeps every row that starts below the cap (the
/// first one beyond it tells the caller there is more), so the database never sends,
/// nor this process holds, much more than one page of bytes.
fn inbox_sql(filter: &str) -> String {
    format!(
        "SELECT id, type, payload, dedup_id, status, attempts, created_us, delivered_us, last_error, leases, running
         FROM (
             SELECT page.*, sum(page.bytes) OVER (ORDER BY page.id DESC ROWS UNBOUNDED PRECEDING) AS running
             FROM (
                 SELECT id, type, payload, dedup_id, status, attempts, created_us, delivered_us, last_error, leases,
                        octet_length(payload) + octet_length(type) + coalesce(octet_length(dedup_id), 0)
                            + coalesce(octet_length(last_error), 0) + {INBOX_EVENT_OVERHEAD_BYTES} AS bytes
                 FROM (
                     SELECT id, type, payload::text AS payload, dedup_id, status, attempts,
                            {} AS created_us, {} AS delivered_us, last_error, leases
                     FROM events
                     WHERE org_id = $1 AND id < $2 {filter}
                     ORDER BY id DESC
                     LIMIT $3 OFFSET $4
                 ) rows
             ) page
         ) sized
         WHERE running - bytes < $5::int8
         ORDER BY id DESC",
        micros("created_at"),
        micros("delivered_at")
    )
}

impl super::pg::PrepareStatements for Statements {
    // Longer than most functions here on purpose: it is a table, one prepared statement
    // per field of `Statements`, and splitting it would scatter the SQL.
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            lookup_key: client
                .prepare(&format!(
                    "SELECT k.org_id, k.key_hash, o.name, o.tier, o.rate_limit_per_minute, {}
                     FROM api_keys k JOIN organizations o ON o.org_id = k.org_id
                     WHERE k.lookup_id = $1",
                    micros("o.created_at")
                ))
                .await?,
            create_org: client
                .prepare(&format!(
                    "WITH org AS (
                        INSERT INTO organizations (org_id, name, tier, rate_limit_per_minute, signing_secret)
                        VALUES ($1, $2, $3, $4, $5)
                        RETURNING org_id, created_at)
                     INSERT INTO api_keys (org_id, lookup_id, key_hash, key_prefix, created_at)
                     SELECT org_id, $6, $7, $8, created_at FROM org
                     RETURNING {}",
                    micros("created_at")
                ))
                .await?,
            rotate_key: client
                .prepare(&format!(
                    "WITH old AS (
                        DELETE FROM api_keys WHERE org_id = $1 AND lookup_id = $2 RETURNING org_id),
                     new AS (
                        INSERT INTO api_keys (org_id, lookup_id, key_hash, key_prefix)
                        SELECT org_id, $3, $4, $5 FROM old
                        RETURNING org_id, created_at)
                     -- Other instances on this database drop the old key when this commits.
                     SELECT {}, pg_notify('{}', org_id::text) IS NULL FROM new",
                    micros("created_at"),
                    super::listener::REVOKE_CHANNEL
                ))
                .await?,
            get_org: client
                .prepare(&format!(
                    "SELECT o.name, o.tier, o.rate_limit_per_minute, o.webhook_url, {},
                            (SELECT k.key_prefix FROM api_keys k WHERE k.org_id = o.org_id
                             ORDER BY k.created_at DESC LIMIT 1), o.event_types
                     FROM organizations o WHERE o.org_id = $1",
                    micros("o.created_at")
                ))
                .await?,
            inbox_undelivered: client.prepare(&inbox_view_sql(InboxView::Undelivered)).await?,
            inbox_delivered: client.prepare(&inbox_view_sql(InboxView::Delivered)).await?,
            inbox_all: client.prepare(&inbox_view_sql(InboxView::All)).await?,
            ack_one: client
                .prepare(&format!(
                    "UPDATE events SET status = 'delivered', delivered_at = now(), next_attempt_at = NULL
                     WHERE org_id = $1 AND id = $2 AND status <> 'delivered'
                     RETURNING {}",
                    micros("delivered_at")
                ))
                .await?,
            // A fresh statement (and snapshot) sees an acknowledgement committed by a
            // concurrent request that the UPDATE waited for.
            find_acked: client
                .prepare(&format!(
                    "SELECT {} FROM events WHERE org_id = $1 AND id = $2 AND status = 'delivered'",
                    micros("delivered_at")
                ))
                .await?,
            ack_many: client
                .prepare(
                    "UPDATE events SET status = 'delivered', delivered_at = now(), next_attempt_at = NULL
                     WHERE org_id = $1 AND id = ANY($2::uuid[]) AND status <> 'delivered'
                     RETURNING id",
                )
                .await?,
            find_existing: client
                .prepare("SELECT id FROM events WHERE org_id = $1 AND id = ANY($2::uuid[]) AND status = 'delivered'")
                .await?,
            set_webhook: client
                .prepare(&format!(
                    "UPDATE organizations SET webhook_url = $2, event_types = $3, updated_at = now()
                     WHERE org_id = $1
                     RETURNING webhook_url, signing_secret, {}, event_types",
                    micros("updated_at")
                ))
                .await?,
            get_webhook: client
                .prepare(&format!(
                    "SELECT webhook_url, signing_secret, {}, event_types FROM organizations WHERE org_id = $1",
                    micros("updated_at")
                ))
                .await?,
            stop_deliveries: client.prepare(SWITCH_OFF_SQL).await?,
            leases: super::leases::prepare(client).await?,
            stream: super::stream::prepare(client).await?,
            control: super::control::prepare(client).await?,
        })
    }
}

fn webhook_config(row: &tokio_postgres::Row) -> Result<WebhookConfig, StorageError> {
    Ok(WebhookConfig {
        url: row.try_get(0)?,
        signing_secret: row.try_get(1)?,
        updated_at_micros: row.try_get(2)?,
        event_types: row.try_get(3)?,
    })
}

fn tier_of(name: &str) -> Result<Tier, StorageError> {
    Tier::parse(name).ok_or_else(|| StorageError::Corrupt(format!("unknown tier {name:?} in organizations")))
}

impl Storage {
    /// Runs one command to completion and answers it.
    pub(super) async fn execute(&self, command: Command) {
        match command {
            Command::LookupKey { lookup_id, reply } => {
                let _ = reply.send(self.lookup_key(lookup_id).await.map_err(CommandError::from));
            }
            Command::CreateOrg { new, reply } => {
                let _ = reply.send(self.create_org(new).await.map_err(CommandError::from));
            }
            Command::RotateKey { new, reply } => {
                let _ = reply.send(self.rotate_key(new).await.map_err(CommandError::from));
            }
            Command::RateLease { org_id, limit, want, need, now_ms, window } => {
                let request = super::ratelimit::LeaseRequest { org_id, now_ms, want, need, limit };
                self.rate_leases.push(request, window);
            }
            Command::ReturnRateTokens { now_ms, reply } => {
                let _ = reply.send(self.return_rate_tokens(now_ms).await.map_err(CommandError::from));
            }
            Command::GetOrg { org_id, reply } => {
                let _ = reply.send(self.get_org(org_id).await.map_err(CommandError::from));
            }
            Command::Inbox { query, reply } => {
                let _ = reply.send(self.inbox(query).await.map_err(CommandError::from));
            }
            Command::AckOne { org_id, id, reply } => {
                let _ = reply.send(self.ack_one(org_id, id).await.map_err(CommandError::from));
            }
            Command::AckMany { org_id, ids, reply } => {
                let _ = reply.send(self.ack_many(org_id, ids).await.map_err(CommandError::from));
            }
            Command::Lease { org_id, limit, lease_seconds, reply } => {
                let _ =
                    reply.send(self.lease(org_id, limit, lease_seconds).await.map_err(CommandError::from));
            }
            Command::LeaseAck { org_id, lease_id, ids, reply } => {
                let _ = reply.send(self.lease_ack(org_id, lease_id, ids).await.map_err(CommandError::from));
            }
            Command::LeaseRelease { org_id, lease_id, ids, reply } => {
                let _ =
                    reply.send(self.lease_release(org_id, lease_id, ids).await.map_err(CommandError::from));
            }
            Command::SetWebhook { org_id, url, event_types, reply } => {
                let _ =
                    reply.send(self.set_webhook(org_id, url, event_types).await.map_err(CommandError::from));
            }
            Command::GetWebhook { org_id, reply } => {
                let _ = reply.send(self.get_webhook(org_id).await.map_err(CommandError::from));
            }
            Command::Stream { query, reply } => {
                let _ = reply.send(self.stream(query).await.map_err(CommandError::from));
            }
            Command::Horizon { reply } => {
                let _ = reply.send(self.horizon().await.map_err(CommandError::from));
            }
            Command::RotateSecret { org_id, secret, reply } => {
                let _ = reply.send(self.rotate_secret(org_id, secret).await.map_err(CommandError::from));
            }
            Command::GetEvent { org_id, id, reply } => {
                let _ = reply.send(self.get_event(org_id, id).await.map_err(CommandError::from));
            }
            Command::Attempts { org_id, id, reply } => {
                let _ = reply.send(self.attempts(org_id, id).await.map_err(CommandError::from));
            }
            Command::Redeliver { org_id, id, reply } => {
                let _ = reply.send(self.redeliver(org_id, id).await.map_err(CommandError::from));
            }
            Command::Replay { org_id, since_micros, all, reply } => {
                let _ = reply.send(self.replay(org_id, since_micros, all).await.map_err(CommandError::from));
            }
        }
    }

    async fn inbox(&self, query: InboxQuery) -> Result<Vec<InboxEvent>, StorageError> {
        // Bounds the pages this core holds at once (each up to ~4.3 MiB of rows).
        let _permit = self.inbox_reads.acquire().await.map_err(|_| StorageError::Corrupt("closed".into()))?;
        let connection = self.commands(Lane::Reads).await?;
        let before = query.before.unwrap_or(Uuid::max());
        let statements = &connection.statements;
        let statuses: &[&str] = match query.view {
            InboxView::Undelivered => &["pending", "failed"],
            InboxView::Pending => &["pending"],
            InboxView::Failed => &["failed"],
            InboxView::Delivered | InboxView::All => &[],
        };
        let page: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&query.org_id, &before, &query.limit, &query.offset, &query.bytes_max];
        let rows = match query.view {
            InboxView::Delivered => connection.client.query(&statements.inbox_delivered, &page).await?,
            InboxView::All => connection.client.query(&statements.inbox_all, &page).await?,
            _ => {
                let parameters = [page[0], page[1], page[2], page[3], page[4], &statuses];
                connection.client.query(&statements.inbox_undelivered, &parameters).await?
            }
        };
        rows.iter().map(|row| Ok(inbox_event(row)?)).collect()
    }

    async fn ack_one(&self, org_id: Uuid, id: Uuid) -> Result<Option<i64>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let statements = &connection.statements;
        if let Some(row) = connection.client.query_opt(&statements.ack_one, &[&org_id, &id]).await? {
            return Ok(Some(row.try_get(0)?));
        }
        match connection.client.query_opt(&statements.find_acked, &[&org_id, &id]).await? {
            Some(row) => Ok(Some(row.try_get(0)?)),
            None => Ok(None),
        }
    }

    async fn ack_many(&self, org_id: Uuid, ids: Vec<Uuid>) -> Result<Vec<Uuid>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let statements = &connection.statements;
        let mut acknowledged: Vec<Uuid> = Vec::with_capacity(ids.len());
        for row in connection.client.query(&statements.ack_many, &[&org_id, &ids]).await? {
            acknowledged.push(row.try_get(0)?);
        }
        let rest: Vec<Uuid> = ids.iter().filter(|id| !acknowledged.contains(id)).copied().collect();
        if !rest.is_empty() {
            for row in connection.client.query(&statements.find_existing, &[&org_id, &rest]).await? {
                acknowledged.push(row.try_get(0)?);
            }
        }
        Ok(acknowledged)
    }

    async fn set_webhook(
        &self,
        org_id: Uuid,
        url: Option<String>,
        event_types: Option<Vec<String>>,
    ) -> Result<Option<WebhookConfig>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        if url.is_none() {
            // Pending deliveries stop being due: push is off, the events wait for pull.
            connection.client.execute(&connection.statements.stop_deliveries, &[&org_id]).await?;
        }
        let row = connection
            .client
            .query_opt(&connection.statements.set_webhook, &[&org_id, &url, &event_types])
            .await?;
        row.as_ref().map(webhook_config).transpose()
    }

    async fn get_webhook(&self, org_id: Uuid) -> Result<Option<WebhookConfig>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let row = connection.client.query_opt(&connection.statements.get_webhook, &[&org_id]).await?;
        row.as_ref().map(webhook_config).transpose()
    }

    async fn lookup_key(&self, lookup_id: i64) -> Result<Vec<KeyCandidate>, StorageError> {
        let connection = self.commands(Lane::Keys).await?;
        let rows = connection.client.query(&connection.statements.lookup_key, &[&lookup_id]).await?;
        rows.iter()
            .map(|row| {
                let org_id: Uuid = row.try_get(0)?;
                let tier = tier_of(row.try_get(3)?)?;
                let limit: i32 = row.try_get(4)?;
                Ok(KeyCandidate {
                    key_hash: row.try_get(1)?,
                    org: Arc::new(Org {
                        id: org_id,
                        name: row.try_get(2)?,
                        tier,
                        rate_limit_per_minute: u32::try_from(limit).unwrap_or(0),
                        created_at_micros: row.try_get(5)?,
                        rate: self.rate_window(org_id),
                    }),
                })
            })
            .collect()
    }

    async fn create_org(&self, new: NewOrg) -> Result<Arc<Org>, StorageError> {
        let connection = self.commands(Lane::Keys).await?;
        let org_id = Uuid::now_v7();
        let limit = new.tier.rate_limit_per_minute() as i32;
        let row = connection
            .client
            .query_one(
                &connection.statements.create_org,
                &[
                    &org_id,
                    &new.name,
                    &new.tier.name(),
                    &limit,
                    &new.signing_secret,
                    &new.lookup_id,
                    &new.key_hash,
                    &new.key_prefix,
                ],
            )
            .await?;
        Ok(Arc::new(Org {
            id: org_id,
            name: new.name,
            tier: new.tier,
            rate_limit_per_minute: new.tier.rate_limit_per_minute(),
            created_at_micros: row.try_get(0)?,
            rate: self.rate_window(org_id),
        }))
    }

    async fn rotate_key(&self, new: NewKeyForOrg) -> Result<Option<i64>, StorageError> {
        let connection = self.commands(Lane::Keys).await?;
        let row = connection
            .client
            .query_opt(
                &connection.statements.rotate_key,
                &[&new.org_id, &new.old_lookup_id, &new.lookup_id, &new.key_hash, &new.key_prefix],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let rotated_at: i64 = row.try_get(0)?;
        self.revoke_everywhere(new.org_id).await;
        Ok(Some(rotated_at))
    }

    /// Tells every HTTP core to drop the organisation's cached keys and waits until
    /// each has done so.
    pub(super) async fn revoke_everywhere(&self, org_id: Uuid) {
        self.broadcast(|barrier| Control::RevokeOrg { org_id, barrier }).await;
    }

    /// Tells every HTTP core to drop its whole key table (revocations may have been
    /// missed) and waits until each has done so.
    pub(super) async fn revoke_all_everywhere(&self) {
        self.broadcast(|barrier| Control::RevokeAll { barrier }).await;
    }

    async fn broadcast(&self, make: impl Fn(Arc<Barrier>) -> Control) {
        let barrier = Barrier::new(self.handoff.links.len());
        for link in &self.handoff.links {
            let mut control = make(Arc::clone(&barrier));
            // The control queue is short and drained on every dispatcher wake-up;
            // when full, wait a moment rather than drop a revocation.
            while let Err(returned) = link.send_control(control) {
                control = returned;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        barrier.wait().await;
    }

    async fn get_org(&self, org_id: Uuid) -> Result<Option<OrgView>, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        let Some(row) = connection.client.query_opt(&connection.statements.get_org, &[&org_id]).await? else {
            return Ok(None);
        };
        let limit: i32 = row.try_get(2)?;
        Ok(Some(OrgView {
            id: org_id,
            name: row.try_get(0)?,
            tier: tier_of(row.try_get(1)?)?,
            rate_limit_per_minute: u32::try_from(limit).unwrap_or(0),
            webhook_url: row.try_get(3)?,
            created_at_micros: row.try_get(4)?,
            key_prefix: row.try_get::<_, Option<String>>(5)?.unwrap_or_default(),
            event_types: row.try_get(6)?,
        }))
    }
}
