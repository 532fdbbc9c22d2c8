//! `POST /api/events` and `POST /api/events/batch`: decode (content type, JSON,
//! contract fields), act (admit, hand off, await the commit), encode (the stored id,
//! or the error), with the rate-limit headers on every response once the
//! organisation is known.

use std::time::SystemTime;

use simd_json::prelude::*;

use super::auth::{authenticate, now_ms};
use super::error::ApiError;
use super::json::ObjectWriter;
use super::{object_with_fields, require_json};
use crate::http::{Request, ResponseBuf};
use crate::ingest::batch::{array_element_spans, ingest_batch, EntryResult, BATCH_EVENTS_MAX};
use crate::ingest::validate::{event_from_value, gate, parse_gated, EventFields};
use crate::ingest::{ingest, RateState};
use crate::json::JsonScratch;
use crate::metrics::CoreMetrics;
use crate::shard::ratelimit::reset_secs;
use crate::shard::Shard;

pub async fn post(shard: &Shard, request: Request<'_>, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (fields, body) = match decode(shard, request) {
        Ok(decoded) => decoded,
        Err(error) => {
            CoreMetrics::count(&shard.metrics.events_invalid, 1);
            write_rate_headers(response, RateState::peek(&auth.org, now_ms()));
            return Err(error);
        }
    };
    let (result, state) = ingest(shard, &auth.org, fields, body, SystemTime::now()).await;
    write_rate_headers(response, state);
    let metrics = &shard.metrics;
    let counter = match &result {
        Ok(_) => &metrics.events_accepted,
        Err(ApiError::DuplicateEvent { .. }) => &metrics.events_duplicate,
        Err(ApiError::RateLimited { .. }) => &metrics.events_rate_limited,
        Err(ApiError::Overloaded { .. }) => &metrics.events_overloaded,
        Err(_) => &metrics.events_invalid,
    };
    CoreMetrics::count(counter, 1);
    let accepted = result?;
    ObjectWriter::new(&mut response.body)
        .uuid("id", &accepted.id)
        .str("status", "accepted")
        .time("created_at", accepted.created_at_micros)
        .finish();
    Ok(202)
}

/// The body's text once it passed the media type check and the JSON gate; the event's
/// exact text travels to PostgreSQL, so it is copied before simd-json parses in place.
fn gated_text(request: &Request<'_>, scratch: &mut JsonScratch) -> Result<String, ApiError> {
    require_json(request)?;
    gate(request.body, scratch).map(str::to_owned)
}

fn decode(shard: &Shard, request: Request<'_>) -> Result<(EventFields, String), ApiError> {
    let mut scratch = shard.json.borrow_mut();
    let text = gated_text(&request, &mut scratch)?;
    let fields = event_from_value(&parse_gated(request.body, &mut scratch)?)?;
    Ok((fields, text))
}

type Entries = Vec<Result<(EventFields, String), ApiError>>;

/// The batch body: `{"events": [...]}`; each entry validated on its own.
fn decode_batch(shard: &Shard, request: Request<'_>) -> Result<Entries, ApiError> {
    let mut scratch = shard.json.borrow_mut();
    let text = gated_text(&request, &mut scratch)?;
    let value = parse_gated(request.body, &mut scratch)?;
    let object = object_with_fields(&value, &["events"])?;
    let events = object
        .get("events")
        .and_then(|v| v.as_array())
        .ok_or_else(|| ApiError::invalid("events", "events must be an array of event objects"))?;
    if events.len() > BATCH_EVENTS_MAX {
        return Err(ApiError::invalid("events", format!("at most {BATCH_EVENTS_MAX} events per batch")));
    }
    let spans = array_element_spans(text.as_bytes());
    if spans.len() != events.len() {
        // The gate admits only strict JSON, where the two cannot disagree; should they
        // ever, the body is still the client's: a 400, never a 500.
        tracing::warn!(
            entries = events.len(),
            spans = spans.len(),
            "batch entry spans disagree with the parser"
        );
        return Err(ApiError::InvalidJson("the events array could not be split into its entries".into()));
    }
    Ok(events
        .iter()
        .zip(spans)
        .map(|(entry, span)| event_from_value(entry).map(|fields| (fields, text[span].to_owned())))
        .collect())
}

pub async fn post_batch(
    shard: &Shard,
    request: Request<'_>,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let entries = match decode_batch(shard, request) {
        Ok(entries) => entries,
        Err(error) => {
            write_rate_headers(response, RateState::peek(&auth.org, now_ms()));
            return Err(error);
        }
    };
    let (results, state) = match ingest_batch(shard, &auth.org, entries, SystemTime::now()).await {
        Ok(done) => done,
        Err(error) => {
            write_rate_headers(response, RateState::peek(&auth.org, now_ms()));
            return Err(error);
        }
    };
    write_rate_headers(response, state);
    let metrics = &shard.metrics;
    let out = &mut response.body;
    out.extend_from_slice(b"{\"results\":[");
    for (index, result) in results.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        let mut object = ObjectWriter::new(out);
        object.uint("index", index as u64);
        match result {
            EntryResult::Accepted { id } => {
                CoreMetrics::count(&metrics.events_accepted, 1);
                object.str("status", "accepted").uuid("id", id);
            }
            EntryResult::Duplicate { event_id } => {
                CoreMetrics::count(&metrics.events_duplicate, 1);
                object.str("status", "duplicate").uuid("event_id", event_id);
            }
            EntryResult::Invalid { error } => {
                CoreMetrics::count(&metrics.events_invalid, 1);
                object.str("status", "invalid").str("error", error);
            }
            EntryResult::RateLimited { retry_after_secs } => {
                CoreMetrics::count(&metrics.events_rate_limited, 1);
                let error =
                    format!("the organisation's rate limit is exhausted; retry after {retry_after_secs} s");
                object.str("status", "rate_limited").str("error", &error);
            }
            EntryResult::Overloaded => {
                CoreMetrics::count(&metrics.events_overloaded, 1);
                object
                    .str("status", "overloaded")
                    .str("error", "the database was unavailable; nothing was stored");
            }
        }
        object.finish();
    }
    out.extend_from_slice(b"]}");
    Ok(200)
}

/// `X-RateLimit-*` and the IETF draft `RateLimit-Policy` / `RateLimit` fields.
pub fn write_rate_headers(response: &mut ResponseBuf, state: RateState) {
    let reset = reset_secs(state.reset_ms);
    let mut digits = itoa::Buffer::new();
    response.header_int(b"X-RateLimit-Limit", u64::from(state.limit));
    response.header_int(b"X-RateLimit-Remaining", u64::from(state.remaining));
    response.header_int(b"X-RateLimit-Reset", reset);
    let headers = &mut response.headers;
    headers.extend_from_slice(b"RateLimit-Policy: \"tier\";q=");
    headers.extend_from_slice(digits.format(state.limit).as_bytes());
    headers.extend_from_slice(b";w=60\r\nRateLimit: \"tier\";r=");
    headers.extend_from_slice(digits.format(state.remaining).as_bytes());
    headers.extend_from_slice(b";t=");
    headers.extend_from_slice(digits.format(reset).as_bytes());
    headers.extend_from_slice(b"\r\n");
}
