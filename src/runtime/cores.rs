//! The HTTP cores: placement and executors, the only place (with `http/`) that names
//! glommio.
//!
//! One glommio `LocalExecutor` per HTTP core, pinned, each with its own
//! `SO_REUSEPORT` listener so the kernel spreads connections over the cores and no
//! accept lock is shared. Core 0 binds first; the others bind the port it got (so
//! `--listen 127.0.0.1:0` works for tests).

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

/// Submission entries of each io_uring ring (glommio's default is 128). Every idle
/// connection (a held stream read, a keep-alive client) keeps a poll request in the
/// kernel, and cancelling any request (glommio re-arms its timer by cancelling the
/// armed one, many times a second under load) first searches the ring's poll table,
/// whose size the kernel derives from the ring's depth: 8 buckets at 128, 256 (its
/// largest) from 4096. With 2 000 held reads on 8 buckets that search was 9% of an
/// HTTP core's CPU during ingest; on 256 buckets it is 8 entries long. Costs about
/// 400 KiB of kernel memory per ring (3 rings per core).
pub const RING_DEPTH: usize = 4096;
/// Smallest memlock limit glommio accepts.
pub const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;
/// The stack each HTTP core runs on: glommio spawns its executor threads with
/// `std::thread::Builder` and sets no stack size, so they get std's default, 2 MiB
/// (with `RUST_MIN_STACK` unset). Every request body is read on such a stack, so the
/// fuzz targets run their input on a thread of this size, not on libFuzzer's larger
/// main-thread stack.
pub const HTTP_CORE_STACK_BYTES: usize = 2 * 1024 * 1024;

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

/// What every core is built from (cloned into each core's thread).
#[derive(Clone)]
pub struct CoreSetup {
    pub parts: ShardParts,
    /// The scrape thread's handle for `GET /metrics`; `None` with `--metrics-listen`.
    pub metrics: Option<crate::metrics::Scraper>,
    pub limits: ConnectionLimits,
    /// Connections one core serves at once; beyond it 503 and close.
    pub connections_max: usize,
    /// Each core beats its own (index = core) for the systemd watchdog.
    pub heartbeats: Arc<super::notify::Heartbeats>,
    /// The access log's sink, when `--access-log` is on.
    pub access_log: Option<crate::util::logsink::LogSink>,
}

/// Starts one executor per entry of `cpus`; returns once every core listens.
/// `connections` counts the open connections over all cores.
pub fn start_http_cores(
    listen: SocketAddr,
    cpus: &[usize],
    setup: CoreSetup,
    connections: Arc<AtomicUsize>,
) -> Result<HttpCores, RuntimeError> {
    let mut handles = Vec::with_capacity(cpus.len());
    let mut address = listen;
    for (core, &cpu) in cpus.iter().enumerate() {
        let (bound, bound_at) = mpsc::channel::<Result<SocketAddr, String>>();
        let (setup, connections) = (setup.clone(), Arc::clone(&connections));
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("triggerd-http-{core}"))
            .io_memory(IO_MEMORY_BYTES)
            .ring_depth(RING_DEPTH)
            .spawn(move || serve_core(core, address, setup, connections, bound))
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

/// The life of one HTTP core: its shard, its dispatcher, its accept loop, its drain.
async fn serve_core(
    core: usize,
    address: SocketAddr,
    setup: CoreSetup,
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
    let shard = Rc::new(Shard::new(core, setup.parts));
    let drain = Rc::new(Drain::default());
    glommio::spawn_local(dispatch(Rc::clone(&shard), Rc::clone(&drain))).detach();
    let heartbeats = Arc::clone(&setup.heartbeats);
    glommio::spawn_local(async move {
        loop {
            heartbeats.beat(core, heartbeats.now_ms());
            glommio::timer::sleep(heartbeats.interval).await;
        }
    })
    .detach();
    let api = Rc::new(Api { shard, metrics: setup.metrics, access_log: setup.access_log });
    let open = Rc::new(Cell::new(0usize));
    let accepting =
        Accepting { api, limits: setup.limits, connections_max: setup.connections_max, connections };
    accept_until_drained(&listener, &accepting, &open, &drain).await;
    // Draining: the listener closes here. The executor must outlive its connections
    // (returning would drop their tasks mid-request), so wait for them; each closes
    // after its current request, idle ones at once.
    drop(listener);
    tracing::info!(core, open = open.get(), "stopped accepting");
    while open.get() > 0 {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Completes this core's tickets and applies the storage core's control messages.
async fn dispatch(shard: Rc<Shard>, drain: Rc<Drain>) {
    shard
        .tickets()
        .dispatch(
            |control| match control {
                Control::Drain => drain.start(),
                other => shard.apply(other),
            },
            |org_id| shard.committed(org_id),
        )
        .await;
}

/// What the accept loop hands each connection.
struct Accepting {
    api: Rc<Api>,
    limits: ConnectionLimits,
    connections_max: usize,
    /// Open connections over all cores (a gauge for shutdown).
    connections: Arc<AtomicUsize>,
}

/// Accepts connections until draining starts, serving each on a task of its own.
async fn accept_until_drained(
    listener: &TcpListener,
    accepting: &Accepting,
    open: &Rc<Cell<usize>>,
    drain: &Rc<Drain>,
) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            drain.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        match accepted {
            Ok(stream) if open.get() >= accepting.connections_max => {
                glommio::spawn_local(conn::refuse(stream, Rc::clone(&accepting.api), accepting.limits))
                    .detach();
            }
            Ok(stream) => {
                open.set(open.get() + 1);
                accepting.connections.fetch_add(1, Ordering::AcqRel);
                let (api, open, drain, connections) = (
                    Rc::clone(&accepting.api),
                    Rc::clone(open),
                    Rc::clone(drain),
                    Arc::clone(&accepting.connections),
                );
                let limits = accepting.limits;
                glommio::spawn_local(async move {
                    conn::serve(stream, api, limits, drain).await;
                    open.set(open.get() - 1);
                    connections.fetch_sub(1, Ordering::AcqRel);
                })
                .detach();
            }
            Err(e) => {
                // Out of descriptors or memory: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
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
}
