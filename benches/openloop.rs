//! An open-loop HTTP load generator that corrects for coordinated omission: requests
//! are scheduled at a fixed rate, and each latency is measured from the request's
//! scheduled start, not from when a busy connection got round to sending it. (wrk is
//! closed-loop: a slow response delays the next request and hides the queueing.)
//!
//!   cargo bench --bench openloop -- --url http://127.0.0.1:8080/api/events --rate 10000 \
//!       --seconds 10 --connections 32 --keys keys.txt [--body '{"type":..}']... [--method POST]
//!       [--expect-status 400] [--threads 2] [--tick-us 0] [--timeline seconds.csv]
//!
//! With --keys, requests rotate over the keys (X-API-Key); with several --body, over
//! the bodies. Prints one line:
//! `rate=<achieved> sent=<n> ok=<expected> errors=<other or failed> p50=.. p90=.. p99=.. p999=.. max=..
//! | sent to answered: s50=.. s99=.. smax=..` (latencies in µs). The first figures count
//! from each request's scheduled start; the `s` figures from when it was written to the
//! socket, so they leave out the time a request waited for its connection: when `p99`
//! is far above `s99`, the queue was in the generator (too few connections for the
//! server's latency at that moment), not in the server. With --timeline, it also writes
//! one CSV line per second of the schedule: `second,requests,max_us,max_sent_to_answered_us`.
//! Exits 1 if any request was not answered as expected (any 2xx by
//! default, or exactly --expect-status: scripts/bench sends refused events that way).
//!
//! Built like wrk, to cost the machine as little per request as it can: a few threads
//! (--threads, default 2), each driving its share of the connections without blocking
//! from one epoll set (each socket registered once, so a wake-up costs the sockets that
//! are ready, not all of them). A thread walks its part of the schedule in time order
//! and, at each wake-up, sends every request that is due; it sleeps in `epoll_pwait2`
//! (nanosecond timeout, so a send is not late by a millisecond tick) until the next
//! scheduled send or a response. Requests are put together from bytes formatted once;
//! a response is read with one `read` per wake-up (level-triggered: the rest, if any,
//! wakes the thread again) and parsed with httparse, in place unless it came in pieces.
//! One request per connection is in flight (HTTP/1.1 without pipelining): a connection
//! whose answer is late sends its next request as soon as the answer is read, and that
//! lateness is counted in the next request's latency.
//!
//! Most of its CPU per request is the wake-ups, not the work: on the benchmark VM a
//! sleep and wake-up costs some 35-40 µs of CPU, and at a fixed rate below the server's
//! ceiling the thread wakes for about every scheduled send and every answer. So by
//! default it costs close to what wrk costs near the ceiling, and more per request at a
//! quarter of it. `--tick-us T` bounds the wake-ups to one per T per thread: every send
//! and every read may then be up to T late, and since latency counts from the scheduled
//! start, that lateness is charged to the server (each figure is pessimistic by up to
//! 2 T), never hidden. scripts/bench uses 500 µs.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
    /// Shortest time between two wake-ups of a thread (0: wake for every send and
    /// every answer).
    tick: Duration,
    /// Where to write the per-second CSV, if anywhere.
    timeline: Option<String>,
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
        tick: Duration::from_micros(get("--tick-us").and_then(|v| v.parse().ok()).unwrap_or(0)),
        timeline: get("--timeline"),
    })
}

/// The requests' bytes, formatted once: request `at` is `head`, key line `at % keys`
/// (if any) and tail `at % tails` (the body, if any).
struct Requests {
    head: Vec<u8>,
    keys: Vec<Vec<u8>>,
    tails: Vec<Vec<u8>>,
}

impl Requests {
    fn new(options: &Options) -> Requests {
        let head = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", options.method, options.path, options.host);
        let keys = options.keys.iter().map(|k| format!("X-API-Key: {k}\r\n").into_bytes()).collect();
        let tails = if options.bodies.is_empty() {
            vec![b"\r\n".to_vec()]
        } else {
            options
                .bodies
                .iter()
                .map(|body| {
                    format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                        .into_bytes()
                })
                .collect()
        };
        Requests { head: head.into_bytes(), keys, tails }
    }

