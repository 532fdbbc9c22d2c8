//! The HTTP core's side of the hand-off: a slab of ticket slots for requests waiting
//! on a commit, and the dispatcher that completes them when the storage core answers.
//!
//! Everything here is core-local (`Rc<RefCell<…>>`): the only cross-thread traffic is
//! the ring push, the completion pop and the waker. Each ticket remembers when it was
//! handed off, so the core knows how long its events wait for a commit and sheds load
//! when that wait becomes a standing queue (`shedding`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::shedding::Shedding;
use super::{Control, CoreLink, EventRecord, Handoff, Outcome};

enum Slot {
    Free,
    /// A request is waiting; its waker once it has been polled.
    Waiting(Option<Waker>),
    /// The outcome arrived before the request polled again.
    Done(Outcome),
    /// The request went away (connection closed); free the slot on completion.
    Abandoned,
}

struct Slab {
    slots: Vec<Slot>,
    /// When each slot's event was handed off (µs since `Tickets::epoch`).
    handed_off_us: Vec<u64>,
    free: Vec<u32>,
    shedding: Shedding,
}

/// Why an event could not be handed off.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Every ticket slot is taken or the ring is full: answer 503.
    Full,
}

/// This core's tickets and link. Owned by the core's shard; lives as long as it.
pub struct Tickets {
    slab: Rc<RefCell<Slab>>,
    core: usize,
    handoff: Arc<Handoff>,
    epoch: Instant,
}

