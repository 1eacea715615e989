use super::*;
use crate::model::{EnvKey, EnvRecord};

fn record(project: &str) -> EnvRecord {
    EnvRecord::new(
        EnvKey::new(project, "production"),
        "app".into(),
        format!("{project}.example"),
        4051,
    )
}

#[test]
fn a_write_with_a_stale_generation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = store.put_env(record("a"), None).unwrap();
    assert_eq!(first.generation, 1);
    let second = store.put_env(first.clone(), Some(1)).unwrap();
    assert_eq!(second.generation, 2);
    let err = store.put_env(first, Some(1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: Some(1),
                found: Some(2),
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        store.put_env(record("a"), None),
        Err(Error::Conflict { .. })
    ));
}

#[test]
fn records_survive_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_env(record("a"), None).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.envs.len(), 1);
    assert_eq!(loaded.envs[&EnvKey::new("a", "production")].base_port, 4051);
}

#[test]
fn a_second_process_cannot_open_a_held_store_and_is_told_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let _held = Store::open_as(dir.path(), "codeb apply").unwrap();
    let err = match Store::open(dir.path()) {
        Err(e @ Error::Locked { .. }) => e,
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    };
    let Error::Locked {
        holder: HolderOrUnknown(Some(holder)),
        ..
    } = &err
    else {
        panic!("the holder is not named: {err}");
    };
    assert_eq!(holder.what, "codeb apply");
    assert_eq!(holder.pid, std::process::id());
    let message = err.to_string();
    assert!(
        message.contains("`codeb apply` (pid ") && message.contains(" since 20"),
        "{message}"
    );
}

/// The daemon's store is its alone (every other command reaches it through the socket), so its
/// commits are one-phase: it waits for a reader that opened the file before it started, and a
/// read-only open beside it is refused rather than followed.
#[test]
fn the_daemon_waits_for_an_earlier_reader_and_then_keeps_the_file_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    Store::open_as(dir.path(), "codeb apply")
        .unwrap()
        .put_env(record("a"), None)
        .unwrap();
    let reader = Store::open_read_only(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(reader);
    });
    let daemon = Store::open_daemon(dir.path(), "codeb serve").unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(150),
        "opened beside the reader"
    );
    release.join().unwrap();
    assert_eq!(daemon.load().unwrap().envs.len(), 1);
    daemon.put_env(record("b"), None).unwrap();
    assert!(matches!(
        Store::open_read_only(dir.path()),
        Err(Error::Open { .. })
    ));
    drop(daemon);
    assert_eq!(
        Store::open_read_only(dir.path())
            .unwrap()
            .load()
            .unwrap()
            .envs
            .len(),
        2
    );
}

#[test]
fn a_read_only_open_reads_beside_the_writer_and_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::open_read_only(dir.path()),
        Err(Error::NoStore { .. })
    ));
    let writer = Store::open_as(dir.path(), "codeb apply").unwrap();
    writer.put_env(record("a"), None).unwrap();
    let file = dir.path().join(DB_FILE);
    let before = std::fs::read(&file).unwrap();
    let reader = Store::open_read_only(dir.path()).unwrap();
    assert!(reader.is_read_only());
    assert_eq!(reader.load().unwrap().envs.len(), 1);
    let err = reader.put_env(record("b"), None).unwrap_err();
    assert!(err.to_string().contains("store I/O failed"), "{err}");
    assert!(
        crate::backend::error_chain(&err).contains("opened the store read-only"),
        "{}",
        crate::backend::error_chain(&err)
    );
    drop(reader);
    assert_eq!(std::fs::read(&file).unwrap(), before, "a reader wrote");
    // The writer goes on writing, and a new reader sees it.
    writer.put_env(record("c"), None).unwrap();
    let reader = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.load().unwrap().envs.len(), 2);
}

#[test]
fn an_empty_store_records_nothing_and_creates_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("state");
    let store = Store::empty(&missing).unwrap();
    assert!(store.load().unwrap().envs.is_empty());
    assert!(!missing.exists());
}

#[test]
fn an_intent_without_outcome_is_reported_as_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let entry = |phase, intent| JournalEntry {
        seq: 0,
        at_ms: 1,
        host: "app".into(),
        key: Some(EnvKey::new("a", "production")),
        phase,
        step: "deploy".into(),
        intent,
        message: None,
    };
    let done = store.journal(entry(Phase::Intent, None)).unwrap();
    store.journal(entry(Phase::Done, Some(done))).unwrap();
    let open = store.journal(entry(Phase::Intent, None)).unwrap();
    let interrupted = store.interrupted().unwrap();
    assert_eq!(
        interrupted.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![open]
    );
    assert_eq!(store.journal_entries(Some("a")).unwrap().len(), 3);
    assert!(store.journal_entries(Some("b")).unwrap().is_empty());
}

