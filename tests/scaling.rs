//! Two instances on one database: dedup holds exactly (the database is the authority),
//! and a key rotated on one instance is refused by the other within a second
//! (PostgreSQL LISTEN/NOTIFY carries the revocation).

mod common;

use std::time::{Duration, Instant};

use common::receiver::eventually;
use common::{FreshDatabase, Server};

#[test]
fn dedup_holds_across_instances() {
    let database = FreshDatabase::new();
    let (a, b) = (Server::start_on(&database.url, &[]), Server::start_on(&database.url, &[]));
    let org = a.generate("two-instances", "pro");
    let body = r#"{"type":"t","payload":{},"dedup_id":"across"}"#;
    let barrier = std::sync::Barrier::new(40);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let mut conn = if i % 2 == 0 { a.connect() } else { b.connect() };
                let (org, barrier) = (&org, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    conn.request("POST", "/api/events", &org.headers(), Some(body)).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|&&s| s == 202).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 409).count(), 39);
}

#[test]
fn a_key_rotated_on_one_instance_is_refused_by_the_other_within_a_second() {
    let database = FreshDatabase::new();
    let (a, b) = (Server::start_on(&database.url, &[]), Server::start_on(&database.url, &[]));
    let org = a.generate("rotated-across", "pro");
    // Instance B caches the key on both its cores.
    let mut warmed: Vec<_> = (0..16).map(|_| b.connect()).collect();
    for conn in &mut warmed {
        assert_eq!(conn.request("GET", "/api/keys", &[("X-API-Key", &org.key)], None).status, 200);
    }
    let rotated = a.request("POST", "/api/keys/rotate", &[("X-API-Key", &org.key)], None);
    let rotated_at = Instant::now();
    assert_eq!(rotated.status, 200);
    let new_key = rotated.json()["api_key"].as_str().unwrap().to_string();
    for conn in &mut warmed {
        eventually(Duration::from_secs(5), "instance B refuses the old key", || {
            conn.request("GET", "/api/keys", &[("X-API-Key", &org.key)], None).status == 401
        });
    }
    let bound = rotated_at.elapsed();
    assert!(bound < Duration::from_secs(1), "revocation reached every core of B after {bound:?}");
    assert_eq!(b.request("GET", "/api/keys", &[("X-API-Key", &new_key)], None).status, 200);
    eprintln!("old key refused on all of instance B's connections {bound:?} after the rotation answered");
}
