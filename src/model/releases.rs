//! The release history of one project environment: every release that entered one of its slots,
//! numbered 1, 2, 3… per environment, with its image and stored env version, who started it and
//! when, and how it ended (`codeb releases`, `codeb rollback --to N`).
//!
//! The history follows the environment's record: the store calls [`History::follow`] with the
//! record before and after each write, in the same transaction, so the history never disagrees
//! with the slots and survives a crash at any point exactly as the record does. A release is what
//! a slot runs (its hash is the container label `codeb.release`): a new hash in a slot is a new
//! release, a state change of the same hash moves its entry along.
//!
//! Bounded: the last [`KEEP`] entries per environment; the oldest is dropped first, except a
//! release still in a slot. Numbers are never reused (`next` survives the drops).
//!
//! Pure: no store, no clock (`now_ms` is passed in).

use serde::{Deserialize, Serialize};

use super::{EnvRecord, Slot, SlotRecord, SlotState};

/// How many entries each environment keeps. A hundred releases is months of daily deploys; an
/// entry is ~250 bytes of JSON, so a full history is ~25 KB, read and written only when a slot's
/// release or state changes (a handful of times per release).
pub const KEEP: usize = 100;

/// Where a release is, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseState {
    /// Being created and health-checked.
    Deploying,
    /// Healthy on its preview URL, waiting for `codeb promote`.
    Deployed,
    /// Serving the hostname.
    Active,
    /// Rolled away from (or superseded), kept running for an instant rollback.
    Grace,
    /// Ended: its slot was emptied (its grace period ended, or it was abandoned while deploying).
    Retired,
    /// Ended: it never passed its health check.
    Failed,
    /// Ended: a newer release was deployed into its slot.
    Replaced,
}

impl ReleaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Deploying => "deploying",
            ReleaseState::Deployed => "deployed",
            ReleaseState::Active => "active",
            ReleaseState::Grace => "grace",
            ReleaseState::Retired => "retired",
            ReleaseState::Failed => "failed",
            ReleaseState::Replaced => "replaced",
        }
    }

    /// True once the release can no longer serve without being deployed again.
    pub fn ended(self) -> bool {
        matches!(
            self,
            ReleaseState::Retired | ReleaseState::Failed | ReleaseState::Replaced
        )
    }

    fn of(state: SlotState) -> ReleaseState {
        match state {
            SlotState::Deploying => ReleaseState::Deploying,
            SlotState::Deployed => ReleaseState::Deployed,
            SlotState::Active => ReleaseState::Active,
            SlotState::Grace => ReleaseState::Grace,
            SlotState::Failed => ReleaseState::Failed,
            SlotState::Empty => ReleaseState::Retired,
        }
    }
}

impl std::fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One release of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseEntry {
    /// 1, 2, 3… per environment, never reused.
    pub number: u64,
    pub image: String,
    /// The stored env version it runs with (`None`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_version: Option<u64>,
    /// The release's hash (the container label `codeb.release`).
    pub hash: String,
    /// The slot it was deployed into.
    pub slot: Slot,
    /// Who started it: the caller's label (`cli (uid 0)`, `key 3f9a… (ci)`), `codeb watch` for
    /// the daemon's own rollouts of its manifests, `unknown` for a release that was already in a
    /// slot when codeb first kept a history.
    pub by: String,
    /// When it entered its slot (unix ms).
    pub at_ms: u64,
    pub state: ReleaseState,
    /// When it entered `state` (for an ended release: when it ended).
    pub since_ms: u64,
    /// Set on a release `codeb rollback --to N` deployed: N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// Who makes the releases a record write starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub by: String,
    /// Set while `codeb rollback --to N` rolls N's release out again.
    pub rollback_of: Option<u64>,
}

impl Actor {
    pub fn new(by: impl Into<String>) -> Actor {
        Actor {
            by: by.into(),
            rollback_of: None,
        }
    }
}

