//! Planning a migration: an environment whose manifests name another host (B) than the one its
//! record names (A) moves in phases, each recorded before it acts (see
//! [`crate::model::Migration`] and docs/multi-host.md, "Migration").
//!
//! Pure, like the rest of the planner. A migration in progress is recorded state; whether a
//! phase is done is read from what is observed, never from the journal:
//!
//! | recorded phase | done when (observed) | then |
//! |---|---|---|
//! | (none: A recorded, manifests say B) | — | `MigrateBegin`: the record moves to B with fresh ports and empty slots, A's part kept in it |
//! | `Deploying` | B's own plan is empty and a slot serves there (the ordinary first deploy of A's serving release, health-gated) | `MigrateForward`: A's hostname route forwards to B's Caddy |
//! | `Forwarding` | A's hostname route is the forwarding one | `MigratePhase(Dns)` |
//! | `Dns` | no DNS write of the environment is left (records name B, TTL lowered) | `MigrateGrace`: A's serving container stopped (kept), its other slot and previews removed |
//! | `Grace` | the grace period ended | A's routes, rules and containers removed, then `MigrateFinish` |
//!
//! DNS follows the phases in [`crate::plan::dns`]: the records name the recorded host (A) until
//! `Dns`, with their TTL lowered to [`MIGRATION_TTL`] from the migration's start until `Grace`.

use super::{reachable, Action, HostView, KernelObservation, Note, Observed, Plan, Step};
use crate::model::ownership::belongs_to;
use crate::model::writes::Route;
use crate::model::{
    ports, DesiredEnv, EnvKey, EnvRecord, HostRef, Migration, MigrationPhase, Recorded,
};

/// The TTL of a migrating environment's DNS records from the start of the migration until its
/// grace period (the Zone's TTL when it is lower), so that resolvers drop the source's address
/// within a minute of the move.
pub const MIGRATION_TTL: u32 = 60;

/// What a plan does with an environment whose record is `rec`.
pub(super) enum Decision<'a> {
    /// Not migrating: planned as always.
    Stay,
    /// The manifests name another host: the migration begins (this step only, this round).
    Begin(Step),
    /// Migrating: the target is planned (with this release while it deploys), then the source.
    Migrating(&'a Migration),
    /// The manifests name the source again while the target still deploys (nothing moved yet):
    /// the target's part is removed and the record returns to the source.
    Abort(&'a Migration),
    /// Not planned, with this note.
    Refuse(Note),
}

/// Decides how `d` is planned given its record.
pub(super) fn decide<'a>(
    d: &DesiredEnv,
    rec: &'a EnvRecord,
    desired: &crate::model::Desired,
    taken: &mut super::LazyPorts<'_>,
    now_ms: u64,
) -> Decision<'a> {
    let refuse = |from: &str, reason: String| {
        Decision::Refuse(Note::HostMoved {
            key: d.key.clone(),
            from: from.to_string(),
            to: d.host.clone(),
            reason,
        })
    };
    match rec.migration.as_deref() {
        Some(m) if rec.host == d.host => Decision::Migrating(m),
        Some(m) if d.host == m.source.host && m.phase == MigrationPhase::Deploying => {
            Decision::Abort(m)
        }
        Some(m) => refuse(
            &m.source.host,
            format!(
                "it is migrating from {} to {} (phase {}); a change of host once traffic moves is \
                 not built yet (put `host: {}` back and let it finish)",
                m.source.host, rec.host, m.phase, rec.host
            ),
        ),
        None if rec.host == d.host => Decision::Stay,
        None => {
            if !d.data.is_none() {
                return refuse(
                    &rec.host,
                    "it has a database or a cache, whose data a migration does not move yet \
                     (the data-services issue)"
                        .into(),
                );
            }
            let Some(target) = desired.hosts.get(&d.host) else {
                return refuse(&rec.host, format!("host {} is not declared", d.host));
            };
            let Some(forward) = forward_upstream(target) else {
                return refuse(
                    &rec.host,
                    format!(
                        "host {}'s Caddy listens on no plain-HTTP port the source could forward \
                         to (forwarding over TLS is not built yet)",
                        d.host
                    ),
                );
            };
            let ports = taken.get();
            let Some(base) = ports::allocate(&d.key.project, &d.key.env, ports) else {
                return Decision::Refuse(Note::NoPorts { key: d.key.clone() });
            };
            ports.insert(base);
            ports.insert(base + 1);
            Decision::Begin(begin(d, rec, base, forward, now_ms))
        }
    }
}

