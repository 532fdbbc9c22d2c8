//! The delivery engine's decisions, without the I/O: how many attempts may be in flight
//! (in all and per organisation), which handed-over events may be claimed, when the
//! database is claimed from next, and whether a claimed attempt starts or goes back.
//!
//! Plain data: no clock is read, no task spawned, no SQL run. The engine passes `now`
//! in and carries out what comes back, so these rules are tested with virtual time,
//! without sleeping, sockets or a database.
//!
//! The rules:
//! - At most `in_flight_max` attempts in flight in all and `per_org_max` per
//!   organisation; a claim asks for the room left (at most `CLAIM_BATCH_MAX`) and skips
//!   organisations at their limit. Once stopping, the room is zero.
//! - Due attempts of every organisation are claimed every `poll_interval`, and sooner
//!   when a claim was cut short by the global room (the room backlog): then each
//!   completion asks for such a claim. Two of them are never closer than the claim
//!   spacing, since each reads every organisation with a webhook.
//! - An organisation that a claim left at its own limit may have more due (the
//!   organisation backlog): a completion of one of its attempts asks at once for a
//!   claim of that organisation alone, for its free slots. Such a claim reads only the
//!   organisations asked for, so it needs no spacing; it follows a completion, so there
//!   are never more of them than completions, and completions that arrive while one
//!   claim runs are served by the next. While the global room is what cuts claims
//!   short, these claims wait: the spaced claim of every organisation shares the room,
//!   oldest due first, so an organisation with a backlog cannot keep the room it frees.
//! - An attempt's slot is freed when the receiver answers (or the attempt fails), not
//!   when its outcome is written: the outcome waits in the writer's queue and the event
//!   stays leased until it is recorded, so no claim takes it meanwhile. Outcomes
//!   answered and not yet recorded are bounded: at `outcomes_queued_max` no claim is
//!   made and nothing more is prefetched until the writer catches up (attempts already
//!   claimed still start). So the queue holds at most `outcomes_queued_max` plus the
//!   attempts in flight plus the ready ones (`2 * in_flight_max`).
//! - Prefetch: a claimed attempt whose organisation is at its own limit is kept ready
//!   (leased, not started), up to `ready_per_org_max` per organisation (`per_org_max`
//!   times the prefetch rounds, `prefetch_rounds`) and `in_flight_max` in all, and
//!   starts the moment one of its organisation's slots frees, so a slot never waits for
//!   a claim round trip. A ready attempt only exists while its organisation's slots are
//!   all taken, and ready attempts start in order as those slots free, so one waits at
//!   most one attempt's duration (`DeliveryConfig::timeout`) per round, and the lease
//!   holds the rounds plus two timeouts (its own attempt, and one to spare), unless
//!   shutdown begins: then the ready attempts are given back. While the global room
//!   cuts claims short nothing is prefetched, so the room is shared.
//! - A claimed attempt that can neither start nor be kept ready is given back
//!   unattempted.
//! - Claims are made one at a time (the engine awaits each), so an organisation never
//!   has two claims in flight.

use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};
use uuid::Uuid;

/// Attempts claimed per database round trip at most.
pub const CLAIM_BATCH_MAX: usize = 256;
/// Rounds of an organisation's slots kept ready at most (`prefetch_rounds`). An
/// organisation claim asks for what its organisation used since the last one, so with
/// one round (8 ready for 8 slots) an organisation got at most 8 attempts per claim
/// round trip: to a receiver answering in ~1 ms, 4 organisations ran at 6 700
/// deliveries/s whatever their cap (4 or 8), the claims' ~5 ms on this 2-core machine
/// being the cycle (issue 16). Four rounds cover a claim round trip four times longer
/// than one attempt, and make each claim larger (fewer statements per attempt).
pub const PREFETCH_ROUNDS_MAX: usize = 4;
/// Least time between two claims of due attempts. A claim skips saturated
/// organisations by filtering, so with a large backlog it reads past their due rows:
/// completions may ask for a claim, but not more often than this.
pub const CLAIM_SPACING_MIN: Duration = Duration::from_millis(100);

/// The limits the scheduler enforces (from `DeliveryConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attempts in flight at most, all organisations together; at least 1.
    pub in_flight_max: usize,
    /// Attempts of one organisation in flight at most; at least 1.
    pub per_org_max: usize,
    /// Claimed attempts of one organisation kept ready at most
    /// (`per_org_max * prefetch_rounds(..)`; 0: no prefetch).
    pub ready_per_org_max: usize,
    /// Longest time between two claims of due attempts; not zero.
    pub poll_interval: Duration,
    /// Outcomes answered and not yet recorded at which claims and prefetch pause; at
    /// least 1.
    pub outcomes_queued_max: usize,
}

/// Rounds of an organisation's slots to keep ready: a ready attempt waits at most one
/// attempt (`timeout`) per round before its own attempt, and its lease must outlast
/// both with a whole timeout to spare (writing the outcome, the claim's own round
/// trip), so `lease / timeout - 2` at most, and at most `PREFETCH_ROUNDS_MAX`. 0: no
/// prefetch (a lease shorter than three timeouts).
pub fn prefetch_rounds(lease: Duration, timeout: Duration) -> usize {
    let timeouts_per_lease = lease.as_nanos() / timeout.as_nanos().max(1);
    timeouts_per_lease.saturating_sub(2).min(PREFETCH_ROUNDS_MAX as u128) as usize
}

/// What follows an attempt's answer (`Scheduler::on_answered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// Start the oldest ready attempt of the organisation, in the slot just freed.
    pub start_ready: bool,
    /// Wake the engine for a claim.
    pub wake: bool,
}

/// A claim of due attempts to run now (`store::claim_due`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Attempts to claim at most: the room left, at most `CLAIM_BATCH_MAX`; at least 1.
    pub limit: usize,
    /// Attempts of one organisation to claim at most.
    pub per_org: usize,
    /// Organisations at their limit, not claimed from.
    pub excluded_orgs: Vec<Uuid>,
}

/// A claim of the due attempts of some organisations only (`store::claim_orgs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgClaimRequest {
    /// Each organisation with its free slots (at least 1), at most `CLAIM_BATCH_MAX` in
    /// all and within the global room.
    pub orgs: Vec<(Uuid, usize)>,
}

/// What to do with one claimed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted in flight: attempt it, then report `on_answered`.
    Start,
    /// Its organisation is at its limit: keep it (leased) at the back of the
    /// organisation's ready queue; `on_answered` says when to start it.
    Ready,
    /// Over a limit: release its lease unattempted (`store::release`).
    GiveBack,
}

