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
