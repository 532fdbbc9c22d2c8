//! Where the engine's next claim for an organisation starts reading its due attempts.
//!
//! An organisation claim reads the organisation's due attempts oldest first. Those it
//! holds (in flight and ready, a few hundred at the default limits) stay at the head:
//! they are due until their outcome is written. Every claim read past all of them and
//! probed each one's lease, about 17 rows for each row claimed (issue 16). So a claim
//! that got all it asked for remembers when its newest attempt came due, and the
//! organisation's next claim starts there.
//!
//! What that skips: attempts due before the start that nobody holds. They are those
//! given back, those of a process whose leases expired, and events whose batch
//! committed after a claim had read past their time. So the start lasts `HEAD_EVERY`
//! at most; then a claim reads from the head again. A claim that got less than it
//! asked for has read to the end of what is due, and the next one starts at the head.
//! The poller's claims (`store::claim_due`) always start at the head.

use std::time::{Duration, Instant};

use ahash::AHashMap;
use uuid::Uuid;

/// How long a claim's start lasts: what an attempt due before it waits at most to be
/// claimed again, beyond the usual.
pub const HEAD_EVERY: Duration = Duration::from_secs(1);

/// Organisations whose start is kept, at most; past it, the expired go, then all.
const KEPT_MAX: usize = 4096;

/// One organisation's start.
#[derive(Debug, Clone, Copy)]
struct Start {
    /// When the newest attempt claimed came due (µs since the epoch).
    due_at_micros: i64,
    /// Until when the next claims start there.
    until: Instant,
}

/// The engine's starts, by organisation. Owned by the engine (`Engine::claim_starts`),
/// for the life of the process.
#[derive(Debug, Default)]
pub struct ClaimStarts {
    /// Kept while they last (`HEAD_EVERY`) and while claims get all they ask for; at
    /// most `KEPT_MAX`.
    starts: AHashMap<Uuid, Start>,
}

impl ClaimStarts {
    /// Where the next claim for `org` starts (µs); `None`: at the head.
    pub fn start(&mut self, org: Uuid, now: Instant) -> Option<i64> {
        match self.starts.get(&org) {
            Some(start) if now < start.until => Some(start.due_at_micros),
            Some(_) => {
                self.starts.remove(&org);
                None
            }
            None => None,
        }
    }

    /// A claim for `org` asked for `asked` and got the attempts due at `due_at_micros`.
    pub fn claimed(&mut self, org: Uuid, asked: usize, due_at_micros: &[i64], now: Instant) {
        let newest = due_at_micros.iter().copied().max();
        let Some(newest) = newest.filter(|_| due_at_micros.len() >= asked) else {
            // It read to the end of what is due: the next claim starts at the head.
            self.starts.remove(&org);
            return;
        };
        if let Some(start) = self.starts.get_mut(&org).filter(|start| now < start.until) {
            start.due_at_micros = start.due_at_micros.max(newest);
            return;
        }
        if self.starts.len() >= KEPT_MAX {
            self.starts.retain(|_, start| now < start.until);
            if self.starts.len() >= KEPT_MAX {
                self.starts.clear();
            }
        }
        self.starts.insert(org, Start { due_at_micros: newest, until: now + HEAD_EVERY });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.starts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_claim_moves_the_start_and_a_short_one_goes_back_to_the_head() {
        let (org, t0) = (Uuid::from_u128(1), Instant::now());
        let mut starts = ClaimStarts::default();
        assert_eq!(starts.start(org, t0), None, "the first claim reads from the head");
        starts.claimed(org, 3, &[10, 30, 20], t0);
        assert_eq!(starts.start(org, t0), Some(30));
        starts.claimed(org, 2, &[25, 40], t0);
        assert_eq!(starts.start(org, t0), Some(40));
        // Never backwards while it lasts.
        starts.claimed(org, 1, &[35], t0);
        assert_eq!(starts.start(org, t0), Some(40));
        starts.claimed(org, 4, &[50, 60], t0);
        assert_eq!(starts.start(org, t0), None, "a claim that got less read to the end");
        assert_eq!(starts.start(Uuid::from_u128(2), t0), None, "another organisation's is its own");
    }

    #[test]
    fn a_start_lasts_head_every_then_a_claim_reads_from_the_head() {
        let (org, t0) = (Uuid::from_u128(1), Instant::now());
        let mut starts = ClaimStarts::default();
        starts.claimed(org, 1, &[10], t0);
        // Moving the start does not extend it.
        starts.claimed(org, 1, &[20], t0 + HEAD_EVERY / 2);
        assert_eq!(starts.start(org, t0 + HEAD_EVERY - Duration::from_millis(1)), Some(20));
        assert_eq!(starts.start(org, t0 + HEAD_EVERY), None);
        starts.claimed(org, 1, &[30], t0 + HEAD_EVERY);
        assert_eq!(starts.start(org, t0 + HEAD_EVERY), Some(30), "a new start from the head's claim");
    }

    #[test]
    fn the_kept_starts_are_bounded() {
        let t0 = Instant::now();
        let mut starts = ClaimStarts::default();
        for n in 0..(2 * KEPT_MAX as u128) {
            starts.claimed(Uuid::from_u128(n), 1, &[1], t0 + Duration::from_millis(n as u64));
            assert!(starts.len() <= KEPT_MAX);
        }
    }
}
