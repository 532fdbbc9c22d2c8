//! `GET /health` (the process serves) and `GET /health/ready` (the database is
//! reachable and the write path keeps up).

use std::sync::atomic::Ordering;

use super::error::ApiError;
use crate::http::ResponseBuf;
use crate::shard::Shard;
use crate::util::json::ObjectWriter;

pub fn live(response: &mut ResponseBuf) -> Result<u16, ApiError> {
    response.body.extend_from_slice(br#"{"status":"ok"}"#);
    Ok(200)
}

pub fn ready(shard: &Shard, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let db_ok = shard.status().db_ok.load(Ordering::Relaxed);
    let keeping_up = shard.handoff().has_headroom();
    if db_ok && keeping_up {
        response.body.extend_from_slice(br#"{"status":"ready"}"#);
        return Ok(200);
    }
    let reason = if db_ok { "the write path is falling behind" } else { "the database is unreachable" };
    ObjectWriter::new(&mut response.body)
        .str("status", "unavailable")
        .str("error", "not_ready")
        .str("message", reason)
        .finish();
    response.header_int(b"Retry-After", 1);
    Ok(503)
}
