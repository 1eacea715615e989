//! Planning one project environment: container hygiene, the release decision, routes, retirement.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, Note, Plan, Step, NETWORK};
use crate::backend::{
    ContainerSpec, ObservedContainer, Route, LABEL_ENVIRONMENT, LABEL_PROJECT, LABEL_RELEASE,
    LABEL_SLOT,
};
use crate::model::{
    ports, DesiredEnv, EnvRecord, HostRef, Promotion, Release, Slot, SlotRecord, SlotState,
};

/// Plans one environment. `rec` is what the store holds (`None` for a new environment);
/// `taken` collects allocated ports so that two new environments never get the same pair.
#[allow(clippy::too_many_arguments)]
pub fn plan_env(
    d: &DesiredEnv,
    host: &HostRef,
    rec: Option<&EnvRecord>,
    containers: &[&ObservedContainer],
    routes: &[&Route],
    taken: &mut BTreeSet<u16>,
    now_ms: u64,
    plan: &mut Plan,
) {
    let generation = rec.map(|r| r.generation);
    let step = |action| Step {
        host: d.host.clone(),
        key: Some(d.key.clone()),
        generation,
        action,
    };
    let grace_ms = d.grace_period.as_millis() as u64;

    // The record as it will be once this plan has run: later decisions build on it.
    let mut proj = match rec {
        Some(r) => r.clone(),
        None => {
            let Some(base) = ports::allocate(&d.key.project, &d.key.env, taken) else {
                plan.notes.push(Note::NoPorts { key: d.key.clone() });
                return;
            };
            taken.extend([base, base + 1]);
            EnvRecord::new(d.key.clone(), d.host.clone(), d.hostname.clone(), base)
        }
    };
    if rec.is_none() || proj.hostname != d.hostname || proj.grace_period_ms != grace_ms {
        proj.hostname = d.hostname.clone();
        proj.grace_period_ms = grace_ms;
        plan.steps
            .push(step(Action::Register(Box::new(proj.clone()))));
    }

    let mine = containers;
    let by_slot: BTreeMap<Slot, &ObservedContainer> = Slot::ALL
        .iter()
        .filter_map(|s| {
            mine.iter()
                .find(|c| c.name == d.key.container_name(*s))
                .map(|c| (*s, *c))
        })
        .collect();

    // Containers with our labels that no slot accounts for (a renamed or duplicated container).
    for c in mine
        .iter()
        .filter(|c| !by_slot.values().any(|o| o.id == c.id))
    {
        plan.steps.push(step(Action::RemoveContainer {
            id: c.id.clone(),
            name: c.name.clone(),
        }));
    }

    // 1. Hygiene: each settled slot's container is present, runs the recorded release, and runs or
    //    not as its state says. Deploying slots are handled by the release decision below.
    for slot in Slot::ALL {
        let sr = proj.slot(slot).clone();
        let c = by_slot.get(&slot).copied();
        match sr.state {
            SlotState::Empty => {
                if let Some(c) = c {
                    plan.steps.push(step(Action::RemoveContainer {
                        id: c.id.clone(),
                        name: c.name.clone(),
                    }));
                }
            }
            SlotState::Failed => {
                if let Some(c) = c.filter(|c| c.running) {
                    plan.steps.push(step(Action::Stop {
                        slot,
                        container: c.id.clone(),
                    }));
                }
            }
            SlotState::Deployed | SlotState::Active | SlotState::Grace => {
                let Some(release) = sr.release.as_ref() else {
                    continue;
                };
                if sr.state == SlotState::Grace && grace_over(&sr, proj.grace_period_ms, now_ms) {
                    continue; // retired below; no point in repairing it first
                }
                match c {
                    Some(c) if c.labels.get(LABEL_RELEASE) == Some(&release.hash()) => {
                        if !c.running {
                            plan.steps.push(step(Action::Start {
                                slot,
                                container: c.id.clone(),
                            }));
                        }
                    }
                    _ => {
                        let spec = container_spec(d, host, &proj, slot, release);
                        plan.steps.push(step(Action::Recreate {
                            slot,
                            container: Box::new(spec),
                            replace: c.map(|c| c.id.clone()),
                        }));
                    }
                }
            }
            SlotState::Deploying => {}
        }
    }

    // 2. The release decision.
    let hash = d.release.hash();
    let active = proj.active;
    let active_has_it =
        active.is_some_and(|a| proj.slot(a).hash().as_deref() == Some(hash.as_str()));
    if proj.held.as_deref() == Some(hash.as_str()) {
        plan.notes.push(Note::Held {
            key: d.key.clone(),
            hash: hash.clone(),
        });
    } else if !active_has_it {
        let candidate = Slot::ALL
            .into_iter()
            .filter(|s| Some(*s) != active)
            .find(|s| {
                proj.slot(*s).hash().as_deref() == Some(hash.as_str())
                    && proj.slot(*s).state != SlotState::Empty
            });
        match candidate.map(|s| (s, proj.slot(s).state)) {
            Some((s, SlotState::Deployed | SlotState::Grace | SlotState::Active)) => {
                if d.promotion == Promotion::Auto || active.is_none() {
                    let url = health_url(host, &proj, s, &proj.slot(s).health_path.clone());
                    plan.steps.push(step(Action::Switch {
                        to: s,
                        from: active,
                        hold: None,
                        url,
                    }));
                    switch(&mut proj, s, None, now_ms);
                } else {
                    plan.notes.push(Note::AwaitingPromotion {
                        key: d.key.clone(),
                        slot: s,
                        preview: d.preview_hostname(s),
                    });
                }
            }
            Some((s, SlotState::Failed)) => plan.notes.push(Note::Failed {
                key: d.key.clone(),
                slot: s,
                hash: hash.clone(),
            }),
            Some((s, _deploying)) => {
                // Resume a deploy that was interrupted (or is being probed): make sure the container
                // exists and runs, then probe it.
                let c = by_slot
                    .get(&s)
                    .copied()
                    .filter(|c| c.labels.get(LABEL_RELEASE) == Some(&hash));
                let name = match c {
                    Some(c) => {
                        if !c.running {
                            plan.steps.push(step(Action::Start {
                                slot: s,
                                container: c.id.clone(),
                            }));
                        }
                        c.id.clone()
                    }
                    None => {
                        let spec = container_spec(d, host, &proj, s, &d.release);
                        let name = spec.name.clone();
                        plan.steps.push(step(deploy(
                            d,
                            s,
                            spec,
                            by_slot.get(&s).map(|c| c.id.clone()),
                        )));
                        name
                    }
                };
                plan.steps
                    .push(step(await_healthy(d, host, &proj, s, name, &hash)));
            }
            None => {
                let target = active.map(Slot::other).unwrap_or(Slot::Blue);
                let spec = container_spec(d, host, &proj, target, &d.release);
                let name = spec.name.clone();
                plan.steps.push(step(deploy(
                    d,
                    target,
                    spec,
                    by_slot.get(&target).map(|c| c.id.clone()),
                )));
                plan.steps
                    .push(step(await_healthy(d, host, &proj, target, name, &hash)));
                *proj.slot_mut(target) = SlotRecord {
                    state: SlotState::Deploying,
                    release: Some(d.release.clone()),
                    since_ms: now_ms,
                    ..SlotRecord::default()
                };
            }
        }
    }

    // A deploying slot that is neither resumed nor the new target (the manifests moved on while it
    // was deploying, and the other slot took the new release) is retired.
    let mut retire: Vec<Slot> = Vec::new();
    for slot in Slot::ALL {
        let sr = proj.slot(slot);
        let stale_deploy =
            sr.state == SlotState::Deploying && sr.hash().as_deref() != Some(hash.as_str());
        if stale_deploy
            || (sr.state == SlotState::Grace && grace_over(sr, proj.grace_period_ms, now_ms))
        {
            retire.push(slot);
        }
    }
    for slot in &retire {
        *proj.slot_mut(*slot) = SlotRecord::default();
    }

    // 3. Routes, from the projected record.
    plan.steps
        .extend(route_diff(&proj, host, routes).into_iter().map(step));

    // 4. Retire last: routes away from a slot are gone before its container is.
    for slot in retire {
        let container = by_slot.get(&slot).map(|c| c.id.clone());
        plan.steps.push(step(Action::Retire { slot, container }));
    }
}

