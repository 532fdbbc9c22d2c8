//! Rate limits across instances: two servers on one database share an organisation's
//! window through its budget row (each leases slices of it and admits from them
//! locally), so exactly the limit is admitted per window however the traffic splits;
//! an instance that shuts down gives its unused slice back; and the budget row's
//! statement, driven with an injected clock, never leases more than the limit.

mod common;

use common::{FreshDatabase, Response, Server};
use triggerd::model::ratelimit::WINDOW_MS;
use triggerd::storage::pg::PrepareStatements;
use triggerd::storage::ratelimit::{give_back, lease_many, LeaseRequest, RateStatements};
use uuid::Uuid;

const EVENT: &str = r#"{"type":"t","payload":{}}"#;

fn header(response: &Response, name: &str) -> u64 {
    response.header(name).unwrap_or_else(|| panic!("{name} missing")).parse().unwrap()
}

#[test]
fn the_limit_is_exact_across_two_instances() {
    let database = FreshDatabase::new();
    let (a, b) = (Server::start_on(&database.url, &[]), Server::start_on(&database.url, &[]));
    let org = a.generate("two-instances", "free");
    // 10 connections on each instance, 15 events each: 300 for a limit of 100.
    let responses: Vec<(char, Response)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (name, server) = if i % 2 == 0 { ('a', &a) } else { ('b', &b) };
                let mut conn = server.connect();
                let org = &org;
                scope.spawn(move || {
                    (0..15)
                        .map(|_| (name, conn.request("POST", "/api/events", &org.headers(), Some(EVENT))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let count = |status: u16| responses.iter().filter(|(_, r)| r.status == status).count();
    assert_eq!((count(202), count(429)), (100, 200), "exactly the limit, the rest refused");
    let mut resets = Vec::new();
    for (instance, response) in &responses {
        assert_eq!(header(response, "X-RateLimit-Limit"), 100);
        assert_eq!(response.header("RateLimit-Policy"), Some("\"tier\";q=100;w=60"));
        let reset = header(response, "X-RateLimit-Reset");
        assert!((1..=60).contains(&reset), "{reset}");
        if response.status == 429 {
            response.assert_error(429, "rate_limited");
            assert_eq!(header(response, "X-RateLimit-Remaining"), 0);
            assert_eq!(header(response, "Retry-After"), reset);
            resets.push((*instance, reset));
        } else {
            assert!(header(response, "X-RateLimit-Remaining") < 100);
        }
    }
    // One window, agreed through the row: both instances count down to the same end.
    for instance in ['a', 'b'] {
        assert!(resets.iter().any(|(i, _)| *i == instance), "instance {instance} refused some");
    }
    let (low, high) = resets.iter().fold((u64::MAX, 0), |(l, h), (_, r)| (l.min(*r), h.max(*r)));
    assert!(high - low <= 2, "resets {low}..={high} s: one window for both instances");
    assert_eq!(common::event_count(&mut common::db_at(&database.url), &org.id), 100, "a 429 stores nothing");
    let leases = a.metric("triggerd_rate_leases_total") + b.metric("triggerd_rate_leases_total");
    let waits = a.metric("triggerd_rate_limit_waits_total") + b.metric("triggerd_rate_limit_waits_total");
    eprintln!("{leases} leases and {waits} waits for 100 admissions over two instances");
    assert!(leases < 50.0, "slices, not a lease per event: {leases}");
}

#[test]
fn an_instance_that_shuts_down_gives_its_unused_slice_back() {
    let database = FreshDatabase::new();
    let a = Server::start_on(&database.url, &[]);
    let org = a.generate("gives-back", "free");
    let mut conn = a.connect();
    for _ in 0..10 {
        assert_eq!(conn.request("POST", "/api/events", &org.headers(), Some(EVENT)).status, 202);
    }
    drop(conn);
    let mut client = common::db_at(&database.url);
    let org_id: Uuid = org.id.parse().unwrap();
    let used = |client: &mut postgres::Client| -> i32 {
        client.query_one("SELECT used FROM rate_budgets WHERE org_id = $1", &[&org_id]).unwrap().get(0)
    };
    let leased = used(&mut client);
    assert!(leased > 10, "A leased ahead of its traffic: {leased}");
    assert!(a.terminate().success());
    assert_eq!(used(&mut client), 10, "what A did not admit went back");
    // Another instance gets the rest of the window, exactly.
    let b = Server::start_on(&database.url, &[]);
    let mut conn = b.connect();
    let statuses: Vec<u16> =
        (0..95).map(|_| conn.request("POST", "/api/events", &org.headers(), Some(EVENT)).status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 202).count(), 90, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 5);
}

/// One lease of `org`, as a batch of one: (window start, used, granted).
async fn one(
    client: &tokio_postgres::Client,
    statements: &RateStatements,
    org: Uuid,
    now_ms: u64,
    (want, need): (u32, u32),
) -> (u64, u32, u32) {
    let request = LeaseRequest { org_id: org, now_ms, want, need, limit: 100 };
    let lease = lease_many(client, statements, &[request]).await.unwrap()[&org];
    (lease.window_start_ms, lease.used, lease.granted)
}

#[test]
fn the_budget_row_never_leases_more_than_the_limit() {
    let database = FreshDatabase::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let connect = || async {
        let (client, connection) =
            tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let statements = RateStatements::prepare(&client).await.unwrap();
        (client, statements)
    };
    runtime.block_on(async {
        let (mut client, connection) =
            tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        triggerd::storage::migrations::migrate(&mut client).await.unwrap();
        let (client, statements) = connect().await;
        let (org, t0) = (Uuid::now_v7(), 1_790_000_000_000u64);
        // A fresh row opens the window at the asking `now`.
        assert_eq!(one(&client, &statements, org, t0, (10, 0)).await, (t0, 10, 10));
        // At most half of what is left ...
        assert_eq!(one(&client, &statements, org, t0 + 1, (80, 0)).await, (t0, 55, 45));
        // ... unless the waiting requests need more, and never more than is left.
        assert_eq!(one(&client, &statements, org, t0 + 2, (80, 40)).await, (t0, 95, 40));
        let mut tail = Vec::new();
        for (now, ask) in [(t0 + 3, (10, 0)), (t0 + 4, (10, 0)), (t0 + 5, (10, 0)), (t0 + 59_999, (10, 10))] {
            tail.push(one(&client, &statements, org, now, ask).await.2);
        }
        assert_eq!(tail, vec![3, 1, 1, 0], "shrinking slices, then nothing until the window ends");
        // Given back within the window: leasable again; to an ended window: ignored.
        assert!(give_back(&client, org, t0, 5).await.unwrap());
        assert!(!give_back(&client, org, t0 - WINDOW_MS, 5).await.unwrap());
        assert_eq!(one(&client, &statements, org, t0 + 59_999, (10, 0)).await, (t0, 98, 3));
        // The next window starts at the first lease after this one's end.
        let next = t0 + WINDOW_MS + 7;
        assert_eq!(one(&client, &statements, org, next, (5, 0)).await, (next, 5, 5));

        // Eight instances leasing batches of the same three organisations at once, in
        // different orders: no deadlock, and each window's grants add up to its limit.
        let orgs = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let mut tasks = Vec::new();
        for instance in 0..8usize {
            let (client, statements) = connect().await;
            tasks.push(tokio::spawn(async move {
                let mut granted = [0u32; 3];
                for round in 0..5usize {
                    let mut batch: Vec<LeaseRequest> = (0..3)
                        .map(|i| LeaseRequest { org_id: orgs[i], now_ms: t0, want: 7, need: 3, limit: 100 })
                        .collect();
                    batch.rotate_left((instance + round) % 3);
                    let leases = lease_many(&client, &statements, &batch).await.unwrap();
                    for (i, org) in orgs.iter().enumerate() {
                        granted[i] += leases[org].granted;
                    }
                }
                granted
            }));
        }
        let mut totals = [0u32; 3];
        for task in tasks {
            for (total, granted) in totals.iter_mut().zip(task.await.unwrap()) {
                *total += granted;
            }
        }
        assert_eq!(totals, [100, 100, 100], "8 x 5 x 7 asked for, each limit granted exactly");
    });
}
