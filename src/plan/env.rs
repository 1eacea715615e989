//! Planning one project environment: container hygiene, the release decision, the service
//! address, routes, retirement.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use super::service::{publication_diff, service_address, service_diff, slot_target, SlotPort};
use super::{Action, DirectProbe, Drain, KernelObservation, Note, Plan, Step, NETWORK};
use crate::model::observed::ObservedContainer;
use crate::model::ownership::{
    tenant_mac, LABEL_ENVIRONMENT, LABEL_PORT, LABEL_PROJECT, LABEL_RELEASE, LABEL_SLOT,
    ROUTE_ID_PREFIX,
};
use crate::model::writes::{ContainerSpec, Route};
use crate::model::{
    ports, DesiredEnv, EnvRecord, HostRef, Promotion, Release, Slot, SlotRecord, SlotState,
};

/// How long a slot that stopped serving is kept at least, for the requests in flight on it to
/// finish, when its grace period is shorter (a zero grace period retires it in the same plan as
/// the switch). The executor stops waiting earlier once the kernel shows no connection open to the
/// slot. Thirty seconds covers ordinary request timeouts; longer requests are cut.
pub const DRAIN_MS: u64 = 30_000;

/// Plans one environment. `rec` is what the store holds (`None` for a new environment, or one
/// `adopted` by the plan's step before: its record as the host holds it);
/// `containers` and `routes` are the observed ones of this key; `taken` collects allocated ports so
/// that two new environments never get the same pair.
///
/// The converged path (the common one: every resync of every environment) allocates nothing but
/// the expected routes: the record is borrowed until something changes it.
#[allow(clippy::too_many_arguments)]
pub fn plan_env(
    d: &DesiredEnv,
    host: &HostRef,
    kernel: &KernelObservation,
    rec: Option<&EnvRecord>,
    adopted: Option<&EnvRecord>,
    containers: &[&ObservedContainer],
    routes: &[&Route],
    taken: &mut super::LazyPorts<'_>,
    now_ms: u64,
    plan: &mut Plan,
) {
    let generation = rec.map(|r| r.generation);
    // Where this environment's steps begin (a deploy drops a repair of its own target slot).
    let first_step = plan.steps.len();
    let step = |action| Step {
        host: d.host.clone(),
        key: Some(d.key.clone()),
        generation,
        action,
    };
    let grace_ms = millis(d.grace_period);

    // The record as it will be once this plan has run: later decisions build on it.
    let mut proj: Cow<'_, EnvRecord> = match rec.or(adopted) {
        Some(r) => Cow::Borrowed(r),
        None => {
            let taken = taken.get();
            let Some(base) = ports::allocate(&d.key.project, &d.key.env, taken) else {
                plan.notes.push(Note::NoPorts { key: d.key.clone() });
                return;
            };
            taken.insert(base);
            taken.insert(base + 1);
            Cow::Owned(EnvRecord::new(
                d.key.clone(),
                d.host.clone(),
                d.hostname.clone(),
                base,
            ))
        }
    };
    if rec.or(adopted).is_none() || proj.hostname != d.hostname || proj.grace_period_ms != grace_ms
    {
        let p = proj.to_mut();
        p.hostname = d.hostname.clone();
        p.grace_period_ms = grace_ms;
        plan.steps.push(step(Action::Register(Box::new(p.clone()))));
    }

    // Switching through Caddy, where a kernel-mode run left this environment's slot port rules:
    // they would catch `127.0.0.1:{slot port}` before Podman's publication does (a health probe
    // or a route then meets the old container's address), so they go before anything deploys.
    if let KernelObservation::Unavailable {
        leftover: Some(p), ..
    } = kernel
    {
        plan.steps.extend(
            super::service::publication_removals(&proj, p)
                .into_iter()
                .map(|w| step(Action::SetService(w))),
        );
    }
    // Where codeb's kernel rules publish slot ports, containers publish none: a new release starts
    // beside the container it replaces, which is set aside and removed after the switch.
    let published = kernel.published(host);
    // Each slot's container: the first one named `{project}-{env}-{slot}`. Found once: the
    // plan asks for it a dozen times, and each name comparison is a cache miss on a large host.
    let mut slot_containers: [Option<&ObservedContainer>; 2] = [None, None];
    for c in containers {
        for (i, slot) in Slot::ALL.into_iter().enumerate() {
            if slot_containers[i].is_none() && is_container_of(&c.name, &d.key, slot) {
                slot_containers[i] = Some(c);
                break;
            }
        }
    }
    let by_slot = |slot: Slot| slot_containers[usize::from(slot == Slot::Green)];
    // The release each slot's container carries (its label), looked up once as well.
    let slot_releases = slot_containers.map(|c| c.and_then(|c| c.labels.get(LABEL_RELEASE)));
    let runs_in = |slot: Slot, hash: &str| {
        slot_releases[usize::from(slot == Slot::Green)].map(String::as_str) == Some(hash)
    };
    // As [`slot_target`], from the lookups above.
    let target_in = |rec: &EnvRecord, slot: Slot| -> Option<SocketAddrV4> {
        let release = rec.slot(slot).release.as_ref()?;
        let c = by_slot(slot).filter(|c| c.running && runs_in(slot, release.hash()))?;
        c.ip.map(|ip| SocketAddrV4::new(ip, release.port))
    };

    // Containers with our labels that no slot accounts for (a renamed or duplicated container,
    // or one a deploy set aside). One that publishes a port goes first (a container of this plan
    // may need the port); one that publishes none goes last, after the switch it must not delay.
    let mut set_aside: Vec<Step> = Vec::new();
    for c in containers.iter().filter(|c| {
        !slot_containers
            .iter()
            .flatten()
            .any(|o| std::ptr::eq(*o, **c))
    }) {
        let remove = step(Action::RemoveContainer {
            id: c.id.clone(),
            name: c.name.clone(),
        });
        if c.host_port.is_some() {
            plan.steps.push(remove);
        } else {
            set_aside.push(remove);
        }
    }
    // A container that Podman does not publish is reachable on its slot port only through codeb's
    // kernel rules: without them it is recreated with Podman publishing it. Where the rules
    // publish, one that Podman publishes (a Caddy-mode run's) is recreated without: the rule must
    // be the port's one publisher, or whichever NAT hook runs first decides where it leads.
    let base_port = proj.base_port;
    let reachable = |c: &ObservedContainer, slot: Slot| match published {
        Some(_) => c.host_port.is_none(),
        None => c.host_port == Some(slot.port(base_port)),
    };

    // Slots whose container this plan creates, starts or replaces: their address is not known
    // until the next observation.
    let mut pending: Vec<Slot> = Vec::new();

    // 1. Hygiene: each settled slot's container is present, runs the recorded release, and runs or
    //    not as its state says. Deploying slots are handled by the release decision below.
    for slot in Slot::ALL {
        let sr = proj.slot(slot);
        let c = by_slot(slot);
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
                if sr.state == SlotState::Grace && grace_over(sr, proj.grace_period_ms, now_ms) {
                    continue; // retired below; no point in repairing it first
                }
                match c {
                    Some(c) if runs_in(slot, release.hash()) && reachable(c, slot) => {
                        if !c.running {
                            pending.push(slot);
                            plan.steps.push(step(Action::Start {
                                slot,
                                container: c.id.clone(),
                            }));
                        }
                    }
                    // A release known by its label only cannot be rebuilt: its slot is left as it
                    // is (the release decision moves traffic to the manifests' release).
                    _ if release.adopted.is_some() => {}
                    _ => {
                        pending.push(slot);
                        let spec =
                            container_spec(d, host, &proj, slot, release, published.is_none());
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
    let active_has_it = active.is_some_and(|a| proj.slot(a).hash() == Some(hash));
    if proj.held.as_deref() == Some(hash) {
        plan.notes.push(Note::Held {
            key: d.key.clone(),
            hash: hash.to_string(),
        });
    } else if !active_has_it {
        let candidate = Slot::ALL
            .into_iter()
            .filter(|s| Some(*s) != active)
            .find(|s| {
                proj.slot(*s).hash() == Some(hash) && proj.slot(*s).state != SlotState::Empty
            });
        match candidate.map(|s| (s, proj.slot(s).state)) {
            Some((s, SlotState::Deployed | SlotState::Grace | SlotState::Active)) => {
                if d.promotion == Promotion::Auto || active.is_none() {
                    let path = proj.slot(s).health_path.clone();
                    let target = (!pending.contains(&s))
                        .then(|| target_in(&proj, s))
                        .flatten();
                    // Where codeb publishes the slot's port, its rule may still lead to the
                    // container the deploy set aside: the switch probes the container itself,
                    // once its address is known (the next round, if not yet).
                    let url = match (published, target) {
                        (None, _) => Some(health_url(host, &proj, s, &path)),
                        (Some(_), Some(to)) => Some(direct_url(to, &path)),
                        (Some(_), None) => None,
                    };
                    if let Some(url) = url {
                        plan.steps.push(step(Action::Switch {
                            to: s,
                            from: active,
                            hold: None,
                            url,
                        }));
                        switch(proj.to_mut(), s, None, now_ms);
                    }
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
                hash: hash.to_string(),
            }),
            Some((s, _deploying)) => {
                // Resume a deploy that was interrupted: make sure the container exists and runs,
                // then probe it.
                pending.push(s);
                let container = match by_slot(s).filter(|_| runs_in(s, hash)) {
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
                        let spec =
                            container_spec(d, host, &proj, s, &d.release, published.is_none());
                        let name = spec.name.clone();
                        let replace = by_slot(s).map(|c| c.id.clone());
                        let aside = aside_name(published.is_some(), &name, replace.as_deref());
                        plan.steps
                            .push(step(deploy(d, s, spec, replace, aside, None)));
                        name
                    }
                };
                let direct = published.is_some();
                plan.steps.push(step(await_healthy(
                    d, host, &proj, s, container, hash, direct,
                )));
            }
            None => {
                let target = active.map(Slot::other).unwrap_or(Slot::Blue);
                // The deploy replaces the target slot's container: a repair of it planned above
                // (recreated after a mode change, say) would only take the name the new release
                // needs.
                let mine = plan.steps.split_off(first_step);
                plan.steps.extend(mine.into_iter().filter(|s| {
                    !matches!(
                        s.action,
                        Action::Recreate { slot, .. } | Action::Start { slot, .. } if slot == target
                    )
                }));
                pending.push(target);
                let spec = container_spec(d, host, &proj, target, &d.release, published.is_none());
                let name = spec.name.clone();
                // The idle slot may be the one rolled away from moments ago: its requests finish
                // before its container is replaced.
                let drain = drain(&proj, target, by_slot(target), now_ms);
                let replace = by_slot(target).map(|c| c.id.clone());
                let aside = aside_name(published.is_some(), &name, replace.as_deref());
                plan.steps
                    .push(step(deploy(d, target, spec, replace, aside, drain)));
                let direct = published.is_some();
                plan.steps.push(step(await_healthy(
                    d, host, &proj, target, name, hash, direct,
                )));
                *proj.to_mut().slot_mut(target) = SlotRecord {
                    state: SlotState::Deploying,
                    release: Some(d.release.clone()),
                    since_ms: now_ms,
                    ..SlotRecord::default()
                };
            }
        }
    }

    // A deploying slot that is neither resumed nor the new target (the manifests moved on while it
    // was deploying, and the other slot took the new release) is retired, as is a grace slot whose
    // period is over.
    let retire: Vec<Slot> = Slot::ALL
        .into_iter()
        .filter(|s| {
            let sr = proj.slot(*s);
            (sr.state == SlotState::Deploying && sr.hash() != Some(hash))
                || (sr.state == SlotState::Grace && grace_over(sr, proj.grace_period_ms, now_ms))
        })
        .collect();
    let drains: Vec<Option<Drain>> = retire
        .iter()
        .map(|s| drain(&proj, *s, by_slot(*s), now_ms))
        .collect();
    for slot in &retire {
        *proj.to_mut().slot_mut(*slot) = SlotRecord::default();
    }

    // 3. The service address, from the projected record, before the routes: a new hostname route
    //    dials an address that already leads to the active slot.
    let target_of = |s: Slot| {
        (!pending.contains(&s))
            .then(|| target_in(&proj, s))
            .flatten()
    };
    if let Some(write) = service_diff(&proj, kernel, target_of) {
        plan.steps.push(step(Action::SetService(write)));
    }
    // Each slot's published port, where codeb's rules publish it: to the slot's container while
    // it should run, nowhere once the slot is empty or failed (before a retired container goes).
    if let Some(p) = published {
        for slot in Slot::ALL {
            let want = if pending.contains(&slot) {
                SlotPort::Pending
            } else if proj.slot(slot).state.wants_running() {
                target_in(&proj, slot).map_or(SlotPort::Nowhere, SlotPort::To)
            } else {
                SlotPort::Nowhere
            };
            if let Some(write) = publication_diff(&proj, p, slot, want) {
                plan.steps.push(step(Action::SetService(write)));
            }
        }
    }

    // 4. Routes, from the projected record.
    let service = service_address(kernel, &proj);
    plan.steps.extend(
        route_diff(&proj, host, service, routes)
            .into_iter()
            .map(step),
    );

    // 5. Retire last: routes and rules away from a slot are gone before its container is.
    for (slot, drain) in retire.into_iter().zip(drains) {
        let container = by_slot(slot).map(|c| c.id.clone());
        plan.steps.push(step(Action::Retire {
            slot,
            container,
            drain,
        }));
    }
    plan.steps.extend(set_aside);
}

/// The name a deploy renames the container it replaces to, where that container holds no port
/// the new one needs: `{name}-replaced-{its id, 12 characters}`. Unaccounted for by any slot, it is
/// removed once the switch is done.
fn aside_name(kernel_published: bool, name: &str, replace: Option<&str>) -> Option<String> {
    let id = replace.filter(|_| kernel_published)?;
    Some(format!("{name}-replaced-{}", &id[..id.len().min(12)]))
}

/// `http://{container address:port}{path}`: a probe of the container itself.
pub(crate) fn direct_url(to: SocketAddrV4, path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    format!("http://{to}{path}")
}

/// The drain owed to a slot that served the hostname until `since_ms` (it is in grace), while
/// [`DRAIN_MS`] has not passed since.
fn drain(
    rec: &EnvRecord,
    slot: Slot,
    container: Option<&ObservedContainer>,
    now_ms: u64,
) -> Option<Drain> {
    let sr = rec.slot(slot);
    let until_ms = sr.since_ms.saturating_add(DRAIN_MS);
    (sr.state == SlotState::Grace && until_ms > now_ms).then(|| Drain {
        until_ms,
        target: slot_target(rec, slot, container),
    })
}

/// True when `name` is `{project}-{env}-{slot}`, compared without allocating.
fn is_container_of(name: &str, key: &crate::model::EnvKey, slot: Slot) -> bool {
    name.strip_prefix(key.project.as_str())
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_prefix(key.env.as_str()))
        .and_then(|r| r.strip_prefix('-'))
        == Some(slot.as_str())
}

