//! Event validation: the JSON gate and simd-json parsing in place with reused buffers,
//! against the baseline of serde_json into an owned `Value` with the same checks, and
//! against v1's path (simd-json alone, no gate), all in one run: the gate's cost is
//! the difference between the first two rows.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use triggerd::ingest::validate::{event_from_value, parse_gated, validate_event};
use triggerd::util::json::{Gate, JsonScratch};

const EVENT: &str = r#"{"type":"order.created","dedup_id":"order-12345-created","payload":{"order_id":12345,"amount":"19.90","currency":"EUR","customer":{"id":"c-981","email":"someone@example.com","tags":["vip","eu"]},"items":[{"sku":"A-1","qty":2,"price":5.95},{"sku":"B-7","qty":1,"price":8.00}],"note":"leave at the door"}}"#;

/// The baseline: serde_json into an owned tree, then the same contract checks.
fn baseline(body: &[u8]) -> Option<(String, Option<String>)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    if object.keys().any(|k| !matches!(k.as_str(), "type" | "payload" | "dedup_id")) {
        return None;
    }
    let event_type = object.get("type")?.as_str().filter(|t| !t.is_empty() && t.len() <= 255)?;
    object.get("payload")?.as_object()?;
    let dedup = object.get("dedup_id").and_then(|d| d.as_str()).map(str::to_string);
    Some((event_type.to_string(), dedup))
}

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_event");
    group.throughput(Throughput::Bytes(EVENT.len() as u64));
    let mut json = JsonScratch::default();
    let mut scratch = EVENT.as_bytes().to_vec();
    group.bench_function("triggerd (gate + simd-json, reused buffers)", |b| {
        b.iter(|| {
            scratch.copy_from_slice(EVENT.as_bytes());
            validate_event(black_box(&mut scratch), &mut json).unwrap()
        })
    });
    group.bench_function("v1 path (simd-json without the gate)", |b| {
        b.iter(|| {
            scratch.copy_from_slice(EVENT.as_bytes());
            event_from_value(&parse_gated(black_box(&mut scratch), &mut json).unwrap()).unwrap()
        })
    });
    let mut gate = Gate::new();
    group.bench_function("the gate alone", |b| b.iter(|| gate.check(black_box(EVENT.as_bytes())).is_ok()));
    group.bench_function("baseline (serde_json Value)", |b| {
        b.iter(|| baseline(black_box(EVENT.as_bytes())).unwrap())
    });
    group.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
