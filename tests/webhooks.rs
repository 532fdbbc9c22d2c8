//! Webhook push with real local receivers over real sockets: signatures checked by an
//! independent HMAC, retries on the schedule, Retry-After, 410, timeouts, restarts,
//! two processes on one database, private destinations, and leases with an injected clock.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::receiver::{eventually, hmac_sha256, Receiver, Reply};
use common::{FreshDatabase, Org, Server};

const WAIT: Duration = Duration::from_secs(20);

fn configure(server: &Server, org: &Org, url: &str) -> String {
    let body = format!(r#"{{"webhook_url":"{url}"}}"#);
    let response = server.request("POST", "/api/webhook/config", &org.headers(), Some(&body));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["signing_secret"].as_str().unwrap().to_string()
}

fn post(server: &Server, org: &Org, body: &str) -> String {
    let response = org.post_event(server, body);
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["id"].as_str().unwrap().to_string()
}

fn connect(database: &FreshDatabase) -> postgres::Client {
    postgres::Client::connect(&database.url, postgres::NoTls).unwrap()
}

/// (status, attempts, retry scheduled, last error) of an event, from the database.
fn state(database: &FreshDatabase, id: &str) -> (String, i32, bool, Option<String>) {
    let id: uuid::Uuid = id.parse().unwrap();
    let row = connect(database)
        .query_one(
            "SELECT status, attempts, next_attempt_at IS NOT NULL, last_error FROM events WHERE id = $1",
            &[&id],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

fn allow_private(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["--webhook-allow-private", "--delivery-poll-ms", "50"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn delivers_signed_events_once_committed() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(204));
    let server = Server::start_on(&database.url, &allow_private(&[]));
    let org = server.generate("pushed", "pro");
    let secret = configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"order.paid","payload":{"total":12.50,"items":[1,2]}}"#);

    let request = receiver.next(WAIT);
    let body = request.json();
    assert_eq!(body["event_id"], id.as_str());
    assert_eq!(body["type"], "order.paid");
    assert_eq!(body["payload"], serde_json::json!({"total": 12.50, "items": [1, 2]}));
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("x-event-id"), id);
    assert_eq!(request.header("x-event-type"), "order.paid");
    assert_eq!(request.header("webhook-id"), id);
    let timestamp: i64 = request.header("webhook-timestamp").parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - timestamp).abs() <= 5);
    // Standard Webhooks: HMAC-SHA256 keyed with the decoded secret over "id.timestamp.body".
    let key =
        base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let signed = [format!("{id}.{timestamp}.").as_bytes(), &request.body].concat();
    let expected = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, &signed));
    assert_eq!(request.header("webhook-signature"), format!("v1,{expected}"));

    eventually(WAIT, "the event is recorded delivered", || state(&database, &id).0 == "delivered");
    let (_, attempts, retry, error) = state(&database, &id);
    assert_eq!((attempts, retry, error), (1, false, None));
    let inbox = server.request("GET", "/api/inbox?status=delivered", &[("X-API-Key", &org.key)], None).json();
    assert_eq!(inbox["events"][0]["attempts"], 1);
    assert!(inbox["events"][0]["delivered_at"].is_string());
    let metrics = server.request("GET", "/metrics", &[], None).text();
    assert!(metrics.contains("triggerd_deliveries_total{outcome=\"delivered\"} 1\n"), "{metrics}");
}

