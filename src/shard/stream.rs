//! Held stream reads on one core: who waits for which organisation's next commit.
//! A held read registers a `Watch` *before* it reads (a commit between its read and
//! its wait still wakes it), then waits on it; the core's dispatcher wakes every watch
//! of an organisation when the storage core says that organisation got events (its own
//! writers directly, other instances through LISTEN/NOTIFY), and counts the notice
//! (`Watch::commits`): an event stream that keeps its watch between pieces knows
//! whether anything committed since its last read without asking the database. A
//! watch costs one map entry per organisation and a count; no thread, no query while
//! it waits.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use ahash::AHashMap;
use tokio::sync::Notify;
use uuid::Uuid;

use super::Shard;

/// This core's held reads by organisation: the organisation's commit notices and how
/// many watches hold them (the entry goes with the last one).
#[derive(Default)]
pub struct StreamWaiters {
    by_org: RefCell<AHashMap<Uuid, (Rc<Commits>, usize)>>,
    horizon: Horizon,
}

/// One organisation's commit notices on this core: wakes the waiting reads and counts.
#[derive(Default)]
pub struct Commits {
    notify: Notify,
    count: Cell<u64>,
}

/// Reads whose events wait behind the horizon (a transaction that began earlier is
/// still running) wait here. One of them at a time watches the horizon for the whole
/// core and wakes the rest when it moves: one query per interval per core, however
/// many reads are held.
#[derive(Default)]
pub struct Horizon {
    moved: Notify,
    watched: Cell<bool>,
    last: Cell<i64>,
}

impl Horizon {
    /// Resolves when the horizon watcher reports a move or steps down.
    pub fn moved(&self) -> &Notify {
        &self.moved
    }

    /// Makes the caller the core's horizon watcher, unless there is one already.
    pub fn lead(&self) -> Option<HorizonWatcher<'_>> {
        (!self.watched.replace(true)).then_some(HorizonWatcher { horizon: self })
    }
}

/// The core's horizon watcher; stepping down (drop) wakes every waiting read, so one
/// of them takes over if the horizon is still held.
pub struct HorizonWatcher<'a> {
    horizon: &'a Horizon,
}

impl HorizonWatcher<'_> {
    /// Records the horizon seen now; true when it differs from the last one seen.
    pub fn saw(&self, xmin: i64) -> bool {
        self.horizon.last.replace(xmin) != xmin
    }
}

impl Drop for HorizonWatcher<'_> {
    fn drop(&mut self) {
        self.horizon.watched.set(false);
        self.horizon.moved.notify_waiters();
    }
}

/// One held read's registration; deregisters when dropped.
pub struct Watch {
    shard: Rc<Shard>,
    org_id: Uuid,
    commits: Rc<Commits>,
}

impl Watch {
    /// Resolves at the next commit notice for the organisation after this watch was
    /// made (a notice that arrived before the future was polled counts too).
    pub fn notify(&self) -> &Notify {
        &self.commits.notify
    }

    /// Commit notices for the organisation since the watch's entry was made: unchanged
    /// between two moments means nothing of the organisation committed in between
    /// (a notice follows every commit).
    pub fn commits(&self) -> u64 {
        self.commits.count.get()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut by_org = self.shard.stream.by_org.borrow_mut();
        if let Some((_, count)) = by_org.get_mut(&self.org_id) {
            *count -= 1;
            if *count == 0 {
                by_org.remove(&self.org_id);
            }
        }
        self.shard.handoff.stream_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Registers a held read of `org_id`'s stream on `shard`'s core.
pub fn watch(shard: &Rc<Shard>, org_id: Uuid) -> Watch {
    let commits = {
        let mut by_org = shard.stream.by_org.borrow_mut();
        let (commits, count) = by_org.entry(org_id).or_default();
        *count += 1;
        Rc::clone(commits)
    };
    shard.handoff.stream_waiters.fetch_add(1, Ordering::Relaxed);
    Watch { shard: Rc::clone(shard), org_id, commits }
}

impl Commits {
    fn notice(&self) {
        self.count.set(self.count.get().wrapping_add(1));
        self.notify.notify_waiters();
    }
}

impl Shard {
    /// A commit notice from the storage core: wakes the held reads of `org_id`, or of
    /// every organisation for `None`.
    pub fn committed(&self, org_id: Option<Uuid>) {
        let by_org = self.stream.by_org.borrow();
        match org_id {
            Some(org_id) => {
                if let Some((commits, _)) = by_org.get(&org_id) {
                    commits.notice();
                }
            }
            None => by_org.values().for_each(|(commits, _)| commits.notice()),
        }
    }

    /// Where reads held behind the horizon wait.
    pub fn horizon(&self) -> &Horizon {
        &self.stream.horizon
    }

    /// Stream reads held on this core right now (a gauge).
    pub fn watches(&self) -> usize {
        self.stream.by_org.borrow().values().map(|(_, count)| count).sum()
    }
}
