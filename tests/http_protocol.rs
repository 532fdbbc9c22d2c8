//! The HTTP/1.1 layer over real sockets, byte for byte: keep-alive, pipelining, split
//! reads, chunked bodies, HTTP/1.0, limits, timeouts, Expect: 100-continue.

mod common;

use common::{build_request, Conn, Server};

fn without_date(response: &str) -> String {
    response
        .split("\r\n")
        .map(|line| match line {
            l if l.starts_with("Date: ") => "Date: *",
            l if l.starts_with("X-Request-Id: ") => "X-Request-Id: *",
            l => l,
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[test]
fn health_answers_exact_bytes_and_keeps_the_connection() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    for _ in 0..3 {
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut raw = vec![0u8; 4096];
        let n = std::io::Read::read(&mut conn.stream, &mut raw).unwrap();
        let text = String::from_utf8(raw[..n].to_vec()).unwrap();
        assert_eq!(
            without_date(&text),
            "HTTP/1.1 200 OK\r\nServer: triggerd\r\nContent-Type: application/json\r\nDate: *\r\n\
             Content-Length: 15\r\nX-Request-Id: *\r\n\r\n{\"status\":\"ok\"}"
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let mut burst = Vec::new();
    burst.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
    burst.extend_from_slice(b"GET /missing HTTP/1.1\r\n\r\n");
    burst.extend_from_slice(b"DELETE /health HTTP/1.1\r\n\r\n");
    burst.extend_from_slice(&build_request(
        "POST",
        "/api/keys/generate",
        &[("Content-Type", "application/json")],
        Some(r#"{"organization_name":"pipelined"}"#),
    ));
    burst.extend_from_slice(b"GET /health/ready HTTP/1.1\r\n\r\n");
    conn.send(&burst);
    assert_eq!(conn.read_response().status, 200);
    conn.read_response().assert_error(404, "not_found");
    let not_allowed = conn.read_response();
    not_allowed.assert_error(405, "method_not_allowed");
    assert_eq!(not_allowed.header("Allow"), Some("GET, HEAD"));
    assert_eq!(conn.read_response().status, 201);
    assert_eq!(conn.read_response().json()["status"], "ready");
}

#[test]
fn requests_split_into_single_bytes_are_reassembled() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let request = build_request(
        "POST",
        "/api/keys/generate",
        &[("Content-Type", "application/json")],
        Some(r#"{"organization_name":"byte by byte","tier":"pro"}"#),
    );
    for byte in &request {
        conn.send(std::slice::from_ref(byte));
    }
    let response = conn.read_response();
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json()["tier"], "pro");
}

#[test]
fn chunked_bodies_are_decoded() {
    let server = Server::start(&[]);
    let org = server.generate("chunked", "free");
    let mut conn = server.connect();
    let body = r#"{"type":"chunked.event","payload":{"parts":3}}"#;
    let (a, rest) = body.split_at(10);
    let (b, c) = rest.split_at(20);
    let request = format!(
        "POST /api/events HTTP/1.1\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n{:x}\r\n{c}\r\n0\r\nX-Trailer: t\r\n\r\n",
        org.key,
        a.len(),
        b.len(),
        c.len()
    );
    conn.send(request.as_bytes());
    let response = conn.read_response();
    assert_eq!(response.status, 202, "{}", response.text());
    // The connection stays usable after a chunked body.
    conn.send(b"GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(conn.read_response().status, 200);
}

#[test]
fn chunked_body_over_the_limit_is_cut_off_with_413() {
    let server = Server::start(&[]);
    let org = server.generate("chunked-big", "free");
    let mut conn = server.connect();
    let head = format!(
        "POST /api/events HTTP/1.1\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        org.key
    );
    conn.send(head.as_bytes());
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
    for _ in 0..5 {
        if conn.stream.write_all_ok(chunk.as_bytes()) {
            continue;
        }
        break;
    }
    let response = conn.read_response();
    response.assert_error(413, "payload_too_large");
    assert_eq!(response.header("Connection"), Some("close"));
}

trait WriteAllOk {
    fn write_all_ok(&mut self, bytes: &[u8]) -> bool;
}

impl WriteAllOk for std::net::TcpStream {
    fn write_all_ok(&mut self, bytes: &[u8]) -> bool {
        std::io::Write::write_all(self, bytes).is_ok()
    }
}

#[test]
fn content_length_over_the_limit_gets_413_before_the_body_is_sent() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.send(
        b"POST /api/events HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 262145\r\n\r\n",
    );
    let response = conn.read_response();
    response.assert_error(413, "payload_too_large");
    assert!(conn.is_closed_by_server());
}

#[test]
fn http10_is_served_as_http11_and_closed() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.send(b"GET /health HTTP/1.0\r\n\r\n");
    let response = conn.read_response();
    assert_eq!((response.version.as_str(), response.status), ("HTTP/1.1", 200));
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(conn.is_closed_by_server());
}

#[test]
fn connection_close_is_honoured_after_the_response() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.send(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\nGET /health HTTP/1.1\r\n\r\n");
    assert_eq!(conn.read_response().status, 200);
    assert!(conn.is_closed_by_server(), "the pipelined request after Connection: close is not served");
}

#[test]
fn oversized_heads_get_431_and_close() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let request = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(17 * 1024));
    conn.send(request.as_bytes());
    conn.read_response().assert_error(431, "headers_too_large");
    assert!(conn.is_closed_by_server());

    let mut conn = server.connect();
    let mut request = String::from("GET /health HTTP/1.1\r\n");
    for i in 0..100 {
        request.push_str(&format!("X-{i}: v\r\n"));
    }
    request.push_str("\r\n");
    conn.send(request.as_bytes());
    conn.read_response().assert_error(431, "headers_too_large");
}

#[test]
fn ambiguous_framing_gets_400_and_close() {
    let server = Server::start(&[]);
    for request in [
        &b"POST /api/events HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}"[..],
        b"POST /api/events HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /api/events HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    ] {
        let mut conn = server.connect();
        conn.send(request);
        conn.read_response().assert_error(400, "invalid_request");
        assert!(conn.is_closed_by_server());
    }
}

#[test]
fn malformed_request_lines_get_400() {
    let server = Server::start(&[]);
    for request in [
        &b"HELLO\r\n\r\n"[..],
        b"GET /health HTTP/9.9\r\n\r\n",
        b"GET health HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\r\n\r\n",
    ] {
        let mut conn = server.connect();
        conn.send(request);
        conn.read_response().assert_error(400, "invalid_request");
    }
}

#[test]
fn expect_100_continue_gets_an_interim_response() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let body = r#"{"organization_name":"patient"}"#;
    let head = format!(
        "POST /api/keys/generate HTTP/1.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.send(head.as_bytes());
    assert_eq!(conn.read_response().status, 100);
    conn.send(body.as_bytes());
    assert_eq!(conn.read_response().status, 201);
}

#[test]
fn a_stalled_head_gets_408_after_the_header_timeout() {
    let server = Server::start(&["--header-timeout-ms", "300"]);
    let mut conn = server.connect();
    conn.send(b"GET /health HTTP/1.1\r\nX-Slow: ");
    // Blocks until the server gives up on the head: the server's timer is the clock.
    let response = conn.read_response();
    response.assert_error(408, "request_timeout");
    assert!(conn.is_closed_by_server());
    // Other clients were served meanwhile and still are.
    assert_eq!(server.request("GET", "/health", &[], None).status, 200);
}

#[test]
fn head_requests_get_headers_without_a_body() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.send(b"HEAD /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n");
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&all).contains("{\"status\":\"ok\"}") {
        let n = std::io::Read::read(&mut conn.stream, &mut chunk).unwrap();
        assert!(n > 0);
        all.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2);
    assert_eq!(text.matches("{\"status\":\"ok\"}").count(), 1, "HEAD carries no body: {text}");
}

