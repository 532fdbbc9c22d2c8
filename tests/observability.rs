//! What an operator sees: request ids unique across instances (a client's own echoed),
//! the access log (one JSON line per request, with the organisation once known), a
//! line per webhook attempt, and the process and queue metrics.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::receiver::{Receiver, Reply};
use common::{FreshDatabase, Response, Server};

const WAIT: Duration = Duration::from_secs(20);
const EVENT: &str = r#"{"type":"t","payload":{}}"#;

fn request_id(response: &Response) -> String {
    response.header("X-Request-Id").expect("X-Request-Id on every response").to_string()
}

#[test]
fn request_ids_are_unique_across_instances_and_a_clients_own_is_echoed() {
    let database = FreshDatabase::new();
    let (a, b) = (Server::start_on(&database.url, &[]), Server::start_on(&database.url, &[]));
    let mut seen = HashSet::new();
    for server in [&a, &b] {
        let mut conn = server.connect();
        for _ in 0..50 {
            let id = request_id(&conn.request("GET", "/health", &[], None));
            assert!(id.len() <= 48 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'), "{id}");
            assert!(seen.insert(id.clone()), "{id} given twice");
        }
    }
    // The two processes' ids differ in their prefix, not only in a counter.
    let prefixes: HashSet<&str> = seen.iter().map(|id| id.split('-').next().unwrap()).collect();
    assert_eq!(prefixes.len(), 2, "{prefixes:?}");
    // A client's well-formed id is kept; anything else is replaced.
    let theirs = "checkout-7f3a.retry_2";
    assert_eq!(request_id(&a.request("GET", "/health", &[("X-Request-Id", theirs)], None)), theirs);
    for bad in ["has space", "semi;colon", &"x".repeat(129)] {
        let echoed = request_id(&a.request("GET", "/nowhere", &[("X-Request-Id", bad)], None));
        assert_ne!(echoed, bad);
        assert!(!seen.contains(&echoed));
    }
    // Protocol errors, answered before any route, carry one too.
    let mut conn = a.connect();
    conn.send(b"GARBAGE\r\n\r\n");
    let refused = conn.read_response();
    assert_eq!(refused.status, 400);
    assert!(!request_id(&refused).is_empty());
}

/// Access-log lines (JSON objects with `"log":"access"`) from the server's stderr, until
/// one satisfies `wanted`.
fn access_line(
    log: &std::sync::mpsc::Receiver<String>,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let line = log.recv_timeout(WAIT).expect("the access-log line arrives");
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if value["log"] == "access" && wanted(&value) {
            return value;
        }
    }
}

