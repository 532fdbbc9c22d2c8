//! The rate-limit budget rows (migration 0009): the storage core's side of
//! `model::ratelimit`. A lease opens a new window when the row's has ended (at the
//! asking request's `now`), grants part of what the window has left, and returns the
//! window's start, what is leased in it and what this lease got. Unused tokens are
//! given back when the instance shuts down.
//!
//! The grant: `min(want, left, max(ceil(left / 2), need))`, where `left` is what the
//! window has not leased out yet. Half of what is left at most, so slices shrink as the
//! window fills and one instance's slice never starves the others, but never less than
//! the requests waiting now need while the window lasts, so one lease serves them.
//! Leases of one organisation serialise on its row lock, so the grants of a window
//! never add up to more than the limit.
//!
//! Leases are batched like events: the leases asked for while one batch commits go in
//! the next, one transaction for all of them on a connection of their own (`run`), so
//! a thousand busy organisations cost a few commits a second, not four thousand, and
//! key lookups never queue behind them. A batch locks its rows in `org_id` order (the
//! `INSERT … ON CONFLICT DO UPDATE … WHERE false` locks existing rows without writing
//! them), so batches of two instances never deadlock.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use ahash::AHashMap;
use tokio::sync::Notify;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::metrics::StorageMetrics;
use super::pg::LazyConnection;
use super::{Storage, StorageError};
use crate::handoff::commands::Lane;
use crate::model::ratelimit::{Lease, RateWindow, WINDOW_MS};

/// Most leases in one batch.
pub const LEASE_BATCH_MAX: usize = 512;

/// One lease asked for: `want` tokens of the organisation's window at `now_ms`, of
/// which requests waiting now `need`; `limit` is the organisation's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest {
    pub org_id: Uuid,
    pub now_ms: u64,
    pub want: u32,
    pub need: u32,
    pub limit: u32,
}

/// The lease statements, prepared on the lease connection.
pub struct RateStatements {
    lock: Statement,
    lease: Statement,
}

/// Creates the missing rows and locks the existing ones, in `org_id` order, without
/// writing them (`WHERE false` still locks). $1 the organisations.
const LOCK_SQL: &str = "INSERT INTO rate_budgets AS b (org_id, window_start_ms, used, granted)
     SELECT org_id, 0, 0, 0 FROM unnest($1::uuid[]) AS r(org_id) ORDER BY org_id
     ON CONFLICT (org_id) DO UPDATE SET used = b.used WHERE false";

/// The lease, one row per request: $1 organisations, $2 nows (Unix ms), $3 wants,
/// $4 needs, $5 limits, $6 the window length (ms). Returns each organisation's window
/// start, used tokens and grant.
fn lease_sql() -> String {
    let expired = "b.window_start_ms + $6::int8 <= r.now_ms";
    let left = format!("(CASE WHEN {expired} THEN r.lim ELSE GREATEST(r.lim - b.used, 0) END)");
    let grant = format!("LEAST(r.want, {left}, GREATEST(({left} + 1) / 2, r.need))");
    format!(
        "UPDATE rate_budgets AS b SET
             window_start_ms = CASE WHEN {expired} THEN r.now_ms ELSE b.window_start_ms END,
             used = (CASE WHEN {expired} THEN 0 ELSE b.used END) + {grant},
             granted = {grant}
         FROM unnest($1::uuid[], $2::int8[], $3::int4[], $4::int4[], $5::int4[])
             AS r(org_id, now_ms, want, need, lim)
         WHERE b.org_id = r.org_id
         RETURNING b.org_id, b.window_start_ms, b.used, b.granted"
    )
}

/// Gives tokens back to the window they were leased in; a window that has been
/// replaced since is left alone. $1 org, $2 window start, $3 tokens.
const GIVE_BACK_SQL: &str = "UPDATE rate_budgets SET used = GREATEST(used - $3::int4, 0)
     WHERE org_id = $1 AND window_start_ms = $2::int8";

impl super::pg::PrepareStatements for RateStatements {
    async fn prepare(client: &Client) -> Result<RateStatements, tokio_postgres::Error> {
        Ok(RateStatements {
            lock: client.prepare(LOCK_SQL).await?,
            lease: client.prepare(&lease_sql()).await?,
        })
    }
}

