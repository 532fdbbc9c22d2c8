//! Load shedding at the hand-off: how long events wait for their commit decides whether
//! a core takes more. Sans-IO: the caller passes the time.
//!
//! The ring bounds how many events can wait, not how long: at 4 096 per core and about
//! 10 000 commits a second, a full ring is 400 ms of queue, and an open load just above
//! what the writers can commit fills it and keeps it full. What matters is whether a
//! queue is *standing*, which CoDel (Nichols and Jacobson, 2012) measures as the
//! shortest wait of an interval: a burst that drains has short waits at its tail, a
//! standing queue has none. While the shortest wait of the last interval is above the
//! target (or nothing committed in a whole interval while events waited), a core admits
//! events only while fewer than `floor` of its own wait (`FLOOR_BATCHES` full batches,
//! 2 048 by default, at most half the ring): enough to keep the writers busy and batch
//! clients served, few enough that an admitted event's wait stays bounded (four commit
//! rounds; the writers take turns). The
//! others get 503 with `Retry-After` at once, instead of a 202 seconds late. A core
//! with nothing waiting has no queue at all: it takes any request the ring can hold (a
//! client sending 1 000-event batches one after another waits for its own commits,
//! which is not a standing queue), and that ends the verdict.

use std::time::Duration;

/// Length of an observation interval.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// The floor in full batches (`--batch-events-max`): events a core always admits.
pub const FLOOR_BATCHES: usize = 4;

#[derive(Debug)]
pub struct Shedding {
    /// `None`: never shed (only the ring's capacity bounds the queue).
    target_us: Option<u64>,
    floor: usize,
    interval_end_us: u64,
    /// The shortest wait seen in this interval (`u64::MAX`: none yet).
    shortest_us: u64,
    standing: bool,
}

impl Shedding {
    /// `target`: the longest wait for a commit that is not a standing queue; `None`
    /// turns shedding off. `floor`: events a core always admits, standing queue or not
    /// (if its ring has room).
    pub fn new(target: Option<Duration>, floor: usize) -> Shedding {
        Shedding {
            target_us: target.map(|t| t.as_micros() as u64),
            floor,
            interval_end_us: 0,
            shortest_us: u64::MAX,
            standing: false,
        }
    }

    /// An event's outcome arrived `waited_us` after it was handed off.
    pub fn completed(&mut self, now_us: u64, waited_us: u64) {
        self.roll(now_us, 1);
        self.shortest_us = self.shortest_us.min(waited_us);
    }

    /// Whether `n` more events may be handed off now, with `waiting` already waiting.
    pub fn admits(&mut self, now_us: u64, waiting: usize, n: usize) -> bool {
        self.roll(now_us, waiting);
        if waiting == 0 {
            // The queue drained: whatever stood is gone.
            self.standing = false;
        }
        !self.standing || waiting + n <= self.floor
    }

    /// Whether the last interval ended with a standing queue.
    pub fn standing(&self) -> bool {
        self.standing
    }

    /// Closes the interval if it is over. `waiting`: events waiting now; an interval
    /// in which nothing committed while some waited counts as standing.
    fn roll(&mut self, now_us: u64, waiting: usize) {
        let Some(target_us) = self.target_us else { return };
        if now_us < self.interval_end_us {
            return;
        }
        self.standing = match self.shortest_us {
            u64::MAX => waiting > 0 && self.interval_end_us != 0,
            shortest => shortest > target_us,
        };
        self.shortest_us = u64::MAX;
        self.interval_end_us = now_us + INTERVAL.as_micros() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;
    const TARGET: Option<Duration> = Some(Duration::from_millis(20));

    #[test]
    fn short_waits_admit_everything_the_ring_takes() {
        let mut shedding = Shedding::new(TARGET, 8);
        assert!(shedding.admits(0, 0, 1000));
        for t in 1..=300 {
            shedding.completed(t * MS, 5 * MS);
            assert!(shedding.admits(t * MS, 1000, 1000), "at {t} ms");
        }
        assert!(!shedding.standing());
    }

    #[test]
    fn a_standing_queue_admits_up_to_the_floor_until_it_drains() {
        let mut shedding = Shedding::new(TARGET, 8);
        assert!(shedding.admits(0, 0, 1));
        // A whole interval in which no event waited less than 30 ms.
        for t in 1..=100 {
            shedding.completed(t * MS, 30 * MS);
        }
        assert!(!shedding.admits(101 * MS, 8, 1), "standing: beyond the floor");
        assert!(shedding.admits(101 * MS, 7, 1), "the floor is always admitted");
        assert!(!shedding.admits(101 * MS, 1, 8), "a request beyond the floor is not");
        // One short wait in the next interval: no longer standing after it.
        shedding.completed(150 * MS, 30 * MS);
        shedding.completed(160 * MS, 2 * MS);
        assert!(!shedding.admits(199 * MS, 100, 1), "still the previous interval's verdict");
        assert!(shedding.admits(202 * MS, 100, 1));
    }

    #[test]
    fn an_empty_queue_takes_any_request_and_ends_the_verdict() {
        let mut shedding = Shedding::new(TARGET, 8);
        assert!(shedding.admits(0, 0, 1));
        // One client's 1 000-event batches, one after another: each waits 40 ms for
        // its own commits, and nothing else waits.
        for t in 1..=100 {
            shedding.completed(t * MS, 40 * MS);
        }
        assert!(!shedding.admits(101 * MS, 8, 1), "standing while events wait");
        assert!(shedding.admits(101 * MS, 0, 1000), "nothing waits: no queue");
        assert!(!shedding.standing());
        assert!(shedding.admits(102 * MS, 500, 500));
    }

    #[test]
    fn an_interval_without_commits_while_events_wait_is_standing() {
        let mut shedding = Shedding::new(TARGET, 4);
        assert!(shedding.admits(0, 0, 1));
        assert!(shedding.admits(50 * MS, 1, 1));
        assert!(!shedding.admits(101 * MS, 4, 1), "nothing committed for 100 ms");
        // An idle core (nothing waiting) is not standing.
        let mut idle = Shedding::new(TARGET, 4);
        assert!(idle.admits(0, 0, 1));
        assert!(idle.admits(500 * MS, 0, 100));
    }

    #[test]
    fn without_a_target_nothing_is_shed() {
        let mut shedding = Shedding::new(None, 4);
        for t in 1..=300 {
            shedding.completed(t * MS, 900 * MS);
        }
        assert!(shedding.admits(301 * MS, 4000, 100));
        assert!(!shedding.standing());
    }
}
