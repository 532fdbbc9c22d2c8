//! Response writing: pre-rendered status lines and common headers, a per-core cached
//! `Date`, and one `write` that frames a head and body into the connection's output
//! buffer. Nothing here allocates once the buffers have warmed up.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::util::time::http_date;

/// Status lines with the headers every response carries, rendered once.
fn status_head(status: u16) -> &'static [u8] {
    macro_rules! head {
        ($line:literal) => {
            concat!("HTTP/1.1 ", $line, "\r\nServer: triggerd\r\nContent-Type: application/json\r\n")
                .as_bytes()
        };
    }
    match status {
        100 => b"HTTP/1.1 100 Continue\r\n",
        200 => head!("200 OK"),
        201 => head!("201 Created"),
        202 => head!("202 Accepted"),
        400 => head!("400 Bad Request"),
        401 => head!("401 Unauthorized"),
        403 => head!("403 Forbidden"),
        404 => head!("404 Not Found"),
        405 => head!("405 Method Not Allowed"),
        408 => head!("408 Request Timeout"),
        409 => head!("409 Conflict"),
        413 => head!("413 Payload Too Large"),
        415 => head!("415 Unsupported Media Type"),
        429 => head!("429 Too Many Requests"),
        431 => head!("431 Request Header Fields Too Large"),
        503 => head!("503 Service Unavailable"),
        _ => head!("500 Internal Server Error"),
    }
}

/// Text exposition responses (metrics) use this content type instead of JSON.
pub const CONTENT_TYPE_TEXT: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

thread_local! {
    /// (unix second, rendered `Date` line) — re-rendered at most once a second per core.
    static DATE_CACHE: RefCell<(i64, [u8; 29])> = const { RefCell::new((i64::MIN, [0; 29])) };
}

fn with_date(out: &mut Vec<u8>) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != now {
            *cache = (now, http_date(now));
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(&cache.1);
        out.extend_from_slice(b"\r\n");
    });
}

/// Bytes a connection's buffers keep between requests; after an outsized response
/// (an inbox page can be 4 MiB) they shrink back to this, so thousands of keep-alive
/// connections do not each hold their largest response forever.
pub const BUFFER_RETAINED_BYTES: usize = 64 * 1024;

/// Shrinks `buffer` (which must be empty of anything still needed) back to
/// `BUFFER_RETAINED_BYTES` when it grew beyond twice that.
pub fn trim(buffer: &mut Vec<u8>) {
    if buffer.capacity() > 2 * BUFFER_RETAINED_BYTES {
        buffer.clear();
        buffer.shrink_to(BUFFER_RETAINED_BYTES);
    }
}

/// A response being built by a handler: extra header lines (each ending in CRLF) and
/// the body. Owned by the connection and reused for every request on it.
#[derive(Default)]
pub struct ResponseBuf {
    /// Extra header lines, CRLF-terminated, written after the common ones.
    pub headers: Vec<u8>,
    /// The body (JSON unless `content_type` says otherwise).
    pub body: Vec<u8>,
    /// Replaces the JSON content type when set.
    pub content_type: Option<&'static [u8]>,
    /// Something the handler keeps alive until the response has been written out (a
    /// share of a bounded budget, such as a large page's slot); dropped by the
    /// connection after the write, or at the next request.
    pub hold: Option<Box<dyn std::any::Any>>,
    /// A body produced over time (Server-Sent Events) instead of `body`: the connection
    /// writes the head, then each piece as the stream yields it, until it ends, the
    /// client goes, or the server shuts down.
    pub stream: Option<Box<dyn BodyStream>>,
}

/// A response body produced over time. The connection asks for the next piece only
/// once the previous one is written (so a reader that does not read holds back the
/// stream, not the server's memory), and races each ask against shutdown.
pub trait BodyStream {
    /// Appends the next piece to `out`; `false` when the body is complete.
    fn next<'a>(
        &'a mut self,
        out: &'a mut Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + 'a>>;
}

impl ResponseBuf {
    pub fn clear(&mut self) {
        self.headers.clear();
        self.body.clear();
        self.content_type = None;
        self.hold = None;
        self.stream = None;
    }

    /// Ends the response's life: drops its hold and gives back outsized buffers.
    pub fn release(&mut self) {
        self.hold = None;
        trim(&mut self.body);
        trim(&mut self.headers);
    }

    /// Appends `Name: value\r\n`.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        self.headers.extend_from_slice(name);
        self.headers.extend_from_slice(b": ");
        self.headers.extend_from_slice(value);
        self.headers.extend_from_slice(b"\r\n");
    }

    /// Appends `Name: <integer>\r\n`.
    pub fn header_int(&mut self, name: &[u8], value: u64) {
        let mut digits = itoa::Buffer::new();
        self.header(name, digits.format(value).as_bytes());
    }
}

/// Frames a full response into `out`. `close` adds `Connection: close`; `head_only`
/// (HEAD requests) keeps `Content-Length` but omits the body.
pub fn write(out: &mut Vec<u8>, status: u16, response: &ResponseBuf, close: bool, head_only: bool) {
    let head = status_head(status);
    match response.content_type {
        Some(content_type) => {
            let json_line = b"Content-Type: application/json\r\n";
            out.extend_from_slice(&head[..head.len() - json_line.len()]);
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(content_type);
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(head),
    }
    with_date(out);
    out.extend_from_slice(b"Content-Length: ");
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(response.body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.headers);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&response.body);
    }
}

/// The head of a streamed response: no length; chunked for HTTP/1.1, delimited by the
/// end of the connection for HTTP/1.0.
pub fn write_stream_head(out: &mut Vec<u8>, status: u16, response: &ResponseBuf, chunked: bool) {
    let head = status_head(status);
    let json_line = b"Content-Type: application/json\r\n";
    out.extend_from_slice(&head[..head.len() - json_line.len()]);
    out.extend_from_slice(b"Content-Type: ");
    out.extend_from_slice(response.content_type.unwrap_or(b"application/json"));
    out.extend_from_slice(b"\r\n");
    with_date(out);
    out.extend_from_slice(b"Cache-Control: no-cache\r\n");
    out.extend_from_slice(if chunked { b"Transfer-Encoding: chunked\r\n" } else { b"Connection: close\r\n" });
    out.extend_from_slice(&response.headers);
    out.extend_from_slice(b"\r\n");
}

/// One piece of a streamed body: a chunk (`size CRLF data CRLF`), or the bytes as they
/// are without chunking. An empty piece writes nothing (an empty chunk would end it).
pub fn write_piece(out: &mut Vec<u8>, piece: &[u8], chunked: bool) {
    if piece.is_empty() {
        return;
    }
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(piece);
    }
}

/// The interim response to `Expect: 100-continue`.
pub fn write_continue(out: &mut Vec<u8>) {
    out.extend_from_slice(status_head(100));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_head_and_body() {
        let mut response = ResponseBuf::default();
        response.body.extend_from_slice(b"{}");
        response.header_int(b"Retry-After", 3);
        let mut out = Vec::new();
        write(&mut out, 503, &response, true, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\nServer: triggerd\r\n"));
        assert!(text.contains("\r\nContent-Length: 2\r\nRetry-After: 3\r\nConnection: close\r\n\r\n{}"));
        assert!(text.contains("\r\nDate: "));
    }

    #[test]
    fn custom_content_type_replaces_json() {
        let mut response = ResponseBuf { content_type: Some(CONTENT_TYPE_TEXT), ..Default::default() };
        response.body.extend_from_slice(b"x 1\n");
        let mut out = Vec::new();
        write(&mut out, 200, &response, false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(!text.contains("application/json"));
    }
}