/// The engine's counts and timers. Owned by the engine on the storage thread.
#[derive(Debug)]
pub struct Scheduler {
    /// Set at construction, never changed.
    limits: Limits,
    /// `CLAIM_SPACING_MIN`, or the poll interval if that is shorter.
    claim_spacing: Duration,
    /// Attempts started and not yet answered; at most `limits.in_flight_max`.
    in_flight: usize,
    /// Attempts in flight per organisation; an entry leaves at zero, so the map holds
    /// only organisations with attempts in flight. Its values add up to `in_flight`.
    per_org: AHashMap<Uuid, usize>,
    /// Set when a claim was cut short by the global room: completions then ask for a
    /// claim of every organisation. Cleared by such a claim that was not cut short.
    room_backlog: bool,
    /// Organisations a claim left at their own limit, which may have more due: each
    /// completion of one asks for a claim of it. An organisation leaves when a claim of
    /// it returns less than it asked for. At most one entry per organisation that had
    /// attempts in flight since; bounded by the organisations with a webhook.
    org_backlog: AHashSet<Uuid>,
    /// Of `org_backlog`, those with a completion since their last claim: the next
    /// organisation claim's. Emptied by `org_claim`.
    org_ready: AHashSet<Uuid>,
    /// When the last claim of due attempts ran; `None` before the first.
    last_claim: Option<Instant>,
    /// When the next claim of due attempts is wanted (before the spacing applies).
    next_claim: Instant,
    /// Claimed attempts kept ready per organisation, at most `ready_per_org_max` each; an
    /// entry leaves at zero. Its values add up to `ready_total`.
    ready: AHashMap<Uuid, usize>,
    /// Ready attempts in all; at most `limits.in_flight_max`.
    ready_total: usize,
    /// Attempts answered whose outcome is not yet recorded (they keep their lease).
    unrecorded: usize,
    /// A claim of every organisation was skipped for the outcome bound: the writer
    /// catching up asks for it.
    claim_after_recorded: bool,
    /// Set by `stop`, never cleared: no more claims.
    stopping: bool,
}

impl Scheduler {
    /// A scheduler with nothing in flight, whose first claim is due at `now`.
    pub fn new(limits: Limits, now: Instant) -> Scheduler {
        assert!(limits.in_flight_max > 0, "in_flight_max must be at least 1");
        assert!(limits.outcomes_queued_max > 0, "outcomes_queued_max must be at least 1");
        assert!(limits.per_org_max > 0, "per_org_max must be at least 1");
        assert!(!limits.poll_interval.is_zero(), "poll_interval must not be zero");
        Scheduler {
            limits,
            claim_spacing: CLAIM_SPACING_MIN.min(limits.poll_interval),
            in_flight: 0,
            per_org: AHashMap::default(),
            room_backlog: false,
            org_backlog: AHashSet::default(),
            org_ready: AHashSet::default(),
            last_claim: None,
            next_claim: now,
            ready: AHashMap::default(),
            ready_total: 0,
            unrecorded: 0,
            claim_after_recorded: false,
            stopping: false,
        }
    }

    /// Attempts in flight, all organisations together.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Attempts of `org` in flight.
    pub fn in_flight_of(&self, org: Uuid) -> usize {
        self.per_org.get(&org).copied().unwrap_or(0)
    }

    /// Claimed attempts of `org` kept ready.
    pub fn ready_of(&self, org: Uuid) -> usize {
        self.ready.get(&org).copied().unwrap_or(0)
    }

    /// Attempts whose lease this process holds: in flight, answered and not recorded,
    /// and ready. Shutdown waits for zero.
    pub fn leases_held(&self) -> usize {
        self.in_flight + self.unrecorded + self.ready_total
    }

    /// Whether answered outcomes waiting for the writer pause claims and prefetch.
    fn outcomes_blocked(&self) -> bool {
        self.unrecorded >= self.limits.outcomes_queued_max
    }

    /// Organisations with attempts in flight.
    #[cfg(test)]
    pub fn orgs_in_flight(&self) -> usize {
        self.per_org.len()
    }

    /// Whether a claim was cut short by the global room since the last full claim.
    #[cfg(test)]
    pub fn room_backlog(&self) -> bool {
        self.room_backlog
    }

    /// Whether `org` may have more due than a claim gave it.
    #[cfg(test)]
    pub fn has_org_backlog(&self, org: Uuid) -> bool {
        self.org_backlog.contains(&org)
    }

    /// Shutdown began: no more claims (attempts in flight still finish).
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    #[cfg(test)]
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Once stopping: every ready attempt, as `(organisation, count)`, to give back;
    /// they are no longer counted. Empty before.
    pub fn release_ready(&mut self) -> Vec<(Uuid, usize)> {
        if !self.stopping {
            return Vec::new();
        }
        self.ready_total = 0;
        self.ready.drain().collect()
    }

    /// Attempts that may be claimed now to start (none once stopping, or while the
    /// outcome queue is at its bound).
    pub fn room(&self) -> usize {
        if self.stopping || self.outcomes_blocked() {
            return 0;
        }
        self.limits.in_flight_max.saturating_sub(self.in_flight).min(CLAIM_BATCH_MAX)
    }

    /// When the engine should next call `poll_claim`: the wanted claim time, but never
    /// sooner than the spacing after the last claim.
    pub fn next_wake(&self) -> Instant {
        match self.last_claim {
            Some(last) => self.next_claim.max(last + self.claim_spacing),
            None => self.next_claim,
        }
    }

    /// Of the events `(org, id)` just committed and handed over, those that may be
    /// claimed now: organisations under their limit, as many as there is room for. The
    /// rest are left for a claim of due attempts (they are due in the database): those
    /// of an organisation at its limit are its backlog, those beyond the room the room's.
    pub fn admit_handed(&mut self, mut events: Vec<(Uuid, Uuid)>) -> Vec<(Uuid, Uuid)> {
        let per_org_max = self.limits.per_org_max;
        let per_org = &self.per_org;
        let org_backlog = &mut self.org_backlog;
        events.retain(|(org, _)| {
            let room = per_org.get(org).copied().unwrap_or(0) < per_org_max;
            if !room {
                org_backlog.insert(*org);
            }
            room
        });
        if self.outcomes_blocked() && !events.is_empty() {
            // Not the room's backlog: the writer catching up asks for the claim.
            self.claim_after_recorded = true;
            return Vec::new();
        }
        let room = self.room();
        if events.len() > room {
            events.truncate(room);
            self.room_backlog = true;
        }
        events
    }

