//! The hand-off between HTTP cores and the storage core.
//!
//! Per HTTP core there is one `CoreLink`: a bounded `ArrayQueue` of events going to the
//! storage core, a bounded queue of completions coming back, a queue of control
//! messages (key revocations) and one `AtomicWaker` for the core's dispatcher task.
//! Cost per event: one push (~0.1 µs), one completion push, and one wake per core per
//! committed batch, not per event.
//!
//! The storage core's writers sleep on a tokio `Notify` only when every ring is empty,
//! announcing it in `sleepers` first; producers check `sleepers` after pushing
//! (flag-then-recheck with a SeqCst fence on both sides), so a busy storage core is
//! never signalled and an idle one never misses an event.

pub mod commands;
pub mod shedding;
pub mod tickets;

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;
use uuid::Uuid;

/// One accepted-for-writing event on its way to the storage core.
#[derive(Debug)]
pub struct EventRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    /// The `type` field, unescaped.
    pub event_type: String,
    /// The payload's exact text as received (PostgreSQL reads it as `jsonb`, so
    /// numbers keep every digit).
    pub payload: String,
    pub dedup_id: Option<String>,
    pub created_at_micros: i64,
    /// Ticket slot on the submitting core, where the outcome is delivered.
    pub slot: u32,
}

impl EventRecord {
    /// Approximate bytes this record makes the storage core send.
    pub fn wire_bytes(&self) -> usize {
        64 + self.event_type.len() + self.payload.len() + self.dedup_id.as_ref().map_or(0, String::len)
    }
}

/// What became of an event, delivered back to its waiting request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: the 202 may be sent.
    Accepted,
    /// Not stored: the organisation already has this `dedup_id` (the original's id).
    Duplicate { original: Uuid },
    /// Not stored: PostgreSQL refused this event's data (a 400 naming the reason).
    Rejected { message: String },
    /// Not stored: the database is unreachable (a 503).
    Unavailable,
}

/// A message from the storage core to every HTTP core.
#[derive(Debug)]
pub enum Control {
    /// Drop every cached key of this organisation, then count down the barrier.
    RevokeOrg { org_id: Uuid, barrier: Arc<Barrier> },
    /// Drop every cached key, then count down the barrier.
    RevokeAll { barrier: Arc<Barrier> },
    /// Shut down: stop accepting, close idle connections, finish requests in progress.
    Drain,
}

/// Counts down once per core; the storage core awaits the last one.
#[derive(Debug)]
pub struct Barrier {
    remaining: AtomicUsize,
    done: Notify,
}

impl Barrier {
    pub fn new(parties: usize) -> Arc<Barrier> {
        Arc::new(Barrier { remaining: AtomicUsize::new(parties), done: Notify::new() })
    }

