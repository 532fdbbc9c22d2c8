//! A small blocking HTTP/1.1 server on a thread of its own for one read-only text
//! resource: the `--metrics-listen` port. `GET`/`HEAD` of its path answer what
//! `render` returns; any other path is 404, any other method 405.
//!
//! One connection at a time and one request per connection (answered with
//! `Connection: close`), every read and write bounded by `IO_TIMEOUT`: a scraper that
//! stalls delays the next scrape by that much at most, and nothing here ever touches
//! an HTTP core. Prometheus scrapes every few seconds; nothing more is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::parser::{parse_head, HeadError, Method, HEAD_BYTES_MAX};
use super::response::{self, ResponseBuf};

/// Longest a read or write of one connection may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `path` on `listener` from a new thread until the process exits; returns the
/// address it serves on.
pub fn start(
    listener: TcpListener,
    path: &'static str,
    content_type: &'static [u8],
    render: impl Fn() -> String + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let address = listener.local_addr()?;
    std::thread::Builder::new().name("triggerd-metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => serve(stream, path, content_type, &render),
                // Out of descriptors, say: the next scrape tries again.
                Err(e) => tracing::debug!(error = %e, "metrics listener: accept failed"),
            }
        }
    })?;
    Ok(address)
}

fn serve(mut stream: TcpStream, path: &str, content_type: &'static [u8], render: &dyn Fn() -> String) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut buffer = vec![0u8; 1024];
    let mut filled = 0;
    let head = loop {
        match parse_head(&buffer[..filled]) {
            Ok(head) => break Ok(head),
            Err(HeadError::Incomplete) if filled < HEAD_BYTES_MAX => {}
            Err(error) => break Err(error),
        }
        if filled == buffer.len() {
            buffer.resize((buffer.len() * 2).min(HEAD_BYTES_MAX + 1), 0);
        }
        match stream.read(&mut buffer[filled..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
    };
    let mut answer = ResponseBuf::default();
    let (status, head_only) = match head {
        Err(error) => (error_body(&mut answer, error.status(), "malformed request"), false),
        Ok(head) => {
            let target = std::str::from_utf8(&buffer[head.target.clone()]).unwrap_or("");
            let requested = target.split_once('?').map_or(target, |(path, _)| path);
            match head.method {
                _ if requested != path => (error_body(&mut answer, 404, "not found"), false),
                Method::Get | Method::Head => {
                    answer.body.extend_from_slice(render().as_bytes());
                    answer.content_type = Some(content_type);
                    (200, head.method == Method::Head)
                }
                _ => {
                    answer.header(b"Allow", b"GET, HEAD");
                    (error_body(&mut answer, 405, "method not allowed"), false)
                }
            }
        }
    };
    let mut out = Vec::with_capacity(answer.body.len() + 256);
    response::write(&mut out, status, &answer, true, head_only);
    let _ = stream.write_all(&out);
}

/// A JSON error body like the API's; returns the status.
fn error_body(answer: &mut ResponseBuf, status: u16, message: &str) -> u16 {
    let code = match status {
        404 => "not_found",
        405 => "method_not_allowed",
        431 => "headers_too_large",
        _ => "invalid_request",
    };
    crate::util::json::ObjectWriter::new(&mut answer.body)
        .str("error", code)
        .str("message", message)
        .finish();
    status
}