fn grace_over(sr: &SlotRecord, grace_ms: u64, now_ms: u64) -> bool {
    sr.since_ms.saturating_add(grace_ms) <= now_ms
}

/// The route writes that bring the observed routes of `rec`'s key to what `rec` calls for.
///
/// `observed` holds the key's routes only (see [`super::route_key`]). With a `service` address
/// (kernel mode) the hostname route dials it without keep-alive and never changes on a switch;
/// without, it dials the active slot's published port. Observed routes are compared with the
/// wanted ones in place; a `Route` is built only for a write (planning a converged environment
/// allocates nothing here).
pub fn route_diff(
    rec: &EnvRecord,
    host: &HostRef,
    service: Option<SocketAddrV4>,
    observed: &[&Route],
) -> Vec<Action> {
    let wanted = wanted_routes(rec, host, service);
    let mut out = Vec::new();
    for w in &wanted {
        match observed.iter().find(|o| w.is_id(&o.id)) {
            None => out.push(Action::AddRoute(w.build())),
            Some(o) if !w.matches(o) => out.push(Action::ReplaceRoute(w.build())),
            Some(_) => {}
        }
    }
    for o in observed
        .iter()
        .filter(|o| !wanted.iter().any(|w| w.is_id(&o.id)))
    {
        out.push(Action::DeleteRoute { id: o.id.clone() });
    }
    out
}

