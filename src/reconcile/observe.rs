//! Observation: read every host's codeb containers, Caddy routes and NAT rules, all hosts at once.

use futures_util::future::join_all;

use super::{Backends, HostBackends};
use crate::backend::netfilter;
use crate::backend::{Kernel, Proxy, Runtime};
use crate::plan::{HostObservation, KernelObservation, Observed, NETWORK, SERVER_NAME};

/// Per host: one list call to Podman, one inspect of codeb's network, one read of Caddy and one
/// `iptables-save`, whatever the number of projects.
pub async fn observe<R: Runtime, P: Proxy, K: Kernel>(backends: &Backends<R, P, K>) -> Observed {
    let reads = backends
        .hosts
        .iter()
        .map(|(name, b)| async move { (name.clone(), observe_host(b).await) });
    Observed {
        hosts: join_all(reads).await.into_iter().collect(),
    }
}

async fn observe_host<R: Runtime, P: Proxy, K: Kernel>(
    b: &HostBackends<R, P, K>,
) -> HostObservation {
    let (containers, proxy, gateway) = tokio::join!(
        b.runtime.list_owned(),
        b.proxy.observe(SERVER_NAME),
        b.runtime.network_gateway(NETWORK)
    );
    let unreachable = |error| HostObservation::Unreachable { error };
    let (containers, proxy, gateway) = match (containers, proxy, gateway) {
        (Ok(c), Ok(p), Ok(g)) => (c, p, g),
        (Err(e), _, _) | (_, _, Err(e)) => return unreachable(format!("Podman: {e}")),
        (_, Err(e), _) => return unreachable(format!("Caddy: {e}")),
    };
    let kernel = match gateway {
        None => KernelObservation::Unavailable {
            reason: format!("the network {NETWORK} does not exist yet"),
        },
        Some(gateway) => match b.kernel.observe(gateway).await {
            Ok(services) => KernelObservation::Managed { gateway, services },
            Err(netfilter::Error::Unsupported { reason }) => {
                KernelObservation::Unavailable { reason }
            }
            // A kernel that cannot be read now is not a reason to fall back to Caddy: that
            // would rewrite every hostname route, and back again on the next observation.
            Err(e) => return unreachable(format!("kernel NAT rules: {e}")),
        },
    };
    HostObservation::Reachable {
        containers,
        proxy,
        kernel,
    }
}
