//! The bounded blocking pool for Argon2. HTTP cores submit with `try_submit` (never
//! blocking) and await the answer; when the queue is full the caller answers 503, so
//! a flood of wrong keys costs at most `threads` cores of Argon2 time and a bounded
//! queue, never unbounded work.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::keys;

/// What a worker does.
pub enum Work {
    /// Hash a new key; answers the PHC string.
    Hash { key: String },
    /// Verify a presented key against a stored PHC string.
    Verify { key: Vec<u8>, stored: String },
}

pub enum Answer {
    Hashed(Result<String, keys::KeyError>),
    Verified(bool),
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Answer>,
}

#[derive(Debug, thiserror::Error)]
#[error("the key verification pool is saturated")]
pub struct PoolFull;

/// Handle shared by every HTTP core; cloning is cheap.
#[derive(Clone)]
pub struct HashPool {
    /// Bounded queue to the workers; owned by every core, the workers own the receiver.
    jobs: SyncSender<Job>,
}

impl HashPool {
    /// Starts `threads` workers behind a queue of `queue_max` jobs.
    pub fn start(threads: usize, queue_max: usize, memory_kib: u32) -> std::io::Result<HashPool> {
        let (jobs, receiver) = sync_channel::<Job>(queue_max);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("triggerd-argon2-{i}"))
                .spawn(move || worker(&receiver, memory_kib))?;
        }
        Ok(HashPool { jobs })
    }

    /// Queues work without blocking; the answer arrives on the returned receiver.
    pub fn try_submit(&self, work: Work) -> Result<oneshot::Receiver<Answer>, PoolFull> {
        let (reply, answer) = oneshot::channel();
        match self.jobs.try_send(Job { work, reply }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(PoolFull),
        }
    }
}

// The mutex here is on the pool's side only (workers taking jobs), never on an HTTP
// core's request path: cores only `try_send`.
fn worker(receiver: &Mutex<Receiver<Job>>, memory_kib: u32) {
    loop {
        let job = {
            let Ok(guard) = receiver.lock() else { return };
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let answer = match job.work {
            Work::Hash { key } => Answer::Hashed(keys::hash_key(&key, memory_kib)),
            Work::Verify { key, stored } => Answer::Verified(keys::verify_key(&key, &stored)),
        };
        // The requester may have gone away (connection closed); nothing to do then.
        let _ = job.reply.send(answer);
    }
}
