//! Hostile clients over real sockets: slowloris, a client that never reads, thousands
//! of idle connections (with the memory each costs), and the per-core connection limit.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Conn, Server};

/// Resident memory of a process, in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn slowloris_is_cut_off_without_holding_others_back() {
    let server = Server::start(&["--header-timeout-ms", "800"]);
    let mut slow = server.connect();
    let dripper = std::thread::spawn(move || {
        // One byte every 100 ms: the head never completes within the header timeout.
        for byte in b"GET /health HTTP/1.1\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.stream.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        slow
    });
    // Meanwhile, other clients are served.
    for _ in 0..20 {
        assert_eq!(server.request("GET", "/health", &[], None).status, 200);
    }
    let mut slow = dripper.join().unwrap();
    slow.read_response().assert_error(408, "request_timeout");
    assert!(slow.is_closed_by_server());
}

#[test]
fn a_client_that_never_reads_cannot_grow_server_memory() {
    let server = Server::start(&["--write-timeout-ms", "1000"]);
    let before = rss_kib(server.pid());
    let mut conn = server.connect();
    conn.stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // 40 MB of pipelined requests whose responses are never read.
    let burst = b"GET /health HTTP/1.1\r\n\r\n".repeat(10_000);
    let mut written = 0usize;
    while written < 40 << 20 {
        match conn.stream.write(&burst) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    let after = rss_kib(server.pid());
    assert!(
        written < 40 << 20,
        "the server stopped reading once its responses backed up ({written} bytes taken)"
    );
    assert!(after < before + 16 * 1024, "RSS grew from {before} KiB to {after} KiB");
    // The connection was closed by the write timeout; others are still served.
    let mut sink = [0u8; 65536];
    while matches!(conn.stream.read(&mut sink), Ok(n) if n > 0) {}
    assert_eq!(server.request("GET", "/health", &[], None).status, 200);
}

#[test]
fn thousands_of_idle_connections_fit_a_small_memory_budget() {
    const CONNECTIONS: usize = 2000;
    /// The documented budget per idle keep-alive connection (README, tuning guide).
    const BUDGET_BYTES: u64 = 16 * 1024;
    let server = Server::start(&[]);
    let mut warm = server.connect();
    assert_eq!(warm.request("GET", "/health", &[], None).status, 200);
    let before = rss_kib(server.pid());
    let mut idle: Vec<Conn> = (0..CONNECTIONS).map(|_| server.connect()).collect();
    for conn in &mut idle {
        assert_eq!(conn.request("GET", "/health", &[], None).status, 200);
    }
    let after = rss_kib(server.pid());
    let per_connection = (after.saturating_sub(before)) * 1024 / CONNECTIONS as u64;
    eprintln!("{CONNECTIONS} idle connections: RSS {before} KiB -> {after} KiB, {per_connection} bytes each");
    assert!(per_connection <= BUDGET_BYTES, "{per_connection} bytes per idle connection");
    for conn in idle.iter_mut().step_by(97) {
        assert_eq!(conn.request("GET", "/health", &[], None).status, 200, "still served");
    }
}

#[test]
fn connections_beyond_the_per_core_limit_get_503() {
    let server = Server::start(&["--connections-per-core-max", "3"]);
    let mut open: Vec<Conn> = (0..16).map(|_| server.connect()).collect();
    let mut ok = 0;
    let mut refused = 0;
    let mut admitted = Vec::new();
    for (i, conn) in open.iter_mut().enumerate() {
        conn.send(b"GET /health HTTP/1.1\r\n\r\n");
        let response = conn.read_response();
        match response.status {
            200 => {
                ok += 1;
                admitted.push(i);
            }
            503 => {
                response.assert_error(503, "overloaded");
                assert_eq!(response.header("Retry-After"), Some("1"));
                assert_eq!(response.header("Connection"), Some("close"));
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok <= 6, "at most 3 per core on 2 cores: {ok}");
    assert_eq!(ok + refused, 16);
    // Refused connections are closed; admitted ones keep being served.
    for i in admitted {
        assert_eq!(open[i].request("GET", "/health", &[], None).status, 200);
    }
}
