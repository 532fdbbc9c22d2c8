//! Exact per-organisation rate limits across cores and instances, without a database
//! round trip per request.
//!
//! The authority is one budget row per organisation in PostgreSQL (`rate_budgets`: the
//! window's start and how many of its `limit` admissions have been leased out; the
//! storage core's `storage::ratelimit` runs its statements). Each instance leases
//! slices of the window from it and admits from its slice locally. A `RateWindow` is one
//! organisation's slice in this process, shared by every HTTP core (the same `Arc`), so
//! admission is one compare-and-swap on a shared cache line, exact whichever cores the
//! organisation's connections land on, and no lock anywhere.
//!
//! When the slice runs low, one core asks the storage core for the next one
//! (`begin_refill`; the storage core answers with `apply_lease` or `refill_failed`);
//! the requests that find it empty meanwhile wait for that answer (`refilled`).
//!
//! - Never more than the limit: every admission spends a token leased for the window
//!   it is counted in, and the row never leases more than `limit` per window.
//! - Early refusals, bounded: a refusal needs this process's slice empty and the row
//!   exhausted. What was admitted then falls short of the limit only by the tokens
//!   other instances hold unused: each at most its last slice plus the quarter of the
//!   one before that it had left when it asked for more (`slice_tokens`). One instance
//!   alone is exact: it refuses only once it has admitted the limit.
//! - The window is agreed: it starts when the row says (opened by the first lease after
//!   the previous one ended, at the `now` of the request that asked), so every instance
//!   gives the same `X-RateLimit-Reset`, up to the skew between their clocks.
//!
//! Back of the envelope: a slice lasts about `SLICE_TARGET_MS` of the organisation's
//! traffic on this instance, so a busy organisation costs ~4 leases (one UPDATE each)
//! per second per instance, whatever its rate; a request waits for the database only
//! when the slice is empty (the next one is asked for when a quarter is left).
//!
//! Everything takes `now_ms` (Unix milliseconds) as an argument.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Length of a rate-limit window.
pub const WINDOW_MS: u64 = 60_000;
/// How much of an organisation's traffic on this instance one slice should cover.
pub const SLICE_TARGET_MS: u64 = 250;
/// Bits of a packed state that hold a count; the highest tier (100 000/min) fits.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Largest limit the packing can represent.
pub const LIMIT_MAX: u32 = COUNT_MASK as u32;
/// Times are stored as milliseconds since 2020-01-01 plus one (0 = none); 40 bits of
/// milliseconds last until 2054.
const EPOCH_MS: u64 = 1_577_836_800_000;

fn time_field(ms: u64) -> u64 {
    ms.saturating_sub(EPOCH_MS) + 1
}

fn field_ms(field: u64) -> u64 {
    field - 1 + EPOCH_MS
}

fn window_end_ms(start: u64) -> u64 {
    field_ms(start) + WINDOW_MS
}

fn pack(field: u64, count: u64) -> u64 {
    (field << COUNT_BITS) | count.min(COUNT_MASK)
}

/// Milliseconds until the window that started at `start` ends; never more than a
/// window (another instance's clock may run ahead of this one's).
fn reset_ms(start: u64, now_ms: u64) -> u64 {
    window_end_ms(start).saturating_sub(now_ms).min(WINDOW_MS)
}

/// Outcome of asking to admit one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted. `window` identifies the window for a later `refund`; `refill` asks the
    /// caller to start the next lease now (`begin_refill`), before the slice runs out.
    Admitted { remaining: u32, reset_ms: u64, window: u64, refill: bool },
    /// Refused: the window's whole budget is spent until `reset_ms` from now.
    Limited { reset_ms: u64 },
    /// Nothing held here, but a lease may bring more (or no current window is known):
    /// start a refill (`begin_refill`) and wait for it (`refilled`).
    Empty,
}

/// What the budget row answered to one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The `now` the lease was asked with.
    pub asked_at_ms: u64,
    /// Start of the window the tokens belong to (the row's; maybe opened by this lease).
    pub window_start_ms: u64,
    /// Tokens of that window leased to all instances, this lease's included.
    pub used: u32,
    /// Tokens this lease got (0 when the window is spent).
    pub granted: u32,
}

