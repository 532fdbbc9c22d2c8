//! Shared by the JSON fuzz targets.
//!
//! - `on_core_stack`: runs each input on one long-lived worker thread whose stack is an
//!   HTTP core's (`triggerd::runtime::HTTP_CORE_STACK_BYTES`, std's 2 MiB default: glommio
//!   sets none). libFuzzer's main thread has a far larger stack, so a recursion that
//!   overflowed a core (20 000 nested `[` through simd-json) never crashed there.
//! - `check_body`: the service's JSON path (gate, simd-json, event contract) checked
//!   against a fresh gate and against `strict_read`.
//! - `strict_read`: an independent reading of a body, to check the JSON gate against:
//!   serde_json (strict RFC 8259, exact float rounding) walked by our own visitor, which
//!   sees every member name (serde_json's `Value` keeps only the last of a repeated one),
//!   every decoded string, and the nesting depth.

use std::collections::HashSet;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use triggerd::ingest::validate::{parse_json, validate_event, FIELD_BYTES_MAX};
use triggerd::ingest::IngestError;
use triggerd::runtime::HTTP_CORE_STACK_BYTES;
use triggerd::util::json::{GateError, DEPTH_MAX};

type Job = (fn(&[u8]), Vec<u8>);

struct Worker {
    jobs: Sender<Job>,
    done: Receiver<()>,
}

/// Runs `check(data)` on the worker thread and waits for it to finish. A panic there
/// aborts the process, and a stack overflow kills it, so libFuzzer records either as a
/// crash with this input.
pub fn on_core_stack(check: fn(&[u8]), data: &[u8]) {
    static WORKER: OnceLock<Mutex<Worker>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (jobs, jobs_in) = mpsc::channel::<Job>();
        let (done_out, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("fuzz-http-core".into())
            .stack_size(HTTP_CORE_STACK_BYTES)
            .spawn(move || {
                for (check, data) in jobs_in {
                    if panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                        std::process::abort();
                    }
                    if done_out.send(()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the fuzz worker thread");
        Mutex::new(Worker { jobs, done })
    });
    let worker = worker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    worker.jobs.send((check, data.to_vec())).expect("the fuzz worker thread is alive");
    worker.done.recv().expect("the fuzz worker thread finished the input");
}

/// Deepest nesting of arrays and objects in `body`, counted without recursion. Exact for
/// valid JSON; for anything else an upper bound of what a parser reaches before it stops
/// (it counts the same way over the valid prefix).
pub fn bracket_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// What the independent reading of a body found.
#[derive(Debug)]
pub enum Strict {
    /// Nested deeper than `DEPTH_MAX` (not read further: it could overflow the stack).
    TooDeep(usize),
    /// serde_json refused it: not RFC 8259 JSON, a lone surrogate escape, or a number
    /// beyond a double's magnitude.
    Invalid(String),
    /// RFC 8259 JSON, with what the gate refuses on top of that.
    Valid { depth: usize, duplicate: Option<String>, nul: bool },
}

impl Strict {
    /// Valid and nothing the gate refuses, numbers' PostgreSQL range aside.
    pub fn clean(&self) -> bool {
        matches!(self, Strict::Valid { duplicate: None, nul: false, .. })
    }
}

pub fn strict_read(body: &[u8]) -> Strict {
    let depth = bracket_depth(body);
    if depth > DEPTH_MAX {
        return Strict::TooDeep(depth);
    }
    let mut walk = Walk::default();
    let mut reader = serde_json::Deserializer::from_slice(body);
    // Safe on a 2 MiB stack: bracket_depth bounds its recursion by DEPTH_MAX.
    reader.disable_recursion_limit();
    let read = Node(&mut walk).deserialize(&mut reader).and_then(|()| reader.end());
    match read {
        Err(error) => Strict::Invalid(error.to_string()),
        Ok(()) => Strict::Valid { depth: walk.deepest, duplicate: walk.duplicate, nul: walk.nul },
    }
}

#[derive(Default)]
struct Walk {
    depth: usize,
    deepest: usize,
    duplicate: Option<String>,
    nul: bool,
}

struct Node<'w>(&'w mut Walk);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, value: f64) -> Result<(), E> {
        assert!(value.is_finite(), "serde_json let through a number beyond a double");
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        self.0.nul |= text.contains('\0');
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let walk = self.0;
        walk.depth += 1;
        walk.deepest = walk.deepest.max(walk.depth);
        while seq.next_element_seed(Node(&mut *walk))?.is_some() {}
        walk.depth -= 1;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let walk = self.0;
        walk.depth += 1;
        walk.deepest = walk.deepest.max(walk.depth);
        let mut names = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            walk.nul |= name.contains('\0');
            if walk.duplicate.is_none() && names.contains(&name) {
                walk.duplicate = Some(name.clone());
            }
            names.insert(name);
            map.next_value_seed(Node(&mut *walk))?;
        }
        walk.depth -= 1;
        Ok(())
    }
}

