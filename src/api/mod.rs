//! The API: a router and one file per resource, each handler reading as decode the
//! request, act (through the shard or the storage core), encode the reply. Errors
//! are `ApiError`, turned into HTTP in exactly one place (`error.rs`).

mod access;
mod ack;
mod auth;
mod delivery;
mod error;
mod events;
mod health;
mod inbox;
mod keys;
mod leases;
mod metrics;
mod stream;
mod webhooks;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::handoff::commands::{Command, Reply};
use crate::http::{Handler, Method, ProtocolError, Request, ResponseBuf};
use crate::metrics::Scraper;
use crate::shard::{Shard, REQUEST_ID_GENERATED_BYTES_MAX};
use crate::util::logsink::LogSink;
use error::ApiError;

/// Seconds a client should wait after a 503 for overload.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// Route labels for metrics, indexed by `Route` discriminant. `none`: the request never
/// reached a route (protocol error, 404).
pub const ROUTE_LABELS: &[&str] = &[
    "none",
    "health",
    "health_ready",
    "metrics",
    "keys_generate",
    "keys",
    "keys_rotate",
    "events",
    "events_batch",
    "inbox",
    "ack",
    "ack_batch",
    "webhook_config",
    "inbox_lease",
    "inbox_lease_ack",
    "inbox_lease_release",
    "events_stream",
    "event",
    "events_attempts",
    "events_redeliver",
    "webhook_secret_rotate",
    "webhook_replay",
];

/// Every route the service serves. The discriminant indexes `ROUTE_LABELS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health = 1,
    Ready,
    Metrics,
    KeysGenerate,
    Keys,
    KeysRotate,
    Events,
    EventsBatch,
    Inbox,
    Ack,
    AckBatch,
    WebhookConfig,
    InboxLease,
    InboxLeaseAck,
    InboxLeaseRelease,
    EventsStream,
    Event,
    EventAttempts,
    EventRedeliver,
    WebhookSecretRotate,
    WebhookReplay,
}

/// (path template, route, methods allowed) — the whole routing table, tried in order.
/// `{id}` matches one non-empty path segment; fixed templates come first, so a fixed
/// segment wins over `{id}`.
pub const ROUTES: &[(&str, Route, &str)] = &[
    ("/health", Route::Health, "GET, HEAD"),
    ("/health/ready", Route::Ready, "GET, HEAD"),
    ("/metrics", Route::Metrics, "GET, HEAD"),
    ("/api/keys/generate", Route::KeysGenerate, "POST"),
    ("/api/keys", Route::Keys, "GET, HEAD"),
    ("/api/keys/rotate", Route::KeysRotate, "POST"),
    ("/api/events", Route::Events, "POST"),
    ("/api/events/batch", Route::EventsBatch, "POST"),
    ("/api/events/stream", Route::EventsStream, "GET"),
    ("/api/inbox", Route::Inbox, "GET, HEAD"),
    ("/api/ack/{id}", Route::Ack, "POST"),
    ("/api/ack", Route::AckBatch, "POST"),
    ("/api/webhook/config", Route::WebhookConfig, "GET, HEAD, POST"),
    ("/api/inbox/lease", Route::InboxLease, "POST"),
    ("/api/inbox/lease/{id}/ack", Route::InboxLeaseAck, "POST"),
    ("/api/inbox/lease/{id}/release", Route::InboxLeaseRelease, "POST"),
    ("/api/events/{id}", Route::Event, "GET, HEAD"),
    ("/api/events/{id}/attempts", Route::EventAttempts, "GET, HEAD"),
    ("/api/events/{id}/redeliver", Route::EventRedeliver, "POST"),
    ("/api/webhook/secret/rotate", Route::WebhookSecretRotate, "POST"),
    ("/api/webhook/replay", Route::WebhookReplay, "POST"),
];

/// A matched route and its `{id}` segment, if the template has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched<'a> {
    pub route: Route,
    pub id: Option<&'a str>,
}

fn match_template<'a>(template: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut id = None;
    let mut segments = path.split('/');
    for expected in template.split('/') {
        let segment = segments.next()?;
        match expected {
            "{id}" if !segment.is_empty() => id = Some(segment),
            _ if expected == segment => {}
            _ => return None,
        }
    }
    segments.next().is_none().then_some(id)
}

/// Finds the route for a method and path (query string excluded).
pub fn route(method: Method, path: &str) -> Result<Matched<'_>, ApiError> {
    let Some((route, allow, id)) = ROUTES
        .iter()
        .find_map(|(template, route, allow)| Some((*route, *allow, match_template(template, path)?)))
    else {
        return Err(ApiError::NotFound("no such route"));
    };
    let name = match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        _ => return Err(ApiError::MethodNotAllowed { allow }),
    };
    if allow.split(", ").any(|m| m == name) {
        Ok(Matched { route, id })
    } else {
        Err(ApiError::MethodNotAllowed { allow })
    }
}

