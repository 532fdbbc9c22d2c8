//! `POST /api/events/batch` and `POST /api/webhook/config` over real sockets.

mod common;

use common::{db, event_count, Server};

#[test]
fn batch_results_are_per_entry_in_order_and_committed() {
    let server = Server::start(&[]);
    let org = server.generate("batcher", "pro");
    org.post_event(&server, r#"{"type":"t","payload":{},"dedup_id":"seen-before"}"#);
    let body = r#"{"events":[
        {"type":"a","payload":{"exact":1.50,"big":123456789012345678901234567890}},
        {"type":"b"},
        {"type":"c","payload":{},"dedup_id":"twice"},
        {"type":"d","payload":{},"dedup_id":"twice"},
        {"type":"e","payload":{},"dedup_id":"seen-before"},
        "not an object",
        {"type":"f","payload":{},"color":"red"},
        {"type":"g","payload":{"nested":{"ok":true}}}
    ]}"#;
    let response = server.request("POST", "/api/events/batch", &org.headers(), Some(body));
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.header("X-RateLimit-Remaining").is_some());
    let results = response.json()["results"].as_array().unwrap().clone();
    let statuses: Vec<&str> = results.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["accepted", "invalid", "accepted", "duplicate", "duplicate", "invalid", "invalid", "accepted"]
    );
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i);
    }
    assert_eq!(results[3]["event_id"], results[2]["id"], "a duplicate inside the batch names the first");
    assert!(results[4]["event_id"].is_string());
    assert!(results[1]["error"].as_str().unwrap().contains("payload"));
    assert!(results[6]["error"].as_str().unwrap().contains("color"));
    assert_eq!(event_count(&mut db(), &org.id), 4, "3 accepted + 1 earlier");
    let id: uuid::Uuid = results[0]["id"].as_str().unwrap().parse().unwrap();
    let payload: String =
        db().query_one("SELECT payload::text FROM events WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(payload, r#"{"big": 123456789012345678901234567890, "exact": 1.50}"#);
}

