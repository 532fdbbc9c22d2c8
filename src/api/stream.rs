//! `GET /api/events/stream?after=&limit=&wait=`: the caller's events in commit order
//! after an opaque position, gap-free across writers and instances
//! (`storage::stream`). With nothing new, the request is held (`wait`, up to 30 s) and
//! answered when a commit for the organisation wakes it (`shard::stream`). With
//! `Accept: text/event-stream` the same stream is one held response of Server-Sent
//! Events (`id:` the position, `data:` the event), with a keep-alive comment every 15 s
//! (`--stream-keep-alive-ms`) when idle; `Last-Event-ID` resumes it.
//!
//! A held read costs its connection's buffers and one watch entry: no thread, and no
//! query until a commit of its organisation wakes it.

use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use uuid::Uuid;

use super::ask;
use super::auth::authenticate;
use super::error::ApiError;
use super::inbox::{write_event, write_events};
use crate::handoff::commands::{Command, Position, StreamPage, StreamQuery};
use crate::http::{BodyStream, Request, ResponseBuf};
use crate::shard::stream::{watch, Watch};
use crate::shard::Shard;
use crate::util::json::ObjectWriter;

pub const LIMIT_DEFAULT: i64 = 100;
pub const LIMIT_MAX: i64 = 1000;
/// Longest a request may be held.
pub const WAIT_SECS_MAX: u64 = 30;
/// Most bytes of event JSON in one page (as for the inbox).
pub const PAGE_BYTES_MAX: i64 = 4 * 1024 * 1024;
/// Most bytes of event JSON in one Server-Sent Events piece: what one stream holds in
/// memory at most while its reader reads it (at least one event is always sent).
pub const EVENT_STREAM_PIECE_BYTES_MAX: i64 = 256 * 1024;
/// How often the core's horizon watcher looks again while committed events wait
/// behind the horizon (a transaction that began earlier is still running; the
/// writers' commit in milliseconds).
const HORIZON_RECHECK: Duration = Duration::from_millis(5);

/// Positions travel as base64url of the transaction id (8 bytes, big-endian) and the
/// event id (16 bytes): opaque to clients, ordered like `Position`.
pub fn encode_position(position: &Position) -> String {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&position.xid.to_be_bytes());
    bytes[8..].copy_from_slice(position.id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn decode_position(text: &str) -> Option<Position> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let bytes: [u8; 24] = bytes.try_into().ok()?;
    let xid = i64::from_be_bytes(bytes[..8].try_into().ok()?);
    let id = Uuid::from_slice(&bytes[8..]).ok()?;
    (xid >= 0).then_some(Position { xid, id })
}

/// The decoded query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    pub after: Position,
    pub limit: i64,
    pub wait: Duration,
}

/// Decodes `after`, `limit` and `wait` (each at most once); `Last-Event-ID` stands for
/// `after` when that is absent. Unknown parameters are ignored.
pub fn parse_params(query: Option<&str>, last_event_id: Option<&str>) -> Result<StreamParams, ApiError> {
    let mut params = StreamParams { after: Position::ORIGIN, limit: LIMIT_DEFAULT, wait: Duration::ZERO };
    let mut seen = [false; 3];
    let mut after = last_event_id.map(str::trim).filter(|id| !id.is_empty());
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (slot, field) = match name {
            "after" => (0, "after"),
            "limit" => (1, "limit"),
            "wait" => (2, "wait"),
            _ => continue,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(ApiError::invalid(field, format!("{field} is given more than once")));
        }
        match slot {
            0 => after = Some(value),
            1 => {
                params.limit =
                    value.parse().ok().filter(|n| (1..=LIMIT_MAX).contains(n)).ok_or_else(|| {
                        ApiError::invalid("limit", format!("limit must be an integer from 1 to {LIMIT_MAX}"))
                    })?
            }
            _ => {
                let seconds: u64 = value.parse().ok().filter(|n| *n <= WAIT_SECS_MAX).ok_or_else(|| {
                    ApiError::invalid(
                        "wait",
                        format!("wait must be an integer from 0 to {WAIT_SECS_MAX} (seconds)"),
                    )
                })?;
                params.wait = Duration::from_secs(seconds);
            }
        }
    }
    // An empty `after` is the origin (a client with no saved position yet).
    if let Some(after) = after.filter(|after| !after.is_empty()) {
        params.after = decode_position(after)
            .ok_or_else(|| ApiError::invalid("after", "after is not a position this server gave out"))?;
    }
    Ok(params)
}