/// The by of releases found in a slot with no entry (recorded before codeb kept histories).
pub const UNKNOWN: &str = "unknown";

/// An environment's releases, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// The number the next release gets (0 read as 1: an empty history).
    pub next: u64,
    pub entries: Vec<ReleaseEntry>,
}

/// Whether a record write changes what runs in a slot or a slot's state, i.e. whether the history
/// has anything to follow. Cheap: the store asks before it reads the history.
pub fn concerns(before: Option<&EnvRecord>, after: Option<&EnvRecord>) -> bool {
    let slot = |r: Option<&EnvRecord>, s: Slot| {
        r.map(|r| {
            let sr = r.slot(s);
            (sr.state, sr.hash().map(str::to_string))
        })
        .unwrap_or((SlotState::Empty, None))
    };
    Slot::ALL
        .into_iter()
        .any(|s| slot(before, s) != slot(after, s))
}

/// The release a slot holds, if it holds one.
fn held(sr: &SlotRecord) -> Option<&super::Release> {
    sr.release.as_ref().filter(|_| sr.state != SlotState::Empty)
}

impl History {
    /// The entry numbered `n`.
    pub fn get(&self, n: u64) -> Option<&ReleaseEntry> {
        self.entries.iter().find(|e| e.number == n)
    }

    /// The entry of the release `slot` holds with this hash: the newest one deployed there that
    /// was not replaced or retired since.
    fn live_index(&self, slot: Slot, hash: &str) -> Option<usize> {
        self.entries.iter().rposition(|e| {
            e.slot == slot
                && e.hash == hash
                && !matches!(e.state, ReleaseState::Retired | ReleaseState::Replaced)
        })
    }

    /// The entry of the release in `slot` of `rec`, if the history has one.
    pub fn in_slot(&self, rec: &EnvRecord, slot: Slot) -> Option<&ReleaseEntry> {
        let r = held(rec.slot(slot))?;
        self.live_index(slot, r.hash()).map(|i| &self.entries[i])
    }

    fn push(
        &mut self,
        slot: Slot,
        sr: &SlotRecord,
        by: &str,
        rollback_of: Option<u64>,
        now_ms: u64,
    ) {
        let r = held(sr).expect("pushed from a slot that holds a release");
        let number = self.next.max(1);
        self.next = number + 1;
        self.entries.push(ReleaseEntry {
            number,
            image: r.image.clone(),
            env_version: r.env_version,
            hash: r.hash().to_string(),
            slot,
            by: by.to_string(),
            at_ms: now_ms,
            state: ReleaseState::of(sr.state),
            since_ms: now_ms,
            rollback_of,
        });
    }

    /// Adds an entry, by [`UNKNOWN`], for each release in a slot of `rec` that has none (a record
    /// written before codeb kept histories): the older slot first (grace, then active, failed,
    /// deployed, deploying), dated from the slot's `since_ms`. Returns whether it added any.
    pub fn cover(&mut self, rec: &EnvRecord) -> bool {
        let rank = |s: SlotState| match s {
            SlotState::Grace => 0,
            SlotState::Active => 1,
            SlotState::Failed => 2,
            SlotState::Deployed => 3,
            _ => 4,
        };
        let mut missing: Vec<Slot> = Slot::ALL
            .into_iter()
            .filter(|s| held(rec.slot(*s)).is_some_and(|r| self.live_index(*s, r.hash()).is_none()))
            .collect();
        missing.sort_by_key(|s| rank(rec.slot(*s).state));
        for s in &missing {
            let sr = rec.slot(*s);
            self.push(*s, sr, UNKNOWN, None, sr.since_ms);
        }
        !missing.is_empty()
    }

