//! `POST /api/events` over real sockets against PostgreSQL: the 202 means stored,
//! validation, dedup under concurrency, exact rate limits, overload.

mod common;

use std::sync::mpsc;

use common::{db, event_count, Server};

const EVENT: &str = r#"{"type":"order.created","payload":{"order":42,"amount":"19.90","exact":1.50}}"#;

#[test]
fn accepted_event_is_stored_with_the_returned_id() {
    let server = Server::start(&[]);
    let org = server.generate("stored", "free");
    let response = org.post_event(&server, EVENT);
    assert_eq!(response.status, 202, "{}", response.text());
    let json = response.json();
    assert_eq!(json["status"], "accepted");
    let id: uuid::Uuid = json["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 7);
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    let row = db()
        .query_one(
            "SELECT type, payload::text, dedup_id, status, attempts,
                    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
             FROM events WHERE org_id = $1 AND id = $2",
            &[&org_id, &id],
        )
        .expect("the acknowledged event is in the database");
    assert_eq!(row.get::<_, String>(0), "order.created");
    assert_eq!(row.get::<_, String>(1), r#"{"exact": 1.50, "order": 42, "amount": "19.90"}"#);
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert_eq!(row.get::<_, String>(3), "pending");
    assert_eq!(row.get::<_, i32>(4), 0);
    assert_eq!(row.get::<_, String>(5), json["created_at"].as_str().unwrap());
    // Rate-limit headers on the success.
    assert_eq!(response.header("X-RateLimit-Limit"), Some("100"));
    assert_eq!(response.header("X-RateLimit-Remaining"), Some("99"));
    assert_eq!(response.header("X-RateLimit-Reset"), Some("60"));
    assert_eq!(response.header("RateLimit-Policy"), Some("\"tier\";q=100;w=60"));
    assert_eq!(response.header("RateLimit"), Some("\"tier\";r=99;t=60"));
}

#[test]
fn invalid_events_are_refused_field_by_field_and_store_nothing() {
    let server = Server::start(&[]);
    let org = server.generate("invalid", "free");
    let cases = [
        (r#"{"payload":{}}"#, "type"),
        (r#"{"type":"","payload":{}}"#, "type"),
        (r#"{"type":["x"],"payload":{}}"#, "type"),
        (r#"{"type":"t"}"#, "payload"),
        (r#"{"type":"t","payload":"text"}"#, "payload"),
        (r#"{"type":"t","payload":{},"dedup_id":""}"#, "dedup_id"),
        (r#"{"type":"t","payload":{},"dedup_id":{}}"#, "dedup_id"),
        (r#"{"type":"t","payload":{},"extra":true}"#, "extra"),
    ];
    for (body, field) in cases {
        let response = org.post_event(&server, body);
        assert_eq!(response.assert_error(400, "invalid_request")["field"], field, "{body}");
        assert_eq!(response.header("X-RateLimit-Remaining"), Some("100"), "invalid events are not counted");
    }
    let long_type = format!(r#"{{"type":"{}","payload":{{}}}}"#, "t".repeat(256));
    assert_eq!(org.post_event(&server, &long_type).assert_error(400, "invalid_request")["field"], "type");
    org.post_event(&server, r#"{"type":"t","payload":"#).assert_error(400, "invalid_json");
    // Contract v2: text PostgreSQL cannot store is not I-JSON (invalid_json); valid
    // JSON of the wrong shape is invalid_request.
    org.post_event(&server, r#"{"type":"t","payload":{"nul":"a\u0000b"}}"#).assert_error(400, "invalid_json");
    assert_eq!(org.post_event(&server, "[]").assert_error(400, "invalid_request")["field"], "body");
    server
        .request(
            "POST",
            "/api/events",
            &[("X-API-Key", &org.key), ("Content-Type", "text/plain")],
            Some(EVENT),
        )
        .assert_error(415, "unsupported_media_type");
    server
        .request("POST", "/api/events", &[("X-API-Key", &org.key)], Some(EVENT))
        .assert_error(415, "unsupported_media_type");
    assert_eq!(event_count(&mut db(), &org.id), 0);
}

#[test]
fn fifty_concurrent_duplicates_admit_exactly_one() {
    let server = Server::start(&[]);
    let org = server.generate("dedup", "pro");
    let other = server.generate("dedup-other", "pro");
    let body = r#"{"type":"payment","payload":{"n":1},"dedup_id":"pay-0001"}"#;
    let barrier = std::sync::Barrier::new(50);
    let responses: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let mut conn = server.connect();
                let (server, org, barrier) = (&server, &org, &barrier);
                scope.spawn(move || {
                    let _ = server;
                    barrier.wait();
                    conn.request("POST", "/api/events", &org.headers(), Some(body))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: Vec<_> = responses.iter().filter(|r| r.status == 202).collect();
    assert_eq!(accepted.len(), 1, "{:?}", responses.iter().map(|r| r.status).collect::<Vec<_>>());
    let id = accepted[0].json()["id"].as_str().unwrap().to_string();
    for response in responses.iter().filter(|r| r.status != 202) {
        let json = response.assert_error(409, "duplicate_event");
        assert_eq!(json["event_id"], id.as_str());
        assert_eq!(json["dedup_id"], "pay-0001");
    }
    assert_eq!(event_count(&mut db(), &org.id), 1);
    // Another organisation's identical dedup_id is its own.
    assert_eq!(other.post_event(&server, body).status, 202);
    // And a later duplicate still names the original.
    assert_eq!(org.post_event(&server, body).json()["event_id"], id.as_str());
}

#[test]
fn rate_limit_is_exact_across_connections_and_cores() {
    let server = Server::start(&[]);
    let org = server.generate("limited", "free");
    let statuses: Vec<Vec<(u16, Option<String>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let mut conn = server.connect();
                let org = &org;
                scope.spawn(move || {
                    (0..15)
                        .map(|_| {
                            let r = conn.request("POST", "/api/events", &org.headers(), Some(EVENT));
                            if r.status == 429 {
                                r.assert_error(429, "rate_limited");
                                assert_eq!(r.header("X-RateLimit-Remaining"), Some("0"));
                            }
                            (r.status, r.header("Retry-After").map(str::to_string))
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<_> = statuses.into_iter().flatten().collect();
    assert_eq!(all.iter().filter(|(s, _)| *s == 202).count(), 100);
    assert_eq!(all.iter().filter(|(s, _)| *s == 429).count(), 50);
    for (_, retry_after) in all.iter().filter(|(s, _)| *s == 429) {
        let seconds: u64 = retry_after.as_deref().expect("Retry-After on 429").parse().unwrap();
        assert!((1..=60).contains(&seconds));
    }
    assert_eq!(event_count(&mut db(), &org.id), 100, "a 429 stores nothing");
}

#[test]
fn a_full_ring_answers_503_and_loses_nothing() {
    // Two ticket slots per core; the events table is locked so nothing can commit.
    let server = Server::start(&["--ring-capacity", "2"]);
    let org = server.generate("overloaded", "enterprise");
    let mut lock_holder = db();
    let mut lock = lock_holder.transaction().unwrap();
    lock.batch_execute("LOCK TABLE events IN EXCLUSIVE MODE").unwrap();

    const REQUESTS: usize = 10;
    let (sender, results) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..REQUESTS {
            let mut conn = server.connect();
            let (sender, org) = (sender.clone(), &org);
            scope.spawn(move || {
                let response = conn.request("POST", "/api/events", &org.headers(), Some(EVENT));
                sender.send(response).unwrap();
            });
        }
        // At most 2 per core (4) can be waiting on the lock: at least 6 answers come
        // back while it is held, and every one of them must be a 503.
        let mut before_release = Vec::new();
        while before_release.len() < REQUESTS - 4 {
            before_release.push(results.recv().unwrap());
        }
        for response in &before_release {
            response.assert_error(503, "overloaded");
            assert_eq!(response.header("Retry-After"), Some("1"));
        }
        lock.rollback().unwrap();
        let mut all = before_release;
        while all.len() < REQUESTS {
            all.push(results.recv().unwrap());
        }
        let accepted: Vec<String> = all
            .iter()
            .filter(|r| r.status == 202)
            .map(|r| r.json()["id"].as_str().unwrap().to_string())
            .collect();
        assert!(all.iter().all(|r| r.status == 202 || r.status == 503));
        assert_eq!(event_count(&mut db(), &org.id), accepted.len() as i64);
    });
    // Once the pressure is gone the same server accepts again.
    assert_eq!(org.post_event(&server, EVENT).status, 202);
}

#[test]
fn a_standing_queue_is_shed_at_once_and_admitted_again_when_it_drains() {
    // One core, a ring of 4 (so a floor of 2 waiting events), a 50 ms target. The
    // events table is locked: the first two events wait, and a whole interval passes
    // with nothing committed while they do: a standing queue.
    let server = Server::start(&["--http-cores", "1", "--ring-capacity", "4", "--queue-target-ms", "50"]);
    let org = server.generate("shedding", "enterprise");
    let mut lock_holder = db();
    let mut lock = lock_holder.transaction().unwrap();
    lock.batch_execute("LOCK TABLE events IN EXCLUSIVE MODE").unwrap();
    std::thread::scope(|scope| {
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let mut conn = server.connect();
                let org = &org;
                scope.spawn(move || conn.request("POST", "/api/events", &org.headers(), Some(EVENT)))
            })
            .collect();
        // Every request (a scrape too) brings the core's verdict up to date.
        let mut scrapes = 0;
        while server.metric("triggerd_ingest_shedding_cores") < 1.0 {
            scrapes += 1;
            assert!(scrapes < 100_000, "the core never saw its queue standing");
        }
        // The ring has room for two more, but the queue stands: 503 at once, not stored.
        let shed = org.post_event(&server, EVENT);
        shed.assert_error(503, "overloaded");
        assert_eq!(shed.header("Retry-After"), Some("1"));
        let batch = format!(r#"{{"events":[{EVENT}]}}"#);
        server
            .request("POST", "/api/events/batch", &org.headers(), Some(&batch))
            .assert_error(503, "overloaded");
        lock.rollback().unwrap();
        for request in waiting {
            assert_eq!(request.join().unwrap().status, 202, "admitted events are stored");
        }
    });
    assert_eq!(event_count(&mut db(), &org.id), 2);
    // Below the floor events are always taken; once one commits within the target
    // the core stops shedding.
    let mut accepted = 0;
    while server.metric("triggerd_ingest_shedding_cores") > 0.0 {
        assert_eq!(org.post_event(&server, EVENT).status, 202);
        accepted += 1;
        assert!(accepted < 10_000, "the core never stopped shedding");
    }
    assert_eq!(event_count(&mut db(), &org.id), 2 + accepted);
}
