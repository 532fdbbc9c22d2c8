//! Validation of an event body against the contract, after the JSON gate.
//!
//! `{"type": string 1..=255 bytes, "payload": object, "dedup_id"?: string 1..=255
//! bytes}`; unknown top-level fields are refused. Every body first passes the gate
//! (`crate::util::json::gate`): bounded depth, no repeated member names, no `\u0000` or
//! unpaired surrogates, numbers PostgreSQL's `numeric` holds. Only then does simd-json
//! parse it (its recursion is bounded by the gate's depth limit), so PostgreSQL never
//! refuses an event that passed, and the payload it stores is the one read here.

use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;

use super::IngestError;
use crate::util::json::span::member_span;
use crate::util::json::{object_with_fields, JsonScratch};

/// Longest `type` and `dedup_id`, in bytes.
pub const FIELD_BYTES_MAX: usize = 255;

/// The fields of a valid event that travel separately from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFields {
    pub event_type: String,
    pub dedup_id: Option<String>,
}

/// Runs the gate over `body`; on success returns the body as text.
pub fn gate<'b>(body: &'b [u8], scratch: &mut JsonScratch) -> Result<&'b str, IngestError> {
    scratch.gate.check(body).map_err(IngestError::from)
}

/// Parses a body that passed `gate`, in place (it is scratch afterwards).
pub fn parse_gated<'a>(body: &'a mut [u8], scratch: &mut JsonScratch) -> Result<Value<'a>, IngestError> {
    simd_json::value::borrowed::to_value_with_buffers(body, &mut scratch.buffers)
        .map_err(|e| IngestError::InvalidJson(format!("the request body is not valid JSON: {e}")))
}

/// Gates and parses a JSON body in place (it is scratch afterwards).
pub fn parse_json<'a>(body: &'a mut [u8], scratch: &mut JsonScratch) -> Result<Value<'a>, IngestError> {
    gate(body, scratch)?;
    parse_gated(body, scratch)
}

/// A single event's body: its contract fields and its payload's exact text (which
/// travels to PostgreSQL, so it is copied before simd-json parses the body in place).
pub fn decode_event(
    body: &mut [u8],
    scratch: &mut JsonScratch,
) -> Result<(EventFields, String), IngestError> {
    let text = gate(body, scratch)?;
    let payload = payload_text(text);
    let fields = event_from_value(&parse_gated(body, scratch)?)?;
    Ok((fields, payload.ok_or_else(payload_not_found)?))
}

/// The exact text of an event object's top-level `payload`, if it has one.
pub fn payload_text(event: &str) -> Option<String> {
    member_span(event.as_bytes(), "payload").map(|span| event[span].to_owned())
}

/// The gate admits only strict JSON, where a validated payload is always found; should
/// the scanner ever disagree with the parser, the body is still the client's: a 400.
pub fn payload_not_found() -> IngestError {
    tracing::warn!("the payload's text could not be found in a validated event");
    IngestError::InvalidJson("the payload could not be read from the event".into())
}

/// Gates, parses and validates one event body in place.
pub fn validate_event(body: &mut [u8], scratch: &mut JsonScratch) -> Result<EventFields, IngestError> {
    let value = parse_json(body, scratch)?;
    event_from_value(&value)
}

/// Validates one event object (a whole body, or one entry of a batch).
pub fn event_from_value(value: &Value<'_>) -> Result<EventFields, IngestError> {
    let object = object_with_fields(value, &["type", "payload", "dedup_id"])?;
    let event_type = match object.get("type") {
        None | Some(Value::Static(simd_json::StaticNode::Null)) => {
            return Err(IngestError::invalid("type", "type is required"))
        }
        Some(value) => bounded_string(value)
            .map_err(|problem| IngestError::invalid("type", format!("type {problem}")))?,
    };
    match object.get("payload") {
        None => return Err(IngestError::invalid("payload", "payload is required")),
        Some(payload) if !payload.is_object() => {
            return Err(IngestError::invalid("payload", "payload must be a JSON object"))
        }
        Some(_) => {}
    }
    let dedup_id = match object.get("dedup_id") {
        None | Some(Value::Static(simd_json::StaticNode::Null)) => None,
        Some(value) => Some(
            bounded_string(value)
                .map_err(|problem| IngestError::invalid("dedup_id", format!("dedup_id {problem}")))?,
        ),
    };
    Ok(EventFields { event_type, dedup_id })
}

