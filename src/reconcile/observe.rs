//! Observation: read every host's codeb containers and Caddy routes, all hosts at once.

use futures_util::future::join_all;

use super::Backends;
use crate::backend::{Proxy, Runtime};
use crate::plan::{HostObservation, Observed, SERVER_NAME};

/// One list call to Podman and one read of Caddy per host, whatever the number of projects.
pub async fn observe<R: Runtime, P: Proxy>(backends: &Backends<R, P>) -> Observed {
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
    Observed {
        hosts: join_all(reads).await.into_iter().collect(),
    }
}
