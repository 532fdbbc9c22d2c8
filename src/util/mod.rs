//! Leaf utilities: they use nothing else of the crate, and everything may use them.
//! `time` (the one wall clock, calendar arithmetic, the wire's date formats), `ids`
//! (the UUIDv7 layout), `json` (the body gate, the shape check, the response writer),
//! `url` (the one webhook URL parser), `sys` (CPUs, pinning, io_uring, limits, the
//! process's own figures), `stats` (single-writer counters, histograms and the
//! exposition format), `logsink` (log lines written to stderr off the caller's thread).

pub mod ids;
pub mod json;
pub mod logsink;
pub mod stats;
pub mod sys;
pub mod time;
pub mod url;

/// An error and its sources, joined with ": " (`db error: ERROR: relation … does not
/// exist`), so a log line or a start-up failure names the cause, not just its outer
/// wrapper.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