    pub fn arrive(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    pub async fn wait(&self) {
        if self.remaining.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
    }
}

/// The channels between one HTTP core and the storage core. Shared through `Arc`;
/// lives as long as the process.
pub struct CoreLink {
    /// Events from this core; the core pushes, the storage core pops.
    pub events: ArrayQueue<EventRecord>,
    /// (slot, outcome) from the storage core; capacity equals the number of ticket
    /// slots, so a push can never find it full.
    completions: ArrayQueue<(u32, Outcome)>,
    /// Control messages from the storage core.
    control: ArrayQueue<Control>,
    /// Organisations that just got committed events, for this core's held stream
    /// reads; `notices_overflow` stands for "any organisation" when it was full.
    notices: ArrayQueue<Uuid>,
    notices_overflow: AtomicBool,
    /// Whether this core is shedding load (its queue is standing), for the metrics.
    pub shedding: AtomicBool,
    /// Wakes this core's dispatcher task (a glommio task; woken from a foreign thread).
    waker: AtomicWaker,
}

/// Control messages a core can have queued before the sender waits.
const CONTROL_MAX: usize = 64;
/// Commit notices a core can have queued; beyond it they collapse into one "every
/// organisation" notice (held reads re-check; nothing is lost).
const NOTICES_MAX: usize = 1024;

impl CoreLink {
    fn new(ring_capacity: usize) -> CoreLink {
        CoreLink {
            events: ArrayQueue::new(ring_capacity),
            completions: ArrayQueue::new(ring_capacity),
            control: ArrayQueue::new(CONTROL_MAX),
            notices: ArrayQueue::new(NOTICES_MAX),
            notices_overflow: AtomicBool::new(false),
            shedding: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// Storage side: deliver an outcome. Call `wake` once after a batch.
    pub fn complete(&self, slot: u32, outcome: Outcome) {
        let pushed = self.completions.push((slot, outcome));
        assert!(pushed.is_ok(), "completion ring overflow: more outcomes than ticket slots");
    }

    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Storage side: queue a control message; `false` if the queue is full.
    pub fn send_control(&self, control: Control) -> Result<(), Control> {
        self.control.push(control)?;
        self.waker.wake();
        Ok(())
    }
}

/// All links plus the storage core's sleep/wake state.
pub struct Handoff {
    pub links: Vec<Arc<CoreLink>>,
    /// Stream reads held on any core of this process; commit notices are sent only
    /// while there is one.
    pub stream_waiters: AtomicUsize,
    /// Writers currently asleep (or about to sleep) on `notify`.
    sleepers: AtomicUsize,
    notify: Notify,
}

impl Handoff {
    pub fn new(cores: usize, ring_capacity: usize) -> Arc<Handoff> {
        assert!(ring_capacity > 0 && ring_capacity <= u32::MAX as usize);
        Arc::new(Handoff {
            links: (0..cores).map(|_| Arc::new(CoreLink::new(ring_capacity))).collect(),
            sleepers: AtomicUsize::new(0),
            notify: Notify::new(),
            stream_waiters: AtomicUsize::new(0),
        })
    }

    /// Storage side, after a commit (or a notice from another instance): tells every
    /// core which organisations got events; `None` means any organisation. Costs
    /// nothing while no stream read is held.
    pub fn committed(&self, orgs: Option<&[Uuid]>) {
        if self.stream_waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        for link in &self.links {
            match orgs {
                Some(orgs) => {
                    if orgs.iter().any(|org| link.notices.push(*org).is_err()) {
                        link.notices_overflow.store(true, Ordering::Release);
                    }
                }
                None => link.notices_overflow.store(true, Ordering::Release),
            }
            link.waker.wake();
        }
    }

    /// Producer side, after a successful push.
    pub fn signal(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.notify.notify_one();
        }
    }

    fn any_pending(&self) -> bool {
        self.links.iter().any(|link| !link.events.is_empty())
    }

    /// Storage side: returns when some ring may have events.
    pub async fn wait_for_events(&self) {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        if !self.any_pending() {
            self.notify.notified().await;
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Storage side: takes up to `events_max` events / `bytes_max` bytes, round-robin
    /// over the rings starting at `*cursor`, so no core starves another.
    pub fn drain(
        &self,
        batch: &mut Vec<(usize, EventRecord)>,
        cursor: &mut usize,
        events_max: usize,
        bytes_max: usize,
    ) {
        let cores = self.links.len();
        let mut bytes = 0;
        let mut idle_rings = 0;
        while batch.len() < events_max && bytes < bytes_max && idle_rings < cores {
            let core = *cursor % cores;
            *cursor = cursor.wrapping_add(1);
            match self.links[core].events.pop() {
                Some(record) => {
                    idle_rings = 0;
                    bytes += record.wire_bytes();
                    batch.push((core, record));
                }
                None => idle_rings += 1,
            }
        }
    }

    /// Events waiting in all rings (a gauge).
    pub fn depth(&self) -> usize {
        self.links.iter().map(|link| link.events.len()).sum()
    }

    /// True while every ring has at least 10% headroom.
    pub fn has_headroom(&self) -> bool {
        self.links.iter().all(|link| link.events.len() * 10 < link.events.capacity() * 9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(slot: u32) -> EventRecord {
        EventRecord {
            id: Uuid::nil(),
            org_id: Uuid::nil(),
            event_type: "t".into(),
            payload: "{}".into(),
            dedup_id: None,
            created_at_micros: 0,
            slot,
        }
    }

    #[test]
    fn drain_is_round_robin_and_bounded() {
        let handoff = Handoff::new(2, 8);
        for slot in 0..4 {
            handoff.links[0].events.push(record(slot)).unwrap();
        }
        handoff.links[1].events.push(record(100)).unwrap();
        let mut batch = Vec::new();
        let mut cursor = 0;
        handoff.drain(&mut batch, &mut cursor, 3, usize::MAX);
        let taken: Vec<_> = batch.iter().map(|(core, r)| (*core, r.slot)).collect();
        assert_eq!(taken, vec![(0, 0), (1, 100), (0, 1)]);
        batch.clear();
        handoff.drain(&mut batch, &mut cursor, 100, usize::MAX);
        assert_eq!(batch.len(), 2);
        assert_eq!(handoff.depth(), 0);
    }

    #[test]
    fn ring_is_bounded() {
        let handoff = Handoff::new(1, 2);
        assert!(handoff.links[0].events.push(record(0)).is_ok());
        assert!(handoff.links[0].events.push(record(1)).is_ok());
        assert!(handoff.links[0].events.push(record(2)).is_err());
        assert!(!handoff.has_headroom());
    }

    #[test]
    fn a_signal_before_the_wait_is_not_lost() {
        let handoff = Handoff::new(1, 2);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        handoff.links[0].events.push(record(0)).unwrap();
        handoff.signal();
        // Returns at once: the ring is non-empty, so the writer never sleeps.
        runtime.block_on(handoff.wait_for_events());
    }
}
