//! # triggerd
//!
//! A durable, low-latency implementation of the Triggers API: clients POST JSON events
//! with an API key; each event is committed to PostgreSQL before it is acknowledged.
//!
//! A tour, following one event:
//!
//! - [`runtime`] places the threads: one pinned glommio (io_uring) executor per HTTP
//!   core, each with its own `SO_REUSEPORT` listener, and one storage thread. It is the
//!   only module besides `http` that names glommio.
//! - [`http`] is the hand-written HTTP/1.1 layer on httparse: the request-head parser
//!   and chunked decoder (plain functions over bytes), the response writer with
//!   pre-rendered heads and a cached `Date`, and the connection loop (keep-alive,
//!   pipelining, timeouts, limits).
//! - [`api`] routes a request to one handler per resource; each decodes, acts and
//!   encodes, and every error becomes HTTP in `api::error`.
//! - [`auth`] owns API keys: their format, the Argon2id hash stored at rest and the
//!   bounded blocking pool where Argon2 runs.
//! - [`shard`] is the per-core state: the key table (verified keys, negative cache),
//!   the organisation rate windows (one shared atomic each, exact across cores), the id
//!   generator. No locks.
//! - [`ingest`] is the path of one event on its core: validate (simd-json), admit
//!   against the rate window, assign a UUIDv7, hand off, await the commit.
//! - [`handoff`] carries events to the storage core over one bounded lock-free ring per
//!   core, and outcomes back through a completion ring and one waker per core.
//! - [`storage`] is the storage core: a tokio current-thread runtime that batches the
//!   rings into one `INSERT … SELECT FROM unnest(…)` per commit (group commit on two
//!   connections), runs commands from the HTTP cores, applies migrations, and can run a
//!   private PostgreSQL cluster.
//! - [`delivery`] is the webhook engine on the storage thread: leased attempts claimed
//!   from PostgreSQL, signed (Standard Webhooks), retried on a schedule, refused for
//!   private destinations; its logic (schedule, address guard) is plain functions.
//! - [`metrics`] keeps per-core counters that only their core writes, merged on scrape.
//! - [`model`] holds the domain types both sides share; [`config`] every knob.

pub mod api;
pub mod auth;
pub mod delivery;
pub mod handoff;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod runtime;
pub mod shard;
pub mod storage;
pub mod util;
