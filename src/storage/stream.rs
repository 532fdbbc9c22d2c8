//! The ordered stream: an organisation's events in commit order, gap-free across
//! writers and instances (migration 0007, ARCHITECTURE.md "The ordered stream").
//!
//! Every event carries `xid`, the id of the transaction that inserted it. A page is
//! the events after a position in `(xid, id)` order, strictly below the horizon
//! `pg_snapshot_xmin(pg_current_snapshot())`: every transaction below it has ended, and
//! every transaction that has not yet begun will get a larger id, so no event can ever
//! appear behind a position taken below the horizon. The page is one range scan of
//! `events_stream (org_id, xid, id)`, cut by count and by bytes like the inbox's.

use tokio_postgres::{Client, Row, Statement};

use super::queries::{micros, INBOX_EVENT_OVERHEAD_BYTES};
use super::{Lane, Storage, StorageError};
use crate::handoff::commands::{InboxEvent, Position, StreamPage, StreamQuery};

/// Stream statements, prepared on the read lane's connection.
pub struct StreamStatements {
    page: Statement,
    held: Statement,
    horizon: Statement,
}

/// Parameters: $1 org, $2 position xid, $3 position id, $4 limit (one more than the
/// page, to know whether more follow), $5 bytes.
pub fn stream_page_sql() -> String {
    format!(
        "SELECT id, type, payload, dedup_id, status, attempts, created_us, delivered_us, last_error, leases,
                xid_n, running
         FROM (
             SELECT page.*, sum(page.bytes) OVER (ORDER BY page.xid_n, page.id ROWS UNBOUNDED PRECEDING) AS running
             FROM (
                 SELECT rows.*, octet_length(payload) + octet_length(type) + coalesce(octet_length(dedup_id), 0)
                            + coalesce(octet_length(last_error), 0) + {INBOX_EVENT_OVERHEAD_BYTES} AS bytes
                 FROM (
                     SELECT e.id, e.type, e.payload::text AS payload, e.dedup_id, e.status, e.attempts,
                            {} AS created_us, {} AS delivered_us, e.last_error, e.leases, e.xid::text::int8 AS xid_n
                     FROM events e
                     WHERE e.org_id = $1 AND (e.xid, e.id) > ($2::int8::text::xid8, $3::uuid)
                       AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
                     ORDER BY e.xid, e.id
                     LIMIT $4
                 ) rows
             ) page
         ) sized
         WHERE running - bytes < $5::int8
         ORDER BY xid_n, id",
        micros("e.created_at"),
        micros("e.delivered_at")
    )
}

pub async fn prepare(client: &Client) -> Result<StreamStatements, tokio_postgres::Error> {
    Ok(StreamStatements {
        page: client.prepare(&stream_page_sql()).await?,
        held: client
            .prepare(
                // Any event after the position: the page was empty, so it is held behind
                // the horizon, or it came below it since the page's statement (its own
                // snapshot) ran. Either way worth reading again soon.
                "SELECT EXISTS (SELECT 1 FROM events
                                WHERE org_id = $1 AND (xid, id) > ($2::int8::text::xid8, $3::uuid))",
            )
            .await?,
        horizon: client.prepare("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8").await?,
    })
}

fn event_of(row: &Row) -> Result<(Position, InboxEvent, i64), tokio_postgres::Error> {
    let event = super::queries::inbox_event(row)?;
    Ok((Position { xid: row.try_get("xid_n")?, id: event.id }, event, row.try_get("running")?))
}

impl Storage {
    pub(super) async fn stream(&self, query: StreamQuery) -> Result<StreamPage, StorageError> {
        // Pages share the inbox's bound on pages held at once.
        let _permit = self.inbox_reads.acquire().await.map_err(|_| StorageError::Corrupt("closed".into()))?;
        let connection = self.commands(Lane::Reads).await?;
        let statements = &connection.statements.stream;
        let (org, after) = (query.org_id, query.after);
        let rows = connection
            .client
            .query(&statements.page, &[&org, &after.xid, &after.id, &(query.limit + 1), &query.bytes_max])
            .await?;
        let mut page = StreamPage::default();
        for row in &rows {
            let (position, event, running) = event_of(row)?;
            let fits = page.events.is_empty() || running <= query.bytes_max;
            if page.events.len() as i64 >= query.limit || !fits {
                page.more = true;
                break;
            }
            page.events.push((position, event));
        }
        if page.events.is_empty() {
            let held = connection.client.query_one(&statements.held, &[&org, &after.xid, &after.id]).await?;
            page.held_by_horizon = held.try_get(0)?;
        }
        debug_assert!(page.events.windows(2).all(|pair| pair[0].0 < pair[1].0), "commit order");
        Ok(page)
    }

    pub(super) async fn horizon(&self) -> Result<i64, StorageError> {
        let connection = self.commands(Lane::Reads).await?;
        Ok(connection.client.query_one(&connection.statements.stream.horizon, &[]).await?.try_get(0)?)
    }
}
