//! Request-head parsing on top of `httparse`, and the chunked body decoder.
//!
//! Both are plain functions over bytes: no socket, no clock. "Need more bytes" is its
//! own variant (`Incomplete`), distinct from every malformed case, and each malformed
//! case names the status code it is answered with.

use std::ops::Range;

/// Largest request head (request line + headers) accepted: beyond it, 431.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most header lines accepted in one request: beyond it, 431.
pub const HEADERS_MAX: usize = 64;
/// Largest request body accepted, decided from `Content-Length` before reading: 413.
pub const BODY_BYTES_MAX: usize = 256 * 1024;
/// Longest `X-Request-Id` kept from a client; a longer or malformed one is ignored (the
/// server makes its own).
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Longest chunk-size line (size, extensions, CRLF) a chunked body may use.
const CHUNK_LINE_BYTES_MAX: usize = 1024;

/// Request methods the router knows; anything else still parses and gets a 405/404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    /// The method's name (`OTHER` for a method the router does not know).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }

    fn from_bytes(method: &str) -> Method {
        match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no `Content-Length`, or `Content-Length: 0`).
    None,
    /// Exactly this many bytes follow the head.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the connection loop and the handlers need from a parsed head. Header values
/// are kept as byte ranges into the connection's read buffer, so parsing allocates
/// nothing; the ranges die with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// Request target, query string included.
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    pub framing: BodyFraming,
    /// False after `Connection: close`, and for every HTTP/1.0 request.
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub content_type: Option<Range<usize>>,
    /// Value of `X-API-Key`.
    pub api_key: Option<Range<usize>>,
    /// Value of `Authorization`.
    pub authorization: Option<Range<usize>>,
    /// Value of `Accept` (Server-Sent Events ask for `text/event-stream`).
    pub accept: Option<Range<usize>>,
    /// Value of `Last-Event-ID` (a reconnecting Server-Sent Events client).
    pub last_event_id: Option<Range<usize>>,
    /// Value of the first well-formed `X-Request-Id` (`is_request_id`).
    pub request_id: Option<Range<usize>>,
    /// Bytes taken by the head, final CRLF included.
    pub head_bytes: usize,
}

/// Why a head could not be parsed (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("need more bytes")]
    Incomplete,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request head exceeds {HEAD_BYTES_MAX} bytes")]
    HeadTooLarge,
    #[error("more than {HEADERS_MAX} header lines")]
    TooManyHeaders,
    #[error("request body exceeds {BODY_BYTES_MAX} bytes")]
    BodyTooLarge,
    #[error("transfer encoding not supported")]
    UnsupportedTransferEncoding,
}

impl HeadError {
    /// The status each case is answered with (`Incomplete` is never answered).
    pub fn status(self) -> u16 {
        match self {
            HeadError::Incomplete => 0,
            HeadError::Malformed(_) => 400,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::BodyTooLarge => 413,
            // Bad input is never answered with a 5xx (contract): 400, not 501.
            HeadError::UnsupportedTransferEncoding => 400,
        }
    }
}

fn range_of(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    debug_assert!(start + inner.len() <= outer.len());
    start..start + inner.len()
}

/// Parses one request head from the start of `bytes`.
pub fn parse_head(bytes: &[u8]) -> Result<RequestHead, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_bytes = parse_syntax(&mut request, bytes)?;
    let mut head = request_line(&request, bytes, head_bytes)?;
    let mut framing = FramingHeaders::default();
    for header in request.headers.iter() {
        read_header(&mut head, &mut framing, bytes, header)?;
    }
    if head.version_minor == 0 {
        head.keep_alive = false;
    }
    head.framing = framing.body_framing()?;
    Ok(head)
}

/// Runs httparse over `bytes`: the head's length once it is complete and within
/// `HEAD_BYTES_MAX`.
fn parse_syntax<'h, 'b>(
    request: &mut httparse::Request<'h, 'b>,
    bytes: &'b [u8],
) -> Result<usize, HeadError> {
    let head_bytes = match request.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(if bytes.len() >= HEAD_BYTES_MAX {
                HeadError::HeadTooLarge
            } else {
                HeadError::Incomplete
            });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("unsupported HTTP version")),
        Err(_) => return Err(HeadError::Malformed("malformed request line or header")),
    };
    if head_bytes > HEAD_BYTES_MAX {
        return Err(HeadError::HeadTooLarge);
    }
    Ok(head_bytes)
}

