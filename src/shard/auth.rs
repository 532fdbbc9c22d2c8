//! The key-cache protocol of one core: authentication of a request's API key.
//!
//! Hit: the core's key table, no Argon2, constant-time compare. Miss: one request per
//! key per core resolves it (single flight): the candidate rows come from the storage
//! core (a command on the key lane), Argon2 runs in the blocking pool, and the verdict
//! is cached (positive or negative). A revocation of the key's organisation that lands
//! while a miss is in flight makes the verdict uncacheable, and the lookup is done
//! again. Misses are admitted by the fairness throttles first (`auth::throttle`): a
//! flood of wrong keys never reaches the database or Argon2.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::keytable::Lookup;
use super::metrics::CoreMetrics;
use super::Shard;
use crate::auth::keys::{key_digest, parse_lookup_id};
use crate::auth::pool::{Answer, Work};
use crate::auth::throttle::address_key;
use crate::handoff::commands::Command;
use crate::model::Org;
use crate::util::time::now_ms;

/// Times a miss is resolved again when revocations keep landing during it.
const RESOLVE_ATTEMPTS_MAX: usize = 3;

/// Requests waiting for a key that one request on this core is already resolving.
pub type Waiters = Vec<oneshot::Sender<Option<Arc<Org>>>>;

/// A key that passed authentication.
pub struct Authenticated {
    pub org: Arc<Org>,
    pub lookup_id: i64,
}

/// Why a key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Missing, malformed, unknown, wrong or revoked.
    Unauthorized,
    /// Too many failed checks for this key id or from this address (429).
    Throttled { what: &'static str, retry_after_ms: u64 },
    /// A queue on the way (command lane, Argon2 pool) is full or the database failed (503).
    Overloaded,
    /// The storage core dropped the question (it is shutting down or broke).
    Internal,
}

impl Shard {
    /// Authenticates `key`, presented by `peer`.
    pub async fn authenticate(&self, key: Option<&[u8]>, peer: IpAddr) -> Result<Authenticated, AuthError> {
        let key = key.ok_or(AuthError::Unauthorized)?;
        let lookup_id = parse_lookup_id(key).ok_or(AuthError::Unauthorized)?;
        let digest = key_digest(key);
        for _ in 0..RESOLVE_ATTEMPTS_MAX {
            if let Some(org) = self.cached(lookup_id, &digest)? {
                return Ok(Authenticated { org, lookup_id });
            }
            let verdict = match self.join_resolution(digest) {
                // Another request on this core resolves the same key; a dropped sender
                // (that request went away) means: look again.
                Some(answer) => match answer.await {
                    Ok(verdict) => verdict,
                    Err(_) => continue,
                },
                None => match self.resolve_once(key, lookup_id, digest, peer).await? {
                    Some(verdict) => verdict,
                    None => continue,
                },
            };
            return verdict.map(|org| Authenticated { org, lookup_id }).ok_or(AuthError::Unauthorized);
        }
        Err(AuthError::Overloaded)
    }

    /// Caches a key this core just created (a sign-up), saving one Argon2 run.
    pub fn cache_new_key(&self, lookup_id: i64, key: &[u8], org: Arc<Org>) {
        let mut keys = self.keys.borrow_mut();
        let epoch = keys.epoch();
        keys.insert_verified(lookup_id, key_digest(key), org, epoch);
    }

    /// The key table's verdict: `Ok(Some)` a hit, `Err` known to be wrong, `Ok(None)`
    /// a miss.
    fn cached(&self, lookup_id: i64, digest: &[u8; 32]) -> Result<Option<Arc<Org>>, AuthError> {
        match self.keys.borrow().lookup(lookup_id, digest, now_ms()) {
            Lookup::Hit(org) => {
                CoreMetrics::count(&self.metrics.auth_cache_hits, 1);
                Ok(Some(org))
            }
            Lookup::KnownBad => Err(AuthError::Unauthorized),
            Lookup::Miss => {
                CoreMetrics::count(&self.metrics.auth_cache_misses, 1);
                Ok(None)
            }
        }
    }

    /// Joins the resolution of `digest` in progress, or (`None`) registers this
    /// request as the one resolving it.
    fn join_resolution(&self, digest: [u8; 32]) -> Option<oneshot::Receiver<Option<Arc<Org>>>> {
        let mut resolving = self.resolving.borrow_mut();
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
    }

