//! The shape of a body once it is valid JSON: a top-level object with known members.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// A body of valid JSON that is not the object a route expects; `field` names the
/// offending member, or is `body` when the body is not an object at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShapeError {
    pub field: String,
    pub message: String,
}

/// The body's top-level object, refusing any member not in `allowed`.
pub fn object_with_fields<'v, 'a>(
    value: &'v BorrowedValue<'a>,
    allowed: &[&str],
) -> Result<&'v simd_json::value::borrowed::Object<'a>, ShapeError> {
    let object = value.as_object().ok_or_else(|| ShapeError {
        field: "body".into(),
        message: "the body must be a JSON object (it is valid JSON of another shape)".into(),
    })?;
    if let Some(key) = object.keys().find(|key| !allowed.contains(&key.as_ref())) {
        return Err(ShapeError {
            field: key.to_string(),
            message: format!("unknown field {key:?}; allowed: {}", allowed.join(", ")),
        });
    }
    Ok(object)
}
