//! Adoption: what a host holds of a declared environment by codeb's marks while the store has no
//! record of it (a fresh state directory, or one restored from an older backup, of the same
//! codeb instance), made into the record that describes it, so that the plan carries on from what
//! runs instead of deploying it again on other ports beside it.
//!
//! Read from the marks only: each slot's container (its name, `codeb.slot`, `codeb.port` and
//! `codeb.release` labels, whether it runs), the environment's routes (by `@id`: the hostname),
//! and codeb's kernel rules (by their `project/env` comment: which slot the service address leads
//! to, and the port in the container). Pure: no I/O; the executor writes the record as given.

use std::net::SocketAddrV4;

use super::{Adoption, KernelObservation};
use crate::model::observed::{ObservedContainer, ServiceRule};
use crate::model::ownership::{LABEL_PORT, LABEL_RELEASE};
use crate::model::writes::{Route, ServiceTarget};
use crate::model::{DesiredEnv, EnvRecord, HostRef, Release, Slot, SlotRecord, SlotState};

/// The record of `d`'s environment as the host holds it, when it holds any of it: `containers`
/// and `routes` are the observed ones of its key, `records` the number of rrsets carrying its mark
/// (for the plan's line only). `None` when nothing of it is there, or no port of it can be read.
///
/// # Guarantees
/// - The base port, hostname and active slot are the host's, never newly chosen: adopting changes
///   nothing that serves traffic.
/// - A slot is recorded with the manifests' release when its container's label is that release's
///   hash, and otherwise with a release known only by its label (`Release::adopted`), so that
///   the container is recognised as running what the record says and is not redeployed.
/// - The slot that serves is the one the service address's rule (kernel mode) or the hostname
///   route (caddy-admin mode) leads to; a running slot that does not serve is `deployed` when it
///   runs the manifests' release, else `grace` (from `now_ms`: kept for a rollback); a stopped one
///   is `failed` (codeb stops only failed slots).
pub fn adoption(
    d: &DesiredEnv,
    host: &HostRef,
    kernel: &KernelObservation,
    containers: &[&ObservedContainer],
    routes: &[&Route],
    records: usize,
    now_ms: u64,
) -> Option<Adoption> {
    let key = &d.key;
    let label = key.to_string();
    // codeb's rules of this key: `project/env` on a service address, `project/env/slot` on a
    // published slot port.
    let mut rules: Vec<(u16, Option<Slot>, &ServiceTarget)> = Vec::new();
    if let KernelObservation::Managed {
        services, publish, ..
    } = kernel
    {
        let published = publish.iter().flat_map(|p| p.services.services.iter());
        for (port, service) in services.services.iter().chain(published) {
            for rule in &service.rules {
                let ServiceRule::Dnat(t) = rule else { continue };
                let Some(rest) = t.label.strip_prefix(label.as_str()) else {
                    continue;
                };
                match rest.strip_prefix('/').map(Slot::parse) {
                    None if rest.is_empty() => rules.push((*port, None, t)),
                    Some(Some(slot)) => rules.push((*port, Some(slot), t)),
                    _ => {}
                }
            }
        }
    }
    if containers.is_empty() && routes.is_empty() && rules.is_empty() {
        return None;
    }
    let slot_of = |c: &ObservedContainer| {
        Slot::ALL
            .into_iter()
            .find(|s| c.name == key.container_name(*s))
    };
    // The base port: blue's slot port. Labels first, then the rules.
    let from_containers = containers.iter().find_map(|c| {
        let port: u16 = c.labels.get(LABEL_PORT)?.parse().ok()?;
        match slot_of(c)? {
            Slot::Blue => Some(port),
            Slot::Green => port.checked_sub(1),
        }
    });
    let from_rules = rules.iter().find_map(|(port, slot, _)| match slot {
        Some(Slot::Green) => port.checked_sub(1),
        _ => Some(*port),
    });
    let base = from_containers.or(from_rules).filter(|b| *b > 0)?;

    let route_id = key.route_id();
    let hostname = routes
        .iter()
        .find(|r| r.id == route_id)
        .and_then(|r| r.hosts.first().cloned())
        .or_else(|| {
            routes.iter().find_map(|r| {
                let h = r.hosts.first()?;
                Slot::ALL.into_iter().find_map(|s| {
                    (r.id == key.preview_route_id(s))
                        .then(|| h.strip_prefix(&format!("{s}.")).map(str::to_string))
                        .flatten()
                })
            })
        })
        .unwrap_or_else(|| d.hostname.clone());

    let by_slot = |slot: Slot| {
        containers
            .iter()
            .copied()
            .find(|c| slot_of(c) == Some(slot))
    };
    // The slot serving: the one the service address leads to, else the hostname route's upstream
    // (caddy-admin mode dials the active slot's published port).
    let serving_rule = rules.iter().find(|(p, s, _)| *p == base && s.is_none());
    let active = match serving_rule {
        Some((_, _, t)) => Slot::ALL
            .into_iter()
            .find(|s| by_slot(*s).is_some_and(|c| c.running && c.ip == Some(*t.to.ip()))),
        None => routes.iter().find(|r| r.id == route_id).and_then(|r| {
            let (addr, port) = r.upstream.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            (addr == host.publish_address)
                .then(|| Slot::ALL.into_iter().find(|s| s.port(base) == port))
                .flatten()
        }),
    };

    let mut rec = EnvRecord::new(key.clone(), d.host.clone(), hostname, base);
    rec.grace_period_ms = u64::try_from(d.grace_period.as_millis()).unwrap_or(u64::MAX);
    for slot in Slot::ALL {
        let Some(c) = by_slot(slot) else { continue };
        let Some(hash) = c.labels.get(LABEL_RELEASE) else {
            continue; // not a container codeb made: the plan removes it as unaccounted for
        };
        let release = if hash == d.release.hash() {
            d.release.clone()
        } else {
            // The port in the container: where a rule of this slot leads, else the manifests'.
            let port = rules
                .iter()
                .find(|(_, s, t)| *s == Some(slot) || c.ip == Some(*t.to.ip()))
                .map_or(d.release.port, |(_, _, t)| SocketAddrV4::port(&t.to));
            Release::adopted(c.image.clone(), hash.clone(), port)
        };
        let state = if active == Some(slot) {
            SlotState::Active
        } else if !c.running {
            SlotState::Failed
        } else if release.adopted.is_none() {
            SlotState::Deployed
        } else {
            SlotState::Grace
        };
        *rec.slot_mut(slot) = SlotRecord {
            state,
            release: Some(release),
            since_ms: now_ms,
            health_path: d.health_path.clone(),
            health_timeout_ms: u64::try_from(d.health_timeout.as_millis()).unwrap_or(u64::MAX),
            ..SlotRecord::default()
        };
    }
    rec.active = active.filter(|s| rec.slot(*s).release.is_some());
    Some(Adoption {
        record: rec,
        routes: routes.len(),
        rules: rules.len(),
        records,
    })
}
