//! The request framer: every decision of an HTTP/1.1 connection, without its I/O.
//!
//! After quinn-proto: a plain struct fed the connection's unconsumed bytes and `now`,
//! answering with what to do next (wait for more bytes until a deadline, answer
//! `100 Continue`, hand over a complete request, fail with a status). It owns the time
//! limits (header, body, idle), how far the read buffer may grow, the body framing
//! (`Content-Length` or chunked) and the `Expect: 100-continue` rule. It reads no
//! socket and no clock, so tests drive it with `Instant`s they make up, never
//! sleeping; `conn` only moves bytes between it, the socket and the handler.

use std::ops::{ControlFlow, Range};
use std::time::Instant;

use super::parser::{
    self, BodyFraming, ChunkedError, ChunkedScan, HeadError, RequestHead, BODY_BYTES_MAX, HEAD_BYTES_MAX,
};
use super::{ConnectionLimits, ProtocolError};

/// Read buffer a connection starts with and shrinks back to: most requests fit, and
/// an idle connection costs little (thousands of idle keep-alive clients are normal).
pub const READ_BUFFER_INITIAL_BYTES: usize = 4096;
/// Largest the read buffer grows to while reading a head (and the least a body may use).
pub const READ_BUFFER_BYTES: usize = HEAD_BYTES_MAX + 4096;
/// A chunked body may use at most this many bytes of framing on the wire.
pub const CHUNKED_ENCODED_BYTES_MAX: usize = 2 * BODY_BYTES_MAX + HEAD_BYTES_MAX;
/// Largest the read buffer ever gets.
pub const READ_BUFFER_BYTES_MAX: usize = HEAD_BYTES_MAX + CHUNKED_ENCODED_BYTES_MAX;

const MALFORMED_CHUNKED: ProtocolError = ProtocolError::Malformed("malformed chunked body");

/// What the connection does next, decided by `Framer::poll`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read more bytes, then poll again. Until `deadline`: after it, ask
    /// `Framer::timed_out`. The read buffer may grow to `buffer_bytes_max`. `idle` is
    /// true between requests (no byte of the next one yet): the one place where a
    /// draining server may close the connection.
    NeedMore { deadline: Instant, buffer_bytes_max: usize, idle: bool },
    /// Write `100 Continue` out now (the client waits for it before sending the
    /// body), then poll again.
    SendContinue,
    /// A complete request is at the front of the bytes polled.
    Request(Framed),
    /// Answer this error and close the connection; the framer is done with it.
    Fail(ProtocolError),
}

/// A complete request, as ranges of the bytes it was framed from (which start at the
/// request's first byte). The body is de-chunked in place, right after the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub head: RequestHead,
    /// The body's bytes; it starts where the head ends.
    pub body: Range<usize>,
    /// Bytes the request took on the wire (head and encoded body): the next request
    /// starts after them.
    pub consumed_bytes: usize,
}

impl Framed {
    /// The head's bytes and the body, from the bytes this request was framed from.
    pub fn split<'a>(&self, unconsumed: &'a mut [u8]) -> (&'a [u8], &'a mut [u8]) {
        debug_assert_eq!(self.body.start, self.head.head_bytes);
        let (head, rest) = unconsumed[..self.body.end].split_at_mut(self.body.start);
        (head, rest)
    }
}

/// What a read that ran past its deadline means for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterTimeout {
    /// A request was in progress: answer this (`ProtocolError::Timeout`, a 408), close.
    Fail(ProtocolError),
    /// The connection was idle between requests: close it without a word.
    Close,
}

/// Where the connection is within the current request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for a complete head. `header_deadline` is set by the first byte of the
    /// request; `None` while the connection is idle between requests.
    Head { header_deadline: Option<Instant> },
    /// The head is parsed; the body must be complete by `deadline`.
    Body { head: RequestHead, deadline: Instant },
}

const IDLE: State = State::Head { header_deadline: None };

/// How far the body of a parsed request has arrived.
enum BodyStatus {
    Complete { body_bytes: usize, consumed_bytes: usize },
    Incomplete { buffer_bytes_max: usize },
    Invalid(ProtocolError),
}