    /// A claim of due attempts to run at `now`, or `None`: too soon (see `next_wake`),
    /// or no room (then the claim counts as made and cut short).
    pub fn poll_claim(&mut self, now: Instant) -> Option<ClaimRequest> {
        if now < self.next_wake() {
            return None;
        }
        self.last_claim = Some(now);
        self.next_claim = now + self.limits.poll_interval;
        if self.outcomes_blocked() && !self.stopping {
            self.claim_after_recorded = true;
            return None;
        }
        let limit = self.room();
        if limit == 0 {
            self.room_backlog = true;
            return None;
        }
        Some(ClaimRequest { limit, per_org: self.limits.per_org_max, excluded_orgs: self.saturated_orgs() })
    }

    /// The result of `request`: the organisation of each claimed attempt, in order.
    /// Returns what to do with each. A claim that filled its limit leaves a room
    /// backlog, and the next claim comes as soon as the spacing allows. An organisation
    /// that got as many as a claim takes of one (`per_org`), or one of whose attempts
    /// was given back, is left with a backlog of its own (claimed again when it
    /// completes one).
    pub fn on_polled(&mut self, request: &ClaimRequest, claimed_orgs: &[Uuid]) -> Vec<Admission> {
        debug_assert!(claimed_orgs.len() <= request.limit, "a claim returned more than its limit");
        self.room_backlog = false;
        let admissions = self.on_claimed(claimed_orgs);
        let mut claimed_per_org: AHashMap<Uuid, usize> = AHashMap::default();
        for org in claimed_orgs {
            *claimed_per_org.entry(*org).or_default() += 1;
        }
        for (org, claimed) in claimed_per_org {
            if claimed >= request.per_org {
                self.org_backlog.insert(org);
            }
        }
        if claimed_orgs.len() >= request.limit {
            self.room_backlog = true;
        }
        if self.room_backlog {
            self.want_claim();
        }
        admissions
    }

    /// A claim of the organisations with a backlog that completed an attempt since
    /// their last claim, each for its free slots within the global room; `None` when
    /// there are none, when stopping, or while the global room is what cuts claims
    /// short (then the claim of every organisation shares the room, oldest due first).
    pub fn org_claim(&mut self) -> Option<OrgClaimRequest> {
        if self.room_backlog || self.org_ready.is_empty() || self.outcomes_blocked() || self.stopping {
            return None;
        }
        let mut room = self.room();
        let mut ready_room = self.limits.in_flight_max - self.ready_total;
        let mut ready: Vec<Uuid> = self.org_ready.drain().collect();
        // Oldest organisation id first: a deterministic order, and none is always last.
        ready.sort_unstable();
        let mut orgs = Vec::with_capacity(ready.len());
        for org in ready {
            // Its free slots (within the room), then its ready queue up to the cap (within
            // the ready room): admitted in that order, so none is given back.
            let start = (self.limits.per_org_max - self.in_flight_of(org)).min(room);
            let mut prefetch = (self.limits.ready_per_org_max - self.ready_of(org)).min(ready_room);
            if self.in_flight_of(org) + start < self.limits.per_org_max {
                // The room, not its cap, limits it: what it claimed beyond would go back.
                prefetch = 0;
            }
            let left = CLAIM_BATCH_MAX - orgs.iter().map(|(_, n)| n).sum::<usize>();
            let asked = (start + prefetch).min(left);
            if asked == 0 {
                // Its slots are full again (handed-over events took them) or the room
                // ran out: it stays in the backlog and asks again at its next completion.
                continue;
            }
            room -= start.min(asked);
            ready_room -= asked - start.min(asked);
            orgs.push((org, asked));
        }
        debug_assert!(orgs.iter().map(|(_, n)| n).sum::<usize>() <= CLAIM_BATCH_MAX);
        (!orgs.is_empty()).then_some(OrgClaimRequest { orgs })
    }

    /// The result of an organisation claim: the organisation of each claimed attempt,
    /// in order. An organisation that got what it asked for keeps its backlog; one that
    /// got less has no more due now and leaves it.
    pub fn on_org_claimed(&mut self, request: &OrgClaimRequest, claimed_orgs: &[Uuid]) -> Vec<Admission> {
        let admissions = self.on_claimed(claimed_orgs);
        for (org, asked) in &request.orgs {
            let claimed = claimed_orgs.iter().filter(|o| *o == org).count();
            debug_assert!(claimed <= *asked, "an organisation claim returned more than it asked for");
            if claimed < *asked {
                self.org_backlog.remove(org);
            }
        }
        admissions
    }

    /// Admits each claimed attempt (by its organisation, in order): `Start` counts it in
    /// flight; `Ready` keeps it for its organisation's next free slot; `GiveBack` when
    /// neither may be.
    pub fn on_claimed(&mut self, claimed_orgs: &[Uuid]) -> Vec<Admission> {
        claimed_orgs.iter().map(|org| self.admit(*org)).collect()
    }

    /// An attempt of `org` that was started has its answer (or failed): its slot is
    /// free, its outcome waits for the writer (report `on_recorded`). The slot goes at
    /// once to the organisation's oldest ready attempt, if any (not once stopping: then
    /// `release_ready`). Asks for a claim when a claim was cut short by the global room,
    /// or `org` has a backlog (then `org_claim` includes it).
    pub fn on_answered(&mut self, org: Uuid) -> Answered {
        assert!(self.in_flight > 0, "a completion with no attempt in flight");
        let start_ready = !self.stopping && self.ready_of(org) > 0;
        let Some(count) = self.per_org.get_mut(&org) else {
            panic!("a completion for organisation {org} with no attempt of it in flight");
        };
        self.unrecorded += 1;
        if start_ready {
            // The freed slot is taken again: the counts in flight stay.
            let ready = self.ready.get_mut(&org).expect("counted ready");
            *ready -= 1;
            if *ready == 0 {
                self.ready.remove(&org);
            }
            self.ready_total -= 1;
        } else {
            *count -= 1;
            if *count == 0 {
                self.per_org.remove(&org);
            }
            self.in_flight -= 1;
        }
        self.debug_check_counts();
        if self.room_backlog {
            self.want_claim();
        }
        if self.org_backlog.contains(&org) {
            self.org_ready.insert(org);
        }
        Answered { start_ready, wake: self.room_backlog || !self.org_ready.is_empty() }
    }