/// The slice to ask for: about `SLICE_TARGET_MS` of the traffic this process saw since
/// its last lease (`recent`: tokens spent, over how many ms), or the limit spread
/// evenly over a window when there is no recent lease; at least what the waiting
/// requests need, at least 1, at most the limit. The row then grants at most half of
/// what the window has left (`storage::ratelimit`), so slices shrink as it fills, but
/// never less than the waiting requests need while it lasts.
pub fn slice_tokens(recent: Option<(u32, u64)>, limit: u32, waiting: u32) -> u32 {
    let evenly = (u64::from(limit) * SLICE_TARGET_MS).div_ceil(WINDOW_MS);
    let by_rate = match recent {
        Some((spent, elapsed_ms)) if elapsed_ms <= WINDOW_MS => {
            (u64::from(spent) * SLICE_TARGET_MS).div_ceil(elapsed_ms.max(1))
        }
        _ => evenly,
    };
    by_rate.max(u64::from(waiting)).max(1).min(u64::from(limit.max(1))) as u32
}

/// One organisation's slice of its rate-limit window in this process. Lives as long as
/// any core caches the organisation; the storage core's registry keeps one per
/// organisation it has seen.
#[derive(Debug, Default)]
pub struct RateWindow {
    /// `(window start field << COUNT_BITS) | tokens this process may still admit in it`.
    /// Written by the cores (admit, refund) and by the storage core (leases).
    local: AtomicU64,
    /// `(window start field << COUNT_BITS) | tokens the row had not leased to anyone`
    /// after this process's last lease. Written by the storage core only.
    unleased: AtomicU64,
    /// `(time field of the last lease << COUNT_BITS) | tokens held right after it`: the
    /// rate estimate's base. Written by the storage core only.
    last_lease: AtomicU64,
    /// Held tokens at or below which the next lease is asked for (a quarter of the last
    /// grant).
    low_water: AtomicU32,
    /// A lease is in flight (at most one per organisation per process).
    refilling: AtomicBool,
    /// The last lease failed (database unreachable, queue full).
    failed: AtomicBool,
    /// Tokens the requests waiting for a lease need.
    waiting: AtomicU32,
    /// Woken when a lease is answered, successfully or not.
    refilled: Notify,
}

/// Registers a waiting request's need until dropped.
pub struct Waiting<'a> {
    window: &'a RateWindow,
    tokens: u32,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.window.waiting.fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

