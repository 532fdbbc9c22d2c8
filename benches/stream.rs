//! Load tool for the ordered stream, driven by scripts/bench (std only; the figures it
//! prints are read there). Three modes:
//!
//!   cargo bench --bench stream -- wake --url http://HOST --key KEY [--samples 200]
//!       A long-poll held on an organisation with no other traffic, then one event
//!       posted on another connection: how long after the poster's 202 (the commit
//!       acknowledged) the held read is answered. Prints
//!       `samples=.. p50=.. p99=.. max=..` (µs; negative: the reader was answered
//!       before the poster's 202, both being woken by the same commit).
//!
//!   cargo bench --bench stream -- hold --url http://HOST --keys FILE --long-polls N
//!       --sse M --seconds S --pid SERVER_PID
//!       Holds N long-polls (wait=30, re-asked when answered) and M Server-Sent Events
//!       streams on the organisations of FILE (which get no events), waits until the
//!       server's `triggerd_stream_reads_held` counts them all, prints
//!       `held=.. rss_before_kib=.. rss_after_kib=.. bytes_per_held=..`, keeps them for
//!       S seconds, then prints `answered_with_events=.. errors=..` and exits.
//!
//!   cargo bench --bench stream -- read --url http://HOST --key KEY --seconds S
//!       Walks the organisation's stream from the start in pages of 1000 for at most S
//!       seconds or to its end. Prints `events=.. seconds=.. events_per_second=..`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn number(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What `Conn::head` reads of a response.
struct Head {
    status: u16,
    retry_after_secs: Option<u64>,
    length: usize,
}

/// A refusal a client is told to retry (`503` when a queue is full, `429` when a
/// fairness throttle counts the address's key checks in flight).
fn retry_later(head: &Head) -> Option<Duration> {
    matches!(head.status, 429 | 503).then(|| Duration::from_secs(head.retry_after_secs.unwrap_or(1).max(1)))
}

/// One keep-alive connection speaking just enough HTTP/1.1 for these requests.
struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(host: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(Conn { writer: stream, reader })
    }

    fn send(&mut self, method: &str, path: &str, headers: &str, body: &str) -> Result<(), String> {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(request.as_bytes()).map_err(|e| e.to_string())
    }

    /// Status line and headers: the status, `Retry-After` in seconds (if any) and
    /// `Content-Length`.
    fn head(&mut self) -> Result<Head, String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let status =
            line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("status line {line:?}"))?;
        let mut head = Head { status, retry_after_secs: None, length: 0 };
        loop {
            line.clear();
            self.reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                return Ok(head);
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    head.length = value.trim().parse().map_err(|_| "content-length")?;
                } else if name.eq_ignore_ascii_case("retry-after") {
                    head.retry_after_secs = value.trim().parse().ok();
                }
            }
        }
    }

    /// Status and body of a Content-Length response.
    fn receive(&mut self) -> Result<(u16, String), String> {
        let (head, body) = self.receive_with_head()?;
        Ok((head.status, body))
    }

    fn receive_with_head(&mut self) -> Result<(Head, String), String> {
        let head = self.head()?;
        let mut body = vec![0; head.length];
        self.reader.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok((head, String::from_utf8_lossy(&body).into_owned()))
    }

    fn call(&mut self, method: &str, path: &str, headers: &str, body: &str) -> Result<(u16, String), String> {
        self.send(method, path, headers, body)?;
        self.receive()
    }
}

/// The `"position"` and the number of events of a stream page (no JSON parser here:
/// counting `"id":` at the start of event objects is enough for these bodies).
fn page(body: &str) -> Result<(String, usize), String> {
    let position = body
        .rsplit_once("\"position\":\"")
        .and_then(|(_, rest)| rest.split('"').next())
        .ok_or(format!("no position in {body:.200}"))?;
    Ok((position.to_string(), body.matches("{\"id\":").count()))
}

