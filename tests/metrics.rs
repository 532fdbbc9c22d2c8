//! `GET /metrics` parsed with a real Prometheus text-format parser after known traffic.

mod common;

use common::Server;
use prometheus_parse::{Scrape, Value};

fn scrape(server: &Server) -> Scrape {
    let response = server.request("GET", "/metrics", &[], None);
    assert_eq!(response.status, 200);
    assert!(response.header("Content-Type").unwrap().starts_with("text/plain; version=0.0.4"));
    let lines = response.text().lines().map(|l| Ok(l.to_string())).collect::<Vec<_>>();
    Scrape::parse(lines.into_iter()).expect("valid exposition format")
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => panic!("unexpected summary"),
    }
}

#[test]
fn metrics_count_what_happened_across_cores() {
    let server = Server::start(&[]);
    let org = server.generate("metered", "free");
    for i in 0..6 {
        let mut conn = server.connect();
        let body = format!(r#"{{"type":"t","payload":{{"i":{i}}},"dedup_id":"d{}"}}"#, i % 5);
        conn.request("POST", "/api/events", &org.headers(), Some(&body));
    }
    org.post_event(&server, r#"{"type":""}"#);
    server.request("GET", "/nowhere", &[], None);
    let metrics = scrape(&server);
    assert_eq!(
        value(&metrics, "triggerd_http_requests_total", &[("route", "events"), ("status", "202")]),
        5.0
    );
    assert_eq!(
        value(&metrics, "triggerd_http_requests_total", &[("route", "events"), ("status", "409")]),
        1.0
    );
    assert_eq!(
        value(&metrics, "triggerd_http_requests_total", &[("route", "events"), ("status", "400")]),
        1.0
    );
    assert_eq!(value(&metrics, "triggerd_http_requests_total", &[("route", "none"), ("status", "404")]), 1.0);
    assert_eq!(value(&metrics, "triggerd_events_accepted_total", &[]), 5.0);
    assert_eq!(value(&metrics, "triggerd_events_duplicate_total", &[]), 1.0);
    assert_eq!(value(&metrics, "triggerd_events_invalid_total", &[]), 1.0);
    assert_eq!(value(&metrics, "triggerd_events_rate_limited_total", &[]), 0.0);
    assert_eq!(value(&metrics, "triggerd_http_request_duration_seconds", &[("route", "events")]), 7.0);
    assert!(value(&metrics, "triggerd_storage_batch_size_events", &[]) >= 1.0);
    assert!(value(&metrics, "triggerd_storage_commit_duration_seconds", &[]) >= 1.0);
    assert_eq!(value(&metrics, "triggerd_storage_events_written_total", &[]), 6.0);
    assert_eq!(value(&metrics, "triggerd_ring_depth_events", &[]), 0.0);
    assert_eq!(value(&metrics, "triggerd_database_up", &[]), 1.0);
    let hits = value(&metrics, "triggerd_auth_cache_hits_total", &[]);
    let misses = value(&metrics, "triggerd_auth_cache_misses_total", &[]);
    assert_eq!(hits + misses, 7.0, "one lookup per authenticated request");
    assert!(misses <= 2.0, "at most one miss per core (the generating core cached the key)");
}
