//! What the release history adds to a record write that changes a slot (a switch: the active
//! release to grace, the grace one to active), with a full history of 100 entries: the CPU part
//! (the history's JSON read, `History::follow`, its JSON written), and a whole record write to
//! the store on disk (one redb commit, its fsync included) against a write that changes no slot
//! (which does not touch the history).

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};

use codeb::model::releases::{Actor, History};
use codeb::model::{EnvKey, EnvRecord, Release, Slot, SlotRecord, SlotState};
use codeb::store::Store;

fn slot(state: SlotState, image: &str) -> SlotRecord {
    SlotRecord {
        state,
        release: Some(Release::new(image, None, BTreeMap::new(), 8080)),
        since_ms: 1,
        ..SlotRecord::default()
    }
}

/// A record with blue active and green in grace, and its switched twin.
fn records(key: &EnvKey) -> (EnvRecord, EnvRecord) {
    let mut a = EnvRecord::new(key.clone(), "h".into(), "app.test".into(), 20000);
    a.active = Some(Slot::Blue);
    a.blue = slot(SlotState::Active, "ghcr.io/acme/app:sha-0001");
    a.green = slot(SlotState::Grace, "ghcr.io/acme/app:sha-0000");
    let mut b = a.clone();
    b.active = Some(Slot::Green);
    b.blue.state = SlotState::Grace;
    b.green.state = SlotState::Active;
    (a, b)
}

/// A history of 100 entries whose last two are the releases of `a`'s slots.
fn full(key: &EnvKey, a: &EnvRecord) -> History {
    let mut h = History::default();
    let actor = Actor::new("key 0123456789ab (ci)");
    let mut rec = EnvRecord::new(key.clone(), "h".into(), "app.test".into(), 20000);
    for i in 0..98 {
        let mut next = rec.clone();
        next.blue = slot(SlotState::Active, &format!("ghcr.io/acme/app:old-{i:04}"));
        h.follow(Some(&rec), Some(&next), &actor, i);
        rec = next;
    }
    h.follow(Some(&rec), Some(a), &actor, 99);
    h
}

fn bench(c: &mut Criterion) {
    let key = EnvKey::new("app", "production");
    let (a, b) = records(&key);
    let h = full(&key, &a);
    assert_eq!(h.entries.len(), 100);
    let json = serde_json::to_vec(&h).unwrap();
    eprintln!("a history of 100 entries: {} bytes of JSON", json.len());
    let actor = Actor::new("codeb watch");
    c.bench_function(
        "history: follow a switch (100 entries, JSON in and out)",
        |bench| {
            bench.iter(|| {
                let mut h: History = serde_json::from_slice(&json).unwrap();
                assert!(h.follow(Some(&a), Some(&b), &actor, 100));
                serde_json::to_vec(&h).unwrap()
            })
        },
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut rec = store
        .put_env(
            EnvRecord::new(key.clone(), "h".into(), "app.test".into(), 20000),
            None,
        )
        .unwrap();
    for i in 0..99 {
        let mut next = rec.clone();
        next.blue = slot(SlotState::Active, &format!("ghcr.io/acme/app:old-{i:04}"));
        rec = store.put_env(next, Some(rec.generation)).unwrap();
    }
    let mut next = a.clone();
    next.generation = rec.generation;
    rec = store.put_env(next, Some(rec.generation)).unwrap();
    assert_eq!(store.releases(&key).unwrap().entries.len(), 100);
    c.bench_function(
        "store: a switch's record write, history of 100 (commit)",
        |bench| {
            bench.iter(|| {
                let mut next = if rec.active == Some(Slot::Blue) {
                    b.clone()
                } else {
                    a.clone()
                };
                next.generation = rec.generation;
                rec = store.put_env(next, Some(rec.generation)).unwrap();
            })
        },
    );
    c.bench_function(
        "store: a record write that changes no slot (commit)",
        |bench| {
            bench.iter(|| {
                let next = rec.clone();
                rec = store.put_env(next, Some(rec.generation)).unwrap();
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
