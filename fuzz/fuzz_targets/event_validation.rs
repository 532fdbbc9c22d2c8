//! Fuzzes event validation (src/ingest/validate.rs), the JSON gate in front of it
//! (src/json/gate.rs) and the batch span finder (src/ingest/batch.rs), each input on a
//! thread with an HTTP core's stack (see common/mod.rs).
//!
//! Checks (`common::check_body`): the gate against an independent strict reading
//! (serde_json), and `parse_json`/`validate_event` against the gate. Then a differential
//! check of the span finder against serde_json: for every body the gate passes and
//! serde_json reads as a `{"events": [...]}` object, the span finder finds exactly as
//! many entries and each span is one valid JSON value; and of the member span finder
//! (`util::json::span`): every top-level member of a gated object is found, its span
//! one JSON value equal to serde_json's. (simd-json alone accepts some invalid bodies, a NUL
//! after an atom or junk after a long number; the gate refuses them before it parses.)
#![no_main]

mod common;

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use triggerd::ingest::batch::array_element_spans;
use triggerd::util::json::span::member_span;
use triggerd::util::json::JsonScratch;

fuzz_target!(|data: &[u8]| common::on_core_stack(check, data));

thread_local! {
    /// Reused across inputs, as an HTTP core reuses its scratch across requests.
    static SCRATCH: RefCell<JsonScratch> = RefCell::new(JsonScratch::default());
}

fn check(data: &[u8]) {
    let gated = SCRATCH.with(|scratch| common::check_body(data, &mut scratch.borrow_mut()));
    // The span finder sees only bodies that passed the gate (as in the service): with a
    // repeated "events" serde_json keeps the last array, the span finder the first.
    if gated.is_err() {
        return;
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    // The member span finder (which carries an event's payload text to PostgreSQL)
    // agrees with serde_json on every top-level member of every gated object.
    // (It compares names to ASCII targets, as the service asks only for "payload".)
    for (name, value) in object.iter().filter(|(name, _)| name.is_ascii()) {
        let span = member_span(data, name).unwrap_or_else(|| panic!("member {name:?} found"));
        let found: serde_json::Value =
            serde_json::from_slice(&data[span]).expect("a member span is one JSON value");
        assert_eq!(&found, value, "the span of {name:?} is its value");
    }
    if object.len() != 1 {
        return;
    }
    let Some(events) = object.get("events").and_then(|v| v.as_array()) else { return };
    let spans = array_element_spans(data);
    assert_eq!(spans.len(), events.len(), "one span per entry");
    for (span, event) in spans.into_iter().zip(events) {
        let entry: serde_json::Value =
            serde_json::from_slice(&data[span]).expect("each span is one JSON value");
        assert_eq!(&entry, event, "each span is its entry");
    }
}
