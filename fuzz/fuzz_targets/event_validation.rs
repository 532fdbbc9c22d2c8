//! Fuzzes event validation (src/ingest/validate.rs) and the batch span finder
//! (src/ingest/batch.rs). Differential check: for every body simd-json accepts as a
//! `{"events": [...]}` object, the span finder finds exactly as many entries, and each
//! span parses on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simd_json::prelude::*;
use triggerd::ingest::batch::array_element_spans;
use triggerd::ingest::validate::{parse_json, validate_event, FIELD_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let mut buffers = simd_json::Buffers::default();
    let mut copy = data.to_vec();
    if let Ok(fields) = validate_event(&mut copy, &mut buffers) {
        assert!(!fields.event_type.is_empty() && fields.event_type.len() <= FIELD_BYTES_MAX);
        assert!(!fields.event_type.contains('\0'));
        if let Some(dedup) = &fields.dedup_id {
            assert!(!dedup.is_empty() && dedup.len() <= FIELD_BYTES_MAX);
        }
    }
    // The service's own strict parse (simd-json plus the NUL check) decides what a
    // valid body is.
    let mut parsed = data.to_vec();
    let Ok(value) = parse_json(&mut parsed, &mut buffers) else { return };
    let Some(object) = value.as_object() else { return };
    if object.len() != 1 {
        return;
    }
    let Some(events) = object.get("events").and_then(|v| v.as_array()) else { return };
    let spans = array_element_spans(data);
    assert_eq!(spans.len(), events.len(), "one span per entry");
    for span in spans {
        let mut entry = data[span].to_vec();
        assert!(parse_json(&mut entry, &mut simd_json::Buffers::default()).is_ok(), "each span is one JSON value");
    }
});
