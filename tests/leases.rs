//! Leased consumption: competing consumers without double processing, expiry by the
//! database clock, release, poison events set aside, and the cost of a claim.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{insert_bulk_events, Conn, FreshDatabase, Org, Server};
use serde_json::Value;

fn post(server: &Server, org: &Org, path: &str, body: &str) -> common::Response {
    server.request("POST", path, &org.headers(), Some(body))
}

fn lease(server: &Server, org: &Org, body: &str) -> Value {
    let response = post(server, org, "/api/inbox/lease", body);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn ids(value: &Value, key: &str) -> Vec<String> {
    value[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

fn event_ids(lease: &Value) -> Vec<String> {
    lease["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

/// Posts `n` events in batches; returns their ids in order.
fn post_events(server: &Server, org: &Org, n: usize) -> Vec<String> {
    let mut all = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<String> =
            chunk.iter().map(|i| format!(r#"{{"type":"t","payload":{{"i":{i}}}}}"#)).collect();
        let response =
            post(server, org, "/api/events/batch", &format!(r#"{{"events":[{}]}}"#, events.join(",")));
        assert_eq!(response.status, 200);
        for result in response.json()["results"].as_array().unwrap() {
            assert_eq!(result["status"], "accepted", "{result}");
            all.push(result["id"].as_str().unwrap().to_string());
        }
    }
    all
}

#[test]
fn leases_hand_out_each_free_event_once_oldest_first() {
    let server = Server::start(&[]);
    let org = server.generate("leasing", "pro");
    // Oldest first is id order: (created_at, id). A batch's events share created_at.
    let mut posted = post_events(&server, &org, 25);
    posted.sort();
    let first = lease(&server, &org, r#"{"limit":10,"lease_seconds":60}"#);
    assert_eq!(event_ids(&first), posted[..10]);
    assert!(first["lease_id"].is_string() && first["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["events"][0]["leases"], 1);
    assert_eq!(first["events"][0]["status"], "pending");
    let second = lease(&server, &org, "");
    assert_eq!(event_ids(&second), posted[10..20], "an empty body takes the defaults (10)");
    let third = lease(&server, &org, r#"{"limit":100}"#);
    assert_eq!(event_ids(&third), posted[20..]);
    assert!(event_ids(&lease(&server, &org, "{}")).is_empty(), "nothing free");

    // Ack all of the first lease; again: idempotent.
    let path = format!("/api/inbox/lease/{}/ack", first["lease_id"].as_str().unwrap());
    let acked = post(&server, &org, &path, "").json();
    assert_eq!(ids(&acked, "acknowledged"), posted[..10]);
    assert_eq!(ids(&post(&server, &org, &path, "").json(), "acknowledged"), posted[..10]);
    // Ack some of the second, one of which it does not hold.
    let path = format!("/api/inbox/lease/{}/ack", second["lease_id"].as_str().unwrap());
    let body = format!(r#"{{"ids":["{}","{}"]}}"#, posted[10], posted[0]);
    let acked = post(&server, &org, &path, &body).json();
    assert_eq!(
        (ids(&acked, "acknowledged"), ids(&acked, "not_found")),
        (vec![posted[10].clone()], vec![posted[0].clone()])
    );
    // Release two of the third: free again at once, leased next, oldest first.
    let path = format!("/api/inbox/lease/{}/release", third["lease_id"].as_str().unwrap());
    let body = format!(r#"{{"ids":["{}","{}"]}}"#, posted[21], posted[23]);
    assert_eq!(
        ids(&post(&server, &org, &path, &body).json(), "released"),
        [posted[21].clone(), posted[23].clone()]
    );
    let again = lease(&server, &org, "{}");
    assert_eq!(event_ids(&again), [posted[21].clone(), posted[23].clone()]);
    assert_eq!(again["events"][0]["leases"], 2);
    // The plain inbox shows leased events as pending, with their lease count; plain
    // acknowledgement works on them.
    let inbox = server.request("GET", "/api/inbox?status=all&limit=1000", &org.headers(), None).json();
    let delivered = inbox["events"].as_array().unwrap().iter().filter(|e| e["status"] == "delivered").count();
    assert_eq!(delivered, 11);
    assert_eq!(
        server.request("POST", &format!("/api/ack/{}", posted[22]), &org.headers(), Some("")).status,
        200
    );
}

#[test]
fn unknown_expired_and_foreign_leases_are_404_and_bad_input_400() {
    let server = Server::start(&[]);
    let org = server.generate("owner", "pro");
    let other = server.generate("other", "pro");
    post_events(&server, &org, 3);
    let held = lease(&server, &org, r#"{"lease_seconds":1}"#);
    let lease_id = held["lease_id"].as_str().unwrap();
    let ack = format!("/api/inbox/lease/{lease_id}/ack");
    post(&server, &other, &ack, "").assert_error(404, "not_found");
    post(&server, &other, &format!("/api/inbox/lease/{lease_id}/release"), "").assert_error(404, "not_found");
    post(&server, &org, &format!("/api/inbox/lease/{}/ack", uuid::Uuid::now_v7()), "")
        .assert_error(404, "not_found");
    let malformed =
        post(&server, &org, "/api/inbox/lease/not-a-uuid/ack", "").assert_error(400, "invalid_request");
    assert_eq!(malformed["field"], "id");
    for (body, field) in [
        (r#"{"limit":0}"#, "limit"),
        (r#"{"limit":101}"#, "limit"),
        (r#"{"limit":"5"}"#, "limit"),
        (r#"{"lease_seconds":0}"#, "lease_seconds"),
        (r#"{"lease_seconds":3601}"#, "lease_seconds"),
        (r#"{"other":1}"#, "other"),
        ("[]", "body"),
    ] {
        let json = post(&server, &org, "/api/inbox/lease", body).assert_error(400, "invalid_request");
        assert_eq!(json["field"], field, "{body}");
    }
    post(&server, &org, &ack, r#"{"ids":["x"]}"#).assert_error(400, "invalid_request");
    // Expiry is the database's: once it passes, the lease is gone and its events free.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let taken = lease(&server, &org, "{}");
        if event_ids(&taken).len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the expired lease's events never came back");
        // Paces the polling of a condition the database decides; synchronises nothing.
        std::thread::sleep(Duration::from_millis(100));
    }
    post(&server, &org, &ack, "").assert_error(404, "not_found");
}

#[test]
fn an_event_leased_five_times_without_an_ack_is_set_aside() {
    let server = Server::start(&[]);
    let org = server.generate("poisoned", "pro");
    let mut posted = post_events(&server, &org, 2);
    posted.sort();
    for round in 1..=5 {
        let held = lease(&server, &org, r#"{"limit":1}"#);
        assert_eq!(event_ids(&held), [posted[0].clone()], "round {round}");
        assert_eq!(held["events"][0]["leases"], round);
        let path = format!("/api/inbox/lease/{}/release", held["lease_id"].as_str().unwrap());
        assert_eq!(post(&server, &org, &path, "").status, 200);
    }
    let failed = server.request("GET", "/api/inbox?status=failed", &org.headers(), None).json();
    let poisoned = &failed["events"][0];
    assert_eq!(poisoned["id"], posted[0].as_str());
    assert_eq!(poisoned["leases"], 5);
    assert!(poisoned["last_error"].as_str().unwrap().contains("poison"), "{poisoned}");
    assert_eq!(event_ids(&lease(&server, &org, "{}")), [posted[1].clone()], "leased no more");
}

#[test]
fn eight_consumers_on_two_instances_acknowledge_every_event_exactly_once() {
    let database = FreshDatabase::new();
    let servers = [Server::start_on(&database.url, &[]), Server::start_on(&database.url, &[])];
    let org = servers[0].generate("busy", "enterprise");
    let posted: HashSet<String> = post_events(&servers[0], &org, 10_000).into_iter().collect();
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let consumers: Vec<_> = (0..8)
        .map(|n| {
            let (addr, key, acknowledged) = (servers[n % 2].addr, org.key.clone(), Arc::clone(&acknowledged));
            std::thread::spawn(move || {
                let headers = [("X-API-Key", key.as_str()), ("Content-Type", "application/json")];
                let mut conn = Conn::new(addr);
                loop {
                    let held =
                        conn.request("POST", "/api/inbox/lease", &headers, Some(r#"{"limit":50}"#)).json();
                    if held["events"].as_array().unwrap().is_empty() {
                        return;
                    }
                    let path = format!("/api/inbox/lease/{}/ack", held["lease_id"].as_str().unwrap());
                    let acked = conn.request("POST", &path, &headers, Some("")).json();
                    assert!(acked["not_found"].as_array().unwrap().is_empty());
                    assert_eq!(
                        acked["acknowledged"].as_array().unwrap().len(),
                        held["events"].as_array().unwrap().len()
                    );
                    acknowledged.lock().unwrap().extend(ids(&acked, "acknowledged"));
                }
            })
        })
        .collect();
    for consumer in consumers {
        consumer.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap();
    let distinct: HashSet<String> = acknowledged.iter().cloned().collect();
    assert_eq!(acknowledged.len(), 10_000, "no event acknowledged twice");
    assert_eq!(distinct, posted, "every event acknowledged by the lease that held it");
}

#[test]
fn a_claim_after_a_drained_head_reads_only_free_events() {
    // Regression: with statistics taken while an organisation's events were all
    // pending (an ANALYZE after a bulk arrival), the planner read free events through
    // the primary key, which holds the acknowledged ones too: after consumers had
    // drained the head of a backlog, every claim walked past all they had drained
    // (65 300 rows, 22 ms a claim, in the 4-consumer bench row).
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    let org = server.generate("drained", "pro");
    // Another organisation's traffic shares the partition and its primary key.
    let other = server.generate("busy", "pro");
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    insert_bulk_events(&mut client, other.id.parse().unwrap(), 200_000);
    insert_bulk_events(&mut client, org_id, 100_000);
    client.batch_execute("ANALYZE events").unwrap();
    // Consumers acknowledge the oldest 50 000 (the statistics still say all pending).
    client
        .execute(
            "UPDATE events SET status = 'delivered', delivered_at = now()
             WHERE org_id = $1 AND id IN (SELECT id FROM events WHERE org_id = $1 ORDER BY id LIMIT 50000)",
            &[&org_id],
        )
        .unwrap();
    client.batch_execute("VACUUM events").unwrap();
    let plan = explain_claim(&mut client, org_id);
    assert!(plan.contains("rows=100 loops=1"), "the claim leased a full page:\n{plan}");
    // Rows a scan read and threw away: none of the 50 000 drained ones.
    let removed: u64 = plan
        .lines()
        .filter_map(|line| line.split("Rows Removed by Filter: ").nth(1)?.trim().parse::<u64>().ok())
        .sum();
    assert!(removed <= 1_000, "{removed} rows read past:\n{plan}");
    // And free events came from the head of events_leaseable, not from all 50 000 free
    // ones read and sorted.
    let rows_read = rows_read_from_leaseable(&mut client, &plan);
    assert!(rows_read <= 1_000, "{rows_read} rows read:\n{plan}");
}

/// The plan of a lease claim of 100 of `org_id`'s events, run (EXPLAIN ANALYZE) and
/// rolled back.
fn explain_claim(client: &mut postgres::Client, org_id: uuid::Uuid) -> String {
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", triggerd::storage::leases::lease_claim_sql());
    let mut transaction = client.transaction().unwrap();
    let plan: Vec<String> = transaction
        .query(&sql, &[&org_id, &100i64, &uuid::Uuid::now_v7(), &60i64, &5i32, &"poison"])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    transaction.rollback().unwrap();
    plan.join("\n")
}

/// Rows the plan's scans of `events_leaseable` returned (each partition has its own
/// copy); fails if the plan has none.
fn rows_read_from_leaseable(client: &mut postgres::Client, plan: &str) -> u64 {
    let leaseable: Vec<String> = client
        .query(
            "SELECT indexname::text FROM pg_indexes
             WHERE tablename LIKE 'events_p%' AND indexdef LIKE '%consumer_lease IS NULL%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let scans: Vec<&str> =
        plan.lines().filter(|line| leaseable.iter().any(|name| line.contains(name.as_str()))).collect();
    assert!(!scans.is_empty(), "free events come from events_leaseable:\n{plan}");
    scans.iter().filter_map(|line| line.split("rows=").nth(2)?.split(' ').next()?.parse::<u64>().ok()).sum()
}

#[test]
fn a_claim_reads_only_the_head_of_its_indexes() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    let org = server.generate("deep", "pro");
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    insert_bulk_events(&mut client, org_id, 100_000);
    client.batch_execute("ANALYZE events").unwrap();
    let plan = explain_claim(&mut client, org_id);
    // A sequential scan only ever touches an empty partition.
    for line in plan.lines().filter(|line| line.contains("Seq Scan")) {
        assert!(
            line.contains("never executed")
                || line.contains("actual time=0.0") && line.contains("rows=0 loops"),
            "{line}\n{plan}"
        );
    }
    // The claim leased 100 rows and read a page's worth of the index, not 100 000.
    let rows_read = rows_read_from_leaseable(&mut client, &plan);
    assert!(rows_read <= 1_000, "{rows_read} rows read:\n{plan}");
}

#[test]
fn an_event_whose_leases_expire_five_times_is_set_aside_at_the_next_claim() {
    let server = Server::start(&[]);
    let org = server.generate("crashing", "pro");
    let posted = post_events(&server, &org, 1);
    let id: uuid::Uuid = posted[0].parse().unwrap();
    let mut client = common::db();
    for round in 1..=5 {
        let held = lease(&server, &org, "{}");
        assert_eq!(event_ids(&held), posted, "round {round}");
        // The consumer crashes; its lease runs out (moved into the past here, as the
        // database clock would after lease_seconds).
        client
            .execute(
                "UPDATE events SET consumer_lease_until = now() - interval '1 second' WHERE id = $1",
                &[&id],
            )
            .unwrap();
    }
    assert!(event_ids(&lease(&server, &org, "{}")).is_empty(), "the sixth claim sets it aside");
    let row =
        client.query_one("SELECT status, leases, last_error FROM events WHERE id = $1", &[&id]).unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("failed".to_string(), 5));
    assert!(row.get::<_, String>(2).contains("poison"));
}