/// The head as its request line describes it, before any header is read.
fn request_line(
    request: &httparse::Request,
    bytes: &[u8],
    head_bytes: usize,
) -> Result<RequestHead, HeadError> {
    let (Some(method), Some(path), Some(version_minor)) = (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    if !path.starts_with('/') {
        return Err(HeadError::Malformed("request target must be an absolute path"));
    }
    Ok(RequestHead {
        method: Method::from_bytes(method),
        target: range_of(bytes, path.as_bytes()),
        version_minor,
        framing: BodyFraming::None,
        keep_alive: version_minor == 1,
        expect_continue: false,
        content_type: None,
        api_key: None,
        authorization: None,
        accept: None,
        last_event_id: None,
        request_id: None,
        head_bytes,
    })
}

/// The framing headers seen so far; they decide `BodyFraming` once all are read.
#[derive(Default)]
struct FramingHeaders {
    content_length: Option<usize>,
    chunked: bool,
}

impl FramingHeaders {
    fn body_framing(&self) -> Result<BodyFraming, HeadError> {
        Ok(match (self.content_length, self.chunked) {
            (Some(_), true) => return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding")),
            (None, true) => BodyFraming::Chunked,
            (Some(0), false) | (None, false) => BodyFraming::None,
            (Some(n), false) if n > BODY_BYTES_MAX => return Err(HeadError::BodyTooLarge),
            (Some(n), false) => BodyFraming::Length(n),
        })
    }
}

/// Records one header line in `head` (or in `framing`); an error ends the parse at
/// the first header that breaks a rule, so the answer names that header's problem.
fn read_header(
    head: &mut RequestHead,
    framing: &mut FramingHeaders,
    bytes: &[u8],
    header: &httparse::Header,
) -> Result<(), HeadError> {
    let name = header.name;
    let value = trim(header.value);
    if name.eq_ignore_ascii_case("content-length") {
        if framing.content_length.is_some() {
            return Err(HeadError::Malformed("repeated Content-Length"));
        }
        framing.content_length = Some(parse_content_length(value)?);
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        if framing.chunked || !value.eq_ignore_ascii_case(b"chunked") {
            return Err(HeadError::UnsupportedTransferEncoding);
        }
        framing.chunked = true;
    } else if name.eq_ignore_ascii_case("connection") {
        if contains_token(value, b"close") {
            head.keep_alive = false;
        }
    } else if name.eq_ignore_ascii_case("content-type") {
        head.content_type = Some(range_of(bytes, value));
    } else if name.eq_ignore_ascii_case("x-api-key") {
        head.api_key = Some(range_of(bytes, value));
    } else if name.eq_ignore_ascii_case("authorization") {
        head.authorization = Some(range_of(bytes, value));
    } else if name.eq_ignore_ascii_case("accept") {
        head.accept = Some(range_of(bytes, value));
    } else if name.eq_ignore_ascii_case("last-event-id") {
        head.last_event_id = Some(range_of(bytes, value));
    } else if name.eq_ignore_ascii_case("x-request-id") {
        if head.request_id.is_none() && is_request_id(value) {
            head.request_id = Some(range_of(bytes, value));
        }
    } else if name.eq_ignore_ascii_case("expect") {
        if !value.eq_ignore_ascii_case(b"100-continue") {
            return Err(HeadError::Malformed("unsupported Expect value"));
        }
        head.expect_continue = true;
    }
    Ok(())
}

/// A request id a client may choose: 1..=`REQUEST_ID_BYTES_MAX` of `[A-Za-z0-9._-]`,
/// safe to echo in a header and to write into a log line as it is.
pub fn is_request_id(value: &[u8]) -> bool {
    (1..=REQUEST_ID_BYTES_MAX).contains(&value.len())
        && value.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &value[start..end]
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|part| trim(part).eq_ignore_ascii_case(token))
}

fn parse_content_length(value: &[u8]) -> Result<usize, HeadError> {
    // 20 digits would overflow; anything over the body limit is refused anyway, so
    // saturate rather than overflow and let the caller answer 413.
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("invalid Content-Length"));
    }
    Ok(value.iter().fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')))
}

