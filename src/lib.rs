//! # triggerd
//!
//! A durable, low-latency implementation of the Triggers API: clients POST JSON events
//! with an API key; each event is committed to PostgreSQL before it is acknowledged.
//!
//! The modules are layers, listed here from the bottom up. Each uses only the ones
//! listed before it (`tests/layers.rs` fails otherwise), so each can be read, tested
//! and replaced knowing only what lies beneath it.
//!
//! - [`util`]: leaves. The one wall clock and the wire's date formats (`time`), the
//!   UUIDv7 layout (`ids`), the JSON gate every body passes before any parser and the
//!   response writer (`json`), the one webhook URL parser (`url`), CPUs and limits
//!   and the process's own figures from /proc (`sys`), single-writer counters and the
//!   exposition format (`stats`), log lines written off the caller's thread (`logsink`).
//! - [`http`]: HTTP/1.1 on httparse. The request-head parser and chunked decoder are
//!   plain functions over bytes; the framer (`http::framer`) takes bytes and `now` and
//!   says what to do (read more, answer 100 Continue, a complete request, an error);
//!   the connection loop only moves bytes between the socket, the framer and a
//!   `Handler`, and frames the handler's responses. Apart from the cores, a blocking
//!   listener serves the metrics port (`exporter`).
//! - [`model`]: the domain's nouns: tiers, organisations and their rate windows (one
//!   shared atomic each: this process's slice of the organisation's window, leased from
//!   its budget row; exact across cores and instances).
//! - [`auth`]: API keys (format, Argon2id at rest), the bounded blocking pool where
//!   Argon2 runs, and the fairness throttles that keep one client's wrong keys from
//!   costing everyone else.
//! - [`handoff`]: everything that crosses from an HTTP core to the storage core: one
//!   bounded ring of events per core with its completions, control messages back, and
//!   the commands (key lookups, reads) on two lanes.
//! - [`shard`]: one HTTP core's state, touched only by that core: the key table and the
//!   key-cache protocol, ticket slots, ids, page slots, counters.
//! - [`ingest`]: the path of one event on its core: validate (gate, then simd-json),
//!   admit against the rate window (waiting for a lease when the slice is empty),
//!   assign a UUIDv7, hand off, await the commit.
//! - [`storage`]: the storage core, a thread with a tokio runtime owning every
//!   PostgreSQL connection, each opened by `pg::Target` with TLS as libpq's `sslmode`
//!   says (`tls`): group commit of the rings (`writer`, its decisions in
//!   `writer::plan`), the commands, rate-limit leases (`ratelimit`), revocation across
//!   instances, partitions and retention, checksummed migrations, a private cluster for
//!   development.
//! - [`delivery`]: the webhook engine on the storage thread: leased attempts claimed
//!   from PostgreSQL, signed (Standard Webhooks), retried on a schedule, refused for
//!   private destinations. Its decisions (caps, backlog, claim spacing) are a plain
//!   `Scheduler` that takes `now`; the engine is the IO around it.
//! - [`metrics`]: assembles what each subsystem counts, the gauges and the process's
//!   figures into one exposition, rendered on a thread of its own, never on a core.
//! - [`api`]: the routes; each handler decodes the request, acts through the layers
//!   below and encodes the reply; every error becomes HTTP in one place; request ids
//!   and the access log.
//! - [`runtime`]: the composition root. It reads the configuration, places the
//!   threads (one pinned glommio executor per HTTP core, the storage thread), starts
//!   storage with the delivery engine on it, the Argon2 pool and the cores, tells
//!   systemd when it is ready and alive (`notify`), and shuts them down in order.

pub mod util;

pub mod http;

pub mod model;

pub mod auth;

pub mod handoff;

pub mod shard;

pub mod ingest;

pub mod storage;

pub mod delivery;

pub mod metrics;

pub mod api;

pub mod runtime;
