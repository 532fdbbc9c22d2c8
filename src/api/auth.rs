//! Authentication of a request's API key on its core.
//!
//! Hit: the core's key table, no Argon2, constant-time compare. Miss: one request per
//! key per core resolves it (single flight): the candidate rows come from the storage
//! core, Argon2 runs in the blocking pool, and the verdict is cached (positive or
//! negative). A revocation that lands while a miss is in flight makes the verdict
//! uncacheable, and the lookup is done again.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::error::ApiError;
use super::overloaded;
use crate::auth::keys::{key_digest, parse_lookup_id};
use crate::auth::pool::{Answer, Work};
use crate::auth::throttle::{address_key, Refused};
use crate::http::Request;
use crate::metrics::CoreMetrics;
use crate::model::Org;
use crate::shard::keytable::Lookup;
use crate::shard::Shard;
use crate::storage::queries::Command;

/// Times a miss is resolved again when revocations keep landing during it.
const RESOLVE_ATTEMPTS_MAX: usize = 3;

/// A key that passed authentication.
pub struct Authenticated {
    pub org: Arc<Org>,
    pub lookup_id: i64,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub async fn authenticate(shard: &Shard, request: &Request<'_>) -> Result<Authenticated, ApiError> {
    let key = request.api_key().ok_or(ApiError::Unauthorized)?;
    let lookup_id = parse_lookup_id(key).ok_or(ApiError::Unauthorized)?;
    let digest = key_digest(key);
    for _ in 0..RESOLVE_ATTEMPTS_MAX {
        match shard.keys.borrow().lookup(lookup_id, &digest, now_ms()) {
            Lookup::Hit(org) => {
                CoreMetrics::count(&shard.metrics.auth_cache_hits, 1);
                return Ok(Authenticated { org, lookup_id });
            }
            Lookup::KnownBad => return Err(ApiError::Unauthorized),
            Lookup::Miss => CoreMetrics::count(&shard.metrics.auth_cache_misses, 1),
        }
        let waiter = {
            let mut resolving = shard.resolving.borrow_mut();
            match resolving.get_mut(&digest) {
                Some(waiters) => {
                    let (sender, receiver) = oneshot::channel();
                    waiters.push(sender);
                    Some(receiver)
                }
                None => {
                    resolving.insert(digest, Vec::new());
                    None
                }
            }
        };
        let verdict = match waiter {
            // Another request on this core is resolving the same key; a dropped
            // sender (that request went away) means: look again.
            Some(receiver) => match receiver.await {
                Ok(verdict) => verdict,
                Err(_) => continue,
            },
            None => {
                let guard = ResolvingGuard { shard, digest };
                // Refused here, a flood of wrong keys never reaches the database or Argon2.
                let check = KeyCheck::begin(shard, lookup_id, request.peer)?;
                let epoch = shard.keys.borrow().epoch();
                let result = resolve(shard, key, lookup_id).await;
                check.end(matches!(result, Ok(None)));
                let verdict = result.as_ref().ok().cloned().flatten();
                let cached = match &result {
                    Ok(Some(org)) => {
                        shard.keys.borrow_mut().insert_verified(lookup_id, digest, Arc::clone(org), epoch)
                    }
                    Ok(None) if shard.keys.borrow().epoch() == epoch => {
                        shard.keys.borrow_mut().insert_negative(digest, now_ms());
                        true
                    }
                    _ => false,
                };
                guard.finish(if cached { Some(verdict.clone()) } else { None });
                match result {
                    Err(error) => return Err(error),
                    Ok(_) if !cached => continue,
                    Ok(verdict) => verdict,
                }
            }
        };
        return match verdict {
            Some(org) => Ok(Authenticated { org, lookup_id }),
            None => Err(ApiError::Unauthorized),
        };
    }
    Err(overloaded())
}

/// A throttle's refusal as the API's 429.
pub fn throttled(verdict: Result<(), Refused>, what: &'static str) -> Result<(), ApiError> {
    verdict.map_err(|refused| ApiError::Throttled {
        what,
        retry_after_secs: crate::shard::ratelimit::reset_secs(refused.retry_after_ms),
    })
}

/// One key check that may cost the database and Argon2, counted against its lookup id
/// and its client address (`auth::throttle`) from `begin` until `end` (or drop: a
/// request that went away counts as not failed).
struct KeyCheck<'a> {
    shard: &'a Shard,
    lookup_id: i64,
    address: u128,
    ended: bool,
}

