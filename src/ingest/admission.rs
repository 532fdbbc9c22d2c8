//! Admission of events against the organisation's rate window (`model::ratelimit`), as
//! an HTTP core does it: one compare-and-swap while this process holds tokens of the
//! window; when it holds none, wait for the next lease from the budget row, which one
//! request asks the storage core for (a command on the key lane) and every request of
//! the organisation on this process waits for.
//!
//! The wait is bounded: a request waits for at most `REFILL_ROUNDS_MAX` leases, each
//! one batch transaction on the lease connection (about a millisecond when the database
//! keeps up; at worst its two statements' timeouts, plus the connect timeout if the
//! connection must be reopened). A lease that fails, a full command queue, or rounds
//! that leave the request nothing (others took what they brought) answer 503: nothing
//! is stored, and it is not a 429, since the limit was not shown to be reached.

use std::sync::Arc;

use super::RateState;
use crate::handoff::commands::Command;
use crate::model::ratelimit::Admission;
use crate::model::Org;
use crate::shard::metrics::CoreMetrics;
use crate::shard::Shard;

/// Leases one request waits for before it answers 503. One is the rule: a lease asks
/// for at least what the waiting requests need. More happen only when requests that
/// did not wait took the tokens first, or a lease was already in flight (sized
/// before this request waited).
pub const REFILL_ROUNDS_MAX: u32 = 4;

/// An admitted event: the window after it (for the headers) and its window's id (for
/// a refund).
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub state: RateState,
    pub window: u64,
}

/// Why an event was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The window's whole budget is spent for `reset_ms` more.
    Limited { reset_ms: u64 },
    /// No lease could be had (database unreachable or slow, queue full): 503.
    Unavailable,
}

/// Admits one event at `now_ms`. `need` is how many events the request still has to
/// admit (a batch's remaining entries), so that a lease it waits for covers them.
pub async fn admit(shard: &Shard, org: &Org, now_ms: u64, need: u32) -> Result<Admitted, Refused> {
    let (rate, limit) = (&org.rate, org.rate_limit_per_minute);
    let mut rounds = 0;
    loop {
        // Made before looking, so a lease answered in between still wakes this request.
        let refilled = rate.refilled();
        match rate.try_admit(now_ms, limit) {
            Admission::Admitted { remaining, reset_ms, window, refill } => {
                if refill {
                    // Ahead of need: a failure here only means the next request waits.
                    let _ = start_refill(shard, org, now_ms);
                }
                return Ok(Admitted { state: RateState { limit, remaining, reset_ms }, window });
            }
            Admission::Limited { reset_ms } => return Err(Refused::Limited { reset_ms }),
            Admission::Empty if rounds == REFILL_ROUNDS_MAX => return Err(Refused::Unavailable),
            Admission::Empty => {
                if rounds == 0 {
                    CoreMetrics::count(&shard.metrics().rate_limit_waits, 1);
                }
                rounds += 1;
                let _waiting = rate.wait_for(need.max(1));
                start_refill(shard, org, now_ms).map_err(|()| Refused::Unavailable)?;
                refilled.await;
                if rate.last_refill_failed() {
                    return Err(Refused::Unavailable);
                }
            }
        }
    }
}

/// Sends the organisation's next lease unless one is in flight. `Err` when the
/// command queue is full (the lease counts as failed, so waiting requests answer too).
fn start_refill(shard: &Shard, org: &Org, now_ms: u64) -> Result<(), ()> {
    let limit = org.rate_limit_per_minute;
    let Some((want, need)) = org.rate.begin_refill(now_ms, limit) else { return Ok(()) };
    let command =
        Command::RateLease { org_id: org.id, limit, want, need, now_ms, window: Arc::clone(&org.rate) };
    shard.commands().send(command).map_err(|_| org.rate.refill_failed())
}
