//! An open-loop HTTP load generator that corrects for coordinated omission: requests
//! are scheduled at a fixed rate, and each latency is measured from the request's
//! scheduled start, not from when a busy connection got round to sending it. (wrk is
//! closed-loop: a slow response delays the next request and hides the queueing.)
//!
//!   cargo bench --bench openloop -- --url http://127.0.0.1:8080/api/events --rate 10000 \
//!       --seconds 10 --connections 32 --keys keys.txt [--body '{"type":..}']... [--method POST]
//!       [--expect-status 400] [--threads 2]
//!
//! With --keys, requests rotate over the keys (X-API-Key); with several --body, over
//! the bodies. Prints one line:
//! `rate=<achieved> sent=<n> ok=<expected> errors=<other or failed> p50=.. p90=.. p99=.. p999=.. max=..`
//! (latencies in µs). Exits 1 if any request was not answered as expected (any 2xx by
//! default, or exactly --expect-status: scripts/bench sends refused events that way).
//!
//! Built like wrk so that it costs the machine about as much per request: a few threads
//! (--threads, default 2), each driving its share of the connections without blocking,
//! waiting in `ppoll` (nanosecond timeout, so a send is not late by a millisecond tick)
//! for the next scheduled send or a response. One request per connection is in flight
//! (HTTP/1.1 without pipelining): a connection whose answer is late sends its next
//! request late, and that lateness is counted in the next request's latency.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

struct Options {
    host: String,
    path: String,
    rate: f64,
    seconds: f64,
    connections: usize,
    threads: usize,
    keys: Vec<String>,
    bodies: Vec<String>,
    method: String,
    /// The status every answer must have; `None`: any 2xx.
    expect_status: Option<u16>,
}

fn parse() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let get = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let url = get("--url").ok_or("--url is required")?;
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest.to_string(), "/".to_string()), |(h, p)| (h.to_string(), format!("/{p}")));
    let keys = match get("--keys") {
        Some(file) => std::fs::read_to_string(&file)
            .map_err(|e| format!("{file}: {e}"))?
            .lines()
            .map(str::to_string)
            .filter(|k| !k.is_empty())
            .collect(),
        None => Vec::new(),
    };
    let connections: usize = get("--connections").and_then(|v| v.parse().ok()).unwrap_or(32);
    Ok(Options {
        host,
        path,
        rate: get("--rate").and_then(|v| v.parse().ok()).ok_or("--rate is required")?,
        seconds: get("--seconds").and_then(|v| v.parse().ok()).unwrap_or(10.0),
        connections: connections.max(1),
        threads: get("--threads").and_then(|v| v.parse().ok()).unwrap_or(2).clamp(1, connections.max(1)),
        keys,
        method: get("--method").unwrap_or_else(|| {
            if get("--body").is_some() {
                "POST".into()
            } else {
                "GET".into()
            }
        }),
        bodies: args.windows(2).filter(|w| w[0] == "--body").map(|w| w[1].clone()).collect(),
        expect_status: get("--expect-status").and_then(|v| v.parse().ok()),
    })
}

/// One connection: requests `index`, `index + connections`, … of the whole schedule.
struct Connection {
    index: usize,
    stream: Option<TcpStream>,
    /// How many of its requests are done (answered or failed).
    done: u64,
    /// The scheduled start of the request in flight.
    in_flight: Option<Instant>,
    output: Vec<u8>,
    written: usize,
    input: Vec<u8>,
}

struct Tally {
    latencies: Vec<u32>,
    ok: u64,
    errors: u64,
}

