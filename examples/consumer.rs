//! A leasing inbox consumer to copy. Several of these can share one organisation's
//! inbox: each leases a page of pending events, processes them, acknowledges the ones
//! it processed and releases the ones it could not, so another consumer (or a later
//! lease) gets them. Only the standard library and serde_json, so it is easy to
//! transplant; a real consumer would use its HTTP client of choice.
//!
//!     cargo run --example consumer -- http://127.0.0.1:8080 "$KEY" [lease-size]
//!         [--fail-type TYPE] [--seconds N] [--quiet]
//!
//! It stops when nothing is left to lease (or after `--seconds`, waiting for new events
//! meanwhile) and prints how many events it acknowledged. `--fail-type` makes events of
//! that type fail to process (to see poison events set aside after 5 leases).
//!
//! At-least-once: an event is acknowledged only after it is processed; a crash in
//! between means its lease expires and the event is leased again. Make processing
//! idempotent, e.g. by event id. On 429 and 503 the consumer waits `Retry-After` and
//! tries again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Attempts of one call that gets 429 or 503 before the consumer gives up.
const RETRIES_MAX: u32 = 10;

/// A keep-alive connection to the server, reopened when it breaks.
struct Client {
    host: String,
    key: String,
    connection: Option<(TcpStream, BufReader<TcpStream>)>,
}

impl Client {
    fn new(base: &str, key: &str) -> Result<Client, String> {
        let host = base.strip_prefix("http://").ok_or("only http:// base URLs in this example")?;
        Ok(Client { host: host.trim_end_matches('/').to_string(), key: key.to_string(), connection: None })
    }

    /// One request: (status, Retry-After seconds, body).
    fn send(&mut self, path: &str, body: &Value) -> Result<(u16, u64, String), String> {
        if self.connection.is_none() {
            let stream = TcpStream::connect(&self.host).map_err(|e| format!("connect {}: {e}", self.host))?;
            let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
            self.connection = Some((stream, reader));
        }
        let (stream, reader) = self.connection.as_mut().ok_or("no connection")?;
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.host,
            self.key,
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
        let (mut length, mut retry_after) = (0usize, 1u64);
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or_default();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "retry-after" => retry_after = value.trim().parse().unwrap_or(1),
                _ => {}
            }
        }
        let mut text = vec![0; length];
        reader.read_exact(&mut text).map_err(|e| e.to_string())?;
        Ok((status, retry_after, String::from_utf8_lossy(&text).into_owned()))
    }

    /// POSTs `body` to `path`, waiting `Retry-After` on 429 and 503.
    fn call(&mut self, path: &str, body: Value) -> Result<Value, String> {
        for _ in 0..RETRIES_MAX {
            match self.send(path, &body) {
                Ok((429 | 503, retry_after, _)) => std::thread::sleep(Duration::from_secs(retry_after)),
                Ok((status, _, text)) if (200..300).contains(&status) => {
                    return serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"));
                }
                Ok((status, _, text)) => return Err(format!("{path}: {status} {text}")),
                // A broken connection: reopen and send again (the calls are idempotent).
                Err(_) => self.connection = None,
            }
        }
        Err(format!("{path}: still refused after {RETRIES_MAX} attempts"))
    }
}

/// Your business logic goes here; `Err` leaves the event for another attempt.
fn process(event: &Value, fail_type: Option<&str>, quiet: bool) -> Result<(), String> {
    let event_type = event["type"].as_str().unwrap_or("?");
    if fail_type == Some(event_type) {
        return Err(format!("cannot process {event_type}"));
    }
    if !quiet {
        println!("processing {event_type} {}", event["id"].as_str().unwrap_or("?"));
    }
    Ok(())
}

struct Options {
    base: String,
    key: String,
    lease_size: u64,
    fail_type: Option<String>,
    seconds: Option<u64>,
    quiet: bool,
}

fn options() -> Result<Options, String> {
    let usage =
        "usage: consumer <base-url> <api-key> [lease-size] [--fail-type TYPE] [--seconds N] [--quiet]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let mut positional = args.iter().take_while(|a| !a.starts_with("--"));
    Ok(Options {
        base: positional.next().ok_or(usage)?.clone(),
        key: positional.next().ok_or(usage)?.clone(),
        lease_size: positional.next().and_then(|n| n.parse().ok()).unwrap_or(50).clamp(1, 100),
        fail_type: flag("--fail-type"),
        seconds: flag("--seconds").and_then(|s| s.parse().ok()),
        quiet: args.iter().any(|a| a == "--quiet"),
    })
}

fn main() -> Result<(), String> {
    let options = options()?;
    let mut client = Client::new(&options.base, &options.key)?;
    let started = Instant::now();
    let deadline = options.seconds.map(|s| started + Duration::from_secs(s));
    let mut acknowledged = 0usize;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let lease =
            client.call("/api/inbox/lease", json!({ "limit": options.lease_size, "lease_seconds": 60 }))?;
        let events = lease["events"].as_array().ok_or("no events array")?;
        if events.is_empty() {
            match deadline {
                // Running for a while: wait for new events.
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
                None => break,
            }
            continue;
        }
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for event in events {
            match process(event, options.fail_type.as_deref(), options.quiet) {
                Ok(()) => done.push(event["id"].clone()),
                Err(why) => {
                    eprintln!("{why}; releasing it");
                    failed.push(event["id"].clone());
                }
            }
        }
        let lease_id = lease["lease_id"].as_str().ok_or("no lease_id")?;
        if !done.is_empty() {
            let answer = client.call(&format!("/api/inbox/lease/{lease_id}/ack"), json!({ "ids": done }))?;
            acknowledged += answer["acknowledged"].as_array().map_or(0, Vec::len);
        }
        if !failed.is_empty() {
            client.call(&format!("/api/inbox/lease/{lease_id}/release"), json!({ "ids": failed }))?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("acknowledged {acknowledged} events in {seconds:.1} s ({:.0}/s)", acknowledged as f64 / seconds);
    Ok(())
}
