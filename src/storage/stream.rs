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

/// Settings of the stream lane's connection. A page is `ORDER BY xid, id LIMIT n`
/// over every daily partition; the only plan that reads O(page) rows is a Merge Append
/// of the partitions' `events_stream` range scans. With statistics that make the
/// rows after a position look few (a history inserted by one transaction has one
/// `xid`, and a row comparison is estimated by its first column), the planner prefers
/// to read them all and sort: a page 500 000 events into such a history read them
/// all (2 s) instead of 1 001 (4 ms). So this connection never sorts where an
/// ordered scan exists, and keeps one generic plan per statement (no planning per
/// read, and no plan that depends on one position's estimate).
pub const SESSION: &str = "SET enable_sort = off; SET plan_cache_mode = force_generic_plan";

/// Stream statements, prepared on the stream lane's connection.
pub struct StreamStatements {
    page: Statement,
    horizon: Statement,
}

/// Parameters: $1 org, $2 position xid, $3 position id, $4 limit (one more than the
/// page, to know whether more follow), $5 bytes. `below`: the row's transaction is
/// below the horizon; the page is the rows before the first that is not (in `(xid,
/// id)` order every row below the horizon comes first), so one statement also says
/// whether committed events wait behind it.
pub fn stream_page_sql() -> String {
    format!(
        "SELECT id, type, payload, dedup_id, status, attempts, created_us, delivered_us, last_error, leases,
                xid_n, running, below
         FROM (
             SELECT page.*, sum(page.bytes) OVER (ORDER BY page.xid_n, page.id ROWS UNBOUNDED PRECEDING) AS running
             FROM (
                 SELECT rows.*, octet_length(payload) + octet_length(type) + coalesce(octet_length(dedup_id), 0)
                            + coalesce(octet_length(last_error), 0) + {INBOX_EVENT_OVERHEAD_BYTES} AS bytes
                 FROM (
                     SELECT e.id, e.type, e.payload::text AS payload, e.dedup_id, e.status, e.attempts,
                            {} AS created_us, {} AS delivered_us, e.last_error, e.leases, e.xid::text::int8 AS xid_n,
                            e.xid < (SELECT pg_snapshot_xmin(pg_current_snapshot())) AS below
                     FROM events e
                     WHERE e.org_id = $1 AND (e.xid, e.id) > ($2::int8::text::xid8, $3::uuid)
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
        horizon: client.prepare("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8").await?,
    })
}

fn event_of(row: &Row) -> Result<(Position, InboxEvent, i64, bool), tokio_postgres::Error> {
    let event = super::queries::inbox_event(row)?;
    let position = Position { xid: row.try_get("xid_n")?, id: event.id };
    Ok((position, event, row.try_get("running")?, row.try_get("below")?))
}

impl Storage {
    pub(super) async fn stream(&self, query: StreamQuery) -> Result<StreamPage, StorageError> {
        // Pages share the inbox's bound on pages held at once.
        let _permit = self.inbox_reads.acquire().await.map_err(|_| StorageError::Corrupt("closed".into()))?;
        let connection = self.commands(Lane::Stream).await?;
        self.metrics.stream_page();
        let statements = &connection.statements.stream;
        let (org, after) = (query.org_id, query.after);
        let rows = connection
            .client
            .query(&statements.page, &[&org, &after.xid, &after.id, &(query.limit + 1), &query.bytes_max])
            .await?;
        let mut page = StreamPage::default();
        for row in &rows {
            let (position, event, running, below) = event_of(row)?;
            if !below {
                page.held_by_horizon = true;
                break;
            }
            let fits = page.events.is_empty() || running <= query.bytes_max;
            if page.events.len() as i64 >= query.limit || !fits {
                page.more = true;
                break;
            }
            page.events.push((position, event));
        }
        debug_assert!(page.events.windows(2).all(|pair| pair[0].0 < pair[1].0), "commit order");
        Ok(page)
    }

    pub(super) async fn horizon(&self) -> Result<i64, StorageError> {
        let connection = self.commands(Lane::Stream).await?;
        Ok(connection.client.query_one(&connection.statements.stream.horizon, &[]).await?.try_get(0)?)
    }
}
