//! Batch ingest: up to 1000 events in one request, each validated, rate limited and
//! deduplicated on its own; every accepted entry is committed before the answer.
//!
//! Each entry travels to PostgreSQL as its own exact JSON text (found by
//! `array_element_spans`), so payload numbers are stored exactly as sent, as for a
//! single event.

use std::ops::Range;
use uuid::Uuid;

use simd_json::prelude::*;

use super::admission::{admit, Refused};
use super::validate::{event_from_value, gate, parse_gated, payload_not_found, payload_text, EventFields};
use super::{IngestError, RateState};
use crate::handoff::tickets::TicketFuture;
use crate::handoff::Outcome;
use crate::model::ratelimit::reset_secs;
use crate::model::Org;
use crate::shard::Shard;
use crate::util::json::{object_with_fields, JsonScratch};

/// Most events in one batch request.
pub const BATCH_EVENTS_MAX: usize = 1000;

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    Accepted {
        id: Uuid,
    },
    Duplicate {
        event_id: Uuid,
    },
    Invalid {
        error: String,
    },
    RateLimited {
        retry_after_secs: u64,
    },
    /// The database failed while this entry's batch was written; nothing was stored.
    Overloaded,
}

/// Byte ranges of the elements of the first array nested directly in the top-level
/// object of `text`, which must be valid JSON (it has been parsed already).
pub fn array_element_spans(text: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut start: Option<usize> = None;
    let mut last_significant = 0;
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_string = false;
                    last_significant = i;
                }
                _ => {}
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        match b {
            b',' if depth == 2 => {
                if let Some(s) = start.take() {
                    spans.push(s..last_significant + 1);
                }
                continue;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 1 && b == b']' {
                    if let Some(s) = start.take() {
                        spans.push(s..last_significant + 1);
                    }
                    return spans;
                }
            }
            _ => {
                if depth == 2 && start.is_none() {
                    start = Some(i);
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    _ => {}
                }
            }
        }
        last_significant = i;
    }
    spans
}

/// The entries of a batch body, each validated on its own, with its payload's exact
/// text.
pub type Entries = Vec<Result<(EventFields, String), IngestError>>;

/// The batch body: `{"events": [...]}`, at most `BATCH_EVENTS_MAX` entries; each
/// entry validated on its own and carried with its payload's exact JSON text.
pub fn decode_entries(body: &mut [u8], scratch: &mut JsonScratch) -> Result<Entries, IngestError> {
    let text = gate(body, scratch)?.to_owned();
    let value = parse_gated(body, scratch)?;
    let object = object_with_fields(&value, &["events"])?;
    let events = object
        .get("events")
        .and_then(|v| v.as_array())
        .ok_or_else(|| IngestError::invalid("events", "events must be an array of event objects"))?;
    if events.len() > BATCH_EVENTS_MAX {
        return Err(IngestError::invalid("events", format!("at most {BATCH_EVENTS_MAX} events per batch")));
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
        return Err(IngestError::InvalidJson("the events array could not be split into its entries".into()));
    }
    Ok(events
        .iter()
        .zip(spans)
        .map(|(entry, span)| {
            let fields = event_from_value(entry)?;
            Ok((fields, payload_text(&text[span]).ok_or_else(payload_not_found)?))
        })
        .collect())
}

/// Admits, hands off and awaits every valid entry. `Err` (503, nothing stored) when
/// this core cannot take all valid entries at once (ring full, or its queue standing).
pub async fn ingest_batch(
    shard: &Shard,
    org: &Org,
    entries: Entries,
    now_micros: i64,
) -> Result<(Vec<EntryResult>, RateState), IngestError> {
    let valid = entries.iter().filter(|e| e.is_ok()).count();
    if !shard.tickets().admits(valid) {
        return Err(IngestError::Overloaded);
    }
    let created_at_micros = now_micros;
    let now_ms = (created_at_micros / 1000) as u64;
    let limit = org.rate_limit_per_minute;
    let mut state = RateState::peek(org, now_ms);
    let mut results: Vec<EntryResult> = Vec::with_capacity(entries.len());
    let mut pending: Vec<(usize, Uuid, u64, TicketFuture)> = Vec::with_capacity(valid);
    let mut unadmitted = valid as u32;
    // Once no lease can be had, the rest are refused at once rather than each waiting.
    let mut unavailable = false;
    for (index, entry) in entries.into_iter().enumerate() {
        let (fields, body) = match entry {
            Ok(entry) => entry,
            Err(error) => {
                results.push(EntryResult::Invalid { error: error.to_string() });
                continue;
            }
        };
        let admitted =
            if unavailable { Err(Refused::Unavailable) } else { admit(shard, org, now_ms, unadmitted).await };
        unadmitted -= 1;
        let window = match admitted {
            Ok(admitted) => {
                state = admitted.state;
                admitted.window
            }
            Err(Refused::Limited { reset_ms }) => {
                state = RateState { limit, remaining: 0, reset_ms };
                results.push(EntryResult::RateLimited { retry_after_secs: reset_secs(reset_ms) });
                continue;
            }
            Err(Refused::Unavailable) => {
                unavailable = true;
                results.push(EntryResult::Overloaded);
                continue;
            }
        };
        let record = super::new_record(shard, org, fields, body, created_at_micros);
        let id = record.id;
        match shard.tickets().submit(record) {
            Ok(ticket) => {
                results.push(EntryResult::Overloaded);
                pending.push((index, id, window, ticket));
            }
            Err(_) => {
                org.rate.refund(window);
                results.push(EntryResult::Overloaded);
            }
        }
    }
    for (index, id, window, ticket) in pending {
        results[index] = match ticket.await {
            Outcome::Accepted => EntryResult::Accepted { id },
            Outcome::Duplicate { original } => EntryResult::Duplicate { event_id: original },
            Outcome::Rejected { message } => {
                EntryResult::Invalid { error: format!("the database refused this event: {message}") }
            }
            Outcome::Unavailable => {
                org.rate.refund(window);
                EntryResult::Overloaded
            }
        };
    }
    Ok((results, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(text: &str) -> Vec<&str> {
        array_element_spans(text.as_bytes()).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn finds_each_element_exactly() {
        let text = r#"{ "events" : [ {"type":"a","payload":{"x":[1,2,{"y":"]}"}]}} , 7,"s\"]",
            {"type":"b","payload":{}} , null, [1,[2]] ] }"#;
        assert_eq!(
            spans(text),
            vec![
                r#"{"type":"a","payload":{"x":[1,2,{"y":"]}"}]}}"#,
                "7",
                r#""s\"]""#,
                r#"{"type":"b","payload":{}}"#,
                "null",
                "[1,[2]]"
            ]
        );
        assert_eq!(spans(r#"{"events":[]}"#), Vec::<&str>::new());
        assert_eq!(spans(r#"{"events":[1.5e3]}"#), vec!["1.5e3"]);
    }
}
