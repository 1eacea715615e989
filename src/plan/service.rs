//! Planning the kernel's traffic switch: each environment's service address leads to its active
//! slot's container, and nowhere once the environment is gone.
//!
//! Pure: what the NAT rules should hold is computed from the (projected) record and the observed
//! containers, compared in place with the observed rules, and a write is planned only when they
//! differ, so a converged host gets no kernel write and the converged path allocates nothing.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{KernelObservation, Published};
use crate::model::observed::{ObservedContainer, ObservedServices, ServiceRule};
use crate::model::ownership::LABEL_RELEASE;
use crate::model::writes::{HookWrite, LoopbackWrite, ServiceTarget, ServiceWrite};
use crate::model::{EnvKey, EnvRecord, Slot};

/// The environment's service address on a host whose rules codeb manages: the gateway of codeb's
/// network and the environment's base port. Stable for the environment's life: Caddy's hostname
/// route dials it, and only the NAT rule behind it changes on promote and rollback. `None` on a
/// host that switches through Caddy.
pub fn service_address(kernel: &KernelObservation, rec: &EnvRecord) -> Option<SocketAddrV4> {
    match kernel {
        KernelObservation::Managed { gateway, .. } => {
            Some(SocketAddrV4::new(*gateway, rec.base_port))
        }
        KernelObservation::Unavailable { .. } | KernelObservation::NoNetwork => None,
    }
}

/// The hook a managed host lacks: its dispatch chain, or exactly one jump to it.
pub fn hook_diff(kernel: &KernelObservation) -> Option<HookWrite> {
    let KernelObservation::Managed {
        gateway, services, ..
    } = kernel
    else {
        return None;
    };
    hook_of(services, *gateway)
}

/// The hook `address`'s rules lack: their dispatch chain, or exactly one jump to it.
fn hook_of(rules: &ObservedServices, address: Ipv4Addr) -> Option<HookWrite> {
    (!rules.chain || rules.hooks != 1).then_some(HookWrite {
        gateway: address,
        chain: rules.chain,
        hooks: rules.hooks,
    })
}

/// The write that makes `address:port` lead to `want`'s target, or nowhere with `None`, when the
/// observed `rules` do not already: exactly one dispatch rule and one DNAT rule to the target,
/// whose label `label_is` accepts. `label` names a target written anew.
fn address_diff(
    rules: &ObservedServices,
    address: Ipv4Addr,
    port: u16,
    want: Option<SocketAddrV4>,
    label_is: impl Fn(&str) -> bool,
    label: impl FnOnce() -> String,
) -> Option<ServiceWrite> {
    let observed = rules.services.get(&port);
    let dispatch = observed.map_or(0, |o| o.dispatch);
    let write = |target| ServiceWrite {
        gateway: address,
        port,
        target,
        dispatch,
    };
    match want {
        None => observed
            .is_some_and(|o| o.chain || o.dispatch > 0)
            .then(|| write(None)),
        Some(to) => {
            let converged = observed.is_some_and(|o| {
                o.dispatch == 1
                    && matches!(o.rules.as_slice(), [ServiceRule::Dnat(t)] if t.to == to && label_is(&t.label))
            });
            (!converged).then(|| write(Some(ServiceTarget { to, label: label() })))
        }
    }
}

/// The write that makes the service address of `rec` lead to its active slot's container, when
/// the observed rules lead anywhere else (or nowhere, or to two targets, or were changed by hand).
///
/// `target_of(slot)` is the slot's container address and port, `None` while it is unknown (the
/// container is created, started or replaced by this plan): the write then waits for the next
/// round, and the rule keeps its previous target meanwhile. Without an active slot the service
/// address is removed.
pub fn service_diff(
    rec: &EnvRecord,
    kernel: &KernelObservation,
    target_of: impl Fn(Slot) -> Option<SocketAddrV4>,
) -> Option<ServiceWrite> {
    let KernelObservation::Managed {
        gateway, services, ..
    } = kernel
    else {
        return None;
    };
    let Some(active) = rec.active else {
        return removal(rec, kernel);
    };
    let to = target_of(active)?;
    address_diff(
        services,
        *gateway,
        rec.base_port,
        Some(to),
        |l| is_label(l, &rec.key),
        || rec.key.to_string(),
    )
}

