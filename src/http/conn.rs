//! The connection loop: one glommio task per connection, moving bytes between the
//! socket, the request framer (`framer`, which makes every protocol decision) and the
//! handler.
//!
//! Requests are handled strictly in order. Responses accumulate in one output buffer
//! that is flushed whenever the loop would wait for the client (no complete request
//! left in the read buffer), so a pipelined burst is answered with one write.

use std::io::ErrorKind;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::framer::{Action, AfterTimeout, Framed, Framer, READ_BUFFER_INITIAL_BYTES};
use super::parser::Method;
use super::response::{self, ResponseBuf};
use super::{ConnectionLimits, Drain, Handler, ProtocolError, Request};

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
    /// First byte of the current request; back to 0 when the buffer empties or moves.
    start: usize,
    /// End of the bytes read so far.
    end: usize,
    /// Responses not yet written.
    output: Vec<u8>,
    /// The response being built, reused for every request; released after each write.
    response: ResponseBuf,
}

impl Connection {
    /// Reads more bytes before `deadline`, growing the buffer up to
    /// `buffer_bytes_max` if it is full; `Err` on close, timeout or error.
    async fn fill(&mut self, deadline: Instant, buffer_bytes_max: usize) -> Result<(), ReadEnd> {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buffer.len() {
            let grown = (self.buffer.len() * 2).max(READ_BUFFER_INITIAL_BYTES).min(buffer_bytes_max);
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

    /// Waits for more bytes. Between requests (`idle`), a shutdown closes the
    /// connection here, cleanly, never in the middle of a response.
    async fn read_more(
        &mut self,
        deadline: Instant,
        buffer_bytes_max: usize,
        idle: bool,
        drain: &Drain,
    ) -> Result<(), ReadEnd> {
        if !idle {
            return self.fill(deadline, buffer_bytes_max).await;
        }
        if drain.is_draining() {
            return Err(ReadEnd::Closed);
        }
        futures_lite::future::or(self.fill(deadline, buffer_bytes_max), async {
            drain.wait().await;
            Err(ReadEnd::Closed)
        })
        .await
    }

    /// Drops a served request's bytes. An emptied buffer shrinks back to its initial
    /// size, so one outsized request does not cost the connection memory for life.
    fn consume(&mut self, consumed_bytes: usize) {
        self.start += consumed_bytes;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buffer.len() > READ_BUFFER_INITIAL_BYTES {
                self.buffer.truncate(READ_BUFFER_INITIAL_BYTES);
                self.buffer.shrink_to_fit();
            }
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
    let mut framer = Framer::new(limits);
    while step(&mut connection, &mut framer, &*handler, &drain).await {}
    let _ = connection.stream.close().await;
}

/// Does what the framer decides next; `false` when the connection must end.
async fn step<H: Handler>(c: &mut Connection, framer: &mut Framer, handler: &H, drain: &Drain) -> bool {
    match framer.poll(&mut c.buffer[c.start..c.end], Instant::now()) {
        // The client may be waiting for these responses before it sends more. Asked
        // again once they are out, the framer starts an idle clock after the write.
        Action::NeedMore { .. } if !c.output.is_empty() => c.flush().await,
        Action::NeedMore { deadline, buffer_bytes_max, idle } => {
            match c.read_more(deadline, buffer_bytes_max, idle, drain).await {
                Ok(()) => true,
                Err(ReadEnd::Closed) => false,
                Err(ReadEnd::TimedOut) => {
                    if let AfterTimeout::Fail(error) = framer.timed_out() {
                        c.fail(handler, error).await;
                    }
                    false
                }
            }
        }
        Action::SendContinue => {
            response::write_continue(&mut c.output);
            c.flush().await
        }
        Action::Request(framed) => serve_request(c, handler, framed, drain).await,
        Action::Fail(error) => {
            c.fail(handler, error).await;
            false
        }
    }
}

/// Writes a streamed response: the head, then each piece the stream yields, each
/// written out before the next is asked for (a reader that does not read stops the
/// stream at the write timeout, never grows the output). Shutdown, the stream's end or
/// a failed write end it; the connection then closes (a chunked body ends cleanly).
async fn stream_response(
    c: &mut Connection,
    status: u16,
    mut stream: Box<dyn super::BodyStream>,
    chunked: bool,
    drain: &Drain,
) {
    response::write_stream_head(&mut c.output, status, &c.response, chunked);
    let mut piece = Vec::new();
    let mut open = c.flush().await;
    while open && !drain.is_draining() {
        piece.clear();
        let more = futures_lite::future::or(stream.next(&mut piece), async {
            drain.wait().await;
            false
        })
        .await;
        response::write_piece(&mut c.output, &piece, chunked);
        open = c.flush().await && more;
    }
    if chunked {
        c.output.extend_from_slice(b"0\r\n\r\n");
        c.flush().await;
    }
    c.response.release();
}

/// Dispatches a complete request framed from the front of the unconsumed bytes.
async fn serve_request<H: Handler>(c: &mut Connection, handler: &H, framed: Framed, drain: &Drain) -> bool {
    let (head_bytes, body) = framed.split(&mut c.buffer[c.start..c.end]);
    c.response.clear();
    let status = handler.handle(Request::new(&framed.head, head_bytes, body, c.peer), &mut c.response).await;
    if let Some(stream) = c.response.stream.take() {
        c.consume(framed.consumed_bytes);
        stream_response(c, status, stream, framed.head.version_minor == 1, drain).await;
        return false;
    }
    let keep_alive = framed.head.keep_alive && !drain.is_draining();
    response::write(&mut c.output, status, &c.response, !keep_alive, framed.head.method == Method::Head);
    let outsized = c.output.len() >= OUTPUT_FLUSH_BYTES;
    c.consume(framed.consumed_bytes);
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
