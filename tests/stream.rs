//! The ordered stream: every event once, in commit order, across writers and
//! instances; held reads answered by commits; Server-Sent Events with resume.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{insert_bulk_events, Conn, FreshDatabase, Org, Server};
use serde_json::Value;

fn read_stream(server: &Server, org: &Org, query: &str) -> Value {
    let response = server.request("GET", &format!("/api/events/stream?{query}"), &org.headers(), None);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn ids(page: &Value) -> Vec<String> {
    page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

fn post(server: &Server, org: &Org, n: usize) -> String {
    let response = org.post_event(server, &format!(r#"{{"type":"t","payload":{{"n":{n}}}}}"#));
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["id"].as_str().unwrap().to_string()
}

/// Stream reads the server holds right now (its gauge).
fn held_reads(server: &Server) -> f64 {
    let text = server.request("GET", "/metrics", &[], None).text();
    let line = text.lines().find(|line| line.starts_with("triggerd_stream_reads_held ")).expect("the gauge");
    line.rsplit(' ').next().and_then(|value| value.parse().ok()).expect("a number")
}

/// Walks the stream from `position` until `count` events have come (each read held
/// until something commits: another test's transaction on the shared cluster may hold
/// the horizon for a moment); returns the ids and the position after them.
fn walk(
    server: &Server,
    org: &Org,
    mut position: String,
    limit: usize,
    count: usize,
) -> (Vec<String>, String) {
    let mut seen = Vec::new();
    while seen.len() < count {
        let page = read_stream(server, org, &format!("limit={limit}&wait=10&after={position}"));
        let got = ids(&page);
        assert!(!got.is_empty(), "{count} events expected, {} came", seen.len());
        position = page["position"].as_str().unwrap().to_string();
        seen.extend(got);
    }
    (seen, position)
}

#[test]
fn sequential_events_come_in_posting_order_each_once() {
    let server = Server::start(&[]);
    let org = server.generate("ordered", "pro");
    let posted: Vec<String> = (0..10).map(|n| post(&server, &org, n)).collect();
    let (head, middle) = walk(&server, &org, String::new(), 3, 4);
    assert_eq!(head, posted[..head.len()], "pages of at most 3, in posting order");
    let (rest, end) = walk(&server, &org, middle.clone(), 3, 10 - head.len());
    assert_eq!(rest, posted[head.len()..]);
    // A position is replayable and stays put when nothing is new.
    let (replayed, _) = walk(&server, &org, middle, 100, 10 - head.len());
    assert_eq!(replayed, rest, "the same events again from the same position");
    let again = read_stream(&server, &org, &format!("after={end}"));
    assert!(ids(&again).is_empty());
    assert_eq!(again["position"], end.as_str());
    let other = server.generate("other", "pro");
    assert!(ids(&read_stream(&server, &other, "")).is_empty(), "only the caller's events");
}

#[test]
fn a_transaction_that_commits_late_is_not_skipped() {
    // The proof, exercised: an event whose transaction began before later ones but
    // commits after them is read in its place, never passed over.
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    let org = server.generate("late", "pro");
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    let first = post(&server, &org, 0);
    let mut late = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let mut transaction = late.transaction().unwrap();
    let late_id = uuid::Uuid::now_v7();
    transaction
        .execute(
            "INSERT INTO events (org_id, id, type, payload, created_at) VALUES ($1, $2, 'late', '{}', now())",
            &[&org_id, &late_id],
        )
        .unwrap();
    let after: Vec<String> = (1..4).map(|n| post(&server, &org, n)).collect();
    let page = read_stream(&server, &org, "wait=10");
    assert_eq!(ids(&page), std::slice::from_ref(&first), "nothing past the transaction still in progress");
    let position = page["position"].as_str().unwrap().to_string();
    // A read held behind the horizon: committed events follow its position, but the
    // open transaction began before them. No commit notice comes for the late insert
    // (it is not ours); the core's horizon watcher wakes the read when it ends.
    let (addr, key) = (server.addr, org.key.clone());
    let path = format!("/api/events/stream?limit=100&wait=30&after={position}");
    let held =
        std::thread::spawn(move || Conn::new(addr).request("GET", &path, &[("X-API-Key", &key)], None));
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    while client
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%pg_snapshot_xmin(pg_current_snapshot())::text::int8%' AND query NOT LIKE '%pg_stat_activity%'", &[])
        .map(|row| row.get::<_, i64>(0))
        .unwrap_or(0)
        == 0
    {}
    let committed_at = std::time::Instant::now();
    transaction.commit().unwrap();
    let response = held.join().unwrap();
    assert!(
        committed_at.elapsed() < Duration::from_secs(20),
        "woken when the horizon moved, not at the end of the wait"
    );
    let mut rest = ids(&response.json());
    let tail_position = response.json()["position"].as_str().unwrap().to_string();
    if rest.len() < 4 {
        rest.extend(walk(&server, &org, tail_position, 100, 4 - rest.len()).0);
    }
    let mut expected = vec![late_id.to_string()];
    expected.extend(after);
    assert_eq!(rest, expected, "the late event in its commit position, then the others");
}

#[test]
fn concurrent_writers_on_two_instances_every_event_once_in_commit_order() {
    let database = FreshDatabase::new();
    let servers = [Server::start_on(&database.url, &[]), Server::start_on(&database.url, &[])];
    let org = servers[0].generate("busy", "enterprise");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, key) = (servers[w % 2].addr, org.key.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::new(addr);
                let headers = [("X-API-Key", key.as_str()), ("Content-Type", "application/json")];
                (0..25)
                    .flat_map(|b| {
                        let events: Vec<String> = (0..20)
                            .map(|i| format!(r#"{{"type":"t","payload":{{"w":{w},"b":{b},"i":{i}}}}}"#))
                            .collect();
                        let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
                        let response = conn.request("POST", "/api/events/batch", &headers, Some(&body));
                        assert_eq!(response.status, 200);
                        response.json()["results"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|r| r["id"].as_str().unwrap().to_string())
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // A reader tails the stream on the other instance while the writers run.
    let (addr, key) = (servers[1].addr, org.key.clone());
    let reader = std::thread::spawn(move || {
        let mut conn = Conn::new(addr);
        let mut position = String::new();
        let mut seen = Vec::new();
        while seen.len() < 2000 {
            let path = format!("/api/events/stream?limit=1000&wait=5&after={position}");
            let page = conn.request("GET", &path, &[("X-API-Key", key.as_str())], None).json();
            seen.extend(ids(&page));
            position = page["position"].as_str().unwrap().to_string();
        }
        seen
    });
    let posted: HashSet<String> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let seen = reader.join().unwrap();
    assert_eq!(seen.len(), 2000, "no event twice");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), posted, "every event");
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    let committed: Vec<String> = client
        .query("SELECT id FROM events WHERE org_id = $1 ORDER BY xid, id", &[&org_id])
        .unwrap()
        .iter()
        .map(|row| row.get::<_, uuid::Uuid>(0).to_string())
        .collect();
    assert_eq!(seen, committed, "in commit order");
}

#[test]
fn a_held_read_is_answered_by_a_commit_here_or_on_another_instance() {
    let database = FreshDatabase::new();
    let servers = [Server::start_on(&database.url, &[]), Server::start_on(&database.url, &[])];
    let org = servers[0].generate("waiting", "pro");
    for (reading, writing) in [(0, 0), (1, 0)] {
        let end = read_stream(&servers[reading], &org, "")["position"].as_str().unwrap().to_string();
        let (addr, key) = (servers[reading].addr, org.key.clone());
        let held = std::thread::spawn(move || {
            let path = format!("/api/events/stream?wait=30&after={end}");
            Conn::new(addr).request("GET", &path, &[("X-API-Key", key.as_str())], None).json()
        });
        // Once the read is held (the gauge says so), an event commits; the answer carries it.
        while held_reads(&servers[reading]) < 1.0 {}
        let posted_at = std::time::Instant::now();
        let id = post(&servers[writing], &org, reading);
        let page = held.join().unwrap();
        assert_eq!(ids(&page), [id], "the commit on instance {writing} while held on {reading}");
        // Not a speed check (scripts/bench measures wake-up latency): a read that was not
        // woken would be answered only when its 30 s wait ran out.
        assert!(
            posted_at.elapsed() < Duration::from_secs(20),
            "woken by the commit, not by the end of the wait"
        );
    }
}

#[test]
fn parameters_are_checked_and_name_their_field() {
    let server = Server::start(&[]);
    let org = server.generate("checked", "pro");
    for (query, field) in
        [("limit=0", "limit"), ("wait=31", "wait"), ("after=garbage", "after"), ("limit=2000", "limit")]
    {
        let response = server.request("GET", &format!("/api/events/stream?{query}"), &org.headers(), None);
        assert_eq!(response.assert_error(400, "invalid_request")["field"], field, "{query}");
    }
    server.request("GET", "/api/events/stream", &[], None).assert_error(401, "unauthorized");
    server
        .request("POST", "/api/events/stream", &org.headers(), Some("{}"))
        .assert_error(405, "method_not_allowed");
}

/// A Server-Sent Events client over a raw socket: reads the chunked body.
struct EventSource {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl EventSource {
    fn open(server: &Server, org: &Org, last_event_id: Option<&str>) -> EventSource {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut request = format!(
            "GET /api/events/stream HTTP/1.1\r\nHost: t\r\nX-API-Key: {}\r\nAccept: text/event-stream\r\n",
            org.key
        );
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut source = EventSource { stream, buffer: Vec::new() };
        let head = source.until(b"\r\n\r\n");
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.contains("Content-Type: text/event-stream") && head.contains("Transfer-Encoding: chunked"),
            "{head}"
        );
        source
    }

    /// Bytes up to and including `delimiter`.
    fn until(&mut self, delimiter: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self.buffer.windows(delimiter.len()).position(|w| w == delimiter) {
                return self.buffer.drain(..at + delimiter.len()).collect();
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("the stream stays open");
            assert!(n > 0, "the server closed the stream");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next chunk's data (`None` for the final, empty chunk).
    fn chunk(&mut self) -> Option<String> {
        let size_line = self.until(b"\r\n");
        let size = usize::from_str_radix(std::str::from_utf8(&size_line[..size_line.len() - 2]).unwrap(), 16)
            .unwrap();
        if size == 0 {
            self.until(b"\r\n");
            return None;
        }
        while self.buffer.len() < size + 2 {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0);
            self.buffer.extend_from_slice(&chunk[..n]);
        }
        let data: Vec<u8> = self.buffer.drain(..size + 2).collect();
        Some(String::from_utf8(data[..size].to_vec()).unwrap())
    }

    /// The next `n` messages as (id, data), skipping keep-alive comments.
    fn messages(&mut self, n: usize) -> Vec<(String, Value)> {
        let mut messages = Vec::new();
        while messages.len() < n {
            let chunk = self.chunk().expect("messages, not the end");
            for message in chunk.split("\n\n").filter(|m| !m.is_empty() && !m.starts_with(':')) {
                let id = message.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().to_string();
                let data = message.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                messages.push((id, serde_json::from_str(data).unwrap()));
            }
        }
        messages
    }
}

#[test]
fn a_position_older_than_retention_continues_from_the_oldest_retained_event() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    let org = server.generate("retained", "pro");
    let posted: Vec<String> = (0..4).map(|n| post(&server, &org, n)).collect();
    let (_, after_first) = walk(&server, &org, String::new(), 1, 1);
    // Retention drops whole partitions; deleting the oldest rows is the same to a reader.
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let gone: Vec<uuid::Uuid> = posted[..2].iter().map(|id| id.parse().unwrap()).collect();
    client.execute("DELETE FROM events WHERE id = ANY($1)", &[&gone]).unwrap();
    let (rest, _) = walk(&server, &org, after_first, 100, 2);
    assert_eq!(rest, posted[2..], "the position's successor is gone: continue at the oldest retained");
}

#[test]
fn server_sent_events_stream_and_resume_with_last_event_id() {
    let server = Server::start(&[]);
    let org = server.generate("sse", "pro");
    let posted: Vec<String> = (0..3).map(|n| post(&server, &org, n)).collect();
    let mut source = EventSource::open(&server, &org, None);
    let first = source.messages(3);
    assert_eq!(first.iter().map(|(_, e)| e["id"].as_str().unwrap().to_string()).collect::<Vec<_>>(), posted);
    // Events committed while the stream is open arrive on it.
    let live = post(&server, &org, 3);
    assert_eq!(source.messages(1)[0].1["id"], live.as_str());
    drop(source);
    // Reconnecting after the second message continues exactly there.
    let mut resumed = EventSource::open(&server, &org, Some(&first[1].0));
    let rest = resumed.messages(2);
    assert_eq!(rest[0].1["id"], posted[2].as_str());
    assert_eq!(rest[1].1["id"], live.as_str());
}

#[test]
fn an_idle_event_stream_keeps_alive_without_reading_again() {
    let server = Server::start(&["--stream-keep-alive-ms", "100"]);
    let org = server.generate("quiet", "pro");
    let mut source = EventSource::open(&server, &org, None);
    let keep_alive = |source: &mut EventSource| {
        let chunk = source.chunk().expect("a keep-alive, not the end");
        assert_eq!(chunk, ": keep-alive\n\n");
    };
    keep_alive(&mut source);
    let pages = server.metric("triggerd_stream_pages_read_total");
    assert!(pages >= 1.0, "the stream read once before its first keep-alive");
    for _ in 0..3 {
        keep_alive(&mut source);
    }
    assert_eq!(server.metric("triggerd_stream_pages_read_total"), pages, "no notice, no read");
    // A commit wakes it: one read brings the event.
    let id = post(&server, &org, 0);
    assert_eq!(source.messages(1)[0].1["id"], id.as_str());
}

#[test]
fn shutdown_ends_an_event_stream_cleanly() {
    let server = Server::start(&[]);
    let org = server.generate("closing", "pro");
    post(&server, &org, 0);
    let mut source = EventSource::open(&server, &org, None);
    source.messages(1);
    let status = server.terminate();
    assert!(status.success());
    // Until the final chunk: a clean end.
    while let Some(data) = source.chunk() {
        assert!(data.starts_with(':') || data.contains("data: "), "{data}");
    }
}

#[test]
fn a_stream_page_reads_only_its_own_rows() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    let org = server.generate("deep", "pro");
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    insert_bulk_events(&mut client, org_id, 100_000);
    client.batch_execute("ANALYZE events").unwrap();
    // The history has one xid (one transaction inserted it): statistics then make the
    // rows after a position look few, and a planner left alone reads them all and
    // sorts. The stream lane's settings keep the page a range scan, from the start and
    // from the middle alike.
    client.batch_execute(triggerd::storage::stream::SESSION).unwrap();
    // As on every connection of the server (`storage::pg::Target`).
    client.batch_execute("SET jit = off").unwrap();
    let middle = client
        .query_one(
            "SELECT xid::text::int8, id FROM events WHERE org_id = $1 ORDER BY xid, id OFFSET 50000 LIMIT 1",
            &[&org_id],
        )
        .unwrap();
    let sql = format!("EXPLAIN (ANALYZE) {}", triggerd::storage::stream::stream_page_sql());
    for (xid, id) in [(0i64, uuid::Uuid::nil()), (middle.get(0), middle.get(1))] {
        let plan: Vec<String> = client
            .query(&sql, &[&org_id, &xid, &id, &101i64, &(4i64 << 20)])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        let scans: Vec<&str> = plan.lines().filter(|l| l.contains("Index") && l.contains("actual")).collect();
        assert!(!scans.is_empty() && !plan.contains("Seq Scan on events_p"), "{plan}");
        let rows: u64 = scans
            .iter()
            .filter_map(|l| l.split("rows=").nth(2)?.split(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(rows <= 1_000, "{rows} rows read for a page of 100 after ({xid}, {id}):\n{plan}");
    }
}
