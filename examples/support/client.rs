//! The examples' HTTP client: one keep-alive connection, reopened when it breaks, and
//! the waiting the API asks for (`Retry-After` on 429 and 503). Only the standard
//! library and serde_json, so it is easy to transplant; a real consumer would use its
//! HTTP client of choice.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// Attempts of one call that gets 429 or 503 (or a broken connection) before giving up.
const RETRIES_MAX: u32 = 10;

pub struct Client {
    host: String,
    key: String,
    connection: Option<(TcpStream, BufReader<TcpStream>)>,
}

impl Client {
    pub fn new(base: &str, key: &str) -> Result<Client, String> {
        let host = base.strip_prefix("http://").ok_or("only http:// base URLs in these examples")?;
        Ok(Client { host: host.trim_end_matches('/').to_string(), key: key.to_string(), connection: None })
    }

    /// One request: (status, Retry-After seconds, body).
    fn send(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, u64, String), String> {
        if self.connection.is_none() {
            let stream = TcpStream::connect(&self.host).map_err(|e| format!("connect {}: {e}", self.host))?;
            let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
            self.connection = Some((stream, reader));
        }
        let (stream, reader) = self.connection.as_mut().ok_or("no connection")?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\n\
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

    /// Sends the request, waiting `Retry-After` on 429 and 503 and reopening a broken
    /// connection (every call the examples make is safe to repeat); the JSON answer of
    /// a 2xx.
    pub fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        for _ in 0..RETRIES_MAX {
            match self.send(method, path, body.as_ref()) {
                Ok((429 | 503, retry_after, _)) => std::thread::sleep(Duration::from_secs(retry_after)),
                Ok((status, _, text)) if (200..300).contains(&status) => {
                    return serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"));
                }
                Ok((status, _, text)) => return Err(format!("{path}: {status} {text}")),
                Err(_) => {
                    self.connection = None;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Err(format!("{path}: still refused after {RETRIES_MAX} attempts"))
    }
}
