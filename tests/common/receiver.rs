//! A webhook receiver for tests: a real HTTP/1.1 server on loopback that records every
//! request and answers from a script (status per request, or never).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the receiver answers its n-th request (0-based).
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    StatusWith(u16, &'static str),
    /// Read the request, never answer.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map_or("", |(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    requests: mpsc::Receiver<Received>,
    pub count: Arc<AtomicUsize>,
}

impl Receiver {
    pub fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, requests) = mpsc::channel();
        let count = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let counter = Arc::clone(&count);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (sender, script, counter) = (sender.clone(), Arc::clone(&script), Arc::clone(&counter));
                std::thread::spawn(move || serve(stream, &sender, &*script, &counter));
            }
        });
        Receiver { addr, requests, count }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/test", self.addr)
    }

    /// The next request; panics if none comes within `limit` (a guard against a hung test).
    pub fn next(&self, limit: Duration) -> Received {
        self.requests.recv_timeout(limit).expect("a webhook request arrives")
    }
}

fn serve(
    mut stream: TcpStream,
    sender: &mpsc::Sender<Received>,
    script: &dyn Fn(usize) -> Reply,
    counter: &AtomicUsize,
) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let headers: Vec<(String, String)> = head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap_or(0));
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        let nth = counter.fetch_add(1, Ordering::SeqCst);
        let reply = script(nth);
        let _ = sender.send(Received { headers, body, at: Instant::now() });
        let (status, extra) = match reply {
            Reply::Status(status) => (status, ""),
            Reply::StatusWith(status, extra) => (status, extra),
            Reply::Hang => {
                // Hold the connection open without answering until the client gives up.
                let mut sink = [0u8; 64];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
        };
        let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n{extra}\r\nok");
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Polls `condition` until it holds; fails the test at `limit`. For state that the
/// server writes after an exchange the test has observed (e.g. the recorded outcome of
/// an attempt the receiver answered): the assertion is on the state, not on time.
pub fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// HMAC-SHA256 built from SHA-256 by hand (RFC 2104), independent of the server's
/// `hmac` crate, to check signatures.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner_key: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_key: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&inner_key).chain_update(message).finalize();
    Sha256::new().chain_update(&outer_key).chain_update(inner).finalize().into()
}
