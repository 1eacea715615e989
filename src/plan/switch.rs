//! Planning `codeb promote` and `codeb rollback`: a traffic switch and the rule or routes it implies.
//!
//! In kernel mode a switch is the record's change and one NAT rule: the routes are already what
//! the projected record calls for (they dial the service address), so Caddy's config is untouched.
//! In caddy-admin mode it is the record's change and the hostname route's new upstream.

use super::env::{health_url, route_diff, switch};
use super::service::{hook_diff, service_address, service_diff, slot_target};
use super::{Action, HostView, Plan, Step};
use crate::model::observed::ObservedContainer;
use crate::model::ownership::belongs_to;
use crate::model::{EnvRecord, HostRef, Slot, SlotState};

/// Why a switch cannot be planned. None is worth a retry without a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    #[error(
        "{key}: nothing to promote (no slot is deployed and waiting); apply a new release first"
    )]
    NothingToPromote { key: String },
    #[error("{key}: nothing to roll back to (no slot is in its grace period)")]
    NothingToRollBack { key: String },
    #[error("{key}: {slot}'s container is not running; `codeb apply` repairs it first")]
    NotRunning { key: String, slot: Slot },
    #[error(
        "{key}: it is migrating from host {from} to {to} (phase {phase}): a rollback moves it \
         back to {from} as a migration of its own (`codeb rollback`), not as a slot switch"
    )]
    Migrating {
        key: String,
        from: String,
        to: String,
        phase: crate::model::MigrationPhase,
    },
}

/// Promote: switch the hostname to the deployed slot; after a rollback, to the slot rolled away
/// from (its release is the held one), which rolls forward again. A promote clears a rollback hold.
/// A grace slot holding an older release is never promoted: that would be a rollback in disguise.
pub fn plan_promote(
    rec: &EnvRecord,
    host: &HostRef,
    view: HostView<'_>,
    now_ms: u64,
) -> Result<Plan, SwitchError> {
    let (to, hold) = target(rec, false)?;
    plan_switch(rec, host, view, to, hold, now_ms)
}

/// Rollback: switch the hostname back to the grace slot, without starting anything. The slot rolled
/// away from goes to grace, and its release is held: apply does not promote it again.
pub fn plan_rollback(
    rec: &EnvRecord,
    host: &HostRef,
    view: HostView<'_>,
    now_ms: u64,
) -> Result<Plan, SwitchError> {
    if let Some(m) = rec.migration.as_deref() {
        return Err(SwitchError::Migrating {
            key: rec.key.to_string(),
            from: m.source.host.clone(),
            to: rec.host.clone(),
            phase: m.phase,
        });
    }
    let (to, hold) = target(rec, true)?;
    plan_switch(rec, host, view, to, hold, now_ms)
}

/// The slot a promote (or a rollback) moves the hostname to, and the release a rollback holds.
fn target(rec: &EnvRecord, rollback: bool) -> Result<(Slot, Option<String>), SwitchError> {
    let idle = |s: &Slot| Some(*s) != rec.active;
    if rollback {
        let to = Slot::ALL
            .into_iter()
            .filter(idle)
            .find(|s| rec.slot(*s).state == SlotState::Grace)
            .ok_or_else(|| SwitchError::NothingToRollBack {
                key: rec.key.to_string(),
            })?;
        let hold = rec
            .active
            .and_then(|a| rec.slot(a).hash())
            .map(str::to_string);
        return Ok((to, hold));
    }
    let deployed = Slot::ALL
        .into_iter()
        .filter(idle)
        .find(|s| rec.slot(*s).state == SlotState::Deployed);
    let rolled_back = || {
        Slot::ALL.into_iter().filter(idle).find(|s| {
            rec.slot(*s).state == SlotState::Grace
                && rec.held.is_some()
                && rec.slot(*s).hash() == rec.held.as_deref()
        })
    };
    let to = deployed
        .or_else(rolled_back)
        .ok_or_else(|| SwitchError::NothingToPromote {
            key: rec.key.to_string(),
        })?;
    Ok((to, None))
}

/// The container of `rec`'s `slot` among `containers`, by its name and codeb's marks.
fn slot_container<'a>(
    rec: &EnvRecord,
    containers: &'a [ObservedContainer],
    slot: Slot,
) -> Option<&'a ObservedContainer> {
    let name = rec.key.container_name(slot);
    containers
        .iter()
        .find(|c| c.name == name && belongs_to(c, &rec.key))
}

/// The URL a switch's health gate will probe where codeb publishes slot ports (kernel mode): the
/// target container's own address, known from the record and the containers alone. A daemon
/// that kept the containers from an earlier observation starts this probe while it reads the
/// kernel's table and plans; the executor uses its answer only if the plan's [`Action::Switch`]
/// names the same URL. `None` when there is nothing to switch to or the target does not run.
pub fn probe_ahead(
    rec: &EnvRecord,
    containers: &[ObservedContainer],
    rollback: bool,
) -> Option<String> {
    let (to, _) = target(rec, rollback).ok()?;
    let target = slot_target(rec, to, slot_container(rec, containers, to))?;
    Some(super::env::direct_url(target, &rec.slot(to).health_path))
}

fn plan_switch(
    rec: &EnvRecord,
    host: &HostRef,
    view: HostView<'_>,
    to: Slot,
    hold: Option<String>,
    now_ms: u64,
) -> Result<Plan, SwitchError> {
    let step = |action| Step {
        host: rec.host.clone(),
        key: Some(rec.key.clone()),
        generation: Some(rec.generation),
        action,
    };
    let path = &rec.slot(to).health_path;
    let mut plan = Plan::default();
    // A hook lost since the last apply (a firewall reload) is restored first, or the rule written
    // below would lead nowhere.
    if let Some(hook) = hook_diff(view.kernel) {
        plan.steps.push(Step {
            key: None,
            generation: None,
            ..step(Action::HookServices(hook))
        });
    }
    let container = |slot: Slot| slot_container(rec, view.containers, slot);
    // Where codeb publishes slot ports, the probe goes to the container the rule will lead to.
    let url = match (
        view.kernel.published(host),
        slot_target(rec, to, container(to)),
    ) {
        (Some(_), Some(target)) => super::env::direct_url(target, path),
        _ => health_url(host, rec, to, path),
    };
    plan.steps.push(step(Action::Switch {
        to,
        from: rec.active,
        hold: hold.clone(),
        url,
    }));
    let ids = super::route_ids(&rec.key);
    let observed: Vec<&crate::model::writes::Route> = view
        .proxy
        .routes
        .iter()
        .filter(|r| ids.contains(&r.id))
        .collect();
    let mut proj = rec.clone();
    switch(&mut proj, to, hold, now_ms);
    let target_of = |slot| slot_target(&proj, slot, container(slot));
    // In kernel mode the record must not say `to` serves while the rule cannot lead there.
    if service_address(view.kernel, &proj).is_some() && target_of(to).is_none() {
        return Err(SwitchError::NotRunning {
            key: rec.key.to_string(),
            slot: to,
        });
    }
    if let Some(write) = service_diff(&proj, view.kernel, target_of) {
        plan.steps.push(step(Action::SetService(write)));
    }
    let service = service_address(view.kernel, &proj);
    plan.steps.extend(
        route_diff(&proj, host, service, &observed)
            .into_iter()
            .map(step),
    );
    Ok(plan)
}
