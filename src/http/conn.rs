//! The connection loop: one glommio task per connection.
//!
//! Requests are handled strictly in order. Responses accumulate in one output buffer
//! that is flushed whenever the loop would wait for the client (no complete request
//! left in the read buffer), so a pipelined burst is answered with one write.

use std::io::ErrorKind;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::parser::{
    self, BodyFraming, ChunkedError, ChunkedScan, HeadError, Method, BODY_BYTES_MAX, HEAD_BYTES_MAX,
};
use super::response::{self, ResponseBuf};
use super::{ConnectionLimits, Drain, Handler, ProtocolError, Request};

/// Read buffer a connection starts with and shrinks back to: most requests fit, and
/// an idle connection costs little (thousands of idle keep-alive clients are normal).
const READ_BUFFER_INITIAL_BYTES: usize = 4096;
/// Largest the read buffer grows to while reading a head.
const READ_BUFFER_BYTES: usize = HEAD_BYTES_MAX + 4096;
/// A chunked body may use at most this many bytes of framing on the wire.
const CHUNKED_ENCODED_BYTES_MAX: usize = 2 * BODY_BYTES_MAX + HEAD_BYTES_MAX;
/// Largest the read buffer ever gets.
const READ_BUFFER_BYTES_MAX: usize = HEAD_BYTES_MAX + CHUNKED_ENCODED_BYTES_MAX;
/// Output buffered beyond this is written out before handling the next request.
const OUTPUT_FLUSH_BYTES: usize = 64 * 1024;

/// Why the loop stops reading.
enum ReadEnd {
    Closed,
    TimedOut,
}

struct Connection {
    stream: TcpStream,
    /// The client's address, for the handler's per-address limits.
    peer: std::net::IpAddr,
    /// Read buffer; `start..end` holds unconsumed bytes. Owned by this task.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// Responses not yet written.
    output: Vec<u8>,
    response: ResponseBuf,
}

impl Connection {
    /// Reads more bytes before `deadline`; `Err` on close, timeout or error.
    async fn fill(&mut self, deadline: Instant, buffer_max: usize) -> Result<(), ReadEnd> {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buffer.len() {
            let grown =
                (self.buffer.len() * 2).max(READ_BUFFER_INITIAL_BYTES).min(buffer_max.max(READ_BUFFER_BYTES));
            if grown <= self.buffer.len() {
                return Err(ReadEnd::Closed);
            }
            self.buffer.resize(grown, 0);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadEnd::TimedOut);
        }
        if self.stream.set_read_timeout(Some(remaining)).is_err() {
            return Err(ReadEnd::Closed);
        }
        match self.stream.read(&mut self.buffer[self.end..]).await {
            Ok(0) => Err(ReadEnd::Closed),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => Err(ReadEnd::TimedOut),
            Err(_) => Err(ReadEnd::Closed),
        }
    }

    async fn flush(&mut self) -> bool {
        if self.output.is_empty() {
            return true;
        }
        let ok = self.stream.write_all(&self.output).await.is_ok();
        self.output.clear();
        response::trim(&mut self.output);
        ok
    }

    /// Answers a protocol error, writes everything out and ends the connection.
    async fn fail<H: Handler>(&mut self, handler: &H, error: ProtocolError) {
        self.response.clear();
        let status = handler.protocol_error(error, &mut self.response);
        response::write(&mut self.output, status, &self.response, true, false);
        self.flush().await;
    }
}

fn peer_of(stream: &TcpStream) -> std::net::IpAddr {
    stream.peer_addr().map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |address| address.ip())
}

/// Answers a connection beyond the core's limit with the handler's 503 and closes it.
pub async fn refuse<H: Handler>(stream: TcpStream, handler: Rc<H>, limits: ConnectionLimits) {
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    let mut connection = Connection {
        peer: peer_of(&stream),
        stream,
        buffer: Vec::new(),
        start: 0,
        end: 0,
        output: Vec::new(),
        response: ResponseBuf::default(),
    };
    connection.fail(&*handler, ProtocolError::TooManyConnections).await;
    let _ = connection.stream.close().await;
}

/// Serves one connection until it closes, times out or breaks the protocol.
pub async fn serve<H: Handler>(
    stream: TcpStream,
    handler: Rc<H>,
    limits: ConnectionLimits,
    drain: Rc<Drain>,
) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    let mut connection = Connection {
        peer: peer_of(&stream),
        stream,
        buffer: vec![0; READ_BUFFER_INITIAL_BYTES],
        start: 0,
        end: 0,
        output: Vec::new(),
        response: ResponseBuf::default(),
    };
    while serve_one(&mut connection, &*handler, &limits, &drain).await {}
    let _ = connection.stream.close().await;
}

