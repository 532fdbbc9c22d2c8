//! Key revocation and commit notices across instances (`notifier`). A rotation notifies `REVOKE_CHANNEL` in the same
//! statement (PostgreSQL delivers it at commit); every instance on the database
//! listens on a connection of its own and drops the organisation's cached keys on all
//! its cores, typically milliseconds after the rotation commits. If the listening
//! connection is lost, notifications may have been missed: after reconnecting, every
//! core drops its whole key table, so a revoked key never outlives a reconnection.

use std::rc::Rc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use super::notifier::{parse_notice, COMMITS_CHANNEL};
use super::pg::Backoff;
use super::Storage;

pub const REVOKE_CHANNEL: &str = "triggerd_revoke";
/// Notifications waiting to be applied; the connection is not read further meanwhile.
const PENDING_MAX: usize = 1024;
const RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(2);

/// Runs for the life of the storage core.
pub async fn listen(storage: Rc<Storage>) {
    let mut backoff = Backoff::new(RETRY_DELAY_MIN, RETRY_DELAY_MAX);
    let mut reconnecting = false;
    loop {
        match session(&storage, reconnecting).await {
            Ok(()) => backoff.succeeded(),
            // Shutting down: the database goes away on purpose.
            Err(_) if storage.db.closing() => return,
            Err(e) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "revocation listener lost its connection")
            }
        }
        reconnecting = true;
        tokio::time::sleep(backoff.failed()).await;
    }
}

async fn session(storage: &Storage, reconnecting: bool) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = storage.db.target().connect().await?;
    let (sender, mut notifications) = mpsc::channel::<(bool, String)>(PENDING_MAX);
    tokio::task::spawn_local(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    let commits = notification.channel() == COMMITS_CHANNEL;
                    if sender.send((commits, notification.payload().to_owned())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {REVOKE_CHANNEL}; LISTEN {COMMITS_CHANNEL}")).await?;
    if reconnecting {
        storage.revoke_all_everywhere().await;
        // Commits of other instances may have gone unheard: every held read looks again.
        storage.handoff.committed(None);
    }
    while let Some((commits, payload)) = notifications.recv().await {
        if commits {
            storage.handoff.committed(parse_notice(&payload).as_deref());
            continue;
        }
        match Uuid::try_parse(&payload) {
            Ok(org_id) => storage.revoke_everywhere(org_id).await,
            Err(_) => tracing::warn!(payload, "ignoring a malformed revocation notice"),
        }
    }
    Ok(())
}