#[test]
fn unsupported_transfer_encoding_is_refused() {
    let server = Server::start(&[]);
    let mut conn = Conn::new(server.addr);
    conn.send(b"POST /api/events HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
    conn.read_response().assert_error(400, "invalid_request");
    assert!(conn.is_closed_by_server());
}

#[test]
fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout-ms", "200"]);
    let mut conn = server.connect();
    conn.send(b"GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(conn.read_response().status, 200);
    // Nothing more is sent: the server's idle timer closes the connection quietly.
    assert!(conn.is_closed_by_server());
}

#[test]
fn a_stalled_body_gets_408_after_the_body_timeout() {
    let server = Server::start(&["--body-timeout-ms", "300"]);
    let mut conn = server.connect();
    conn.send(b"POST /api/keys/generate HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"organ");
    let response = conn.read_response();
    response.assert_error(408, "request_timeout");
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(conn.is_closed_by_server());
}

#[test]
fn an_answer_is_not_held_back_while_the_next_body_is_awaited() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let body = r#"{"organization_name":"second"}"#;
    let head = format!(
        "POST /api/keys/generate HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // The first request and only the head of the second: the first is answered
    // before the second's body is sent (the read timeout of Conn is the guard).
    conn.send(&[&b"GET /health HTTP/1.1\r\n\r\n"[..], head.as_bytes()].concat());
    assert_eq!(conn.read_response().status, 200);
    conn.send(body.as_bytes());
    assert_eq!(conn.read_response().status, 201);
}

#[test]
fn expect_100_continue_is_not_answered_when_the_body_came_along() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let request = build_request(
        "POST",
        "/api/keys/generate",
        &[("Content-Type", "application/json"), ("Expect", "100-continue")],
        Some(r#"{"organization_name":"impatient"}"#),
    );
    conn.send(&request);
    assert_eq!(conn.read_response().status, 201, "no interim response before the final one");
}
