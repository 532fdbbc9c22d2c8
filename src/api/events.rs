//! `POST /api/events`: decode (content type, JSON, contract fields), act (admit, hand
//! off, await the commit), encode (202 with the stored id, or the error), with the
//! rate-limit headers on every response once the organisation is known.

use std::time::SystemTime;

use super::auth::{authenticate, now_ms};
use super::error::ApiError;
use super::json::ObjectWriter;
use super::require_json;
use crate::http::{Request, ResponseBuf};
use crate::ingest::validate::{validate_event, EventFields};
use crate::ingest::{ingest, RateState};
use crate::shard::ratelimit::reset_secs;
use crate::shard::Shard;

pub async fn post(shard: &Shard, request: Request<'_>, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let auth = authenticate(shard, request.api_key()).await?;
    let (fields, body) = match decode(shard, request) {
        Ok(decoded) => decoded,
        Err(error) => {
            write_rate_headers(response, RateState::peek(&auth.org, now_ms()));
            return Err(error);
        }
    };
    let (result, state) = ingest(shard, &auth.org, fields, body, SystemTime::now()).await;
    write_rate_headers(response, state);
    let accepted = result?;
    ObjectWriter::new(&mut response.body)
        .uuid("id", &accepted.id)
        .str("status", "accepted")
        .time("created_at", accepted.created_at_micros)
        .finish();
    Ok(202)
}

fn decode(shard: &Shard, request: Request<'_>) -> Result<(EventFields, String), ApiError> {
    require_json(&request)?;
    let text = std::str::from_utf8(request.body)
        .map_err(|_| ApiError::InvalidJson("the request body is not valid UTF-8".into()))?
        .to_owned();
    let fields = validate_event(request.body, &mut shard.json_buffers.borrow_mut())?;
    Ok((fields, text))
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
