//! Validation of an event body against the contract, with simd-json.
//!
//! `{"type": string 1..=255 bytes, "payload": object, "dedup_id"?: string 1..=255
//! bytes}`; unknown top-level fields are refused. Strings anywhere in the event may
//! not contain U+0000: PostgreSQL's `text` and `jsonb` cannot store it, and one such
//! event must be refused here rather than break the batch it would be written in.

use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;

use crate::api::error::ApiError;

/// Longest `type` and `dedup_id`, in bytes.
pub const FIELD_BYTES_MAX: usize = 255;

/// The fields of a valid event that travel separately from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFields {
    pub event_type: String,
    pub dedup_id: Option<String>,
}

/// Parses a JSON body in place (it is scratch afterwards), strictly: simd-json skips
/// anything between a NUL byte that follows a literal or number and the next
/// structural character (`[null\0junk]` parses as `[null]`), so bodies containing NUL
/// are refused first. A NUL never appears in valid JSON: it is not whitespace, and
/// strings must escape it. Found by the event_validation fuzz target.
pub fn parse_json<'a>(body: &'a mut [u8], buffers: &mut simd_json::Buffers) -> Result<Value<'a>, ApiError> {
    if body.contains(&0) {
        return Err(ApiError::InvalidJson(
            "the request body is not valid JSON: it contains a NUL byte".into(),
        ));
    }
    simd_json::value::borrowed::to_value_with_buffers(body, buffers)
        .map_err(|e| ApiError::InvalidJson(format!("the request body is not valid JSON: {e}")))
}

/// Parses `body` in place (it is scratch afterwards) and validates it.
pub fn validate_event(body: &mut [u8], buffers: &mut simd_json::Buffers) -> Result<EventFields, ApiError> {
    let value = parse_json(body, buffers)?;
    event_from_value(&value)
}

/// Validates one event object (a whole body, or one entry of a batch).
pub fn event_from_value(value: &Value<'_>) -> Result<EventFields, ApiError> {
    let field = |name: &'static str| name;
    if !value.is_object() {
        return Err(ApiError::InvalidJson("the event must be a JSON object".into()));
    }
    let object = crate::api::object_with_fields(value, &["type", "payload", "dedup_id"])?;
    let event_type = match object.get("type") {
        None | Some(Value::Static(simd_json::StaticNode::Null)) => {
            return Err(ApiError::invalid(field("type"), "type is required"))
        }
        Some(value) => bounded_string(value)
            .map_err(|problem| ApiError::invalid(field("type"), format!("type {problem}")))?,
    };
    match object.get("payload") {
        None => return Err(ApiError::invalid(field("payload"), "payload is required")),
        Some(payload) if !payload.is_object() => {
            return Err(ApiError::invalid(field("payload"), "payload must be a JSON object"))
        }
        Some(payload) if contains_nul(payload) => {
            return Err(ApiError::invalid(field("payload"), "payload must not contain the character U+0000"))
        }
        Some(_) => {}
    }
    let dedup_id = match object.get("dedup_id") {
        None | Some(Value::Static(simd_json::StaticNode::Null)) => None,
        Some(value) => Some(
            bounded_string(value)
                .map_err(|problem| ApiError::invalid(field("dedup_id"), format!("dedup_id {problem}")))?,
        ),
    };
    Ok(EventFields { event_type, dedup_id })
}

fn bounded_string(value: &Value<'_>) -> Result<String, &'static str> {
    let text = value.as_str().ok_or("must be a string")?;
    if text.is_empty() || text.len() > FIELD_BYTES_MAX {
        return Err("must be 1 to 255 bytes long");
    }
    if text.contains('\0') {
        return Err("must not contain the character U+0000");
    }
    Ok(text.to_owned())
}

fn contains_nul(value: &Value<'_>) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(key, value)| key.contains('\0') || contains_nul(value)),
        Value::Static(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Result<EventFields, (u16, String)> {
        let mut bytes = body.as_bytes().to_vec();
        validate_event(&mut bytes, &mut simd_json::Buffers::default()).map_err(|e| {
            let field = match &e {
                ApiError::InvalidRequest { field, .. } => field.to_string(),
                _ => String::new(),
            };
            (e.status(), format!("{}:{field}", e.code()))
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
            (r#"{"type":"t","payload":{"a":["\u0000"]}}"#, "invalid_request:payload"),
            (r#"{"type":"a\u0000","payload":{}}"#, "invalid_request:type"),
            (r#"[1,2]"#, "invalid_json:"),
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
        // simd-json alone accepts these, skipping what follows the NUL.
        for body in [
            &b"{\"type\":\"t\",\"payload\":{\"n\":1\0junk}}"[..],
            b"{\"type\":\"t\",\"payload\":{\"a\":[null\0?]}}",
        ] {
            let error = validate_event(&mut body.to_vec(), &mut simd_json::Buffers::default()).unwrap_err();
            assert_eq!(error.code(), "invalid_json", "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn invalid_utf8_is_invalid_json() {
        let mut bytes = b"{\"type\":\"\xff\",\"payload\":{}}".to_vec();
        let error = validate_event(&mut bytes, &mut simd_json::Buffers::default()).unwrap_err();
        assert_eq!(error.code(), "invalid_json");
    }
}