impl<'a> KeyCheck<'a> {
    fn begin(shard: &'a Shard, lookup_id: i64, peer: std::net::IpAddr) -> Result<KeyCheck<'a>, ApiError> {
        let now = now_ms();
        let address = address_key(peer);
        let mut throttles = shard.throttles.borrow_mut();
        let by_id = throttles.key_failures_by_id.begin(lookup_id, now);
        let by_address = by_id.and_then(|()| {
            let verdict = throttles.key_failures_by_address.begin(address, now);
            if verdict.is_err() {
                throttles.key_failures_by_id.end(lookup_id, now, false);
            }
            verdict
        });
        if by_address.is_err() {
            CoreMetrics::count(&shard.metrics.auth_throttled, 1);
            let what = match by_id {
                Err(_) => "too many failed checks of this API key id",
                Ok(()) => "too many failed API key checks from this address",
            };
            throttled(by_address, what)?;
        }
        Ok(KeyCheck { shard, lookup_id, address, ended: false })
    }

    /// `failed`: the key was wrong or unknown.
    fn end(mut self, failed: bool) {
        self.finish(failed);
    }

    fn finish(&mut self, failed: bool) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let now = now_ms();
        let mut throttles = self.shard.throttles.borrow_mut();
        throttles.key_failures_by_id.end(self.lookup_id, now, failed);
        throttles.key_failures_by_address.end(self.address, now, failed);
        if failed {
            CoreMetrics::count(&self.shard.metrics.auth_failures, 1);
        }
    }
}

impl Drop for KeyCheck<'_> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Removes the single-flight entry however the resolving request ends, answering the
/// waiters (or letting them retry when there is no cacheable verdict).
struct ResolvingGuard<'a> {
    shard: &'a Shard,
    digest: [u8; 32],
}

impl ResolvingGuard<'_> {
    fn finish(self, verdict: Option<Option<Arc<Org>>>) {
        let waiters = self.shard.resolving.borrow_mut().remove(&self.digest).unwrap_or_default();
        if let Some(verdict) = verdict {
            for waiter in waiters {
                let _ = waiter.send(verdict.clone());
            }
        }
        // Drop runs next and finds the entry gone: nothing awaits in between.
    }
}

impl Drop for ResolvingGuard<'_> {
    fn drop(&mut self) {
        // Dropping the senders tells the waiters to look again.
        self.shard.resolving.borrow_mut().remove(&self.digest);
    }
}

/// Asks the storage core for the rows with this lookup id and verifies the key
/// against each in the Argon2 pool. `Ok(None)`: no such key.
async fn resolve(shard: &Shard, key: &[u8], lookup_id: i64) -> Result<Option<Arc<Org>>, ApiError> {
    let (reply, answer) = oneshot::channel();
    shard.storage.send(Command::LookupKey { lookup_id, reply }).map_err(|_| overloaded())?;
    let candidates = answer.await.map_err(|_| ApiError::Internal)?.map_err(|e| {
        tracing::warn!(error = %e, "key lookup failed");
        overloaded()
    })?;
    for candidate in candidates {
        let work = Work::Verify { key: key.to_vec(), stored: candidate.key_hash };
        CoreMetrics::count(&shard.metrics.auth_argon2_verifications, 1);
        let answer = shard.hash_pool.try_submit(work).map_err(|_| overloaded())?;
        if let Ok(Answer::Verified(true)) = answer.await {
            return Ok(Some(candidate.org));
        }
    }
    Ok(None)
}