    /// Request `n` of connection `connection` (the same rotation as ever: `connection + n`).
    fn put(&self, connection: usize, n: u64, out: &mut Vec<u8>) {
        let at = connection + n as usize;
        out.clear();
        out.extend_from_slice(&self.head);
        if !self.keys.is_empty() {
            out.extend_from_slice(&self.keys[at % self.keys.len()]);
        }
        out.extend_from_slice(&self.tails[at % self.tails.len()]);
    }
}

/// One connection: requests `index`, `index + connections`, … of the whole schedule.
struct Connection {
    index: usize,
    stream: Option<TcpStream>,
    /// How many of its requests are done (answered or failed).
    done: u64,
    /// The scheduled start of the request in flight.
    in_flight: Option<Instant>,
    /// When the request in flight was written (read just after its first write call).
    sent_at: Instant,
    /// The unsent rest of the request in flight after a short write (rare).
    output: Vec<u8>,
    written: usize,
    /// A response that came in pieces, so far.
    input: Vec<u8>,
    /// The server closed the connection or wrote to it while no request was in
    /// flight: its next request fails (as writing it to the dead connection would).
    broken: bool,
}

struct Tally {
    /// From the scheduled start to the answer (or failure), µs.
    latencies: Vec<u32>,
    /// From the write to the answer, µs: the server's part (and the network's).
    sent_to_answered: Vec<u32>,
    /// Per second of the schedule: requests, the largest of each latency.
    seconds: Vec<Second>,
    ok: u64,
    errors: u64,
}

#[derive(Clone, Copy, Default)]
struct Second {
    requests: u32,
    max: u32,
    max_sent_to_answered: u32,
}

impl Second {
    /// Counts `other`'s requests in this second, and keeps the larger maxima.
    fn add(&mut self, other: Second) {
        self.requests += other.requests;
        self.max = self.max.max(other.max);
        self.max_sent_to_answered = self.max_sent_to_answered.max(other.max_sent_to_answered);
    }
}

impl Tally {
    fn new(capacity: usize) -> Tally {
        Tally {
            latencies: Vec::with_capacity(capacity),
            sent_to_answered: Vec::with_capacity(capacity),
            seconds: Vec::new(),
            ok: 0,
            errors: 0,
        }
    }

    fn failed() -> Tally {
        Tally { errors: 1, ..Tally::new(0) }
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
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

/// An epoll set whose events carry a connection's slot.
struct Poller {
    fd: OwnedFd,
    /// `epoll_pwait2` is missing (kernel before 5.11): millisecond timeouts instead.
    coarse: bool,
}

impl Poller {
    fn new() -> std::io::Result<Poller> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Poller { fd: unsafe { OwnedFd::from_raw_fd(fd) }, coarse: false })
    }

    /// Registers or changes `fd`'s interest. A failure (out of kernel memory) ends the
    /// run loudly: a connection left unregistered would never wake its thread again.
    fn control(&self, op: libc::c_int, fd: RawFd, events: u32, slot: usize) {
        let mut event = libc::epoll_event { events, u64: slot as u64 };
        // SAFETY: both fds are open; `event` is a live epoll_event for the call.
        let result = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) };
        assert!(result == 0, "openloop: epoll_ctl: {}", std::io::Error::last_os_error());
    }

    /// Waits for events or `timeout` (`None`: no limit); returns how many are in `events`.
    fn wait(&mut self, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> usize {
        let max = events.len().min(libc::c_int::MAX as usize) as libc::c_int;
        let ready = if !self.coarse {
            let timeout = timeout.map(|wait| libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            });
            let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `events` is a live array of at least `max` epoll_events the kernel
            // may write; the timeout pointer is null or points at a live timespec; a null
            // signal mask leaves the thread's mask alone.
            let ready = unsafe {
                libc::epoll_pwait2(
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    max,
                    timeout_ptr,
                    std::ptr::null(),
                )
            };
            if ready < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                self.coarse = true;
                return 0;
            }
            ready
        } else {
            // Millisecond timeouts, rounded up: sends may be late by up to a tick (and
            // that lateness is counted as latency).
            let ms =
                timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int);
            // SAFETY: as above, without the timeout pointer.
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, ms) }
        };
        ready.max(0) as usize
    }
}

