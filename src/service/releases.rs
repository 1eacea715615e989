//! `codeb releases` and `codeb rollback --to N`: an environment's release history (kept by the
//! store beside its record, see [`crate::model::releases`]), and the way back to any release in
//! it.
//!
//! Where release N is decides how `--to N` goes:
//! - serving already: nothing to do;
//! - in the grace slot: the plain rollback, a switch that starts nothing;
//! - in no slot (retired or replaced): rolled out again through the normal blue/green path, as a
//!   new release marked `rollback of N`: N's image as a release override (exactly what `codeb
//!   deploy` records, so that `codeb watch`/`serve` keep it in force at every resync and a
//!   manifest naming another image supersedes it), and N's stored env version restored as a new
//!   version, protected keys kept as they are (credentials a rotation retired never come back).
//!   It is deployed into the idle slot, health-checked, and promoted at once whatever the
//!   promotion mode: a rollback asks for N to serve. A release that fails its health check leaves
//!   the serving one in place (exit 1), as a failed deploy does.
//!
//! Refused: a release the history does not hold (never made, or dropped from the last
//! [`KEEP`](crate::model::releases::KEEP)), one that never passed its health check, one still
//! deploying or deployed and awaiting `codeb promote`.
//!
//! Must not: decide what a plan decides (the rollout is the planner's), or write the history (the
//! store follows the records).

use std::collections::BTreeMap;

use super::view::{NoteView, OutcomeView, PlanView, PlannedView, ReleaseRow};
use super::{Ctx, Error, Result};
use crate::model::desired::overridden;
use crate::model::releases::{Actor, History, ReleaseEntry, ReleaseState};
use crate::model::{Desired, DesiredEnv, EnvKey, EnvRecord, Override, Promotion, Slot, SlotState};
use crate::reconcile::controller::Work;

/// The history as it stands, and the record: the recorded entries, with the releases in slots
/// that have none (recorded before codeb kept histories) numbered as the next write will number
/// them.
fn history(ctx: &Ctx, key: &EnvKey) -> Result<(History, EnvRecord)> {
    let rec = ctx.store.env(key)?.ok_or_else(|| {
        Error::not_found(format!(
            "no recorded environment {key} (see `codeb get projects`)"
        ))
    })?;
    let mut h = ctx.store.releases(key)?;
    h.cover(&rec);
    Ok((h, rec))
}

/// `codeb releases`: newest first.
pub(super) fn list(ctx: &Ctx, key: &EnvKey) -> Result<Vec<ReleaseRow>> {
    let (h, _) = history(ctx, key)?;
    Ok(h.entries
        .iter()
        .rev()
        .map(|e| ReleaseRow::new(key, e))
        .collect())
}

/// Where release N is, for `--to N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// It serves from this slot: nothing to do.
    Serving(Slot),
    /// It is the grace slot's: the plain rollback.
    Instant,
    /// It is in no slot: rolled out again.
    Redeploy,
}

/// Release `n` of `key` and the way back to it.
///
/// # Errors
/// `NotFound` when the history does not hold it (the message says which numbers it holds);
/// `Invalid` when it never passed its health check, or is deploying or awaiting promotion.
fn locate(ctx: &Ctx, key: &EnvKey, n: u64) -> Result<(ReleaseEntry, Way)> {
    let (h, rec) = history(ctx, key)?;
    let entry = h.get(n).cloned().ok_or_else(|| missing(key, &h, n))?;
    let slot = Slot::ALL
        .into_iter()
        .find(|s| h.in_slot(&rec, *s).is_some_and(|e| e.number == n));
    let state = slot.map(|s| rec.slot(s).state);
    let way = match (slot, state) {
        (Some(s), Some(SlotState::Active)) => Way::Serving(s),
        (Some(_), Some(SlotState::Grace)) => Way::Instant,
        (Some(s), Some(SlotState::Deployed)) => {
            return Err(Error::invalid(format!(
                "release {n} of {key} is deployed in {s} and waits for promotion, newer than the one serving: `codeb promote {} --env {}` switches to it",
                key.project, key.env
            )))
        }
        (Some(_), Some(SlotState::Deploying)) => {
            return Err(Error::invalid(format!(
                "release {n} of {key} is being deployed; wait for it, or roll back to another"
            )))
        }
        _ if entry.state == ReleaseState::Failed => {
            return Err(Error::invalid(format!(
                "release {n} of {key} ({}) never passed its health check, so it never served: nothing to roll back to (`codeb deploy` rolls an image out)",
                entry.image
            )))
        }
        _ => Way::Redeploy,
    };
    Ok((entry, way))
}

