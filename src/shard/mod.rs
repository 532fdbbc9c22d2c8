//! The per-core state of an HTTP core: its key table and the key-cache protocol
//! (`auth`), its fairness counters, its ticket slab, its id generator, its page slots,
//! its JSON scratch space and its counters. Everything here is owned by one core and
//! touched only by it (`RefCell`, never a lock); what crosses cores is the rate window
//! (an atomic), the hand-off rings and the command queues.

pub mod auth;
pub mod keytable;
pub mod metrics;
pub mod stream;

use std::cell::{Cell, RefCell, RefMut};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use ahash::AHashMap;
use uuid::Uuid;

use crate::auth::pool::HashPool;
use crate::auth::throttle::{address_key, Refused, Throttle};
use crate::handoff::commands::{CommandSender, StorageStatus};
use crate::handoff::tickets::Tickets;
use crate::handoff::{Control, Handoff};
use crate::util::ids::IdGenerator;
use crate::util::json::JsonScratch;
use keytable::KeyTable;
use metrics::CoreMetrics;

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
    /// This process's random id (chosen at start-up): the prefix of the request ids it
    /// makes, so they are unique across instances and restarts.
    pub instance_id: u64,
    /// The wait for a commit above which a core's queue is standing (`None`: no
    /// shedding; `handoff::shedding`).
    pub queue_target: Option<std::time::Duration>,
    /// Events a core admits even while its queue stands: `shedding::FLOOR_BATCHES` full batches.
    pub queue_floor: usize,
    /// A keep-alive comment at least this often on an idle event stream.
    pub stream_keep_alive: std::time::Duration,
}

/// Longest request id the server makes (`Shard::next_request_id`).
pub const REQUEST_ID_GENERATED_BYTES_MAX: usize = 48;

/// Keys each throttle tracks at most (per core).
const THROTTLE_ENTRIES_MAX: usize = 65_536;
/// Key rotations per organisation per minute on a core: each costs an Argon2 hash.
pub const ROTATIONS_PER_ORG_MAX: u32 = 10;
/// Signing-secret rotations and replays per organisation per minute on a core: a
/// replay rewrites up to 10 000 rows on the shared read lane.
pub const DELIVERY_CONTROLS_PER_ORG_MAX: u32 = 30;

/// This core's fairness counters (`auth::throttle`).
struct Throttles {
    key_failures_by_id: Throttle<i64>,
    key_failures_by_address: Throttle<u128>,
    signups_by_address: Throttle<u128>,
    rotations_by_org: Throttle<Uuid>,
    delivery_controls_by_org: Throttle<Uuid>,
}

/// Shared resources a core is built from (all `Send`, cloned into each core thread).
#[derive(Clone)]
pub struct ShardParts {
    pub handoff: Arc<Handoff>,
    pub commands: CommandSender,
    pub status: Arc<StorageStatus>,
    pub hash_pool: HashPool,
    pub settings: Arc<ShardSettings>,
    /// One per core, by core number.
    pub metrics: Vec<Arc<CoreMetrics>>,
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

/// One HTTP core's state. Created on its core's thread, dies with it.
pub struct Shard {
    core: usize,
    /// Verified and known-bad keys; only `auth` reads and writes it.
    keys: RefCell<KeyTable>,
    /// Key digests being resolved right now, with the requests waiting on them.
    resolving: RefCell<AHashMap<[u8; 32], auth::Waiters>>,
    tickets: Tickets,
    commands: CommandSender,
    status: Arc<StorageStatus>,
    hash_pool: HashPool,
    handoff: Arc<Handoff>,
    settings: Arc<ShardSettings>,
    /// This core's counters, which only it writes.
    metrics: Arc<CoreMetrics>,
    ids: RefCell<IdGenerator>,
    /// Requests served by this core, for request ids.
    requests: Cell<u64>,
    /// Fairness counters for costly work.
    throttles: RefCell<Throttles>,
    /// Page slots not taken (`PAGE_SLOTS_PER_CORE` at most).
    page_slots: Rc<Cell<usize>>,
    /// The JSON gate's and simd-json's scratch space, reused by every request.
    json: RefCell<JsonScratch>,
    /// Held stream reads, by organisation.
    stream: stream::StreamWaiters,
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
            delivery_controls_by_org: Throttle::new(DELIVERY_CONTROLS_PER_ORG_MAX, THROTTLE_ENTRIES_MAX),
        };
        Shard {
            core,
            keys: RefCell::new(KeyTable::new(settings.key_cache_max, settings.negative_cache_max)),
            resolving: RefCell::new(AHashMap::new()),
            tickets: Tickets::new(
                Arc::clone(&parts.handoff),
                core,
                settings.queue_target,
                settings.queue_floor,
            ),
            commands: parts.commands,
            status: parts.status,
            hash_pool: parts.hash_pool,
            metrics: Arc::clone(&parts.metrics[core]),
            handoff: parts.handoff,
            settings: parts.settings,
            ids: RefCell::new(IdGenerator::seeded()),
            requests: Cell::new(0),
            throttles: RefCell::new(throttles),
            page_slots: Rc::new(Cell::new(PAGE_SLOTS_PER_CORE)),
            json: RefCell::new(JsonScratch::default()),
            stream: stream::StreamWaiters::default(),
        }
    }

    pub fn tickets(&self) -> &Tickets {
        &self.tickets
    }

    pub fn commands(&self) -> &CommandSender {
        &self.commands
    }

    pub fn status(&self) -> &StorageStatus {
        &self.status
    }

    pub fn handoff(&self) -> &Handoff {
        &self.handoff
    }

    pub fn hash_pool(&self) -> &HashPool {
        &self.hash_pool
    }

    pub fn settings(&self) -> &ShardSettings {
        &self.settings
    }

    pub fn metrics(&self) -> &CoreMetrics {
        &self.metrics
    }

    /// The JSON scratch space, for one request at a time (no await while held).
    pub fn json(&self) -> RefMut<'_, JsonScratch> {
        self.json.borrow_mut()
    }

    /// Counts a sign-up from `peer` (open sign-up: each costs an Argon2 hash).
    pub fn admit_signup(&self, peer: IpAddr, now_ms: u64) -> Result<(), Refused> {
        self.throttles.borrow_mut().signups_by_address.take(address_key(peer), now_ms)
    }

    /// Counts a key rotation of `org_id`.
    pub fn admit_rotation(&self, org_id: Uuid, now_ms: u64) -> Result<(), Refused> {
        self.throttles.borrow_mut().rotations_by_org.take(org_id, now_ms)
    }

    /// Counts a signing-secret rotation or a replay of `org_id`.
    pub fn admit_delivery_control(&self, org_id: Uuid, now_ms: u64) -> Result<(), Refused> {
        self.throttles.borrow_mut().delivery_controls_by_org.take(org_id, now_ms)
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

    /// A request id unique across processes and restarts: this process's random
    /// instance id, the core and its request count, in hex (`3f9a1c0d5e7b2a41-0-1a`):
    /// at most 16 + 1 + 16 + 1 + 16 bytes, all of them valid in a client's own
    /// `X-Request-Id`. Returns its length in `out`.
    pub fn next_request_id(&self, out: &mut [u8; REQUEST_ID_GENERATED_BYTES_MAX]) -> usize {
        let n = self.requests.get() + 1;
        self.requests.set(n);
        let mut cursor = std::io::Cursor::new(&mut out[..]);
        let instance = self.settings.instance_id;
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{instance:016x}-{:x}-{n:x}", self.core));
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