/// One thread's connections, driven until each has sent its share of the schedule.
struct Driver<'a> {
    options: &'a Options,
    requests: &'a Requests,
    start: Instant,
    /// Nanoseconds between two scheduled requests of the whole schedule.
    spacing: f64,
    /// Requests per connection.
    total: u64,
    connections: Vec<Connection>,
    /// The next entry of this thread's schedule to visit: request `next_round` of
    /// connection `connections[next_slot]`.
    next_round: u64,
    next_slot: usize,
    in_flight: usize,
    /// Connections whose next request came due while they were busy.
    late: Vec<usize>,
    poller: Poller,
    tally: Tally,
    scratch: Vec<u8>,
    buffer: Box<[u8]>,
}

impl Driver<'_> {
    /// The scheduled start of request `n` of the connection with `index`.
    fn scheduled(&self, index: usize, n: u64) -> Instant {
        let at = index as u64 + n * self.options.connections as u64;
        self.start + Duration::from_nanos((at as f64 * self.spacing) as u64)
    }

    /// Records a request scheduled at `due`, done at `now`, written at `sent` (`None`:
    /// it failed before it was written).
    fn record(&mut self, due: Instant, sent: Option<Instant>, now: Instant) {
        let latency = micros(now.saturating_duration_since(due));
        let sent_to_answered = sent.map(|sent| micros(now.saturating_duration_since(sent)));
        self.tally.latencies.push(latency);
        self.tally.sent_to_answered.extend(sent_to_answered);
        let second = due.saturating_duration_since(self.start).as_secs() as usize;
        if self.tally.seconds.len() <= second {
            self.tally.seconds.resize(second + 1, Second::default());
        }
        self.tally.seconds[second].add(Second {
            requests: 1,
            max: latency,
            max_sent_to_answered: sent_to_answered.unwrap_or(0),
        });
    }

    /// Sends the connection's next requests while it is idle and they are due (as of
    /// `now`): one, unless a send fails at once.
    fn send_due(&mut self, slot: usize, mut now: Instant) {
        loop {
            let c = &self.connections[slot];
            if c.in_flight.is_some() || c.done >= self.total {
                return;
            }
            let due = self.scheduled(c.index, c.done);
            if due > now {
                return;
            }
            if self.send(slot, due) {
                return;
            }
            now = Instant::now();
        }
    }

    /// Sends the connection's next request, scheduled at `due`; false if it failed at once.
    fn send(&mut self, slot: usize, due: Instant) -> bool {
        let c = &mut self.connections[slot];
        if c.broken {
            c.broken = false;
            c.stream = None;
            self.fail(slot, due);
            return false;
        }
        if c.stream.is_none() {
            c.stream = connect(&self.options.host).ok();
            match &c.stream {
                Some(stream) => {
                    self.poller.control(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), libc::EPOLLIN as u32, slot)
                }
                // No connection: the request fails now, measured from its scheduled time.
                None => {
                    self.fail(slot, due);
                    return false;
                }
            }
        }
        let c = &mut self.connections[slot];
        let stream = c.stream.as_mut().expect("connected above");
        self.requests.put(c.index, c.done, &mut self.scratch);
        let written = match stream.write(&self.scratch) {
            Ok(n) if n > 0 => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            _ => {
                c.stream = None;
                self.fail(slot, due);
                return false;
            }
        };
        if written < self.scratch.len() {
            c.output.clear();
            c.output.extend_from_slice(&self.scratch[written..]);
            c.written = 0;
            let events = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
            self.poller.control(libc::EPOLL_CTL_MOD, stream.as_raw_fd(), events, slot);
        }
        c.input.clear();
        c.in_flight = Some(due);
        c.sent_at = Instant::now();
        self.in_flight += 1;
        true
    }

    /// The connection's request scheduled at `due` failed before it was sent.
    fn fail(&mut self, slot: usize, due: Instant) {
        self.record(due, None, Instant::now());
        self.tally.errors += 1;
        self.connections[slot].done += 1;
    }

    /// The request in flight on the connection is done: answered with `Ok(status)`,
    /// or failed.
    fn finish(&mut self, slot: usize, outcome: Result<u16, ()>) {
        let now = Instant::now();
        let c = &mut self.connections[slot];
        let Some(due) = c.in_flight.take() else { return };
        c.done += 1;
        let (index, done, sent) = (c.index, c.done, c.sent_at);
        let next = (done < self.total).then(|| self.scheduled(index, done));
        self.in_flight -= 1;
        // Measured from the scheduled start: a late send counts as latency.
        self.record(due, Some(sent), now);
        match outcome {
            Ok(status)
                if self.options.expect_status.map_or((200..=299).contains(&status), |s| s == status) =>
            {
                self.tally.ok += 1
            }
            Ok(_) => self.tally.errors += 1,
            Err(()) => self.tally.errors += 1,
        }
        // Its next request, if that is already due (this one was late), goes out with
        // the other sends after this wake-up's answers are read: writes in one burst.
        if next.is_some_and(|next| next <= now) {
            self.late.push(slot);
        }
    }

    /// Writes more of a request that did not go out in one write.
    fn writable(&mut self, slot: usize) {
        let c = &mut self.connections[slot];
        let Some(stream) = c.stream.as_mut() else { return };
        if c.in_flight.is_none() || c.written >= c.output.len() {
            return;
        }
        match stream.write(&c.output[c.written..]) {
            Ok(n) if n > 0 => c.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            _ => {
                c.stream = None;
                self.finish(slot, Err(()));
                return;
            }
        }
        if c.written >= c.output.len() {
            self.poller.control(libc::EPOLL_CTL_MOD, stream.as_raw_fd(), libc::EPOLLIN as u32, slot);
        }
    }

    /// Reads what the server sent on the connection (one read: level-triggered epoll
    /// reports the rest, if any, again).
    fn readable(&mut self, slot: usize) {
        let c = &mut self.connections[slot];
        let Some(stream) = c.stream.as_mut() else { return };
        let (n, failed) = match stream.read(&mut self.buffer) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => (0, true),
        };
        if c.in_flight.is_none() {
            // Closed or written to while idle: dropping the socket takes it out of the
            // epoll set, and the next request fails.
            c.stream = None;
            c.broken = true;
            return;
        }
        let parsed = if c.input.is_empty() {
            let parsed = response(&self.buffer[..n]);
            if let Ok(None) = parsed {
                c.input.extend_from_slice(&self.buffer[..n]);
            }
            parsed
        } else {
            c.input.extend_from_slice(&self.buffer[..n]);
            response(&c.input)
        };
        let outcome = match parsed {
            Ok(Some((status, _))) => Ok(status),
            Ok(None) if failed => Err(()),
            Ok(None) => return,
            Err(()) => Err(()),
        };
        if failed || outcome.is_err() {
            c.stream = None;
        }
        self.finish(slot, outcome);
    }

    fn run(mut self) -> Tally {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; self.connections.len().max(1)];
        let mut woke = Instant::now();
        loop {
            // Every request of this thread's schedule that is due: first those of
            // connections that were busy when they came due, then the rest in order.
            let now = Instant::now();
            for i in 0..self.late.len() {
                let slot = self.late[i];
                self.send_due(slot, now);
            }
            self.late.clear();
            let mut next: Option<Instant> = None;
            while self.next_round < self.total {
                let slot = self.next_slot;
                let due = self.scheduled(self.connections[slot].index, self.next_round);
                if due > now {
                    next = Some(due);
                    break;
                }
                self.next_slot += 1;
                if self.next_slot == self.connections.len() {
                    self.next_slot = 0;
                    self.next_round += 1;
                }
                // Sent now if the connection is idle; if it is busy, right after the
                // wake-up that reads the answer in flight (`finish`, `late`).
                self.send_due(slot, now);
            }
            if next.is_none() && self.in_flight == 0 {
                return self.tally;
            }
            // With --tick-us, no wake-up comes sooner than a tick after the last one:
            // sends and reads may be up to a tick late, and that lateness is counted.
            let tick_end = woke + self.options.tick;
            let now = Instant::now();
            if now < tick_end {
                std::thread::sleep(tick_end - now);
            }
            let timeout = next.map(|at| at.saturating_duration_since(Instant::now()));
            let ready = self.poller.wait(&mut events, timeout);
            woke = Instant::now();
            for event in &events[..ready] {
                let (flags, slot) = (event.events, event.u64 as usize);
                if flags & libc::EPOLLOUT as u32 != 0 {
                    self.writable(slot);
                }
                if flags & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                    self.readable(slot);
                }
            }
        }
    }
}

