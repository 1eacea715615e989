//! The audit log in the store: appended per request, trimmed in the same transaction, read
//! newest last.
//!
//! Entries are keyed by sequence number, so the oldest is always the table's first: trimming
//! pops from the front while the log is over its count or its first entry is over its age,
//! which costs the entries it removes (usually none or one), never a scan.

use redb::{ReadableTable, ReadableTableMetadata};
use serde::Deserialize;

use super::{decode, storage, Result, Store, AUDIT};
use crate::auth::{AuditEntry, AuditRetention, AuditScope};

/// Which entries to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this project's entries.
    pub project: Option<String>,
    /// Only entries at or after this time.
    pub since_ms: Option<u64>,
    /// At most this many (the newest); `None`: all.
    pub limit: Option<usize>,
    /// What the reader may see (`auth::audit_scope`).
    pub scope: AuditScope,
}

impl AuditFilter {
    /// Every entry `scope` admits.
    pub fn new(scope: AuditScope) -> AuditFilter {
        AuditFilter {
            project: None,
            since_ms: None,
            limit: None,
            scope,
        }
    }

    fn admits(&self, e: &AuditEntry) -> bool {
        self.scope.admits(e.project.as_deref())
            && self
                .project
                .as_ref()
                .is_none_or(|p| e.project.as_ref() == Some(p))
            && self.since_ms.is_none_or(|s| e.at_ms >= s)
    }
}

/// Appends to a table keyed by sequence number the bytes `encode` makes for the next number,
/// and returns that number (the journal appends the same way).
pub(super) fn append(
    table: &mut redb::Table<u64, &[u8]>,
    encode: impl FnOnce(u64) -> Vec<u8>,
) -> Result<u64> {
    let seq = table
        .last()
        .map_err(storage)?
        .map_or(1, |(k, _)| k.value() + 1);
    table.insert(seq, encode(seq).as_slice()).map_err(storage)?;
    Ok(seq)
}

/// Only the time of an entry, to decide whether it is too old without decoding the rest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct At {
    at_ms: u64,
}

