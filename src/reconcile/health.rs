//! Observation health: per host and managed zone, when the loop last observed it, and since when
//! it has failed to. What the API's `GET /health` reports.
//!
//! The loop records here as it observes (a host's sweep or an environment's reconcile reads its
//! host, a zone's reconcile reads its zone); nothing here observes or decides. A host or zone that
//! keeps failing is retried on its backoff (up to 15-30 s apart), so it is re-recorded that often,
//! not at every resync.
//!
//! Must not: hold its lock across an `.await` (it never awaits), or keep an error text with a
//! secret in it. The texts are those the loop logs: endpoints and reasons, never a key (the
//! PowerDNS client names the variable holding its key, never the value).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// What was observed: a host by name, or a managed zone by domain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Host(String),
    Zone(String),
}

/// The observations of one host or zone.
///
/// # Guarantees
/// - `failing_since_ms` and `last_error` are set together, from the first failure after a
///   success (or after the start) until the next success, which clears both.
/// - `last_ok_ms` is kept through failures: how long ago the backend was last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Seen {
    /// When it was last observed, in milliseconds since the Unix epoch; `None`: not since the
    /// start.
    pub last_ok_ms: Option<u64>,
    /// When its observations started failing; `None` while they succeed.
    pub failing_since_ms: Option<u64>,
    /// Why the last observation failed (as logged: an endpoint and a reason, never a key).
    pub last_error: Option<String>,
}

impl Seen {
    /// True when it has failed for longer than `ms` at `now_ms`.
    pub fn failing_longer_than(&self, now_ms: u64, ms: u64) -> bool {
        self.failing_since_ms
            .is_some_and(|since| now_ms.saturating_sub(since) > ms)
    }
}

/// Every host and zone the loop has recorded, by name: the JSON of `GET /health`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub hosts: BTreeMap<String, Seen>,
    pub zones: BTreeMap<String, Seen>,
}

impl Snapshot {
    /// True when a host or zone has failed for longer than `ms` at `now_ms` (for `GET /health`:
    /// two resync periods answer 503).
    pub fn any_failing_longer_than(&self, now_ms: u64, ms: u64) -> bool {
        self.hosts
            .values()
            .chain(self.zones.values())
            .any(|s| s.failing_longer_than(now_ms, ms))
    }

    fn entry(&mut self, subject: Subject) -> &mut Seen {
        match subject {
            Subject::Host(h) => self.hosts.entry(h).or_default(),
            Subject::Zone(z) => self.zones.entry(z).or_default(),
        }
    }
}

/// The registry the loop records into and the API reads. Cheap to clone: clones share it.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<Mutex<Snapshot>>);

impl Health {
    /// `subject` was observed at `now_ms`.
    pub fn ok(&self, subject: Subject, now_ms: u64) {
        let mut s = self.lock();
        let seen = s.entry(subject);
        *seen = Seen {
            last_ok_ms: Some(now_ms),
            failing_since_ms: None,
            last_error: None,
        };
    }

    /// `subject` could not be observed at `now_ms`, because of `error`.
    pub fn failed(&self, subject: Subject, now_ms: u64, error: String) {
        let mut s = self.lock();
        let seen = s.entry(subject);
        seen.failing_since_ms.get_or_insert(now_ms);
        seen.last_error = Some(error);
    }

    /// Records one observation: [`Health::ok`] or [`Health::failed`].
    pub fn record(&self, subject: Subject, now_ms: u64, result: Result<(), String>) {
        match result {
            Ok(()) => self.ok(subject, now_ms),
            Err(error) => self.failed(subject, now_ms, error),
        }
    }

    /// A copy of every record.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    /// Drops the hosts and zones the loop no longer observes (gone from the manifests).
    pub fn forget_except(&self, hosts: &BTreeSet<String>, zones: &BTreeSet<String>) {
        let mut s = self.lock();
        s.hosts.retain(|h, _| hosts.contains(h));
        s.zones.retain(|z, _| zones.contains(z));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> Subject {
        Subject::Host(h.into())
    }

    #[test]
    fn a_failure_keeps_its_first_time_and_the_last_success_until_a_success_clears_it() {
        let health = Health::default();
        health.ok(host("app"), 1_000);
        health.failed(host("app"), 2_000, "Podman: down".into());
        health.failed(host("app"), 5_000, "Caddy: down".into());
        let seen = &health.snapshot().hosts["app"];
        assert_eq!(
            seen,
            &Seen {
                last_ok_ms: Some(1_000),
                failing_since_ms: Some(2_000),
                last_error: Some("Caddy: down".into()),
            }
        );
        assert!(seen.failing_longer_than(5_000, 2_999));
        assert!(!seen.failing_longer_than(5_000, 3_000));
        health.ok(host("app"), 6_000);
        assert_eq!(
            health.snapshot().hosts["app"],
            Seen {
                last_ok_ms: Some(6_000),
                ..Seen::default()
            }
        );
    }

    #[test]
    fn hosts_and_zones_are_apart_and_those_no_longer_observed_are_forgotten() {
        let health = Health::default();
        health.record(host("a"), 1, Ok(()));
        health.record(host("b"), 1, Err("unreachable".into()));
        health.record(Subject::Zone("a".into()), 1, Err("PowerDNS: down".into()));
        let s = health.snapshot();
        assert!(s.any_failing_longer_than(10, 5));
        assert!(!s.any_failing_longer_than(10, 9));
        assert_eq!(s.zones["a"].last_ok_ms, None);
        assert_eq!(s.hosts["a"].last_ok_ms, Some(1));
        health.forget_except(&BTreeSet::from(["a".to_string()]), &BTreeSet::new());
        let s = health.snapshot();
        assert_eq!(s.hosts.keys().collect::<Vec<_>>(), ["a"]);
        assert!(s.zones.is_empty());
        assert!(!s.any_failing_longer_than(10, 0));
    }

    #[test]
    fn the_snapshot_serializes_by_name_as_the_api_speaks() {
        let health = Health::default();
        health.ok(host("app"), 7);
        let json = serde_json::to_value(health.snapshot()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "hosts": {"app": {"lastOkMs": 7, "failingSinceMs": null, "lastError": null}},
                "zones": {}
            })
        );
    }
}
