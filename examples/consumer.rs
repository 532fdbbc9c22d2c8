//! An inbox consumer to copy: pulls undelivered events page by page, processes each,
//! and acknowledges them in batches. Only the standard library and serde_json, so it
//! is easy to transplant; a real consumer would use its HTTP client of choice.
//!
//!     cargo run --example consumer -- http://127.0.0.1:8080 "$KEY" [ack-batch-size]
//!
//! It stops when the inbox is empty and prints how many events it processed. Events
//! are acknowledged only after they are processed, so a crash in between means the
//! event is seen again (at-least-once): make processing idempotent, e.g. by event id.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use serde_json::{json, Value};

/// One request on its own connection (HTTP/1.1, `Connection: close`).
fn call(base: &str, method: &str, path: &str, key: &str, body: Option<&Value>) -> Result<Value, String> {
    let host =
        base.strip_prefix("http://").ok_or("only http:// base URLs in this example")?.trim_end_matches('/');
    let mut stream = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).map_err(|e| e.to_string())?;
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
    let mut line = String::new();
    while reader.read_line(&mut line).map_err(|e| e.to_string())? > 2 {
        line.clear();
    }
    let mut text = String::new();
    reader.read_to_string(&mut text).map_err(|e| e.to_string())?;
    if !(200..300).contains(&status) {
        return Err(format!("{method} {path}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e}"))
}

/// Your business logic goes here.
fn process(event: &Value) {
    println!("processing {} {}", event["type"].as_str().unwrap_or("?"), event["id"].as_str().unwrap_or("?"));
}

fn acknowledge(base: &str, key: &str, ids: &mut Vec<Value>) -> Result<(), String> {
    if ids.is_empty() {
        return Ok(());
    }
    let answer = call(base, "POST", "/api/ack", key, Some(&json!({ "ids": ids })))?;
    if let Some(missing) = answer["not_found"].as_array().filter(|m| !m.is_empty()) {
        eprintln!("not found while acknowledging: {missing:?}");
    }
    ids.clear();
    Ok(())
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let base = args.next().ok_or("usage: consumer <base-url> <api-key> [ack-batch-size]")?;
    let key = args.next().ok_or("usage: consumer <base-url> <api-key> [ack-batch-size]")?;
    let ack_batch: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100).clamp(1, 1000);

    let mut processed = 0usize;
    let mut to_ack: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/inbox?limit=100&cursor={cursor}"),
            None => "/api/inbox?limit=100".to_string(),
        };
        let page = call(&base, "GET", &path, &key, None)?;
        for event in page["events"].as_array().ok_or("no events array")? {
            process(event);
            processed += 1;
            to_ack.push(event["id"].clone());
            if to_ack.len() >= ack_batch {
                acknowledge(&base, &key, &mut to_ack)?;
            }
        }
        // The cursor is a position, so acknowledging (which removes events from this
        // view) does not make the walk skip or repeat anything.
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    acknowledge(&base, &key, &mut to_ack)?;
    println!("processed {processed} events");
    Ok(())
}