/// A route an environment calls for, described by borrowed parts.
struct Wanted<'a> {
    rec: &'a EnvRecord,
    host: &'a HostRef,
    /// `None`: the hostname route; `Some(slot)`: that slot's preview route.
    preview: Option<Slot>,
    /// The slot the route dials.
    target: Slot,
    /// The service address the hostname route dials instead, in kernel mode.
    service: Option<SocketAddrV4>,
}

impl Wanted<'_> {
    /// `codeb-{project}_{env}` or `codeb-{project}_{env}_{slot}`, compared without allocating.
    fn is_id(&self, id: &str) -> bool {
        let rest = id
            .strip_prefix(ROUTE_ID_PREFIX)
            .and_then(|r| r.strip_prefix(self.rec.key.project.as_str()))
            .and_then(|r| r.strip_prefix('_'))
            .and_then(|r| r.strip_prefix(self.rec.key.env.as_str()));
        match (rest, self.preview) {
            (Some(""), None) => true,
            (Some(r), Some(slot)) => r.strip_prefix('_') == Some(slot.as_str()),
            _ => false,
        }
    }

    fn is_host(&self, h: &str) -> bool {
        match self.preview {
            None => h == self.rec.hostname,
            Some(slot) => {
                h.strip_prefix(slot.as_str())
                    .and_then(|r| r.strip_prefix('.'))
                    == Some(self.rec.hostname.as_str())
            }
        }
    }

    fn is_upstream(&self, u: &str) -> bool {
        if let Some(service) = self.service {
            return u.parse() == Ok(service);
        }
        u.rsplit_once(':').is_some_and(|(addr, port)| {
            addr == self.host.publish_address
                && port.parse() == Ok(self.target.port(self.rec.base_port))
        })
    }

    /// Keep-alive is off exactly where the kernel picks the slot per connection.
    fn keep_alive(&self) -> bool {
        self.service.is_none()
    }

    fn matches(&self, r: &Route) -> bool {
        self.is_id(&r.id)
            && r.hosts.len() == 1
            && self.is_host(&r.hosts[0])
            && self.is_upstream(&r.upstream)
            && r.keep_alive == self.keep_alive()
    }

    fn build(&self) -> Route {
        let (id, hostname) = match self.preview {
            None => (self.rec.key.route_id(), self.rec.hostname.clone()),
            Some(slot) => (
                self.rec.key.preview_route_id(slot),
                crate::model::preview_hostname(&self.rec.hostname, slot),
            ),
        };
        Route {
            id,
            hosts: vec![hostname],
            upstream: match self.service {
                Some(service) => service.to_string(),
                None => upstream(self.host, self.rec, self.target),
            },
            keep_alive: self.keep_alive(),
        }
    }
}