fn grace_over(sr: &SlotRecord, grace_ms: u64, now_ms: u64) -> bool {
    sr.since_ms.saturating_add(grace_ms) <= now_ms
}

/// The route writes that bring the observed routes of `rec`'s key to what `rec` calls for.
///
/// `observed` holds the key's routes only (see [`super::route_key`]).
pub fn route_diff(rec: &EnvRecord, host: &HostRef, observed: &[&Route]) -> Vec<Action> {
    let wanted = routes(rec, host);
    let observed: BTreeMap<&str, &Route> = observed.iter().map(|r| (r.id.as_str(), *r)).collect();
    let mut out = Vec::new();
    for route in &wanted {
        match observed.get(route.id.as_str()) {
            None => out.push(Action::AddRoute(route.clone())),
            Some(o) if *o != route => out.push(Action::ReplaceRoute(route.clone())),
            Some(_) => {}
        }
    }
    for id in observed
        .keys()
        .filter(|id| !wanted.iter().any(|w| w.id == **id))
    {
        out.push(Action::DeleteRoute { id: id.to_string() });
    }
    out
}

/// Applies a switch to a projected record: `to` serves, the previous active slot enters grace.
pub fn switch(rec: &mut EnvRecord, to: Slot, hold: Option<String>, now_ms: u64) {
    if let Some(from) = rec.active.filter(|a| *a != to) {
        let s = rec.slot_mut(from);
        s.state = SlotState::Grace;
        s.since_ms = now_ms;
    }
    let s = rec.slot_mut(to);
    s.state = SlotState::Active;
    s.since_ms = now_ms;
    rec.active = Some(to);
    rec.held = hold;
}

