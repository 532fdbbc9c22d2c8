//! Delivery control (contract v2) over real sockets and PostgreSQL: type filters, secret
//! rotation with both signatures, one event and its attempt log, redelivery, replay with
//! paging, the two-instance lease property of replayed attempts, and the metrics.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::receiver::{eventually, hmac_sha256, Received, Receiver, Reply};
use common::{FreshDatabase, Org, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn flags(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["--webhook-allow-private", "--delivery-poll-ms", "50"];
    args.extend_from_slice(extra);
    args
}

fn configure(server: &Server, org: &Org, body: Value) -> Value {
    let response = server.request("POST", "/api/webhook/config", &org.headers(), Some(&body.to_string()));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn post(server: &Server, org: &Org, event_type: &str) -> String {
    let body = json!({"type": event_type, "payload": {"n": 1}}).to_string();
    let response = org.post_event(server, &body);
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["id"].as_str().unwrap().to_string()
}

fn event(server: &Server, org: &Org, id: &str) -> Value {
    let response = server.request("GET", &format!("/api/events/{id}"), &org.headers(), None);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn attempts(server: &Server, org: &Org, id: &str) -> Vec<Value> {
    let response = server.request("GET", &format!("/api/events/{id}/attempts"), &org.headers(), None);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["attempts"].as_array().unwrap().clone()
}

fn signatures_verified_by(request: &Received, secret: &str) -> usize {
    let key =
        base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let signed = [
        format!("{}.{}.", request.header("webhook-id"), request.header("webhook-timestamp")).as_bytes(),
        &request.body,
    ]
    .concat();
    let expected =
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, &signed)));
    request.header("webhook-signature").split(' ').filter(|s| *s == expected).count()
}

#[test]
fn only_matching_types_are_pushed_and_the_rest_wait_for_pull() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(204));
    let server = Server::start_on(&database.url, &flags(&[]));
    let org = server.generate("filtered", "pro");
    let config = configure(
        &server,
        &org,
        json!({"webhook_url": receiver.url(), "event_types": ["order.*", "invoice.paid"]}),
    );
    assert_eq!(config["event_types"], json!(["order.*", "invoice.paid"]));
    assert_eq!(
        server.request("GET", "/api/keys", &org.headers(), None).json()["event_types"],
        config["event_types"]
    );
    let held: Vec<String> =
        ["order", "invoice.void", "orders.created"].iter().map(|t| post(&server, &org, t)).collect();
    let pushed: Vec<String> = ["order.created", "order.item.added", "invoice.paid"]
        .iter()
        .map(|t| post(&server, &org, t))
        .collect();
    let mut received: Vec<String> =
        (0..3).map(|_| receiver.next(WAIT).header("webhook-id").to_string()).collect();
    received.sort();
    let mut expected = pushed.clone();
    expected.sort();
    assert_eq!(received, expected);
    // Unmatched events were never due (decided when stored): pending, for pull.
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    for id in &held {
        let uuid: uuid::Uuid = id.parse().unwrap();
        let row =
            client.query_one("SELECT next_attempt_at IS NULL FROM events WHERE id = $1", &[&uuid]).unwrap();
        assert!(row.get::<_, bool>(0), "{id} was scheduled");
        assert_eq!(event(&server, &org, id)["status"], "pending");
    }
    // A config call without event_types pushes every type again.
    let config = configure(&server, &org, json!({"webhook_url": receiver.url()}));
    assert_eq!(config["event_types"], Value::Null);
    let any = post(&server, &org, "anything");
    assert_eq!(receiver.next(WAIT).header("webhook-id"), any);
}

#[test]
fn bad_event_type_filters_are_refused_naming_the_field() {
    let server = Server::start(&[]);
    let org = server.generate("patterns", "pro");
    let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    for bad in [
        json!([]),
        json!([""]),
        json!(["*"]),
        json!(["a.*.b"]),
        json!(["order*"]),
        json!("order.*"),
        json!([1]),
        json!(many),
        json!(["x".repeat(256)]),
    ] {
        let body = json!({"webhook_url": null, "event_types": bad}).to_string();
        let response = server.request("POST", "/api/webhook/config", &org.headers(), Some(&body));
        assert_eq!(response.assert_error(400, "invalid_request")["field"], "event_types", "{bad}");
    }
}

