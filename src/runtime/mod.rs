//! Core placement and executors: the only place (with `http/`) that names glommio.
//!
//! One glommio `LocalExecutor` per HTTP core, pinned, each with its own
//! `SO_REUSEPORT` listener so the kernel spreads connections over the cores and no
//! accept lock is shared. Core 0 binds first; the others bind the port it got (so
//! `--listen 127.0.0.1:0` works for tests).

pub mod check;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::api::Api;
use crate::handoff::Control;
use crate::http::{conn, ConnectionLimits, Drain};
use crate::shard::{Shard, ShardParts};

/// io_uring buffer memory per executor. glommio locks it in RAM, so it must fit the
/// memlock limit for all cores; 256 KiB is ample for sockets (no file I/O here).
pub const IO_MEMORY_BYTES: usize = 256 * 1024;
/// Smallest memlock limit glommio accepts.
pub const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;
/// The stack each HTTP core runs on: glommio spawns its executor threads with
/// `std::thread::Builder` and sets no stack size, so they get std's default, 2 MiB
/// (with `RUST_MIN_STACK` unset). Every request body is read on such a stack, so the
/// fuzz targets run their input on a thread of this size, not on libFuzzer's larger
/// main-thread stack.
pub const HTTP_CORE_STACK_BYTES: usize = 2 * 1024 * 1024;

/// Number of CPUs this process may run on.
pub fn available_cpus() -> usize {
    allowed_cpus().len()
}

/// The CPUs this process may run on (its affinity mask, e.g. systemd's CPUAffinity or
/// taskset), in increasing order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; sched_getaffinity(0, …)
    // writes at most size_of::<cpu_set_t>() bytes into it; CPU_ISSET reads within it
    // for indexes below CPU_SETSIZE.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            Vec::new()
        } else {
            (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
        }
    };
    if allowed.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        allowed
    }
}

/// Pins the calling thread to `cpu`. Best effort: a failure is logged, not fatal.
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; CPU_SET writes within
    // it for cpu < CPU_SETSIZE (cpu is below the CPU count); sched_setaffinity(0, …)
    // reads `size_of::<cpu_set_t>()` bytes from a live local.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin thread");
    }
}

/// Probes io_uring with a one-entry ring. `Err` carries a one-line explanation of
/// what the kernel or container must allow.
pub fn check_io_uring() -> Result<(), String> {
    // io_uring_params is 120 bytes; the kernel fills it in. Zeroed is a valid request.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(entries, params) reads and writes exactly the 120-byte
    // io_uring_params struct behind the pointer, which outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: fd is a descriptor this function just opened and nothing else owns.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    Err(format!(
        "io_uring is unavailable ({error}): triggerd needs Linux >= 5.8 with io_uring enabled \
         (sysctl kernel.io_uring_disabled=0) and, in a container, a seccomp profile that allows \
         io_uring_setup, io_uring_enter and io_uring_register"
    ))
}

/// Raises the soft limit on open files to the hard limit (each connection is one).
/// Returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct in a live local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// The soft memlock limit in bytes (`None` = unlimited).
pub fn memlock_bytes() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct into a live local.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("HTTP core {core} failed to start: {reason}")]
    Core { core: usize, reason: String },
}

/// The running HTTP cores.
pub struct HttpCores {
    pub local_addr: SocketAddr,
    pub handles: Vec<ExecutorJoinHandle<()>>,
    /// Open connections over all cores (changes on connect and close only).
    pub connections: Arc<AtomicUsize>,
}

/// Where each HTTP core and the storage thread run.
#[derive(Debug, Clone)]
pub struct CorePlan {
    pub http_cpus: Vec<usize>,
    pub storage_cpu: Option<usize>,
}

/// Default placement over the allowed CPUs (in order): HTTP cores on the first ones,
/// the storage core alone on the last one when there is one to spare, unpinned
/// otherwise. More HTTP cores than CPUs share them round-robin.
pub fn plan_placement(http_cores: usize, allowed: &[usize]) -> CorePlan {
    assert!(!allowed.is_empty());
    let http_cpus = (0..http_cores).map(|i| allowed[i % allowed.len()]).collect();
    let storage_cpu = (http_cores < allowed.len()).then(|| allowed[allowed.len() - 1]);
    CorePlan { http_cpus, storage_cpu }
}