/// The API as the HTTP layer sees it; one per core, built by the runtime.
pub struct Api {
    /// This core's state.
    pub shard: Rc<Shard>,
    /// The way to `GET /metrics` on this port; `None` when metrics are served on
    /// `--metrics-listen` only (then 404 here).
    pub metrics: Option<Scraper>,
    /// Where access-log lines go (`--access-log`); `None`: no access log.
    pub access_log: Option<LogSink>,
}

impl Api {
    async fn dispatch(
        &self,
        request: Request<'_>,
        response: &mut ResponseBuf,
        route: Route,
        id: Option<&str>,
    ) -> Result<u16, ApiError> {
        let shard = &*self.shard;
        match route {
            Route::Health => health::live(response),
            Route::Ready => health::ready(shard, response),
            Route::Metrics => metrics::scrape(self.metrics.as_ref(), response).await,
            Route::KeysGenerate => keys::generate(shard, request, response).await,
            Route::Keys => keys::show(shard, request, response).await,
            Route::KeysRotate => keys::rotate(shard, request, response).await,
            Route::Events => events::post(shard, request, response).await,
            Route::EventsBatch => events::post_batch(shard, request, response).await,
            Route::Inbox => inbox::list(shard, request, response).await,
            Route::Ack => ack::one(shard, request, id.unwrap_or_default(), response).await,
            Route::AckBatch => ack::many(shard, request, response).await,
            Route::WebhookConfig if request.head.method == crate::http::Method::Post => {
                webhooks::configure(shard, request, response).await
            }
            Route::WebhookConfig => webhooks::show(shard, request, response).await,
            Route::InboxLease => leases::lease(shard, request, response).await,
            Route::InboxLeaseAck => leases::ack(shard, request, id.unwrap_or_default(), response).await,
            Route::InboxLeaseRelease => {
                leases::release(shard, request, id.unwrap_or_default(), response).await
            }
            Route::EventsStream => stream::read(&self.shard, request, response).await,
            Route::Event => delivery::get(shard, request, id.unwrap_or_default(), response).await,
            Route::EventAttempts => {
                delivery::attempts(shard, request, id.unwrap_or_default(), response).await
            }
            Route::EventRedeliver => {
                delivery::redeliver(shard, request, id.unwrap_or_default(), response).await
            }
            Route::WebhookSecretRotate => webhooks::rotate_secret(shard, request, response).await,
            Route::WebhookReplay => delivery::replay(shard, request, response).await,
        }
    }
}

impl Handler for Api {
    async fn handle<'a>(&'a self, request: Request<'a>, response: &'a mut ResponseBuf) -> u16 {
        let started = Instant::now();
        // Every request brings the core's shedding verdict up to date (its gauge too),
        // even while no event arrives or commits.
        self.shard.tickets().refresh();
        let mut generated = [0u8; REQUEST_ID_GENERATED_BYTES_MAX];
        let theirs = request.request_id();
        let made = if theirs.is_none() { self.shard.next_request_id(&mut generated) } else { 0 };
        let request_id = theirs.unwrap_or(&generated[..made]);
        let (method, path, client) = (request.head.method, request.path(), request.peer);
        // The handlers note the organisation here once a key is verified.
        let organization = Cell::new(None);
        let request = request.with_principal(&organization);
        let (route_index, result) = match route(method, path) {
            Ok(Matched { route, id }) => {
                let id = id.map(str::to_owned);
                (route as usize, self.dispatch(request, response, route, id.as_deref()).await)
            }
            Err(error) => (0, Err(error)),
        };
        let status = result.unwrap_or_else(|error| error.write(response));
        response.header(b"X-Request-Id", request_id);
        let route = ROUTE_LABELS[route_index];
        if status >= 500 {
            let request_id = std::str::from_utf8(request_id).unwrap_or_default();
            tracing::warn!(request_id, route, status, "request answered with a server error");
        }
        let elapsed = started.elapsed();
        self.shard.metrics().request(route_index, status, elapsed);
        if let Some(sink) = &self.access_log {
            let organization = organization.get().map(uuid::Uuid::from_u128);
            let (method, path, client) = (Some(method), Some(path), Some(client));
            let entry =
                access::Entry { request_id, method, path, route, status, elapsed, organization, client };
            access::record(sink, &entry, crate::util::time::now_micros());
        }
        status
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
            ProtocolError::TooManyConnections => overloaded(),
        };
        let status = error.write(response);
        let mut generated = [0u8; REQUEST_ID_GENERATED_BYTES_MAX];
        let made = self.shard.next_request_id(&mut generated);
        let request_id = &generated[..made];
        response.header(b"X-Request-Id", request_id);
        self.shard.metrics().request(0, status, Duration::ZERO);
        if let Some(sink) = &self.access_log {
            let entry = access::Entry {
                request_id,
                method: None,
                path: None,
                route: ROUTE_LABELS[0],
                status,
                elapsed: Duration::ZERO,
                organization: None,
                client: None,
            };
            access::record(sink, &entry, crate::util::time::now_micros());
        }
        status
    }
}

