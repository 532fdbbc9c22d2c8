//! Every error the API answers with, and the one place that turns it into a status
//! code and the contract's JSON shape `{"error", "message", ...}`.

use std::borrow::Cow;

use uuid::Uuid;

use crate::ingest::IngestError;
use crate::model::ratelimit::reset_secs;
use crate::shard::auth::AuthError;
use crate::util::json::ShapeError;

use crate::http::response::ResponseBuf;
use crate::util::json::ObjectWriter;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{message}")]
    InvalidRequest { field: Cow<'static, str>, message: String },
    #[error("request bodies must be sent as Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body exceeds the 256 KiB limit")]
    PayloadTooLarge,
    #[error("a valid API key is required (X-API-Key or Authorization: Bearer)")]
    Unauthorized,
    #[error("sign-up is closed on this server: POST /api/keys/generate needs Authorization: Bearer <the admin token the operator set>")]
    AdminTokenRequired,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("this route does not accept that method")]
    MethodNotAllowed { allow: &'static str },
    #[error("no webhook is configured for this organisation: POST /api/webhook/config first")]
    WebhookNotConfigured,
    #[error("an event with this dedup_id was already accepted")]
    DuplicateEvent { event_id: Uuid, dedup_id: String },
    #[error("the organisation's rate limit is exhausted; retry after the window resets")]
    RateLimited { retry_after_secs: u64 },
    /// Costly work refused for fairness (failed key checks, sign-ups, rotations).
    #[error("{what}; retry after {retry_after_secs} s")]
    Throttled { what: &'static str, retry_after_secs: u64 },
    #[error("the request head exceeds the server's limits")]
    HeadersTooLarge,
    #[error("the request was not received in time")]
    RequestTimeout,
    #[error("{0}")]
    Malformed(&'static str),
    #[error("the server is at capacity; retry shortly")]
    Overloaded { retry_after_secs: u64 },
    #[error("an internal error occurred")]
    Internal,
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> ApiError {
        match error {
            AuthError::Unauthorized => ApiError::Unauthorized,
            AuthError::Throttled { what, retry_after_ms } => {
                ApiError::Throttled { what, retry_after_secs: reset_secs(retry_after_ms) }
            }
            AuthError::Overloaded => super::overloaded(),
            AuthError::Internal => ApiError::Internal,
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> ApiError {
        match error {
            IngestError::InvalidJson(message) => ApiError::InvalidJson(message),
            IngestError::Invalid { field, message } => ApiError::InvalidRequest { field, message },
            IngestError::RateLimited { retry_after_secs } => ApiError::RateLimited { retry_after_secs },
            IngestError::Duplicate { event_id, dedup_id } => ApiError::DuplicateEvent { event_id, dedup_id },
            IngestError::Overloaded => super::overloaded(),
        }
    }
}

impl From<ShapeError> for ApiError {
    fn from(error: ShapeError) -> ApiError {
        ApiError::InvalidRequest { field: error.field.into(), message: error.message }
    }
}

impl ApiError {
    pub fn invalid(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest { field: field.into(), message: message.into() }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidRequest { .. } | ApiError::Malformed(_) => 400,
            ApiError::UnsupportedMediaType => 415,
            ApiError::PayloadTooLarge => 413,
            ApiError::Unauthorized | ApiError::AdminTokenRequired => 401,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::DuplicateEvent { .. } | ApiError::WebhookNotConfigured => 409,
            ApiError::RateLimited { .. } | ApiError::Throttled { .. } => 429,
            ApiError::HeadersTooLarge => 431,
            ApiError::RequestTimeout => 408,
            ApiError::Overloaded { .. } => 503,
            ApiError::Internal => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidRequest { .. } | ApiError::Malformed(_) => "invalid_request",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Unauthorized | ApiError::AdminTokenRequired => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::DuplicateEvent { .. } => "duplicate_event",
            ApiError::WebhookNotConfigured => "webhook_not_configured",
            ApiError::RateLimited { .. } | ApiError::Throttled { .. } => "rate_limited",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Internal => "internal",
        }
    }

    /// Writes the JSON body and the headers this error carries. Headers the handler
    /// already added (rate-limit headers) are kept; the body is replaced.
    pub fn write(&self, response: &mut ResponseBuf) -> u16 {
        response.body.clear();
        response.content_type = None;
        let message = self.to_string();
        let mut object = ObjectWriter::new(&mut response.body);
        object.str("error", self.code()).str("message", &message);
        match self {
            ApiError::InvalidRequest { field, .. } => {
                object.str("field", field);
            }
            ApiError::DuplicateEvent { event_id, dedup_id } => {
                object.uuid("event_id", event_id).str("dedup_id", dedup_id);
            }
            ApiError::RateLimited { retry_after_secs }
            | ApiError::Throttled { retry_after_secs, .. }
            | ApiError::Overloaded { retry_after_secs } => {
                object.uint("retry_after", *retry_after_secs);
            }
            _ => {}
        }
        object.finish();
        match self {
            ApiError::MethodNotAllowed { allow } => response.header(b"Allow", allow.as_bytes()),
            ApiError::RateLimited { retry_after_secs }
            | ApiError::Throttled { retry_after_secs, .. }
            | ApiError::Overloaded { retry_after_secs } => {
                response.header_int(b"Retry-After", (*retry_after_secs).max(1))
            }
            _ => {}
        }
        self.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_request_names_its_field() {
        let mut response = ResponseBuf::default();
        let status = ApiError::invalid("type", "type must be a string").write(&mut response);
        assert_eq!(status, 400);
        let body = String::from_utf8(response.body).unwrap();
        assert_eq!(body, r#"{"error":"invalid_request","message":"type must be a string","field":"type"}"#);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let mut response = ResponseBuf::default();
        assert_eq!(ApiError::Overloaded { retry_after_secs: 0 }.write(&mut response), 503);
        assert_eq!(response.headers, b"Retry-After: 1\r\n");
    }
}
