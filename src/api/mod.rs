//! The API: a router and one file per resource, each handler reading as decode the
//! request, act (through the shard or the storage core), encode the reply. Errors
//! are `ApiError`, turned into HTTP in exactly one place (`error.rs`).

pub mod auth;
pub mod error;
pub mod events;
pub mod health;
pub mod json;
pub mod keys;

use std::rc::Rc;

use crate::http::{Handler, Method, ProtocolError, Request, ResponseBuf};
use crate::shard::Shard;
use error::ApiError;

/// Every route the service serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    KeysGenerate,
    Keys,
    KeysRotate,
    Events,
}

/// (path, route, methods allowed) — the whole routing table.
pub const ROUTES: &[(&str, Route, &str)] = &[
    ("/health", Route::Health, "GET, HEAD"),
    ("/health/ready", Route::Ready, "GET, HEAD"),
    ("/api/keys/generate", Route::KeysGenerate, "POST"),
    ("/api/keys", Route::Keys, "GET, HEAD"),
    ("/api/keys/rotate", Route::KeysRotate, "POST"),
    ("/api/events", Route::Events, "POST"),
];

/// Finds the route for a method and path (query string excluded).
pub fn route(method: Method, path: &str) -> Result<Route, ApiError> {
    let Some(&(_, route, allow)) = ROUTES.iter().find(|(p, _, _)| *p == path) else {
        return Err(ApiError::NotFound("no such route"));
    };
    let name = match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        _ => return Err(ApiError::MethodNotAllowed { allow }),
    };
    if allow.split(", ").any(|m| m == name) {
        Ok(route)
    } else {
        Err(ApiError::MethodNotAllowed { allow })
    }
}

/// The API as the HTTP layer sees it; one per core.
pub struct Api {
    pub shard: Rc<Shard>,
}

impl Api {
    async fn dispatch(&self, request: Request<'_>, response: &mut ResponseBuf) -> Result<u16, ApiError> {
        let shard = &*self.shard;
        match route(request.head.method, request.path())? {
            Route::Health => health::live(response),
            Route::Ready => health::ready(shard, response),
            Route::KeysGenerate => keys::generate(shard, request, response).await,
            Route::Keys => keys::show(shard, request, response).await,
            Route::KeysRotate => keys::rotate(shard, request, response).await,
            Route::Events => events::post(shard, request, response).await,
        }
    }
}

impl Handler for Api {
    async fn handle<'a>(&'a self, request: Request<'a>, response: &'a mut ResponseBuf) -> u16 {
        match self.dispatch(request, response).await {
            Ok(status) => status,
            Err(error) => error.write(response),
        }
    }

    fn protocol_error(&self, error: ProtocolError, response: &mut ResponseBuf) -> u16 {
        let error = match error {
            ProtocolError::Malformed(why) => ApiError::Malformed(why),
            ProtocolError::HeadTooLarge => ApiError::HeadersTooLarge,
            ProtocolError::BodyTooLarge => ApiError::PayloadTooLarge,
            ProtocolError::Timeout => ApiError::RequestTimeout,
            ProtocolError::UnsupportedTransferEncoding => {
                ApiError::Malformed("only the chunked transfer encoding is supported")
            }
        };
        error.write(response)
    }
}

/// Checks the content type and that a body is present, for routes that take one.
pub fn require_json(request: &Request<'_>) -> Result<(), ApiError> {
    if !request.is_json() {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_methods_and_unknown_paths() {
        assert_eq!(route(Method::Post, "/api/events").unwrap(), Route::Events);
        assert_eq!(route(Method::Head, "/health").unwrap(), Route::Health);
        assert!(matches!(
            route(Method::Get, "/api/events"),
            Err(ApiError::MethodNotAllowed { allow: "POST" })
        ));
        assert!(matches!(route(Method::Delete, "/api/keys"), Err(ApiError::MethodNotAllowed { .. })));
        assert!(matches!(route(Method::Get, "/api/events/"), Err(ApiError::NotFound(_))));
        assert!(matches!(route(Method::Get, "/nope"), Err(ApiError::NotFound(_))));
    }
}
