//! What happened to an event, and pushing again: `GET /api/events/{id}`,
//! `GET /api/events/{id}/attempts`, `POST /api/events/{id}/redeliver` and
//! `POST /api/webhook/replay`. The last two only make events due again
//! (`storage::control`); the delivery engine claims and leases those attempts like
//! every other.

use simd_json::prelude::*;
use uuid::Uuid;

use super::auth::{authenticate, throttled};
use super::error::ApiError;
use super::inbox::write_event;
use super::{ask, parse_json_body};
use crate::handoff::commands::{Attempt, Command, Redelivery, Replay};
use crate::http::{Request, ResponseBuf};
use crate::shard::Shard;
use crate::util::json::{object_with_fields, ObjectWriter};
use crate::util::time::{now_ms, parse_rfc3339};

const NO_SUCH_EVENT: ApiError = ApiError::NotFound("no such event (unknown, or another organisation's)");

fn event_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id).map_err(|_| ApiError::invalid("id", "the event id must be a UUID"))
}

pub async fn get(
    shard: &Shard,
    request: Request<'_>,
    id: &str,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (org_id, id) = (auth.org.id, event_id(id)?);
    let event = ask(shard, |reply| Command::GetEvent { org_id, id, reply }).await?.ok_or(NO_SUCH_EVENT)?;
    write_event(&mut response.body, &event);
    Ok(200)
}

fn write_attempt(out: &mut Vec<u8>, attempt: &Attempt) {
    let mut object = ObjectWriter::new(out);
    object.uint("attempt", attempt.attempt.max(0) as u64).time("attempted_at", attempt.attempted_at_micros);
    match attempt.status_code {
        Some(code) => object.uint("status_code", code.max(0) as u64),
        None => object.null("status_code"),
    };
    object
        .opt_str("error", attempt.error.as_deref())
        .uint("duration_ms", attempt.duration_ms.max(0) as u64)
        .finish();
}

pub async fn attempts(
    shard: &Shard,
    request: Request<'_>,
    id: &str,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (org_id, id) = (auth.org.id, event_id(id)?);
    let attempts = ask(shard, |reply| Command::Attempts { org_id, id, reply }).await?.ok_or(NO_SUCH_EVENT)?;
    ObjectWriter::new(&mut response.body)
        .with("attempts", |out| {
            out.push(b'[');
            for (i, attempt) in attempts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_attempt(out, attempt);
            }
            out.push(b']');
        })
        .finish();
    Ok(200)
}

pub async fn redeliver(
    shard: &Shard,
    request: Request<'_>,
    id: &str,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (org_id, id) = (auth.org.id, event_id(id)?);
    match ask(shard, |reply| Command::Redeliver { org_id, id, reply }).await? {
        Redelivery::Scheduled => {}
        Redelivery::NotFound => return Err(NO_SUCH_EVENT),
        Redelivery::NoWebhook => return Err(ApiError::WebhookNotConfigured),
    }
    ObjectWriter::new(&mut response.body).uuid("id", &id).str("status", "scheduled").finish();
    Ok(202)
}

/// The replay body: `since` (RFC 3339, required) and `status` (`failed`, the default,
/// or `all`).
fn replay_body(mut request: Request<'_>, shard: &Shard) -> Result<(i64, bool), ApiError> {
    let mut scratch = shard.json();
    let value = parse_json_body(&mut request, &mut scratch)?;
    let object = object_with_fields(&value, &["since", "status"])?;
    let since =
        object.get("since").and_then(|since| since.as_str()).and_then(parse_rfc3339).ok_or_else(|| {
            ApiError::invalid("since", "since must be an RFC 3339 date-time, such as 2026-12-02T14:00:00Z")
        })?;
    let all = match object.get("status").filter(|status| !status.is_null()).map(|status| status.as_str()) {
        None | Some(Some("failed")) => false,
        Some(Some("all")) => true,
        Some(_) => return Err(ApiError::invalid("status", "status must be \"failed\" or \"all\"")),
    };
    Ok((since, all))
}

pub async fn replay(
    shard: &Shard,
    request: Request<'_>,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (since_micros, all) = replay_body(request, shard)?;
    throttled(
        shard.admit_delivery_control(auth.org.id, now_ms()),
        "too many secret rotations and replays for this organisation",
    )?;
    let org_id = auth.org.id;
    let Replay::Scheduled { count, next_since_micros } =
        ask(shard, |reply| Command::Replay { org_id, since_micros, all, reply }).await?
    else {
        return Err(ApiError::WebhookNotConfigured);
    };
    ObjectWriter::new(&mut response.body)
        .uint("scheduled", count.max(0) as u64)
        .opt_time("next_since", next_since_micros)
        .finish();
    Ok(202)
}
