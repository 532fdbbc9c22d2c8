//! Request-head parsing: triggerd's httparse-based parser (ranges into the buffer, no
//! allocation) against a naive baseline that splits lines into owned strings, the way
//! a first hand-written server usually does.

use std::collections::HashMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use triggerd::http::parser::parse_head;

const REQUEST: &[u8] = b"POST /api/events HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: wrk/4.1\r\n\
Accept: */*\r\nX-API-Key: tk_c3cf632c1d1779048b1a91b03cae7bf63471a16d23ee21e44b88815d215daa3129da99693b8c4428\r\n\
Content-Type: application/json\r\nContent-Length: 97\r\nConnection: keep-alive\r\n\r\n";

/// The baseline: a line-splitting parser with an owned header map.
fn naive_parse(bytes: &[u8]) -> Option<(String, String, HashMap<String, String>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some((method, path, headers))
}

fn parser(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_head");
    group.throughput(Throughput::Bytes(REQUEST.len() as u64));
    group.bench_function("triggerd (httparse, ranges)", |b| {
        b.iter(|| parse_head(black_box(REQUEST)).unwrap())
    });
    group.bench_function("baseline (split + owned map)", |b| {
        b.iter(|| naive_parse(black_box(REQUEST)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, parser);
criterion_main!(benches);