/// The step that records the migration's start: the record on the target with `base` as its
/// ports and no slot yet, the source's record inside it.
fn begin(d: &DesiredEnv, rec: &EnvRecord, base: u16, forward: String, now_ms: u64) -> Step {
    let mut target = EnvRecord::new(d.key.clone(), d.host.clone(), d.hostname.clone(), base);
    target.grace_period_ms = millis(d.grace_period);
    let mut source = rec.clone();
    source.migration = None;
    target.migration = Some(Box::new(Migration {
        source,
        phase: MigrationPhase::Deploying,
        since_ms: now_ms,
        grace_ms: millis(d.migration_grace),
    }));
    Step {
        host: d.host.clone(),
        key: Some(d.key.clone()),
        generation: Some(rec.generation),
        action: Action::MigrateBegin {
            record: Box::new(target),
            forward,
        },
    }
}

/// Aborts a migration whose target still deploys: what the target holds of the environment goes
/// (its routes, kernel rules and containers), then the record returns to the source as it was.
/// Nothing of the source was touched in `Deploying`, and its DNS records still name it.
pub(super) fn plan_abort(rec: &EnvRecord, m: &Migration, observed: &Observed, out: &mut Plan) {
    let Some(view) = reachable(&rec.host, observed, out) else {
        return; // nothing is forgotten of what could not be seen
    };
    super::plan_removal_on(rec, view, out);
    out.steps.push(Step {
        host: m.source.host.clone(),
        key: Some(rec.key.clone()),
        generation: Some(rec.generation),
        action: Action::MigrateAbort(Box::new(m.source.clone())),
    });
}

/// The desired environment the target is planned with: while it deploys, with the release that
/// served on the source (the manifests' release follows through the ordinary blue/green path
/// once the target serves).
pub(super) fn target_desired<'d>(
    d: &'d DesiredEnv,
    m: &Migration,
) -> std::borrow::Cow<'d, DesiredEnv> {
    match m.release() {
        Some(r) if m.phase == MigrationPhase::Deploying && r != &d.release => {
            std::borrow::Cow::Owned(DesiredEnv {
                release: r.clone(),
                ..d.clone()
            })
        }
        _ => std::borrow::Cow::Borrowed(d),
    }
}

/// Everything the source's part of a migration is planned from.
pub(super) struct Source<'a> {
    pub desired: &'a crate::model::Desired,
    pub recorded: &'a Recorded,
    pub observed: &'a Observed,
    /// Environments with a DNS write (or a zone that cannot be read or is created) in this plan.
    pub dns_pending: &'a std::collections::BTreeSet<EnvKey>,
}