/// Starts one executor per entry of `cpus`; returns once every core listens.
pub fn start_http_cores(
    listen: SocketAddr,
    cpus: &[usize],
    parts: ShardParts,
    limits: ConnectionLimits,
    connections_max: usize,
) -> Result<HttpCores, RuntimeError> {
    let mut handles = Vec::with_capacity(cpus.len());
    let connections = Arc::new(AtomicUsize::new(0));
    let mut address = listen;
    for (core, &cpu) in cpus.iter().enumerate() {
        let (bound, bound_at) = mpsc::channel::<Result<SocketAddr, String>>();
        let parts = parts.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("triggerd-http-{core}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn({
                let connections = Arc::clone(&connections);
                move || serve_core(core, address, parts, limits, connections_max, connections, bound)
            })
            .map_err(|e| RuntimeError::Core { core, reason: e.to_string() })?;
        match bound_at.recv() {
            Ok(Ok(actual)) => address = actual,
            Ok(Err(reason)) => return Err(RuntimeError::Core { core, reason }),
            Err(_) => {
                let reason = match handle.join() {
                    Err(e) => e.to_string(),
                    Ok(()) => "exited during start-up".into(),
                };
                return Err(RuntimeError::Core { core, reason });
            }
        }
        handles.push(handle);
    }
    Ok(HttpCores { local_addr: address, handles, connections })
}

/// The life of one HTTP core: its shard, its dispatcher, its accept loop.
async fn serve_core(
    core: usize,
    address: SocketAddr,
    parts: ShardParts,
    limits: ConnectionLimits,
    connections_max: usize,
    connections: Arc<AtomicUsize>,
    bound: mpsc::Sender<Result<SocketAddr, String>>,
) {
    let listener = match TcpListener::bind(address) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = bound.send(Err(format!("cannot listen on {address}: {e}")));
            return;
        }
    };
    let _ = bound.send(listener.local_addr().map_err(|e| e.to_string()));
    let shard = Rc::new(Shard::new(core, parts));
    let dispatcher_shard = Rc::clone(&shard);
    let drain = Rc::new(Drain::default());
    let dispatcher_drain = Rc::clone(&drain);
    glommio::spawn_local(async move {
        let shard = &*dispatcher_shard;
        shard
            .tickets
            .dispatch(|control| match control {
                Control::Drain => dispatcher_drain.start(),
                other => shard.apply(other),
            })
            .await;
    })
    .detach();
    let api = Rc::new(Api { shard });
    let open = Rc::new(Cell::new(0usize));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            drain.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else {
            // Draining: the listener closes here. The executor must outlive its
            // connections (returning would drop their tasks mid-request), so wait for
            // them; each closes after its current request, idle ones at once.
            drop(listener);
            tracing::info!(core, open = open.get(), "stopped accepting");
            while open.get() > 0 {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            return;
        };
        match accepted {
            Ok(stream) if open.get() >= connections_max => {
                glommio::spawn_local(conn::refuse(stream, Rc::clone(&api), limits)).detach();
            }
            Ok(stream) => {
                open.set(open.get() + 1);
                connections.fetch_add(1, Ordering::AcqRel);
                let (api, open, drain, connections) =
                    (Rc::clone(&api), Rc::clone(&open), Rc::clone(&drain), Arc::clone(&connections));
                glommio::spawn_local(async move {
                    conn::serve(stream, api, limits, drain).await;
                    open.set(open.get() - 1);
                    connections.fetch_sub(1, Ordering::AcqRel);
                })
                .detach();
            }
            Err(e) => {
                // Out of descriptors or memory: back off briefly instead of spinning.
                tracing::warn!(core, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_keeps_a_cpu_for_storage_when_it_can() {
        let plan = plan_placement(1, &[0, 1]);
        assert_eq!((plan.http_cpus, plan.storage_cpu), (vec![0], Some(1)));
        let plan = plan_placement(2, &[0, 1]);
        assert_eq!((plan.http_cpus, plan.storage_cpu), (vec![0, 1], None));
        let plan = plan_placement(3, &[0, 1]);
        assert_eq!((plan.http_cpus, plan.storage_cpu), (vec![0, 1, 0], None));
    }

    #[test]
    fn placement_follows_the_affinity_mask() {
        // CPUAffinity=2-7 with 5 HTTP cores: HTTP on 2-6, storage on 7.
        let plan = plan_placement(5, &[2, 3, 4, 5, 6, 7]);
        assert_eq!((plan.http_cpus, plan.storage_cpu), (vec![2, 3, 4, 5, 6], Some(7)));
    }

    #[test]
    fn this_process_has_allowed_cpus() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty() && allowed.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(available_cpus(), allowed.len());
    }
}
