//! `GET /api/inbox`: the caller's events, newest first, by status, with an opaque
//! cursor (the last event's id, base64url) and an optional offset.
//!
//! Event ids are UUIDv7 carrying `created_at` to the microsecond, so "newest first,
//! ties broken by id" is simply id order, and the cursor "events before this id" is a
//! position: replaying it gives the same page, and events arriving during a walk land
//! above it, so a walk sees every event that existed when it started exactly once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use uuid::Uuid;

use super::ask;
use super::auth::authenticate;
use super::error::ApiError;
use crate::handoff::commands::{Command, InboxEvent, InboxQuery, InboxView};
use crate::http::{Request, ResponseBuf};
use crate::shard::Shard;
use crate::util::json::ObjectWriter;

pub const LIMIT_DEFAULT: i64 = 100;
pub const LIMIT_MAX: i64 = 1000;
/// Deepest `offset` accepted: an offset is a scan, cursors are the way to walk far.
pub const OFFSET_MAX: i64 = 100_000;
/// Most bytes of event JSON in one page (contract v2): 1000 events of 256 KiB would
/// be 256 MiB in one response. A page cut by bytes still has a `next_cursor`.
pub const PAGE_BYTES_MAX: i64 = 4 * 1024 * 1024;

/// The decoded query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxParams {
    pub view: InboxView,
    pub limit: i64,
    pub offset: i64,
    pub before: Option<Uuid>,
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub fn encode_cursor(id: &Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn decode_cursor(cursor: &str) -> Option<Uuid> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    Uuid::from_slice(&bytes).ok()
}

fn parse_count(field: &'static str, value: &str, min: i64, max: i64) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ApiError::invalid(field, format!("{field} must be an integer from {min} to {max}")))
}

/// Decodes the query string; every malformed or repeated parameter is a 400 naming it.
/// Unknown parameters are ignored.
pub fn parse_params(query: Option<&str>) -> Result<InboxParams, ApiError> {
    let mut params =
        InboxParams { view: InboxView::Undelivered, limit: LIMIT_DEFAULT, offset: 0, before: None };
    let mut seen: [bool; 4] = [false; 4];
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let (slot, field) = match name {
            "status" => (0, "status"),
            "limit" => (1, "limit"),
            "offset" => (2, "offset"),
            "cursor" => (3, "cursor"),
            _ => continue,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(ApiError::invalid(field, format!("{field} is given more than once")));
        }
        let value = percent_decode(raw)
            .ok_or_else(|| ApiError::invalid(field, format!("{field} is not valid UTF-8")))?;
        match slot {
            0 => {
                params.view = match value.as_str() {
                    "pending" => InboxView::Pending,
                    "failed" => InboxView::Failed,
                    "delivered" => InboxView::Delivered,
                    "all" => InboxView::All,
                    _ => {
                        return Err(ApiError::invalid(
                            "status",
                            "status must be pending, delivered, failed or all",
                        ))
                    }
                }
            }
            1 => params.limit = parse_count("limit", &value, 1, LIMIT_MAX)?,
            2 => params.offset = parse_count("offset", &value, 0, OFFSET_MAX)?,
            _ => {
                params.before = Some(
                    decode_cursor(&value)
                        .ok_or_else(|| ApiError::invalid("cursor", "cursor is not one this server issued"))?,
                )
            }
        }
    }
    Ok(params)
}

pub async fn list(shard: &Shard, request: Request<'_>, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let params = parse_params(request.query())?;
    // Held until the page is written out: bounds the pages this core holds at once.
    let slot = shard.take_page_slot().ok_or_else(super::overloaded)?;
    let query = InboxQuery {
        org_id: auth.org.id,
        view: params.view,
        before: params.before,
        limit: params.limit + 1,
        offset: params.offset,
        bytes_max: PAGE_BYTES_MAX,
    };
    let mut events = ask(shard, |reply| Command::Inbox { query, reply }).await?;
    let shown = page_length(&events, params.limit as usize, PAGE_BYTES_MAX);
    let has_more = events.len() > shown;
    events.truncate(shown);
    write_page(&mut response.body, &events, has_more);
    response.hold = Some(Box::new(slot));
    Ok(200)
}