    /// Follows one write of an environment's record from `before` to `after` (`None`: no record):
    /// a release new in a slot gets the next number, by `actor`; the entry of a release whose slot
    /// changed state moves with it; one whose slot was emptied is retired, one whose slot took
    /// another release is replaced (a failed one stays failed). Then the history is bounded
    /// ([`KEEP`]). Returns whether anything changed.
    pub fn follow(
        &mut self,
        before: Option<&EnvRecord>,
        after: Option<&EnvRecord>,
        actor: &Actor,
        now_ms: u64,
    ) -> bool {
        let mut changed = before.is_some_and(|b| self.cover(b));
        for slot in Slot::ALL {
            let was = before.and_then(|b| held(b.slot(slot)));
            let now = after.map(|a| a.slot(slot));
            let now_release = now.and_then(held);
            let same = match (was, now_release) {
                (Some(w), Some(n)) => w.hash() == n.hash(),
                _ => false,
            };
            if same {
                let sr = now.expect("a release is held");
                let state = ReleaseState::of(sr.state);
                let hash = now_release.expect("held").hash();
                if let Some(i) = self.live_index(slot, hash) {
                    let e = &mut self.entries[i];
                    if e.state != state {
                        e.state = state;
                        e.since_ms = now_ms;
                        changed = true;
                    }
                }
                continue;
            }
            // What the slot held before ends: replaced when another release takes the slot,
            // retired when it is emptied; a failed release ended when it failed.
            if let Some(w) = was {
                if let Some(i) = self.live_index(slot, w.hash()) {
                    let e = &mut self.entries[i];
                    if e.state != ReleaseState::Failed {
                        e.state = if now_release.is_some() {
                            ReleaseState::Replaced
                        } else {
                            ReleaseState::Retired
                        };
                        e.since_ms = now_ms;
                        changed = true;
                    }
                }
            }
            if let (Some(sr), Some(_)) = (now, now_release) {
                self.push(slot, sr, &actor.by, actor.rollback_of, now_ms);
                changed = true;
            }
        }
        if let Some(a) = after {
            changed |= self.bound(a);
        }
        changed
    }

    /// Drops the oldest entries beyond [`KEEP`], never one of a release still in a slot of `rec`.
    fn bound(&mut self, rec: &EnvRecord) -> bool {
        let excess = self.entries.len().saturating_sub(KEEP);
        if excess == 0 {
            return false;
        }
        let live: Vec<u64> = Slot::ALL
            .into_iter()
            .filter_map(|s| self.in_slot(rec, s).map(|e| e.number))
            .collect();
        let mut dropped = 0;
        self.entries.retain(|e| {
            if dropped < excess && !live.contains(&e.number) {
                dropped += 1;
                false
            } else {
                true
            }
        });
        dropped > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnvKey, Release};
    use std::collections::BTreeMap;

    fn release(image: &str) -> Release {
        Release::new(image, None, BTreeMap::new(), 8080)
    }

    fn record() -> EnvRecord {
        EnvRecord::new(
            EnvKey::new("shop", "production"),
            "h".into(),
            "shop.test".into(),
            20000,
        )
    }

    fn set(rec: &EnvRecord, slot: Slot, state: SlotState, image: Option<&str>) -> EnvRecord {
        let mut r = rec.clone();
        *r.slot_mut(slot) = SlotRecord {
            state,
            release: image.map(release),
            since_ms: 7,
            ..SlotRecord::default()
        };
        r
    }

    /// Follows `rec` to `next`, by `by`, at `t`; returns `next`.
    fn step(h: &mut History, rec: &EnvRecord, next: EnvRecord, by: &str, t: u64) -> EnvRecord {
        h.follow(Some(rec), Some(&next), &Actor::new(by), t);
        next
    }

    fn states(h: &History) -> Vec<(u64, &str, &str)> {
        h.entries
            .iter()
            .map(|e| (e.number, e.image.as_str(), e.state.as_str()))
            .collect()
    }