/// Serves one request; `false` when the connection must end.
async fn serve_one<H: Handler>(
    c: &mut Connection,
    handler: &H,
    limits: &ConnectionLimits,
    drain: &Drain,
) -> bool {
    // The head.
    let mut header_deadline = None;
    let head = loop {
        match parser::parse_head(&c.buffer[c.start..c.end]) {
            Ok(head) => break head,
            Err(HeadError::Incomplete) => {
                if !c.flush().await {
                    return false;
                }
                let deadline = match (c.start == c.end, header_deadline) {
                    (true, _) => Instant::now() + limits.idle_timeout,
                    (false, Some(deadline)) => deadline,
                    (false, None) => *header_deadline.insert(Instant::now() + limits.header_timeout),
                };
                let read = if c.start == c.end {
                    // Between requests: shutting down closes the connection here,
                    // cleanly, never in the middle of a response.
                    if drain.is_draining() {
                        return false;
                    }
                    futures_lite::future::or(c.fill(deadline, READ_BUFFER_BYTES), async {
                        drain.wait().await;
                        Err(ReadEnd::Closed)
                    })
                    .await
                } else {
                    c.fill(deadline, READ_BUFFER_BYTES).await
                };
                match read {
                    Ok(()) => {
                        header_deadline.get_or_insert(Instant::now() + limits.header_timeout);
                    }
                    Err(ReadEnd::TimedOut) if c.start != c.end => {
                        c.fail(handler, ProtocolError::Timeout).await;
                        return false;
                    }
                    Err(_) => return false,
                }
            }
            Err(error) => {
                let error = match error {
                    HeadError::HeadTooLarge | HeadError::TooManyHeaders => ProtocolError::HeadTooLarge,
                    HeadError::BodyTooLarge => ProtocolError::BodyTooLarge,
                    HeadError::UnsupportedTransferEncoding => ProtocolError::UnsupportedTransferEncoding,
                    HeadError::Malformed(why) => ProtocolError::Malformed(why),
                    HeadError::Incomplete => unreachable!("handled above"),
                };
                c.fail(handler, error).await;
                return false;
            }
        }
    };

    // The body. Positions are recomputed from `c.start` after every read: a read may
    // compact the buffer, and the head's ranges are relative to the request's start.
    let body_deadline = Instant::now() + limits.body_timeout;
    let has_body = head.framing != BodyFraming::None;
    if head.expect_continue && has_body && c.end - c.start == head.head_bytes {
        response::write_continue(&mut c.output);
        if !c.flush().await {
            return false;
        }
    }
    let (body_bytes, consumed) = match head.framing {
        BodyFraming::None => (0, head.head_bytes),
        BodyFraming::Length(length) => {
            let wanted = head.head_bytes + length;
            while c.end - c.start < wanted {
                match c.fill(body_deadline, wanted).await {
                    Ok(()) => {}
                    Err(ReadEnd::TimedOut) => {
                        c.fail(handler, ProtocolError::Timeout).await;
                        return false;
                    }
                    Err(ReadEnd::Closed) => return false,
                }
            }
            (length, wanted)
        }
        BodyFraming::Chunked => loop {
            let encoded_start = c.start + head.head_bytes;
            match parser::scan_chunked(&c.buffer[encoded_start..c.end], BODY_BYTES_MAX) {
                Ok(ChunkedScan::Complete { encoded_bytes, .. }) => {
                    let decoded = parser::decode_chunked_in_place(
                        &mut c.buffer[encoded_start..encoded_start + encoded_bytes],
                    );
                    match decoded {
                        Ok(body_bytes) => break (body_bytes, head.head_bytes + encoded_bytes),
                        Err(_) => {
                            c.fail(handler, ProtocolError::Malformed("malformed chunked body")).await;
                            return false;
                        }
                    }
                }
                Ok(ChunkedScan::Incomplete) if c.end - encoded_start < CHUNKED_ENCODED_BYTES_MAX => {
                    match c.fill(body_deadline, READ_BUFFER_BYTES_MAX).await {
                        Ok(()) => {}
                        Err(ReadEnd::TimedOut) => {
                            c.fail(handler, ProtocolError::Timeout).await;
                            return false;
                        }
                        Err(ReadEnd::Closed) => return false,
                    }
                }
                Ok(ChunkedScan::Incomplete) | Err(ChunkedError::TooLarge) => {
                    c.fail(handler, ProtocolError::BodyTooLarge).await;
                    return false;
                }
                Err(ChunkedError::Malformed) => {
                    c.fail(handler, ProtocolError::Malformed("malformed chunked body")).await;
                    return false;
                }
            }
        },
    };
    let request_start = c.start;
    serve_request(c, handler, head, request_start, body_bytes, consumed, drain).await
}

/// Dispatches a complete request that starts at `request_start` in the buffer.
async fn serve_request<H: Handler>(
    c: &mut Connection,
    handler: &H,
    head: parser::RequestHead,
    request_start: usize,
    body_bytes: usize,
    consumed: usize,
    drain: &Drain,
) -> bool {
    let (head_part, rest) = c.buffer[request_start..].split_at_mut(head.head_bytes);
    let body = &mut rest[..body_bytes];
    c.response.clear();
    let status = handler.handle(Request::new(&head, head_part, body, c.peer), &mut c.response).await;
    let keep_alive = head.keep_alive && !drain.is_draining();
    response::write(&mut c.output, status, &c.response, !keep_alive, head.method == Method::Head);
    let outsized = c.output.len() >= OUTPUT_FLUSH_BYTES;
    c.start = request_start + consumed;
    if c.start == c.end {
        c.start = 0;
        c.end = 0;
        if c.buffer.len() > READ_BUFFER_INITIAL_BYTES {
            c.buffer.truncate(READ_BUFFER_INITIAL_BYTES);
            c.buffer.shrink_to_fit();
        }
    }
    if !keep_alive {
        c.flush().await;
        return false;
    }
    let open = !outsized || c.flush().await;
    // Written out (or, if small, copied into `output`): the response's hold and its
    // outsized buffers can go.
    c.response.release();
    open
}
