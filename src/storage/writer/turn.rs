//! Whose turn it is to send a batch, as a plain struct over `now`.
//!
//! Every commit costs PostgreSQL a fixed amount on top of its rows (measured on the
//! 2-vCPU bench machine with pgbench: ~700 µs of CPU per commit, WAL flush and wake-ups,
//! against ~18 µs per row; 4 rows per commit cost 209 µs a row, 64 rows 28 µs). So the
//! fewer commits an event shares, the more of the machine it takes. Two writers sending
//! batches side by side split what arrived into two half-size commits; one writer at a
//! time lets a batch collect everything that arrived during the previous commit.
//!
//! The second writer is there for the slow batch: one that bisects a refused event,
//! waits on a lock, meets a slow disk, or is full under saturation. So a writer starts
//! a batch when none is in flight, or when the newest one in flight has run for
//! `overlap_after` already; a commit that slow no longer gains from waiting, and the
//! events behind it should not wait for it.

use std::time::{Duration, Instant};

/// Longest a writer waits for the batch in flight before sending its own beside it.
/// Commits on the bench machine take 0.3 to 3 ms at 64 connections; a batch past 5 ms
/// is bisecting, waiting on a lock or on a slow disk, or is one of the full batches
/// (512 events, ~9 ms) of a saturated write path, where two in flight keep PostgreSQL
/// busy during each other's round trips.
pub const OVERLAP_AFTER: Duration = Duration::from_millis(5);

/// The batches in flight on one storage core, by start time.
#[derive(Debug, Default)]
pub struct Turns {
    /// Start of each batch in flight, with its ticket; at most one per writer.
    in_flight: Vec<(u64, Instant)>,
    /// The next ticket.
    next_ticket: u64,
}

/// What a writer may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Send a batch.
    Go,
    /// Wait until a batch in flight ends, or until this instant.
    WaitUntil(Instant),
}

impl Turns {
    /// Whether a writer may send a batch at `now`.
    pub fn turn(&self, now: Instant, overlap_after: Duration) -> Turn {
        match self.in_flight.iter().map(|(_, started)| *started).max() {
            None => Turn::Go,
            Some(newest) if now >= newest + overlap_after => Turn::Go,
            Some(newest) => Turn::WaitUntil(newest + overlap_after),
        }
    }

    /// A batch starts at `now`; the ticket ends it.
    pub fn start(&mut self, now: Instant) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.in_flight.push((ticket, now));
        ticket
    }

    /// The batch of `ticket` is done (committed or failed).
    pub fn end(&mut self, ticket: u64) {
        let before = self.in_flight.len();
        self.in_flight.retain(|(t, _)| *t != ticket);
        assert_eq!(self.in_flight.len() + 1, before, "each batch ends once");
    }

    /// Batches in flight.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVERLAP: Duration = Duration::from_millis(5);

    #[test]
    fn a_writer_goes_when_nothing_is_in_flight() {
        let turns = Turns::default();
        assert_eq!(turns.turn(Instant::now(), OVERLAP), Turn::Go);
    }

    #[test]
    fn a_writer_waits_for_a_fresh_batch_then_goes_beside_a_slow_one() {
        let mut turns = Turns::default();
        let t0 = Instant::now();
        turns.start(t0);
        assert_eq!(turns.turn(t0 + Duration::from_millis(1), OVERLAP), Turn::WaitUntil(t0 + OVERLAP));
        assert_eq!(turns.turn(t0 + OVERLAP, OVERLAP), Turn::Go);
    }

    #[test]
    fn the_newest_batch_in_flight_decides() {
        let mut turns = Turns::default();
        let t0 = Instant::now();
        let slow = turns.start(t0);
        let later = t0 + Duration::from_millis(6);
        let fresh = turns.start(later);
        assert_eq!(turns.in_flight(), 2);
        assert_eq!(turns.turn(later + Duration::from_millis(1), OVERLAP), Turn::WaitUntil(later + OVERLAP));
        turns.end(fresh);
        assert_eq!(
            turns.turn(later + Duration::from_millis(1), OVERLAP),
            Turn::Go,
            "only the slow one is left"
        );
        turns.end(slow);
        assert_eq!(turns.in_flight(), 0);
        assert_eq!(turns.turn(later, OVERLAP), Turn::Go);
    }

    #[test]
    #[should_panic(expected = "each batch ends once")]
    fn a_batch_ends_once() {
        let mut turns = Turns::default();
        let ticket = turns.start(Instant::now());
        turns.end(ticket);
        turns.end(ticket);
    }
}
