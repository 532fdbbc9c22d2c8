//! The hand-written HTTP/1.1 layer: request-head parsing on httparse (`parser`),
//! response framing with pre-rendered heads (`response`), the request framer
//! (`framer`: bodies, timeouts, limits and `100 Continue` decided from bytes and `now`,
//! with no I/O) and the per-connection loop (`conn`) that moves bytes between the
//! socket, the framer and a `Handler`, writing responses in order (pipelining,
//! keep-alive, draining). Apart from the cores, `exporter` serves one read-only
//! resource on a blocking thread of its own (the metrics port).

pub mod conn;
pub mod exporter;
pub mod framer;
pub mod parser;
pub mod response;

use std::future::Future;
use std::time::Duration;

pub use parser::{Method, RequestHead};
pub use response::{BodyStream, ResponseBuf};

/// Waits `duration` on the current core's executor (held reads, keep-alive comments).
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// One request as a handler sees it: the parsed head (ranges into `head_bytes`) and
/// the complete, de-chunked body, which the handler may parse in place.
pub struct Request<'a> {
    pub head: &'a RequestHead,
    head_bytes: &'a [u8],
    pub body: &'a mut [u8],
    /// The client's address (the TCP peer: a proxy's, behind one).
    pub peer: std::net::IpAddr,
    /// Where the application may note whom the request acted for once it knows (an
    /// access log's user field); `None` from the connection, set by the application
    /// for the request's life.
    pub principal: Option<&'a std::cell::Cell<Option<u128>>>,
}

impl<'a> Request<'a> {
    pub fn new(
        head: &'a RequestHead,
        head_bytes: &'a [u8],
        body: &'a mut [u8],
        peer: std::net::IpAddr,
    ) -> Request<'a> {
        Request { head, head_bytes, body, peer, principal: None }
    }

    /// The same request, noting its principal in `slot` (which lives shorter than the
    /// connection's buffers, so the request does too).
    pub fn with_principal<'b>(self, slot: &'b std::cell::Cell<Option<u128>>) -> Request<'b>
    where
        'a: 'b,
    {
        Request { principal: Some(slot), ..self }
    }

    /// Notes whom the request acts for (see `principal`).
    pub fn note_principal(&self, principal: u128) {
        if let Some(slot) = self.principal {
            slot.set(Some(principal));
        }
    }

    /// The client's `X-Request-Id`, if it sent a well-formed one (`parser::is_request_id`).
    pub fn request_id(&self) -> Option<&'a [u8]> {
        self.header(&self.head.request_id)
    }

    fn header(&self, range: &Option<std::ops::Range<usize>>) -> Option<&'a [u8]> {
        range.clone().map(|range| &self.head_bytes[range])
    }

    /// Request target including the query string.
    pub fn target(&self) -> &'a str {
        std::str::from_utf8(&self.head_bytes[self.head.target.clone()]).unwrap_or("")
    }

    pub fn path(&self) -> &'a str {
        let target = self.target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    pub fn query(&self) -> Option<&'a str> {
        self.target().split_once('?').map(|(_, query)| query)
    }

    /// The API key from `X-API-Key`, else from `Authorization: Bearer`; `None` when
    /// absent or empty.
    pub fn api_key(&self) -> Option<&'a [u8]> {
        self.header(&self.head.api_key).or_else(|| self.bearer_token()).filter(|key| !key.is_empty())
    }

    /// The token of `Authorization: Bearer <token>`.
    pub fn bearer_token(&self) -> Option<&'a [u8]> {
        let value = self.header(&self.head.authorization)?;
        let (scheme, token) = value.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then(|| token.trim_ascii())
    }

    /// True when `Accept` names `text/event-stream` (a Server-Sent Events client).
    pub fn accepts_event_stream(&self) -> bool {
        self.header(&self.head.accept).is_some_and(|value| {
            value.split(|&b| b == b',').any(|item| {
                let media_type = item.split(|&b| b == b';').next().unwrap_or_default();
                media_type.trim_ascii().eq_ignore_ascii_case(b"text/event-stream")
            })
        })
    }

    /// The `Last-Event-ID` header, if any.
    pub fn last_event_id(&self) -> Option<&'a str> {
        self.header(&self.head.last_event_id).and_then(|value| std::str::from_utf8(value).ok())
    }

    /// True when `Content-Type` is `application/json`, parameters allowed.
    pub fn is_json(&self) -> bool {
        let Some(value) = self.header(&self.head.content_type) else { return false };
        let media_type = value.split(|&b| b == b';').next().unwrap_or_default();
        media_type.trim_ascii().eq_ignore_ascii_case(b"application/json")
    }
}

/// Protocol-level failures the connection loop answers itself (then closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    Malformed(&'static str),
    HeadTooLarge,
    BodyTooLarge,
    Timeout,
    UnsupportedTransferEncoding,
    /// The core already serves its maximum of connections.
    TooManyConnections,
}

/// The application behind the HTTP layer.
pub trait Handler {
    /// Handles one request, filling `response`; returns the status code.
    fn handle<'a>(
        &'a self,
        request: Request<'a>,
        response: &'a mut ResponseBuf,
    ) -> impl Future<Output = u16> + 'a;

    /// Renders a protocol error in the application's error format; returns the status.
    fn protocol_error(&self, error: ProtocolError, response: &mut ResponseBuf) -> u16;
}

/// A core's shutdown signal: set once; connections waiting for a new request close,
/// and a request in progress is answered with `Connection: close`. Core-local.
#[derive(Default)]
pub struct Drain {
    draining: std::cell::Cell<bool>,
    notify: tokio::sync::Notify,
}

impl Drain {
    pub fn start(&self) {
        self.draining.set(true);
        self.notify.notify_waiters();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Resolves once draining starts (immediately if it has).
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        if self.draining.get() {
            return;
        }
        notified.await;
    }
}

/// Per-connection time limits; every read and write is bounded by one of them.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From the first byte of a request to the end of its head: else 408 and close.
    pub header_timeout: Duration,
    /// From the end of the head to the end of the body: else 408 and close.
    pub body_timeout: Duration,
    /// Keep-alive connection with no request in progress: closed silently.
    pub idle_timeout: Duration,
    /// A response that the client does not read within this time: connection closed.
    pub write_timeout: Duration,
}