    /// Resolves a miss this request registered for: throttles, database, Argon2, cache.
    /// `Ok(None)`: a revocation crossed it, look again.
    async fn resolve_once(
        &self,
        key: &[u8],
        lookup_id: i64,
        digest: [u8; 32],
        peer: IpAddr,
    ) -> Result<Option<Option<Arc<Org>>>, AuthError> {
        let guard = ResolvingGuard { shard: self, digest };
        let check = KeyCheck::begin(self, lookup_id, peer)?;
        let epoch = self.keys.borrow().epoch();
        let result = self.resolve(key, lookup_id).await;
        check.end(matches!(result, Ok(None)));
        let verdict = result?;
        let cached = match &verdict {
            Some(org) => self.keys.borrow_mut().insert_verified(lookup_id, digest, Arc::clone(org), epoch),
            None if self.keys.borrow().epoch() == epoch => {
                self.keys.borrow_mut().insert_negative(digest, now_ms());
                true
            }
            None => false,
        };
        guard.finish(cached.then(|| verdict.clone()));
        Ok(cached.then_some(verdict))
    }

    /// Asks the storage core for the rows with this lookup id and verifies the key
    /// against each in the Argon2 pool. `Ok(None)`: no such key.
    async fn resolve(&self, key: &[u8], lookup_id: i64) -> Result<Option<Arc<Org>>, AuthError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::LookupKey { lookup_id, reply }).map_err(|_| AuthError::Overloaded)?;
        let candidates = answer.await.map_err(|_| AuthError::Internal)?.map_err(|e| {
            tracing::warn!(error = %e, "key lookup failed");
            AuthError::Overloaded
        })?;
        for candidate in candidates {
            let work = Work::Verify { key: key.to_vec(), stored: candidate.key_hash };
            CoreMetrics::count(&self.metrics.auth_argon2_verifications, 1);
            let answer = self.hash_pool.try_submit(work).map_err(|_| AuthError::Overloaded)?;
            if let Ok(Answer::Verified(true)) = answer.await {
                return Ok(Some(candidate.org));
            }
        }
        Ok(None)
    }
}

/// One key check that may cost the database and Argon2, counted against its lookup id
/// and its client address (`auth::throttle`) from `begin` until `end` (or drop: a
/// request that went away counts as not failed).
///
/// A lookup id over its limit still lets a check through from an address with no
/// failure this window and none in flight (when addresses are counted at all):
/// whoever knows a key's first 19 characters cannot lock its holder out by failing
/// with it, only themselves. The bypass admits at most one check per address at a
/// time, and none once that address has failed.
struct KeyCheck<'a> {
    shard: &'a Shard,
    lookup_id: i64,
    address: u128,
    /// Whether this check holds a place in its lookup id's count.
    counted_by_id: bool,
    ended: bool,
}

impl<'a> KeyCheck<'a> {
    fn begin(shard: &'a Shard, lookup_id: i64, peer: IpAddr) -> Result<KeyCheck<'a>, AuthError> {
        let now = now_ms();
        let address = address_key(peer);
        let mut throttles = shard.throttles.borrow_mut();
        let refused = |retry_after_ms, what| {
            CoreMetrics::count(&shard.metrics.auth_throttled, 1);
            AuthError::Throttled { what, retry_after_ms }
        };
        let counted_by_id = match throttles.key_failures_by_id.begin(lookup_id, now) {
            Ok(()) => true,
            Err(r) => {
                let by_address = &throttles.key_failures_by_address;
                if !by_address.is_on() || by_address.is_active(&address, now) {
                    return Err(refused(r.retry_after_ms, "too many failed checks of this API key id"));
                }
                false
            }
        };
        if let Err(r) = throttles.key_failures_by_address.begin(address, now) {
            if counted_by_id {
                throttles.key_failures_by_id.end(lookup_id, now, false);
            }
            return Err(refused(r.retry_after_ms, "too many failed API key checks from this address"));
        }
        Ok(KeyCheck { shard, lookup_id, address, counted_by_id, ended: false })
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
        if self.counted_by_id {
            throttles.key_failures_by_id.end(self.lookup_id, now, failed);
        }
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
/// waiters (or letting them look again when there is no cacheable verdict).
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
