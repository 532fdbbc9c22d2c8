//! Exact per-organisation rate limiting across cores, without locks.
//!
//! Each organisation has one `RateWindow`: a single `AtomicU64` holding the window's
//! start and the count admitted in it. The storage core hands every HTTP core the same
//! `Arc<RateWindow>` for an organisation (with its key-table entry), so admission is
//! one compare-and-swap on a shared cache line: exact whichever cores the
//! organisation's connections land on, and no lock anywhere. A CAS costs ~20-40 ns
//! uncontended; an organisation hot enough to contend is admitting >100k events/min,
//! far under what the CAS loop sustains.
//!
//! A window opens at the organisation's first counted event and lasts `WINDOW_MS`.
//! Everything takes `now_ms` (Unix milliseconds) as an argument.

use std::sync::atomic::{AtomicU64, Ordering};

/// Length of a rate-limit window.
pub const WINDOW_MS: u64 = 60_000;
/// Bits of the packed state that hold the count; the highest tier (100 000/min) fits.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Largest limit the packing can represent.
pub const LIMIT_MAX: u32 = COUNT_MASK as u32;
/// Window starts are stored as milliseconds since 2020-01-01 plus one (0 = no window);
/// 40 bits of milliseconds last until 2054.
const EPOCH_MS: u64 = 1_577_836_800_000;

/// Outcome of asking to admit one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; `window` identifies the window for a later `refund`.
    Admitted { remaining: u32, reset_ms: u64, window: u64 },
    /// Refused: the window is full until `reset_ms` from now.
    Limited { reset_ms: u64 },
}

/// The shared counter of one organisation. Lives as long as any core caches the
/// organisation; the storage core's registry keeps one per organisation it has seen.
#[derive(Debug, Default)]
pub struct RateWindow {
    /// `(window start field << COUNT_BITS) | count`.
    state: AtomicU64,
}

fn start_field(now_ms: u64) -> u64 {
    now_ms.saturating_sub(EPOCH_MS) + 1
}

fn window_end_ms(start: u64) -> u64 {
    start - 1 + EPOCH_MS + WINDOW_MS
}

impl RateWindow {
    /// Admits one event if the organisation's current window has room.
    pub fn try_admit(&self, now_ms: u64, limit: u32) -> Admission {
        debug_assert!(limit <= LIMIT_MAX);
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let start = current >> COUNT_BITS;
            let count = current & COUNT_MASK;
            let expired = start == 0 || now_ms >= window_end_ms(start);
            let (next_start, next_count) =
                if expired { (start_field(now_ms), 1) } else { (start, count + 1) };
            let reset_ms = window_end_ms(next_start).saturating_sub(now_ms);
            if next_count > u64::from(limit) {
                return Admission::Limited { reset_ms };
            }
            let next = (next_start << COUNT_BITS) | next_count;
            match self.state.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    let remaining = (u64::from(limit) - next_count) as u32;
                    return Admission::Admitted { remaining, reset_ms, window: next_start };
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// (remaining, ms until reset) without counting anything.
    pub fn peek(&self, now_ms: u64, limit: u32) -> (u32, u64) {
        let current = self.state.load(Ordering::Relaxed);
        let start = current >> COUNT_BITS;
        if start == 0 || now_ms >= window_end_ms(start) {
            return (limit, WINDOW_MS);
        }
        let count = (current & COUNT_MASK) as u32;
        (limit.saturating_sub(count), window_end_ms(start) - now_ms)
    }

    /// Gives back one admission that was not used (the event was refused for overload
    /// after it was counted). A no-op once that window has ended.
    pub fn refund(&self, window: u64) {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            if current >> COUNT_BITS != window || current & COUNT_MASK == 0 {
                return;
            }
            match self.state.compare_exchange_weak(current, current - 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Whole seconds for `Retry-After` / `X-RateLimit-Reset`: rounded up, at least 1.
pub fn reset_secs(reset_ms: u64) -> u64 {
    reset_ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const T0: u64 = 1_790_000_000_000;

    #[test]
    fn admits_exactly_the_limit_per_window() {
        let window = RateWindow::default();
        for i in 0..100 {
            match window.try_admit(T0 + i, 100) {
                Admission::Admitted { remaining, reset_ms, .. } => {
                    assert_eq!(remaining, 99 - i as u32);
                    assert_eq!(reset_ms, WINDOW_MS - i);
                }
                other => panic!("event {i} refused: {other:?}"),
            }
        }
        assert_eq!(window.try_admit(T0 + 59_999, 100), Admission::Limited { reset_ms: 1 });
        assert!(matches!(window.try_admit(T0 + 60_000, 100), Admission::Admitted { remaining: 99, .. }));
    }

    #[test]
    fn window_opens_at_first_event_not_on_a_grid() {
        let window = RateWindow::default();
        assert_eq!(window.peek(T0, 5), (5, WINDOW_MS));
        window.try_admit(T0 + 12_345, 1);
        assert_eq!(window.try_admit(T0 + 72_344, 1), Admission::Limited { reset_ms: 1 });
        assert!(matches!(window.try_admit(T0 + 72_345, 1), Admission::Admitted { .. }));
        assert_eq!(window.peek(T0 + 72_346, 1), (0, WINDOW_MS - 1));
    }

    #[test]
    fn refund_returns_a_slot_only_in_the_same_window() {
        let window = RateWindow::default();
        let Admission::Admitted { window: id, .. } = window.try_admit(T0, 1) else { panic!() };
        assert!(matches!(window.try_admit(T0 + 1, 1), Admission::Limited { .. }));
        window.refund(id);
        assert!(matches!(window.try_admit(T0 + 2, 1), Admission::Admitted { .. }));
        window.refund(id + 1);
        assert!(matches!(window.try_admit(T0 + 3, 1), Admission::Limited { .. }));
    }

    #[test]
    fn exact_under_contention_from_many_threads() {
        let window = Arc::new(RateWindow::default());
        let admitted: u32 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let window = Arc::clone(&window);
                    scope.spawn(move || {
                        (0..10_000)
                            .filter(|_| matches!(window.try_admit(T0, 1_000), Admission::Admitted { .. }))
                            .count() as u32
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1_000);
    }

    #[test]
    fn reset_seconds_round_up() {
        assert_eq!(reset_secs(0), 1);
        assert_eq!(reset_secs(1), 1);
        assert_eq!(reset_secs(1_001), 2);
        assert_eq!(reset_secs(60_000), 60);
    }
}
