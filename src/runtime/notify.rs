//! systemd's service notifications (`Type=notify`), written out rather than taken from
//! a crate: the protocol is one datagram of `KEY=value` lines to the Unix socket named
//! by `NOTIFY_SOCKET` (a path, or an abstract name when it starts with `@`).
//!
//! `READY=1` goes out after the listening line, `STOPPING=1` when shutdown begins, and,
//! when the unit sets `WatchdogSec=`, `WATCHDOG=1` every half of `WATCHDOG_USEC`, but
//! only while every HTTP core and the storage thread show a recent heartbeat: a core
//! that is stuck stops the pings, and systemd restarts the service.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where notifications go; absent outside systemd (no `NOTIFY_SOCKET`).
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, if it is set. The variable is removed, so
    /// child processes (the embedded cluster's `pg_ctl`) do not notify in our name.
    pub fn from_environment() -> Result<Option<Notifier>, String> {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(None) };
        // Edition 2021, and no thread has started yet (serve calls this first).
        std::env::remove_var("NOTIFY_SOCKET");
        let name = name.to_string_lossy().into_owned();
        let address = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())
            }
            None => SocketAddr::from_pathname(&name),
        }
        .map_err(|e| format!("NOTIFY_SOCKET={name}: {e}"))?;
        let socket = UnixDatagram::unbound().map_err(|e| format!("NOTIFY_SOCKET={name}: {e}"))?;
        Ok(Some(Notifier { socket, address }))
    }

    /// Sends one notification (`READY=1`, …); a failure is logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.address) {
            tracing::warn!(error = %e, state, "could not notify systemd");
        }
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), when it is meant for this
/// process (`WATCHDOG_PID` absent or ours).
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|pid| pid == std::process::id().to_string());
    (usec > 0 && for_us).then(|| Duration::from_micros(usec))
}

/// One heartbeat per thread that must keep running (every HTTP core, the storage
/// thread): the monotonic milliseconds (since `origin`) of its last beat, so a wall
/// clock step cannot fake a stall.
pub struct Heartbeats {
    origin: Instant,
    beats: Vec<AtomicU64>,
    /// How often each thread beats.
    pub interval: Duration,
}

impl Heartbeats {
    pub fn new(threads: usize, watchdog: Option<Duration>) -> Arc<Heartbeats> {
        // Four beats per watchdog period, at most one a second.
        let interval = watchdog.map_or(Duration::from_secs(1), |w| (w / 4).min(Duration::from_secs(1)));
        let beats = (0..threads).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Heartbeats { origin: Instant::now(), beats, interval })
    }

    /// Milliseconds since the heartbeats were made: the clock beats are read against.
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn beat(&self, thread: usize, now_ms: u64) {
        self.beats[thread].store(now_ms, Ordering::Relaxed);
    }

    /// The threads whose last beat is older than `stale_after_ms` at `now_ms`.
    pub fn stale(&self, now_ms: u64, stale_after_ms: u64) -> Vec<usize> {
        let old = |beat: &AtomicU64| now_ms.saturating_sub(beat.load(Ordering::Relaxed)) > stale_after_ms;
        self.beats.iter().enumerate().filter(|(_, beat)| old(beat)).map(|(thread, _)| thread).collect()
    }
}

/// Pings the watchdog every half period while every heartbeat is younger than the
/// period; stops when `stop` is set. Runs on a thread of its own.
pub fn run_watchdog(
    notifier: Arc<Notifier>,
    period: Duration,
    heartbeats: Arc<Heartbeats>,
    stop: Arc<AtomicBool>,
) {
    let stale_after_ms = period.as_millis() as u64;
    while !stop.load(Ordering::Relaxed) {
        let stale = heartbeats.stale(heartbeats.now_ms(), stale_after_ms);
        if stale.is_empty() {
            notifier.send("WATCHDOG=1");
        } else {
            tracing::error!(
                ?stale,
                "threads have not run for a watchdog period; withholding the watchdog ping"
            );
        }
        std::thread::park_timeout(period / 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_stops_beating_is_named() {
        let heartbeats = Heartbeats::new(3, Some(Duration::from_secs(2)));
        assert_eq!(heartbeats.interval, Duration::from_millis(500));
        heartbeats.beat(0, 10_000);
        heartbeats.beat(1, 10_000);
        heartbeats.beat(2, 7_000);
        assert_eq!(heartbeats.stale(11_000, 2_000), [2]);
        assert!(heartbeats.stale(9_500, 2_500).is_empty());
    }

    #[test]
    fn datagrams_reach_path_and_abstract_sockets() {
        let path = std::env::temp_dir().join(format!("triggerd-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            address: SocketAddr::from_pathname(&path).unwrap(),
        };
        notifier.send("READY=1");
        let mut buffer = [0u8; 64];
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1");
        let _ = std::fs::remove_file(&path);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("triggerd-notify-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        let notifier = Notifier { socket: UnixDatagram::unbound().unwrap(), address };
        notifier.send("STOPPING=1");
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1");
    }
}