/// Runs `body` through the service's path on a reused scratch (as an HTTP core does)
/// and checks it against a fresh gate and against `strict_read`:
/// - a reused gate answers as a fresh one, and accepts only the body's own text;
/// - what the gate accepts is RFC 8259 JSON (serde_json reads it), at most `DEPTH_MAX`
///   deep, with no repeated member name and no U+0000;
/// - what serde_json reads whole and clean, the gate refuses only for a number
///   PostgreSQL's numeric cannot hold (the one rule serde_json cannot see);
/// - `parse_json` and `validate_event` refuse exactly what the gate refuses, as
///   invalid_json, and simd-json parses everything the gate accepts without overflowing
///   the core's stack.
///
/// Returns the gate's verdict.
pub fn check_body(body: &[u8], scratch: &mut triggerd::util::json::JsonScratch) -> Result<(), GateError> {
    let verdict = scratch.gate.check(body).map(|text| assert_eq!(text.as_bytes(), body));
    let fresh = triggerd::util::json::Gate::new().check(body).map(drop);
    assert_eq!(verdict, fresh, "a reused gate answers as a fresh one");
    let strict = strict_read(body);
    match (&verdict, &strict) {
        (Ok(()), Strict::Invalid(why)) => panic!("the gate accepted what serde_json refuses: {why}"),
        (Ok(()), Strict::TooDeep(depth)) => panic!("the gate accepted a body {depth} levels deep"),
        (Ok(()), Strict::Valid { depth, .. }) => {
            assert!(*depth <= DEPTH_MAX && strict.clean(), "the gate accepted {strict:?}")
        }
        // The gate trips on the 129th level of a valid prefix, where bracket_depth is exact.
        (Err(GateError::TooDeep { .. }), _) => {
            assert!(matches!(strict, Strict::TooDeep(depth) if depth > DEPTH_MAX), "{strict:?}")
        }
        (Err(error), _) => {
            if strict.clean() {
                assert!(
                    matches!(error, GateError::NumberOutOfRange { .. }),
                    "the gate refused clean JSON ({strict:?}) with {error:?}"
                );
            }
        }
    }
    let mut copy = body.to_vec();
    let parsed = parse_json(&mut copy, scratch).map(drop);
    let mut copy = body.to_vec();
    let event = validate_event(&mut copy, scratch);
    match &verdict {
        Err(_) => {
            assert!(
                matches!(parsed, Err(IngestError::InvalidJson(_))),
                "parse_json on a refused body: {parsed:?}"
            );
            assert!(
                matches!(&event, Err(IngestError::InvalidJson(_))),
                "validate_event on a refused body: {event:?}"
            );
        }
        Ok(()) => {
            assert!(parsed.is_ok(), "simd-json refused a body the gate accepted: {parsed:?}");
            match &event {
                Ok(fields) => {
                    assert!(!fields.event_type.is_empty() && fields.event_type.len() <= FIELD_BYTES_MAX);
                    assert!(!fields.event_type.contains('\0'));
                    if let Some(dedup) = &fields.dedup_id {
                        assert!(!dedup.is_empty() && dedup.len() <= FIELD_BYTES_MAX);
                        assert!(!dedup.contains('\0'));
                    }
                }
                Err(e) => {
                    assert!(
                        matches!(e, IngestError::Invalid { .. }),
                        "validate_event on an accepted body: {e:?}"
                    )
                }
            }
        }
    }
    verdict
}