    /// v1 deployed and promoted in blue, v2 in green, v3 in blue again.
    fn three_releases(h: &mut History) -> EnvRecord {
        use SlotState::*;
        let mut r = record();
        r = step(
            h,
            &r,
            set(&r, Slot::Blue, Deploying, Some("app:v1")),
            "ci",
            1,
        );
        r = step(
            h,
            &r,
            set(&r, Slot::Blue, Deployed, Some("app:v1")),
            "ci",
            2,
        );
        r = step(h, &r, set(&r, Slot::Blue, Active, Some("app:v1")), "ci", 3);
        r = step(
            h,
            &r,
            set(&r, Slot::Green, Deploying, Some("app:v2")),
            "ci",
            4,
        );
        r = step(h, &r, set(&r, Slot::Green, Active, Some("app:v2")), "ci", 5);
        r = step(h, &r, set(&r, Slot::Blue, Grace, Some("app:v1")), "ci", 5);
        r = step(
            h,
            &r,
            set(&r, Slot::Blue, Deploying, Some("app:v3")),
            "ann",
            6,
        );
        r = step(h, &r, set(&r, Slot::Blue, Active, Some("app:v3")), "ann", 7);
        step(h, &r, set(&r, Slot::Green, Grace, Some("app:v2")), "ann", 7)
    }

    #[test]
    fn each_release_new_in_a_slot_is_numbered_and_follows_its_slot_to_how_it_ended() {
        let mut h = History::default();
        let r = three_releases(&mut h);
        assert_eq!(
            states(&h),
            vec![
                (1, "app:v1", "replaced"),
                (2, "app:v2", "grace"),
                (3, "app:v3", "active")
            ]
        );
        let v3 = h.get(3).unwrap();
        assert_eq!((v3.by.as_str(), v3.at_ms, v3.slot), ("ann", 6, Slot::Blue));
        assert_eq!(h.get(1).unwrap().since_ms, 6, "replaced when v3 took blue");
        // Green's grace period ends: retired.
        let r = step(
            &mut h,
            &r,
            set(&r, Slot::Green, SlotState::Empty, None),
            "x",
            9,
        );
        assert_eq!(h.get(2).unwrap().state, ReleaseState::Retired);
        assert_eq!(h.get(2).unwrap().since_ms, 9);
        assert_eq!(h.in_slot(&r, Slot::Blue).unwrap().number, 3);
        assert_eq!(h.next, 4);
    }

    #[test]
    fn a_failed_release_stays_failed_when_its_slot_is_reused_or_emptied() {
        use SlotState::*;
        let mut h = History::default();
        let mut r = record();
        r = step(
            &mut h,
            &r,
            set(&r, Slot::Blue, Active, Some("app:v1")),
            "a",
            1,
        );
        r = step(
            &mut h,
            &r,
            set(&r, Slot::Green, Deploying, Some("bad:v1")),
            "a",
            2,
        );
        r = step(
            &mut h,
            &r,
            set(&r, Slot::Green, Failed, Some("bad:v1")),
            "a",
            3,
        );
        r = step(
            &mut h,
            &r,
            set(&r, Slot::Green, Deploying, Some("app:v2")),
            "a",
            4,
        );
        assert_eq!(
            states(&h),
            vec![
                (1, "app:v1", "active"),
                (2, "bad:v1", "failed"),
                (3, "app:v2", "deploying")
            ]
        );
        assert_eq!(h.get(2).unwrap().since_ms, 3, "ended when it failed");
        step(&mut h, &r, set(&r, Slot::Green, Empty, None), "a", 5);
        assert_eq!(h.get(3).unwrap().state, ReleaseState::Retired);
    }