fn run_thread(options: &Options, requests: &Requests, indexes: Vec<usize>, start: Instant) -> Tally {
    let total = (options.rate * options.seconds / options.connections as f64) as u64;
    let tally = Tally::new((total as usize) * indexes.len());
    let poller = match Poller::new() {
        Ok(poller) => poller,
        Err(e) => {
            eprintln!("openloop: epoll: {e}");
            return Tally::failed();
        }
    };
    let connections: Vec<Connection> = indexes
        .into_iter()
        .map(|index| Connection {
            index,
            stream: connect(&options.host).ok(),
            done: 0,
            in_flight: None,
            sent_at: start,
            output: Vec::new(),
            written: 0,
            input: Vec::new(),
            broken: false,
        })
        .collect();
    for (slot, c) in connections.iter().enumerate() {
        if let Some(stream) = &c.stream {
            poller.control(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), libc::EPOLLIN as u32, slot);
        }
    }
    Driver {
        options,
        requests,
        start,
        spacing: 1e9 / options.rate,
        total,
        connections,
        next_round: 0,
        next_slot: 0,
        in_flight: 0,
        late: Vec::new(),
        poller,
        tally,
        scratch: Vec::with_capacity(1024),
        buffer: vec![0u8; 64 * 1024].into_boxed_slice(),
    }
    .run()
}

