//! `POST /api/ack/{id}` and `POST /api/ack`: mark events delivered. Idempotent: a
//! second acknowledgement answers with the first `acknowledged_at`.

use simd_json::prelude::*;
use uuid::Uuid;

use super::auth::authenticate;
use super::error::ApiError;
use super::{ask, parse_json_body};
use crate::handoff::commands::Command;
use crate::http::{Request, ResponseBuf};
use crate::shard::Shard;
use crate::util::json::object_with_fields;
use crate::util::json::{write_uuid, ObjectWriter};

/// Most ids in one batch acknowledgement.
pub const ACK_IDS_MAX: usize = 1000;

pub async fn one(
    shard: &Shard,
    request: Request<'_>,
    id: &str,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let id = Uuid::try_parse(id).map_err(|_| ApiError::invalid("id", "id must be an event id (a UUID)"))?;
    let org_id = auth.org.id;
    let acknowledged_at = ask(shard, |reply| Command::AckOne { org_id, id, reply })
        .await?
        .ok_or(ApiError::NotFound("no such event"))?;
    ObjectWriter::new(&mut response.body)
        .uuid("id", &id)
        .str("status", "delivered")
        .time("acknowledged_at", acknowledged_at)
        .finish();
    Ok(200)
}

fn decode_ids(mut request: Request<'_>, shard: &Shard) -> Result<Vec<Uuid>, ApiError> {
    let mut scratch = shard.json();
    let value = parse_json_body(&mut request, &mut scratch)?;
    let object = object_with_fields(&value, &["ids"])?;
    ids_of(object.get("ids"))?.ok_or_else(|| ApiError::invalid("ids", "ids must be an array of event ids"))
}

/// The `ids` member of an acknowledgement body: `None` when absent or null, else at
/// most `ACK_IDS_MAX` event ids, duplicates dropped, in the order given.
pub(super) fn ids_of(ids: Option<&simd_json::BorrowedValue<'_>>) -> Result<Option<Vec<Uuid>>, ApiError> {
    let Some(ids) = ids.filter(|ids| !ids.is_null()) else { return Ok(None) };
    let ids = ids.as_array().ok_or_else(|| ApiError::invalid("ids", "ids must be an array of event ids"))?;
    if ids.len() > ACK_IDS_MAX {
        return Err(ApiError::invalid("ids", format!("at most {ACK_IDS_MAX} ids per request")));
    }
    let mut parsed: Vec<Uuid> = Vec::with_capacity(ids.len());
    let mut seen = ahash::AHashSet::with_capacity(ids.len());
    for (index, id) in ids.iter().enumerate() {
        let id = id
            .as_str()
            .and_then(|text| Uuid::try_parse(text).ok())
            .ok_or_else(|| ApiError::invalid("ids", format!("ids[{index}] is not an event id (a UUID)")))?;
        if seen.insert(id) {
            parsed.push(id);
        }
    }
    Ok(Some(parsed))
}

pub async fn many(shard: &Shard, request: Request<'_>, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let ids = decode_ids(request, shard)?;
    let org_id = auth.org.id;
    let acknowledged = if ids.is_empty() {
        Vec::new()
    } else {
        ask(shard, |reply| Command::AckMany { org_id, ids: ids.clone(), reply }).await?
    };
    write_split(&mut response.body, ("acknowledged", "not_found"), &ids, &acknowledged);
    Ok(200)
}

/// `{"<done>": [the ids in `done`], "<rest>": [the others]}`, both in `ids`' order.
pub(super) fn write_split(out: &mut Vec<u8>, names: (&str, &str), ids: &[Uuid], done: &[Uuid]) {
    let done: ahash::AHashSet<&Uuid> = done.iter().collect();
    out.extend_from_slice(format!("{{\"{}\":[", names.0).as_bytes());
    write_ids(out, ids.iter().filter(|id| done.contains(id)));
    out.extend_from_slice(format!("],\"{}\":[", names.1).as_bytes());
    write_ids(out, ids.iter().filter(|id| !done.contains(id)));
    out.extend_from_slice(b"]}");
}

pub(super) fn write_ids<'a>(out: &mut Vec<u8>, ids: impl Iterator<Item = &'a Uuid>) {
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_uuid(out, id);
    }
}