impl Store {
    /// Appends `entry` (its `seq` is assigned here and returned), and drops the entries beyond
    /// `retention`, oldest first, in the same transaction. `entry.at_ms` is the time the age is
    /// measured from.
    pub fn audit(&self, mut entry: AuditEntry, retention: &AuditRetention) -> Result<u64> {
        let max_age_ms = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
        let oldest_kept = entry.at_ms.saturating_sub(max_age_ms);
        let txn = self.db.begin_write().map_err(storage)?;
        let seq;
        {
            let mut table = txn.open_table(AUDIT).map_err(storage)?;
            seq = append(&mut table, |seq| {
                entry.seq = seq;
                serde_json::to_vec(&entry).expect("audit entries serialize")
            })?;
            loop {
                let over_count = table.len().map_err(storage)? > retention.max_entries;
                let too_old = match table.first().map_err(storage)? {
                    Some((k, v)) => {
                        let at: At = decode(&k.value().to_string(), v.value())?;
                        at.at_ms < oldest_kept
                    }
                    None => false,
                };
                if !(over_count || too_old) {
                    break;
                }
                table.pop_first().map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(seq)
    }

    /// The entries `filter` admits, newest last (the newest `filter.limit` of them).
    pub fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(AUDIT).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(storage)?.rev() {
            if filter.limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let (k, v) = item.map_err(storage)?;
            let e: AuditEntry = decode(&k.value().to_string(), v.value())?;
            if filter.admits(&e) {
                out.push(e);
            }
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{authorize, Caller, Outcome, Permission, Role, Who};

    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn developer(projects: &[&str]) -> Caller {
        Caller {
            who: Who::Key {
                id: "0123456789ab".into(),
                name: Some("ci".into()),
            },
            role: Role::Developer,
            projects: Some(projects.iter().map(|p| p.to_string()).collect()),
            source: Some("192.0.2.7:5000".into()),
        }
    }

    fn entry(at_ms: u64, project: Option<&str>) -> AuditEntry {
        let mut e = AuditEntry::new(at_ms, &Caller::cli(0), "deploy");
        e.project = project.map(str::to_string);
        e.environment = Some("production".into());
        e.steps = vec!["deploy shop/production v2 to slot green".into()];
        e
    }

    fn seqs(entries: &[AuditEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// The sequence numbers of every entry, oldest first.
    fn all_seqs(store: &Store) -> Vec<u64> {
        seqs(
            &store
                .audit_entries(&AuditFilter::new(AuditScope::All))
                .unwrap(),
        )
    }

    #[test]
    fn entries_read_back_in_order_with_their_sequence_numbers() {
        let (_dir, store) = temp_store();
        let keep = AuditRetention::default();
        assert_eq!(store.audit(entry(1, Some("shop")), &keep).unwrap(), 1);
        assert_eq!(store.audit(entry(2, None), &keep).unwrap(), 2);
        assert_eq!(all_seqs(&store), [1, 2]);
        let all = store
            .audit_entries(&AuditFilter::new(AuditScope::All))
            .unwrap();
        assert_eq!(
            all[0],
            AuditEntry {
                seq: 1,
                ..entry(1, Some("shop"))
            }
        );
    }

    #[test]
    fn the_log_keeps_at_most_its_count_dropping_the_oldest() {
        let (_dir, store) = temp_store();
        let keep = AuditRetention {
            max_entries: 3,
            ..AuditRetention::default()
        };
        for at in 1..=5 {
            store.audit(entry(at, Some("shop")), &keep).unwrap();
        }
        assert_eq!(all_seqs(&store), [3, 4, 5]);
    }

    #[test]
    fn the_log_drops_entries_older_than_its_age() {
        let (_dir, store) = temp_store();
        let keep = AuditRetention {
            max_entries: 100,
            max_age: Duration::from_secs(90 * 24 * 3600),
        };
        store.audit(entry(0, None), &keep).unwrap();
        store.audit(entry(DAY_MS, None), &keep).unwrap();
        store.audit(entry(90 * DAY_MS, None), &keep).unwrap();
        assert_eq!(all_seqs(&store), [1, 2, 3], "exactly 90 days old is kept");
        store.audit(entry(91 * DAY_MS + 1, None), &keep).unwrap();
        assert_eq!(all_seqs(&store), [3, 4]);
    }

    #[test]
    fn filters_select_by_project_time_scope_and_limit() {
        let (_dir, store) = temp_store();
        let keep = AuditRetention::default();
        for (at, project) in [
            (1, Some("shop")),
            (2, Some("blog")),
            (3, None),
            (4, Some("shop")),
        ] {
            store.audit(entry(at, project), &keep).unwrap();
        }
        let read = |f: AuditFilter| seqs(&store.audit_entries(&f).unwrap());
        let all = || AuditFilter::new(AuditScope::All);
        assert_eq!(
            read(AuditFilter {
                project: Some("shop".into()),
                ..all()
            }),
            [1, 4]
        );
        assert_eq!(
            read(AuditFilter {
                since_ms: Some(2),
                ..all()
            }),
            [2, 3, 4]
        );
        assert_eq!(
            read(AuditFilter {
                limit: Some(2),
                ..all()
            }),
            [3, 4],
            "the newest"
        );
        let dev = crate::auth::audit_scope(&developer(&["shop"])).unwrap();
        assert_eq!(read(AuditFilter::new(dev)), [1, 4]);
        assert_eq!(read(AuditFilter::new(AuditScope::AnyProject)), [1, 2, 4]);
    }

    #[test]
    fn a_denied_request_is_recorded_with_its_caller_and_permission() {
        let (_dir, store) = temp_store();
        let caller = developer(&["shop"]);
        let denied = authorize(&caller, Permission::Deploy, Some("blog")).unwrap_err();
        let mut e = AuditEntry::new(7, &caller, "POST /projects/blog/deploy");
        e.project = Some("blog".into());
        e.outcome = Outcome::from(&denied);
        store.audit(e, &AuditRetention::default()).unwrap();
        let got = &store
            .audit_entries(&AuditFilter::new(AuditScope::All))
            .unwrap()[0];
        assert_eq!(got.actor, "key 0123456789ab (ci)");
        assert_eq!(got.key_id.as_deref(), Some("0123456789ab"));
        assert_eq!(got.role, Some(Role::Developer));
        assert_eq!(got.source.as_deref(), Some("192.0.2.7:5000"));
        assert_eq!(got.outcome.to_string(), "denied: deploy");
    }
}
