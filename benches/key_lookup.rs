//! Authenticating a request's key: the per-core key table (SHA-256 + constant-time
//! compare) against the naive baseline of verifying the Argon2id hash on every
//! request, which is what a service without the cache would pay.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use triggerd::auth::keys::{hash_key, key_digest, parse_lookup_id, verify_key, NewKey, ARGON2_MEMORY_KIB};
use triggerd::model::{Org, Tier};
use triggerd::shard::keytable::{KeyTable, Lookup};
use uuid::Uuid;

fn lookup(c: &mut Criterion) {
    let mut table = KeyTable::new(100_000, 10_000);
    let mut keys = Vec::new();
    for i in 0..10_000u32 {
        let new = NewKey::generate().unwrap();
        let org = Arc::new(Org {
            id: Uuid::from_u128(u128::from(i)),
            name: format!("org-{i}"),
            tier: Tier::Enterprise,
            rate_limit_per_minute: 100_000,
            created_at_micros: 0,
            rate: Arc::default(),
        });
        let epoch = table.epoch();
        table.insert_verified(new.lookup_id, key_digest(new.key.as_bytes()), org, epoch);
        keys.push(new.key);
    }
    let key = keys[4_321].as_bytes();
    let stored = hash_key(&keys[4_321], ARGON2_MEMORY_KIB).unwrap();

    let mut group = c.benchmark_group("key_lookup");
    group.bench_function("triggerd (key table of 10k, sha256 + ct compare)", |b| {
        b.iter(|| {
            let key = black_box(key);
            let lookup_id = parse_lookup_id(key).unwrap();
            match table.lookup(lookup_id, &key_digest(key), 0) {
                Lookup::Hit(org) => org,
                _ => unreachable!(),
            }
        })
    });
    group.sample_size(10);
    group.bench_function("baseline (argon2id verify per request)", |b| {
        b.iter(|| assert!(verify_key(black_box(key), &stored)))
    });
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
