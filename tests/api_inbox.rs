//! `GET /api/inbox` and acknowledgement over real sockets against PostgreSQL: order,
//! cursor walks under concurrent ingest, status views, offset, parameter errors,
//! idempotent acks, tenant isolation, and the query plan at scale.

mod common;

use std::collections::HashSet;

use common::{db, Org, Server};
use serde_json::Value;

fn post_events(server: &Server, org: &Org, count: usize, tag: &str) -> Vec<String> {
    let events: Vec<String> =
        (0..count).map(|i| format!(r#"{{"type":"{tag}","payload":{{"i":{i}}}}}"#)).collect();
    let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
    let response = server.request("POST", "/api/events/batch", &org.headers(), Some(&body));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "accepted", "{r}");
            r["id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn inbox(server: &Server, org: &Org, query: &str) -> Value {
    let response = server.request("GET", &format!("/api/inbox{query}"), &[("X-API-Key", &org.key)], None);
    assert_eq!(response.status, 200, "{query}: {}", response.text());
    response.json()
}

fn ids(page: &Value) -> Vec<String> {
    page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn cursor_walk_sees_every_event_once_while_new_ones_arrive() {
    let server = Server::start(&[]);
    let org = server.generate("walker", "enterprise");
    let mut existing: Vec<String> = Vec::new();
    for _ in 0..5 {
        existing.extend(post_events(&server, &org, 5, "before"));
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=10&cursor={c}"),
            None => "?limit=10".to_string(),
        };
        let page = inbox(&server, &org, &query);
        // New events keep arriving during the walk; they land above the cursor.
        post_events(&server, &org, 3, "during");
        seen.extend(ids(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => {
                // A cursor is a position: replaying it gives the same page.
                let replay = inbox(&server, &org, &format!("?limit=10&cursor={next}"));
                let again = inbox(&server, &org, &format!("?limit=10&cursor={next}"));
                assert_eq!(ids(&replay), ids(&again));
                cursor = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25, "exactly the events that existed when the walk began");
    assert_eq!(seen.iter().collect::<HashSet<_>>(), existing.iter().collect::<HashSet<_>>());
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first, ties broken by id");
}

#[test]
fn events_carry_every_field_and_newest_come_first() {
    let server = Server::start(&[]);
    let org = server.generate("fields", "pro");
    let body = r#"{"type":"user.signup","payload":{"plan":"pro","price":9.90},"dedup_id":"signup-1"}"#;
    let first = org.post_event(&server, body).json();
    let second = org.post_event(&server, r#"{"type":"t","payload":{}}"#).json();
    let page = inbox(&server, &org, "");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["id"], second["id"]);
    let event = &events[1];
    assert_eq!(event["id"], first["id"]);
    assert_eq!(event["type"], "user.signup");
    assert_eq!(event["payload"], serde_json::json!({"plan": "pro", "price": 9.90}));
    assert_eq!(event["dedup_id"], "signup-1");
    assert_eq!(event["status"], "pending");
    assert_eq!(event["attempts"], 0);
    assert_eq!(event["created_at"], first["created_at"]);
    assert!(event["delivered_at"].is_null());
    assert!(events[0]["dedup_id"].is_null(), "absent optional fields are null, not omitted");
    assert!(page["next_cursor"].is_null());
}

#[test]
fn status_views_offset_and_acknowledgement() {
    let server = Server::start(&[]);
    let org = server.generate("views", "pro");
    let ids_posted = post_events(&server, &org, 10, "v");
    let acked = &ids_posted[..3];
    let first = server.request("POST", &format!("/api/ack/{}", acked[0]), &[("X-API-Key", &org.key)], None);
    assert_eq!(first.status, 200);
    let first = first.json();
    assert_eq!(first["status"], "delivered");
    assert_eq!(first["id"], acked[0].as_str());
    let again =
        server.request("POST", &format!("/api/ack/{}", acked[0]), &[("X-API-Key", &org.key)], None).json();
    assert_eq!(again["acknowledged_at"], first["acknowledged_at"], "idempotent: the first time is kept");
    let batch = format!(r#"{{"ids":["{}","{}","{}"]}}"#, acked[0], acked[1], acked[2]);
    let response = server.request("POST", "/api/ack", &org.headers(), Some(&batch)).json();
    assert_eq!(response["acknowledged"].as_array().unwrap().len(), 3, "{response}");
    assert_eq!(response["not_found"], serde_json::json!([]));

    // One event gave up on delivery.
    let failed: uuid::Uuid = ids_posted[9].parse().unwrap();
    db().execute("UPDATE events SET status = 'failed', attempts = 7 WHERE id = $1", &[&failed]).unwrap();

    let default = inbox(&server, &org, "");
    assert_eq!(ids(&default).len(), 7, "undelivered = pending + failed");
    assert!(ids(&default).iter().all(|id| !acked.contains(id)));
    let delivered = inbox(&server, &org, "?status=delivered");
    assert_eq!(ids(&delivered).iter().collect::<HashSet<_>>(), acked.iter().collect::<HashSet<_>>());
    for event in delivered["events"].as_array().unwrap() {
        assert_eq!(event["status"], "delivered");
        assert!(event["delivered_at"].as_str().is_some());
    }
    let acked_first =
        delivered["events"].as_array().unwrap().iter().find(|e| e["id"] == acked[0].as_str()).unwrap();
    assert_eq!(acked_first["delivered_at"], first["acknowledged_at"]);
    assert_eq!(ids(&inbox(&server, &org, "?status=pending")).len(), 6);
    let failed_view = inbox(&server, &org, "?status=failed");
    assert_eq!(ids(&failed_view), vec![ids_posted[9].clone()]);
    assert_eq!(failed_view["events"][0]["attempts"], 7);
    let all = inbox(&server, &org, "?status=all");
    assert_eq!(ids(&all).len(), 10);
    let offset = inbox(&server, &org, "?status=all&limit=4&offset=4");
    assert_eq!(ids(&offset), ids(&all)[4..8].to_vec());
    assert!(offset["next_cursor"].is_string());
    let last = inbox(&server, &org, "?status=all&limit=4&offset=8");
    assert!(last["next_cursor"].is_null());
}

#[test]
fn malformed_parameters_and_ids_are_400_naming_them() {
    let server = Server::start(&[]);
    let org = server.generate("params", "free");
    for (query, field) in [
        ("?status=archived", "status"),
        ("?limit=0", "limit"),
        ("?limit=-5", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=many", "limit"),
        ("?offset=-1", "offset"),
        ("?cursor=not-a-cursor", "cursor"),
    ] {
        let response = server.request("GET", &format!("/api/inbox{query}"), &[("X-API-Key", &org.key)], None);
        assert_eq!(response.assert_error(400, "invalid_request")["field"], field, "{query}");
    }
    let response = server.request("POST", "/api/ack/not-a-uuid", &[("X-API-Key", &org.key)], None);
    assert_eq!(response.assert_error(400, "invalid_request")["field"], "id");
    let unknown = uuid::Uuid::now_v7();
    server
        .request("POST", &format!("/api/ack/{unknown}"), &[("X-API-Key", &org.key)], None)
        .assert_error(404, "not_found");
    for (body, field) in [
        (r#"{"ids":["nope"]}"#.to_string(), "ids"),
        (r#"{"ids":"x"}"#.to_string(), "ids"),
        (r#"{}"#.to_string(), "ids"),
        (r#"{"ids":[],"more":1}"#.to_string(), "more"),
        (format!(r#"{{"ids":[{}]}}"#, vec![format!("\"{unknown}\""); 1001].join(",")), "ids"),
    ] {
        let response = server.request("POST", "/api/ack", &org.headers(), Some(&body));
        assert_eq!(response.assert_error(400, "invalid_request")["field"], field, "{body}");
    }
    server
        .request("POST", "/api/ack", &[("X-API-Key", &org.key)], Some(r#"{"ids":[]}"#))
        .assert_error(415, "unsupported_media_type");
    server.request("GET", "/api/inbox", &[], None).assert_error(401, "unauthorized");
    server.request("POST", &format!("/api/ack/{unknown}"), &[], None).assert_error(401, "unauthorized");
}

#[test]
fn organisations_never_see_or_touch_each_others_events() {
    let server = Server::start(&[]);
    let alice = server.generate("alice", "pro");
    let mallory = server.generate("mallory", "pro");
    let alice_ids = post_events(&server, &alice, 3, "secret");
    post_events(&server, &mallory, 2, "own");
    for query in ["", "?status=all", "?status=pending", "?status=delivered"] {
        let page = inbox(&server, &mallory, query);
        assert!(ids(&page).iter().all(|id| !alice_ids.contains(id)), "{query}");
        assert!(!page.to_string().contains("secret"));
    }
    // Alice's cursor on Mallory's inbox walks Mallory's events only.
    let alice_page = inbox(&server, &alice, "?limit=1");
    let cursor = alice_page["next_cursor"].as_str().unwrap();
    let crossed = inbox(&server, &mallory, &format!("?cursor={cursor}&status=all"));
    assert!(ids(&crossed).iter().all(|id| !alice_ids.contains(id)));
    server
        .request("POST", &format!("/api/ack/{}", alice_ids[0]), &[("X-API-Key", &mallory.key)], None)
        .assert_error(404, "not_found");
    let batch = format!(r#"{{"ids":["{}","{}"]}}"#, alice_ids[1], alice_ids[2]);
    let response = server.request("POST", "/api/ack", &mallory.headers(), Some(&batch)).json();
    assert_eq!(response["acknowledged"], serde_json::json!([]));
    assert_eq!(response["not_found"].as_array().unwrap().len(), 2);
    assert_eq!(ids(&inbox(&server, &alice, "")).len(), 3, "Alice's events are untouched");
}

#[test]
fn inbox_queries_stay_index_scans_at_scale() {
    // 60 000 events for one organisation (plus another's), then the planner's choice
    // for each view with the generic plan a prepared statement gets.
    let server = Server::start(&[]);
    let org = server.generate("big", "free");
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    let other = server.generate("neighbour", "free");
    let other_id: uuid::Uuid = other.id.parse().unwrap();
    let mut client = db();
    for (id, count) in [(org_id, 60_000i32), (other_id, 20_000)] {
        client
            .execute(
                // UUIDv7-shaped ids of now: time prefix, version and variant, random rest.
                "INSERT INTO events (org_id, id, type, payload, status, created_at)
                 SELECT $1, (lpad(to_hex((extract(epoch FROM now()) * 1000)::bigint), 12, '0') || '7'
                             || substr(md5(random()::text), 1, 3) || '8' || substr(md5(random()::text), 1, 15))::uuid,
                        'bulk', '{}'::jsonb, CASE WHEN n % 10 = 0 THEN 'delivered' ELSE 'pending' END, now()
                 FROM generate_series(1, $2) AS n",
                &[&id, &count],
            )
            .unwrap();
    }
    client.batch_execute("ANALYZE events").unwrap();
    client.batch_execute("SET plan_cache_mode = force_generic_plan").unwrap();
    use triggerd::handoff::commands::InboxView;
    use triggerd::storage::queries::inbox_view_sql;
    for view in [InboxView::Undelivered, InboxView::Delivered, InboxView::All] {
        let sql = format!("EXPLAIN {}", inbox_view_sql(view));
        let statuses: Vec<&str> = vec!["pending", "failed"];
        let limit = 101i64;
        let offset = 0i64;
        let cursor = uuid::Uuid::max();
        let page_bytes = 4i64 << 20;
        let plan: Vec<String> = if view == InboxView::Undelivered {
            client.query(&sql, &[&org_id, &cursor, &limit, &offset, &page_bytes, &statuses])
        } else {
            client.query(&sql, &[&org_id, &cursor, &limit, &offset, &page_bytes])
        }
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
        let plan = plan.join("\n");
        let nodes: Vec<&str> =
            plan.lines().map(|l| l.trim_start().trim_start_matches("->").trim_start()).collect();
        assert!(nodes.iter().any(|n| n.starts_with("Index Scan Backward")), "{view:?}:\n{plan}");
        assert!(
            !nodes.iter().any(|n| n.starts_with("Seq Scan") || n.starts_with("Sort ")),
            "{view:?}:\n{plan}"
        );
    }
    let page = inbox(&server, &org, "?limit=100");
    assert_eq!(ids(&page).len(), 100);
}
