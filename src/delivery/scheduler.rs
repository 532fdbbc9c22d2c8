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
//! - A claimed attempt whose organisation is at its limit is given back unattempted.

use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};
use uuid::Uuid;

/// Attempts claimed per database round trip at most.
pub const CLAIM_BATCH_MAX: usize = 256;
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
    /// Longest time between two claims of due attempts; not zero.
    pub poll_interval: Duration,
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
    /// Counted in flight: attempt it, then report `on_done`.
    Start,
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
    /// Attempts started and not yet done; at most `limits.in_flight_max`.
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
    /// Set by `stop`, never cleared: no more claims.
    stopping: bool,
}

impl Scheduler {
    /// A scheduler with nothing in flight, whose first claim is due at `now`.
    pub fn new(limits: Limits, now: Instant) -> Scheduler {
        assert!(limits.in_flight_max > 0, "in_flight_max must be at least 1");
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

    /// Attempts that may be claimed now (none once stopping).
    pub fn room(&self) -> usize {
        if self.stopping {
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
        if self.room_backlog || self.org_ready.is_empty() {
            return None;
        }
        let mut room = self.room();
        let mut ready: Vec<Uuid> = self.org_ready.drain().collect();
        // Oldest organisation id first: a deterministic order, and none is always last.
        ready.sort_unstable();
        let mut orgs = Vec::with_capacity(ready.len());
        for org in ready {
            let free = self.limits.per_org_max - self.in_flight_of(org);
            let asked = free.min(room);
            if asked == 0 {
                // Its slots are full again (handed-over events took them) or the room
                // ran out: it stays in the backlog and asks again at its next completion.
                continue;
            }
            room -= asked;
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
    /// flight; `GiveBack` when its organisation (or the engine) is at its limit.
    pub fn on_claimed(&mut self, claimed_orgs: &[Uuid]) -> Vec<Admission> {
        claimed_orgs.iter().map(|org| self.admit(*org)).collect()
    }

    /// An attempt of `org` that was started is done (recorded or not). Returns whether
    /// to wake the engine for a claim: when a claim was cut short by the global room,
    /// or `org` has a backlog (then `org_claim` includes it).
    pub fn on_done(&mut self, org: Uuid) -> bool {
        assert!(self.in_flight > 0, "a completion with no attempt in flight");
        let Some(count) = self.per_org.get_mut(&org) else {
            panic!("a completion for organisation {org} with no attempt of it in flight");
        };
        *count -= 1;
        if *count == 0 {
            self.per_org.remove(&org);
        }
        self.in_flight -= 1;
        self.debug_check_counts();
        if self.room_backlog {
            self.want_claim();
        }
        if self.org_backlog.contains(&org) {
            self.org_ready.insert(org);
        }
        self.room_backlog || !self.org_ready.is_empty()
    }

    fn admit(&mut self, org: Uuid) -> Admission {
        let count = self.in_flight_of(org);
        if count >= self.limits.per_org_max {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(1);

    fn scheduler(in_flight_max: usize, per_org_max: usize) -> (Scheduler, Instant) {
        let start = Instant::now();
        (Scheduler::new(Limits { in_flight_max, per_org_max, poll_interval: POLL }, start), start)
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

    use Admission::{GiveBack, Start};

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
        // Admitted by the counts before the claim; the excess goes back after it.
        assert_eq!(s.admit_handed(five).len(), 5);
        assert_eq!(s.on_claimed(&[org(1); 5]), vec![Start, Start, GiveBack, GiveBack, GiveBack]);
        assert_eq!(s.in_flight_of(org(1)), 2);
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
        // The saturated organisation's completion asks for a claim of it, for its slot.
        assert!(s.on_done(org(1)));
        assert_eq!(s.org_claim(), Some(OrgClaimRequest { orgs: vec![(org(1), 1)] }));
    }

    #[test]
    fn completions_wake_the_poller_only_after_a_claim_cut_short() {
        let (mut s, t0) = scheduler(3, 10);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1), org(2)]), vec![Start; 2]);
        assert!(!s.room_backlog());
        assert!(!s.on_done(org(1)));
        assert_eq!(s.next_wake(), t0 + POLL);

        let at = t0 + POLL;
        let request = s.poll_claim(at).expect("claim");
        assert_eq!(request.limit, 2);
        assert_eq!(s.on_polled(&request, &[org(3), org(4)]), vec![Start; 2]);
        assert!(s.room_backlog());
        // A full claim asks for the next one as soon as the spacing allows.
        assert_eq!(s.next_wake(), at + CLAIM_SPACING_MIN);
        assert!(s.on_done(org(3)));
        assert_eq!(s.next_wake(), at + CLAIM_SPACING_MIN);

        // A claim that is not cut short clears the backlog.
        let request = s.poll_claim(at + CLAIM_SPACING_MIN).expect("claim");
        assert_eq!(s.on_polled(&request, &[]), vec![]);
        assert!(!s.room_backlog());
        assert!(!s.on_done(org(4)));
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
        let (mut s, t0) = scheduler(10, 3);
        assert_eq!(s.on_claimed(&[org(1), org(1)]), vec![Start, Start]);
        // The claim is not full, but it took two of an organisation with one slot left.
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1), org(1)]), vec![Start, GiveBack]);
        assert!(s.has_org_backlog(org(1)));
        assert!(!s.room_backlog());
        // That organisation's completion asks at once for a claim of it, not of all.
        assert!(s.on_done(org(1)));
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
        assert!(!s.on_done(org(2)));
        assert_eq!(s.org_claim(), None);
        // Org 1's completions each ask; the claim made after them takes all freed slots.
        assert!(s.on_done(org(1)));
        assert!(s.on_done(org(1)));
        assert!(s.on_done(org(1)));
        let request = s.org_claim().expect("a claim of org 1");
        assert_eq!(request, OrgClaimRequest { orgs: vec![(org(1), 3)] });
        // Nothing more until another completion: one claim per burst of completions.
        assert_eq!(s.org_claim(), None);
        // The claim of every organisation stays on the timer.
        assert_eq!(s.next_wake(), t0 + POLL);
        assert_eq!(s.on_org_claimed(&request, &[org(1); 3]), vec![Start; 3]);
        assert_eq!(s.in_flight_of(org(1)), 8);
        // It got what it asked for: still a backlog. A claim that gets less ends it.
        assert!(s.has_org_backlog(org(1)));
        assert!(s.on_done(org(1)));
        let request = s.org_claim().expect("a claim of org 1");
        assert_eq!(s.on_org_claimed(&request, &[]), vec![]);
        assert!(!s.has_org_backlog(org(1)));
        assert!(!s.on_done(org(1)));
        assert_eq!(s.org_claim(), None);
    }

    #[test]
    fn organisation_claims_stay_within_the_global_room_and_the_caps() {
        let (mut s, t0) = scheduler(10, 8);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1); 8]), vec![Start; 8]);
        assert_eq!(s.on_claimed(&[org(2), org(2)]), vec![Start; 2]);
        assert_eq!(s.room(), 0);
        s.on_done(org(1));
        s.on_done(org(1));
        // Org 1 has two free slots, but the room has one left once org 3 takes one.
        assert_eq!(s.admit_handed(vec![event(3, 1)]), vec![event(3, 1)]);
        assert_eq!(s.on_claimed(&[org(3)]), vec![Start]);
        assert_eq!(s.org_claim(), Some(OrgClaimRequest { orgs: vec![(org(1), 1)] }));
        // Several organisations, each for its own free slots, in id order.
        let (mut s, t0) = scheduler(100, 4);
        let request = s.poll_claim(t0).expect("claim");
        let claimed: Vec<Uuid> = [org(2); 4].into_iter().chain([org(1); 4]).collect();
        s.on_polled(&request, &claimed);
        s.on_done(org(2));
        s.on_done(org(1));
        s.on_done(org(2));
        assert_eq!(s.org_claim(), Some(OrgClaimRequest { orgs: vec![(org(1), 1), (org(2), 2)] }));
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
        assert!(s.on_done(org(1)));
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
        s.on_done(org(1));
        assert_eq!(s.org_claim(), None);
    }

    #[test]
    fn claims_are_spaced_and_the_timer_claims_at_the_spaced_time() {
        let (mut s, t0) = scheduler(1, 10);
        let request = s.poll_claim(t0).expect("claim");
        assert_eq!(s.on_polled(&request, &[org(1)]), vec![Start]);
        // Cut short: completions ask for a claim, but not before the spacing.
        assert!(s.on_done(org(1)));
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
        let mut s = Scheduler::new(Limits { in_flight_max: 1, per_org_max: 1, poll_interval }, t0);
        let request = s.poll_claim(t0).expect("claim");
        s.on_polled(&request, &[org(1)]);
        assert_eq!(s.next_wake(), t0 + poll_interval);
        assert!(s.poll_claim(t0 + poll_interval).is_none(), "no room: not claimed");
        assert!(s.on_done(org(1)));
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
        s.on_done(org(1));
        s.on_done(org(2));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.orgs_in_flight(), 0);
    }

    #[test]
    #[should_panic(expected = "no attempt in flight")]
    fn a_completion_without_a_start_is_a_broken_invariant() {
        let (mut s, _) = scheduler(10, 10);
        s.on_done(org(1));
    }

    #[test]
    #[should_panic(expected = "no attempt of it in flight")]
    fn a_completion_for_another_organisation_is_a_broken_invariant() {
        let (mut s, _) = scheduler(10, 10);
        s.on_claimed(&[org(1)]);
        s.on_done(org(2));
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
            let (mut s, t0) = scheduler(in_flight_max, per_org_max);
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut now = t0;
            let mut started: Vec<Uuid> = Vec::new();
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
                            if admission == Start {
                                started.push(org);
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
                                if admission == Start {
                                    started.push(org);
                                }
                            }
                        }
                    }
                    2 if !started.is_empty() => {
                        let org = started.swap_remove(rng.below(started.len() as u64) as usize);
                        s.on_done(org);
                        completions += 1;
                    }
                    5 => {
                        if let Some(request) = s.org_claim() {
                            org_claims += 1;
                            let asked: usize = request.orgs.iter().map(|(_, n)| n).sum();
                            assert!(asked <= s.room());
                            // Each organisation returns up to what it asked for.
                            let orgs: Vec<Uuid> = request
                                .orgs
                                .iter()
                                .flat_map(|(org, n)| {
                                    std::iter::repeat_n(*org, rng.below(*n as u64 + 1) as usize)
                                })
                                .collect();
                            let admissions = s.on_org_claimed(&request, &orgs);
                            assert!(
                                admissions.iter().all(|a| *a == Start),
                                "an organisation claim over a cap"
                            );
                            started.extend(orgs);
                        }
                    }
                    3 => now = s.next_wake().max(now),
                    _ => now += ms(rng.below(150)),
                }
                assert!(s.in_flight() <= in_flight_max);
                assert_eq!(s.in_flight(), started.len());
                for n in 0..4 {
                    assert!(s.in_flight_of(org(n)) <= per_org_max);
                }
            }
            for pair in claims.windows(2) {
                assert!(pair[1] - pair[0] >= CLAIM_SPACING_MIN, "claims closer than the spacing");
            }
            assert!(
                org_claims <= completions,
                "{org_claims} organisation claims for {completions} completions"
            );
            while let Some(org) = started.pop() {
                s.on_done(org);
            }
            assert_eq!(s.in_flight(), 0);
            assert_eq!(s.orgs_in_flight(), 0);
        }
    }
}
