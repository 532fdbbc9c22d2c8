//! Retention without bloat, with an injected clock: partitions are created ahead, old
//! days whose events are all delivered are dropped whole (while ingest continues),
//! a day with undelivered events is kept up to the undelivered ceiling and dropped
//! (and counted) past it, and dedup keeps its 24 h window whatever the partitions.

mod common;

use common::{FreshDatabase, Server};
use triggerd::storage::retention::{maintain, partition_name, uuid_at_day, RetentionConfig};

const DAY: i64 = 86_400_000_000;

fn partitions(client: &mut postgres::Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'events'::regclass",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    names.sort();
    names
}

#[test]
fn old_delivered_days_are_dropped_whole_while_ingest_continues() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    let org = server.generate("retention", "enterprise");
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let config = RetentionConfig {
        retention_days: 7,
        undelivered_retention_days: 30,
        ahead_days: 3,
        interval: std::time::Duration::from_secs(3600),
    };
    let now = triggerd::util::time::unix_micros(std::time::SystemTime::now());
    let today = now.div_euclid(DAY);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let run = |at: i64| {
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            maintain(&client, at, &config).await.unwrap()
        })
    };
    // Ten days ago and nine days ago exist (made at an injected earlier "now").
    let report = run(now - 10 * DAY);
    assert!(report.created.contains(&partition_name(today - 10)));
    run(now - 9 * DAY);
    // Day -10: all delivered. Day -9: one event still pending.
    for (day, status) in [(today - 10, "delivered"), (today - 9, "pending")] {
        let id = uuid::Uuid::from_u128(uuid_at_day(day).as_u128() + 1);
        client
            .execute(
                "INSERT INTO events (org_id, id, type, payload, status, created_at)
                 VALUES ($1, $2, 'old', '{}', $3, now() - interval '9 days')",
                &[&org_id, &id, &status],
            )
            .unwrap();
    }
    // Maintenance at the real now, with ingest running beside it.
    let report = std::thread::scope(|scope| {
        let ingest = scope.spawn(|| {
            let mut conn = server.connect();
            (0..200)
                .map(|i| {
                    conn.request(
                        "POST",
                        "/api/events",
                        &org.headers(),
                        Some(&format!(r#"{{"type":"t","payload":{{"i":{i}}}}}"#)),
                    )
                    .status
                })
                .filter(|&s| s == 202)
                .count()
        });
        let report = run(now);
        assert_eq!(ingest.join().unwrap(), 200, "every event during maintenance was accepted");
        report
    });
    // Day -10 (all delivered) and day -8 (empty, made ahead by the earlier run) are past
    // retention and go; day -7 is inside the 7-day retention.
    assert_eq!(report.dropped, vec![partition_name(today - 10), partition_name(today - 8)], "{report:?}");
    assert_eq!(report.kept, vec![partition_name(today - 9)], "undelivered events keep their day: {report:?}");
    let names = partitions(&mut client);
    assert!(!names.contains(&partition_name(today - 10)));
    for ahead in 0..=3 {
        assert!(names.contains(&partition_name(today + ahead)), "{names:?}");
    }
    let remaining: i64 = client
        .query_one("SELECT count(*) FROM events WHERE org_id = $1 AND type = 'old'", &[&org_id])
        .unwrap()
        .get(0);
    assert_eq!(remaining, 1, "the pending old event is still there");
    // Once delivered, its day goes too.
    client
        .execute("UPDATE events SET status = 'delivered' WHERE org_id = $1 AND type = 'old'", &[&org_id])
        .unwrap();
    assert_eq!(run(now).dropped, vec![partition_name(today - 9)]);
}

#[test]
fn dedup_keeps_its_24_hour_window_across_days() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    let org = server.generate("dedup-window", "pro");
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let body = r#"{"type":"t","payload":{},"dedup_id":"daily-report"}"#;
    let first = org.post_event(&server, body).json()["id"].as_str().unwrap().to_string();
    // The claim is 23 hours old (made "yesterday", in another partition's day): still a duplicate.
    client.execute("UPDATE event_dedup SET created_at = now() - interval '23 hours'", &[]).unwrap();
    let duplicate = org.post_event(&server, body);
    assert_eq!(duplicate.assert_error(409, "duplicate_event")["event_id"], first.as_str());
    // 25 hours old: the window has passed; the same dedup_id is a new event.
    client.execute("UPDATE event_dedup SET created_at = now() - interval '25 hours'", &[]).unwrap();
    let again = org.post_event(&server, body);
    assert_eq!(again.status, 202, "{}", again.text());
    assert_ne!(again.json()["id"].as_str().unwrap(), first);
    // Maintenance deletes claims past the window, never one inside it.
    let now = triggerd::util::time::unix_micros(std::time::SystemTime::now());
    let config = RetentionConfig {
        retention_days: 30,
        undelivered_retention_days: 0,
        ahead_days: 3,
        interval: std::time::Duration::from_secs(3600),
    };
    client.execute("UPDATE event_dedup SET created_at = now() - interval '26 hours'", &[]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(async {
        let (async_client, connection) =
            tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        maintain(&async_client, now, &config).await.unwrap()
    });
    assert_eq!(report.dedup_claims_deleted, 1);
}

#[test]
fn undelivered_events_are_dropped_past_the_ceiling_and_counted() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    let org = server.generate("ceiling", "enterprise");
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let config = RetentionConfig {
        retention_days: 30,
        undelivered_retention_days: 90,
        ahead_days: 3,
        interval: std::time::Duration::from_secs(3600),
    };
    let now = triggerd::util::time::unix_micros(std::time::SystemTime::now());
    let today = now.div_euclid(DAY);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let run = |at: i64| {
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            maintain(&client, at, &config).await.unwrap()
        })
    };
    let insert = |client: &mut postgres::Client, day: i64, statuses: &[&str]| {
        for (i, status) in statuses.iter().enumerate() {
            let id = uuid::Uuid::from_u128(uuid_at_day(day).as_u128() + 1 + i as u128);
            client
                .execute(
                    "INSERT INTO events (org_id, id, type, payload, status, created_at)
                     VALUES ($1, $2, 'old', '{}', $3, now())",
                    &[&org_id, &id, status],
                )
                .unwrap();
        }
    };
    // Day -100 holds 3 undelivered events and a delivered one; day -50 one undelivered.
    run(now - 100 * DAY);
    insert(&mut client, today - 100, &["pending", "failed", "pending", "delivered"]);
    run(now - 50 * DAY);
    insert(&mut client, today - 50, &["pending"]);
    let report = run(now);
    assert_eq!(report.undelivered_dropped, vec![(partition_name(today - 100), 3)], "{report:?}");
    assert!(report.dropped.contains(&partition_name(today - 100)), "{report:?}");
    assert_eq!(report.kept, vec![partition_name(today - 50)], "inside the ceiling: kept for delivery");
    assert!(!partitions(&mut client).contains(&partition_name(today - 100)));
    // Day -95, past the ceiling, is dropped by a server's start-up maintenance, which
    // counts what it lost in its metrics.
    run(now - 95 * DAY);
    insert(&mut client, today - 95, &["pending", "pending"]);
    let restarted = Server::start_on(&database.url, &["--undelivered-retention-days", "90"]);
    assert_eq!(restarted.metric("triggerd_events_dropped_undelivered_total"), 2.0);
    assert_eq!(restarted.metric("triggerd_partitions_kept"), 1.0, "day -50 is kept");
    let names = partitions(&mut client);
    assert!(!names.contains(&partition_name(today - 95)) && names.contains(&partition_name(today - 50)));
    let remaining: i64 = client
        .query_one("SELECT count(*) FROM events WHERE org_id = $1 AND type = 'old'", &[&org_id])
        .unwrap()
        .get(0);
    assert_eq!(remaining, 1, "only day -50's event is left");
}