/// Plans the source's part of `rec`'s migration. `target_converged`: the target's own plan for
/// the environment had no step and no problem.
pub(super) fn plan_source(
    d: &DesiredEnv,
    rec: &EnvRecord,
    m: &Migration,
    target_converged: bool,
    ctx: &Source<'_>,
    now_ms: u64,
    out: &mut Plan,
) {
    let from = &m.source.host;
    if !ctx.desired.hosts.contains_key(from) && !ctx.recorded.hosts.contains_key(from) {
        out.notes.push(Note::Unreachable {
            host: from.clone(),
            error: "neither declared nor recorded".into(),
        });
        return;
    }
    let Some(target_host) = ctx.desired.hosts.get(&rec.host) else {
        return; // the target's plan noted it
    };
    let Some(view) = reachable(from, ctx.observed, out) else {
        return;
    };
    let step = |action| Step {
        host: from.clone(),
        key: Some(d.key.clone()),
        generation: Some(rec.generation),
        action,
    };
    let record_step = |action| Step {
        host: rec.host.clone(),
        key: Some(d.key.clone()),
        generation: Some(rec.generation),
        action,
    };
    let Some(forward) = forward_route(&d.key, &d.hostname, target_host) else {
        return; // refused at the start; a Host changed since: nothing moves
    };
    let route_id = d.key.route_id();
    let observed_route = view.proxy.routes.iter().find(|r| r.id == route_id);
    let forwarding = observed_route == Some(&forward);
    let repair_forward = |out: &mut Plan| {
        if !forwarding {
            out.steps.push(step(Action::MigrateForward {
                add: observed_route.is_none(),
                route: forward.clone(),
            }));
        }
    };
    match m.phase {
        MigrationPhase::Deploying => {
            if target_converged && rec.active.is_some() {
                repair_forward(out);
                if forwarding {
                    // Killed after the route was written and before the phase was: recorded now.
                    out.steps.push(record_step(Action::MigratePhase(
                        MigrationPhase::Forwarding,
                    )));
                }
            }
        }
        MigrationPhase::Forwarding => {
            repair_forward(out);
            if forwarding {
                out.steps
                    .push(record_step(Action::MigratePhase(MigrationPhase::Dns)));
            }
        }
        MigrationPhase::Dns => {
            repair_forward(out);
            if forwarding && !ctx.dns_pending.contains(&d.key) {
                let serving = serving_container(&m.source, view);
                out.steps.push(step(Action::MigrateGrace {
                    container: serving.filter(|c| c.running).map(|c| c.id.clone()),
                }));
                keep_only_serving(&d.key, &m.source, view, out, &step);
            }
        }
        MigrationPhase::Grace if now_ms < m.grace_ends_ms() => {
            repair_forward(out);
            if let Some(c) = serving_container(&m.source, view).filter(|c| c.running) {
                out.steps.push(step(Action::Stop {
                    slot: m.source.active.unwrap_or(crate::model::Slot::Blue),
                    container: c.id.clone(),
                }));
            }
            keep_only_serving(&d.key, &m.source, view, out, &step);
            out.notes.push(Note::MigrationGrace {
                key: d.key.clone(),
                from: from.clone(),
                until_ms: m.grace_ends_ms(),
            });
        }
        MigrationPhase::Grace => {
            for r in view.proxy.routes.iter() {
                if super::route_ids(&d.key).contains(&r.id) {
                    out.steps
                        .push(step(Action::DeleteRoute { id: r.id.clone() }));
                }
            }
            clean_rules(&m.source, view.kernel, out, &step);
            for c in view.containers.iter().filter(|c| belongs_to(c, &d.key)) {
                out.steps.push(step(Action::RemoveContainer {
                    id: c.id.clone(),
                    name: c.name.clone(),
                }));
            }
            out.steps.push(record_step(Action::MigrateFinish));
        }
    }
}

/// The source's kernel rules of the environment (its service address and published slot ports).
fn clean_rules(
    source: &EnvRecord,
    kernel: &KernelObservation,
    out: &mut Plan,
    step: &dyn Fn(Action) -> Step,
) {
    if let Some(write) = super::service::removal(source, kernel) {
        out.steps.push(step(Action::SetService(write)));
    }
    if let KernelObservation::Managed {
        publish: Some(p), ..
    }
    | KernelObservation::Unavailable {
        leftover: Some(p), ..
    } = kernel
    {
        for write in super::service::publication_removals(source, p) {
            out.steps.push(step(Action::SetService(write)));
        }
    }
}

/// The container of the slot that served on the source.
fn serving_container<'v>(
    source: &EnvRecord,
    view: HostView<'v>,
) -> Option<&'v crate::model::observed::ObservedContainer> {
    let name = source.key.container_name(source.active?);
    view.containers
        .iter()
        .find(|c| c.name == name && belongs_to(c, &source.key))
}

