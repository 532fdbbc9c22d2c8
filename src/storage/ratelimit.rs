//! The rate-limit budget rows (migration 0009): the storage core's side of
//! `model::ratelimit`. A lease is one statement on the key lane: it opens a new window
//! when the row's has ended (at the asking request's `now`), grants part of what the
//! window has left, and returns the window's start, what is leased in it and what this
//! lease got. Unused tokens are given back when the instance shuts down.
//!
//! The grant: `min(want, left, max(ceil(left / 2), need))`, where `left` is what the
//! window has not leased out yet. Half of what is left at most, so slices shrink as the
//! window fills and one instance's slice never starves the others, but never less than
//! the requests waiting now need while the window lasts, so one lease serves them.
//! Concurrent leases of one organisation serialise on its row (the `ON CONFLICT` path
//! locks it), so the grants of a window never add up to more than the limit.

use tokio_postgres::ToStatement;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::{Storage, StorageError};
use crate::handoff::commands::Lane;
use crate::model::ratelimit::{Lease, RateWindow, WINDOW_MS};

/// Rate statements, prepared on the key lane's connection.
pub struct RateStatements {
    lease: Statement,
    give_back: Statement,
}

/// The lease statement. Parameters: $1 org, $2 now (Unix ms), $3 want, $4 need,
/// $5 limit, $6 window length (ms). Returns the window's start, its used tokens and
/// this lease's grant.
pub fn lease_sql() -> String {
    let expired = "b.window_start_ms + $6::int8 <= $2::int8";
    let grant = |left: &str| format!("LEAST($3::int4, {left}, GREATEST(({left} + 1) / 2, $4::int4))");
    let left = format!("(CASE WHEN {expired} THEN $5::int4 ELSE GREATEST($5::int4 - b.used, 0) END)");
    let (fresh, grant) = (grant("$5::int4"), grant(&left));
    format!(
        "INSERT INTO rate_budgets AS b (org_id, window_start_ms, used, granted)
         VALUES ($1, $2::int8, {fresh}, {fresh})
         ON CONFLICT (org_id) DO UPDATE SET
             window_start_ms = CASE WHEN {expired} THEN $2::int8 ELSE b.window_start_ms END,
             used = (CASE WHEN {expired} THEN 0 ELSE b.used END) + {grant},
             granted = {grant}
         RETURNING window_start_ms, used, granted"
    )
}

/// Gives tokens back to the window they were leased in; a window that has been
/// replaced since is left alone. Parameters: $1 org, $2 window start, $3 tokens.
pub const GIVE_BACK_SQL: &str = "UPDATE rate_budgets SET used = GREATEST(used - $3::int4, 0)
     WHERE org_id = $1 AND window_start_ms = $2::int8";

pub async fn prepare(client: &Client) -> Result<RateStatements, tokio_postgres::Error> {
    Ok(RateStatements {
        lease: client.prepare(&lease_sql()).await?,
        give_back: client.prepare(GIVE_BACK_SQL).await?,
    })
}

fn int4(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// One lease of `want` tokens (of which `need` are waited for) of the organisation's
/// window at `now_ms` (`statement`: `lease_sql()` or its prepared form).
pub async fn lease<T: ?Sized + ToStatement>(
    client: &Client,
    statement: &T,
    org_id: Uuid,
    now_ms: u64,
    (want, need): (u32, u32),
    limit: u32,
) -> Result<Lease, StorageError> {
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&org_id, &(now_ms as i64), &int4(want), &int4(need), &int4(limit), &(WINDOW_MS as i64)];
    let row = client.query_one(statement, &parameters).await?;
    let (start, used, granted): (i64, i32, i32) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    Ok(Lease {
        asked_at_ms: now_ms,
        window_start_ms: start.max(0) as u64,
        used: used.max(0) as u32,
        granted: granted.max(0) as u32,
    })
}

/// Gives `tokens` back to the window that started at `window_start_ms`; `true` if that
/// window is still the row's.
pub async fn give_back<T: ?Sized + ToStatement>(
    client: &Client,
    statement: &T,
    org_id: Uuid,
    window_start_ms: u64,
    tokens: u32,
) -> Result<bool, StorageError> {
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&org_id, &(window_start_ms as i64), &int4(tokens)];
    Ok(client.execute(statement, &parameters).await? == 1)
}

impl Storage {
    /// Leases the next slice for `window` and applies the answer to it; a failure is
    /// applied too (its waiting requests answer 503).
    pub(super) async fn lease_rate(
        &self,
        org_id: Uuid,
        limit: u32,
        ask: (u32, u32),
        now_ms: u64,
        window: &RateWindow,
    ) {
        let leased = match self.commands(Lane::Keys).await {
            Ok(connection) => {
                let statement = &connection.statements.rate.lease;
                lease(&connection.client, statement, org_id, now_ms, ask, limit).await
            }
            Err(e) => Err(e),
        };
        match leased {
            Ok(lease) => {
                self.metrics.rate_leased(lease.granted);
                window.apply_lease(lease, limit);
            }
            Err(e) => {
                tracing::warn!(%org_id, error = %e, "rate-limit lease failed; the requests waiting for it get 503");
                window.refill_failed();
            }
        }
    }

    /// Gives every organisation's unused tokens of its current window back.
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
            let statement = &connection.statements.rate.give_back;
            if give_back(&connection.client, statement, org_id, start, tokens).await? {
                returned += u64::from(tokens);
            }
        }
        self.metrics.rate_returned(returned);
        Ok(returned)
    }
}
