//! A webhook receiver to copy: verifies triggerd's Standard Webhooks signature and the
//! timestamp tolerance before trusting a delivery, and deduplicates by `webhook-id`
//! (delivery is at-least-once).
//!
//!     cargo run --example receiver -- 127.0.0.1:9000 whsec_... [--tolerance-s 300] [--delay-ms 0]
//!
//! Prints `listening on <addr>`, then one line per request: `verified <id> <type>`,
//! `duplicate <id>` or `rejected <reason>`. Answers 204 to a verified delivery, 401 to a
//! bad signature or stale timestamp. `--delay-ms` makes it a slow receiver (benchmarks).

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Ids remembered for deduplication.
const SEEN_MAX: usize = 100_000;

struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// True the first time an id is seen.
    fn first(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > SEEN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

/// Checks `webhook-signature` (one or more space-separated `v1,<base64>`) and the
/// timestamp. Compares in constant time through `Mac::verify_slice`.
fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), String> {
    let sent: i64 = timestamp.parse().map_err(|_| "bad webhook-timestamp".to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs() as i64;
    if (now - sent).unsigned_abs() > tolerance.as_secs() {
        return Err(format!("timestamp {sent} is outside the {} s tolerance", tolerance.as_secs()));
    }
    let key = secret.strip_prefix("whsec_").and_then(|k| STANDARD.decode(k).ok()).ok_or("bad secret")?;
    for candidate in signatures.split(' ') {
        let Some(encoded) = candidate.strip_prefix("v1,") else { continue };
        let Ok(signature) = STANDARD.decode(encoded) else { continue };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&signature).is_ok() {
            return Ok(());
        }
    }
    Err("no valid v1 signature".into())
}

fn handle(
    stream: TcpStream,
    secret: &str,
    tolerance: Duration,
    delay: Duration,
    seen: &Mutex<Seen>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let get =
            |name: &str| headers.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str()).to_string();
        let length: usize = get("content-length").parse().unwrap_or(0).min(1 << 20);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        std::thread::sleep(delay);
        let id = get("webhook-id");
        let status =
            match verify(secret, &id, &get("webhook-timestamp"), &get("webhook-signature"), &body, tolerance)
            {
                Err(reason) => {
                    println!("rejected {reason}");
                    "401 Unauthorized"
                }
                Ok(()) if !seen.lock().map_or(true, |mut seen| seen.first(&id)) => {
                    println!("duplicate {id}");
                    "204 No Content"
                }
                Ok(()) => {
                    // Your business logic goes here; answer 2xx only once it is done.
                    println!("verified {id} {}", get("x-event-type"));
                    "204 No Content"
                }
            };
        writer.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())?;
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: receiver <listen-addr> <whsec_secret> [--tolerance-s N] [--delay-ms N]";
    let (listen, secret) = match (args.first(), args.get(1)) {
        (Some(listen), Some(secret)) => (listen.clone(), secret.clone()),
        _ => return Err(usage.into()),
    };
    let option = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let tolerance = Duration::from_secs(option("--tolerance-s", 300));
    let delay = Duration::from_millis(option("--delay-ms", 0));
    let listener = TcpListener::bind(&listen).map_err(|e| format!("{listen}: {e}"))?;
    println!("listening on {}", listener.local_addr().map_err(|e| e.to_string())?);
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let secret = Arc::new(secret);
    let seen = Arc::new(Mutex::new(Seen { ids: HashSet::new(), order: VecDeque::new() }));
    for stream in listener.incoming().flatten() {
        let (secret, seen) = (Arc::clone(&secret), Arc::clone(&seen));
        std::thread::spawn(move || {
            let _ = handle(stream, &secret, tolerance, delay, &seen);
        });
    }
    Ok(())
}