/// In its grace period the source keeps the forwarding route and the serving slot's container
/// only: its preview routes and every other container of the environment go.
fn keep_only_serving(
    key: &EnvKey,
    source: &EnvRecord,
    view: HostView<'_>,
    out: &mut Plan,
    step: &dyn Fn(Action) -> Step,
) {
    let previews = [
        key.preview_route_id(crate::model::Slot::Blue),
        key.preview_route_id(crate::model::Slot::Green),
    ];
    for r in view
        .proxy
        .routes
        .iter()
        .filter(|r| previews.contains(&r.id))
    {
        out.steps
            .push(step(Action::DeleteRoute { id: r.id.clone() }));
    }
    let kept = serving_container(source, view).map(|c| c.id.as_str());
    for c in view
        .containers
        .iter()
        .filter(|c| belongs_to(c, key) && Some(c.id.as_str()) != kept)
    {
        out.steps.push(step(Action::RemoveContainer {
            id: c.id.clone(),
            name: c.name.clone(),
        }));
    }
}

/// The route on the source that sends the hostname to the target's Caddy (which serves it by its
/// own hostname route), with the Host header as the client sent it.
pub fn forward_route(key: &EnvKey, hostname: &str, target: &HostRef) -> Option<Route> {
    Some(Route {
        id: key.route_id(),
        hosts: vec![hostname.to_string()],
        upstream: forward_upstream(target)?,
        keep_alive: true,
    })
}

/// `address:port` of the target's Caddy for plain HTTP: its first listen port that is not TLS's
/// (any, with `tls: off`). `None` when it has none.
pub fn forward_upstream(target: &HostRef) -> Option<String> {
    let port = target
        .listen
        .iter()
        .filter_map(|l| l.rsplit_once(':')?.1.parse::<u16>().ok())
        .find(|p| *p != 443 || target.tls == crate::spec::Tls::Off)?;
    let address = match target.address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(a)) => format!("[{a}]"),
        _ => target.address.clone(),
    };
    Some(format!("{address}:{port}"))
}

/// The environments of `plan`'s DNS part that are not settled: a write of one of their rrsets, a
/// conflict, or a zone of theirs that is created or could not be read. Computed for migrating
/// environments only.
pub(super) fn dns_pending(
    plan: &Plan,
    desired: &crate::model::Desired,
    recorded: &Recorded,
) -> std::collections::BTreeSet<EnvKey> {
    use crate::model::writes::RrsetChange;
    let mut out = std::collections::BTreeSet::new();
    for rec in recorded.envs.values().filter(|r| r.migration.is_some()) {
        let key = &rec.key;
        let mark = crate::model::dns::owner_mark(key);
        let zone = crate::model::dns::zone_of(&rec.hostname, &desired.zones).map(|z| &z.name);
        let pending = plan.steps.iter().any(|s| match &s.action {
            Action::DnsPatch { changes, .. } => changes.iter().any(|c| match &c.change {
                RrsetChange::Replace(r) => r.mark.as_deref() == Some(&mark),
                RrsetChange::Delete { .. } => {
                    c.was.as_ref().and_then(|w| w.mark.as_deref()) == Some(&mark)
                }
            }),
            Action::EnsureZone { zone: z, .. } => Some(z) == zone,
            _ => false,
        }) || plan.notes.iter().any(|n| match n {
            Note::DnsConflict { key: k, .. } => k == key,
            Note::ZoneUnreachable { zone: z, .. } => Some(z) == zone,
            _ => false,
        });
        if pending {
            out.insert(key.clone());
        }
    }
    out
}