impl RateWindow {
    /// Admits one event if this process holds a token of the current window.
    pub fn try_admit(&self, now_ms: u64, limit: u32) -> Admission {
        debug_assert!(limit <= LIMIT_MAX);
        let mut current = self.local.load(Ordering::Acquire);
        loop {
            let start = current >> COUNT_BITS;
            let held = current & COUNT_MASK;
            if start == 0 || now_ms >= window_end_ms(start) {
                return Admission::Empty;
            }
            if held == 0 {
                match self.spent(current, start) {
                    Some(true) => return Admission::Limited { reset_ms: reset_ms(start, now_ms) },
                    Some(false) => return Admission::Empty,
                    None => {
                        current = self.local.load(Ordering::Acquire);
                        continue;
                    }
                }
            }
            match self.local.compare_exchange_weak(current, current - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let unleased = self.unleased_in(start);
                    let refill = held - 1 <= u64::from(self.low_water.load(Ordering::Relaxed))
                        && unleased > 0
                        && !self.refilling.load(Ordering::Relaxed);
                    let remaining = (held - 1 + u64::from(unleased)).min(u64::from(limit)) as u32;
                    let reset_ms = reset_ms(start, now_ms);
                    return Admission::Admitted { remaining, reset_ms, window: start, refill };
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// With nothing held in window `start`: `Some(true)` when the row is known to be
    /// spent, `Some(false)` when a lease may bring more (or one is in flight), `None`
    /// when a lease landed meanwhile (read again). The re-read of `local` after
    /// `refilling` (acquire) sees any lease that cleared `refilling`.
    fn spent(&self, current: u64, start: u64) -> Option<bool> {
        let unleased = self.unleased.load(Ordering::Acquire);
        let refilling = self.refilling.load(Ordering::Acquire);
        if self.local.load(Ordering::Acquire) != current {
            return None;
        }
        Some(!refilling && unleased == pack(start, 0))
    }

    fn unleased_in(&self, start: u64) -> u32 {
        let unleased = self.unleased.load(Ordering::Acquire);
        if unleased >> COUNT_BITS == start {
            (unleased & COUNT_MASK) as u32
        } else {
            0
        }
    }

    /// (remaining, ms until reset) without counting anything. Remaining is what this
    /// process holds plus what the row had left at its last lease: exact with one
    /// instance, an upper estimate with several.
    pub fn peek(&self, now_ms: u64, limit: u32) -> (u32, u64) {
        let current = self.local.load(Ordering::Acquire);
        let start = current >> COUNT_BITS;
        if start == 0 || now_ms >= window_end_ms(start) {
            return (limit, WINDOW_MS);
        }
        let remaining = (current & COUNT_MASK) + u64::from(self.unleased_in(start));
        (remaining.min(u64::from(limit)) as u32, reset_ms(start, now_ms))
    }

    /// Gives back one admission that was not used (the event was refused for overload
    /// after it was counted). A no-op once that window has ended here.
    pub fn refund(&self, window: u64) {
        let mut current = self.local.load(Ordering::Acquire);
        while current >> COUNT_BITS == window && current & COUNT_MASK < COUNT_MASK {
            match self.local.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Registers a request that waits for a lease and needs `tokens`, until the guard drops.
    pub fn wait_for(&self, tokens: u32) -> Waiting<'_> {
        self.waiting.fetch_add(tokens, Ordering::Relaxed);
        Waiting { window: self, tokens }
    }

    /// Resolves when the next lease is answered (create it before `try_admit`, so an
    /// answer between the two is not missed).
    pub fn refilled(&self) -> Notified<'_> {
        self.refilled.notified()
    }

    /// Claims the lease in flight. `Some((want, need))`: send a lease for `want` tokens
    /// of which the waiting requests need `need`; `None`: one is in flight already.
    pub fn begin_refill(&self, now_ms: u64, limit: u32) -> Option<(u32, u32)> {
        if self.refilling.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return None;
        }
        let last = self.last_lease.load(Ordering::Relaxed);
        let recent = (last != 0).then(|| {
            let held = self.local.load(Ordering::Acquire) & COUNT_MASK;
            let spent = (last & COUNT_MASK).saturating_sub(held) as u32;
            (spent, now_ms.saturating_sub(field_ms(last >> COUNT_BITS)))
        });
        let need = self.waiting.load(Ordering::Relaxed).min(limit);
        Some((slice_tokens(recent, limit, need), need))
    }

    /// Applies the row's answer: the tokens join the slice (a newer window replaces
    /// it; tokens of an older window than the one held lapse), then every waiting
    /// request is woken.
    pub fn apply_lease(&self, lease: Lease, limit: u32) {
        let start = time_field(lease.window_start_ms);
        let granted = u64::from(lease.granted);
        let mut current = self.local.load(Ordering::Acquire);
        let held_after = loop {
            let held_start = current >> COUNT_BITS;
            let next = match held_start.cmp(&start) {
                std::cmp::Ordering::Equal => pack(start, (current & COUNT_MASK) + granted),
                std::cmp::Ordering::Less => pack(start, granted),
                std::cmp::Ordering::Greater => break current & COUNT_MASK,
            };
            match self.local.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break next & COUNT_MASK,
                Err(actual) => current = actual,
            }
        };
        self.unleased.store(pack(start, u64::from(limit.saturating_sub(lease.used))), Ordering::Release);
        self.last_lease.store(pack(time_field(lease.asked_at_ms), held_after), Ordering::Relaxed);
        self.low_water.store(lease.granted / 4, Ordering::Relaxed);
        self.failed.store(false, Ordering::Relaxed);
        self.refilling.store(false, Ordering::Release);
        self.refilled.notify_waiters();
    }

    /// The lease could not be made; the waiting requests are woken to answer 503.
    pub fn refill_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
        self.refilling.store(false, Ordering::Release);
        self.refilled.notify_waiters();
    }