pub async fn read(
    shard: &Rc<Shard>,
    request: Request<'_>,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let params = parse_params(request.query(), request.last_event_id())?;
    let org_id = auth.org.id;
    if request.accepts_event_stream() {
        response.content_type = Some(b"text/event-stream");
        let stream = EventStream {
            shard: Rc::clone(shard),
            watch: watch(shard, org_id),
            org_id,
            position: params.after,
            limit: params.limit,
            idle_since: None,
            quiet_since: None,
        };
        response.stream = Some(Box::new(stream));
        return Ok(200);
    }
    let deadline = Instant::now() + params.wait;
    let query = StreamQuery { org_id, after: params.after, limit: params.limit, bytes_max: PAGE_BYTES_MAX };
    let (page, _) = held_read(shard, &watch(shard, org_id), query, deadline, None).await?;
    let position = page.events.last().map_or(params.after, |(position, _)| *position);
    let events: Vec<_> = page.events.into_iter().map(|(_, event)| event).collect();
    ObjectWriter::new(&mut response.body)
        .with("events", |out| write_events(out, &events))
        .str("position", &encode_position(&position))
        .finish();
    Ok(200)
}

/// Reads a page; while it is empty and `deadline` has not passed, waits for a commit
/// of the organisation (`watch`, registered before the first read, so none is missed)
/// or, when committed events wait behind the horizon, for the horizon to move, and
/// reads again. At the deadline the empty page is the answer without another read: a
/// commit since the last one would have woken the wait.
///
/// `quiet`: the watch's commit count when an earlier read of the same position found
/// nothing (and nothing behind the horizon). If no notice came since, the first read
/// is skipped: an event stream's keep-alive costs no query. Returns the page and the
/// count to pass as `quiet` next time.
async fn held_read(
    shard: &Shard,
    watch: &Watch,
    query: StreamQuery,
    deadline: Instant,
    quiet: Option<u64>,
) -> Result<(StreamPage, u64), ApiError> {
    let mut skip_read = quiet == Some(watch.commits());
    loop {
        let mut committed = std::pin::pin!(watch.notify().notified());
        committed.as_mut().enable();
        let commits = watch.commits();
        let page = if std::mem::take(&mut skip_read) {
            StreamPage::default()
        } else {
            ask(shard, |reply| Command::Stream { query, reply }).await?
        };
        if !page.events.is_empty() || Instant::now() >= deadline {
            return Ok((page, commits));
        }
        let woken = async {
            if page.held_by_horizon {
                futures_lite::future::or(committed, horizon_moved(shard)).await
            } else {
                committed.await
            }
            true
        };
        let timed_out = async {
            crate::http::sleep(deadline.saturating_duration_since(Instant::now())).await;
            false
        };
        if !futures_lite::future::or(woken, timed_out).await {
            return Ok((page, commits));
        }
    }
}

/// Resolves when the horizon may have moved. The first read on the core to get here
/// watches it (a `Command::Horizon` every `HORIZON_RECHECK`) until it moves; the rest
/// wait for its word, so reads held behind a long transaction cost one query per
/// interval per core, not one per read.
async fn horizon_moved(shard: &Shard) {
    let horizon = shard.horizon();
    let mut moved = std::pin::pin!(horizon.moved().notified());
    moved.as_mut().enable();
    let Some(watcher) = horizon.lead() else {
        return moved.await;
    };
    loop {
        crate::http::sleep(HORIZON_RECHECK).await;
        match ask(shard, |reply| Command::Horizon { reply }).await {
            // Stepping down wakes the others.
            Ok(xmin) if !watcher.saw(xmin) => continue,
            _ => return,
        }
    }
}

