//! The per-core state of an HTTP core: its key table, its ticket slab, its id
//! generator and its JSON buffers. Everything here is owned by one core and touched
//! only by it (`RefCell`, never a lock); what crosses cores is the rate window (an
//! atomic) and the hand-off rings.

pub mod keytable;
pub mod ratelimit;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use ahash::AHashMap;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::auth::pool::HashPool;
use crate::auth::throttle::Throttle;
use crate::handoff::tickets::Tickets;
use crate::handoff::{Control, Handoff};
use crate::metrics::{CoreMetrics, Registry};
use crate::model::Org;
use crate::storage::StorageHandle;
use keytable::KeyTable;

/// Settings every core reads; fixed at start-up.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Bearer token required by `POST /api/keys/generate`, if sign-up is closed.
    pub admin_token: Option<String>,
    pub key_cache_max: usize,
    pub negative_cache_max: usize,
    /// Failed (or in-flight) key checks per lookup id per minute on a core; 0 = off.
    pub key_failures_per_id_max: u32,
    /// Failed (or in-flight) key checks per client address per minute on a core; 0 = off.
    pub key_failures_per_address_max: u32,
    /// Sign-ups per client address per minute on a core; 0 = off.
    pub signups_per_address_max: u32,
}

/// Keys each throttle tracks at most (per core).
const THROTTLE_ENTRIES_MAX: usize = 65_536;
/// Key rotations per organisation per minute on a core: each costs an Argon2 hash.
pub const ROTATIONS_PER_ORG_MAX: u32 = 10;

/// This core's fairness counters (`auth::throttle`).
pub struct Throttles {
    pub key_failures_by_id: Throttle<i64>,
    pub key_failures_by_address: Throttle<u128>,
    pub signups_by_address: Throttle<u128>,
    pub rotations_by_org: Throttle<Uuid>,
}

/// Shared resources a core is built from (all `Send`, cloned into each core thread).
#[derive(Clone)]
pub struct ShardParts {
    pub handoff: Arc<Handoff>,
    pub storage: StorageHandle,
    pub hash_pool: HashPool,
    pub settings: Arc<ShardSettings>,
    pub metrics: Arc<Registry>,
}

/// Inbox pages (up to 4 MiB of event JSON each, held twice while written: built and
/// framed) this core may have in progress at once; beyond it a page request gets 503.
/// With the storage core's own bound on concurrent page reads, this caps what pages
/// cost in memory: 8 pages x 2 copies x ~4.3 MiB = ~70 MiB per core at worst.
pub const PAGE_SLOTS_PER_CORE: usize = 8;

/// One of this core's page slots; given back when dropped (once the page is written).
pub struct PageSlot {
    free: Rc<Cell<usize>>,
}

impl Drop for PageSlot {
    fn drop(&mut self) {
        self.free.set(self.free.get() + 1);
    }
}

/// Waiters for a key that one request on this core is already resolving.
pub type AuthWaiters = Vec<oneshot::Sender<Option<Arc<Org>>>>;

pub struct Shard {
    pub core: usize,
    pub keys: RefCell<KeyTable>,
    /// Key digests being resolved right now, with the requests waiting on them
    /// (single flight: one Argon2 verification per key per core, however many
    /// connections present it at once).
    pub resolving: RefCell<AHashMap<[u8; 32], AuthWaiters>>,
    pub tickets: Tickets,
    pub storage: StorageHandle,
    pub hash_pool: HashPool,
    pub handoff: Arc<Handoff>,
    pub settings: Arc<ShardSettings>,
    /// Every core's counters (for `/metrics`) and this core's own, which only it writes.
    pub registry: Arc<Registry>,
    pub metrics: Arc<CoreMetrics>,
    ids: RefCell<IdGenerator>,
    /// Requests served by this core, for request ids.
    requests: std::cell::Cell<u64>,
    /// Fairness counters for costly work; core-local.
    pub throttles: RefCell<Throttles>,
    /// Page slots not taken (`PAGE_SLOTS_PER_CORE` at most).
    page_slots: Rc<Cell<usize>>,
    /// The JSON gate's and simd-json's scratch space, reused by every request on this core.
    pub json: RefCell<crate::json::JsonScratch>,
}

