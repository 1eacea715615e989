//! Verifying an API key against a store of 1,000 keys (target: under 50 µs, the share of a
//! request's time authentication may take).
//!
//! A valid key (one read transaction, two lookups, one HMAC), a key with the right id and a
//! wrong secret (the same work), and a malformed one (refused before the store). The store is
//! on disk in a temporary directory, as the daemon's is; reads come from redb's page cache.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use codeb::auth::{NewKey, Role};
use codeb::store::Store;

const KEYS: usize = 1_000;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let spec = |i: usize| NewKey {
        role: Role::Developer,
        name: Some(format!("key-{i}")),
        projects: Some([format!("project-{i}")].into()),
        expires_in: Some(Duration::from_secs(90 * 24 * 3600)),
    };
    let issued: Vec<_> = (0..KEYS)
        .map(|i| store.create_key(&spec(i), 0).unwrap().1)
        .collect();
    let key = issued[KEYS / 2].expose().to_string();
    let last = if key.ends_with('0') { "1" } else { "0" };
    let wrong = format!("{}{last}", &key[..key.len() - 1]);

    c.bench_function("verify a valid key among 1,000", |b| {
        b.iter(|| store.verify_key(&key, 1).unwrap())
    });
    c.bench_function("verify a wrong secret with a known id", |b| {
        b.iter(|| store.verify_key(&wrong, 1).unwrap_err())
    });
    c.bench_function("verify a malformed key", |b| {
        b.iter(|| store.verify_key("codeb_admin_not-a-key", 1).unwrap_err())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