#[test]
fn a_rotated_secret_signs_beside_the_new_one_for_24_hours() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(200));
    let server = Server::start_on(&database.url, &flags(&[]));
    let org = server.generate("rotating", "pro");
    let old = configure(&server, &org, json!({"webhook_url": receiver.url()}))["signing_secret"]
        .as_str()
        .unwrap()
        .to_string();
    let rotated = server.request("POST", "/api/webhook/secret/rotate", &org.headers(), None);
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let rotated = rotated.json();
    let new = rotated["signing_secret"].as_str().unwrap().to_string();
    assert!(new.starts_with("whsec_") && new != old);
    let expires = rotated["previous_secret_expires_at"].as_str().unwrap();
    let in_a_day = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 86_400;
    let expires_secs = chrono_free_secs(expires);
    assert!(expires_secs.abs_diff(in_a_day) < 60, "{expires}");
    assert_eq!(
        server.request("GET", "/api/webhook/config", &org.headers(), None).json()["signing_secret"],
        new.as_str()
    );

    post(&server, &org, "t");
    let request = receiver.next(WAIT);
    assert_eq!(
        request.header("webhook-signature").split(' ').count(),
        2,
        "{}",
        request.header("webhook-signature")
    );
    assert_eq!(signatures_verified_by(&request, &new), 1, "the new secret verifies");
    assert_eq!(signatures_verified_by(&request, &old), 1, "and the old one, for now");

    // 24 hours later (moved in the database): only the new secret signs.
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    client
        .execute("UPDATE organizations SET previous_secret_expires_at = now() - interval '1 second'", &[])
        .unwrap();
    post(&server, &org, "t");
    let request = receiver.next(WAIT);
    assert_eq!(request.header("webhook-signature").split(' ').count(), 1);
    assert_eq!(signatures_verified_by(&request, &new), 1);
    assert_eq!(signatures_verified_by(&request, &old), 0);
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS…Z` (enough for the server's format).
fn chrono_free_secs(text: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + d - 719_469;
    (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64
}

#[test]
fn one_event_and_its_attempt_log() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|n| if n < 2 { Reply::Status(500) } else { Reply::Status(200) });
    let server = Server::start_on(&database.url, &flags(&["--retry-schedule", "10ms,10ms,10ms"]));
    let org = server.generate("logged", "pro");
    let other = server.generate("other", "pro");
    configure(&server, &org, json!({"webhook_url": receiver.url()}));
    let id = post(&server, &org, "order.created");
    for _ in 0..3 {
        receiver.next(WAIT);
    }
    eventually(WAIT, "delivered", || event(&server, &org, &id)["status"] == "delivered");
    let shown = event(&server, &org, &id);
    assert_eq!(
        (shown["id"].as_str(), shown["type"].as_str(), shown["attempts"].as_u64()),
        (Some(id.as_str()), Some("order.created"), Some(3))
    );
    let log = attempts(&server, &org, &id);
    let summary: Vec<(u64, Value, Value)> = log
        .iter()
        .map(|a| (a["attempt"].as_u64().unwrap(), a["status_code"].clone(), a["error"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, json!(500), json!("HTTP 500")),
            (2, json!(500), json!("HTTP 500")),
            (3, json!(200), Value::Null)
        ]
    );
    assert!(log.iter().all(|a| a["attempted_at"].is_string() && a["duration_ms"].is_u64()));
    // Another organisation's event, an unknown one and a malformed id.
    for path in [format!("/api/events/{id}"), format!("/api/events/{id}/attempts")] {
        server.request("GET", &path, &other.headers(), None).assert_error(404, "not_found");
    }
    let unknown = uuid::Uuid::now_v7();
    server
        .request("GET", &format!("/api/events/{unknown}"), &org.headers(), None)
        .assert_error(404, "not_found");
    let response = server.request("GET", "/api/events/nope/attempts", &org.headers(), None);
    assert_eq!(response.assert_error(400, "invalid_request")["field"], "id");
    // An event never attempted has an empty log.
    configure(&server, &org, json!({"webhook_url": null}));
    let quiet = post(&server, &org, "t");
    assert_eq!(attempts(&server, &org, &quiet), Vec::<Value>::new());

    let metrics = server.request("GET", "/metrics", &[], None).text();
    for line in [
        "triggerd_delivery_attempts_total{class=\"5xx\"} 2",
        "triggerd_delivery_attempts_total{class=\"2xx\"} 1",
        "triggerd_delivery_latency_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("triggerd_delivery_backlog_organizations{le=\"+Inf\"}"), "{metrics}");
}

#[test]
fn an_attempt_without_an_answer_logs_no_status_and_the_error() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &flags(&["--retry-schedule", "1h"]));
    let org = server.generate("unanswered", "pro");
    // A port nobody listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    configure(&server, &org, json!({"webhook_url": format!("http://{closed}/hook")}));
    let id = post(&server, &org, "t");
    eventually(WAIT, "one attempt logged", || !attempts(&server, &org, &id).is_empty());
    let log = attempts(&server, &org, &id);
    assert_eq!(log[0]["status_code"], Value::Null);
    assert!(log[0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{log:?}");
}

#[test]
fn the_attempt_log_keeps_the_last_50() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(200));
    let server = Server::start_on(&database.url, &flags(&[]));
    let org = server.generate("busy", "pro");
    configure(&server, &org, json!({"webhook_url": receiver.url()}));
    let id = post(&server, &org, "t");
    receiver.next(WAIT);
    for n in 2..=53 {
        eventually(WAIT, "the previous attempt recorded", || event(&server, &org, &id)["attempts"] == n - 1);
        let response = server.request("POST", &format!("/api/events/{id}/redeliver"), &org.headers(), None);
        assert_eq!(response.status, 202, "{}", response.text());
        receiver.next(WAIT);
    }
    eventually(WAIT, "53 attempts", || event(&server, &org, &id)["attempts"] == 53);
    let numbers: Vec<u64> =
        attempts(&server, &org, &id).iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (4..=53).collect::<Vec<u64>>());
}

#[test]
fn redelivery_pushes_again_whatever_the_status() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(200));
    let server = Server::start_on(&database.url, &flags(&[]));
    let org = server.generate("again", "pro");
    let other = server.generate("other", "pro");
    // No webhook: nothing to push to.
    let quiet = post(&server, &org, "t");
    server
        .request("POST", &format!("/api/events/{quiet}/redeliver"), &org.headers(), None)
        .assert_error(409, "webhook_not_configured");
    configure(&server, &org, json!({"webhook_url": receiver.url()}));
    let id = post(&server, &org, "t");
    receiver.next(WAIT);
    eventually(WAIT, "delivered", || event(&server, &org, &id)["status"] == "delivered");
    let response = server.request("POST", &format!("/api/events/{id}/redeliver"), &org.headers(), None);
    assert_eq!(response.status, 202);
    assert_eq!(response.json(), json!({"id": id, "status": "scheduled"}));
    assert_eq!(receiver.next(WAIT).header("webhook-id"), id);
    eventually(WAIT, "delivered again", || {
        let shown = event(&server, &org, &id);
        shown["status"] == "delivered" && shown["attempts"] == 2
    });
    // The event stored before push was on is pushed too when asked for.
    assert_eq!(
        server.request("POST", &format!("/api/events/{quiet}/redeliver"), &org.headers(), None).status,
        202
    );
    assert_eq!(receiver.next(WAIT).header("webhook-id"), quiet);
    server
        .request("POST", &format!("/api/events/{id}/redeliver"), &other.headers(), None)
        .assert_error(404, "not_found");
    let response = server.request("POST", "/api/events/x/redeliver", &org.headers(), None);
    assert_eq!(response.assert_error(400, "invalid_request")["field"], "id");
}

/// Inserts `n` failed events of `org` created one millisecond apart, from `start` (µs).
fn insert_failed(database: &FreshDatabase, org: &Org, n: i64, start_us: i64) {
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    client
        .execute(
            "INSERT INTO events (org_id, id, type, payload, status, attempts, created_at)
             SELECT $1, (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
                        || substr(md5(n::text), 1, 3) || '8' || substr(md5(n::text), 4, 15))::uuid,
                    'replayed', '{}', 'failed', 8, ts
             FROM (SELECT n, timestamptz 'epoch' + ($2::int8 + n * 1000) * interval '1 microsecond' AS ts
                   FROM generate_series(0, $3::int8 - 1) AS n) s",
            &[&org_id, &start_us, &n],
        )
        .unwrap();
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// The start of a history that began `ago_us` before now, but not before today (UTC):
/// a fresh database has partitions from today on.
fn history_start(ago_us: i64) -> i64 {
    let now = now_us();
    (now - ago_us).max(now - now.rem_euclid(86_400_000_000))
}

#[test]
fn replay_schedules_failed_events_in_pages_of_10000() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &flags(&["--retry-schedule", "1h"]));
    let org = server.generate("replaying", "pro");
    let replay =
        |body: Value| server.request("POST", "/api/webhook/replay", &org.headers(), Some(&body.to_string()));
    replay(json!({"since": "2026-01-01T00:00:00Z"})).assert_error(409, "webhook_not_configured");
    // A receiver that refuses connections: each replayed attempt fails at once and is
    // scheduled an hour later, so the test only counts what replay scheduled.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    configure(&server, &org, json!({"webhook_url": format!("http://{closed}/hook")}));
    let start = history_start(3_600_000_000);
    insert_failed(&database, &org, 10_005, start);
    let since = |us: i64| {
        let secs = us.div_euclid(1_000_000);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            us.rem_euclid(1_000_000)
        )
    };
    let first = replay(json!({"since": since(start)}));
    assert_eq!(first.status, 202, "{}", first.text());
    let first = first.json();
    assert_eq!(first["scheduled"], 10_000);
    let next = first["next_since"].as_str().unwrap().to_string();
    assert_eq!(next, since(start + 10_000 * 1000), "the first event not scheduled");
    let second = replay(json!({"since": next, "status": "failed"})).json();
    assert_eq!(second, json!({"scheduled": 5, "next_since": null}));
    // Nothing failed is left after that point; "all" takes the rest too.
    let later = since(start + 10_004 * 1000);
    assert_eq!(replay(json!({"since": later})).json()["scheduled"], 0);
    assert_eq!(replay(json!({"since": later, "status": "all"})).json()["scheduled"], 1);
    for (body, field) in [
        (json!({}), "since"),
        (json!({"since": "yesterday"}), "since"),
        (json!({"since": "2026-01-01T00:00:00Z", "status": "pending"}), "status"),
    ] {
        assert_eq!(replay(body.clone()).assert_error(400, "invalid_request")["field"], field, "{body}");
    }
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[test]
fn two_instances_push_each_replayed_event_once() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(200));
    let servers =
        [Server::start_on(&database.url, &flags(&[])), Server::start_on(&database.url, &flags(&[]))];
    let org = servers[0].generate("shared", "enterprise");
    configure(&servers[0], &org, json!({"webhook_url": receiver.url()}));
    let start = history_start(60_000_000);
    insert_failed(&database, &org, 300, start);
    let response = servers[1].request(
        "POST",
        "/api/webhook/replay",
        &org.headers(),
        Some(&json!({"since": "2000-01-01T00:00:00Z"}).to_string()),
    );
    assert_eq!(response.json()["scheduled"], 300, "{}", response.text());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *seen.entry(receiver.next(WAIT).header("webhook-id").to_string()).or_default() += 1;
    }
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    eventually(WAIT, "every replayed event delivered", || {
        client
            .query_one("SELECT count(*) FROM events WHERE status <> 'delivered'", &[])
            .unwrap()
            .get::<_, i64>(0)
            == 0
    });
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|n| *n == 1), "an event pushed twice");
    assert_eq!(
        receiver.count.load(std::sync::atomic::Ordering::SeqCst),
        300,
        "no attempt beyond one per event"
    );
}

#[test]
fn redelivery_during_an_attempt_in_flight_pushes_again() {
    let database = FreshDatabase::new();
    // The first request is never answered; later ones are.
    let receiver = Receiver::start(|n| if n == 0 { Reply::Hang } else { Reply::Status(200) });
    let server = Server::start_on(
        &database.url,
        &flags(&["--webhook-timeout-ms", "30000", "--delivery-lease-ms", "60000"]),
    );
    let org = server.generate("inflight", "pro");
    configure(&server, &org, json!({"webhook_url": receiver.url()}));
    let id = post(&server, &org, "t");
    receiver.next(WAIT);
    // The hanging attempt holds its lease; the redelivery asked for a push after it.
    assert_eq!(
        server.request("POST", &format!("/api/events/{id}/redeliver"), &org.headers(), None).status,
        202
    );
    assert_eq!(
        receiver.next(WAIT).header("webhook-id"),
        id,
        "pushed again without waiting for the first attempt"
    );
    eventually(WAIT, "delivered by the new attempt", || event(&server, &org, &id)["status"] == "delivered");
}