impl Shard {
    pub fn new(core: usize, parts: ShardParts) -> Shard {
        let settings = &parts.settings;
        let throttles = Throttles {
            key_failures_by_id: Throttle::new(settings.key_failures_per_id_max, THROTTLE_ENTRIES_MAX),
            key_failures_by_address: Throttle::new(
                settings.key_failures_per_address_max,
                THROTTLE_ENTRIES_MAX,
            ),
            signups_by_address: Throttle::new(settings.signups_per_address_max, THROTTLE_ENTRIES_MAX),
            rotations_by_org: Throttle::new(ROTATIONS_PER_ORG_MAX, THROTTLE_ENTRIES_MAX),
        };
        Shard {
            core,
            keys: RefCell::new(KeyTable::new(
                parts.settings.key_cache_max,
                parts.settings.negative_cache_max,
            )),
            resolving: RefCell::new(AHashMap::new()),
            tickets: Tickets::new(Arc::clone(&parts.handoff), core),
            storage: parts.storage,
            hash_pool: parts.hash_pool,
            handoff: parts.handoff,
            settings: parts.settings,
            metrics: Arc::clone(&parts.metrics.cores[core]),
            registry: parts.metrics,
            ids: RefCell::new(IdGenerator::seeded()),
            requests: std::cell::Cell::new(0),
            page_slots: Rc::new(Cell::new(PAGE_SLOTS_PER_CORE)),
            throttles: RefCell::new(throttles),
            json: RefCell::new(crate::json::JsonScratch::default()),
        }
    }

    /// Takes a page slot, `None` when all are in use (answer 503).
    pub fn take_page_slot(&self) -> Option<PageSlot> {
        let free = self.page_slots.get();
        if free == 0 {
            return None;
        }
        self.page_slots.set(free - 1);
        Some(PageSlot { free: Rc::clone(&self.page_slots) })
    }

    /// A UUIDv7 for an event created at `now_micros`.
    pub fn next_id(&self, now_micros: i64) -> Uuid {
        self.ids.borrow_mut().next_v7(now_micros)
    }

    /// A request id unique in this process: the core and its request count, in hex.
    pub fn next_request_id(&self, out: &mut [u8; 24]) -> usize {
        let n = self.requests.get() + 1;
        self.requests.set(n);
        let mut cursor = std::io::Cursor::new(&mut out[..]);
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{:x}-{:x}", self.core, n));
        cursor.position() as usize
    }

    /// Applies a control message from the storage core.
    pub fn apply(&self, control: Control) {
        match control {
            Control::RevokeOrg { org_id, barrier } => {
                self.keys.borrow_mut().revoke_org(org_id);
                barrier.arrive();
            }
            Control::RevokeAll { barrier } => {
                self.keys.borrow_mut().revoke_all();
                barrier.arrive();
            }
            // Handled by the core's runtime, which owns its listener and connections.
            Control::Drain => {}
        }
    }
}

/// UUIDv7 from a per-core generator: 48 bits of milliseconds, then the microseconds
/// within that millisecond in the 12-bit `rand_a` field (RFC 9562 §6.2, method 3), then
/// 62 random bits from a fast PRNG (wyrand) seeded from the OS. Because the id carries
/// the event's `created_at` to the microsecond, ordering by id is ordering by
/// `(created_at, id)`: the primary key `(org_id, id)` serves the inbox order and its
/// cursors. Ids are not secrets, and a per-core generator needs no lock (uuid's
/// `now_v7` shares one context across threads).
struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    fn seeded() -> IdGenerator {
        let mut seed = [0u8; 8];
        if getrandom::getrandom(&mut seed).is_err() {
            // Fall back to the clock and the address of a local: still unique enough
            // combined with the millisecond prefix.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed = ((nanos as u64) ^ (&seed as *const _ as u64)).to_le_bytes();
        }
        IdGenerator { state: u64::from_le_bytes(seed) }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let product = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        (product as u64) ^ ((product >> 64) as u64)
    }

    fn next_v7(&mut self, now_micros: i64) -> Uuid {
        let micros = now_micros.max(0) as u64;
        let (millis, sub_millis) = (micros / 1000, (micros % 1000) as u16);
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        bytes[6] = 0x70 | (sub_millis >> 8) as u8;
        bytes[7] = sub_millis as u8;
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        Uuid::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_ordered_by_microsecond_and_distinct() {
        let mut ids = IdGenerator::seeded();
        let micros =
            [1_700_000_000_000_000i64, 1_700_000_000_000_001, 1_700_000_000_000_999, 1_700_000_000_001_000];
        let generated: Vec<Uuid> = micros.iter().map(|&m| ids.next_v7(m)).collect();
        assert!(generated.windows(2).all(|w| w[0] < w[1]), "{generated:?}");
        for id in &generated {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
        let (secs, nanos) = generated[2].get_timestamp().unwrap().to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, 1_700_000_000_000);
        assert_ne!(ids.next_v7(micros[0]), generated[0]);
    }
}
