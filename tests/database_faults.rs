//! Database faults over real sockets: PostgreSQL stopped and restarted under load, its
//! connections killed under load, and one event the database refuses inside a batch.
//! The first two run on a private cluster each test starts and stops itself.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::receiver::eventually;
use common::{FreshDatabase, Server};

const WAIT: Duration = Duration::from_secs(30);

/// A PostgreSQL cluster of the test's own, through `triggerd local-pg`.
struct Cluster {
    dir: PathBuf,
    port: String,
    url: String,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("triggerd-fault-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = (40_000 + uuid::Uuid::now_v7().as_u128() % 20_000).to_string();
        let mut cluster = Cluster { dir, port, url: String::new() };
        cluster.url = cluster.local_pg("start");
        cluster
    }

    fn local_pg(&self, action: &str) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
            .args(["local-pg", action, "--data-dir"])
            .arg(self.dir.join("pg"))
            .args(["--port", &self.port])
            .output()
            .unwrap();
        assert!(output.status.success(), "local-pg {action}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.local_pg("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ready(server: &Server) -> u16 {
    server.request("GET", "/health/ready", &[], None).status
}

/// Sets `stop` when dropped, so a failing assertion in a scope's main body stops the
/// load threads instead of leaving the scope waiting for them forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Posts events from `clients` connections until `stop`; every response goes to `results`.
fn load(
    server: &Server,
    org: &common::Org,
    clients: usize,
    stop: &AtomicBool,
    results: &mpsc::Sender<(u16, Option<String>, Option<String>)>,
) {
    std::thread::scope(|scope| {
        for client in 0..clients {
            let (results, addr) = (results.clone(), server.addr);
            scope.spawn(move || {
                let mut conn = common::Conn::new(addr);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!(r#"{{"type":"fault","payload":{{"c":{client},"n":{n}}}}}"#);
                    let response = conn.request("POST", "/api/events", &org.headers(), Some(&body));
                    let id =
                        (response.status == 202).then(|| response.json()["id"].as_str().unwrap().to_string());
                    let retry_after = response.header("Retry-After").map(str::to_string);
                    if results.send((response.status, id, retry_after)).is_err() {
                        return;
                    }
                    n += 1;
                }
            });
        }
    });
}

fn assert_stored_exactly_once(client: &mut postgres::Client, org_id: &str, accepted: &[String]) {
    let org: uuid::Uuid = org_id.parse().unwrap();
    let stored: Vec<uuid::Uuid> = client
        .query("SELECT id FROM events WHERE org_id = $1", &[&org])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let set: HashSet<_> = stored.iter().copied().collect();
    assert_eq!(set.len(), stored.len(), "no event stored twice");
    for id in accepted {
        assert!(set.contains(&id.parse().unwrap()), "acknowledged event {id} is missing");
    }
}

#[test]
fn postgres_restarted_under_load_loses_no_acknowledged_event() {
    let cluster = Cluster::start();
    let server = Server::start_on(&cluster.url, &[]);
    let org = server.generate("faults", "enterprise");
    let stop = AtomicBool::new(false);
    let (sender, results) = mpsc::channel();
    let mut accepted: Vec<String> = Vec::new();
    let mut refused = 0;
    std::thread::scope(|scope| {
        let (server_ref, org_ref, stop_ref) = (&server, &org, &stop);
        let _stop_on_panic = StopOnDrop(&stop);
        scope.spawn(move || load(server_ref, org_ref, 4, stop_ref, &sender));
        let take = |until_accepted: usize, accepted: &mut Vec<String>, refused: &mut usize| {
            while accepted.len() < until_accepted {
                let (status, id, retry_after) =
                    results.recv_timeout(WAIT).expect("clients keep getting answers");
                match status {
                    202 => accepted.push(id.unwrap()),
                    503 => {
                        assert_eq!(retry_after.as_deref(), Some("1"));
                        *refused += 1;
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
        };
        take(200, &mut accepted, &mut refused);
        cluster.local_pg("stop");
        eventually(WAIT, "/health/ready says 503 while PostgreSQL is down", || ready(&server) == 503);
        // Ingest refuses with 503 + Retry-After; nothing is acknowledged while down.
        for _ in 0..5 {
            let response = org.post_event(&server, r#"{"type":"while.down","payload":{}}"#);
            response.assert_error(503, "overloaded");
            assert_eq!(response.header("Retry-After"), Some("1"));
        }
        cluster.local_pg("start");
        eventually(WAIT, "ready again after the restart", || ready(&server) == 200);
        let before = accepted.len();
        take(before + 200, &mut accepted, &mut refused);
        stop.store(true, Ordering::Relaxed);
        for (status, id, _) in results.iter() {
            if status == 202 {
                accepted.push(id.unwrap());
            }
        }
    });
    eprintln!("accepted {} events, refused {refused} while PostgreSQL was down", accepted.len());
    assert_stored_exactly_once(&mut cluster.client(), &org.id, &accepted);
}

#[test]
fn killed_connections_are_reopened_and_lose_nothing() {
    let cluster = Cluster::start();
    let server = Server::start_on(&cluster.url, &[]);
    let org = server.generate("terminated", "enterprise");
    let stop = AtomicBool::new(false);
    let (sender, results) = mpsc::channel();
    let mut accepted: Vec<String> = Vec::new();
    std::thread::scope(|scope| {
        let (server_ref, org_ref, stop_ref) = (&server, &org, &stop);
        let _stop_on_panic = StopOnDrop(&stop);
        scope.spawn(move || load(server_ref, org_ref, 4, stop_ref, &sender));
        let mut killed_rounds = 0;
        while accepted.len() < 900 {
            let (status, id, _) = results.recv_timeout(WAIT).expect("answers keep coming");
            assert!(status == 202 || status == 503, "unexpected status {status}");
            if let Some(id) = id {
                accepted.push(id);
                if accepted.len().is_multiple_of(300) {
                    let killed: i64 = cluster
                        .client()
                        .query_one(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                            &[],
                        )
                        .unwrap()
                        .get(0);
                    assert!(killed >= 1);
                    killed_rounds += 1;
                }
            }
        }
        assert_eq!(killed_rounds, 3);
        stop.store(true, Ordering::Relaxed);
        accepted.extend(results.iter().filter_map(|(status, id, _)| (status == 202).then(|| id.unwrap())));
    });
    assert_stored_exactly_once(&mut cluster.client(), &org.id, &accepted);
    eventually(WAIT, "ready after the kills", || ready(&server) == 200);
    assert_eq!(org.post_event(&server, r#"{"type":"after","payload":{}}"#).status, 202);
}

#[test]
fn one_event_the_database_refuses_does_not_fail_its_batch() {
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    // Stand-in for any data-dependent failure inside PostgreSQL.
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    client
        .batch_execute("ALTER TABLE events ADD CONSTRAINT no_poison CHECK (NOT (payload ? 'poison'))")
        .unwrap();
    let org = server.generate("poisoned", "pro");
    let entries: Vec<String> = (0..20)
        .map(|i| {
            if i == 7 {
                r#"{"type":"bad","payload":{"poison":true}}"#.to_string()
            } else {
                format!(r#"{{"type":"good","payload":{{"i":{i}}}}}"#)
            }
        })
        .collect();
    let body = format!(r#"{{"events":[{}]}}"#, entries.join(","));
    let response = server.request("POST", "/api/events/batch", &org.headers(), Some(&body));
    let results = response.json()["results"].as_array().unwrap().clone();
    for (i, result) in results.iter().enumerate() {
        if i == 7 {
            assert_eq!(result["status"], "invalid", "{result}");
            assert!(result["error"].as_str().unwrap().contains("no_poison"), "{result}");
        } else {
            assert_eq!(result["status"], "accepted", "{result}");
        }
    }
    let single = org.post_event(&server, r#"{"type":"bad","payload":{"poison":1}}"#);
    assert_eq!(single.assert_error(400, "invalid_request")["field"], "payload");
    assert_eq!(common::event_count(&mut client, &org.id), 19);
}

#[test]
fn a_batch_failing_for_a_reason_other_than_its_data_is_a_503_not_a_400() {
    // Regression: a batch that failed with a database error not caused by its data (a
    // terminated backend, a cancelled statement) was retried event by event, and each
    // event was answered 400 "the database refused this event". A trigger raises such
    // an error (SQLSTATE 57014, query_canceled) for marked events.
    let database = FreshDatabase::new();
    let server = Server::start_on(&database.url, &[]);
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "CREATE FUNCTION cancel_marked() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.payload ? 'cancel' THEN
                     RAISE EXCEPTION 'canceling statement' USING ERRCODE = '57014';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER cancel_marked BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION cancel_marked();",
        )
        .unwrap();
    let org = server.generate("cancelled", "pro");
    let response = org.post_event(&server, r#"{"type":"t","payload":{"cancel":true}}"#);
    response.assert_error(503, "overloaded");
    assert_eq!(response.header("Retry-After"), Some("1"));
    assert_eq!(common::event_count(&mut client, &org.id), 0, "the refused event was not stored");
    assert_eq!(org.post_event(&server, r#"{"type":"t","payload":{}}"#).status, 202);
}