/// The routes an environment's record calls for: its hostname to the active slot, and a preview
/// hostname for each slot that has a release running.
pub fn routes(rec: &EnvRecord, host: &HostRef) -> Vec<Route> {
    let mut out = Vec::new();
    if let Some(a) = rec.active {
        out.push(Route {
            id: rec.key.route_id(),
            hosts: vec![rec.hostname.clone()],
            upstream: upstream(host, rec, a),
        });
    }
    for slot in Slot::ALL {
        if rec.slot(slot).state.wants_running() {
            out.push(Route {
                id: rec.key.preview_route_id(slot),
                hosts: vec![crate::model::preview_hostname(&rec.hostname, slot)],
                upstream: upstream(host, rec, slot),
            });
        }
    }
    out
}

fn upstream(host: &HostRef, rec: &EnvRecord, slot: Slot) -> String {
    format!("{}:{}", host.publish_address, slot.port(rec.base_port))
}

pub(crate) fn health_url(host: &HostRef, rec: &EnvRecord, slot: Slot, path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    format!("http://{}{}", upstream(host, rec, slot), path)
}

fn deploy(d: &DesiredEnv, slot: Slot, spec: ContainerSpec, replace: Option<String>) -> Action {
    Action::Deploy {
        slot,
        release: Box::new(d.release.clone()),
        container: Box::new(spec),
        replace,
        health_path: d.health_path.clone(),
        health_timeout_ms: d.health_timeout.as_millis() as u64,
    }
}

fn await_healthy(
    d: &DesiredEnv,
    host: &HostRef,
    rec: &EnvRecord,
    slot: Slot,
    container: String,
    hash: &str,
) -> Action {
    Action::AwaitHealthy {
        slot,
        url: health_url(host, rec, slot, &d.health_path),
        timeout_ms: d.health_timeout.as_millis() as u64,
        container,
        hash: hash.to_string(),
    }
}

/// The container a slot runs: named and labelled so that codeb finds it again and owns it.
pub fn container_spec(
    d: &DesiredEnv,
    host: &HostRef,
    rec: &EnvRecord,
    slot: Slot,
    release: &Release,
) -> ContainerSpec {
    let labels = BTreeMap::from([
        (LABEL_PROJECT.to_string(), d.key.project.clone()),
        (LABEL_ENVIRONMENT.to_string(), d.key.env.clone()),
        (LABEL_SLOT.to_string(), slot.to_string()),
        (LABEL_RELEASE.to_string(), release.hash()),
    ]);
    ContainerSpec {
        name: d.key.container_name(slot),
        image: release.image.clone(),
        command: release.command.clone(),
        env: release.env.clone(),
        labels,
        container_port: release.port,
        host_ip: host.publish_address.clone(),
        host_port: slot.port(rec.base_port),
        network: NETWORK.to_string(),
    }
}
