//! Invariant 3: a 202 means committed. The server is SIGKILLed under concurrent load;
//! afterwards every id that got a 202 is in the database exactly once, and a restarted
//! server accepts events again.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use common::{db, Server};

#[test]
fn every_acknowledged_event_survives_sigkill() {
    let server = Server::start(&[]);
    let org = server.generate("crash", "enterprise");
    let stop = AtomicBool::new(false);
    let (sender, acknowledged) = mpsc::channel::<String>();
    const CLIENTS: usize = 8;
    const KILL_AFTER: usize = 400;
    let ids: Vec<String> = std::thread::scope(|scope| {
        for client in 0..CLIENTS {
            let (org, stop, sender) = (&org, &stop, sender.clone());
            let addr = server.addr;
            scope.spawn(move || {
                let mut conn = common::Conn::new(addr);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!(r#"{{"type":"crash.test","payload":{{"client":{client},"n":{n}}}}}"#);
                    let request = common::build_request("POST", "/api/events", &org.headers(), Some(&body));
                    if std::io::Write::write_all(&mut conn.stream, &request).is_err() {
                        return;
                    }
                    // The kill may cut the response; only complete 202s count.
                    let response =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.read_response()));
                    match response {
                        Ok(r) if r.status == 202 => {
                            let _ = sender.send(r.json()["id"].as_str().unwrap().to_string());
                        }
                        Ok(r) => panic!("unexpected status {} {}", r.status, r.text()),
                        Err(_) => return,
                    }
                    n += 1;
                }
            });
        }
        drop(sender);
        let mut ids = Vec::new();
        while ids.len() < KILL_AFTER {
            ids.push(acknowledged.recv().expect("clients stopped before the kill"));
        }
        let pid = server.pid();
        server.kill();
        stop.store(true, Ordering::Relaxed);
        ids.extend(acknowledged.iter());
        eprintln!("killed pid {pid} after {} acknowledged events", ids.len());
        ids
    });

    let org_id: uuid::Uuid = org.id.parse().unwrap();
    let stored: Vec<uuid::Uuid> = db()
        .query("SELECT id FROM events WHERE org_id = $1", &[&org_id])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let stored_set: HashSet<_> = stored.iter().copied().collect();
    assert_eq!(stored_set.len(), stored.len(), "no event is stored twice");
    for id in &ids {
        let id: uuid::Uuid = id.parse().unwrap();
        assert!(stored_set.contains(&id), "acknowledged event {id} is missing after the crash");
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "ids are unique");

    let restarted = Server::start(&[]);
    let response = org.post_event(&restarted, r#"{"type":"after.crash","payload":{}}"#);
    assert_eq!(response.status, 202, "{}", response.text());
}
