//! `GET /metrics`: Prometheus text exposition of every core's counters, merged here
//! from their atomics (no lock, no message to the other cores).

use std::sync::atomic::Ordering;

use super::error::ApiError;
use crate::http::response::CONTENT_TYPE_TEXT;
use crate::http::ResponseBuf;
use crate::metrics::Registry;
use crate::shard::Shard;

pub fn scrape(shard: &Shard, registry: &Registry, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let handoff = shard.handoff();
    let capacity: usize = handoff.links.iter().map(|link| link.events.capacity()).sum();
    let database_up = if shard.status().db_ok.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
    let text = registry.render(&[
        (
            "triggerd_ring_depth_events",
            "Events waiting in the rings for the storage core.",
            handoff.depth() as f64,
        ),
        ("triggerd_ring_capacity_events", "Capacity of all rings together.", capacity as f64),
        ("triggerd_database_up", "1 while the last write reached PostgreSQL.", database_up),
        ("triggerd_http_cores", "HTTP cores serving.", registry.cores.len() as f64),
        (
            "triggerd_stream_reads_held",
            "Stream reads (long-polls and event streams) waiting for a commit.",
            handoff.stream_waiters.load(Ordering::Relaxed) as f64,
        ),
    ]);
    response.body.extend_from_slice(text.as_bytes());
    response.content_type = Some(CONTENT_TYPE_TEXT);
    Ok(200)
}