/// Result of scanning a chunked body that is (maybe) fully in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedScan {
    /// The terminating chunk and trailers have not arrived yet.
    Incomplete,
    /// The body is complete: `body_bytes` of data, `encoded_bytes` consumed from the input.
    Complete { body_bytes: usize, encoded_bytes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("malformed chunked body")]
    Malformed,
    #[error("chunked body exceeds the body limit")]
    TooLarge,
}

/// Walks the chunk framing of `encoded` without copying. Stops with `TooLarge` as
/// soon as the announced data passes `body_bytes_max`, so an endless chunked body is
/// cut off at the limit.
pub fn scan_chunked(encoded: &[u8], body_bytes_max: usize) -> Result<ChunkedScan, ChunkedError> {
    let mut position = 0;
    let mut body_bytes = 0usize;
    loop {
        let Some(line_end) = find_crlf(&encoded[position..], CHUNK_LINE_BYTES_MAX)? else {
            return Ok(ChunkedScan::Incomplete);
        };
        let size = parse_chunk_size(&encoded[position..position + line_end])?;
        position += line_end + 2;
        if size == 0 {
            // Trailers: header lines up to an empty line. They are read and dropped.
            loop {
                let Some(trailer_end) = find_crlf(&encoded[position..], HEAD_BYTES_MAX)? else {
                    return Ok(ChunkedScan::Incomplete);
                };
                position += trailer_end + 2;
                if trailer_end == 0 {
                    return Ok(ChunkedScan::Complete { body_bytes, encoded_bytes: position });
                }
            }
        }
        body_bytes = body_bytes.checked_add(size).ok_or(ChunkedError::TooLarge)?;
        if body_bytes > body_bytes_max {
            return Err(ChunkedError::TooLarge);
        }
        if encoded.len() < position + size + 2 {
            return Ok(ChunkedScan::Incomplete);
        }
        if &encoded[position + size..position + size + 2] != b"\r\n" {
            return Err(ChunkedError::Malformed);
        }
        position += size + 2;
    }
}

/// Decodes a chunked body that `scan_chunked` found complete, moving the data to the
/// front of `encoded` in place. Returns the number of body bytes now at the front.
pub fn decode_chunked_in_place(encoded: &mut [u8]) -> Result<usize, ChunkedError> {
    let mut read = 0;
    let mut write = 0;
    loop {
        let line_end = find_crlf(&encoded[read..], CHUNK_LINE_BYTES_MAX)?.ok_or(ChunkedError::Malformed)?;
        let size = parse_chunk_size(&encoded[read..read + line_end])?;
        read += line_end + 2;
        if size == 0 {
            return Ok(write);
        }
        if encoded.len() < read + size {
            return Err(ChunkedError::Malformed);
        }
        encoded.copy_within(read..read + size, write);
        write += size;
        read += size + 2;
    }
}