    /// True when the last lease failed.
    pub fn last_refill_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Takes every token held in the current window (to give back to the row at
    /// shutdown): `(window start ms, tokens)`, or `None` if there is nothing to give.
    pub fn take_unused(&self, now_ms: u64) -> Option<(u64, u32)> {
        let mut current = self.local.load(Ordering::Acquire);
        loop {
            let start = current >> COUNT_BITS;
            let held = current & COUNT_MASK;
            if start == 0 || now_ms >= window_end_ms(start) || held == 0 {
                return None;
            }
            match self.local.compare_exchange_weak(
                current,
                pack(start, 0),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((field_ms(start), held as u32)),
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

    /// The budget row's rule (what `storage::ratelimit`'s statement does), for driving
    /// windows without a database; the statement itself is tested on PostgreSQL.
    #[derive(Default)]
    struct Row {
        start_ms: Option<u64>,
        used: u32,
        leases: u32,
    }

    impl Row {
        fn lease(&mut self, now_ms: u64, (want, need): (u32, u32), limit: u32) -> Lease {
            if self.start_ms.is_none_or(|start| start + WINDOW_MS <= now_ms) {
                self.start_ms = Some(now_ms);
                self.used = 0;
            }
            let left = limit.saturating_sub(self.used);
            let granted = want.min(left).min(left.div_ceil(2).max(need));
            self.used += granted;
            self.leases += 1;
            Lease { asked_at_ms: now_ms, window_start_ms: self.start_ms.unwrap(), used: self.used, granted }
        }

        fn give_back(&mut self, (start_ms, tokens): (u64, u32)) {
            if self.start_ms == Some(start_ms) {
                self.used = self.used.saturating_sub(tokens);
            }
        }
    }

    /// One admission as a core makes it, leasing from `row` whenever asked to.
    fn admit(window: &RateWindow, row: &mut Row, now_ms: u64, limit: u32) -> Admission {
        for _ in 0..4 {
            match window.try_admit(now_ms, limit) {
                Admission::Empty => {
                    let _waiting = window.wait_for(1);
                    let ask = window.begin_refill(now_ms, limit).expect("no lease in flight");
                    window.apply_lease(row.lease(now_ms, ask, limit), limit);
                }
                admitted @ Admission::Admitted { refill: true, .. } => {
                    let ask = window.begin_refill(now_ms, limit).expect("no lease in flight");
                    window.apply_lease(row.lease(now_ms, ask, limit), limit);
                    return admitted;
                }
                other => return other,
            }
        }
        panic!("a lease that grants something was not enough")
    }

    #[test]
    fn one_instance_admits_exactly_the_limit_per_window() {
        let (window, mut row) = (RateWindow::default(), Row::default());
        for i in 0..100 {
            match admit(&window, &mut row, T0 + i, 100) {
                Admission::Admitted { remaining, reset_ms, .. } => {
                    assert_eq!(remaining, 99 - i as u32, "exact with one instance");
                    assert_eq!(reset_ms, WINDOW_MS - i);
                }
                other => panic!("event {i} refused: {other:?}"),
            }
        }
        assert_eq!(admit(&window, &mut row, T0 + 59_999, 100), Admission::Limited { reset_ms: 1 });
        assert!(matches!(
            admit(&window, &mut row, T0 + 60_000, 100),
            Admission::Admitted { remaining: 99, .. }
        ));
    }

    #[test]
    fn a_busy_organisation_leases_a_few_times_a_second_not_per_event() {
        let (window, mut row) = (RateWindow::default(), Row::default());
        // 1 000 events/s against 100 000/min: 60 000 events in the window.
        for i in 0..60_000u64 {
            assert!(matches!(admit(&window, &mut row, T0 + i, 100_000), Admission::Admitted { .. }));
        }
        // A slice lasts ~250 ms: ~240 leases in 60 s, not 60 000.
        assert!((200..=300).contains(&row.leases), "{} leases", row.leases);
    }

    #[test]
    fn slices_follow_the_rate_and_the_waiting_requests() {
        assert_eq!(slice_tokens(None, 100, 0), 1, "free tier spread evenly: under one per 250 ms");
        assert_eq!(slice_tokens(None, 100_000, 0), 417);
        assert_eq!(slice_tokens(Some((100, 100)), 100_000, 0), 250, "1 000/s for 250 ms");
        assert_eq!(slice_tokens(Some((1, 10_000)), 100_000, 0), 1, "a slow organisation: one at a time");
        assert_eq!(slice_tokens(Some((1, 10_000)), 100_000, 30), 30, "what the waiting requests need");
        assert_eq!(slice_tokens(Some((50, 0)), 100, 0), 100, "never more than the limit");
        assert_eq!(slice_tokens(Some((5, 120_000)), 100_000, 0), 417, "an old lease says nothing");
    }

    #[test]
    fn two_instances_never_exceed_the_limit_and_refuse_early_only_by_what_the_other_holds() {
        let (a, b, mut row) = (RateWindow::default(), RateWindow::default(), Row::default());
        let mut admitted = 0u32;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..400u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let (this, other) = if state.is_multiple_of(3) { (&a, &b) } else { (&b, &a) };
            match admit(this, &mut row, T0 + i * 10, 100) {
                Admission::Admitted { .. } => admitted += 1,
                Admission::Limited { .. } => {
                    let other_held = (other.local.load(Ordering::Relaxed) & COUNT_MASK) as u32;
                    assert_eq!(admitted + other_held, 100, "refused early by exactly what the other holds");
                }
                Admission::Empty => unreachable!(),
            }
            assert!(admitted <= 100);
        }
        assert_eq!(row.used, 100);
    }

    #[test]
    fn unused_tokens_go_back_and_another_instance_takes_them() {
        let (a, b, mut row) = (RateWindow::default(), RateWindow::default(), Row::default());
        // A is busy, so its slices grow; then it shuts down holding some.
        for i in 0..40 {
            assert!(matches!(admit(&a, &mut row, T0 + i, 100), Admission::Admitted { .. }));
        }
        let held = a.take_unused(T0 + 40).expect("A holds tokens");
        assert_eq!(held.0, T0);
        assert_eq!(row.used - held.1, 40);
        row.give_back(held);
        assert_eq!(a.take_unused(T0 + 41), None, "taken once");
        let admitted =
            (0..100).filter(|i| matches!(admit(&b, &mut row, T0 + 50 + i, 100), Admission::Admitted { .. }));
        assert_eq!(admitted.count(), 60, "B gets the whole rest of the window");
        // A give-back for a window that has ended is nothing.
        row.give_back((T0 - WINDOW_MS, 10));
        assert_eq!(row.used, 100);
    }

    #[test]
    fn the_window_is_the_rows_not_the_instances() {
        let (a, b, mut row) = (RateWindow::default(), RateWindow::default(), Row::default());
        assert!(matches!(admit(&a, &mut row, T0, 100), Admission::Admitted { reset_ms: WINDOW_MS, .. }));
        // B's first event, 12.345 s later, joins the window A opened.
        match admit(&b, &mut row, T0 + 12_345, 100) {
            Admission::Admitted { reset_ms, .. } => assert_eq!(reset_ms, WINDOW_MS - 12_345),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.peek(T0 + 60_000, 100), (100, WINDOW_MS), "over at the row's end");
    }

    #[test]
    fn waiting_requests_are_counted_into_the_slice() {
        let window = RateWindow::default();
        let waiting: Vec<_> = (0..30).map(|_| window.wait_for(1)).collect();
        let (want, need) = window.begin_refill(T0, 1_000).unwrap();
        assert_eq!((want, need), (30, 30));
        assert_eq!(window.begin_refill(T0, 1_000), None, "one lease in flight");
        drop(waiting);
        window.refill_failed();
        assert!(window.last_refill_failed());
        assert_eq!(window.begin_refill(T0, 1_000), Some((5, 0)), "1 000/min spread evenly: 5 per 250 ms");
    }

    #[test]
    fn refund_returns_a_token_only_in_the_same_window() {
        let (window, mut row) = (RateWindow::default(), Row::default());
        let Admission::Admitted { window: id, .. } = admit(&window, &mut row, T0, 1) else { panic!() };
        assert!(matches!(admit(&window, &mut row, T0 + 1, 1), Admission::Limited { .. }));
        window.refund(id);
        assert!(matches!(admit(&window, &mut row, T0 + 2, 1), Admission::Admitted { .. }));
        window.refund(id + 1);
        assert!(matches!(admit(&window, &mut row, T0 + 3, 1), Admission::Limited { .. }));
    }

    #[test]
    fn exact_under_contention_from_many_threads() {
        let window = Arc::new(RateWindow::default());
        window
            .apply_lease(Lease { asked_at_ms: T0, window_start_ms: T0, used: 1_000, granted: 1_000 }, 1_000);
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
        assert_eq!(window.try_admit(T0, 1_000), Admission::Limited { reset_ms: WINDOW_MS });
    }

    #[test]
    fn reset_seconds_round_up() {
        assert_eq!(reset_secs(0), 1);
        assert_eq!(reset_secs(1), 1);
        assert_eq!(reset_secs(1_001), 2);
        assert_eq!(reset_secs(60_000), 60);
    }
}