/// One connection's framing state; owned by the connection's task, lives as long as
/// the connection.
#[derive(Debug)]
pub struct Framer {
    /// The connection's time limits (`write_timeout` is the runtime's own business).
    limits: ConnectionLimits,
    /// Progress through the current request; back to idle after each one.
    state: State,
}

impl Framer {
    pub fn new(limits: ConnectionLimits) -> Framer {
        Framer { limits, state: IDLE }
    }

    /// Decides what to do with `unconsumed`, the connection's bytes from the first
    /// byte of the current request on, at `now`. Between polls of one request the
    /// bytes may only grow at the end (they may move in memory). After `Request`, the
    /// next poll takes the bytes after `consumed_bytes`. A complete chunked body is
    /// decoded in place, hence `&mut`.
    pub fn poll(&mut self, unconsumed: &mut [u8], now: Instant) -> Action {
        let (head, deadline) = match std::mem::replace(&mut self.state, IDLE) {
            State::Body { head, deadline } => (head, deadline),
            State::Head { header_deadline } => match self.poll_head(unconsumed, header_deadline, now) {
                ControlFlow::Continue(body_ahead) => body_ahead,
                ControlFlow::Break(action) => return action,
            },
        };
        match body_status(&head, unconsumed) {
            BodyStatus::Complete { body_bytes, consumed_bytes } => {
                let body = head.head_bytes..head.head_bytes + body_bytes;
                Action::Request(Framed { head, body, consumed_bytes })
            }
            BodyStatus::Incomplete { buffer_bytes_max } => {
                self.state = State::Body { head, deadline };
                Action::NeedMore { deadline, buffer_bytes_max, idle: false }
            }
            BodyStatus::Invalid(error) => Action::Fail(error),
        }
    }

    /// A read ran past the deadline of the last `NeedMore`.
    pub fn timed_out(&mut self) -> AfterTimeout {
        match std::mem::replace(&mut self.state, IDLE) {
            State::Head { header_deadline: None } => AfterTimeout::Close,
            State::Head { header_deadline: Some(_) } | State::Body { .. } => {
                AfterTimeout::Fail(ProtocolError::Timeout)
            }
        }
    }

    /// Parses the head: on to the body (with its deadline) once the head is complete,
    /// else what to do meanwhile.
    fn poll_head(
        &mut self,
        unconsumed: &[u8],
        header_deadline: Option<Instant>,
        now: Instant,
    ) -> ControlFlow<Action, (RequestHead, Instant)> {
        let error = match parser::parse_head(unconsumed) {
            Ok(head) => {
                let deadline = now + self.limits.body_timeout;
                // Only when no byte of the body has come: a client that sent some did
                // not wait for our answer.
                let wants_continue = head.expect_continue
                    && head.framing != BodyFraming::None
                    && unconsumed.len() == head.head_bytes;
                if wants_continue {
                    self.state = State::Body { head, deadline };
                    return ControlFlow::Break(Action::SendContinue);
                }
                return ControlFlow::Continue((head, deadline));
            }
            Err(HeadError::Incomplete) => {
                return ControlFlow::Break(self.wait_for_head(unconsumed, header_deadline, now));
            }
            Err(HeadError::HeadTooLarge | HeadError::TooManyHeaders) => ProtocolError::HeadTooLarge,
            Err(HeadError::BodyTooLarge) => ProtocolError::BodyTooLarge,
            Err(HeadError::UnsupportedTransferEncoding) => ProtocolError::UnsupportedTransferEncoding,
            Err(HeadError::Malformed(why)) => ProtocolError::Malformed(why),
        };
        ControlFlow::Break(Action::Fail(error))
    }

    /// The head is incomplete: the idle clock runs until its first byte, then the
    /// header clock, which later bytes do not restart.
    fn wait_for_head(&mut self, unconsumed: &[u8], header_deadline: Option<Instant>, now: Instant) -> Action {
        if unconsumed.is_empty() {
            debug_assert!(header_deadline.is_none(), "a request's bytes never shrink");
            let deadline = now + self.limits.idle_timeout;
            return Action::NeedMore { deadline, buffer_bytes_max: READ_BUFFER_BYTES, idle: true };
        }
        let deadline = header_deadline.unwrap_or(now + self.limits.header_timeout);
        self.state = State::Head { header_deadline: Some(deadline) };
        Action::NeedMore { deadline, buffer_bytes_max: READ_BUFFER_BYTES, idle: false }
    }
}

