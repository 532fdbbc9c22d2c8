//! A stream consumer to copy: tails the organisation's ordered stream (every event
//! once, in commit order) and keeps its place in a file, so a restart, or a crash,
//! resumes exactly after the last page it finished. Its HTTP client is
//! `examples/support/client.rs` (the standard library and serde_json only).
//!
//!     cargo run --example stream -- http://127.0.0.1:8080 "$KEY" [--position-file F]
//!         [--count N] [--quiet]
//!
//! It prints each event as a line of JSON (`--quiet`: only the total), waiting up to
//! 30 s at a time when there is nothing new, and saves the position after each page
//! (default file: `stream.position`). `--count N` stops after N events.
//!
//! At-least-once across crashes: the position is saved after the page is processed, so
//! a crash in between processes that page again. Make processing idempotent, e.g. by
//! event id.

use std::path::{Path, PathBuf};

use serde_json::Value;

#[path = "support/client.rs"]
mod client;
use client::Client;

/// Your business logic goes here.
fn process(event: &Value, quiet: bool) {
    if !quiet {
        println!("{event}");
    }
}

/// The saved position, or the start of the stream.
fn load(file: &Path) -> Result<String, String> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// Replaces the saved position durably: a crash leaves the old one or the new one.
fn save(file: &Path, position: &str) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", file.display());
    let temporary = file.with_extension("tmp");
    let mut out = std::fs::File::create(&temporary).map_err(fail)?;
    std::io::Write::write_all(&mut out, position.as_bytes()).map_err(fail)?;
    out.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, file).map_err(fail)
}

struct Options {
    base: String,
    key: String,
    position_file: PathBuf,
    count: Option<u64>,
    quiet: bool,
}

fn options() -> Result<Options, String> {
    let usage = "usage: stream <base-url> <api-key> [--position-file F] [--count N] [--quiet]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let mut positional = args.iter().take_while(|a| !a.starts_with("--"));
    Ok(Options {
        base: positional.next().ok_or(usage)?.clone(),
        key: positional.next().ok_or(usage)?.clone(),
        position_file: flag("--position-file").unwrap_or_else(|| "stream.position".into()).into(),
        count: flag("--count").map(|n| n.parse().map_err(|_| usage)).transpose()?,
        quiet: args.iter().any(|a| a == "--quiet"),
    })
}

fn main() -> Result<(), String> {
    let options = options()?;
    let mut client = Client::new(&options.base, &options.key)?;
    let mut position = load(&options.position_file)?;
    let mut seen = 0u64;
    while options.count.is_none_or(|count| seen < count) {
        // Never ask for more than `--count` still wants: the position is per page.
        let limit = options.count.map_or(1000, |count| (count - seen).min(1000));
        let path = format!("/api/events/stream?after={position}&limit={limit}&wait=30");
        let page = client.call("GET", &path, None)?;
        let events = page["events"].as_array().ok_or("no events array")?;
        for event in events {
            process(event, options.quiet);
        }
        seen += events.len() as u64;
        position = page["position"].as_str().ok_or("no position")?.to_string();
        save(&options.position_file, &position)?;
    }
    eprintln!("{seen} events; position saved in {}", options.position_file.display());
    Ok(())
}