#[test]
fn zones_are_recorded_with_the_key_variable_name_and_written_only_when_changed() {
    use crate::model::dns::{PowerDnsRef, ZoneRef};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let zone = ZoneRef {
        name: "codeb.kr".into(),
        powerdns: Some(PowerDnsRef {
            api: "http://127.0.0.1:8081".into(),
            server_id: "localhost".into(),
            api_key_env: "PDNS_API_KEY".into(),
        }),
        ttl: 300,
    };
    store.put_zones([&zone]).unwrap();
    store.put_zones([&zone]).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap().zones["codeb.kr"], zone);
}

#[test]
fn the_records_are_decoded_once_per_change_and_a_read_after_a_write_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let empty = store.recorded().unwrap();
    assert!(empty.envs.is_empty());
    assert!(
        std::sync::Arc::ptr_eq(&empty, &store.recorded().unwrap()),
        "nothing changed: the same decoded records"
    );
    let a = store.put_env(record("a"), None).unwrap();
    let after = store.recorded().unwrap();
    assert_eq!(after.envs.len(), 1, "a write is seen by the next read");
    store.delete_env(&a.key, Some(a.generation)).unwrap();
    assert!(store.recorded().unwrap().envs.is_empty());
    // Writes of other tables (the journal, overrides) keep the decoded records.
    let before = store.recorded().unwrap();
    store
        .set_override(
            &EnvKey::new("a", "production"),
            Some(&crate::model::Override {
                image: "x".into(),
                manifest_image: "y".into(),
                by: "t".into(),
                at_ms: 1,
            }),
        )
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&before, &store.recorded().unwrap()));
}

/// A record whose blue slot runs `image` in `state`.
fn running(rec: &EnvRecord, state: crate::model::SlotState, image: &str) -> EnvRecord {
    let mut r = rec.clone();
    r.blue = crate::model::SlotRecord {
        state,
        release: Some(crate::model::Release::new(
            image,
            None,
            Default::default(),
            8080,
        )),
        since_ms: 1,
        ..Default::default()
    };
    r
}

#[test]
fn the_release_history_follows_record_writes_by_their_actor_and_goes_with_the_record() {
    use crate::model::releases::{Actor, ReleaseState, KEEP};
    use crate::model::SlotState;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
    let key = EnvKey::new("a", "production");
    let rec = store.put_env(record("a"), None).unwrap();
    assert!(store.releases(&key).unwrap().entries.is_empty(), "no slot");
    let rec = {
        let _ann = store.act_as([key.clone()], &Actor::new("ann"));
        store
            .put_env(running(&rec, SlotState::Active, "app:v1"), Some(1))
            .unwrap()
    };
    // Not ann's any more: the default actor's.
    let mut rec = store
        .put_env(running(&rec, SlotState::Active, "app:v2"), Some(2))
        .unwrap();
    let h = store.releases(&key).unwrap();
    let seen: Vec<(u64, &str, ReleaseState)> = h
        .entries
        .iter()
        .map(|e| (e.number, e.by.as_str(), e.state))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, "ann", ReleaseState::Replaced),
            (2, "codeb", ReleaseState::Active)
        ]
    );
    // A write that changes no slot leaves the history's row as it was.
    let mut renamed = rec.clone();
    renamed.hostname = "b.example".into();
    rec = store.put_env(renamed, Some(rec.generation)).unwrap();
    assert_eq!(store.releases(&key).unwrap(), h);
    // Bounded: a hundred and fifty more releases keep the last hundred, numbered on.
    store.set_default_actor("codeb watch");
    for i in 0..150 {
        let next = running(&rec, SlotState::Active, &format!("app:x{i}"));
        rec = store.put_env(next, Some(rec.generation)).unwrap();
    }
    let h = store.releases(&key).unwrap();
    assert_eq!(h.entries.len(), KEEP);
    assert_eq!(h.entries.last().unwrap().number, 152);
    assert_eq!(h.entries.last().unwrap().by, "codeb watch");
    // A refused write records nothing.
    assert!(store
        .put_env(running(&rec, SlotState::Grace, "app:zz"), Some(1))
        .is_err());
    assert_eq!(store.releases(&key).unwrap(), h);
    store.delete_env(&key, Some(rec.generation)).unwrap();
    assert!(store.releases(&key).unwrap().entries.is_empty());
}
