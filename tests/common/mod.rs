//! Test harness: starts the real `triggerd` binary against the real PostgreSQL named
//! by DATABASE_URL (scripts/test provides one), and speaks raw HTTP/1.1 over sockets.
//! Readiness is the "listening" line the binary prints, never a sleep.
#![allow(dead_code)]

pub mod receiver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Argon2 memory cost for test servers: far cheaper than production, same code path.
pub const TEST_ARGON2_MEMORY_KIB: &str = "1024";
/// Guard against a hung test, never used to wait for something to happen.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL is not set: run the suite through scripts/test")
}

/// A database of one test's own, dropped (with its connections) when the guard goes.
/// Needed where servers' background work (the delivery engine) would otherwise act on
/// other tests' rows in the shared database.
pub struct FreshDatabase {
    pub url: String,
    name: String,
}

impl FreshDatabase {
    pub fn new() -> FreshDatabase {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        db().batch_execute(&format!("CREATE DATABASE {name}")).expect("create a test database");
        let base = database_url();
        let url = match base.split_once("://") {
            // URL form: replace the path (the database name), keep the query.
            Some((scheme, rest)) => {
                let (authority, query) = match rest.split_once('?') {
                    Some((before, query)) => (before, format!("?{query}")),
                    None => (rest, String::new()),
                };
                let authority = authority.split('/').next().unwrap_or_default();
                format!("{scheme}://{authority}/{name}{query}")
            }
            // key=value form: a later dbname overrides an earlier one.
            None => format!("{base} dbname={name}"),
        };
        FreshDatabase { url, name }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let _ = db().batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// Where `/metrics` is served apart from `addr` (`--metrics-listen`), if it is.
    pub metrics_addr: Option<SocketAddr>,
    child: Child,
}

impl Server {
    /// Starts a server with two HTTP cores on a free port; `extra` are more flags.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_on(&database_url(), extra)
    }

    /// Starts a server on the given database.
    pub fn start_on(database: &str, extra: &[&str]) -> Server {
        Server::spawn(database, "127.0.0.1:0", extra)
    }

    /// Starts a server listening on `listen` (say `0.0.0.0:0`). When that is the
    /// unspecified address, `addr` is loopback with the port it got, which reaches it.
    pub fn start_listening(listen: &str, extra: &[&str]) -> Server {
        Server::spawn(&database_url(), listen, extra)
    }

    /// Starts a server on `database` whose log lines (stderr) the test reads; the
    /// receiver yields each line as the server writes it.
    pub fn start_logging(database: &str, extra: &[&str]) -> (Server, std::sync::mpsc::Receiver<String>) {
        let (sender, log) = std::sync::mpsc::channel();
        let server = Server::spawn_with(database, "127.0.0.1:0", extra, Some(sender));
        (server, log)
    }

    fn spawn(database: &str, listen: &str, extra: &[&str]) -> Server {
        Server::spawn_with(database, listen, extra, None)
    }

    fn spawn_with(
        database: &str,
        listen: &str,
        extra: &[&str],
        log: Option<std::sync::mpsc::Sender<String>>,
    ) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_triggerd"));
        command
            .args(["serve", "--listen", listen, "--database-url", database])
            .args(["--argon2-memory-kib", TEST_ARGON2_MEMORY_KIB]);
        // Two cores unless a test chooses.
        if !extra.contains(&"--http-cores") {
            command.args(["--http-cores", "2"]);
        }
        // A test that reads the log may choose its level.
        if !extra.contains(&"--log") {
            command.args(["--log", &std::env::var("TRIGGERD_TEST_LOG").unwrap_or_else(|_| "warn".into())]);
        }
        command.args(extra).stdout(Stdio::piped()).stderr(if log.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
        let mut child = command.spawn().expect("spawn triggerd");
        if let (Some(log), Some(stderr)) = (log, child.stderr.take()) {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = log.send(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics_addr = None;
        let mut addr: SocketAddr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("triggerd listening on http://") {
                        break addr.parse().expect("address on the listening line");
                    }
                    if let Some(rest) = line.strip_prefix("triggerd metrics on http://") {
                        let addr = rest.strip_suffix("/metrics").expect("the metrics path");
                        metrics_addr = Some(addr.parse().expect("address on the metrics line"));
                    }
                }
                _ => {
                    let status = child.wait().expect("wait");
                    panic!("triggerd exited before listening: {status}");
                }
            }
        };
        if addr.ip().is_unspecified() {
            let loopback: IpAddr =
                if addr.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
            addr.set_ip(loopback);
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { addr, metrics_addr, child }
    }

