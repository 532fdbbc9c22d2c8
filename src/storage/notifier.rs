//! Commit notices for other instances: after each commit the writers add the
//! organisations that got events; one task sends them as one `NOTIFY` on
//! `COMMITS_CHANNEL`, coalescing everything that arrived while the previous one was on
//! its way and in the `NOTICE_INTERVAL` after it began (at most one in flight and
//! about 50 a second, never one per batch: each is a transaction that every listening
//! instance reads; sent after every batch, they cost PostgreSQL ~20 µs of CPU per
//! event under ingest). Every instance's listener
//! turns them into wake-ups of its held stream reads. The notifying session runs with
//! `synchronous_commit = off`: a notice lost in a crash costs a held read nothing but
//! its next wait timeout.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use ahash::AHashSet;
use tokio::sync::Notify;
use uuid::Uuid;

use super::pg::Db;

pub const COMMITS_CHANNEL: &str = "triggerd_commits";
/// Organisations one notice names at most; beyond it the notice says "any" (`*`).
/// 200 ids of 37 bytes stay under PostgreSQL's 8000-byte payload limit.
const NOTICE_ORGS_MAX: usize = 200;
/// Shortest time from one notice to the next: what a held read on another instance
/// may wait at most beyond the notice's own delivery (its wake-up stays well inside
/// 100 ms), and what keeps notices to about 50 a second under any load.
const NOTICE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Organisations committed since the last notice went out.
#[derive(Default)]
pub struct CommitBroadcast {
    pending: RefCell<AHashSet<Uuid>>,
    /// More than `NOTICE_ORGS_MAX` organisations: the next notice says "any".
    any: Cell<bool>,
    wake: Notify,
}

impl CommitBroadcast {
    pub fn add(&self, orgs: &[Uuid]) {
        if orgs.is_empty() {
            return;
        }
        if !self.any.get() {
            let mut pending = self.pending.borrow_mut();
            pending.extend(orgs);
            if pending.len() > NOTICE_ORGS_MAX {
                pending.clear();
                self.any.set(true);
            }
        }
        self.wake.notify_one();
    }

    /// The payload of the next notice, emptying what is pending.
    fn take(&self) -> String {
        let orgs: Vec<Uuid> = self.pending.borrow_mut().drain().collect();
        if self.any.replace(false) {
            return "*".into();
        }
        orgs.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",")
    }
}

/// The payload of a notice: `None` for "any organisation".
pub fn parse_notice(payload: &str) -> Option<Vec<Uuid>> {
    if payload == "*" {
        return None;
    }
    Some(payload.split(',').filter_map(|id| Uuid::try_parse(id).ok()).collect())
}

/// Runs for the life of the storage thread.
pub async fn run(db: Rc<Db>, broadcast: Rc<CommitBroadcast>) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        broadcast.wake.notified().await;
        let began = tokio::time::Instant::now();
        let payload = broadcast.take();
        if payload.is_empty() {
            continue;
        }
        if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            client = match db.connect().await {
                Ok(c) if c.batch_execute("SET synchronous_commit = off").await.is_ok() => Some(c),
                _ => None,
            };
        }
        let Some(c) = &client else { continue };
        if let Err(e) = c.execute("SELECT pg_notify($1, $2)", &[&COMMITS_CHANNEL, &payload]).await {
            tracing::debug!(error = %crate::util::error_chain(&e), "a commit notice for other instances was lost");
            client = None;
        }
        // Commits meanwhile wait in `pending` (their wake-up is stored in `wake`).
        tokio::time::sleep_until(began + NOTICE_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_coalesce_and_collapse_to_any() {
        let broadcast = CommitBroadcast::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        broadcast.add(&[a, b]);
        broadcast.add(&[a]);
        let payload = broadcast.take();
        assert_eq!(
            parse_notice(&payload).map(|mut v| {
                v.sort();
                v
            }),
            Some(vec![a, b])
        );
        assert_eq!(broadcast.take(), "", "nothing pending after a notice");
        let many: Vec<Uuid> = (0..=NOTICE_ORGS_MAX as u128).map(Uuid::from_u128).collect();
        broadcast.add(&many);
        assert_eq!(broadcast.take(), "*");
        assert_eq!(parse_notice("*"), None);
    }
}