#[test]
fn the_access_log_has_one_json_line_per_request_and_a_line_per_webhook_attempt() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(200));
    let (server, log) = Server::start_logging(
        &database.url,
        &["--access-log", "--log", "info", "--webhook-allow-private", "--delivery-poll-ms", "50"],
    );
    let org = server.generate("logged", "pro");
    let created = access_line(&log, |line| line["route"] == "keys_generate");
    assert_eq!(created["status"], 201);
    assert_eq!(created["organization_id"], org.id.as_str(), "known once the organisation exists");
    assert_eq!(created["method"], "POST");
    assert_eq!(created["client"], "127.0.0.1");

    let mut headers = org.headers();
    headers.push(("X-Request-Id", "client-chosen-1"));
    let accepted = server.request("POST", "/api/events", &headers, Some(EVENT));
    assert_eq!(accepted.status, 202);
    let line = access_line(&log, |line| line["request_id"] == "client-chosen-1");
    assert_eq!((line["route"].as_str(), line["status"].as_u64()), (Some("events"), Some(202)));
    assert_eq!(line["path"], "/api/events");
    assert_eq!(line["organization_id"], org.id.as_str());
    assert!(line["duration_us"].as_u64().is_some() && line["timestamp"].as_str().unwrap().ends_with('Z'));

    let unknown = server.request("GET", "/api/inbox?limit=5", &[("X-API-Key", "tk_wrong")], None);
    let line = access_line(&log, |line| line["request_id"] == request_id(&unknown).as_str());
    assert_eq!((line["status"].as_u64(), line["path"].as_str()), (Some(401), Some("/api/inbox")));
    assert!(line["organization_id"].is_null(), "no organisation without a good key");

    let mut conn = server.connect();
    conn.send(b"GARBAGE\r\n\r\n");
    let malformed = conn.read_response();
    let line = access_line(&log, |line| line["request_id"] == request_id(&malformed).as_str());
    assert_eq!((line["status"].as_u64(), line["route"].as_str()), (Some(400), Some("none")));
    assert!(line["method"].is_null() && line["path"].is_null());

    // Every webhook attempt has a line at INFO with the access log on, successes too.
    let body = format!(r#"{{"webhook_url":"{}"}}"#, receiver.url());
    assert_eq!(server.request("POST", "/api/webhook/config", &org.headers(), Some(&body)).status, 200);
    let event = org.post_event(&server, EVENT).json()["id"].as_str().unwrap().to_string();
    receiver.next(WAIT);
    let delivered = loop {
        let line = log.recv_timeout(WAIT).expect("a line for the attempt");
        if line.contains("webhook delivered") {
            break line;
        }
    };
    assert!(
        delivered.contains("INFO") && delivered.contains(&event) && delivered.contains(&org.id),
        "{delivered}"
    );
    assert!(delivered.contains("attempt=1") && delivered.contains("duration_ms="), "{delivered}");
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// Parses the exposition with a real Prometheus text-format parser.
fn parses(text: &str) {
    let lines = text.lines().map(|l| Ok(l.to_string())).collect::<Vec<_>>();
    prometheus_parse::Scrape::parse(lines.into_iter()).expect("valid exposition format");
}

#[test]
fn metrics_report_the_process_the_build_and_the_queues() {
    let server = Server::start(&[]);
    // Connections held open, each having served a request (so each is accepted).
    let mut held: Vec<_> = (0..5).map(|_| server.connect()).collect();
    for conn in &mut held {
        assert_eq!(conn.request("GET", "/health", &[], None).status, 200);
    }
    let text = server.metrics_text();
    parses(&text);
    assert!(sample(&text, "triggerd_http_connections_open") >= 6.0, "5 held and the scraping one");
    assert!(sample(&text, "process_cpu_seconds_total") > 0.0);
    assert!(sample(&text, "process_resident_memory_bytes") > 1_000_000.0);
    let (open, max) = (sample(&text, "process_open_fds"), sample(&text, "process_max_fds"));
    assert!(open >= 6.0 && max >= open, "{open} of {max}");
    let started = sample(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started <= now && started > now - 600.0, "started {started}, now {now}");
    let version = format!("triggerd_build_info{{version=\"{}\",commit=\"", env!("CARGO_PKG_VERSION"));
    assert!(text.lines().any(|line| line.starts_with(&version) && line.ends_with("} 1")), "{text}");
    for line in [
        "triggerd_command_queue_depth{lane=\"keys\"} 0",
        "triggerd_command_queue_depth{lane=\"reads\"} 0",
        "triggerd_command_queue_depth{lane=\"stream\"} 0",
        "triggerd_deliveries_in_flight 0",
        "triggerd_partitions_kept 0",
        "triggerd_access_log_dropped_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}");
    }
    drop(held);
}

#[test]
fn metrics_listen_serves_them_apart_and_the_public_port_no_more() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr.expect("the metrics line names the address");
    assert_ne!(metrics.port(), server.addr.port());
    server.request("GET", "/metrics", &[], None).assert_error(404, "not_found");
    let mut conn = common::Conn::new(metrics);
    let response = conn.request("GET", "/metrics", &[], None);
    assert_eq!(response.status, 200);
    assert!(response.header("Content-Type").unwrap().starts_with("text/plain; version=0.0.4"));
    assert_eq!(response.header("Connection"), Some("close"));
    parses(&response.text());
    assert!(sample(&response.text(), "process_open_fds") > 0.0);
    let mut head = common::Conn::new(metrics);
    head.send(b"HEAD /metrics HTTP/1.1\r\n\r\n");
    let mut raw = String::new();
    std::io::Read::read_to_string(&mut head.stream, &mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n") && raw.ends_with("\r\n\r\n"), "no body: {raw}");
    common::Conn::new(metrics).request("GET", "/health", &[], None).assert_error(404, "not_found");
    let refused = common::Conn::new(metrics).request("POST", "/metrics", &[], Some("{}"));
    refused.assert_error(405, "method_not_allowed");
    assert_eq!(refused.header("Allow"), Some("GET, HEAD"));
    // The API keeps serving on its own port.
    assert_eq!(server.request("GET", "/health", &[], None).status, 200);
}