/// The write that removes the service address of `rec`, if anything of it is left.
pub fn removal(rec: &EnvRecord, kernel: &KernelObservation) -> Option<ServiceWrite> {
    let KernelObservation::Managed {
        gateway, services, ..
    } = kernel
    else {
        return None;
    };
    address_diff(
        services,
        *gateway,
        rec.base_port,
        None,
        |_| true,
        String::new,
    )
}

/// Where a slot's traffic goes: its container's address and the release's port, when the
/// container runs the slot's recorded release and reports an address.
pub fn slot_target(
    rec: &EnvRecord,
    slot: Slot,
    container: Option<&ObservedContainer>,
) -> Option<SocketAddrV4> {
    let release = rec.slot(slot).release.as_ref()?;
    let c = container?;
    let runs = c.labels.get(LABEL_RELEASE).map(String::as_str) == Some(release.hash());
    (c.running && runs)
        .then_some(c.ip)
        .flatten()
        .map(|ip| SocketAddrV4::new(ip, release.port))
}

/// The hook the loopback address of a host's kernel-published slot ports lacks.
pub fn publish_hook_diff(p: &Published) -> Option<HookWrite> {
    hook_of(&p.services, p.address)
}

/// codeb's bridge on `host` when its MAC is not pinned and no loopback write will pin it (that
/// write pins it, where slot ports are published on loopback and the bridge exists).
pub fn unpinned_bridge<'a>(
    kernel: &'a KernelObservation,
    host: &crate::model::HostRef,
) -> Option<&'a super::ObservedBridge> {
    let KernelObservation::Managed {
        bridge: Some(bridge),
        ..
    } = kernel
    else {
        return None;
    };
    let by_loopback = bridge.present && kernel.published(host).is_some();
    (!bridge.mac_pinned && !by_loopback).then_some(&**bridge)
}

/// The loopback plumbing a host's kernel-published slot ports lack.
pub fn loopback_diff(p: &Published) -> Option<LoopbackWrite> {
    let l = &p.loopback;
    let converged = l.masquerade == 1 && l.guard == 1 && l.route_localnet && l.mac_pinned;
    // A bridge not created yet takes no setting: the first container brings it up (its deploy
    // probes the container itself), and the plumbing follows in the next round.
    (!converged && !l.bridge_missing).then(|| LoopbackWrite {
        bridge: p.bridge.clone(),
        observed: l.clone(),
    })
}

/// What a slot's published port should lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotPort {
    /// The slot's container.
    To(SocketAddrV4),
    /// Nothing: the slot has no container that should be reachable.
    Nowhere,
    /// Not known yet (its container is created, started or replaced by this plan): no write, the
    /// rule keeps its target until the next round.
    Pending,
}

/// The write that makes `slot`'s published port (`address:slot_port`) lead where `want` says,
/// when the observed rules do not already.
pub fn publication_diff(
    rec: &EnvRecord,
    p: &Published,
    slot: Slot,
    want: SlotPort,
) -> Option<ServiceWrite> {
    let want = match want {
        SlotPort::Pending => return None,
        SlotPort::Nowhere => None,
        SlotPort::To(to) => Some(to),
    };
    address_diff(
        &p.services,
        p.address,
        slot.port(rec.base_port),
        want,
        |l| is_slot_label(l, &rec.key, slot),
        || format!("{}/{slot}", rec.key),
    )
}

/// The writes that remove both slots' published ports of `rec`, if anything of them is left.
pub fn publication_removals(rec: &EnvRecord, p: &Published) -> Vec<ServiceWrite> {
    Slot::ALL
        .into_iter()
        .filter_map(|slot| publication_diff(rec, p, slot, SlotPort::Nowhere))
        .collect()
}

/// `project/env/slot`, compared without allocating.
fn is_slot_label(label: &str, key: &EnvKey, slot: Slot) -> bool {
    label
        .strip_prefix(key.project.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_prefix(key.env.as_str()))
        .and_then(|r| r.strip_prefix('/'))
        == Some(slot.as_str())
}

