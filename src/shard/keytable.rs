//! The per-core key table: verified keys (by lookup id) with the digest they must
//! match, and a negative cache of digests known to be wrong. Core-local, no locks.
//! A hit costs one SHA-256 of the presented key (~0.3 µs) and a constant-time compare;
//! Argon2 only ever runs on a miss, in the blocking pool.

use std::sync::Arc;

use ahash::AHashMap;
use uuid::Uuid;

use crate::auth::keys::constant_time_eq;
use crate::model::Org;

/// How long a wrong key is remembered as wrong.
pub const NEGATIVE_TTL_MS: u64 = 60_000;
/// Organisations whose last revocation epoch is remembered; beyond it the record is
/// reset and every verdict in flight counts as crossed by a revocation (once).
const REVOKED_TRACKED_MAX: usize = 4096;

struct Verified {
    digest: [u8; 32],
    org: Arc<Org>,
}

/// Result of a table lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit(Arc<Org>),
    /// Recently found wrong: answer 401 without asking anyone.
    KnownBad,
    /// Resolve through the storage core and the Argon2 pool.
    Miss,
}

/// Owned by one HTTP core's shard.
pub struct KeyTable {
    /// Verified keys by lookup id; at most `verified_max` entries.
    verified: AHashMap<i64, Verified>,
    /// Digests of keys found wrong, with the time (ms) they stop being remembered;
    /// at most `negative_max` entries.
    negative: AHashMap<[u8; 32], u64>,
    verified_max: usize,
    negative_max: usize,
    /// Bumped by every revocation. A miss records it when it starts; its verdict is
    /// cached only if its own organisation was not revoked since (`revoked_at`), so one
    /// tenant rotating in a loop cannot keep other tenants' keys out of the cache.
    epoch: u64,
    /// The epoch of each organisation's last revocation; at most `REVOKED_TRACKED_MAX`.
    revoked_at: AHashMap<Uuid, u64>,
    /// The epoch of the last revocation of every key (or of a reset of `revoked_at`).
    all_revoked_at: u64,
}