/// Offset of the next CRLF, `None` if not there yet, an error if the line is too long.
fn find_crlf(bytes: &[u8], line_bytes_max: usize) -> Result<Option<usize>, ChunkedError> {
    let window = &bytes[..bytes.len().min(line_bytes_max + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i)),
        None if bytes.len() > line_bytes_max => Err(ChunkedError::Malformed),
        None => Ok(None),
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<usize, ChunkedError> {
    let digits = line.split(|&b| b == b';').next().map(trim).unwrap_or_default();
    if digits.is_empty() || digits.len() > 8 {
        return Err(ChunkedError::Malformed);
    }
    digits.iter().try_fold(0usize, |n, &d| {
        let value = (d as char).to_digit(16).ok_or(ChunkedError::Malformed)?;
        Ok(n * 16 + value as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> RequestHead {
        parse_head(bytes).expect("head parses")
    }

    #[test]
    fn partial_head_is_incomplete_not_malformed() {
        let full = b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_head(&full[..cut]), Err(HeadError::Incomplete), "cut at {cut}");
        }
        let parsed = head(full);
        assert_eq!(parsed.framing, BodyFraming::Length(2));
        assert_eq!(parsed.head_bytes, full.len());
        assert_eq!(&full[parsed.target], b"/api/events");
    }

    #[test]
    fn header_values_are_ranges_into_the_buffer() {
        let bytes = b"GET /x?y=1 HTTP/1.1\r\nX-Api-KEY:  tk_abc \r\nauthorization: Bearer z\r\nContent-Type: application/json\r\n\r\n";
        let parsed = head(bytes);
        assert_eq!(&bytes[parsed.api_key.clone().unwrap()], b"tk_abc");
        assert_eq!(&bytes[parsed.authorization.clone().unwrap()], b"Bearer z");
        assert_eq!(&bytes[parsed.content_type.clone().unwrap()], b"application/json");
        assert_eq!(&bytes[parsed.target], b"/x?y=1");
        assert!(parsed.keep_alive);
    }

    #[test]
    fn a_well_formed_request_id_is_kept_and_any_other_ignored() {
        let bytes = b"GET / HTTP/1.1\r\nX-Request-Id: bad id\r\nx-request-id: abc.DEF_12-3\r\nX-Request-Id: later\r\n\r\n";
        let parsed = head(bytes);
        assert_eq!(&bytes[parsed.request_id.unwrap()], b"abc.DEF_12-3", "the first well-formed one");
        let longest = format!("GET / HTTP/1.1\r\nX-Request-Id: {}\r\n\r\n", "a".repeat(REQUEST_ID_BYTES_MAX));
        assert!(head(longest.as_bytes()).request_id.is_some());
        let too_long =
            format!("GET / HTTP/1.1\r\nX-Request-Id: {}\r\n\r\n", "a".repeat(REQUEST_ID_BYTES_MAX + 1));
        assert_eq!(head(too_long.as_bytes()).request_id, None);
        for bad in ["", "a b", "a\"b", "é", "a/b", "{x}"] {
            assert!(!is_request_id(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn connection_close_and_http10_end_keep_alive() {
        assert!(!head(b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(!head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn conflicting_framing_is_malformed() {
        let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(both).map_err(HeadError::status), Err(400));
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(parse_head(twice).map_err(HeadError::status), Err(400));
        let bad = b"POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\n";
        assert_eq!(parse_head(bad).map_err(HeadError::status), Err(400));
        let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(parse_head(gzip), Err(HeadError::UnsupportedTransferEncoding));
    }

    #[test]
    fn limits_map_to_their_status() {
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", BODY_BYTES_MAX + 1);
        assert_eq!(parse_head(big.as_bytes()), Err(HeadError::BodyTooLarge));
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(parse_head(huge).map_err(HeadError::status), Err(400));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=HEADERS_MAX {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse_head(many.as_bytes()), Err(HeadError::TooManyHeaders));
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(HEAD_BYTES_MAX));
        assert_eq!(parse_head(long.as_bytes()), Err(HeadError::HeadTooLarge));
        assert_eq!(parse_head(b"GARBAGE\r\n\r\n").map_err(HeadError::status), Err(400));
        assert_eq!(parse_head(b"GET / HTTP/2.0\r\n\r\n").map_err(HeadError::status), Err(400));
        assert_eq!(parse_head(b"GET http://x/ HTTP/1.1\r\n\r\n").map_err(HeadError::status), Err(400));
    }

    #[test]
    fn expect_continue_is_flagged() {
        assert!(
            head(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n").expect_continue
        );
    }

    #[test]
    fn chunked_scan_and_decode() {
        let mut encoded = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT".to_vec();
        let complete = ChunkedScan::Complete { body_bytes: 9, encoded_bytes: encoded.len() - 4 };
        assert_eq!(scan_chunked(&encoded, 100), Ok(complete));
        for cut in 0..encoded.len() - 4 {
            assert_eq!(scan_chunked(&encoded[..cut], 100), Ok(ChunkedScan::Incomplete), "cut at {cut}");
        }
        assert_eq!(decode_chunked_in_place(&mut encoded), Ok(9));
        assert_eq!(&encoded[..9], b"Wikipedia");
    }

    #[test]
    fn chunked_limits() {
        assert_eq!(scan_chunked(b"10\r\n", 15), Err(ChunkedError::TooLarge));
        assert_eq!(scan_chunked(b"zz\r\n", 15), Err(ChunkedError::Malformed));
        assert_eq!(scan_chunked(b"2\r\nabX\r\n", 15), Err(ChunkedError::Malformed));
        assert_eq!(scan_chunked(b"fffffffff\r\n", usize::MAX), Err(ChunkedError::Malformed));
        let endless = vec![b'1'; CHUNK_LINE_BYTES_MAX + 10];
        assert_eq!(scan_chunked(&endless, usize::MAX), Err(ChunkedError::Malformed));
    }
}