    /// `recorded` outcomes were written (or given up on; either way their leases are
    /// no longer this process's concern). Returns whether to wake the engine: the
    /// outcome bound paused a claim that may be made now.
    pub fn on_recorded(&mut self, recorded: usize) -> bool {
        assert!(recorded <= self.unrecorded, "more outcomes recorded than answered");
        let was_blocked = self.outcomes_blocked();
        self.unrecorded -= recorded;
        if !was_blocked || self.outcomes_blocked() {
            return false;
        }
        if std::mem::take(&mut self.claim_after_recorded) {
            self.want_claim();
            return true;
        }
        self.room_backlog || !self.org_ready.is_empty()
    }

    fn admit(&mut self, org: Uuid) -> Admission {
        let count = self.in_flight_of(org);
        if count >= self.limits.per_org_max {
            let ready = self.ready_of(org);
            let may_prefetch = !self.stopping && !self.room_backlog && !self.outcomes_blocked();
            if may_prefetch
                && ready < self.limits.ready_per_org_max
                && self.ready_total < self.limits.in_flight_max
            {
                self.ready.insert(org, ready + 1);
                self.ready_total += 1;
                return Admission::Ready;
            }
            self.org_backlog.insert(org);
            return Admission::GiveBack;
        }
        if self.in_flight >= self.limits.in_flight_max {
            self.room_backlog = true;
            return Admission::GiveBack;
        }
        self.per_org.insert(org, count + 1);
        self.in_flight += 1;
        assert!(self.in_flight <= self.limits.in_flight_max);
        assert!(count < self.limits.per_org_max);
        self.debug_check_counts();
        Admission::Start
    }

    /// A claim is wanted as soon as the spacing after the last one allows.
    fn want_claim(&mut self) {
        if let Some(last) = self.last_claim {
            self.next_claim = self.next_claim.min(last + self.claim_spacing);
        }
    }

    fn saturated_orgs(&self) -> Vec<Uuid> {
        let saturated = self.per_org.iter().filter(|(_, &n)| n >= self.limits.per_org_max);
        saturated.map(|(org, _)| *org).collect()
    }

    /// O(organisations in flight), so debug builds only.
    fn debug_check_counts(&self) {
        debug_assert_eq!(self.per_org.values().sum::<usize>(), self.in_flight);
        debug_assert!(self.per_org.values().all(|&n| n > 0 && n <= self.limits.per_org_max));
        debug_assert_eq!(self.ready.values().sum::<usize>(), self.ready_total);
        debug_assert!(self.ready.values().all(|&n| n > 0 && n <= self.limits.ready_per_org_max));
        debug_assert!(self.ready_total <= self.limits.in_flight_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(1);
    const OUTCOMES_QUEUED_MAX: usize = 1_000;

    fn scheduler(in_flight_max: usize, per_org_max: usize) -> (Scheduler, Instant) {
        let start = Instant::now();
        let limits = Limits {
            in_flight_max,
            per_org_max,
            ready_per_org_max: per_org_max,
            poll_interval: POLL,
            outcomes_queued_max: OUTCOMES_QUEUED_MAX,
        };
        (Scheduler::new(limits, start), start)
    }

    /// An attempt answered and its outcome recorded at once; whether either asked for
    /// a claim. Asserts no ready attempt took the slot.
    fn done(s: &mut Scheduler, org: Uuid) -> bool {
        let answered = s.on_answered(org);
        assert!(!answered.start_ready, "a ready attempt took the slot");
        let woke = s.on_recorded(1);
        answered.wake || woke
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn org(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn event(org_n: u128, id: u128) -> (Uuid, Uuid) {
        (org(org_n), Uuid::from_u128(1_000_000 + id))
    }

    use Admission::{GiveBack, Ready, Start};

    #[test]
    fn the_first_claim_is_due_at_once_and_asks_for_the_room() {
        let (mut s, t0) = scheduler(10, 3);
        assert_eq!(s.next_wake(), t0);
        let request = s.poll_claim(t0).expect("a claim at start");
        assert_eq!(request, ClaimRequest { limit: 10, per_org: 3, excluded_orgs: vec![] });
        // Not cut short: the next claim is the timer's, one poll interval on.
        assert_eq!(s.on_polled(&request, &[org(1)]), vec![Start]);
        assert!(!s.room_backlog());
        assert_eq!(s.next_wake(), t0 + POLL);
        assert_eq!(s.poll_claim(t0 + POLL - ms(1)), None);
        assert!(s.poll_claim(t0 + POLL).is_some());
    }

    #[test]
    fn the_room_is_capped_by_the_batch_size() {
        let (mut s, t0) = scheduler(CLAIM_BATCH_MAX * 2, 3);
        assert_eq!(s.poll_claim(t0).map(|r| r.limit), Some(CLAIM_BATCH_MAX));
    }

    #[test]
    fn the_global_cap_bounds_claims_and_starts() {
        let (mut s, t0) = scheduler(3, 10);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(request.limit, 3);
        assert_eq!(s.on_polled(&request, &[org(1), org(2), org(3)]), vec![Start; 3]);
        assert_eq!(s.in_flight(), 3);
        assert_eq!(s.room(), 0);
        // No room: the claim is not made, and counts as cut short.
        assert_eq!(s.poll_claim(t0 + POLL), None);
        assert!(s.room_backlog());
        assert_eq!(s.admit_handed(vec![event(4, 1)]), vec![]);
        // Claimed beyond the room anyway (a database answering more than asked): given back.
        assert_eq!(s.on_claimed(&[org(4)]), vec![GiveBack]);
        assert_eq!(s.in_flight(), 3);
        assert_eq!(s.in_flight_of(org(4)), 0);
    }

    #[test]
    fn the_per_organisation_cap_gives_back_the_excess_and_excludes_the_organisation() {
        let (mut s, t0) = scheduler(100, 2);
        let five: Vec<_> = (0..5).map(|i| event(1, i)).collect();
        // Admitted by the counts before the claim; after it, the cap's worth is kept
        // ready and the excess goes back.
        assert_eq!(s.admit_handed(five).len(), 5);
        assert_eq!(s.on_claimed(&[org(1); 5]), vec![Start, Start, Ready, Ready, GiveBack]);
        assert_eq!(s.in_flight_of(org(1)), 2);
        assert_eq!(s.ready_of(org(1)), 2);
        assert_eq!(s.in_flight(), 2);
        assert!(s.has_org_backlog(org(1)));
        assert!(!s.room_backlog());
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(request.excluded_orgs, vec![org(1)]);
        assert_eq!(request.per_org, 2);
        assert_eq!(request.limit, 98);
        // Other organisations are not held back by the saturated one.
        assert_eq!(s.on_polled(&request, &[org(2), org(2), org(3)]), vec![Start; 3]);
        // One that got as many as a claim takes of one may have more due.
        assert!(s.has_org_backlog(org(2)));
        assert!(!s.has_org_backlog(org(3)));
        assert!(!s.room_backlog());
    }

    #[test]
    fn handed_events_of_a_saturated_organisation_are_left_for_the_poller() {
        let (mut s, _) = scheduler(100, 1);
        assert_eq!(s.on_claimed(&[org(1)]), vec![Start]);
        assert!(!s.has_org_backlog(org(1)));
        assert_eq!(s.admit_handed(vec![event(1, 1), event(2, 2)]), vec![event(2, 2)]);
        // Some left is enough: a claim must come back for them.
        assert!(s.has_org_backlog(org(1)));
        assert_eq!(s.admit_handed(vec![event(1, 3)]), vec![]);
        assert!(!s.room_backlog());
        // The saturated organisation's completion asks for a claim of it: for its slot,
        // and for its ready queue.
        assert!(done(&mut s, org(1)));
        assert_eq!(s.org_claim(), Some(OrgClaimRequest { orgs: vec![(org(1), 2)] }));
    }

    #[test]
    fn completions_wake_the_poller_only_after_a_claim_cut_short() {
        let (mut s, t0) = scheduler(3, 10);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1), org(2)]), vec![Start; 2]);
        assert!(!s.room_backlog());
        assert!(!done(&mut s, org(1)));
        assert_eq!(s.next_wake(), t0 + POLL);

        let at = t0 + POLL;
        let request = s.poll_claim(at).expect("claim");
        assert_eq!(request.limit, 2);
        assert_eq!(s.on_polled(&request, &[org(3), org(4)]), vec![Start; 2]);
        assert!(s.room_backlog());
        // A full claim asks for the next one as soon as the spacing allows.
        assert_eq!(s.next_wake(), at + CLAIM_SPACING_MIN);
        assert!(done(&mut s, org(3)));
        assert_eq!(s.next_wake(), at + CLAIM_SPACING_MIN);

        // A claim that is not cut short clears the backlog.
        let request = s.poll_claim(at + CLAIM_SPACING_MIN).expect("claim");
        assert_eq!(s.on_polled(&request, &[]), vec![]);
        assert!(!s.room_backlog());
        assert!(!done(&mut s, org(4)));
    }

