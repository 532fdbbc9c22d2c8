//! The writer's decisions as plain functions over plain data, tested without a
//! database: which events of a batch go to PostgreSQL and which follow an earlier one
//! with the same dedup id (`Plan`), what a returned row means (`RowVerdict`), and how a
//! refused set is split until its refused events stand alone (`Bisection`).

use ahash::AHashMap;
use uuid::Uuid;

use crate::handoff::Outcome;

/// Which events of a batch are sent, and which take another's fate. Two events of one
/// organisation with one dedup id in the same batch: only the first goes to PostgreSQL
/// (ON CONFLICT cannot touch a row twice in a statement); the later ones follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Indexes of the events sent, in batch order.
    pub primaries: Vec<usize>,
    /// For each event, the index of the earlier event it follows, if any.
    follows: Vec<Option<usize>>,
}

impl Plan {
    /// Plans a batch of (organisation, dedup id) in order.
    pub fn new<'a>(events: impl ExactSizeIterator<Item = (Uuid, Option<&'a str>)>) -> Plan {
        let mut first_claim: AHashMap<(Uuid, &str), usize> = AHashMap::new();
        let mut follows = vec![None; events.len()];
        let mut primaries = Vec::with_capacity(events.len());
        for (index, (org_id, dedup_id)) in events.enumerate() {
            if let Some(dedup_id) = dedup_id {
                if let Some(&first) = first_claim.get(&(org_id, dedup_id)) {
                    follows[index] = Some(first);
                    continue;
                }
                first_claim.insert((org_id, dedup_id), index);
            }
            primaries.push(index);
        }
        debug_assert_eq!(primaries.len() + follows.iter().flatten().count(), follows.len());
        Plan { primaries, follows }
    }

    /// Gives each follower its first's fate: a duplicate of it when it was accepted
    /// (`id_of` gives the first's id), the same outcome otherwise.
    pub fn settle_followers(&self, outcomes: &mut [Outcome], id_of: impl Fn(usize) -> Uuid) {
        assert_eq!(outcomes.len(), self.follows.len(), "one outcome per event of the plan");
        for (index, first) in self.follows.iter().enumerate() {
            if let Some(first) = *first {
                outcomes[index] = match &outcomes[first] {
                    Outcome::Accepted => Outcome::Duplicate { original: id_of(first) },
                    other => other.clone(),
                };
            }
        }
    }
}

/// What one row the batch statement returned says about its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowVerdict {
    /// Inserted for an organisation with a webhook: hand it to the delivery engine.
    Push,
    /// Not inserted: its dedup id belongs to this earlier event.
    Duplicate(Uuid),
    /// Not inserted, and the claim that beat it is not visible to the statement's
    /// snapshot (the other writer committed it meanwhile): look it up afresh.
    LookUpClaim,
    /// Neither inserted nor a duplicate: an id collision; the client retries (503).
    Collision,
}

/// Reads a row `(id, original event id, inserted)` of the batch statement.
pub fn verdict(inserted: bool, original: Option<Uuid>, has_dedup_id: bool) -> RowVerdict {
    match (inserted, original, has_dedup_id) {
        (true, _, _) => RowVerdict::Push,
        (false, Some(original), _) => RowVerdict::Duplicate(original),
        (false, None, true) => RowVerdict::LookUpClaim,
        (false, None, false) => RowVerdict::Collision,
    }
}

/// Splits a set PostgreSQL refused in halves, part by part, until every refused event
/// stands alone: one bad event among n costs about 2·log2(n) statements.
#[derive(Debug)]
pub struct Bisection<'a> {
    /// Parts still to try, the next one last.
    parts: Vec<&'a [usize]>,
}

impl<'a> Bisection<'a> {
    /// Starts from the halves of `refused` (the whole set was just refused).
    pub fn of(refused: &'a [usize]) -> Bisection<'a> {
        let mut bisection = Bisection { parts: Vec::new() };
        bisection.split(refused);
        bisection
    }

    /// The next part to write, if any.
    pub fn next_part(&mut self) -> Option<&'a [usize]> {
        self.parts.pop()
    }

    /// `part` was refused: its event if it is alone (refused for its own data), else
    /// `None` and its halves are tried next.
    pub fn refused(&mut self, part: &'a [usize]) -> Option<usize> {
        match part {
            [only] => Some(*only),
            _ => {
                self.split(part);
                None
            }
        }
    }

    fn split(&mut self, part: &'a [usize]) {
        let (left, right) = part.split_at(part.len() / 2);
        // Left is tried first: batch order.
        self.parts.extend([right, left].into_iter().filter(|half| !half.is_empty()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn later_events_with_one_dedup_id_follow_the_first() {
        let events = [
            (org(1), Some("a")),
            (org(1), None),
            (org(1), Some("a")),
            (org(2), Some("a")),
            (org(1), Some("a")),
        ];
        let plan = Plan::new(events.into_iter());
        assert_eq!(plan.primaries, [0, 1, 3]);
        let mut outcomes = vec![Outcome::Accepted; 5];
        plan.settle_followers(&mut outcomes, |i| Uuid::from_u128(100 + i as u128));
        assert_eq!(outcomes[2], Outcome::Duplicate { original: Uuid::from_u128(100) });
        assert_eq!(outcomes[4], Outcome::Duplicate { original: Uuid::from_u128(100) });
        assert_eq!(outcomes[3], Outcome::Accepted, "another organisation's id is its own");
        let mut failed = vec![
            Outcome::Unavailable,
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Accepted,
        ];
        plan.settle_followers(&mut failed, |_| Uuid::nil());
        assert_eq!(
            (failed[2].clone(), failed[4].clone()),
            (Outcome::Unavailable, Outcome::Unavailable),
            "the first's fate"
        );
    }

    #[test]
    fn rows_say_what_became_of_their_event() {
        let original = Uuid::from_u128(7);
        assert_eq!(verdict(true, None, true), RowVerdict::Push);
        assert_eq!(verdict(false, Some(original), true), RowVerdict::Duplicate(original));
        assert_eq!(verdict(false, None, true), RowVerdict::LookUpClaim);
        assert_eq!(verdict(false, None, false), RowVerdict::Collision);
    }

    /// Runs a bisection against a set of bad events; returns (statements, refused).
    fn bisect(events: usize, bad: &[usize]) -> (usize, Vec<usize>) {
        let indexes: Vec<usize> = (0..events).collect();
        let mut bisection = Bisection::of(&indexes);
        let (mut statements, mut refused) = (0, Vec::new());
        while let Some(part) = bisection.next_part() {
            statements += 1;
            if part.iter().any(|i| bad.contains(i)) {
                refused.extend(bisection.refused(part));
            }
        }
        (statements, refused)
    }

    #[test]
    fn bisection_isolates_refused_events_in_logarithmic_statements() {
        let (statements, refused) = bisect(512, &[77]);
        assert_eq!(refused, [77]);
        assert!(statements <= 2 * 9, "{statements} statements for one bad event among 512");
        let (_, refused) = bisect(512, &[0, 300, 511]);
        assert_eq!(refused, [0, 300, 511], "every bad event, in batch order");
        assert_eq!(bisect(1, &[0]).1, [0]);
        assert_eq!(bisect(2, &[]), (2, vec![]), "the halves of a set refused for no event alone");
    }
}
