//! A line sink that never blocks its callers: lines go onto a bounded queue and one
//! thread of its own writes them to stderr, in batches, with stderr locked for each
//! batch so they never interleave with other log lines. An HTTP core that logs a line
//! pays for formatting it and one queue push; a full queue (stderr not read fast
//! enough) drops the line and counts it, it never waits.
//!
//! Back of the envelope: an access-log line is ~250 bytes; at 50 000 requests/s that is
//! ~12 MB/s of stderr, which one thread writes in 64 KiB batches (~200 writes/s). The
//! queue holds `LINES_QUEUED_MAX` lines (~4 MB) of slack for a slow reader.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Lines waiting for the writer at most; beyond it lines are dropped (and counted).
pub const LINES_QUEUED_MAX: usize = 16 * 1024;
/// Bytes the writer gathers into one write.
const BATCH_BYTES_MAX: usize = 64 * 1024;

enum Message {
    Line(Vec<u8>),
    /// Write everything queued before this, then stop.
    Close,
}

/// The producers' handle; cheap to clone, one per core.
#[derive(Clone)]
pub struct LogSink {
    /// To the writer thread, which owns the receiver.
    lines: SyncSender<Message>,
    /// Lines dropped because the queue was full, over the sink's life.
    dropped: Arc<AtomicU64>,
}

/// Owned by whoever shuts the process down: stops the writer once it has written
/// everything queued.
pub struct LogWriter {
    lines: SyncSender<Message>,
    /// Signalled by the writer thread when it has finished.
    finished: Receiver<()>,
}

impl LogSink {
    /// Starts the writer thread, writing to stderr.
    pub fn start() -> std::io::Result<(LogSink, LogWriter)> {
        let (lines, receiver) = mpsc::sync_channel(LINES_QUEUED_MAX);
        let (done, finished) = mpsc::channel();
        std::thread::Builder::new().name("triggerd-log".into()).spawn(move || {
            write_lines(&receiver);
            drop(receiver);
            let _ = done.send(());
        })?;
        let writer = LogWriter { lines: lines.clone(), finished };
        Ok((LogSink { lines, dropped: Arc::new(AtomicU64::new(0)) }, writer))
    }

    /// Queues one line (which must end with `\n`) without waiting; `false` if it was
    /// dropped because the queue is full.
    pub fn send(&self, line: Vec<u8>) -> bool {
        debug_assert!(line.ends_with(b"\n"));
        match self.lines.try_send(Message::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl LogWriter {
    /// Writes out what is queued and stops the writer, waiting at most `timeout` (a
    /// stderr nobody reads must not hold the process's exit).
    pub fn close(self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut close = Message::Close;
        loop {
            match self.lines.try_send(close) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return true,
                Err(TrySendError::Full(returned)) if std::time::Instant::now() < deadline => {
                    close = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        !matches!(self.finished.recv_timeout(left), Err(RecvTimeoutError::Timeout))
    }
}

fn write_lines(receiver: &Receiver<Message>) {
    let stderr = std::io::stderr();
    let mut batch = Vec::with_capacity(BATCH_BYTES_MAX);
    while let Ok(first) = receiver.recv() {
        let mut closing = gather(first, &mut batch);
        while !closing && batch.len() < BATCH_BYTES_MAX {
            match receiver.try_recv() {
                Ok(message) => closing = gather(message, &mut batch),
                Err(_) => break,
            }
        }
        let mut out = stderr.lock();
        // Nowhere to report a failed write to stderr: the line is lost.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        drop(out);
        batch.clear();
        if closing {
            return;
        }
    }
}

/// Adds a message's line to the batch; `true` for the close marker.
fn gather(message: Message, batch: &mut Vec<u8>) -> bool {
    match message {
        Message::Line(line) => {
            batch.extend_from_slice(&line);
            false
        }
        Message::Close => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A sink whose writer never runs: the queue fills and the rest is dropped.
        let (lines, _receiver) = mpsc::sync_channel(2);
        let sink = LogSink { lines, dropped: Arc::new(AtomicU64::new(0)) };
        let sent: Vec<bool> = (0..4).map(|_| sink.send(b"x\n".to_vec())).collect();
        assert_eq!(sent, [true, true, false, false]);
        assert_eq!(sink.dropped(), 2);
    }

    #[test]
    fn close_writes_what_is_queued_then_stops() {
        let (sink, writer) = LogSink::start().unwrap();
        assert!(sink.send(b"{\"test\":\"logsink\"}\n".to_vec()));
        assert!(writer.close(Duration::from_secs(10)));
        assert!(!sink.send(b"late\n".to_vec()), "the writer is gone");
    }
}