    #[test]
    fn handed_events_beyond_the_room_leave_a_backlog() {
        let (mut s, _) = scheduler(2, 10);
        let admitted = s.admit_handed(vec![event(1, 1), event(2, 2), event(3, 3)]);
        assert_eq!(admitted, vec![event(1, 1), event(2, 2)]);
        assert!(s.room_backlog());
    }

    #[test]
    fn an_attempt_given_back_by_a_claim_leaves_a_backlog() {
        let (mut s, t0) = scheduler(10, 1);
        assert_eq!(s.on_claimed(&[org(1)]), vec![Start]);
        // The claim is not full, but it took two of an organisation with its slot taken:
        // one fills its ready queue, the other goes back.
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1), org(1)]), vec![Ready, GiveBack]);
        assert!(s.has_org_backlog(org(1)));
        assert!(!s.room_backlog());
        // That organisation's answer starts its ready attempt in the slot and asks at
        // once for a claim of it, not of all: to refill its ready queue.
        assert_eq!(s.on_answered(org(1)), Answered { start_ready: true, wake: true });
        assert_eq!(s.in_flight_of(org(1)), 1);
        assert_eq!(s.org_claim(), Some(OrgClaimRequest { orgs: vec![(org(1), 1)] }));
        assert_eq!(s.next_wake(), t0 + POLL);
    }

    /// The case that held push to a few deliveries a second: a claim that stops at the
    /// organisation's cap, well within the global room, is not cut short by the room,
    /// yet the organisation has more due. Its completions must bring its next claim.
    #[test]
    fn a_claim_stopped_by_the_organisation_cap_is_continued_by_its_completions() {
        let (mut s, t0) = scheduler(256, 8);
        let request = s.poll_claim(t0).expect("claim");
        let mut claimed = vec![org(1); 8];
        claimed.extend([org(2); 3]);
        assert_eq!(s.on_polled(&request, &claimed), vec![Start; 11]);
        assert!(!s.room_backlog());
        assert!(s.has_org_backlog(org(1)));
        assert!(!s.has_org_backlog(org(2)));
        // Org 2 got all it had: its completion asks for nothing.
        assert!(!done(&mut s, org(2)));
        assert_eq!(s.org_claim(), None);
        // Org 1's completions each ask; the claim made after them takes all freed slots
        // and a ready queue as long as the cap.
        assert!(done(&mut s, org(1)));
        assert!(done(&mut s, org(1)));
        assert!(done(&mut s, org(1)));
        let request = s.org_claim().expect("a claim of org 1");
        assert_eq!(request, OrgClaimRequest { orgs: vec![(org(1), 3 + 8)] });
        // Nothing more until another completion: one claim per burst of completions.
        assert_eq!(s.org_claim(), None);
        // The claim of every organisation stays on the timer.
        assert_eq!(s.next_wake(), t0 + POLL);
        let mut admitted = vec![Start; 3];
        admitted.extend([Ready; 8]);
        assert_eq!(s.on_org_claimed(&request, &[org(1); 11]), admitted);
        assert_eq!(s.in_flight_of(org(1)), 8);
        assert_eq!(s.ready_of(org(1)), 8);
        // It got what it asked for: still a backlog. Its answers start ready attempts and
        // each asks for a claim to refill the queue; a claim that gets less ends it.
        assert!(s.has_org_backlog(org(1)));
        assert_eq!(s.on_answered(org(1)), Answered { start_ready: true, wake: true });
        let request = s.org_claim().expect("a claim of org 1");
        assert_eq!(request, OrgClaimRequest { orgs: vec![(org(1), 1)] });
        assert_eq!(s.on_org_claimed(&request, &[]), vec![]);
        assert!(!s.has_org_backlog(org(1)));
        assert_eq!(s.on_answered(org(1)), Answered { start_ready: true, wake: false });
        assert_eq!(s.org_claim(), None);
        assert_eq!(s.in_flight_of(org(1)), 8);
        assert_eq!(s.ready_of(org(1)), 6);
    }

    #[test]
    fn organisation_claims_stay_within_the_global_room_and_the_caps() {
        let (mut s, t0) = scheduler(10, 8);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1); 8]), vec![Start; 8]);
        assert_eq!(s.on_claimed(&[org(2), org(2)]), vec![Start; 2]);
        assert_eq!(s.room(), 0);
        done(&mut s, org(1));
        done(&mut s, org(1));
        // Org 1 has two free slots, but the room has one left once org 3 takes one.
        assert_eq!(s.admit_handed(vec![event(3, 1)]), vec![event(3, 1)]);
        assert_eq!(s.on_claimed(&[org(3)]), vec![Start]);
        assert_eq!(s.org_claim(), Some(OrgClaimRequest { orgs: vec![(org(1), 1)] }));
        // Several organisations, each for its own free slots, in id order.
        let (mut s, t0) = scheduler(100, 4);
        let request = s.poll_claim(t0).expect("claim");
        let claimed: Vec<Uuid> = [org(2); 4].into_iter().chain([org(1); 4]).collect();
        s.on_polled(&request, &claimed);
        done(&mut s, org(2));
        done(&mut s, org(1));
        done(&mut s, org(2));
        // Each its free slots and a ready queue as long as its cap.
        assert_eq!(s.org_claim(), Some(OrgClaimRequest { orgs: vec![(org(1), 1 + 4), (org(2), 2 + 4)] }));
    }

    /// While the global room is what cuts claims short, an organisation that frees a
    /// slot does not take it back for itself: the spaced claim of every organisation,
    /// oldest due first, shares it with those that have none in flight.
    #[test]
    fn organisation_claims_wait_while_the_global_room_cuts_claims_short() {
        let (mut s, t0) = scheduler(4, 2);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1), org(1), org(2), org(2)]), vec![Start; 4]);
        assert!(s.room_backlog());
        assert!(s.has_org_backlog(org(1)));
        assert!(done(&mut s, org(1)));
        assert_eq!(s.org_claim(), None);
        assert_eq!(s.next_wake(), t0 + CLAIM_SPACING_MIN);
        let request = s.poll_claim(t0 + CLAIM_SPACING_MIN).expect("claim of every organisation");
        assert_eq!(request.limit, 1);
        assert_eq!(request.excluded_orgs, vec![org(2)]);
        // Org 3, with nothing in flight, gets the slot; the claim was full, so the room
        // still cuts claims short.
        assert_eq!(s.on_polled(&request, &[org(3)]), vec![Start]);
        assert!(s.room_backlog());
        assert_eq!(s.org_claim(), None);
    }

    #[test]
    fn no_organisation_claims_once_stopping() {
        let (mut s, t0) = scheduler(10, 2);
        let request = s.poll_claim(t0).expect("claim");
        s.on_polled(&request, &[org(1), org(1)]);
        s.stop();
        done(&mut s, org(1));
        assert_eq!(s.org_claim(), None);
    }

    #[test]
    fn claims_are_spaced_and_the_timer_claims_at_the_spaced_time() {
        let (mut s, t0) = scheduler(1, 10);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1)]), vec![Start]);
        // Cut short: completions ask for a claim, but not before the spacing.
        assert!(done(&mut s, org(1)));
        assert_eq!(s.next_wake(), t0 + CLAIM_SPACING_MIN);
        assert_eq!(s.poll_claim(t0 + ms(1)), None);
        assert_eq!(s.poll_claim(t0 + CLAIM_SPACING_MIN - ms(1)), None);
        let at = t0 + CLAIM_SPACING_MIN;
        let request = s.poll_claim(at).expect("claim at the spaced time");
        // Not cut short: back to the timer, one poll interval on.
        s.on_polled(&request, &[]);
        assert_eq!(s.next_wake(), at + POLL);
    }

    #[test]
    fn the_spacing_is_the_poll_interval_when_that_is_shorter() {
        let t0 = Instant::now();
        let poll_interval = ms(30);
        let limits = Limits {
            in_flight_max: 1,
            per_org_max: 1,
            ready_per_org_max: 1,
            poll_interval,
            outcomes_queued_max: 1,
        };
        let mut s = Scheduler::new(limits, t0);
        let request = s.poll_claim(t0).expect("claim");
        s.on_polled(&request, &[org(1)]);
        assert_eq!(s.next_wake(), t0 + poll_interval);
        assert!(s.poll_claim(t0 + poll_interval).is_none(), "no room: not claimed");
        assert!(done(&mut s, org(1)));
        assert_eq!(s.next_wake(), t0 + poll_interval * 2);
        assert!(s.poll_claim(t0 + poll_interval * 2).is_some());
    }

    #[test]
    fn stopping_makes_the_room_zero_and_attempts_in_flight_finish() {
        let (mut s, t0) = scheduler(10, 10);
        let request = s.poll_claim(t0).expect("claim");
        s.on_polled(&request, &[org(1), org(2)]);
        s.stop();
        assert!(s.is_stopping());
        assert_eq!(s.room(), 0);
        assert_eq!(s.admit_handed(vec![event(3, 1)]), vec![]);
        assert_eq!(s.poll_claim(t0 + POLL), None);
        // The claim counted: no retry before the next interval.
        assert_eq!(s.next_wake(), t0 + POLL + POLL);
        done(&mut s, org(1));
        done(&mut s, org(2));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.orgs_in_flight(), 0);
    }

    #[test]
    #[should_panic(expected = "no attempt in flight")]
    fn a_completion_without_a_start_is_a_broken_invariant() {
        let (mut s, _) = scheduler(10, 10);
        done(&mut s, org(1));
    }

    #[test]
    #[should_panic(expected = "no attempt of it in flight")]
    fn a_completion_for_another_organisation_is_a_broken_invariant() {
        let (mut s, _) = scheduler(10, 10);
        s.on_claimed(&[org(1)]);
        done(&mut s, org(2));
    }

    /// The slot is the receiver's answer, not the outcome's commit: it frees at the
    /// answer while the lease is held until the outcome is recorded.
    #[test]
    fn an_answer_frees_the_slot_and_the_lease_is_held_until_recorded() {
        let (mut s, _) = scheduler(10, 2);
        assert_eq!(s.on_claimed(&[org(1), org(1)]), vec![Start, Start]);
        assert_eq!(s.on_answered(org(1)), Answered { start_ready: false, wake: false });
        assert_eq!(s.in_flight_of(org(1)), 1);
        assert_eq!(s.room(), 9);
        assert_eq!(s.leases_held(), 2);
        // The freed slot is taken before the outcome is written.
        assert_eq!(s.on_claimed(&[org(1)]), vec![Start]);
        assert!(!s.on_recorded(1));
        assert_eq!(s.leases_held(), 2);
    }

    /// Outcomes waiting for the writer are bounded: at the bound no claim is made and
    /// nothing is prefetched; the writer catching up asks for the claim skipped.
    #[test]
    fn outcomes_waiting_for_the_writer_pause_claims_at_their_bound() {
        let t0 = Instant::now();
        let limits = Limits {
            in_flight_max: 10,
            per_org_max: 2,
            ready_per_org_max: 2,
            poll_interval: POLL,
            outcomes_queued_max: 2,
        };
        let mut s = Scheduler::new(limits, t0);
        let request = s.poll_claim(t0).expect("claim");
        let claimed = [org(1), org(1), org(2), org(2)];
        assert_eq!(s.on_polled(&request, &claimed), vec![Start; 4]);
        assert!(s.has_org_backlog(org(1)));
        assert!(s.on_answered(org(1)).wake);
        assert!(s.on_answered(org(2)).wake);
        assert_eq!(s.room(), 0);
        assert_eq!(s.org_claim(), None);
        assert_eq!(s.admit_handed(vec![event(3, 1)]), vec![]);
        // A claim already running when the bound was reached: nothing kept ready.
        assert_eq!(s.on_claimed(&[org(2), org(2)]), vec![Start, GiveBack]);
        let at = t0 + POLL;
        assert_eq!(s.poll_claim(at), None);
        // Below the bound again: the skipped claim is due after the spacing, and the
        // organisation claim waiting is made.
        assert!(s.on_recorded(1));
        assert_eq!(s.next_wake(), at + CLAIM_SPACING_MIN);
        let request = OrgClaimRequest { orgs: vec![(org(1), 1 + 2), (org(2), 2)] };
        assert_eq!(s.org_claim(), Some(request));
        assert!(!s.on_recorded(1));
    }

    /// A ready attempt waits only for its organisation's next answer; ready attempts
    /// start in the order the slots free, none of them waits more than one attempt.
    #[test]
    fn ready_attempts_start_in_the_slots_their_organisation_frees() {
        let (mut s, t0) = scheduler(100, 2);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1), org(1)]), vec![Start, Start]);
        assert_eq!(s.on_claimed(&[org(1), org(1), org(1)]), vec![Ready, Ready, GiveBack]);
        assert_eq!(s.on_claimed(&[org(2)]), vec![Start]);
        // Another organisation's answer does not start them.
        assert!(!s.on_answered(org(2)).start_ready);
        assert!(s.on_answered(org(1)).start_ready);
        assert!(s.on_answered(org(1)).start_ready);
        assert_eq!((s.in_flight_of(org(1)), s.ready_of(org(1))), (2, 0));
        assert!(!s.on_answered(org(1)).start_ready);
        assert_eq!(s.in_flight_of(org(1)), 1);
    }

    /// While the global room cuts claims short, nothing is kept ready: the room goes to
    /// the claim of every organisation, not to an organisation's queue.
    #[test]
    fn nothing_is_prefetched_while_the_global_room_cuts_claims_short() {
        let (mut s, t0) = scheduler(2, 1);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1), org(2)]), vec![Start, Start]);
        assert!(s.room_backlog());
        assert_eq!(s.on_claimed(&[org(1)]), vec![GiveBack]);
        assert_eq!(s.ready_of(org(1)), 0);
    }

    /// Shutdown: ready attempts are not started but given back, and the leases held
    /// count down to zero as attempts are answered and recorded.
    #[test]
    fn stopping_gives_back_the_ready_attempts() {
        let (mut s, _) = scheduler(10, 1);
        assert_eq!(s.on_claimed(&[org(1), org(1), org(2), org(2)]), vec![Start, Ready, Start, Ready]);
        assert_eq!(s.release_ready(), vec![], "nothing released before stopping");
        assert_eq!(s.leases_held(), 4);
        s.stop();
        assert_eq!(s.on_answered(org(1)), Answered { start_ready: false, wake: false });
        let mut released = s.release_ready();
        released.sort_unstable();
        assert_eq!(released, vec![(org(1), 1), (org(2), 1)]);
        assert_eq!(s.leases_held(), 2);
        assert_eq!(s.on_claimed(&[org(3), org(3)]), vec![Start, GiveBack]);
        s.on_answered(org(2));
        s.on_answered(org(3));
        s.on_recorded(3);
        assert_eq!(s.leases_held(), 0);
    }

    /// An organisation at its cap with a backlog keeps rounds of its slots ready: its
    /// claim asks for every ready place free, and the ready attempts start in order in
    /// the slots its answers free.
    #[test]
    fn prefetch_keeps_several_rounds_of_an_organisations_slots_ready() {
        let t0 = Instant::now();
        let limits = Limits {
            in_flight_max: 100,
            per_org_max: 2,
            ready_per_org_max: 6,
            poll_interval: POLL,
            outcomes_queued_max: 100,
        };
        let mut s = Scheduler::new(limits, t0);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1), org(1)]), vec![Start, Start]);
        assert!(s.on_answered(org(1)).wake);
        // One slot free, six ready places: one more round than the slots.
        let request = s.org_claim().expect("an organisation claim");
        assert_eq!(request, OrgClaimRequest { orgs: vec![(org(1), 1 + 6)] });
        assert_eq!(s.on_org_claimed(&request, &[org(1); 7]), [vec![Start], vec![Ready; 6]].concat());
        assert_eq!((s.in_flight_of(org(1)), s.ready_of(org(1))), (2, 6));
        assert_eq!(s.on_claimed(&[org(1)]), vec![GiveBack], "the ready places are full");
        for left in (0..6).rev() {
            assert!(s.on_answered(org(1)).start_ready);
            assert_eq!((s.in_flight_of(org(1)), s.ready_of(org(1))), (2, left));
        }
    }

    /// The rounds kept ready never make a ready attempt outwait its lease: one attempt
    /// per round, then its own.
    #[test]
    fn prefetch_rounds_fit_in_the_lease() {
        let s = Duration::from_secs;
        assert_eq!(prefetch_rounds(s(60), s(10)), PREFETCH_ROUNDS_MAX);
        assert_eq!(prefetch_rounds(s(30), s(10)), 1);
        assert_eq!(prefetch_rounds(s(29), s(10)), 0, "a ready attempt could outwait its lease");
        assert_eq!(prefetch_rounds(s(11), s(10)), 0, "no prefetch");
        assert_eq!(prefetch_rounds(s(3600), Duration::ZERO), PREFETCH_ROUNDS_MAX);
    }

    /// xorshift: a deterministic sequence, so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Random hand-overs, claims, completions and clock steps, in virtual time: the caps
    /// hold after every step, claims of every organisation are spaced, organisation
    /// claims never outnumber completions (no claim loop without progress), and once
    /// every attempt completes the counts are back at zero.
    #[test]
    fn random_schedules_keep_the_invariants_and_drain_to_zero() {
        for seed in 1..=50u64 {
            let (in_flight_max, per_org_max) = (1 + seed as usize % 7, 1 + seed as usize % 3);
            let outcomes_queued_max = 1 + seed as usize % 5;
            let t0 = Instant::now();
            let ready_per_org_max = per_org_max * (seed as usize % (PREFETCH_ROUNDS_MAX + 1));
            let limits = Limits {
                in_flight_max,
                per_org_max,
                ready_per_org_max,
                poll_interval: POLL,
                outcomes_queued_max,
            };
            let mut s = Scheduler::new(limits, t0);
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut now = t0;
            let mut started: Vec<Uuid> = Vec::new();
            // Kept ready per organisation (the model of the engine's queues).
            let mut ready: AHashMap<Uuid, usize> = AHashMap::default();
            let mut unrecorded = 0usize;
            let mut claims: Vec<Instant> = Vec::new();
            let mut id = 0u128;
            let (mut completions, mut org_claims) = (0usize, 0usize);
            for _ in 0..2_000 {
                match rng.below(6) {
                    0 => {
                        let events: Vec<_> = (0..rng.below(6))
                            .map(|_| {
                                id += 1;
                                event(rng.below(4) as u128, id)
                            })
                            .collect();
                        let admitted = s.admit_handed(events.clone());
                        assert!(admitted.len() <= s.room());
                        assert!(admitted.iter().all(|e| events.contains(e)));
                        let orgs: Vec<Uuid> = admitted.iter().map(|(org, _)| *org).collect();
                        for (admission, org) in s.on_claimed(&orgs).into_iter().zip(orgs) {
                            match admission {
                                Start => started.push(org),
                                Ready => *ready.entry(org).or_default() += 1,
                                GiveBack => {}
                            }
                        }
                    }
                    1 => {
                        if let Some(request) = s.poll_claim(now) {
                            claims.push(now);
                            let n = rng.below(request.limit as u64 + 1);
                            let orgs: Vec<Uuid> = (0..n)
                                .map(|_| org(rng.below(4) as u128))
                                .filter(|org| !request.excluded_orgs.contains(org))
                                .collect();
                            for (admission, org) in s.on_polled(&request, &orgs).into_iter().zip(orgs) {
                                match admission {
                                    Start => started.push(org),
                                    Ready => *ready.entry(org).or_default() += 1,
                                    GiveBack => {}
                                }
                            }
                        }
                    }
                    2 if !started.is_empty() => {
                        let org = started.swap_remove(rng.below(started.len() as u64) as usize);
                        let answered = s.on_answered(org);
                        unrecorded += 1;
                        if answered.start_ready {
                            let queue =
                                ready.get_mut(&org).expect("a ready attempt started that was not kept");
                            *queue -= 1;
                            started.push(org);
                        }
                        completions += 1;
                    }
                    4 if unrecorded > 0 => {
                        let n = 1 + rng.below(unrecorded as u64) as usize;
                        s.on_recorded(n);
                        unrecorded -= n;
                    }
                    5 => {
                        if let Some(request) = s.org_claim() {
                            org_claims += 1;
                            let asked: usize = request.orgs.iter().map(|(_, n)| n).sum();
                            let ready_total: usize = ready.values().sum();
                            assert!(asked <= s.room() + (in_flight_max - ready_total));
                            // Each organisation returns up to what it asked for.
                            let orgs: Vec<Uuid> = request
                                .orgs
                                .iter()
                                .flat_map(|(org, n)| {
                                    std::iter::repeat_n(*org, rng.below(*n as u64 + 1) as usize)
                                })
                                .collect();
                            let admissions = s.on_org_claimed(&request, &orgs);
                            for (admission, org) in admissions.into_iter().zip(orgs) {
                                match admission {
                                    Start => started.push(org),
                                    Ready => *ready.entry(org).or_default() += 1,
                                    GiveBack => panic!("an organisation claim over a cap"),
                                }
                            }
                        }
                    }
                    3 => now = s.next_wake().max(now),
                    _ => now += ms(rng.below(150)),
                }
                assert!(s.in_flight() <= in_flight_max);
                assert_eq!(s.in_flight(), started.len());
                let ready_total: usize = ready.values().sum();
                assert!(ready_total <= in_flight_max);
                assert!(unrecorded <= outcomes_queued_max + 2 * in_flight_max);
                assert_eq!(s.leases_held(), started.len() + ready_total + unrecorded);
                for n in 0..4 {
                    assert!(s.in_flight_of(org(n)) <= per_org_max);
                    let kept = ready.get(&org(n)).copied().unwrap_or(0);
                    assert_eq!(s.ready_of(org(n)), kept);
                    assert!(kept <= ready_per_org_max);
                    // A ready attempt waits only while its organisation's slots are full:
                    // the next answer of that organisation starts it.
                    assert!(kept == 0 || s.in_flight_of(org(n)) == per_org_max);
                }
            }
            for pair in claims.windows(2) {
                assert!(pair[1] - pair[0] >= CLAIM_SPACING_MIN, "claims closer than the spacing");
            }
            assert!(
                org_claims <= completions,
                "{org_claims} organisation claims for {completions} completions"
            );
            // Draining: answers start the ready attempts, then the writer records all.
            while let Some(org) = started.pop() {
                if s.on_answered(org).start_ready {
                    *ready.get_mut(&org).expect("kept") -= 1;
                    started.push(org);
                }
                unrecorded += 1;
            }
            s.on_recorded(unrecorded);
            assert!(ready.values().all(|&n| n == 0));
            assert_eq!(s.in_flight(), 0);
            assert_eq!(s.orgs_in_flight(), 0);
            assert_eq!(s.leases_held(), 0);
        }
    }
}