/// Checks the content type, for routes that take a body.
pub fn require_json(request: &Request<'_>) -> Result<(), ApiError> {
    if !request.is_json() {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(())
}

pub fn overloaded() -> ApiError {
    ApiError::Overloaded { retry_after_secs: OVERLOADED_RETRY_AFTER_SECS }
}

/// Sends a command to the storage core and awaits its answer. A full queue or a
/// database failure is a 503: the client may retry.
pub async fn ask<T>(shard: &Shard, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    shard.commands().send(command(reply)).map_err(|_| overloaded())?;
    answer.await.map_err(|_| ApiError::Internal)?.map_err(|error| {
        tracing::warn!(error = %error, "storage command failed");
        overloaded()
    })
}

/// Gates and parses a JSON request body in place into a simd-json value, after the
/// media type check.
pub fn parse_json_body<'a>(
    request: &'a mut Request<'_>,
    scratch: &mut crate::util::json::JsonScratch,
) -> Result<simd_json::BorrowedValue<'a>, ApiError> {
    require_json(request)?;
    Ok(crate::ingest::validate::parse_json(request.body, scratch)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(method: Method, path: &str) -> Result<(Route, Option<&str>), &'static str> {
        route(method, path).map(|m| (m.route, m.id)).map_err(|e| e.code())
    }

    #[test]
    fn routes_methods_and_unknown_paths() {
        assert_eq!(matched(Method::Post, "/api/events"), Ok((Route::Events, None)));
        assert_eq!(matched(Method::Post, "/api/events/batch"), Ok((Route::EventsBatch, None)));
        assert_eq!(matched(Method::Head, "/health"), Ok((Route::Health, None)));
        assert_eq!(matched(Method::Post, "/api/ack/abc"), Ok((Route::Ack, Some("abc"))));
        assert_eq!(matched(Method::Post, "/api/ack"), Ok((Route::AckBatch, None)));
        assert_eq!(matched(Method::Get, "/api/events"), Err("method_not_allowed"));
        assert_eq!(matched(Method::Get, "/api/ack/abc"), Err("method_not_allowed"));
        assert_eq!(matched(Method::Delete, "/api/keys"), Err("method_not_allowed"));
        assert_eq!(matched(Method::Post, "/api/ack/a/b"), Err("not_found"));
        assert_eq!(matched(Method::Post, "/api/ack/"), Err("not_found"));
        assert_eq!(matched(Method::Get, "/api/events/"), Err("not_found"));
        assert_eq!(matched(Method::Get, "/nope"), Err("not_found"));
        assert_eq!(matched(Method::Get, "/api/events/abc"), Ok((Route::Event, Some("abc"))));
        assert_eq!(matched(Method::Get, "/api/events/abc/attempts"), Ok((Route::EventAttempts, Some("abc"))));
        assert_eq!(
            matched(Method::Post, "/api/events/abc/redeliver"),
            Ok((Route::EventRedeliver, Some("abc")))
        );
        // Fixed segments win over {id}.
        assert_eq!(matched(Method::Get, "/api/events/batch"), Err("method_not_allowed"));
        assert_eq!(matched(Method::Get, "/api/events/stream"), Ok((Route::EventsStream, None)));
        // A held stream read without a body to hold it for: GET only.
        assert_eq!(matched(Method::Head, "/api/events/stream"), Err("method_not_allowed"));
        assert_eq!(matched(Method::Post, "/api/inbox/lease"), Ok((Route::InboxLease, None)));
        assert_eq!(
            matched(Method::Post, "/api/inbox/lease/xyz/ack"),
            Ok((Route::InboxLeaseAck, Some("xyz")))
        );
        assert_eq!(
            matched(Method::Post, "/api/inbox/lease/xyz/release"),
            Ok((Route::InboxLeaseRelease, Some("xyz")))
        );
        assert_eq!(matched(Method::Post, "/api/inbox/lease//ack"), Err("not_found"));
        assert_eq!(matched(Method::Post, "/api/inbox/lease/xyz/ack/more"), Err("not_found"));
        assert_eq!(matched(Method::Get, "/api/inbox/lease/xyz/ack"), Err("method_not_allowed"));
    }

    #[test]
    fn route_discriminants_index_the_metric_labels() {
        for (template, route, _) in ROUTES {
            let label = ROUTE_LABELS[*route as usize];
            let expected = template
                .trim_start_matches("/api/")
                .trim_start_matches('/')
                .replace("/{id}", "")
                .replace('/', "_");
            let expected = match expected.as_str() {
                "ack" if *route == Route::AckBatch => "ack_batch".to_string(),
                "events" if *route == Route::Event => "event".to_string(),
                "webhook_config" => "webhook_config".to_string(),
                other => other.to_string(),
            };
            assert_eq!(label, expected, "{template}");
        }
    }
}
