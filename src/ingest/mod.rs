//! The ingest path of one event on its HTTP core: validate it (`validate`), admit it
//! against the organisation's rate window (`admission`), give it a UUIDv7, push it onto
//! the core's ring and await the storage core's verdict. The HTTP details (headers, status codes)
//! stay in `api::events`; this layer speaks `IngestError`.

pub mod admission;
pub mod batch;
pub mod validate;

use std::borrow::Cow;

use uuid::Uuid;

use crate::handoff::tickets::SubmitError;
use crate::handoff::{EventRecord, Outcome};
use crate::model::ratelimit::reset_secs;
use crate::model::Org;
use crate::shard::Shard;
use crate::util::json::{GateError, ShapeError};
use admission::{admit, Refused};
use validate::EventFields;

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// Not JSON this service stores (the gate's verdict, or the parser's).
    #[error("{0}")]
    InvalidJson(String),
    /// Valid JSON that breaks the event contract; `field` names the member.
    #[error("{message}")]
    Invalid { field: Cow<'static, str>, message: String },
    /// The organisation's window is full.
    #[error("the organisation's rate limit is exhausted; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The organisation already has this `dedup_id` (the original's id).
    #[error("an event with this dedup_id was already accepted")]
    Duplicate { event_id: Uuid, dedup_id: String },
    /// The write path is full or the database failed: nothing was stored, retry.
    #[error("the database could not take the event now; nothing was stored")]
    Overloaded,
}

impl IngestError {
    pub fn invalid(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> IngestError {
        IngestError::Invalid { field: field.into(), message: message.into() }
    }
}

impl From<GateError> for IngestError {
    fn from(error: GateError) -> IngestError {
        IngestError::InvalidJson(error.to_string())
    }
}

impl From<ShapeError> for IngestError {
    fn from(error: ShapeError) -> IngestError {
        IngestError::Invalid { field: error.field.into(), message: error.message }
    }
}

/// A committed event.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub id: Uuid,
    pub created_at_micros: i64,
}

/// The organisation's window after this request, for the rate-limit headers.
#[derive(Debug, Clone, Copy)]
pub struct RateState {
    pub limit: u32,
    pub remaining: u32,
    pub reset_ms: u64,
}

impl RateState {
    pub fn peek(org: &Org, now_ms: u64) -> RateState {
        let (remaining, reset_ms) = org.rate.peek(now_ms, org.rate_limit_per_minute);
        RateState { limit: org.rate_limit_per_minute, remaining, reset_ms }
    }
}

/// The record of an admitted event, with a fresh UUIDv7 for `created_at_micros`.
pub fn new_record(
    shard: &Shard,
    org: &Org,
    fields: EventFields,
    payload: String,
    created_at_micros: i64,
) -> EventRecord {
    EventRecord {
        id: shard.next_id(created_at_micros),
        org_id: org.id,
        event_type: fields.event_type,
        payload,
        dedup_id: fields.dedup_id,
        created_at_micros,
        slot: 0,
    }
}

/// Admits, hands off and awaits one event. `payload` is its payload's exact text.
pub async fn ingest(
    shard: &Shard,
    org: &Org,
    fields: EventFields,
    payload: String,
    now_micros: i64,
) -> (Result<Accepted, IngestError>, RateState) {
    let created_at_micros = now_micros;
    let now_ms = (created_at_micros / 1000) as u64;
    // Asked before the rate limit, so a shed event costs the organisation nothing.
    if !shard.tickets().admits(1) {
        return (Err(IngestError::Overloaded), RateState::peek(org, now_ms));
    }
    let (mut state, window_id) = match admit(shard, org, now_ms, 1).await {
        Ok(admitted) => (admitted.state, admitted.window),
        Err(Refused::Limited { reset_ms }) => {
            let state = RateState { limit: org.rate_limit_per_minute, remaining: 0, reset_ms };
            return (Err(IngestError::RateLimited { retry_after_secs: reset_secs(reset_ms) }), state);
        }
        Err(Refused::Unavailable) => return (Err(IngestError::Overloaded), RateState::peek(org, now_ms)),
    };
    let dedup_id = fields.dedup_id.clone();
    let record = new_record(shard, org, fields, payload, created_at_micros);
    let id = record.id;
    let ticket = match shard.tickets().submit(record) {
        Ok(ticket) => ticket,
        Err(SubmitError::Full) => {
            org.rate.refund(window_id);
            state.remaining += 1;
            return (Err(IngestError::Overloaded), state);
        }
    };
    let result = match ticket.await {
        Outcome::Accepted => Ok(Accepted { id, created_at_micros }),
        Outcome::Duplicate { original } => {
            Err(IngestError::Duplicate { event_id: original, dedup_id: dedup_id.unwrap_or_default() })
        }
        Outcome::Rejected { message } => {
            Err(IngestError::invalid("payload", format!("the database refused this event: {message}")))
        }
        Outcome::Unavailable => {
            org.rate.refund(window_id);
            state.remaining += 1;
            Err(IngestError::Overloaded)
        }
    };
    (result, state)
}