/// An organisation with more events than its cap of attempts in flight is drained by
/// its own completions: the poll interval here is an hour, so after the first claim
/// only the claims that completions bring can deliver the rest.
#[test]
fn a_backlog_beyond_the_per_organisation_cap_drains_without_waiting_for_the_poller() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(204));
    let args = ["--webhook-allow-private", "--delivery-poll-ms", "3600000", "--deliveries-per-org-max", "2"];
    let server = Server::start_on(&database.url, &args);
    let org = server.generate("backlogged", "pro");
    configure(&server, &org, &receiver.url());
    let events: Vec<String> = (0..20).map(|n| format!(r#"{{"type":"t","payload":{{"n":{n}}}}}"#)).collect();
    let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
    let response = server.request("POST", "/api/events/batch", &org.headers(), Some(&body));
    assert_eq!(response.status, 200, "{}", response.text());
    let ids: Vec<String> = response.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 20);

    let mut received: Vec<String> =
        (0..20).map(|_| receiver.next(WAIT).header("webhook-id").to_string()).collect();
    received.sort();
    received.dedup();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(received, expected, "each event pushed once");
    eventually(WAIT, "every event is recorded delivered", || {
        ids.iter().all(|id| state(&database, id) == ("delivered".to_string(), 1, false, None))
    });
}

#[test]
fn fails_twice_then_succeeds_with_growing_gaps() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|n| if n < 2 { Reply::Status(500) } else { Reply::Status(200) });
    let server = Server::start_on(&database.url, &allow_private(&["--retry-schedule", "200ms,600ms,5s"]));
    let org = server.generate("flaky", "pro");
    configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    let attempts: Vec<_> = (0..3).map(|_| receiver.next(WAIT)).collect();
    assert!(attempts.iter().all(|a| a.header("webhook-id") == id), "one event, retried");
    let first_gap = attempts[1].at - attempts[0].at;
    let second_gap = attempts[2].at - attempts[1].at;
    // Each gap is at least its step of the schedule (less a little for clock grain).
    // Not "second > first": on a loaded machine the first retry can come late, and
    // lateness is not what this checks.
    assert!(first_gap >= Duration::from_millis(180), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(540), "{second_gap:?}");
    eventually(WAIT, "delivered on the third attempt", || state(&database, &id).0 == "delivered");
    assert_eq!(state(&database, &id).1, 3);
}

#[test]
fn a_permanently_failing_receiver_ends_failed_with_the_last_error() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(503));
    let server = Server::start_on(&database.url, &allow_private(&["--retry-schedule", "100ms,200ms,400ms"]));
    let org = server.generate("doomed", "pro");
    configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    let attempts: Vec<_> = (0..4).map(|_| receiver.next(WAIT)).collect();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Each gap at least its step of the schedule (less a little for clock grain); not
    // "each longer than the last", which a loaded machine's late first retry breaks.
    let floors = [90, 180, 360].map(Duration::from_millis);
    assert!(
        gaps.iter().zip(floors).all(|(gap, floor)| *gap >= floor),
        "gaps at least the schedule's: {gaps:?}"
    );
    eventually(WAIT, "the event is failed", || state(&database, &id).0 == "failed");
    let (_, attempts_made, retry, error) = state(&database, &id);
    assert_eq!((attempts_made, retry), (4, false));
    assert_eq!(error.as_deref(), Some("HTTP 503"));
    let inbox = server.request("GET", "/api/inbox", &[("X-API-Key", &org.key)], None).json();
    let event = &inbox["events"][0];
    assert_eq!((event["status"].as_str(), event["attempts"].as_i64()), (Some("failed"), Some(4)));
    assert_eq!(event["last_error"], "HTTP 503");
}

#[test]
fn retry_after_on_429_is_honoured() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|n| {
        if n == 0 {
            Reply::StatusWith(429, "Retry-After: 1\r\n")
        } else {
            Reply::Status(200)
        }
    });
    let server = Server::start_on(&database.url, &allow_private(&["--retry-schedule", "30s"]));
    let org = server.generate("throttled", "pro");
    configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    let first = receiver.next(WAIT);
    let second = receiver.next(WAIT);
    let gap = second.at - first.at;
    assert!(
        gap >= Duration::from_secs(1) && gap < Duration::from_secs(10),
        "Retry-After 1 s, not 30 s, and jitter never earlier: {gap:?}"
    );
    eventually(WAIT, "delivered", || state(&database, &id).0 == "delivered");
}

