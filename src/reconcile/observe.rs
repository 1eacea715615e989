//! Observation: read every host's codeb containers and Caddy routes, and every managed zone's
//! rrsets, all at once.

use futures_util::future::join_all;

use super::Backends;
use crate::backend::{Dns, Proxy, Runtime};
use crate::plan::{HostObservation, Observed, ZoneObservation, SERVER_NAME};

/// One list call to Podman and one read of Caddy per host, and one read per zone, whatever the
/// number of projects.
pub async fn observe<R: Runtime, P: Proxy, D: Dns>(backends: &Backends<R, P, D>) -> Observed {
    let reads = backends.hosts.iter().map(|(name, b)| async move {
        let (containers, proxy) =
            tokio::join!(b.runtime.list_owned(), b.proxy.observe(SERVER_NAME));
        let obs = match (containers, proxy) {
            (Ok(containers), Ok(proxy)) => HostObservation::Reachable { containers, proxy },
            (Err(e), _) => HostObservation::Unreachable {
                error: format!("Podman: {e}"),
            },
            (_, Err(e)) => HostObservation::Unreachable {
                error: format!("Caddy: {e}"),
            },
        };
        (name.clone(), obs)
    });
    let zone_reads = backends.zones.iter().map(|(name, dns)| async move {
        let obs = match dns.zone(name).await {
            Ok(Some(zone)) => ZoneObservation::Present(zone),
            Ok(None) => ZoneObservation::Missing,
            Err(e) => ZoneObservation::Unreachable { error: chain(&e) },
        };
        (name.clone(), obs)
    });
    let (hosts, zones) = tokio::join!(join_all(reads), join_all(zone_reads));
    Observed {
        hosts: hosts.into_iter().collect(),
        zones: zones.into_iter().collect(),
    }
}

/// An error and its causes on one line ("connection refused" is in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        cur = c.source();
    }
    s
}