fn connect(host: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(host)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// A complete response at the start of `input`: its status and length.
fn response(input: &[u8]) -> Result<Option<(u16, usize)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(input) {
        Ok(httparse::Status::Complete(head)) => {
            let length = parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let status = parsed.code.unwrap_or(0);
            Ok((input.len() >= head + length).then_some((status, head + length)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

fn request(options: &Options, connection: usize, n: u64, out: &mut Vec<u8>) {
    let at = connection + n as usize;
    out.clear();
    let _ = write!(out, "{} {} HTTP/1.1\r\nHost: {}\r\n", options.method, options.path, options.host);
    if !options.keys.is_empty() {
        let _ = write!(out, "X-API-Key: {}\r\n", options.keys[at % options.keys.len()]);
    }
    if options.bodies.is_empty() {
        out.extend_from_slice(b"\r\n");
    } else {
        let body = &options.bodies[at % options.bodies.len()];
        let _ = write!(out, "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    }
}

/// One thread's connections, driven until each has sent its share of the schedule.
fn run_thread(options: &Options, indexes: Vec<usize>, start: Instant) -> Tally {
    let interval = options.connections as f64 / options.rate;
    let total = (options.rate * options.seconds / options.connections as f64) as u64;
    let scheduled = |c: &Connection| {
        start + Duration::from_secs_f64(c.index as f64 / options.rate + interval * c.done as f64)
    };
    let mut tally =
        Tally { latencies: Vec::with_capacity((total as usize) * indexes.len()), ok: 0, errors: 0 };
    let mut connections: Vec<Connection> = indexes
        .into_iter()
        .map(|index| Connection {
            index,
            stream: connect(&options.host).ok(),
            done: 0,
            in_flight: None,
            output: Vec::with_capacity(512),
            written: 0,
            input: Vec::with_capacity(1024),
        })
        .collect();
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(connections.len());
    let mut polled: Vec<usize> = Vec::with_capacity(connections.len());
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let now = Instant::now();
        let mut next_send: Option<Instant> = None;
        let mut busy = false;
        for c in connections.iter_mut() {
            if c.in_flight.is_some() {
                busy = true;
                continue;
            }
            if c.done >= total {
                continue;
            }
            let due = scheduled(c);
            if due > now {
                next_send = Some(next_send.map_or(due, |n| n.min(due)));
                continue;
            }
            if c.stream.is_none() {
                c.stream = connect(&options.host).ok();
            }
            if c.stream.is_none() {
                // No connection: the request fails now, at its scheduled time.
                tally.latencies.push(due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                tally.errors += 1;
                c.done += 1;
                continue;
            }
            request(options, c.index, c.done, &mut c.output);
            c.written = 0;
            c.input.clear();
            c.in_flight = Some(due);
            busy = true;
        }
        if !busy && next_send.is_none() {
            return tally;
        }
        // Write what is pending, then wait for answers or the next send.
        fds.clear();
        polled.clear();
        for (i, c) in connections.iter_mut().enumerate() {
            let (Some(_), Some(stream)) = (c.in_flight, c.stream.as_mut()) else { continue };
            while c.written < c.output.len() {
                match stream.write(&c.output[c.written..]) {
                    Ok(0) => break,
                    Ok(n) => c.written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
            let events = if c.written < c.output.len() { libc::POLLOUT } else { libc::POLLIN };
            fds.push(libc::pollfd { fd: stream.as_raw_fd(), events, revents: 0 });
            polled.push(i);
        }
        let timeout = next_send.map(|at| {
            let wait = at.saturating_duration_since(Instant::now());
            libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            }
        });
        let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfds that ppoll may
        // write revents into; the timeout pointer is null or points at a live timespec;
        // a null signal mask leaves the thread's mask alone.
        let ready = unsafe {
            libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ptr, std::ptr::null())
        };
        if ready <= 0 {
            continue;
        }
        for (slot, &i) in polled.iter().enumerate() {
            if fds[slot].revents == 0 {
                continue;
            }
            let c = &mut connections[i];
            let Some(stream) = c.stream.as_mut() else { continue };
            let mut failed = fds[slot].revents & (libc::POLLERR | libc::POLLNVAL) != 0;
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => c.input.extend_from_slice(&buffer[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            let Some(due) = c.in_flight else { continue };
            let outcome = match response(&c.input) {
                Ok(Some((status, _))) => Some(Ok(status)),
                Ok(None) if failed => Some(Err(())),
                Ok(None) => None,
                Err(()) => Some(Err(())),
            };
            let Some(outcome) = outcome else { continue };
            // Measured from the scheduled start: a late send counts as latency.
            tally.latencies.push(due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            match outcome {
                Ok(status)
                    if options.expect_status.map_or((200..=299).contains(&status), |s| s == status) =>
                {
                    tally.ok += 1
                }
                Ok(_) => tally.errors += 1,
                Err(()) => {
                    tally.errors += 1;
                    c.stream = None;
                }
            }
            if failed {
                c.stream = None;
            }
            c.in_flight = None;
            c.done += 1;
        }
    }
}

fn main() {
    let options = match parse() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("openloop: {e}");
            std::process::exit(2);
        }
    };
    let start = Instant::now() + Duration::from_millis(100);
    let results: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..options.threads)
            .map(|t| {
                let indexes: Vec<usize> = (t..options.connections).step_by(options.threads).collect();
                let options = &options;
                scope.spawn(move || run_thread(options, indexes, start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Tally { latencies: Vec::new(), ok: 0, errors: 1 }))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut latencies: Vec<u32> = results.iter().flat_map(|t| t.latencies.iter().copied()).collect();
    let ok: u64 = results.iter().map(|t| t.ok).sum();
    let errors: u64 = results.iter().map(|t| t.errors).sum();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "rate={:.0} sent={} ok={ok} errors={errors} p50={} p90={} p99={} p999={} max={}",
        latencies.len() as f64 / elapsed,
        latencies.len(),
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(0.999),
        latencies.last().copied().unwrap_or(0)
    );
    if errors > 0 {
        std::process::exit(1);
    }
}