#[test]
fn retry_after_as_an_http_date_is_honoured() {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    let database = FreshDatabase::new();
    // The instant the receiver asked for, on the test's monotonic clock.
    let asked_for: Arc<Mutex<Option<Instant>>> = Arc::default();
    let asked = Arc::clone(&asked_for);
    let receiver = Receiver::start(move |n| {
        if n > 0 {
            return Reply::Status(200);
        }
        let (now, now_instant) = (SystemTime::now(), Instant::now());
        let date_unix_secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 3;
        let date = UNIX_EPOCH + Duration::from_secs(date_unix_secs);
        *asked.lock().unwrap() = Some(now_instant + date.duration_since(now).unwrap());
        let header = triggerd::util::time::http_date(date_unix_secs as i64);
        let header = format!("Retry-After: {}\r\n", String::from_utf8_lossy(&header));
        Reply::StatusWith(503, Box::leak(header.into_boxed_str()))
    });
    let server = Server::start_on(&database.url, &allow_private(&["--retry-schedule", "30s"]));
    let org = server.generate("throttled-until", "pro");
    configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    let first = receiver.next(WAIT);
    let second = receiver.next(WAIT);
    let asked_for = asked_for.lock().unwrap().expect("the first reply set it");
    assert!(second.at >= asked_for, "{:?} before the date asked for", asked_for - second.at);
    assert!(second.at - first.at < Duration::from_secs(10), "the date, not the 30 s step");
    eventually(WAIT, "delivered", || state(&database, &id).0 == "delivered");
}

#[test]
fn gone_switches_push_off_and_the_event_stays_pending() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(410));
    let server = Server::start_on(&database.url, &allow_private(&["--retry-schedule", "100ms"]));
    let org = server.generate("gone", "pro");
    configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    receiver.next(WAIT);
    eventually(WAIT, "the 410 is recorded", || state(&database, &id).1 == 1);
    let (status, attempts, retry, error) = state(&database, &id);
    assert_eq!((status.as_str(), attempts, retry), ("pending", 1, false), "not retried; left for pull");
    assert!(error.unwrap().contains("410"));
    let shown = server.request("GET", "/api/keys", &[("X-API-Key", &org.key)], None).json();
    assert!(shown["webhook_url"].is_null(), "push is off");
    let later = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    assert_eq!(
        state(&database, &later),
        ("pending".to_string(), 0, false, None),
        "later events are not pushed"
    );
}

#[test]
fn a_receiver_that_never_answers_times_out() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Hang);
    let server = Server::start_on(
        &database.url,
        &allow_private(&[
            "--retry-schedule",
            "100ms",
            "--webhook-timeout-ms",
            "300",
            "--delivery-lease-ms",
            "2000",
        ]),
    );
    let org = server.generate("silent", "pro");
    configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    receiver.next(WAIT);
    receiver.next(WAIT);
    eventually(WAIT, "failed after two timeouts", || state(&database, &id).0 == "failed");
    let (_, attempts, _, error) = state(&database, &id);
    assert_eq!(attempts, 2);
    assert!(error.unwrap().contains("timed out"));
}

#[test]
fn private_destinations_are_refused_by_default() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(200));
    let server = Server::start_on(&database.url, &["--retry-schedule", "100ms", "--delivery-poll-ms", "50"]);
    let org = server.generate("ssrf", "pro");
    configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    eventually(WAIT, "both attempts refused", || state(&database, &id).0 == "failed");
    let (_, attempts, _, error) = state(&database, &id);
    assert_eq!(attempts, 2);
    assert!(error.unwrap().starts_with("refused"), "checked against the resolved address");
    assert_eq!(
        receiver.count.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the loopback receiver"
    );
}