    #[test]
    fn a_rollback_moves_the_entries_back_and_a_rollout_of_an_old_release_is_a_new_marked_one() {
        use SlotState::*;
        let mut h = History::default();
        let r = three_releases(&mut h);
        // The plain rollback: green (v2) serves again, blue (v3) goes to grace; no new release.
        let r = step(
            &mut h,
            &r,
            set(&r, Slot::Green, Active, Some("app:v2")),
            "a",
            8,
        );
        let r = step(
            &mut h,
            &r,
            set(&r, Slot::Blue, Grace, Some("app:v3")),
            "a",
            8,
        );
        assert_eq!(h.entries.len(), 3);
        assert_eq!(h.get(2).unwrap().state, ReleaseState::Active);
        assert_eq!(h.get(3).unwrap().state, ReleaseState::Grace);
        // `rollback --to 1`: v1 again, into blue.
        let actor = Actor {
            by: "ann".into(),
            rollback_of: Some(1),
        };
        let next = set(&r, Slot::Blue, Deploying, Some("app:v1"));
        assert!(h.follow(Some(&r), Some(&next), &actor, 9));
        let e = h.get(4).unwrap();
        assert_eq!((e.image.as_str(), e.rollback_of), ("app:v1", Some(1)));
        assert_eq!(h.get(3).unwrap().state, ReleaseState::Replaced);
        assert_eq!(h.get(1).unwrap().state, ReleaseState::Replaced, "untouched");
    }

    #[test]
    fn a_write_that_changes_no_slot_does_not_concern_the_history() {
        let mut h = History::default();
        let r = three_releases(&mut h);
        let mut renamed = r.clone();
        renamed.hostname = "other.test".into();
        renamed.generation += 1;
        assert!(!concerns(Some(&r), Some(&renamed)));
        assert!(!h
            .clone()
            .follow(Some(&r), Some(&renamed), &Actor::new("x"), 9));
        assert!(concerns(None, Some(&r)));
        assert!(concerns(Some(&r), None));
        assert!(!concerns(None, Some(&record())));
    }

    #[test]
    fn releases_found_in_slots_without_an_entry_are_covered_older_first_by_unknown() {
        use SlotState::*;
        let r = set(&record(), Slot::Blue, Active, Some("app:v2"));
        let r = set(&r, Slot::Green, Grace, Some("app:v1"));
        let mut h = History::default();
        assert!(h.cover(&r));
        assert_eq!(
            states(&h),
            vec![(1, "app:v1", "grace"), (2, "app:v2", "active")]
        );
        assert!(h.entries.iter().all(|e| e.by == UNKNOWN && e.at_ms == 7));
        assert!(!h.cover(&r), "covered once");
        // A write after the upgrade covers first, then follows.
        let mut h = History::default();
        let next = set(&r, Slot::Green, Deploying, Some("app:v3"));
        h.follow(Some(&r), Some(&next), &Actor::new("ann"), 9);
        assert_eq!(
            states(&h),
            vec![
                (1, "app:v1", "replaced"),
                (2, "app:v2", "active"),
                (3, "app:v3", "deploying")
            ]
        );
    }

    #[test]
    fn the_history_keeps_the_last_hundred_and_never_drops_a_release_still_in_a_slot() {
        use SlotState::*;
        let mut h = History::default();
        let mut r = record();
        r = step(
            &mut h,
            &r,
            set(&r, Slot::Blue, Active, Some("app:v0")),
            "a",
            1,
        );
        // 150 releases fail in green while v0 keeps serving from blue.
        for i in 1..=150u64 {
            let image = format!("bad:{i}");
            r = step(
                &mut h,
                &r,
                set(&r, Slot::Green, Deploying, Some(&image)),
                "a",
                i,
            );
            r = step(
                &mut h,
                &r,
                set(&r, Slot::Green, Failed, Some(&image)),
                "a",
                i,
            );
            assert!(h.entries.len() <= KEEP, "{} entries", h.entries.len());
        }
        assert_eq!(h.entries.len(), KEEP);
        assert_eq!(h.entries[0].number, 1, "v0 still serves: kept");
        assert_eq!(h.entries[0].state, ReleaseState::Active);
        assert_eq!(h.entries[1].number, 53, "the oldest others were dropped");
        assert_eq!(h.entries.last().unwrap().number, 151);
        assert_eq!(h.next, 152, "numbers are never reused");
        assert!(h.get(2).is_none());
        let json = serde_json::to_vec(&h).unwrap();
        assert!(json.len() < 30_000, "{} bytes", json.len());
    }
}