fn host() -> Result<String, String> {
    let url = arg("--url").ok_or("--url is required")?;
    Ok(url.strip_prefix("http://").ok_or("only http:// URLs")?.trim_end_matches('/').to_string())
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn wake() -> Result<(), String> {
    let (host, key) = (host()?, arg("--key").ok_or("--key is required")?);
    let headers = format!("X-API-Key: {key}\r\n");
    let samples = number("--samples", 200) as usize;
    let mut poster = Conn::open(&host)?;
    let mut position = String::new();
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples {
        let (reader_host, reader_headers) = (host.clone(), headers.clone());
        let path = format!("/api/events/stream?after={position}&wait=30");
        let reader = std::thread::spawn(move || -> Result<(Instant, String), String> {
            let mut conn = Conn::open(&reader_host)?;
            let (status, body) = conn.call("GET", &path, &reader_headers, "")?;
            if status != 200 {
                return Err(format!("stream read {status}: {body}"));
            }
            Ok((Instant::now(), body))
        });
        // Time for the read to be held (a benchmark may pause; a test may not).
        std::thread::sleep(Duration::from_millis(20));
        let body = format!(r#"{{"type":"wake","payload":{{"n":{n}}}}}"#);
        let post_headers = format!("{headers}Content-Type: application/json\r\n");
        let (status, answer) = poster.call("POST", "/api/events", &post_headers, &body)?;
        let acknowledged = Instant::now();
        if status != 202 {
            return Err(format!("post {status}: {answer}"));
        }
        let (answered, body) = reader.join().map_err(|_| "reader panicked")??;
        let (next, count) = page(&body)?;
        if count != 1 {
            return Err(format!("the held read got {count} events: {body:.300}"));
        }
        position = next;
        latencies.push(if answered >= acknowledged {
            answered.duration_since(acknowledged).as_micros() as i64
        } else {
            -(acknowledged.duration_since(answered).as_micros() as i64)
        });
    }
    latencies.sort_unstable();
    println!(
        "samples={} p50={} p99={} max={}",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0)
    );
    Ok(())
}

fn rss_kib(pid: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS".into())
}

fn held_gauge(host: &str) -> Result<u64, String> {
    let (_, text) = Conn::open(host)?.call("GET", "/metrics", "", "")?;
    text.lines()
        .find_map(|line| line.strip_prefix("triggerd_stream_reads_held "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or("no triggerd_stream_reads_held".into())
}

fn hold() -> Result<(), String> {
    let host = host()?;
    let file = arg("--keys").ok_or("--keys is required")?;
    let keys: Vec<String> = std::fs::read_to_string(&file)
        .map_err(|e| format!("{file}: {e}"))?
        .lines()
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let (long_polls, sse) = (number("--long-polls", 1000) as usize, number("--sse", 1000) as usize);
    let seconds = number("--seconds", 10);
    let pid = arg("--pid").ok_or("--pid is required")?;
    let before = rss_kib(&pid)?;
    let (with_events, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // 2 000 reads opened at once fill the server's bounded queues, and keys not yet
    // verified on a core meet the per-address bound on key checks in flight: reads
    // answered 503 or 429 retry after their Retry-After on a new connection, as a
    // client should, and are counted apart. Any other answer is an error.
    let retries = Arc::new(AtomicU64::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let end = Instant::now() + Duration::from_secs(seconds) + Duration::from_secs(60);
    for n in 0..long_polls + sse {
        let (host, key) = (host.clone(), keys[n % keys.len()].clone());
        let (with_events, errors, retries) =
            (Arc::clone(&with_events), Arc::clone(&errors), Arc::clone(&retries));
        let worker = move || -> Result<(), String> {
            let mut conn = Conn::open(&host)?;
            let headers = format!("X-API-Key: {key}\r\n");
            let retry = |conn: &mut Conn, after: Duration| -> Result<(), String> {
                retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(after);
                *conn = Conn::open(&host)?;
                Ok(())
            };
            if n < long_polls {
                while Instant::now() < end {
                    conn.send("GET", "/api/events/stream?wait=30", &headers, "")?;
                    let (head, body) = conn.receive_with_head()?;
                    if let Some(after) = retry_later(&head) {
                        retry(&mut conn, after)?;
                        continue;
                    }
                    if head.status != 200 {
                        return Err(format!("long-poll answered {}: {body:.200}", head.status));
                    }
                    if page(&body)?.1 > 0 {
                        with_events.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else {
                let sse_headers = format!("{headers}Accept: text/event-stream\r\n");
                loop {
                    conn.send("GET", "/api/events/stream", &sse_headers, "")?;
                    let head = conn.head()?;
                    if let Some(after) = retry_later(&head) {
                        retry(&mut conn, after)?;
                        continue;
                    }
                    if head.status != 200 {
                        return Err(format!("event stream answered {}", head.status));
                    }
                    break;
                }
                let mut buffer = [0u8; 4096];
                loop {
                    let n = conn.reader.read(&mut buffer).map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Ok(());
                    }
                    if buffer[..n].windows(6).any(|w| w == b"data: ") {
                        with_events.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        };
        let first_error = Arc::clone(&first_error);
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                if let Err(e) = worker() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().map(|mut first| first.get_or_insert(e).clone()).ok();
                }
            })
            .map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let total = (long_polls + sse) as u64;
    while held_gauge(&host)? < total {
        if Instant::now() > deadline || errors.load(Ordering::Relaxed) > 0 {
            let first = first_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
            return Err(format!("only {} of {total} reads held; first error: {first}", held_gauge(&host)?));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = rss_kib(&pid)?;
    println!(
        "held={total} rss_before_kib={before} rss_after_kib={after} bytes_per_held={}",
        after.saturating_sub(before) * 1024 / total.max(1)
    );
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(seconds));
    println!(
        "answered_with_events={} errors={} still_held={} retried={}",
        with_events.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        held_gauge(&host)?,
        retries.load(Ordering::Relaxed)
    );
    Ok(())
}

fn read() -> Result<(), String> {
    let (host, key) = (host()?, arg("--key").ok_or("--key is required")?);
    let headers = format!("X-API-Key: {key}\r\n");
    let budget = Duration::from_secs(number("--seconds", 10));
    let mut conn = Conn::open(&host)?;
    let (started, mut position, mut events) = (Instant::now(), String::new(), 0usize);
    while started.elapsed() < budget {
        let (status, body) =
            conn.call("GET", &format!("/api/events/stream?after={position}&limit=1000"), &headers, "")?;
        if status != 200 {
            return Err(format!("stream read {status}: {body:.300}"));
        }
        let (next, count) = page(&body)?;
        if count == 0 {
            break;
        }
        (position, events) = (next, events + count);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("events={events} seconds={seconds:.2} events_per_second={:.0}", events as f64 / seconds);
    Ok(())
}

fn main() {
    let result = match std::env::args().nth(1).as_deref() {
        Some("wake") => wake(),
        Some("hold") => hold(),
        Some("read") => read(),
        _ => Err("usage: stream wake|hold|read --url http://HOST ... (see the file's header)".into()),
    };
    if let Err(e) = result {
        eprintln!("stream bench: {e}");
        std::process::exit(1);
    }
}
