//! Fuzzes event validation (src/ingest/validate.rs) and the batch span finder
//! (src/ingest/batch.rs). Differential check against a strict RFC 8259 parser
//! (serde_json): for every body it accepts as a `{"events": [...]}` object, the span
//! finder finds exactly as many entries and each span is one valid JSON value. (simd-json
//! accepts some invalid bodies, a NUL after an atom or junk after a long number: the
//! service refuses NUL itself and leaves the rest to PostgreSQL's strict parser.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use triggerd::ingest::batch::array_element_spans;
use triggerd::ingest::validate::{parse_json, validate_event, FIELD_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let mut scratch = triggerd::util::json::JsonScratch::default();
    let mut copy = data.to_vec();
    if let Ok(fields) = validate_event(&mut copy, &mut scratch) {
        assert!(!fields.event_type.is_empty() && fields.event_type.len() <= FIELD_BYTES_MAX);
        assert!(!fields.event_type.contains('\0'));
        if let Some(dedup) = &fields.dedup_id {
            assert!(!dedup.is_empty() && dedup.len() <= FIELD_BYTES_MAX);
        }
    }
    // Whatever the service's parse accepts must not crash the span finder.
    let mut parsed = data.to_vec();
    if parse_json(&mut parsed, &mut scratch).is_ok() {
        let _ = array_element_spans(data);
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if object.len() != 1 {
        return;
    }
    let Some(events) = object.get("events").and_then(|v| v.as_array()) else { return };
    let spans = array_element_spans(data);
    assert_eq!(spans.len(), events.len(), "one span per entry");
    for (span, event) in spans.into_iter().zip(events) {
        let entry: serde_json::Value = serde_json::from_slice(&data[span]).expect("each span is one JSON value");
        assert_eq!(&entry, event, "each span is its entry");
    }
});
