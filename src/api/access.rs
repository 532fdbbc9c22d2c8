//! The access log (`--access-log`): one JSON object per line on stderr for every
//! request answered, written through the non-blocking `LogSink` (a full queue drops the
//! line and counts it; the core never waits). Always JSON, whatever `--log-format`, and
//! independent of the `--log` filter: it is a record, not a diagnostic.
//!
//! `{"timestamp", "log": "access", "request_id", "method", "path", "route", "status",
//! "duration_us", "organization_id", "client"}`: `method` and `path` (without the query
//! string) are `null` when the request could not be parsed, `organization_id` until a
//! key was verified, and `route` is `none` when no route matched.

use std::net::IpAddr;
use std::time::Duration;

use uuid::Uuid;

use crate::http::Method;
use crate::util::json::ObjectWriter;
use crate::util::logsink::LogSink;

/// One answered request, as the access log records it.
pub struct Entry<'a> {
    pub request_id: &'a [u8],
    pub method: Option<Method>,
    pub path: Option<&'a str>,
    pub route: &'static str,
    pub status: u16,
    pub elapsed: Duration,
    pub organization: Option<Uuid>,
    pub client: Option<IpAddr>,
}

/// Formats the entry at `now_micros` and queues it.
pub fn record(sink: &LogSink, entry: &Entry<'_>, now_micros: i64) {
    sink.send(line(entry, now_micros));
}

/// The entry's line, newline included.
fn line(entry: &Entry<'_>, now_micros: i64) -> Vec<u8> {
    let mut line = Vec::with_capacity(256 + entry.path.map_or(0, str::len));
    let mut object = ObjectWriter::new(&mut line);
    object
        .time("timestamp", now_micros)
        .str("log", "access")
        // Made by the server, or checked by the parser: ASCII letters, digits, `._-`.
        .str("request_id", std::str::from_utf8(entry.request_id).unwrap_or_default())
        .opt_str("method", entry.method.map(Method::as_str))
        .opt_str("path", entry.path)
        .str("route", entry.route)
        .uint("status", u64::from(entry.status))
        .uint("duration_us", entry.elapsed.as_micros().min(u128::from(u64::MAX)) as u64);
    match &entry.organization {
        Some(id) => object.uuid("organization_id", id),
        None => object.null("organization_id"),
    };
    object.opt_str("client", entry.client.map(|ip| ip.to_string()).as_deref());
    object.finish();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_object_per_line() {
        let entry = Entry {
            request_id: b"abc-1",
            method: Some(Method::Post),
            path: Some("/api/events"),
            route: "events",
            status: 202,
            elapsed: Duration::from_micros(412),
            organization: Some(Uuid::from_u128(1)),
            client: Some(IpAddr::from([127, 0, 0, 1])),
        };
        assert_eq!(
            String::from_utf8(line(&entry, 1_000_000)).unwrap(),
            "{\"timestamp\":\"1970-01-01T00:00:01.000000Z\",\"log\":\"access\",\"request_id\":\"abc-1\",\
             \"method\":\"POST\",\"path\":\"/api/events\",\"route\":\"events\",\"status\":202,\"duration_us\":412,\
             \"organization_id\":\"00000000-0000-0000-0000-000000000001\",\"client\":\"127.0.0.1\"}\n"
        );
        let unparsed =
            Entry { method: None, path: None, route: "none", organization: None, client: None, ..entry };
        let text = String::from_utf8(line(&unparsed, 0)).unwrap();
        assert!(text.contains("\"method\":null,\"path\":null,\"route\":\"none\""), "{text}");
        assert!(text.contains("\"organization_id\":null,\"client\":null}"), "{text}");
    }
}