/// The record `codeb rollback` writes during a migration (record intent first: the rest is
/// planned from it, level-triggered): the source's record again, its serving slot only (the
/// other slot's container went with the grace period, or goes now), marked rolled back by `by`
/// at `now_ms`, holding a migration back *from* the target in phase `Deploying`. The planner then
/// starts the source's kept container and gates it on its health check before its route serves
/// locally again, after which the target goes through the phases of any source: forwarding to
/// the source's Caddy, DNS back to the source's address, its grace period (its container
/// stopped, kept), its cleanup.
///
/// Refused (nothing written) while the target still deploys (nothing moved: putting `host:`
/// back aborts it), for a migration that is itself a rollback, and when nothing served on the
/// source.
pub fn rollback_record(rec: &EnvRecord, by: &str, now_ms: u64) -> Result<EnvRecord, String> {
    let key = &rec.key;
    let m = rec
        .migration
        .as_deref()
        .ok_or_else(|| format!("{key}: it is not migrating"))?;
    if let Some(mark) = &rec.rolled_back {
        return Err(format!(
            "{key}: it was already rolled back to host {} from host {} (by {}); it is moving \
             back (phase {}): nothing was changed",
            rec.host, mark.from, mark.by, m.phase
        ));
    }
    if m.phase == MigrationPhase::Deploying {
        return Err(format!(
            "{key}: the migration from host {} to host {} is still deploying and no traffic \
             moved: put `host: {}` back in the manifests and apply to abort it (nothing was \
             changed)",
            m.source.host, rec.host, m.source.host
        ));
    }
    let Some(active) = m.source.active else {
        return Err(format!(
            "{key}: nothing served on host {}, so there is nothing to roll back to",
            m.source.host
        ));
    };
    let mut back = m.source.clone();
    for slot in crate::model::Slot::ALL {
        if slot != active {
            *back.slot_mut(slot) = crate::model::SlotRecord::default();
        }
    }
    let mut target = rec.clone();
    target.migration = None;
    back.migration = Some(Box::new(Migration {
        source: target,
        phase: MigrationPhase::Deploying,
        since_ms: now_ms,
        grace_ms: m.grace_ms,
    }));
    back.rolled_back = Some(crate::model::RolledBack {
        from: rec.host.clone(),
        by: by.to_string(),
        at_ms: now_ms,
    });
    Ok(back)
}

/// How a rollback mark bears on the manifests' `d`: `Pinned` (they still name the host rolled
/// away from: planned on the recorded host instead, with a note), `Clear` (they name another
/// host now: the mark goes, and `d` is planned as it is), or `None` (no mark).
pub(super) enum Mark {
    None,
    Pinned(Box<DesiredEnv>, Note),
    Clear(Step),
}

pub(super) fn mark(d: &DesiredEnv, rec: &EnvRecord) -> Mark {
    let Some(m) = &rec.rolled_back else {
        return Mark::None;
    };
    if d.host == m.from && rec.host != d.host {
        let note = Note::RolledBack {
            key: d.key.clone(),
            to: rec.host.clone(),
            from: m.from.clone(),
            by: m.by.clone(),
            at_ms: m.at_ms,
        };
        return Mark::Pinned(
            Box::new(DesiredEnv {
                host: rec.host.clone(),
                ..d.clone()
            }),
            note,
        );
    }
    Mark::Clear(Step {
        host: rec.host.clone(),
        key: Some(d.key.clone()),
        generation: Some(rec.generation),
        action: Action::ClearRolledBack,
    })
}

/// While a rollback's migration deploys, the source's kept serving container is stopped: it is
/// started and gated on its health check before anything else of the environment is planned
/// (its route would otherwise serve locally before the app answers). `None` once it runs (or
/// when it is gone: the ordinary plan recreates it).
pub(super) fn restart_kept(
    d: &DesiredEnv,
    rec: &EnvRecord,
    host: &HostRef,
    containers: &[&crate::model::observed::ObservedContainer],
    direct: bool,
) -> Option<Vec<Action>> {
    let m = rec.migration.as_deref()?;
    if rec.rolled_back.is_none() || m.phase != MigrationPhase::Deploying {
        return None;
    }
    let slot = rec.active?;
    let release = rec.slot(slot).release.as_ref()?;
    let name = rec.key.container_name(slot);
    let c = containers
        .iter()
        .find(|c| c.name == name && belongs_to(c, &rec.key))?;
    if c.running {
        return None;
    }
    let mut gate =
        super::env::await_healthy(d, host, rec, slot, c.id.clone(), release.hash(), direct);
    if let Action::AwaitHealthy { url, .. } = &mut gate {
        // The record's own health path: the kept release's, whatever the manifests say now.
        let path = &rec.slot(slot).health_path;
        if !path.is_empty() && !direct {
            *url = super::env::health_url(host, rec, slot, path);
        }
    }
    Some(vec![
        Action::Start {
            slot,
            container: c.id.clone(),
        },
        gate,
    ])
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
