//! An open-loop HTTP load generator that corrects for coordinated omission: requests
//! are scheduled at a fixed rate, and each latency is measured from the request's
//! scheduled start, not from when a busy connection got round to sending it. (wrk is
//! closed-loop: a slow response delays the next request and hides the queueing.)
//!
//!   cargo bench --bench openloop -- --url http://127.0.0.1:8080/api/events --rate 10000 \
//!       --seconds 10 --connections 32 --keys keys.txt [--body '{"type":..}']... [--method POST]
//!       [--expect-status 400]
//!
//! With --keys, requests rotate over the keys (X-API-Key); with several --body, over
//! the bodies. Prints one line:
//! `rate=<achieved> sent=<n> ok=<expected> errors=<other or failed> p50=.. p90=.. p99=.. p999=.. max=..`
//! (latencies in µs). Exits 1 if any request was not answered as expected (any 2xx by
//! default, or exactly --expect-status: scripts/bench sends refused events that way).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Options {
    host: String,
    path: String,
    rate: f64,
    seconds: f64,
    connections: usize,
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
    Ok(Options {
        host,
        path,
        rate: get("--rate").and_then(|v| v.parse().ok()).ok_or("--rate is required")?,
        seconds: get("--seconds").and_then(|v| v.parse().ok()).unwrap_or(10.0),
        connections: get("--connections").and_then(|v| v.parse().ok()).unwrap_or(32),
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

/// Reads one response (Content-Length framed); returns the status.
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}

/// One connection's share: requests `index`, `index + connections`, … of the schedule.
fn run_connection(options: &Options, index: usize, start: Instant) -> (Vec<u32>, u64, u64) {
    let interval = Duration::from_secs_f64(options.connections as f64 / options.rate);
    let total = (options.rate * options.seconds / options.connections as f64) as u64;
    let offset = Duration::from_secs_f64(index as f64 / options.rate);
    let mut latencies = Vec::with_capacity(total as usize);
    let (mut ok, mut errors) = (0u64, 0u64);
    let connect = || -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
        let stream = TcpStream::connect(&options.host)?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok((stream, reader))
    };
    let Ok((mut stream, mut reader)) = connect() else { return (latencies, 0, total) };
    for n in 0..total {
        let scheduled = start + offset + interval * n as u32;
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        let key = if options.keys.is_empty() {
            None
        } else {
            Some(&options.keys[(index + n as usize) % options.keys.len()])
        };
        let mut request =
            format!("{} {} HTTP/1.1\r\nHost: {}\r\n", options.method, options.path, options.host);
        if let Some(key) = key {
            request.push_str(&format!("X-API-Key: {key}\r\n"));
        }
        let body = (!options.bodies.is_empty())
            .then(|| &options.bodies[(index + n as usize) % options.bodies.len()]);
        match body {
            Some(body) => request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            None => request.push_str("\r\n"),
        }
        let result = stream.write_all(request.as_bytes()).and_then(|_| read_response(&mut reader));
        // Measured from the scheduled start: a late send counts as latency.
        latencies.push(scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        match result {
            Ok(status) if options.expect_status.map_or((200..=299).contains(&status), |s| s == status) => {
                ok += 1
            }
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                match connect() {
                    Ok((s, r)) => (stream, reader) = (s, r),
                    Err(_) => return (latencies, ok, errors + total - n - 1),
                }
            }
        }
    }
    (latencies, ok, errors)
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
    let results: Vec<(Vec<u32>, u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..options.connections)
            .map(|i| {
                scope.spawn({
                    let options = &options;
                    move || run_connection(options, i, start)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut latencies: Vec<u32> = results.iter().flat_map(|(l, _, _)| l.iter().copied()).collect();
    let ok: u64 = results.iter().map(|r| r.1).sum();
    let errors: u64 = results.iter().map(|r| r.2).sum();
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
