//! Graceful shutdown: SIGTERM under load. Requests in progress are answered, clients
//! see clean closes (never a response cut short), every acknowledged event is stored,
//! and the process exits 0.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;

use common::{build_request, db, Server};

enum Outcome {
    /// A whole response: status, id of an accepted event, `Connection: close`.
    Response(u16, Option<String>, bool),
    /// The server closed (or reset) the connection before any byte of a response.
    ClosedBetweenResponses,
    /// The connection ended inside a response.
    Truncated(String),
}

fn exchange(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, request: &[u8]) -> Outcome {
    if stream.write_all(request).is_err() {
        return Outcome::ClosedBetweenResponses;
    }
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) | Err(_) => return Outcome::ClosedBetweenResponses,
        Ok(_) => {}
    }
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return Outcome::Truncated(format!("inside the head after {status_line:?}")),
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        close |= lower.starts_with("connection: close");
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return Outcome::Truncated("inside the body".into());
    }
    let id = (status == 202).then(|| {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json["id"].as_str().unwrap().to_string()
    });
    Outcome::Response(status, id, close)
}

#[test]
fn sigterm_under_load_answers_requests_in_progress_and_loses_nothing() {
    let server = Server::start(&[]);
    let org = server.generate("shutdown", "enterprise");
    let (sender, accepted) = mpsc::channel::<String>();
    let (problems_tx, problems) = mpsc::channel::<String>();
    let addr = server.addr;
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (sender, problems_tx) = (sender.clone(), problems_tx.clone());
            let key = org.key.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let headers = [("X-API-Key", key.as_str()), ("Content-Type", "application/json")];
                for n in 0.. {
                    let body = format!(r#"{{"type":"shutdown","payload":{{"c":{client},"n":{n}}}}}"#);
                    match exchange(
                        &mut stream,
                        &mut reader,
                        &build_request("POST", "/api/events", &headers, Some(&body)),
                    ) {
                        Outcome::Response(202, Some(id), close) => {
                            let _ = sender.send(id);
                            if close {
                                return;
                            }
                        }
                        Outcome::Response(status, _, close) => {
                            if status != 503 {
                                let _ = problems_tx.send(format!("status {status}"));
                            }
                            if close {
                                return;
                            }
                        }
                        Outcome::ClosedBetweenResponses => return,
                        Outcome::Truncated(where_) => {
                            let _ = problems_tx.send(format!("response cut short {where_}"));
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    drop((sender, problems_tx));
    let mut ids: Vec<String> = accepted.iter().take(300).collect();
    let status = server.terminate();
    for client in clients {
        client.join().unwrap();
    }
    ids.extend(accepted.iter());
    let problems: Vec<String> = problems.iter().collect();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(status.success(), "exit status {status}");
    let org_id: uuid::Uuid = org.id.parse().unwrap();
    let stored: HashSet<uuid::Uuid> = db()
        .query("SELECT id FROM events WHERE org_id = $1", &[&org_id])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &ids {
        assert!(stored.contains(&id.parse().unwrap()), "acknowledged event {id} missing after shutdown");
    }
    assert_eq!(stored.len(), ids.len(), "nothing stored that was not acknowledged");
    assert!(TcpStream::connect(addr).is_err(), "the listeners are closed");
}

#[test]
fn sigterm_when_idle_exits_promptly_and_closes_keep_alive_connections() {
    let server = Server::start(&[]);
    let mut idle = server.connect();
    assert_eq!(idle.request("GET", "/health", &[], None).status, 200);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(idle.is_closed_by_server(), "the idle keep-alive connection was closed cleanly");
}
