//! Podman events as triggers: a codeb container that dies or is removed schedules a reconcile of
//! its environment, unless codeb itself stopped or removed it (no storms from its own actions).
//!
//! One stream per host, reconnected with backoff when it ends (Podman restarted, or down). Events
//! sent while no stream was open are lost, so every (re)connect also schedules a sweep of the host:
//! level-triggered, it finds whatever changed meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::podman::{ContainerEvent, Podman};
use crate::backend::{Runtime, LABEL_ENVIRONMENT, LABEL_PROJECT};
use crate::model::{Desired, EnvKey, HostRef};
use crate::reconcile::backoff;
use crate::reconcile::controller::{Handle, Work};

/// How long after a `remove` event its environment runs: enough to make one reconcile of a burst.
const REMOVE_DELAY: Duration = Duration::from_millis(100);

/// How long after a `die` event its environment runs. `podman rm -f` sends `die`, then `remove`
/// 0.3-0.6 s later (measured); a reconcile in between finds the container stopped and starts it
/// while Podman removes it, a race that once left a `conmon` holding the published port after the
/// container was gone. Waiting lets the `remove` (earliest deadline wins) run the reconcile on a
/// settled host; a container that only stopped is started 0.75 s later, within the second.
const DIE_DELAY: Duration = Duration::from_millis(750);

/// A stream that stayed open this long was healthy: its next reconnect starts the backoff afresh.
const HEALTHY_STREAM: Duration = Duration::from_secs(60);

/// Keeps one event pump per host of the manifests in force.
pub async fn run(
    handle: Handle,
    mut watched: watch::Receiver<Arc<Desired>>,
    shutdown: CancellationToken,
) {
    let mut pumps: BTreeMap<String, (HostRef, JoinHandle<()>)> = BTreeMap::new();
    loop {
        let hosts = watched.borrow_and_update().hosts.clone();
        pumps.retain(|name, (host, task)| {
            let keep = hosts.get(name) == Some(host);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, host) in hosts {
            pumps.entry(name).or_insert_with(|| {
                let task = tokio::spawn(pump(host.clone(), handle.clone(), shutdown.clone()));
                (host, task)
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = watched.changed() => if changed.is_err() { break },
        }
    }
    for (_, (_, task)) in pumps {
        task.abort();
    }
}

/// The environment an event is about, unless it is not codeb's or codeb caused it.
fn trigger_of(host: &str, event: &ContainerEvent, handle: &Handle) -> Option<EnvKey> {
    let key = EnvKey::new(
        event.labels.get(LABEL_PROJECT)?,
        event.labels.get(LABEL_ENVIRONMENT)?,
    );
    if handle
        .expected()
        .caused_by_codeb(host, &event.id, &event.name)
    {
        debug!(container = %event.name, action = %event.action, "event of codeb's own action");
        return None;
    }
    Some(key)
}

async fn pump(host: HostRef, handle: Handle, shutdown: CancellationToken) {
    let podman = match Podman::connect(&host.podman) {
        Ok(p) => p,
        Err(e) => {
            warn!(host = %host.name, error = %e, "no container events from this host; resyncs still repair it");
            return;
        }
    };
    let mut delays = backoff::builder().build();
    loop {
        // A ping tells when a Podman that was down is back; the stream itself would only fail.
        let connected = match podman.ping().await {
            Ok(()) => podman.container_events().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let opened = Instant::now();
        match connected {
            Err(error) => debug!(host = %host.name, %error, "no event stream"),
            Ok(events) => {
                info!(host = %host.name, "watching container events");
                handle.trigger(Work::Host(host.name.clone()), Duration::ZERO);
                let mut events = std::pin::pin!(events);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        item = events.next() => match item {
                            Some(Ok(event)) => {
                                if let Some(key) = trigger_of(&host.name, &event, &handle) {
                                    info!(host = %host.name, container = %event.name, action = %event.action, key = %key, "container event");
                                    let delay = if event.action == "die" { DIE_DELAY } else { REMOVE_DELAY };
                                    handle.trigger(Work::Env(key), delay);
                                }
                            }
                            Some(Err(e)) => {
                                warn!(host = %host.name, error = %e, "container event stream failed");
                                break;
                            }
                            None => {
                                info!(host = %host.name, "container event stream ended");
                                break;
                            }
                        }
                    }
                }
            }
        }
        if opened.elapsed() >= HEALTHY_STREAM {
            delays = backoff::builder().build();
        }
        let delay = delays.next().unwrap_or(backoff::MAX_DELAY);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
