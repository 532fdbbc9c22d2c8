//! A leasing inbox consumer to copy. Several of these can share one organisation's
//! inbox: each leases a page of pending events, processes them, acknowledges the ones
//! it processed and releases the ones it could not, so another consumer (or a later
//! lease) gets them. Its HTTP client is `examples/support/client.rs` (the standard
//! library and serde_json only).
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

use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "support/client.rs"]
mod client;
use client::Client;

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
        let lease = client.call(
            "POST",
            "/api/inbox/lease",
            Some(json!({ "limit": options.lease_size, "lease_seconds": 60 })),
        )?;
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
            let answer = client.call(
                "POST",
                &format!("/api/inbox/lease/{lease_id}/ack"),
                Some(json!({ "ids": done })),
            )?;
            acknowledged += answer["acknowledged"].as_array().map_or(0, Vec::len);
        }
        if !failed.is_empty() {
            client.call(
                "POST",
                &format!("/api/inbox/lease/{lease_id}/release"),
                Some(json!({ "ids": failed })),
            )?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("acknowledged {acknowledged} events in {seconds:.1} s ({:.0}/s)", acknowledged as f64 / seconds);
    Ok(())
}
