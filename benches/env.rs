//! The cost of the env store per version of 50 keys (values of 40 bytes, a typical `.env`): sealing
//! and opening with XChaCha20-Poly1305 (serializing the values included), the keyed digests of
//! `env list`, and a whole version written to and read from the store on disk (one redb commit,
//! its fsync included: what `codeb env set` pays before its rollout).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use codeb::model::vars::EnvValues;
use codeb::model::EnvKey;
use codeb::store::secrets::Keyring;
use codeb::store::Store;

const KEYS: usize = 50;

fn values() -> EnvValues {
    EnvValues(
        (0..KEYS)
            .map(|i| {
                (
                    format!("SETTING_{i:02}"),
                    format!("{i:02}-{}", "x".repeat(37)),
                )
            })
            .collect(),
    )
}

fn bench(c: &mut Criterion) {
    let ring = Keyring::from_master(&[7; 32], Default::default());
    let v = values();
    let aad = "codeb-env-v1\x00app\x00production\x001";
    c.bench_function("seal a version of 50 keys", |b| {
        b.iter(|| ring.seal_values(aad, &v).unwrap())
    });
    let sealed = ring.seal_values(aad, &v).unwrap();
    c.bench_function("open a version of 50 keys", |b| {
        b.iter(|| ring.open_values(aad, &sealed).unwrap())
    });
    let key = EnvKey::new("app", "production");
    c.bench_function("keyed digests of 50 values", |b| {
        b.iter(|| {
            v.0.iter()
                .map(|(n, x)| ring.value_digest(&key, n, x))
                .collect::<Vec<_>>()
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut latest = None;
    c.bench_function("write a version of 50 keys to the store (commit)", |b| {
        b.iter(|| {
            let s = store
                .put_env_version(&key, latest, &v, "bench", 0, None)
                .unwrap();
            latest = Some(s.version);
        })
    });
    let n = latest.unwrap();
    c.bench_function("read and open a version of 50 keys from the store", |b| {
        b.iter(|| store.open_env(&key, n).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