/// One Server-Sent Events response: pieces of events as they commit, keep-alive
/// comments when idle. Lives as long as the response, and so does its watch.
struct EventStream {
    shard: Rc<Shard>,
    watch: Watch,
    org_id: Uuid,
    /// Where the client is: the last position sent.
    position: Position,
    limit: i64,
    /// When the stream last sent anything (for keep-alives).
    idle_since: Option<Instant>,
    /// The watch's commit count when the last read found nothing new (and nothing
    /// behind the horizon): unchanged, the next piece need not read again.
    quiet_since: Option<u64>,
}

impl EventStream {
    async fn piece(&mut self, out: &mut Vec<u8>) -> bool {
        let idle_since = *self.idle_since.get_or_insert_with(Instant::now);
        let deadline = idle_since + self.shard.settings().stream_keep_alive;
        let query = StreamQuery {
            org_id: self.org_id,
            after: self.position,
            limit: self.limit,
            bytes_max: EVENT_STREAM_PIECE_BYTES_MAX,
        };
        let (page, commits) =
            match held_read(&self.shard, &self.watch, query, deadline, self.quiet_since).await {
                Ok(read) => read,
                // The client reconnects with Last-Event-ID and loses nothing.
                Err(_) => return false,
            };
        self.quiet_since = (page.events.is_empty() && !page.held_by_horizon).then_some(commits);
        if page.events.is_empty() {
            out.extend_from_slice(b": keep-alive\n\n");
        }
        for (position, event) in &page.events {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(encode_position(position).as_bytes());
            out.extend_from_slice(b"\ndata: ");
            write_event(out, event);
            out.extend_from_slice(b"\n\n");
            self.position = *position;
        }
        self.idle_since = Some(Instant::now());
        true
    }
}

impl BodyStream for EventStream {
    fn next<'a>(&'a mut self, out: &'a mut Vec<u8>) -> Pin<Box<dyn std::future::Future<Output = bool> + 'a>> {
        Box::pin(self.piece(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_keep_their_order() {
        let a = Position { xid: 7, id: Uuid::from_u128(9) };
        let b = Position { xid: 8, id: Uuid::from_u128(1) };
        assert_eq!(decode_position(&encode_position(&a)), Some(a));
        assert!(encode_position(&a) < encode_position(&b), "the encoding sorts like the position");
        assert_eq!(encode_position(&Position::ORIGIN).len(), 32);
        assert_eq!(decode_position("!!"), None);
        assert_eq!(decode_position(&URL_SAFE_NO_PAD.encode([0xff; 24])), None, "negative xid");
    }

    #[test]
    fn parameters_and_their_errors() {
        let params = parse_params(None, None).unwrap();
        assert_eq!((params.after, params.limit, params.wait), (Position::ORIGIN, 100, Duration::ZERO));
        let position = Position { xid: 42, id: Uuid::from_u128(3) };
        let query = format!("after={}&limit=5&wait=30", encode_position(&position));
        let params = parse_params(Some(&query), None).unwrap();
        assert_eq!((params.after, params.limit, params.wait), (position, 5, Duration::from_secs(30)));
        assert_eq!(parse_params(Some("after="), None).unwrap().after, Position::ORIGIN);
        let resumed = parse_params(None, Some(&encode_position(&position))).unwrap();
        assert_eq!(resumed.after, position, "Last-Event-ID resumes");
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("wait=31", "wait"),
            ("wait=-1", "wait"),
            ("after=nope", "after"),
            ("limit=1&limit=2", "limit"),
        ] {
            match parse_params(Some(query), None) {
                Err(ApiError::InvalidRequest { field: f, .. }) => assert_eq!(f, field, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
    }
}
