//! The example receiver (examples/receiver.rs) verifies a real delivery's signature,
//! refuses a forged one and a stale timestamp, and deduplicates by webhook-id.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{FreshDatabase, Server};

#[test]
fn receiver_verifies_real_deliveries_and_refuses_forgeries() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &["--webhook-allow-private"]);
    let org = server.generate("receiving", "pro");
    // null switches push off but answers the organisation's signing secret.
    let config =
        server.request("POST", "/api/webhook/config", &org.headers(), Some(r#"{"webhook_url":null}"#));
    let secret = config.json()["signing_secret"].as_str().unwrap().to_string();

    let binary =
        std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples/receiver");
    let mut receiver = Command::new(binary)
        .args(["127.0.0.1:0", &secret])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the example is built by cargo test");
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").expect("listening line").to_string();

    let body = format!(r#"{{"webhook_url":"http://{addr}/hook"}}"#);
    assert_eq!(server.request("POST", "/api/webhook/config", &org.headers(), Some(&body)).status, 200);
    let event = org.post_event(&server, r#"{"type":"invoice.paid","payload":{"n":1}}"#).json();
    let id = event["id"].as_str().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), format!("verified {id} invoice.paid"));

    // A forged delivery and a replayed old one are refused; a repeat is a duplicate.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let forged = [
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", now.to_string()),
        ("webhook-signature", "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string()),
    ];
    let mut conn = common::Conn::new(addr.parse().unwrap());
    let headers: Vec<(&str, &str)> = forged.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(conn.request("POST", "/hook", &headers, Some("{}")).status, 401);
    assert!(lines.next().unwrap().unwrap().starts_with("rejected no valid v1 signature"));
    let stale = [("webhook-id", "x"), ("webhook-timestamp", "1000000000"), ("webhook-signature", "v1,x")];
    assert_eq!(conn.request("POST", "/hook", &stale, Some("{}")).status, 401);
    assert!(lines.next().unwrap().unwrap().contains("outside the 300 s tolerance"));
    let _ = receiver.kill();
    let _ = receiver.wait();
}
