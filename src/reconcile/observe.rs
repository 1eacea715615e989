//! Observation: read every host's codeb containers, Caddy routes and NAT rules, and every managed
//! zone's rrsets, all at once.

use futures_util::future::join_all;

use super::{Backends, HostBackends};
use crate::backend::{Dns, ErrorKind, Kernel, Proxy, Runtime};
use crate::plan::{
    HostObservation, KernelObservation, Observed, Published, ZoneObservation, NETWORK, SERVER_NAME,
};

/// Per host: one list call to Podman, one inspect of codeb's network, one read of Caddy and one
/// read of codeb's nf_tables table; per zone, one read; whatever the number of projects.
pub async fn observe<R: Runtime, P: Proxy, K: Kernel, D: Dns>(
    backends: &Backends<R, P, K, D>,
) -> Observed {
    let reads = backends.hosts.iter().map(|(name, b)| async move {
        (name.clone(), observe_host(b, b.runtime.list_owned()).await)
    });
    let zone_reads = backends
        .zones
        .iter()
        .map(|(name, dns)| async move { (name.clone(), observe_zone(name, dns.as_ref()).await) });
    let (hosts, zones) = tokio::join!(join_all(reads), join_all(zone_reads));
    Observed {
        hosts: hosts.into_iter().collect(),
        zones: zones.into_iter().collect(),
    }
}

async fn observe_zone<D: Dns>(zone: &str, dns: &D) -> ZoneObservation {
    match dns.zone(zone).await {
        Ok(Some(z)) => ZoneObservation::Present(z),
        Ok(None) => ZoneObservation::Missing,
        Err(e) => ZoneObservation::Unreachable {
            error: crate::backend::error_chain(&e),
            retryable: e.retryable(),
        },
    }
}

/// One host, for a command that acts on one environment only (`promote`, `rollback`): as
/// [`observe`], but Podman lists that environment's containers alone, so the observation does not
/// grow with the other projects on the host. Only that environment may be planned from it.
pub async fn observe_env<R: Runtime, P: Proxy, K: Kernel>(
    host: &str,
    b: &HostBackends<R, P, K>,
    key: &crate::model::EnvKey,
) -> Observed {
    observe_env_parts(host, b, key).await.0
}

/// What an observation of one host read from Podman and Caddy, the parts that a later observation
/// may reuse while nothing changed them (see `service::warm`); the kernel's rules are read anew.
#[derive(Debug, Clone)]
pub struct HostParts {
    pub containers: Vec<crate::model::observed::ObservedContainer>,
    pub proxy: crate::model::observed::ObservedProxy,
    pub network: Option<crate::model::observed::NetworkInfo>,
    pub owner: crate::model::observed::OwnerMark,
}

/// As [`observe_env`], with the parts read (`None` when the host was unreachable).
pub async fn observe_env_parts<R: Runtime, P: Proxy, K: Kernel>(
    host: &str,
    b: &HostBackends<R, P, K>,
    key: &crate::model::EnvKey,
) -> (Observed, Option<HostParts>) {
    let (observation, parts) = observe_host_parts(b, b.runtime.list_env(key)).await;
    (one_host(host, observation), parts)
}

/// As [`observe_env`], from `parts` an earlier observation read and the kernel's rules as they are
/// now: one read of codeb's nf_tables table, as a switch needs it ([`Kernel::read_for_switch`]:
/// only a switch plans from this).
pub async fn observe_env_warm<R: Runtime, P: Proxy, K: Kernel>(
    host: &str,
    b: &HostBackends<R, P, K>,
    parts: HostParts,
) -> Observed {
    let table = b.kernel.read_for_switch().await;
    one_host(host, assemble(b, parts, table))
}

fn one_host(host: &str, observation: HostObservation) -> Observed {
    Observed {
        hosts: [(host.to_string(), observation)].into(),
        zones: Default::default(),
    }
}

/// codeb's publication of slot ports on the host's loopback publish address, when there is one
/// and the bridge is known.
fn published<R, P, K: Kernel>(
    b: &HostBackends<R, P, K>,
    table: &K::Table,
    net: &crate::model::observed::NetworkInfo,
    loopback: Option<&crate::model::observed::ObservedLoopback>,
) -> Option<Published> {
    let address = b.publish.filter(|a| a.is_loopback())?;
    Some(Published {
        address,
        bridge: net.bridge.clone(),
        services: b.kernel.services(table, address).ok()?,
        loopback: loopback?.clone(),
    })
}

/// codeb's rules on the host's loopback publish address, on a host that switches through Caddy:
/// what a kernel-mode run left there.
fn leftover<R, P, K: Kernel>(
    b: &HostBackends<R, P, K>,
    table: &K::Table,
    net: Option<&crate::model::observed::NetworkInfo>,
) -> Option<Published> {
    let address = b.publish.filter(|a| a.is_loopback())?;
    Some(Published {
        address,
        bridge: net.map(|n| n.bridge.clone()).unwrap_or_default(),
        services: b.kernel.services(table, address).ok()?,
        loopback: Default::default(),
    })
}

