//! `POST /api/inbox/lease`, `POST /api/inbox/lease/{id}/ack` and
//! `POST /api/inbox/lease/{id}/release`: competing consumers of one inbox. Decode the
//! body (every member optional; an empty body means the defaults), act on the read
//! lane (`storage::leases`), encode the lease or the ids.

use simd_json::prelude::*;
use uuid::Uuid;

use super::ack::{ids_of, write_ids, write_split};
use super::auth::authenticate;
use super::error::ApiError;
use super::inbox::write_events;
use super::{ask, parse_json_body};
use crate::handoff::commands::Command;
use crate::http::{Request, ResponseBuf};
use crate::shard::Shard;
use crate::util::json::{object_with_fields, ObjectWriter};

/// Events one lease holds at most, and by default.
pub const LEASE_EVENTS_MAX: i64 = 100;
pub const LEASE_EVENTS_DEFAULT: i64 = 10;
/// How long a lease lasts at most, and by default.
pub const LEASE_SECONDS_MAX: i64 = 3600;
pub const LEASE_SECONDS_DEFAULT: i64 = 300;

/// An integer member within `min..=max`, or `default` when absent or null.
fn bounded(
    value: Option<&simd_json::BorrowedValue<'_>>,
    field: &'static str,
    range: (i64, i64),
    default: i64,
) -> Result<i64, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(default) };
    value.as_i64().filter(|n| (range.0..=range.1).contains(n)).ok_or_else(|| {
        ApiError::invalid(field, format!("{field} must be an integer from {} to {}", range.0, range.1))
    })
}

/// A body whose members are all optional: none at all reads as `{}`.
fn members(
    request: &mut Request<'_>,
    shard: &Shard,
    allowed: &[&str],
    read: impl FnOnce(&simd_json::value::borrowed::Object<'_>) -> Result<(i64, i64), ApiError>,
) -> Result<(i64, i64), ApiError> {
    if request.body.is_empty() {
        return read(&simd_json::value::borrowed::Object::default());
    }
    let mut scratch = shard.json();
    let value = parse_json_body(request, &mut scratch)?;
    read(object_with_fields(&value, allowed)?)
}

pub async fn lease(
    shard: &Shard,
    mut request: Request<'_>,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (limit, lease_seconds) = members(&mut request, shard, &["limit", "lease_seconds"], |object| {
        Ok((
            bounded(object.get("limit"), "limit", (1, LEASE_EVENTS_MAX), LEASE_EVENTS_DEFAULT)?,
            bounded(
                object.get("lease_seconds"),
                "lease_seconds",
                (1, LEASE_SECONDS_MAX),
                LEASE_SECONDS_DEFAULT,
            )?,
        ))
    })?;
    let org_id = auth.org.id;
    let lease = ask(shard, |reply| Command::Lease { org_id, limit, lease_seconds, reply }).await?;
    ObjectWriter::new(&mut response.body)
        .uuid("lease_id", &lease.lease_id)
        .time("expires_at", lease.expires_at_micros)
        .with("events", |out| write_events(out, &lease.events))
        .finish();
    Ok(200)
}

/// The lease id of the path and the body's optional `ids`.
fn lease_and_ids(
    shard: &Shard,
    request: &mut Request<'_>,
    lease_id: &str,
) -> Result<(Uuid, Option<Vec<Uuid>>), ApiError> {
    let lease_id =
        Uuid::try_parse(lease_id).map_err(|_| ApiError::invalid("id", "the lease id must be a UUID"))?;
    if request.body.is_empty() {
        return Ok((lease_id, None));
    }
    let mut scratch = shard.json();
    let value = parse_json_body(request, &mut scratch)?;
    let ids = ids_of(object_with_fields(&value, &["ids"])?.get("ids"))?;
    Ok((lease_id, ids))
}

pub async fn ack(
    shard: &Shard,
    mut request: Request<'_>,
    lease_id: &str,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (lease_id, ids) = lease_and_ids(shard, &mut request, lease_id)?;
    let org_id = auth.org.id;
    let asked = ids.clone();
    let acknowledged =
        ask(shard, |reply| Command::LeaseAck { org_id, lease_id, ids: asked, reply })
            .await?
            .ok_or(ApiError::NotFound("no such lease (unknown, expired, or another organisation's)"))?;
    match ids {
        Some(ids) => write_split(&mut response.body, ("acknowledged", "not_found"), &ids, &acknowledged),
        None => write_split(&mut response.body, ("acknowledged", "not_found"), &acknowledged, &acknowledged),
    }
    Ok(200)
}

pub async fn release(
    shard: &Shard,
    mut request: Request<'_>,
    lease_id: &str,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (lease_id, ids) = lease_and_ids(shard, &mut request, lease_id)?;
    let org_id = auth.org.id;
    let released = ask(shard, |reply| Command::LeaseRelease { org_id, lease_id, ids, reply })
        .await?
        .ok_or(ApiError::NotFound("no such lease (unknown, expired, or another organisation's)"))?;
    let out = &mut response.body;
    out.extend_from_slice(b"{\"released\":[");
    write_ids(out, released.iter());
    out.extend_from_slice(b"]}");
    Ok(200)
}