/// The hostname route (when a slot is active) and a preview route per slot that runs a release.
/// Preview routes dial their slot's published port in both modes: they change only when the slot
/// does (a deploy), which reloads Caddy anyway.
fn wanted_routes<'a>(
    rec: &'a EnvRecord,
    host: &'a HostRef,
    service: Option<SocketAddrV4>,
) -> smallvec::SmallVec<[Wanted<'a>; 3]> {
    // At most three, kept inline: planning a converged host allocates nothing per environment.
    let mut out = smallvec::SmallVec::new();
    if let Some(a) = rec.active {
        out.push(Wanted {
            rec,
            host,
            preview: None,
            target: a,
            service,
        });
    }
    for slot in Slot::ALL {
        if rec.slot(slot).state.wants_running() {
            out.push(Wanted {
                rec,
                host,
                preview: Some(slot),
                target: slot,
                service: None,
            });
        }
    }
    out
}

/// The routes an environment's record calls for: its hostname to the active slot (through its
/// `service` address in kernel mode), and a preview hostname for each slot that has a release
/// running.
pub fn routes(rec: &EnvRecord, host: &HostRef, service: Option<SocketAddrV4>) -> Vec<Route> {
    wanted_routes(rec, host, service)
        .iter()
        .map(Wanted::build)
        .collect()
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

fn upstream(host: &HostRef, rec: &EnvRecord, slot: Slot) -> String {
    format!("{}:{}", host.publish_address, slot.port(rec.base_port))
}

pub(crate) fn health_url(host: &HostRef, rec: &EnvRecord, slot: Slot, path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    format!("http://{}{}", upstream(host, rec, slot), path)
}

fn deploy(
    d: &DesiredEnv,
    slot: Slot,
    spec: ContainerSpec,
    replace: Option<String>,
    aside: Option<String>,
    drain: Option<Drain>,
) -> Action {
    Action::Deploy {
        slot,
        release: Box::new(d.release.clone()),
        container: Box::new(spec),
        replace,
        aside,
        health_path: d.health_path.clone(),
        health_timeout_ms: millis(d.health_timeout),
        drain,
    }
}

/// `direct`: probe the container's own address (see [`Action::AwaitHealthy`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn await_healthy(
    d: &DesiredEnv,
    host: &HostRef,
    rec: &EnvRecord,
    slot: Slot,
    container: String,
    hash: &str,
    direct: bool,
) -> Action {
    Action::AwaitHealthy {
        slot,
        url: health_url(host, rec, slot, &d.health_path),
        timeout_ms: millis(d.health_timeout),
        container,
        hash: hash.to_string(),
        direct: direct.then(|| DirectProbe {
            port: d.release.port,
            path: d.health_path.clone(),
        }),
    }
}