fn int4(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Leases for every request in one transaction; the answer of each organisation that
/// has one (every request's, unless the same organisation is asked twice). `client`
/// must be used by nothing else meanwhile (its transaction is this one).
pub async fn lease_many(
    client: &Client,
    statements: &RateStatements,
    requests: &[LeaseRequest],
) -> Result<AHashMap<Uuid, Lease>, StorageError> {
    let mut sorted = requests.to_vec();
    sorted.sort_by_key(|request| request.org_id);
    let orgs: Vec<Uuid> = sorted.iter().map(|r| r.org_id).collect();
    let nows: Vec<i64> = sorted.iter().map(|r| r.now_ms as i64).collect();
    let wants: Vec<i32> = sorted.iter().map(|r| int4(r.want)).collect();
    let needs: Vec<i32> = sorted.iter().map(|r| int4(r.need)).collect();
    let limits: Vec<i32> = sorted.iter().map(|r| int4(r.limit)).collect();
    client.batch_execute("BEGIN").await?;
    let leased = async {
        client.execute(&statements.lock, &[&orgs]).await?;
        let rows = client
            .query(&statements.lease, &[&orgs, &nows, &wants, &needs, &limits, &(WINDOW_MS as i64)])
            .await?;
        client.batch_execute("COMMIT").await?;
        Ok::<_, tokio_postgres::Error>(rows)
    }
    .await;
    let rows = match leased {
        Ok(rows) => rows,
        Err(e) => {
            // The connection may be gone as well; then it is reopened next time.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
    };
    let asked: AHashMap<Uuid, u64> = sorted.iter().map(|r| (r.org_id, r.now_ms)).collect();
    let mut leases = AHashMap::with_capacity(rows.len());
    for row in rows {
        let org_id: Uuid = row.try_get(0)?;
        let (start, used, granted): (i64, i32, i32) = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let asked_at_ms = asked.get(&org_id).copied().unwrap_or_default();
        let lease = Lease {
            asked_at_ms,
            window_start_ms: start.max(0) as u64,
            used: used.max(0) as u32,
            granted: granted.max(0) as u32,
        };
        leases.insert(org_id, lease);
    }
    Ok(leases)
}

/// Gives `tokens` back to the window that started at `window_start_ms`; `true` if that
/// window is still the row's. Once per organisation at shutdown: not prepared.
pub async fn give_back(
    client: &Client,
    org_id: Uuid,
    window_start_ms: u64,
    tokens: u32,
) -> Result<bool, StorageError> {
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&org_id, &(window_start_ms as i64), &int4(tokens)];
    Ok(client.execute(GIVE_BACK_SQL, &parameters).await? == 1)
}

/// A lease waiting for the next batch, with the window its answer goes to.
struct Pending {
    request: LeaseRequest,
    window: Arc<RateWindow>,
}

/// The leases asked for and not yet sent; at most one per organisation per process
/// (`RateWindow::begin_refill`), so bounded by the organisations seen.
#[derive(Default)]
pub struct LeaseQueue {
    pending: RefCell<Vec<Pending>>,
    /// Wakes the batch loop (a permit is kept if it is busy, so none is missed).
    wake: Notify,
}

impl LeaseQueue {
    /// Queues a lease for the next batch; its answer goes to `window`.
    pub fn push(&self, request: LeaseRequest, window: Arc<RateWindow>) {
        self.pending.borrow_mut().push(Pending { request, window });
        self.wake.notify_one();
    }

    fn take_batch(&self) -> Vec<Pending> {
        let mut pending = self.pending.borrow_mut();
        let count = pending.len().min(LEASE_BATCH_MAX);
        pending.drain(..count).collect()
    }
}

/// The batch loop: sends what is queued as one transaction, applies every answer to
/// its window (or the failure: its waiting requests answer 503), and goes again.
pub(super) async fn run(
    queue: Rc<LeaseQueue>,
    connection: Rc<LazyConnection<RateStatements>>,
    metrics: Arc<StorageMetrics>,
) {
    loop {
        let batch = queue.take_batch();
        if batch.is_empty() {
            queue.wake.notified().await;
            continue;
        }
        let requests: Vec<LeaseRequest> = batch.iter().map(|pending| pending.request).collect();
        let leased = match connection.get().await {
            Ok(c) => lease_many(&c.client, &c.statements, &requests).await,
            Err(e) => Err(e.into()),
        };
        let leases = leased.unwrap_or_else(|e| {
            let error = crate::util::error_chain(&e);
            tracing::warn!(
                leases = batch.len(),
                error,
                "rate-limit leases failed; the requests waiting for them get 503"
            );
            AHashMap::new()
        });
        for Pending { request, window } in batch {
            match leases.get(&request.org_id) {
                Some(lease) => {
                    metrics.rate_leased(lease.granted);
                    window.apply_lease(*lease, request.limit);
                }
                None => window.refill_failed(),
            }
        }
    }
}

impl Storage {
    /// Gives every organisation's unused tokens of its current window back, on the
    /// key lane's connection (the lease connection may be inside a batch).
    pub(super) async fn return_rate_tokens(&self, now_ms: u64) -> Result<u64, StorageError> {
        let held: Vec<(Uuid, (u64, u32))> = self
            .rate_windows
            .borrow()
            .iter()
            .filter_map(|(org_id, window)| Some((*org_id, window.take_unused(now_ms)?)))
            .collect();
        let connection = self.commands(Lane::Keys).await?;
        let mut returned = 0;
        for (org_id, (start, tokens)) in held {
            if give_back(&connection.client, org_id, start, tokens).await? {
                returned += u64::from(tokens);
            }
        }
        self.metrics.rate_returned(returned);
        Ok(returned)
    }
}