async fn observe_host<R: Runtime, P: Proxy, K: Kernel>(
    b: &HostBackends<R, P, K>,
    list: impl std::future::Future<
        Output = crate::backend::Result<Vec<crate::model::observed::ObservedContainer>>,
    >,
) -> HostObservation {
    observe_host_parts(b, list).await.0
}

async fn observe_host_parts<R: Runtime, P: Proxy, K: Kernel>(
    b: &HostBackends<R, P, K>,
    list: impl std::future::Future<
        Output = crate::backend::Result<Vec<crate::model::observed::ObservedContainer>>,
    >,
) -> (HostObservation, Option<HostParts>) {
    // The NAT rules are read beside the container list, Caddy's config and the network's gateway,
    // and parsed for the gateway after: a switch's observation takes as long as the slowest read,
    // not the sum of two.
    let (containers, proxy, gateway, table, owner) = tokio::join!(
        list,
        b.proxy.observe(SERVER_NAME),
        b.runtime.network_gateway(NETWORK),
        b.kernel.read(),
        owner_mark(b),
    );
    let unreachable = |error| (HostObservation::Unreachable { error }, None);
    let owner = match owner {
        Ok(owner) => owner,
        Err(error) => return unreachable(error),
    };
    let parts = match (containers, proxy, gateway) {
        (Ok(containers), Ok(proxy), Ok(network)) => HostParts {
            containers,
            proxy,
            network,
            owner,
        },
        (Err(e), _, _) | (_, _, Err(e)) => return unreachable(format!("Podman: {e}")),
        (_, Err(e), _) => return unreachable(format!("Caddy: {e}")),
    };
    (assemble(b, parts.clone(), table), Some(parts))
}

/// The host's owner mark as this codeb sees it; `Err` (the host is unreachable for this codeb)
/// when another codeb's mark is on it, or Podman could not be asked.
async fn owner_mark<R: Runtime, P: Proxy, K: Kernel>(
    b: &HostBackends<R, P, K>,
) -> Result<crate::model::observed::OwnerMark, String> {
    use crate::model::observed::OwnerMark;
    let Some(mine) = &b.owner else {
        return Ok(OwnerMark::Unchecked);
    };
    match b.runtime.owner().await {
        Ok(None) => Ok(OwnerMark::Absent),
        Ok(Some(found)) if found.id == mine.id => Ok(OwnerMark::Mine),
        Ok(Some(found)) => Err(format!(
            "owned by another codeb, {found} (the labels of the Podman volume {}): this codeb \
             changes nothing there; `codeb host adopt HOST` takes the host over",
            crate::model::ownership::OWNER_VOLUME
        )),
        Err(e) => Err(format!("Podman: {e}")),
    }
}

/// A host's observation from what Podman and Caddy answered and codeb's nf_tables table.
fn assemble<R: Runtime, P: Proxy, K: Kernel>(
    b: &HostBackends<R, P, K>,
    parts: HostParts,
    table: crate::backend::Result<K::Table>,
) -> HostObservation {
    let HostParts {
        containers,
        proxy,
        network: gateway,
        owner,
    } = parts;
    let unreachable = |error| HostObservation::Unreachable { error };
    let kernel = match (b.kernel.fallback(), gateway, table) {
        // Caddy was asked for, on a host whose rules are this machine's: they are read all the
        // same, for what a kernel-mode run left on the publish address.
        (Some(reason), net, table) => Ok(KernelObservation::Unavailable {
            reason,
            leftover: table
                .ok()
                .and_then(|t| leftover(b, &t, net.as_ref()))
                .map(Box::new),
        }),
        (None, _, Err(e)) => Err(e),
        // The mode is the host's configuration's (a local rootful Podman, a local Caddy, the
        // rules readable: all known by now), not whether a container made the network yet.
        (None, None, Ok(_)) => Ok(KernelObservation::NoNetwork),
        (None, Some(net), Ok(table)) => b
            .kernel
            .local(&table, &net)
            .and_then(|()| b.kernel.services(&table, net.gateway))
            .map(|services| {
                // The bridge's settings, read once for the loopback plumbing and the MAC.
                let loopback =
                    (!net.bridge.is_empty()).then(|| b.kernel.loopback(&table, &net.bridge));
                KernelObservation::Managed {
                    gateway: net.gateway,
                    services,
                    publish: published(b, &table, &net, loopback.as_ref()).map(Box::new),
                    isolated: b.kernel.isolated(&table),
                    bridge: loopback.map(|l| {
                        Box::new(crate::plan::ObservedBridge {
                            name: net.bridge.clone(),
                            present: !l.bridge_missing,
                            mac_pinned: l.mac_pinned,
                        })
                    }),
                }
            }),
    };
    let kernel = match kernel {
        Ok(kernel) => kernel,
        Err(e) => match e.kind() {
            ErrorKind::Unsupported { reason } => KernelObservation::Unavailable {
                reason: reason.clone(),
                leftover: None,
            },
            // A kernel that cannot be read now is not a reason to fall back to Caddy: that would
            // rewrite every hostname route, and back again on the next observation.
            _ => return unreachable(format!("kernel NAT rules: {e}")),
        },
    };
    HostObservation::Reachable {
        containers,
        proxy,
        kernel,
        owner,
    }
}