impl KeyTable {
    pub fn new(verified_max: usize, negative_max: usize) -> KeyTable {
        assert!(verified_max > 0 && negative_max > 0);
        KeyTable {
            verified: AHashMap::new(),
            negative: AHashMap::new(),
            verified_max,
            negative_max,
            epoch: 0,
            revoked_at: AHashMap::new(),
            all_revoked_at: 0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn lookup(&self, lookup_id: i64, digest: &[u8; 32], now_ms: u64) -> Lookup {
        if let Some(entry) = self.verified.get(&lookup_id) {
            if constant_time_eq(&entry.digest, digest) {
                return Lookup::Hit(Arc::clone(&entry.org));
            }
        }
        match self.negative.get(digest) {
            Some(&until) if now_ms < until => Lookup::KnownBad,
            _ => Lookup::Miss,
        }
    }

    /// True when nothing revoked `org_id`'s keys (or every key) since `epoch`.
    fn unrevoked_since(&self, org_id: Uuid, epoch: u64) -> bool {
        self.all_revoked_at <= epoch && self.revoked_at.get(&org_id).is_none_or(|&at| at <= epoch)
    }

    /// Caches a verified key unless its organisation was revoked since `epoch` was read.
    pub fn insert_verified(&mut self, lookup_id: i64, digest: [u8; 32], org: Arc<Org>, epoch: u64) -> bool {
        if !self.unrevoked_since(org.id, epoch) {
            return false;
        }
        if self.verified.len() >= self.verified_max && !self.verified.contains_key(&lookup_id) {
            evict_one(&mut self.verified);
        }
        self.negative.remove(&digest);
        self.verified.insert(lookup_id, Verified { digest, org });
        true
    }

    pub fn insert_negative(&mut self, digest: [u8; 32], now_ms: u64) {
        if self.negative.len() >= self.negative_max {
            self.negative.retain(|_, until| *until > now_ms);
            if self.negative.len() >= self.negative_max {
                evict_one(&mut self.negative);
            }
        }
        self.negative.insert(digest, now_ms + NEGATIVE_TTL_MS);
    }

    /// Drops every cached key of `org_id` (rotation). Scans the table: rotations are
    /// rare, lookups are not, so the table has no second index to keep up to date.
    pub fn revoke_org(&mut self, org_id: Uuid) {
        self.verified.retain(|_, entry| entry.org.id != org_id);
        self.epoch += 1;
        if self.revoked_at.len() >= REVOKED_TRACKED_MAX && !self.revoked_at.contains_key(&org_id) {
            self.revoked_at.clear();
            self.all_revoked_at = self.epoch;
        }
        self.revoked_at.insert(org_id, self.epoch);
    }

    /// Drops every cached key (revocations may have been missed).
    pub fn revoke_all(&mut self) {
        self.verified.clear();
        self.epoch += 1;
        self.revoked_at.clear();
        self.all_revoked_at = self.epoch;
    }

    pub fn len(&self) -> usize {
        self.verified.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }
}

fn evict_one<K: Copy + Eq + std::hash::Hash, V>(map: &mut AHashMap<K, V>) {
    if let Some(&key) = map.keys().next() {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tier;

    fn org(id: u128) -> Arc<Org> {
        Arc::new(Org {
            id: Uuid::from_u128(id),
            name: "o".into(),
            tier: Tier::Free,
            rate_limit_per_minute: 100,
            created_at_micros: 0,
            rate: Arc::default(),
        })
    }

    #[test]
    fn hit_needs_the_right_digest() {
        let mut table = KeyTable::new(10, 10);
        assert!(table.insert_verified(7, [1; 32], org(1), table.epoch()));
        assert!(matches!(table.lookup(7, &[1; 32], 0), Lookup::Hit(_)));
        assert!(matches!(table.lookup(7, &[2; 32], 0), Lookup::Miss));
        assert!(matches!(table.lookup(8, &[1; 32], 0), Lookup::Miss));
    }

    #[test]
    fn negative_entries_expire() {
        let mut table = KeyTable::new(10, 10);
        table.insert_negative([9; 32], 1_000);
        assert!(matches!(table.lookup(1, &[9; 32], 1_000 + NEGATIVE_TTL_MS - 1), Lookup::KnownBad));
        assert!(matches!(table.lookup(1, &[9; 32], 1_000 + NEGATIVE_TTL_MS), Lookup::Miss));
    }

    #[test]
    fn revocation_evicts_and_blocks_stale_inserts() {
        let mut table = KeyTable::new(10, 10);
        table.insert_verified(1, [1; 32], org(1), table.epoch());
        table.insert_verified(2, [2; 32], org(2), table.epoch());
        let before = table.epoch();
        table.revoke_org(Uuid::from_u128(1));
        assert!(matches!(table.lookup(1, &[1; 32], 0), Lookup::Miss));
        assert!(matches!(table.lookup(2, &[2; 32], 0), Lookup::Hit(_)));
        assert!(!table.insert_verified(1, [1; 32], org(1), before), "resolved before the revocation");
    }

    #[test]
    fn one_tenants_rotations_do_not_keep_other_tenants_out_of_the_cache() {
        // Regression: every revocation bumped one epoch that made every verdict in
        // flight uncacheable, so a tenant rotating in a loop starved all the others.
        let mut table = KeyTable::new(10, 10);
        let started = table.epoch();
        for _ in 0..100 {
            table.revoke_org(Uuid::from_u128(1));
        }
        assert!(
            table.insert_verified(2, [2; 32], org(2), started),
            "another organisation's verdict is cached"
        );
        assert!(!table.insert_verified(1, [1; 32], org(1), started), "the rotating one's is not");
        table.revoke_all();
        assert!(!table.insert_verified(3, [3; 32], org(3), started), "revoke_all crosses every verdict");
        assert!(table.insert_verified(3, [3; 32], org(3), table.epoch()));
    }

    #[test]
    fn the_revocation_record_is_bounded() {
        let mut table = KeyTable::new(10, 10);
        let started = table.epoch();
        for id in 0..(REVOKED_TRACKED_MAX as u128 + 10) {
            table.revoke_org(Uuid::from_u128(1_000 + id));
        }
        assert!(table.revoked_at.len() <= REVOKED_TRACKED_MAX);
        assert!(!table.insert_verified(2, [2; 32], org(2), started), "a reset counts as a revocation of all");
    }

    #[test]
    fn tables_are_bounded() {
        let mut table = KeyTable::new(2, 2);
        for i in 0..10 {
            table.insert_verified(i, [i as u8; 32], org(i as u128), table.epoch());
            table.insert_negative([100 + i as u8; 32], 0);
        }
        assert_eq!(table.len(), 2);
        assert!(table.negative.len() <= 2);
    }
}