/// The error for a release number the history does not hold.
fn missing(key: &EnvKey, h: &History, n: u64) -> Error {
    let (first, last) = match (h.entries.first(), h.entries.last()) {
        (Some(f), Some(l)) => (f.number, l.number),
        _ => return Error::not_found(format!("{key} has no release {n}: it has no release yet")),
    };
    let why = if n >= 1 && n < first {
        format!(
            "it is no longer kept (the history keeps the last {} releases)",
            crate::model::releases::KEEP
        )
    } else {
        "there is no such release".to_string()
    };
    Error::not_found(format!(
        "{key} has no release {n}: {why}; it holds releases {first} to {last} (see `codeb releases {} --env {}`)",
        key.project, key.env
    ))
}

/// `codeb rollback --to N`; with `expect`, only if the state under the claim still has that
/// fingerprint (an MCP confirmation).
///
/// # Errors
/// As [`locate`]; `NotFound` when the environment is not declared (a rollout needs its spec);
/// `Invalid` for an image the Host no longer allows; the rollout's own errors.
pub(super) async fn rollback_to(
    ctx: &Ctx,
    key: EnvKey,
    n: u64,
    expect: Option<&str>,
) -> Result<OutcomeView> {
    let (entry, way) = locate(ctx, &key, n)?;
    match way {
        Way::Serving(slot) => Ok(OutcomeView {
            notes: vec![note(serving(&key, &entry, slot))],
            converged: true,
            ..OutcomeView::default()
        }),
        Way::Instant => super::switch(ctx, key, true, expect).await,
        Way::Redeploy => redeploy(ctx, key, &entry, expect).await,
    }
}

/// [`Change::Rollback`](super::Change::Rollback) with `to`: the plan, without the claim.
pub(super) async fn plan_rollback_to(ctx: &Ctx, key: EnvKey, n: u64) -> Result<PlannedView> {
    let (entry, way) = locate(ctx, &key, n)?;
    match way {
        Way::Serving(slot) => {
            let plan = PlanView {
                changes: vec![],
                steps: vec![],
                notes: vec![note(serving(&key, &entry, slot))],
            };
            super::planned(ctx, plan, vec![key])
        }
        Way::Instant => super::plan_switch(ctx, key, true).await,
        Way::Redeploy => {
            let t = target(ctx, &key, &entry)?;
            let plan = dry_plan(ctx, &key, &t, &entry).await?;
            super::planned(ctx, plan, vec![key])
        }
    }
}

fn serving(key: &EnvKey, e: &ReleaseEntry, slot: Slot) -> String {
    format!(
        "release {} of {key} ({}) serves already, from {slot}: nothing to do",
        e.number, e.image
    )
}

fn note(text: String) -> NoteView {
    NoteView {
        text,
        problem: false,
        unobserved: false,
    }
}

/// What rolling release N out again converges.
struct Target {
    /// The environment as declared, promoted at once.
    declared: DesiredEnv,
    host: crate::model::HostRef,
    zones: BTreeMap<String, crate::model::dns::ZoneRef>,
    /// N's image as a release override (`None`: the manifests name it; any override is dropped).
    over: Option<Override>,
    works: Vec<Work>,
}

fn target(ctx: &Ctx, key: &EnvKey, entry: &ReleaseEntry) -> Result<Target> {
    let mut declared = super::declared_env(ctx, key)?.ok_or_else(|| {
        Error::not_found(format!(
            "no declared environment {key}: apply its manifests first (see `codeb get projects`)"
        ))
    })?;
    let (host, zones, works) = super::rollout_scope(ctx, &declared)?;
    super::check_image_allowed(&host, &entry.image)?;
    let over = (declared.release.image != entry.image).then(|| Override {
        image: entry.image.clone(),
        manifest_image: declared.release.image.clone(),
        by: ctx.caller.label(),
        at_ms: crate::reconcile::now_ms(),
    });
    // A rollback asks for N to serve: it is promoted once healthy, whatever the mode.
    declared.promotion = Promotion::Auto;
    Ok(Target {
        declared,
        host,
        zones,
        over,
        works,
    })
}

/// The stored env version a rollout of `entry` restores: the one it ran with, when the
/// environment takes the stored env (`envFrom: stored`). A release that ran without one leaves
/// the stored env as it is.
fn env_to_restore(declared: &DesiredEnv, entry: &ReleaseEntry) -> Option<u64> {
    entry.env_version.filter(|_| declared.env_from.is_stored())
}