fn body_status(head: &RequestHead, unconsumed: &mut [u8]) -> BodyStatus {
    debug_assert!(unconsumed.len() >= head.head_bytes, "the head's bytes are still there");
    match head.framing {
        BodyFraming::None => BodyStatus::Complete { body_bytes: 0, consumed_bytes: head.head_bytes },
        BodyFraming::Length(length) => {
            let wanted = head.head_bytes + length;
            if unconsumed.len() >= wanted {
                BodyStatus::Complete { body_bytes: length, consumed_bytes: wanted }
            } else {
                BodyStatus::Incomplete { buffer_bytes_max: wanted.max(READ_BUFFER_BYTES) }
            }
        }
        BodyFraming::Chunked => chunked_status(head.head_bytes, unconsumed),
    }
}

/// Scans the chunked body after the head; once it is complete, decodes it in place.
/// The encoded size is bounded as well as the decoded one: a body of tiny chunks is
/// cut off at `CHUNKED_ENCODED_BYTES_MAX` with a 413 like an oversized one.
fn chunked_status(head_bytes: usize, unconsumed: &mut [u8]) -> BodyStatus {
    let encoded = &mut unconsumed[head_bytes..];
    match parser::scan_chunked(encoded, BODY_BYTES_MAX) {
        Ok(ChunkedScan::Complete { encoded_bytes, .. }) => {
            match parser::decode_chunked_in_place(&mut encoded[..encoded_bytes]) {
                Ok(body_bytes) => {
                    BodyStatus::Complete { body_bytes, consumed_bytes: head_bytes + encoded_bytes }
                }
                Err(_) => BodyStatus::Invalid(MALFORMED_CHUNKED),
            }
        }
        Ok(ChunkedScan::Incomplete) if encoded.len() < CHUNKED_ENCODED_BYTES_MAX => {
            BodyStatus::Incomplete { buffer_bytes_max: READ_BUFFER_BYTES_MAX }
        }
        Ok(ChunkedScan::Incomplete) | Err(ChunkedError::TooLarge) => {
            BodyStatus::Invalid(ProtocolError::BodyTooLarge)
        }
        Err(ChunkedError::Malformed) => BodyStatus::Invalid(MALFORMED_CHUNKED),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(30),
    };

    const GET: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    const POST: &[u8] = b"POST /api/events HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"a\":\"bc\"}\n";
    const CHUNKED: &[u8] =
        b"POST /api/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n6;x=y\r\n:\"bc\"}\r\n0\r\nT: 1\r\n\r\n";
    const CONTINUE: &[u8] =
        b"POST /api/events HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n{\"a\":\"bc\"}\n";

    /// A request framed from all its bytes at once, and its body as decoded.
    fn framed_whole(request: &[u8], now: Instant) -> (Framed, Vec<u8>) {
        let mut bytes = request.to_vec();
        let framed = match Framer::new(LIMITS).poll(&mut bytes, now) {
            Action::Request(framed) => framed,
            other => panic!("expected a request, got {other:?}"),
        };
        let body = bytes[framed.body.clone()].to_vec();
        (framed, body)
    }

    /// Polls `bytes` until the framer asks for more or is done; `SendContinue` is
    /// answered (counted) and polled past, as the connection loop does.
    fn poll_past_continue(
        framer: &mut Framer,
        bytes: &mut [u8],
        now: Instant,
        continues: &mut usize,
    ) -> Action {
        match framer.poll(bytes, now) {
            Action::SendContinue => {
                *continues += 1;
                framer.poll(bytes, now)
            }
            action => action,
        }
    }

    fn need_more(action: Action) -> (Instant, usize, bool) {
        match action {
            Action::NeedMore { deadline, buffer_bytes_max, idle } => (deadline, buffer_bytes_max, idle),
            other => panic!("expected NeedMore, got {other:?}"),
        }
    }

    fn fail(action: Action) -> ProtocolError {
        match action {
            Action::Fail(error) => error,
            other => panic!("expected Fail, got {other:?}"),
        }
    }

    #[test]
    fn a_request_split_at_every_byte_boundary_frames_identically() {
        let t0 = Instant::now();
        for request in [GET, POST, CHUNKED, CONTINUE] {
            let (whole, whole_body) = framed_whole(request, t0);
            // Two reads, cut anywhere.
            for cut in 0..request.len() {
                let mut bytes = request.to_vec();
                let mut framer = Framer::new(LIMITS);
                let mut continues = 0;
                let first = poll_past_continue(&mut framer, &mut bytes[..cut], t0, &mut continues);
                assert!(matches!(first, Action::NeedMore { .. }), "cut at {cut}: {first:?}");
                match poll_past_continue(&mut framer, &mut bytes, t0, &mut continues) {
                    Action::Request(framed) => {
                        assert_eq!(framed, whole, "cut at {cut}");
                        assert_eq!(bytes[framed.body.clone()], whole_body[..], "cut at {cut}");
                    }
                    other => panic!("cut at {cut}: {other:?}"),
                }
                assert!(continues <= 1);
            }
            // One byte per read.
            let mut bytes = request.to_vec();
            let mut framer = Framer::new(LIMITS);
            let mut continues = 0;
            for end in 1..request.len() {
                let action = poll_past_continue(&mut framer, &mut bytes[..end], t0, &mut continues);
                assert!(matches!(action, Action::NeedMore { .. }), "after {end} bytes: {action:?}");
            }
            let last = poll_past_continue(&mut framer, &mut bytes, t0, &mut continues);
            assert_eq!(last, Action::Request(whole));
            assert_eq!(continues, usize::from(request == CONTINUE), "100 Continue is sent once, if asked");
        }
    }

    #[test]
    fn pipelined_requests_in_one_buffer_are_framed_in_order() {
        let t0 = Instant::now();
        let mut bytes = [CHUNKED, GET, POST, CONTINUE, &GET[..10]].concat();
        let mut framer = Framer::new(LIMITS);
        let mut start = 0;
        for (request, target) in
            [(CHUNKED, "/api/events"), (GET, "/health"), (POST, "/api/events"), (CONTINUE, "/api/events")]
        {
            let framed = match framer.poll(&mut bytes[start..], t0) {
                Action::Request(framed) => framed,
                other => panic!("{other:?}"),
            };
            assert_eq!(framed.consumed_bytes, request.len());
            let (head, body) = framed.split(&mut bytes[start..]);
            assert_eq!(&head[framed.head.target.clone()], target.as_bytes());
            if request == GET {
                assert!(body.is_empty());
            } else {
                assert!(body.starts_with(b"{\"a\":\"bc\"}"), "{:?}", body.escape_ascii());
            }
            start += framed.consumed_bytes;
        }
        // The partial request at the end waits for its bytes under the header clock.
        let (deadline, _, idle) = need_more(framer.poll(&mut bytes[start..], t0));
        assert_eq!((deadline, idle), (t0 + LIMITS.header_timeout, false));
    }

    #[test]
    fn a_chunked_body_split_inside_its_framing_is_decoded_once_complete() {
        let t0 = Instant::now();
        let head_bytes = CHUNKED.iter().position(|&b| b == b'4').unwrap_or_default();
        let mut bytes = [CHUNKED, GET].concat();
        let mut framer = Framer::new(LIMITS);
        let mut deadlines = Vec::new();
        for end in head_bytes..CHUNKED.len() {
            let (deadline, buffer_bytes_max, idle) = need_more(framer.poll(&mut bytes[..end], t0));
            assert_eq!((buffer_bytes_max, idle), (READ_BUFFER_BYTES_MAX, false));
            deadlines.push(deadline);
        }
        assert!(deadlines.iter().all(|&d| d == t0 + LIMITS.body_timeout));
        let framed = match framer.poll(&mut bytes, t0 + Duration::from_secs(1)) {
            Action::Request(framed) => framed,
            other => panic!("{other:?}"),
        };
        assert_eq!(framed.consumed_bytes, CHUNKED.len());
        assert_eq!(&bytes[framed.body], b"{\"a\":\"bc\"}");
        assert_eq!(&bytes[CHUNKED.len()..], GET, "the next request is untouched");
    }

    #[test]
    fn continue_is_sent_only_while_the_body_has_not_arrived() {
        let t0 = Instant::now();
        let head_bytes = CONTINUE.len() - 11;
        let mut bytes = CONTINUE.to_vec();

        let mut framer = Framer::new(LIMITS);
        assert_eq!(framer.poll(&mut bytes[..head_bytes], t0), Action::SendContinue);
        let (deadline, buffer_bytes_max, idle) = need_more(framer.poll(&mut bytes[..head_bytes], t0));
        assert_eq!((deadline, buffer_bytes_max, idle), (t0 + LIMITS.body_timeout, READ_BUFFER_BYTES, false));
        assert!(matches!(framer.poll(&mut bytes[..head_bytes + 3], t0), Action::NeedMore { .. }));
        assert!(matches!(framer.poll(&mut bytes, t0), Action::Request(_)));

        // Some of the body came with the head: the client did not wait.
        let mut framer = Framer::new(LIMITS);
        assert!(matches!(framer.poll(&mut bytes[..head_bytes + 1], t0), Action::NeedMore { .. }));
        // All of it came: nothing to continue.
        assert!(matches!(Framer::new(LIMITS).poll(&mut bytes, t0), Action::Request(_)));
        // No body to wait for.
        let mut get = b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n".to_vec();
        assert!(matches!(Framer::new(LIMITS).poll(&mut get, t0), Action::Request(_)));
        // A chunked body counts as a body.
        let mut chunked =
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        assert_eq!(Framer::new(LIMITS).poll(&mut chunked, t0), Action::SendContinue);
    }

    #[test]
    fn a_stalled_head_gets_408_at_the_header_deadline() {
        let t0 = Instant::now();
        let mut bytes = GET.to_vec();
        let mut framer = Framer::new(LIMITS);
        let (deadline, buffer_bytes_max, idle) = need_more(framer.poll(&mut bytes[..0], t0));
        assert_eq!((deadline, buffer_bytes_max, idle), (t0 + LIMITS.idle_timeout, READ_BUFFER_BYTES, true));
        // The first byte arrives after 30 s idle: the header clock starts then, and
        // later bytes do not restart it.
        let t1 = t0 + Duration::from_secs(30);
        let (deadline, _, idle) = need_more(framer.poll(&mut bytes[..1], t1));
        assert_eq!((deadline, idle), (t1 + LIMITS.header_timeout, false));
        let (later, _, _) = need_more(framer.poll(&mut bytes[..5], t1 + Duration::from_secs(9)));
        assert_eq!(later, deadline);
        assert_eq!(framer.timed_out(), AfterTimeout::Fail(ProtocolError::Timeout));
    }

    #[test]
    fn a_stalled_body_gets_408_at_the_body_deadline() {
        let t0 = Instant::now();
        let mut bytes = POST.to_vec();
        let head_bytes = POST.len() - 11;
        let mut framer = Framer::new(LIMITS);
        need_more(framer.poll(&mut bytes[..3], t0));
        // The head completes at t0 + 5 s: the body clock starts there.
        let t1 = t0 + Duration::from_secs(5);
        let (deadline, _, idle) = need_more(framer.poll(&mut bytes[..head_bytes + 2], t1));
        assert_eq!((deadline, idle), (t1 + LIMITS.body_timeout, false));
        let (later, _, _) =
            need_more(framer.poll(&mut bytes[..head_bytes + 4], t1 + Duration::from_secs(29)));
        assert_eq!(later, deadline);
        assert_eq!(framer.timed_out(), AfterTimeout::Fail(ProtocolError::Timeout));
    }

    #[test]
    fn an_idle_connection_is_closed_silently_at_the_idle_deadline() {
        let t0 = Instant::now();
        let mut bytes = GET.to_vec();
        let mut framer = Framer::new(LIMITS);
        assert!(matches!(framer.poll(&mut bytes, t0), Action::Request(_)));
        // After a request, the connection is idle again, timed from when it became so.
        let t1 = t0 + Duration::from_secs(11);
        let (deadline, _, idle) = need_more(framer.poll(&mut bytes[GET.len()..], t1));
        assert_eq!((deadline, idle), (t1 + LIMITS.idle_timeout, true));
        // Asked again after a slow write of the last response: idle from then on.
        let t2 = t1 + Duration::from_secs(20);
        let (deadline, _, idle) = need_more(framer.poll(&mut bytes[GET.len()..], t2));
        assert_eq!((deadline, idle), (t2 + LIMITS.idle_timeout, true));
        assert_eq!(framer.timed_out(), AfterTimeout::Close);
    }

    #[test]
    fn a_head_over_the_limit_gets_431() {
        let t0 = Instant::now();
        let mut long = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(HEAD_BYTES_MAX)).into_bytes();
        let mut framer = Framer::new(LIMITS);
        // Below the limit it is just an incomplete head, in a buffer allowed to hold one.
        let (_, buffer_bytes_max, _) = need_more(framer.poll(&mut long[..HEAD_BYTES_MAX - 1], t0));
        assert!(buffer_bytes_max >= HEAD_BYTES_MAX);
        assert_eq!(fail(framer.poll(&mut long, t0)), ProtocolError::HeadTooLarge);

        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..100 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let error = fail(Framer::new(LIMITS).poll(&mut many.into_bytes(), t0));
        assert_eq!(error, ProtocolError::HeadTooLarge);
    }

    #[test]
    fn a_body_over_the_limit_gets_413() {
        let t0 = Instant::now();
        // Content-Length: refused from the head, before any of the body is read.
        let mut big =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", BODY_BYTES_MAX + 1).into_bytes();
        assert_eq!(fail(Framer::new(LIMITS).poll(&mut big, t0)), ProtocolError::BodyTooLarge);
        // The largest allowed body may grow the buffer to hold it.
        let mut max = format!("POST / HTTP/1.1\r\nContent-Length: {BODY_BYTES_MAX}\r\n\r\n").into_bytes();
        let (_, buffer_bytes_max, _) = need_more(Framer::new(LIMITS).poll(&mut max, t0));
        assert_eq!(buffer_bytes_max, max.len() + BODY_BYTES_MAX);

        // Chunked: cut off as soon as the announced sizes pass the limit.
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut announced = [&head[..], format!("{:x}\r\n", BODY_BYTES_MAX + 1).as_bytes()].concat();
        assert_eq!(fail(Framer::new(LIMITS).poll(&mut announced, t0)), ProtocolError::BodyTooLarge);
        // ... and when the framing alone passes its own limit, however small the data.
        let tiny_chunks = b"1;padding-padding-padding\r\na\r\n".repeat(CHUNKED_ENCODED_BYTES_MAX / 30 + 1);
        assert!(tiny_chunks.len() >= CHUNKED_ENCODED_BYTES_MAX);
        let mut endless = [&head[..], &tiny_chunks].concat();
        let mut framer = Framer::new(LIMITS);
        let (_, buffer_bytes_max, _) = need_more(framer.poll(&mut endless[..head.len() + 1000], t0));
        assert_eq!(buffer_bytes_max, READ_BUFFER_BYTES_MAX);
        assert!(endless.len() <= READ_BUFFER_BYTES_MAX);
        assert_eq!(fail(framer.poll(&mut endless, t0)), ProtocolError::BodyTooLarge);
    }

    #[test]
    fn malformed_requests_get_400() {
        let t0 = Instant::now();
        for (request, error) in [
            (&b"HELLO\r\n\r\n"[..], ProtocolError::Malformed("malformed request line or header")),
            (b"GET / HTTP/9.9\r\n\r\n", ProtocolError::Malformed("unsupported HTTP version")),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                ProtocolError::Malformed("both Content-Length and Transfer-Encoding"),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                ProtocolError::UnsupportedTransferEncoding,
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", MALFORMED_CHUNKED),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n", MALFORMED_CHUNKED),
        ] {
            let mut bytes = request.to_vec();
            assert_eq!(fail(Framer::new(LIMITS).poll(&mut bytes, t0)), error, "{:?}", request.escape_ascii());
        }
    }
}
