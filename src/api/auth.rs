//! The API's side of authentication: the key-cache protocol is the shard's
//! (`shard::auth`); here a request's key and address go in and an `ApiError` comes out.

use super::error::ApiError;
use crate::auth::throttle::Refused;
use crate::http::Request;
use crate::shard::auth::Authenticated;
use crate::shard::Shard;

/// Verifies the request's key; the organisation is noted on the request (for the
/// access log).
pub async fn authenticate(shard: &Shard, request: &Request<'_>) -> Result<Authenticated, ApiError> {
    let authenticated = shard.authenticate(request.api_key(), request.peer).await?;
    request.note_principal(authenticated.org.id.as_u128());
    Ok(authenticated)
}

/// A throttle's refusal as the API's 429.
pub fn throttled(verdict: Result<(), Refused>, what: &'static str) -> Result<(), ApiError> {
    verdict.map_err(|refused| ApiError::Throttled {
        what,
        retry_after_secs: crate::model::ratelimit::reset_secs(refused.retry_after_ms),
    })
}