/// The container a slot runs: named and labelled so that codeb finds it again and owns it;
/// `publish`: Podman publishes the slot port (else codeb's kernel rules do).
pub fn container_spec(
    d: &DesiredEnv,
    host: &HostRef,
    rec: &EnvRecord,
    slot: Slot,
    release: &Release,
    publish: bool,
) -> ContainerSpec {
    let labels = BTreeMap::from([
        (LABEL_PROJECT.to_string(), d.key.project.clone()),
        (LABEL_ENVIRONMENT.to_string(), d.key.env.clone()),
        (LABEL_SLOT.to_string(), slot.to_string()),
        (LABEL_RELEASE.to_string(), release.hash().to_string()),
        (LABEL_PORT.to_string(), slot.port(rec.base_port).to_string()),
    ]);
    let name = d.key.container_name(slot);
    ContainerSpec {
        name: name.clone(),
        image: release.image.clone(),
        command: release.command.clone(),
        env: Default::default(),
        env_source: crate::model::vars::EnvSource {
            key: Some(d.key.clone()),
            version: release.env_version,
            inline: release.env.clone(),
        },
        labels,
        container_port: release.port,
        host_ip: host.publish_address.clone(),
        host_port: slot.port(rec.base_port),
        publish,
        network: NETWORK.to_string(),
        mac: Some(tenant_mac(&name, release.hash())),
        confinement: release.confinement.clone(),
        stop_timeout_secs: release.stop_timeout_secs,
    }
}

/// A duration in milliseconds, saturating: manifests bound their durations (1 h, 30 d), but a spec
/// recorded by an older codeb may hold anything, and a cast would wrap (18446744073709552 s became
/// 384 ms).
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