#[test]
fn a_restart_in_the_middle_of_the_schedule_loses_nothing() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|n| if n == 0 { Reply::Status(500) } else { Reply::Status(200) });
    let server = Server::start_on(&database.url, &allow_private(&["--retry-schedule", "1500ms"]));
    let org = server.generate("restarted", "pro");
    configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    receiver.next(WAIT);
    eventually(WAIT, "the retry is scheduled", || state(&database, &id).2 && state(&database, &id).1 == 1);
    server.kill();
    let restarted = Server::start_on(&database.url, &allow_private(&[]));
    let retry = receiver.next(WAIT);
    assert_eq!(retry.header("webhook-id"), id);
    eventually(WAIT, "delivered by the new process", || state(&database, &id).0 == "delivered");
    assert_eq!(state(&database, &id).1, 2);
    drop(restarted);
}

#[test]
fn two_processes_on_one_database_deliver_each_event_once() {
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(200));
    let first = Server::start_on(&database.url, &allow_private(&[]));
    let second = Server::start_on(&database.url, &allow_private(&[]));
    let org = first.generate("shared", "enterprise");
    configure(&first, &org, &receiver.url());
    let mut ids = Vec::new();
    for i in 0..60 {
        let server = if i % 2 == 0 { &first } else { &second };
        ids.push(post(server, &org, &format!(r#"{{"type":"t","payload":{{"i":{i}}}}}"#)));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    while seen.len() < ids.len() {
        *seen.entry(receiver.next(WAIT).header("webhook-id").to_string()).or_default() += 1;
    }
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    eventually(WAIT, "all recorded delivered", || {
        let delivered: i64 = connect(&database)
            .query_one("SELECT count(*) FROM events WHERE org_id = $1 AND status = 'delivered'", &[&org_id])
            .unwrap()
            .get(0);
        delivered == ids.len() as i64
    });
    assert_eq!(receiver.count.load(std::sync::atomic::Ordering::SeqCst), ids.len(), "each attempt made once");
    assert!(seen.values().all(|&n| n == 1));
}

#[test]
fn leases_with_an_injected_clock() {
    use triggerd::delivery::store::{self, DeliveryStatements, Record};
    use triggerd::storage::pg::PrepareStatements;
    // A database of its own: claiming with a clock in the far future would otherwise
    // lease the due events of tests running beside this one.
    let database = FreshDatabase::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        triggerd::storage::migrations::migrate(&mut client).await.unwrap();
        let (org_id, event_id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        const T0: i64 = 1_800_000_000_000_000;
        client
            .batch_execute(&format!(
                "INSERT INTO organizations (org_id, name, tier, rate_limit_per_minute, webhook_url, signing_secret)
                 VALUES ('{org_id}', 'leased', 'pro', 1000, 'http://127.0.0.1:9/', 'whsec_x');
                 INSERT INTO events (org_id, id, type, payload, created_at, next_attempt_at)
                 VALUES ('{org_id}', '{event_id}', 't', '{{}}', now(),
                         timestamptz 'epoch' + {T0} * interval '1 microsecond');"
            ))
            .await
            .unwrap();
        let statements = DeliveryStatements::prepare(&client).await.unwrap();
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let lease_ms = 60_000;
        let attempt = store::AttemptLog { attempted_at_micros: T0, status_code: Some(500), error: Some("HTTP 500".into()), duration_ms: 3 };
        let claim = |owner, now, excluded: Vec<uuid::Uuid>| {
            let (client, statements) = (&client, &statements);
            async move { store::claim_due(client, statements, owner, now, lease_ms, 10, 8, &excluded).await.unwrap().len() }
        };
        // The outcome of the attempt claimed at `claimed_at` (its lease's expiry follows).
        let outcome = |claimed_at: i64, record: Record| store::Outcome {
            org_id,
            id: event_id,
            lease_until_micros: claimed_at + lease_ms * 1000,
            record,
            log: attempt.clone(),
        };
        assert_eq!(claim(a, T0 - 1, vec![]).await, 0, "not due yet");
        assert_eq!(claim(a, T0, vec![]).await, 1, "due at T0");
        assert_eq!(claim(b, T0 + 30_000_000, vec![]).await, 0, "leased to A");
        assert_eq!(claim(b, T0 + 61_000_000, vec![org_id]).await, 0, "a saturated organisation is skipped");
        assert_eq!(claim(b, T0 + 61_000_000, vec![]).await, 1, "A's lease expired: B takes the attempt over");
        let stale = outcome(T0, Record::Delivered);
        let stale = store::record(&client, &statements, a, T0 + 62_000_000, &stale).await.unwrap();
        assert!(!stale, "A no longer holds the lease and cannot record");
        let retry = Record::Retry { delay_ms: 5_000, error: "HTTP 500".into() };
        let retried = outcome(T0 + 61_000_000, retry);
        assert!(store::record(&client, &statements, b, T0 + 62_000_000, &retried).await.unwrap());
        assert_eq!(claim(a, T0 + 66_999_999, vec![]).await, 0, "the retry is due 5 s after the failure");
        assert_eq!(claim(a, T0 + 67_000_000, vec![]).await, 1);
        let failed = Record::Failed { error: "HTTP 500".into() };
        let failed = outcome(T0 + 67_000_000, failed);
        assert!(store::record(&client, &statements, a, T0 + 68_000_000, &failed).await.unwrap());
        assert_eq!(claim(b, T0 + 999_000_000, vec![]).await, 0, "a failed event is never due again");
        // Each recorded outcome wrote its attempt's row in the same statement; the stale
        // owner's wrote nothing.
        let logged: Vec<i32> = client
            .query("SELECT attempt FROM delivery_attempts WHERE event_id = $1 ORDER BY attempt", &[&event_id])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(logged, [1, 2]);
        drop(client);
        let _ = driver.await;
    });
}

#[test]
fn an_outcome_is_recorded_only_for_its_own_attempt_across_a_redelivery() {
    // Regression: outcomes were matched by owner alone. When the same process claimed a
    // redelivered event while its earlier attempt still ran, that attempt's outcome was
    // recorded under the new lease and cleared it, and the redelivery's own outcome was
    // refused and lost.
    use triggerd::delivery::store::{self, DeliveryStatements, Outcome, Record};
    use triggerd::storage::pg::PrepareStatements;
    let database = FreshDatabase::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let connect = || async {
            let (client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            client
        };
        let mut client = connect().await;
        triggerd::storage::migrations::migrate(&mut client).await.unwrap();
        let (org_id, event_id, owner) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        client
            .batch_execute(&format!(
                "INSERT INTO organizations (org_id, name, tier, rate_limit_per_minute, webhook_url, signing_secret)
                 VALUES ('{org_id}', 'redelivered', 'pro', 1000, 'http://127.0.0.1:9/', 'whsec_x');
                 INSERT INTO events (org_id, id, type, payload, created_at, next_attempt_at)
                 VALUES ('{org_id}', '{event_id}', 't', '{{}}', now(), now());"
            ))
            .await
            .unwrap();
        let statements = DeliveryStatements::prepare(&client).await.unwrap();
        let now = || triggerd::util::time::unix_micros(std::time::SystemTime::now());
        let claim = || async {
            let mut claimed = store::claim_due(&client, &statements, owner, now(), 60_000, 10, 8, &[]).await.unwrap();
            assert_eq!(claimed.len(), 1);
            claimed.remove(0)
        };
        let delivered = |lease_until_micros: i64| Outcome {
            org_id,
            id: event_id,
            lease_until_micros,
            record: Record::Delivered,
            log: store::AttemptLog { attempted_at_micros: now(), status_code: Some(204), error: None, duration_ms: 1 },
        };
        let first = claim().await;
        let first_lease = first.lease_until_micros;
        // A redelivery (`storage::control`'s own SET: the event due again, the attempt in
        // flight unleased) holds the event's row lock while the first attempt's
        // outcome is written: the outcome waits for it, then finds the lease gone.
        let operator = connect().await;
        let operator_pid: i32 = operator.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        operator
            .batch_execute(&format!(
                "BEGIN;
                 UPDATE events e SET {}
                 WHERE e.org_id = '{org_id}' AND e.id = '{event_id}';",
                triggerd::storage::control::RESCHEDULE
            ))
            .await
            .unwrap();
        let outcome = delivered(first_lease);
        let recorded = store::record(&client, &statements, owner, now(), &outcome);
        let observer = connect().await;
        let commit_once_waiting = async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let waiting: i64 = observer
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pg_blocking_pids(pid) @> ARRAY[$1::int4]",
                        &[&operator_pid],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if waiting > 0 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the outcome never waited for the redelivery");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            operator.batch_execute("COMMIT").await.unwrap();
        };
        let (recorded, ()) = tokio::join!(recorded, commit_once_waiting);
        assert!(!recorded.unwrap(), "the outcome of the attempt before the redelivery is not recorded");
        let row = client
            .query_one("SELECT status, next_attempt_at IS NOT NULL FROM events WHERE id = $1", &[&event_id])
            .await
            .unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, bool>(1)), ("pending".to_string(), true), "still due");
        // The same process claims the redelivery while it still runs the first attempt:
        // the first attempt's outcome does not take the new lease; the new one's does.
        let second = claim().await.lease_until_micros;
        assert_ne!(first_lease, second);
        let late = store::record(&client, &statements, owner, now(), &delivered(first_lease)).await.unwrap();
        assert!(!late, "an outcome is only for the attempt it was claimed as");
        // Nor does giving the earlier attempt back free the new one's lease.
        store::release(&client, &statements, owner, &first).await.unwrap();
        let held = client.query_one("SELECT lease_owner FROM events WHERE id = $1", &[&event_id]).await.unwrap();
        assert_eq!(held.get::<_, Option<uuid::Uuid>>(0), Some(owner), "the redelivery's lease is still held");
        // The engine's batch may hold both outcomes: only the redelivery's is recorded,
        // and the batch says which.
        let both = [delivered(first_lease), delivered(second)];
        let recorded = store::record_batch(&client, &statements, owner, now(), &both).await.unwrap();
        assert_eq!(recorded, [both[1].attempt()]);
        let row = client.query_one("SELECT status, attempts FROM events WHERE id = $1", &[&event_id]).await.unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("delivered".to_string(), 1));
    });
}

