//! `POST /api/events` and `POST /api/events/batch`: decode (content type, JSON,
//! contract fields), act (admit, hand off, await the commit), encode (the stored id,
//! or the error), with the rate-limit headers on every response once the
//! organisation is known.

use super::auth::authenticate;
use super::error::ApiError;
use super::require_json;
use crate::http::{Request, ResponseBuf};
use crate::ingest::batch::{decode_entries, ingest_batch, Entries, EntryResult};
use crate::ingest::validate::{decode_event, EventFields};
use crate::ingest::{ingest, IngestError, RateState};
use crate::model::ratelimit::reset_secs;
use crate::shard::metrics::CoreMetrics;
use crate::shard::Shard;
use crate::util::json::ObjectWriter;
use crate::util::time::{now_micros, now_ms};

pub async fn post(shard: &Shard, request: Request<'_>, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (fields, body) = match decode(shard, request) {
        Ok(decoded) => decoded,
        Err(error) => {
            CoreMetrics::count(&shard.metrics().events_invalid, 1);
            write_rate_headers(response, RateState::peek(&auth.org, now_ms()));
            return Err(error);
        }
    };
    let (result, state) = ingest(shard, &auth.org, fields, body, now_micros()).await;
    write_rate_headers(response, state);
    let metrics = shard.metrics();
    let counter = match &result {
        Ok(_) => &metrics.events_accepted,
        Err(IngestError::Duplicate { .. }) => &metrics.events_duplicate,
        Err(IngestError::RateLimited { .. }) => &metrics.events_rate_limited,
        Err(IngestError::Overloaded) => &metrics.events_overloaded,
        Err(_) => &metrics.events_invalid,
    };
    CoreMetrics::count(counter, 1);
    let accepted = result.map_err(ApiError::from)?;
    ObjectWriter::new(&mut response.body)
        .uuid("id", &accepted.id)
        .str("status", "accepted")
        .time("created_at", accepted.created_at_micros)
        .finish();
    Ok(202)
}

fn decode(shard: &Shard, request: Request<'_>) -> Result<(EventFields, String), ApiError> {
    require_json(&request)?;
    Ok(decode_event(request.body, &mut shard.json())?)
}

fn decode_batch(shard: &Shard, request: Request<'_>) -> Result<Entries, ApiError> {
    require_json(&request)?;
    Ok(decode_entries(request.body, &mut shard.json())?)
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
    let (results, state) = match ingest_batch(shard, &auth.org, entries, now_micros()).await {
        Ok(done) => done,
        Err(error) => {
            write_rate_headers(response, RateState::peek(&auth.org, now_ms()));
            return Err(error.into());
        }
    };
    write_rate_headers(response, state);
    let metrics = shard.metrics();
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