impl Tickets {
    /// `slots` bounds the events this core can have in flight; it equals the ring
    /// capacity so the completion ring can never overflow. `queue_target`: the wait for
    /// a commit above which a queue counts as standing (`None`: never shed);
    /// `queue_floor`: events always admitted even then (at most half the ring, at least 1).
    pub fn new(
        handoff: Arc<Handoff>,
        core: usize,
        queue_target: Option<Duration>,
        queue_floor: usize,
    ) -> Tickets {
        let slots = handoff.links[core].events.capacity();
        let floor = queue_floor.min(slots / 2).max(1);
        Tickets {
            slab: Rc::new(RefCell::new(Slab {
                slots: (0..slots).map(|_| Slot::Free).collect(),
                handed_off_us: vec![0; slots],
                free: (0..slots as u32).rev().collect(),
                shedding: Shedding::new(queue_target, floor),
            })),
            core,
            handoff,
            epoch: Instant::now(),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Whether this core takes `n` more events now: the ring has room and its queue is
    /// not standing (or they fit under the floor). Ask before admitting them against
    /// the rate limit; a refusal is a 503 with nothing stored.
    pub fn admits(&self, n: usize) -> bool {
        let now_us = self.now_us();
        let mut slab = self.slab.borrow_mut();
        let waiting = slab.slots.len() - slab.free.len();
        let admitted = n <= slab.free.len() && slab.shedding.admits(now_us, waiting, n);
        self.link().shedding.store(slab.shedding.standing(), Ordering::Relaxed);
        admitted
    }

    fn link(&self) -> &CoreLink {
        &self.handoff.links[self.core]
    }

    /// Pushes the event onto this core's ring and returns the future of its outcome.
    pub fn submit(&self, mut record: EventRecord) -> Result<TicketFuture, SubmitError> {
        let slot = {
            let mut slab = self.slab.borrow_mut();
            let slot = slab.free.pop().ok_or(SubmitError::Full)?;
            slab.slots[slot as usize] = Slot::Waiting(None);
            slab.handed_off_us[slot as usize] = self.now_us();
            slot
        };
        record.slot = slot;
        if self.link().events.push(record).is_err() {
            let mut slab = self.slab.borrow_mut();
            slab.slots[slot as usize] = Slot::Free;
            slab.free.push(slot);
            return Err(SubmitError::Full);
        }
        self.handoff.signal();
        Ok(TicketFuture { slab: Rc::clone(&self.slab), slot, finished: false })
    }

    /// Closes the shedding interval if it is over and publishes the verdict.
    pub fn refresh(&self) {
        let _ = self.admits(0);
    }

    /// Tickets currently outstanding on this core.
    pub fn in_flight(&self) -> usize {
        let slab = self.slab.borrow();
        slab.slots.len() - slab.free.len()
    }

    /// The dispatcher: runs for the life of the core, completing tickets, applying
    /// control messages and passing on commit notices (`None`: any organisation) as
    /// the storage core sends them.
    pub async fn dispatch(
        &self,
        mut on_control: impl FnMut(Control),
        mut on_commit: impl FnMut(Option<Uuid>),
    ) {
        std::future::poll_fn(|cx| {
            let link = self.link();
            link.waker.register(cx.waker());
            let mut progressed = false;
            let now_us = self.now_us();
            while let Some((slot, outcome)) = link.completions.pop() {
                self.complete(slot, outcome, now_us);
                progressed = true;
            }
            if progressed {
                let standing = self.slab.borrow().shedding.standing();
                link.shedding.store(standing, Ordering::Relaxed);
            }
            while let Some(control) = link.control.pop() {
                on_control(control);
                progressed = true;
            }
            if link.notices_overflow.swap(false, std::sync::atomic::Ordering::AcqRel) {
                while link.notices.pop().is_some() {}
                on_commit(None);
                progressed = true;
            }
            while let Some(org) = link.notices.pop() {
                on_commit(Some(org));
                progressed = true;
            }
            if progressed {
                // Poll again after other tasks run: more may have arrived meanwhile.
                cx.waker().wake_by_ref();
            }
            Poll::<()>::Pending
        })
        .await
    }

    fn complete(&self, slot: u32, outcome: Outcome, now_us: u64) {
        let mut slab = self.slab.borrow_mut();
        let waited_us = now_us.saturating_sub(slab.handed_off_us[slot as usize]);
        slab.shedding.completed(now_us, waited_us);
        let state = std::mem::replace(&mut slab.slots[slot as usize], Slot::Free);
        match state {
            Slot::Waiting(waker) => {
                slab.slots[slot as usize] = Slot::Done(outcome);
                drop(slab);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Slot::Abandoned => slab.free.push(slot),
            Slot::Free | Slot::Done(_) => panic!("completion for slot {slot} that is not waiting"),
        }
    }
}

/// Resolves to the event's outcome once its batch is committed (or refused).
pub struct TicketFuture {
    slab: Rc<RefCell<Slab>>,
    slot: u32,
    finished: bool,
}

impl Future for TicketFuture {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let slot = self.slot as usize;
        let mut slab = self.slab.borrow_mut();
        match std::mem::replace(&mut slab.slots[slot], Slot::Free) {
            Slot::Done(outcome) => {
                slab.free.push(self.slot);
                drop(slab);
                self.finished = true;
                Poll::Ready(outcome)
            }
            Slot::Waiting(_) => {
                slab.slots[slot] = Slot::Waiting(Some(cx.waker().clone()));
                Poll::Pending
            }
            Slot::Free | Slot::Abandoned => panic!("ticket {slot} polled in a state it cannot be in"),
        }
    }
}

impl Drop for TicketFuture {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut slab = self.slab.borrow_mut();
        let slot = self.slot as usize;
        match std::mem::replace(&mut slab.slots[slot], Slot::Free) {
            // The outcome arrived but nobody will read it: the slot is free now.
            Slot::Done(_) => slab.free.push(self.slot),
            // Still in the storage core's hands: free it when its completion comes.
            _ => slab.slots[slot] = Slot::Abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EventRecord {
        EventRecord {
            id: Uuid::nil(),
            org_id: Uuid::nil(),
            event_type: "t".into(),
            payload: "{}".into(),
            dedup_id: None,
            created_at_micros: 0,
            slot: 0,
        }
    }

    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(future).poll(&mut cx)
    }

    #[test]
    fn slots_bound_in_flight_events_and_are_reused() {
        let handoff = Handoff::new(1, 2);
        let tickets = Tickets::new(Arc::clone(&handoff), 0, None, 1);
        let mut first = tickets.submit(record()).unwrap();
        let _second = tickets.submit(record()).unwrap();
        assert_eq!(tickets.submit(record()).err(), Some(SubmitError::Full));
        assert!(poll_once(&mut first).is_pending());

        let popped = handoff.links[0].events.pop().unwrap();
        tickets.complete(popped.slot, Outcome::Accepted, 0);
        assert_eq!(poll_once(&mut first), Poll::Ready(Outcome::Accepted));
        drop(first);
        assert_eq!(tickets.in_flight(), 1);
    }

    #[test]
    fn abandoned_tickets_free_their_slot_on_completion() {
        let handoff = Handoff::new(1, 1);
        let tickets = Tickets::new(Arc::clone(&handoff), 0, None, 1);
        drop(tickets.submit(record()).unwrap());
        assert_eq!(tickets.in_flight(), 1, "slot stays taken while the storage core holds the event");
        let popped = handoff.links[0].events.pop().unwrap();
        tickets.complete(popped.slot, Outcome::Unavailable, 0);
        assert_eq!(tickets.in_flight(), 0);
        assert!(tickets.submit(record()).is_ok());
    }
}