#[test]
fn a_failed_attempt_logs_one_line_naming_organisation_event_and_status() {
    // Regression: webhook failures were invisible in the logs at every level.
    let database = FreshDatabase::new();
    let receiver = Receiver::start(|_| Reply::Status(500));
    let (server, log) = Server::start_logging(
        &database.url,
        &["--webhook-allow-private", "--delivery-poll-ms", "50", "--retry-schedule", "1h"],
    );
    let org = server.generate("logged", "pro");
    configure(&server, &org, &receiver.url());
    let id = post(&server, &org, r#"{"type":"t","payload":{}}"#);
    receiver.next(WAIT);
    let line = loop {
        let line = log.recv_timeout(WAIT).expect("a log line about the attempt");
        if line.contains("webhook attempt failed") {
            break line;
        }
    };
    assert!(line.contains(&org.id) && line.contains(&id) && line.contains("HTTP 500"), "{line}");
    assert!(line.contains("attempt=1") && line.contains("retry_in_ms="), "{line}");
}

/// A claim reads the head of an organisation's backlog, not all of it, even when the
/// statistics were taken while nothing was due (`next_attempt_at` all NULL), as they
/// are after any ANALYZE of a table whose events are mostly pulled or delivered: a
/// planner left alone then believes an organisation has one due row and reads and
/// sorts the whole backlog at every claim (issue 16: 36 ms per claim, 895
/// deliveries/s).
#[test]
fn a_claim_reads_only_the_head_of_a_backlog() {
    use triggerd::delivery::store;
    let database = FreshDatabase::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        triggerd::storage::migrations::migrate(&mut client).await.unwrap();
        let (org_id, pulled_org_id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let insert = |org: uuid::Uuid, count: u32, scheduled: bool| {
            format!(
                "INSERT INTO events (org_id, id, type, payload, created_at, next_attempt_at)
                 SELECT '{org}', (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
                                  || substr(md5('{org}' || n), 1, 3) || '8' || substr(md5('{org}' || n), 4, 15))::uuid,
                        't', '{{}}', ts, CASE WHEN {scheduled} THEN ts END
                 FROM (SELECT n, now() + n * interval '1 microsecond' AS ts
                       FROM generate_series(1, {count}) AS n) s;"
            )
        };
        client
            .batch_execute(&format!(
                "INSERT INTO organizations (org_id, name, tier, rate_limit_per_minute, webhook_url, signing_secret)
                 VALUES ('{org_id}', 'backlogged', 'pro', 1000, 'http://127.0.0.1:9/', 'whsec_x'),
                        ('{pulled_org_id}', 'pulled', 'pro', 1000, NULL, 'whsec_y');
                 {}
                 ANALYZE events;
                 {}",
                insert(pulled_org_id, 20_000, false),
                insert(org_id, 20_000, true),
            ))
            .await
            .unwrap();
        // As on every connection of the server (`storage::pg::Target`), and as the engine
        // opens its claiming connection.
        client.batch_execute("SET jit = off").await.unwrap();
        client.batch_execute(store::SESSION).await.unwrap();
        let (owner, lease_ms) = (uuid::Uuid::now_v7(), 60_000i64);
        // The backlog is dated from now on (a fresh database has partitions from today
        // on), so the claims run a minute later, when all of it is due.
        let now = triggerd::util::time::unix_micros(std::time::SystemTime::now()) + 60_000_000;
        // Prepared and executed, as the engine does: the plan is the generic one.
        let claims = [
            ("claim_orgs", store::claim_orgs_sql(), "int8[]", format!("ARRAY['{org_id}']::uuid[], ARRAY[16]::int8[]")),
            ("claim_due", store::claim_due_sql(), "int8", "ARRAY[]::uuid[], 16".to_string()),
        ];
        for (name, sql, last_type, last_arguments) in claims {
            client
                .batch_execute(&format!("PREPARE {name} (uuid, int8, int8, int8, uuid[], {last_type}) AS {sql}"))
                .await
                .unwrap();
            let until = now + lease_ms * 1000;
            let explain = format!("EXPLAIN (ANALYZE) EXECUTE {name}('{owner}', {now}, {until}, 64, {last_arguments})");
            let plan: Vec<String> = client.query(&explain, &[]).await.unwrap().iter().map(|row| row.get(0)).collect();
            // "(actual time=… rows=R loops=L)": rows per loop, and loops.
            let actual = |line: &str| -> Option<(u64, u64)> {
                let measured = line.split("(actual").nth(1)?;
                let number = |key: &str| measured.split(key).nth(1)?.split([' ', ')']).next()?.parse::<u64>().ok();
                Some((number("rows=")?, number("loops=")?))
            };
            let text = plan.join("\n");
            assert_eq!(actual(&plan[0]), Some((16, 1)), "16 attempts claimed:\n{text}");
            let rows: u64 = plan
                .iter()
                .filter(|l| l.contains(" on events_p"))
                .filter_map(|l| actual(l))
                .map(|(rows, loops)| rows * loops)
                .sum();
            assert!(rows <= 1_000, "{rows} rows read for a claim of 16 of a backlog of 20 000:\n{text}");
        }
        drop(client);
        let _ = driver.await;
    });
}