#[test]
fn batch_entries_count_against_the_rate_limit_one_by_one() {
    let server = Server::start(&[]);
    let org = server.generate("batch-limited", "free");
    let events: Vec<String> = (0..120).map(|i| format!(r#"{{"type":"t","payload":{{"i":{i}}}}}"#)).collect();
    let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
    let response = server.request("POST", "/api/events/batch", &org.headers(), Some(&body));
    let results = response.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.iter().filter(|r| r["status"] == "accepted").count(), 100);
    assert!(results[100..].iter().all(|r| r["status"] == "rate_limited"));
    assert_eq!(response.header("X-RateLimit-Remaining"), Some("0"));
    assert_eq!(event_count(&mut db(), &org.id), 100);
}

#[test]
fn batch_shape_errors_are_400() {
    let server = Server::start(&[]);
    let org = server.generate("batch-shape", "free");
    let too_many = format!(r#"{{"events":[{}]}}"#, vec![r#"{"type":"t","payload":{}}"#; 1001].join(","));
    for (body, field) in [
        (r#"{"events":{}}"#, "events"),
        (r#"{}"#, "events"),
        (r#"{"events":[],"extra":1}"#, "extra"),
        (too_many.as_str(), "events"),
    ] {
        let response = server.request("POST", "/api/events/batch", &org.headers(), Some(body));
        assert_eq!(response.assert_error(400, "invalid_request")["field"], field);
    }
    server.request("POST", "/api/events/batch", &org.headers(), Some("[")).assert_error(400, "invalid_json");
    let empty = server.request("POST", "/api/events/batch", &org.headers(), Some(r#"{"events":[]}"#));
    assert_eq!(empty.json(), serde_json::json!({"results": []}));
    assert_eq!(event_count(&mut db(), &org.id), 0);
}

#[test]
fn webhook_config_sets_clears_and_shows_on_every_core() {
    let server = Server::start(&[]);
    let org = server.generate("hooked", "pro");
    let other = server.generate("unhooked", "pro");
    let set = |url: &str| {
        server.request(
            "POST",
            "/api/webhook/config",
            &org.headers(),
            Some(&format!(r#"{{"webhook_url":{url}}}"#)),
        )
    };
    let first = set(r#""https://example.com/hooks/a""#);
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    assert_eq!(first["webhook_url"], "https://example.com/hooks/a");
    let secret = first["signing_secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert!(first["updated_at"].as_str().unwrap().ends_with('Z'));
    let second = set(r#""http://example.org:8080/b?x=1""#).json();
    assert_eq!(second["signing_secret"], secret.as_str(), "the secret survives config changes");
    // Every core shows the new URL at once (16 connections spread over both cores).
    for _ in 0..16 {
        let shown = server.request("GET", "/api/keys", &[("X-API-Key", &org.key)], None).json();
        assert_eq!(shown["webhook_url"], "http://example.org:8080/b?x=1");
    }
    assert!(server.request("GET", "/api/keys", &[("X-API-Key", &other.key)], None).json()["webhook_url"]
        .is_null());
    let off = set("null").json();
    assert!(off["webhook_url"].is_null());
    assert_eq!(off["signing_secret"], secret.as_str());
    assert!(
        server.request("GET", "/api/keys", &[("X-API-Key", &org.key)], None).json()["webhook_url"].is_null()
    );

    for body in [
        r#"{}"#,
        r#"{"webhook_url":"ftp://example.com"}"#,
        r#"{"webhook_url":"example.com"}"#,
        r#"{"webhook_url":42}"#,
        r#"{"webhook_url":"https://"}"#,
        r#"{"webhook_url":"https://x.com","secret":"mine"}"#,
    ] {
        let response = server.request("POST", "/api/webhook/config", &org.headers(), Some(body));
        let field = response.assert_error(400, "invalid_request")["field"].as_str().unwrap().to_string();
        assert!(field == "webhook_url" || field == "secret", "{body}: {field}");
    }
    let long = format!(r#"{{"webhook_url":"https://example.com/{}"}}"#, "a".repeat(2040));
    let response = server.request("POST", "/api/webhook/config", &org.headers(), Some(&long));
    assert_eq!(response.assert_error(400, "invalid_request")["field"], "webhook_url");
    server
        .request("POST", "/api/webhook/config", &[("X-API-Key", &org.key)], Some(r#"{"webhook_url":null}"#))
        .assert_error(415, "unsupported_media_type");
    server
        .request(
            "POST",
            "/api/webhook/config",
            &[("Content-Type", "application/json")],
            Some(r#"{"webhook_url":null}"#),
        )
        .assert_error(401, "unauthorized");
}

/// Posts a fuzz seed's bytes (which may hold NUL) as a batch body, byte for byte.
fn post_seed_as_batch(server: &Server, org: &common::Org, seed: &str) -> common::Response {
    let path = format!("{}/fuzz/seeds/event_validation/{seed}", env!("CARGO_MANIFEST_DIR"));
    let body = std::fs::read(path).unwrap();
    let head = format!(
        "POST /api/events/batch HTTP/1.1\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        org.key,
        body.len()
    );
    let mut conn = server.connect();
    conn.send(&[head.as_bytes(), &body].concat());
    conn.read_response()
}

#[test]
fn a_nul_byte_in_a_batch_body_is_a_400_not_a_500() {
    // Regression (found by the event_validation fuzz target, input kept as a seed):
    // simd-json skips junk after a NUL that follows an atom, so the batch's entry spans
    // disagreed with the parser and the request was answered 500.
    let server = Server::start(&[]);
    let org = server.generate("nul-batch", "free");
    post_seed_as_batch(&server, &org, "regression-nul-after-atom").assert_error(400, "invalid_json");
    assert_eq!(event_count(&mut db(), &org.id), 0);
}

#[test]
fn junk_that_simd_json_tolerates_is_never_a_5xx_nor_stored() {
    // Regression (found by fuzzing, input kept as a seed): simd-json accepts junk after
    // a long number; such a body must be refused as bad input (400, or its entries
    // invalid), never answered 5xx, and nothing of it stored.
    let server = Server::start(&[]);
    let org = server.generate("junk-batch", "free");
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/event_validation/regression-junk-after-long-number");
    let body = std::fs::read(path).unwrap();
    let mut conn = server.connect();
    let head = format!(
        "POST /api/events/batch HTTP/1.1\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        org.key,
        body.len()
    );
    conn.send(&[head.as_bytes(), &body].concat());
    let response = conn.read_response();
    assert!(response.status == 200 || response.status == 400, "{} {}", response.status, response.text());
    if response.status == 200 {
        assert!(response.json()["results"].as_array().unwrap().iter().all(|r| r["status"] == "invalid"));
    }
    assert_eq!(event_count(&mut db(), &org.id), 0);
}
