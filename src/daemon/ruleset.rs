//! nf_tables' ruleset notifications as a trigger: when codeb's loopback guard (or its masquerade,
//! its tenant isolation in `bridge codeb`, or a whole table) is changed by someone else, a `nft
//! flush ruleset` or Debian's `nftables.service` reloading its file, the daemon hears it within a
//! second instead of at the next resync. It first turns `route_localnet` off on the bridges whose
//! guard is gone (fail closed: with it on and no guard, a container could reach the host's
//! loopback services), then sweeps every host, which puts the guard back and `route_localnet` on
//! after it, and the isolation back (97 ms after its table was deleted, measured).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backend::netfilter::{self, RulesetMonitor};
use crate::model::Desired;
use crate::reconcile::controller::{Handle, Work};

/// Listens until `shutdown`; returns at once where the kernel refuses the subscription (no
/// `CAP_NET_ADMIN`: then no kernel rule of codeb's can exist either).
pub async fn run(
    handle: Handle,
    watched: watch::Receiver<Arc<Desired>>,
    shutdown: CancellationToken,
) {
    let mut monitor = match RulesetMonitor::open() {
        Ok(m) => m,
        Err(e) => {
            debug!(error = %e, "no nf_tables notifications: codeb's guard is checked at each resync only");
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = shutdown.clone();
    let listener = tokio::task::spawn_blocking(move || {
        while !stop.is_cancelled() {
            match monitor.wait() {
                Ok(Some(true)) => {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "nf_tables notifications stopped: codeb's guard is checked at each resync only");
                    break;
                }
            }
        }
    });
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            got = rx.recv() => {
                if got.is_none() {
                    break;
                }
                // A flush sends one notification per rule and chain: one check for the burst.
                while rx.try_recv().is_ok() {}
                match tokio::task::spawn_blocking(netfilter::fail_closed).await {
                    Ok(Ok(reset)) if !reset.is_empty() => warn!(
                        bridges = ?reset,
                        "codeb's loopback guard was removed from the kernel: route_localnet is off until it is back"
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot check codeb's loopback guard"),
                    Err(e) => warn!(error = %e, "the check of codeb's loopback guard panicked"),
                }
                let hosts: Vec<String> = watched.borrow().hosts.keys().cloned().collect();
                for host in hosts {
                    handle.trigger(Work::Host(host), Duration::ZERO);
                }
            }
        }
    }
    let _ = listener.await;
}