fn bounded_string(value: &Value<'_>) -> Result<String, &'static str> {
    let text = value.as_str().ok_or("must be a string")?;
    if text.is_empty() || text.len() > FIELD_BYTES_MAX {
        return Err("must be 1 to 255 bytes long");
    }
    debug_assert!(!text.contains('\0'), "the gate refuses \\u0000");
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Result<EventFields, (u16, String)> {
        let mut bytes = body.as_bytes().to_vec();
        validate_event(&mut bytes, &mut JsonScratch::default()).map_err(|e| {
            let (code, field) = match &e {
                IngestError::Invalid { field, .. } => ("invalid_request", field.to_string()),
                IngestError::InvalidJson(_) => ("invalid_json", String::new()),
                other => panic!("{other:?}"),
            };
            (400, format!("{code}:{field}"))
        })
    }

    #[test]
    fn accepts_valid_events() {
        let fields =
            check(r#"{"type":"order.created","payload":{"n":1,"big":123456789012345678901234567890}}"#);
        assert_eq!(fields, Ok(EventFields { event_type: "order.created".into(), dedup_id: None }));
        let fields = check(r#"{"type":"t","payload":{},"dedup_id":"abc"}"#).unwrap();
        assert_eq!(fields.dedup_id.as_deref(), Some("abc"));
        assert_eq!(check(r#"{"type":"t","payload":{},"dedup_id":null}"#).unwrap().dedup_id, None);
    }

    #[test]
    fn names_the_offending_field() {
        let cases = [
            (r#"{"payload":{}}"#, "invalid_request:type"),
            (r#"{"type":"","payload":{}}"#, "invalid_request:type"),
            (r#"{"type":7,"payload":{}}"#, "invalid_request:type"),
            (r#"{"type":"t"}"#, "invalid_request:payload"),
            (r#"{"type":"t","payload":[1]}"#, "invalid_request:payload"),
            (r#"{"type":"t","payload":"x"}"#, "invalid_request:payload"),
            (r#"{"type":"t","payload":{},"dedup_id":""}"#, "invalid_request:dedup_id"),
            (r#"{"type":"t","payload":{},"dedup_id":5}"#, "invalid_request:dedup_id"),
            (r#"{"type":"t","payload":{},"extra":1}"#, "invalid_request:extra"),
            (r#"{"type":"t","payload":{"a":["\u0000"]}}"#, "invalid_json:"),
            (r#"{"type":"a\u0000","payload":{}}"#, "invalid_json:"),
            (r#"{"type":"t","payload":{},"payload":"x"}"#, "invalid_json:"),
            (r#"[1,2]"#, "invalid_request:body"),
            (r#""text""#, "invalid_request:body"),
            ("7", "invalid_request:body"),
            ("null", "invalid_request:body"),
            (r#"{"type":"t","payload":{}"#, "invalid_json:"),
            ("", "invalid_json:"),
        ];
        for (body, expected) in cases {
            assert_eq!(check(body).map_err(|e| e.1), Err(expected.to_string()), "{body}");
        }
        let long = format!(r#"{{"type":"{}","payload":{{}}}}"#, "x".repeat(256));
        assert_eq!(check(&long).map_err(|e| e.1), Err("invalid_request:type".to_string()));
        let max = format!(r#"{{"type":"{}","payload":{{}}}}"#, "é".repeat(127));
        assert!(check(&max).is_ok(), "254 bytes of UTF-8 fit");
    }

    #[test]
    fn nul_bytes_outside_strings_are_invalid_json() {
        // simd-json alone accepts these, skipping what follows the NUL; the gate does not.
        for body in [
            &b"{\"type\":\"t\",\"payload\":{\"n\":1\0junk}}"[..],
            b"{\"type\":\"t\",\"payload\":{\"a\":[null\0?]}}",
        ] {
            let error = validate_event(&mut body.to_vec(), &mut JsonScratch::default()).unwrap_err();
            assert!(matches!(error, IngestError::InvalidJson(_)), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn invalid_utf8_is_invalid_json() {
        let mut bytes = b"{\"type\":\"\xff\",\"payload\":{}}".to_vec();
        let error = validate_event(&mut bytes, &mut JsonScratch::default()).unwrap_err();
        assert!(matches!(error, IngestError::InvalidJson(_)));
    }
}