/// `project/env`, compared without allocating.
fn is_label(label: &str, key: &EnvKey) -> bool {
    label
        .strip_prefix(key.project.as_str())
        .and_then(|r| r.strip_prefix('/'))
        == Some(key.env.as_str())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::observed::{ObservedService, ObservedServices};
    use crate::model::{Release, SlotState};

    const GW: Ipv4Addr = Ipv4Addr::new(10, 89, 144, 1);

    fn blue() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 89, 144, 2), 8080)
    }

    fn green() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 89, 144, 3), 8080)
    }

    fn record(active: Option<Slot>) -> EnvRecord {
        let mut rec = EnvRecord::new(
            EnvKey::new("shop", "production"),
            "app".into(),
            "shop.test".into(),
            4051,
        );
        for slot in Slot::ALL {
            let s = rec.slot_mut(slot);
            s.state = SlotState::Deployed;
            s.release = Some(Release::new("app:v1", None, BTreeMap::new(), 8080));
        }
        rec.active = active;
        rec
    }

    fn managed(rules: Vec<ServiceRule>, dispatch: usize) -> KernelObservation {
        let mut services = ObservedServices {
            chain: true,
            hooks: 1,
            ..Default::default()
        };
        services.services.insert(
            4051,
            ObservedService {
                dispatch,
                chain: true,
                rules,
            },
        );
        KernelObservation::Managed {
            gateway: GW,
            services,
            publish: None,
            isolated: true,
            bridge: None,
        }
    }

    fn dnat(to: SocketAddrV4, label: &str) -> ServiceRule {
        ServiceRule::Dnat(ServiceTarget {
            to,
            label: label.into(),
        })
    }

    fn targets(slot: Slot) -> Option<SocketAddrV4> {
        Some(match slot {
            Slot::Blue => blue(),
            Slot::Green => green(),
        })
    }

    #[test]
    fn a_converged_service_address_gets_no_write() {
        let k = managed(vec![dnat(blue(), "shop/production")], 1);
        assert_eq!(service_diff(&record(Some(Slot::Blue)), &k, targets), None);
        assert_eq!(hook_diff(&k), None);
    }

    #[test]
    fn a_switch_writes_the_new_target_and_never_two() {
        let k = managed(vec![dnat(blue(), "shop/production")], 1);
        let w = service_diff(&record(Some(Slot::Green)), &k, targets).unwrap();
        assert_eq!(w.target.unwrap().to, green());
        assert_eq!(w.dispatch, 1);
        // Two rules (changed by hand) are replaced by one, as is a foreign-looking rule.
        let two = managed(
            vec![
                dnat(green(), "shop/production"),
                dnat(blue(), "shop/production"),
            ],
            1,
        );
        assert!(service_diff(&record(Some(Slot::Green)), &two, targets).is_some());
        let other = managed(vec![ServiceRule::Other("-j ACCEPT".into())], 1);
        assert!(service_diff(&record(Some(Slot::Blue)), &other, targets).is_some());
    }

    #[test]
    fn an_unknown_target_waits_and_a_missing_address_is_created_with_its_dispatch_rule() {
        let k = managed(vec![dnat(blue(), "shop/production")], 1);
        assert_eq!(service_diff(&record(Some(Slot::Green)), &k, |_| None), None);
        let empty = KernelObservation::Managed {
            gateway: GW,
            services: ObservedServices::default(),
            publish: None,
            isolated: true,
            bridge: None,
        };
        let w = service_diff(&record(Some(Slot::Blue)), &empty, targets).unwrap();
        assert_eq!(w.dispatch, 0);
        assert_eq!(
            hook_diff(&empty).map(|h| (h.chain, h.hooks)),
            Some((false, 0))
        );
    }

    #[test]
    fn a_host_without_kernel_management_gets_no_service_address() {
        let k = KernelObservation::Unavailable {
            reason: "not root".into(),
            leftover: None,
        };
        let rec = record(Some(Slot::Blue));
        assert_eq!(service_address(&k, &rec), None);
        assert_eq!(service_diff(&rec, &k, targets), None);
        assert_eq!(removal(&rec, &k), None);
        assert_eq!(hook_diff(&k), None);
    }

    #[test]
    fn removal_takes_the_dispatch_rules_and_the_chain() {
        let k = managed(vec![dnat(blue(), "shop/production")], 2);
        let w = removal(&record(Some(Slot::Blue)), &k).unwrap();
        assert_eq!((&w.target, w.dispatch), (&None, 2));
        assert_eq!(service_diff(&record(None), &k, targets), Some(w));
    }

    #[test]
    fn labels_compare_without_allocating() {
        let key = EnvKey::new("a-b", "c");
        assert!(is_label("a-b/c", &key));
        assert!(!is_label("a/b-c", &key));
        assert!(!is_label("a-b/c/d", &key));
    }
}