fn main() {
    let options = match parse() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("openloop: {e}");
            std::process::exit(2);
        }
    };
    let requests = Requests::new(&options);
    let start = Instant::now() + Duration::from_millis(100);
    let results: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..options.threads)
            .map(|t| {
                let indexes: Vec<usize> = (t..options.connections).step_by(options.threads).collect();
                let (options, requests) = (&options, &requests);
                scope.spawn(move || run_thread(options, requests, indexes, start))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Tally::failed())).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let gather = |part: fn(&Tally) -> &Vec<u32>| {
        let mut all: Vec<u32> = results.iter().flat_map(|t| part(t).iter().copied()).collect();
        all.sort_unstable();
        all
    };
    let latencies = gather(|t| &t.latencies);
    let sent_to_answered = gather(|t| &t.sent_to_answered);
    let ok: u64 = results.iter().map(|t| t.ok).sum();
    let errors: u64 = results.iter().map(|t| t.errors).sum();
    let percentile = |sorted: &[u32], p: f64| {
        sorted
            .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "rate={:.0} sent={} ok={ok} errors={errors} p50={} p90={} p99={} p999={} max={} | sent to answered: s50={} s99={} smax={}",
        latencies.len() as f64 / elapsed,
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or(0),
        percentile(&sent_to_answered, 0.50),
        percentile(&sent_to_answered, 0.99),
        sent_to_answered.last().copied().unwrap_or(0),
    );
    if let Some(path) = &options.timeline {
        let mut seconds: Vec<Second> = Vec::new();
        for tally in &results {
            if seconds.len() < tally.seconds.len() {
                seconds.resize(tally.seconds.len(), Second::default());
            }
            for (total, s) in seconds.iter_mut().zip(&tally.seconds) {
                total.add(*s);
            }
        }
        let csv: String = seconds
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i},{},{},{}\n", s.requests, s.max, s.max_sent_to_answered))
            .collect();
        if let Err(e) = std::fs::write(path, csv) {
            eprintln!("openloop: {path}: {e}");
            std::process::exit(2);
        }
    }
    if errors > 0 {
        std::process::exit(1);
    }
}