    pub fn connect(&self) -> Conn {
        Conn::new(self.addr)
    }

    /// One request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Response {
        self.connect().request(method, path, headers, body)
    }

    /// The text of `GET /metrics`, from the metrics address if the server has one.
    pub fn metrics_text(&self) -> String {
        let response =
            Conn::new(self.metrics_addr.unwrap_or(self.addr)).request("GET", "/metrics", &[], None);
        assert_eq!(response.status, 200, "{}", response.text());
        response.text()
    }

    /// One unlabelled sample of `GET /metrics` (a counter or gauge).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in the exposition"))
    }

    pub fn generate(&self, name: &str, tier: &str) -> Org {
        let body = format!(r#"{{"organization_name":"{name}","tier":"{tier}"}}"#);
        let response =
            self.request("POST", "/api/keys/generate", &[("Content-Type", "application/json")], Some(&body));
        assert_eq!(response.status, 201, "{}", response.text());
        let json = response.json();
        Org {
            id: json["organization_id"].as_str().unwrap().to_string(),
            key: json["api_key"].as_str().unwrap().to_string(),
        }
    }

    /// Kills the process at once (SIGKILL) and waits for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with a pid this test spawned and has not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for triggerd")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Org {
    pub id: String,
    pub key: String,
}

impl Org {
    pub fn post_event(&self, server: &Server, body: &str) -> Response {
        server.request("POST", "/api/events", &self.headers(), Some(body))
    }

    pub fn headers(&self) -> Vec<(&str, &str)> {
        vec![("X-API-Key", self.key.as_str()), ("Content-Type", "application/json")]
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts the contract's error shape and code; returns the body.
    pub fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{}", self.text());
        let json = self.json();
        assert_eq!(json["error"], code, "{json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
        json
    }
}

/// A raw client connection.
pub struct Conn {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream, buffer: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Response {
        self.send(&build_request(method, path, headers, body));
        self.read_response()
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Reads one response (Content-Length framed, as the server always sends).
    pub fn read_response(&mut self) -> Response {
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill(),
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
        };
        let head = String::from_utf8(self.buffer[..head_end].to_vec()).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap().to_string();
        let status: u16 = parts.next().unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let length = if status == 100 { 0 } else { length };
        while self.buffer.len() < head_end + length {
            assert!(self.fill(), "connection closed inside a body");
        }
        let body = self.buffer[head_end..head_end + length].to_vec();
        self.buffer.drain(..head_end + length);
        Response { status, version, headers, body }
    }

    /// True once the server has closed the connection (reads EOF).
    pub fn is_closed_by_server(&mut self) -> bool {
        self.buffer.is_empty() && !self.fill()
    }
}

pub fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Vec<u8> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    if let Some(body) = body {
        request.push_str(body);
    }
    request.into_bytes()
}

/// A synchronous PostgreSQL client for assertions on what was stored.
pub fn db() -> postgres::Client {
    postgres::Client::connect(&database_url(), postgres::NoTls).expect("connect to the test database")
}

/// A synchronous client of the database at `url` (a `FreshDatabase`).
pub fn db_at(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect to the test database")
}

pub fn event_count(db: &mut postgres::Client, org_id: &str) -> i64 {
    let org: uuid::Uuid = org_id.parse().unwrap();
    db.query_one("SELECT count(*) FROM events WHERE org_id = $1", &[&org]).unwrap().get(0)
}

/// Inserts `count` pending events of `org_id` straight into the table (type `bulk`,
/// payload `{}`), a millisecond apart from now on, with UUIDv7-shaped ids of those
/// times: a backlog without HTTP. Forward from now, since a fresh database has
/// partitions from today on (a history dated before now fails in the first minutes of
/// a UTC day).
pub fn insert_bulk_events(client: &mut postgres::Client, org_id: uuid::Uuid, count: i64) {
    client
        .execute(
            "INSERT INTO events (org_id, id, type, payload, created_at)
             SELECT $1::uuid, (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
                               || substr(md5($1::uuid::text || n), 1, 3) || '8'
                               || substr(md5($1::uuid::text || n), 4, 15))::uuid,
                    'bulk', '{}', ts
             FROM (SELECT n, now() + n * interval '1 millisecond' AS ts
                   FROM generate_series(1, $2::int8) AS n) s",
            &[&org_id, &count],
        )
        .unwrap();
}