/// How many of `events` (newest first, with their running page size) the page shows:
/// at most `limit`, and no more than `bytes_max` of event JSON, but always the first
/// one (a single event is far below the cap).
fn page_length(events: &[InboxEvent], limit: usize, bytes_max: i64) -> usize {
    events.iter().take(limit).enumerate().take_while(|(i, e)| *i == 0 || e.page_bytes <= bytes_max).count()
}

/// The inbox event object, as every route that lists events writes it.
pub(super) fn write_event(out: &mut Vec<u8>, event: &InboxEvent) {
    ObjectWriter::new(out)
        .uuid("id", &event.id)
        .str("type", &event.event_type)
        .raw("payload", &event.payload)
        .opt_str("dedup_id", event.dedup_id.as_deref())
        .str("status", &event.status)
        .uint("attempts", event.attempts.max(0) as u64)
        .uint("leases", event.leases.max(0) as u64)
        .time("created_at", event.created_at_micros)
        .opt_time("delivered_at", event.delivered_at_micros)
        .opt_str("last_error", event.last_error.as_deref())
        .finish();
}

/// An array of event objects.
pub(super) fn write_events(out: &mut Vec<u8>, events: &[InboxEvent]) {
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(out, event);
    }
    out.push(b']');
}

fn write_page(out: &mut Vec<u8>, events: &[InboxEvent], has_more: bool) {
    let cursor = events.last().filter(|_| has_more).map(|last| encode_cursor(&last.id));
    ObjectWriter::new(out)
        .with("events", |out| write_events(out, events))
        .opt_str("next_cursor", cursor.as_deref())
        .finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(page_bytes: &[i64]) -> Vec<InboxEvent> {
        page_bytes
            .iter()
            .map(|&page_bytes| InboxEvent {
                id: Uuid::nil(),
                event_type: "t".into(),
                payload: "{}".into(),
                dedup_id: None,
                status: "pending".into(),
                attempts: 0,
                created_at_micros: 0,
                delivered_at_micros: None,
                last_error: None,
                leases: 0,
                page_bytes,
            })
            .collect()
    }

    #[test]
    fn pages_are_cut_by_count_and_by_bytes() {
        assert_eq!(page_length(&sized(&[10, 20, 30]), 2, 100), 2, "limit first");
        assert_eq!(page_length(&sized(&[40, 80, 120]), 10, 100), 2, "bytes: the third would pass the cap");
        assert_eq!(page_length(&sized(&[400, 500]), 10, 100), 1, "the first event is always shown");
        assert_eq!(page_length(&sized(&[]), 10, 100), 0);
    }

    fn field_of(query: &str) -> String {
        match parse_params(Some(query)) {
            Err(ApiError::InvalidRequest { field, .. }) => field.to_string(),
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_values() {
        let params = parse_params(None).unwrap();
        assert_eq!(
            (params.view, params.limit, params.offset, params.before),
            (InboxView::Undelivered, 100, 0, None)
        );
        let id = Uuid::now_v7();
        let query = format!("status=all&limit=1000&offset=5&cursor={}&other=x", encode_cursor(&id));
        let params = parse_params(Some(&query)).unwrap();
        assert_eq!(
            (params.view, params.limit, params.offset, params.before),
            (InboxView::All, 1000, 5, Some(id))
        );
        assert_eq!(parse_params(Some("status=delivered")).unwrap().view, InboxView::Delivered);
    }

    #[test]
    fn every_malformed_parameter_names_itself() {
        for (query, field) in [
            ("status=done", "status"),
            ("status=", "status"),
            ("limit=0", "limit"),
            ("limit=-1", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("limit=", "limit"),
            ("offset=-1", "offset"),
            ("offset=x", "offset"),
            ("cursor=!!", "cursor"),
            ("cursor=abc", "cursor"),
            ("limit=1&limit=2", "limit"),
            ("status=%ZZ", "status"),
        ] {
            assert_eq!(field_of(query), field, "{query}");
        }
    }

    #[test]
    fn cursor_round_trips_and_is_opaque() {
        let id = Uuid::now_v7();
        let cursor = encode_cursor(&id);
        assert_eq!(decode_cursor(&cursor), Some(id));
        assert_eq!(cursor.len(), 22, "16 bytes, base64url without padding");
        assert_ne!(cursor, id.to_string());
        assert!(
            cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "URL-safe as is"
        );
    }
}
