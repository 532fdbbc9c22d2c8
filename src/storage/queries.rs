//! Commands from the HTTP cores that need the database (key lookup, sign-up, rotation,
//! organisation reads). They run as tasks on the storage core and share one
//! connection, which pipelines them. Every statement is prepared once per connection;
//! every one has `org_id` in its key or its `WHERE`, and request data only ever
//! travels as parameters.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::{Storage, StorageError};
use crate::handoff::{Barrier, Control};
use crate::model::{Org, OrgView, Tier};

/// A key row that matched a lookup id, for the caller to verify.
pub struct KeyCandidate {
    pub org: Arc<Org>,
    /// Argon2id PHC string.
    pub key_hash: String,
}

/// Everything needed to create an organisation with its first key.
pub struct NewOrg {
    pub name: String,
    pub tier: Tier,
    pub lookup_id: i64,
    pub key_hash: String,
    pub key_prefix: String,
    pub signing_secret: String,
}

pub struct NewKeyForOrg {
    pub org_id: Uuid,
    /// The key the request was authenticated with; rotation fails if it is gone.
    pub old_lookup_id: i64,
    pub lookup_id: i64,
    pub key_hash: String,
    pub key_prefix: String,
}

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

/// A request for the storage core, answered on its `reply`.
pub enum Command {
    LookupKey {
        lookup_id: i64,
        reply: Reply<Vec<KeyCandidate>>,
    },
    CreateOrg {
        new: NewOrg,
        reply: Reply<Arc<Org>>,
    },
    /// Answers the rotation time, or `None` if the old key was already replaced.
    /// Every HTTP core has dropped the organisation's cached keys before the answer.
    RotateKey {
        new: NewKeyForOrg,
        reply: Reply<Option<i64>>,
    },
    GetOrg {
        org_id: Uuid,
        reply: Reply<Option<OrgView>>,
    },
}

const MICROS: &str = "(extract(epoch FROM {}) * 1000000)::int8";

fn micros(column: &str) -> String {
    MICROS.replace("{}", column)
}

/// Prepared statements of the command connection.
pub struct Statements {
    lookup_key: Statement,
    create_org: Statement,
    rotate_key: Statement,
    get_org: Statement,
}

impl Statements {
    pub async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
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
                        DELETE FROM api_keys WHERE org_id = $1 AND lookup_id = $2 RETURNING org_id)
                     INSERT INTO api_keys (org_id, lookup_id, key_hash, key_prefix)
                     SELECT org_id, $3, $4, $5 FROM old
                     RETURNING {}",
                    micros("created_at")
                ))
                .await?,
            get_org: client
                .prepare(&format!(
                    "SELECT o.name, o.tier, o.rate_limit_per_minute, o.webhook_url, {},
                            (SELECT k.key_prefix FROM api_keys k WHERE k.org_id = o.org_id
                             ORDER BY k.created_at DESC LIMIT 1)
                     FROM organizations o WHERE o.org_id = $1",
                    micros("o.created_at")
                ))
                .await?,
        })
    }
}

fn tier_of(name: &str) -> Result<Tier, StorageError> {
    Tier::parse(name).ok_or_else(|| StorageError::Corrupt(format!("unknown tier {name:?} in organizations")))
}

impl Storage {
    /// Runs one command to completion and answers it.
    pub(super) async fn execute(&self, command: Command) {
        match command {
            Command::LookupKey { lookup_id, reply } => {
                let _ = reply.send(self.lookup_key(lookup_id).await);
            }
            Command::CreateOrg { new, reply } => {
                let _ = reply.send(self.create_org(new).await);
            }
            Command::RotateKey { new, reply } => {
                let _ = reply.send(self.rotate_key(new).await);
            }
            Command::GetOrg { org_id, reply } => {
                let _ = reply.send(self.get_org(org_id).await);
            }
        }
    }

    async fn lookup_key(&self, lookup_id: i64) -> Result<Vec<KeyCandidate>, StorageError> {
        let connection = self.commands().await?;
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
        let connection = self.commands().await?;
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
        let connection = self.commands().await?;
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
    async fn revoke_everywhere(&self, org_id: Uuid) {
        let barrier = Barrier::new(self.handoff.links.len());
        for link in &self.handoff.links {
            let mut control = Control::RevokeOrg { org_id, barrier: Arc::clone(&barrier) };
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
        let connection = self.commands().await?;
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
        }))
    }
}