/// The plan of the rollout as a dry run computes it, with the env version it will pin (the
/// restored one is the next version).
async fn dry_plan(ctx: &Ctx, key: &EnvKey, t: &Target, entry: &ReleaseEntry) -> Result<PlanView> {
    let env = match &t.over {
        Some(o) => overridden(&t.declared, o).expect("made from this declaration"),
        None => t.declared.clone(),
    };
    let mut d = Desired {
        hosts: BTreeMap::from([(t.host.name.clone(), t.host.clone())]),
        envs: BTreeMap::from([(key.clone(), env)]),
        zones: t.zones.clone(),
    };
    super::env::bind(&ctx.store, &mut d, true)?;
    if let Some(v) = env_to_restore(&t.declared, entry) {
        if let (latest, Some(_)) = super::env::rollback_values(ctx, key, v)? {
            let e = d.envs.get_mut(key).expect("declared");
            e.release = e
                .release
                .clone()
                .with_env_version(Some(latest.map_or(1, |l| l + 1)));
        }
    }
    super::dry_plan(ctx, &d).await
}

/// Rolls release `entry` out again (see the module's documentation).
async fn redeploy(
    ctx: &Ctx,
    key: EnvKey,
    entry: &ReleaseEntry,
    expect: Option<&str>,
) -> Result<OutcomeView> {
    let store = &ctx.store;
    let t = target(ctx, &key, entry)?;
    let claim = ctx.claim(t.works.clone()).await?;
    // The release this rollout starts is the caller's, marked as a rollback of N.
    let actor = store.act_as(
        [key.clone()],
        &Actor {
            by: ctx.caller.label(),
            rollback_of: Some(entry.number),
        },
    );
    if let Some(expected) = expect {
        let plan = dry_plan(ctx, &key, &t, entry).await?;
        super::check_fingerprint(expected, &plan, store, std::slice::from_ref(&key))?;
    }
    // The env version and the override are written at once (one transaction), or the override
    // alone when the env stays: a kill in between cannot leave one without the other.
    let mut notes = Vec::new();
    let restore = env_to_restore(&t.declared, entry);
    let restored = match restore {
        Some(v) => super::env::restore_for_rollback(ctx, &key, v, t.over.as_ref())?,
        None => None,
    };
    match (restore, restored) {
        (Some(v), Some(stored)) => notes.push(format!(
            "env version {v} restored as version {} (protected keys kept as they are)",
            stored.version
        )),
        (restore, _) => {
            store.set_override(&key, t.over.as_ref())?;
            if let Some(v) = restore {
                notes.push(format!("the stored env already equals version {v}"));
            } else if let Some(latest) = t
                .declared
                .env_from
                .is_stored()
                .then(|| store.latest_env_version(&key))
                .transpose()?
                .flatten()
            {
                notes.push(format!(
                    "release {} ran without a stored env: the stored env stays at version {latest}",
                    entry.number
                ));
            }
        }
    }
    if let Some(o) = &t.over {
        notes.push(format!(
            "{key} runs {} as a release override (as `codeb deploy` sets one) until the manifests name another image than {}",
            o.image, o.manifest_image
        ));
    }
    // The loop keeps the override in force from now on, whatever the rollout's outcome.
    let result = super::roll_out(ctx, &key, t.declared, t.host, t.zones).await;
    drop(actor);
    drop(claim);
    let mut view = result?;
    if view.executed.is_empty() && view.converged {
        notes.push(format!(
            "release {} ({}) with its env is what {key} runs already: nothing to deploy",
            entry.number, entry.image
        ));
    }
    view.notes.extend(notes.into_iter().map(note));
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Caller;
    use crate::model::{Release, SlotRecord};
    use crate::store::Store;
    use std::sync::Arc;

    fn ctx() -> (tempfile::TempDir, Ctx) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let config = crate::config::Config::defaults(dir.path().join("config.yaml"));
        let ctx = Ctx::local(store, Caller::cli(0), Arc::new(config));
        (dir, ctx)
    }

    fn slot(state: SlotState, image: &str) -> SlotRecord {
        SlotRecord {
            state,
            release: Some(Release::new(image, None, BTreeMap::new(), 8080)),
            since_ms: 1,
            ..SlotRecord::default()
        }
    }

    /// Writes the record through these slot changes, as the executor would, and returns it.
    fn write(ctx: &Ctx, key: &EnvKey, changes: &[(Slot, SlotRecord)]) -> EnvRecord {
        let mut rec = ctx
            .store
            .env(key)
            .unwrap()
            .unwrap_or_else(|| EnvRecord::new(key.clone(), "h".into(), "s.test".into(), 20000));
        for (s, sr) in changes {
            let expected = ctx.store.env(key).unwrap().map(|r| r.generation);
            *rec.slot_mut(*s) = sr.clone();
            rec = ctx.store.put_env(rec.clone(), expected).unwrap();
        }
        rec
    }

    /// v1, v2 and v3 deployed in turn (auto promotion): v3 active in blue, v2 grace in green, v1
    /// replaced; v4 failed in green afterwards.
    fn history_of_four(ctx: &Ctx, key: &EnvKey) {
        use SlotState::*;
        write(
            ctx,
            key,
            &[
                (Slot::Blue, slot(Deploying, "app:v1")),
                (Slot::Blue, slot(Active, "app:v1")),
                (Slot::Green, slot(Deploying, "app:v2")),
                (Slot::Green, slot(Active, "app:v2")),
                (Slot::Blue, slot(Grace, "app:v1")),
                (Slot::Blue, slot(Deploying, "app:v3")),
                (Slot::Blue, slot(Active, "app:v3")),
                (Slot::Green, slot(Grace, "app:v2")),
            ],
        );
        let _ann = ctx.store.act_as([key.clone()], &Actor::new("ann"));
        write(
            ctx,
            key,
            &[
                (Slot::Green, slot(Deploying, "app:v4")),
                (Slot::Green, slot(Failed, "app:v4")),
            ],
        );
    }

    #[test]
    fn releases_are_listed_newest_first_with_who_and_how_each_ended() {
        let (_d, ctx) = ctx();
        let key = EnvKey::new("shop", "production");
        history_of_four(&ctx, &key);
        let rows = list(&ctx, &key).unwrap();
        let seen: Vec<(u64, &str, &str, &str)> = rows
            .iter()
            .map(|r| (r.number, r.image.as_str(), r.state.as_str(), r.by.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (4, "app:v4", "failed", "ann"),
                (3, "app:v3", "active", "codeb"),
                (2, "app:v2", "replaced", "codeb"),
                (1, "app:v1", "replaced", "codeb"),
            ]
        );
        assert!(rows[0].ended_at_ms.is_some() && rows[1].ended_at_ms.is_none());
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["endedAtMs"], rows[0].ended_at_ms.unwrap());
        assert_eq!(json[1]["atMs"], rows[1].at_ms);
    }

    #[test]
    fn the_way_back_to_a_release_depends_on_where_it_is_and_unknown_numbers_are_not_found() {
        use SlotState::*;
        let (_d, ctx) = ctx();
        let key = EnvKey::new("shop", "production");
        // v1 active in blue, v2 grace in green... written as v1, v2, then a rollback.
        write(
            &ctx,
            &key,
            &[
                (Slot::Blue, slot(Active, "app:v1")),
                (Slot::Green, slot(Active, "app:v2")),
                (Slot::Blue, slot(Grace, "app:v1")),
                (Slot::Blue, slot(Deploying, "app:v3")),
                (Slot::Blue, slot(Active, "app:v3")),
                (Slot::Green, slot(Grace, "app:v2")),
            ],
        );
        assert_eq!(locate(&ctx, &key, 3).unwrap().1, Way::Serving(Slot::Blue));
        assert_eq!(locate(&ctx, &key, 2).unwrap().1, Way::Instant);
        assert_eq!(locate(&ctx, &key, 1).unwrap().1, Way::Redeploy);
        for n in [0, 4, 99] {
            let e = locate(&ctx, &key, n).unwrap_err();
            assert_eq!(e.code, super::super::Code::NotFound);
            assert!(
                e.message.contains(&format!("has no release {n}"))
                    && e.message.contains("releases 1 to 3"),
                "{}",
                e.message
            );
            assert_eq!(e.exit_code(), 2);
        }
        let none = locate(&ctx, &EnvKey::new("nope", "production"), 1).unwrap_err();
        assert_eq!(none.code, super::super::Code::NotFound);
        // A failed release, and one awaiting promotion, are refused with what to do.
        write(&ctx, &key, &[(Slot::Green, slot(Deploying, "bad:v1"))]);
        assert!(locate(&ctx, &key, 4)
            .unwrap_err()
            .message
            .contains("being deployed"));
        write(&ctx, &key, &[(Slot::Green, slot(Failed, "bad:v1"))]);
        let failed = locate(&ctx, &key, 4).unwrap_err();
        assert_eq!(failed.code, super::super::Code::Invalid);
        assert!(failed.message.contains("never passed its health check"));
        write(&ctx, &key, &[(Slot::Green, slot(Deployed, "app:v5"))]);
        assert!(locate(&ctx, &key, 5)
            .unwrap_err()
            .message
            .contains("codeb promote"));
    }

    #[test]
    fn a_number_dropped_from_the_bounded_history_says_it_is_no_longer_kept() {
        let mut h = History {
            next: 150,
            entries: vec![],
        };
        h.entries.push(ReleaseEntry {
            number: 50,
            image: "a".into(),
            env_version: None,
            hash: "h".into(),
            slot: Slot::Blue,
            by: "x".into(),
            at_ms: 1,
            state: ReleaseState::Retired,
            since_ms: 1,
            rollback_of: None,
        });
        let key = EnvKey::new("shop", "production");
        let m = missing(&key, &h, 3).message;
        assert!(
            m.contains("no longer kept") && m.contains("last 100"),
            "{m}"
        );
        let m = missing(&key, &h, 51).message;
        assert!(m.contains("no such release"), "{m}");
    }
}
