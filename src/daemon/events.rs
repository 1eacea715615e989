//! Podman events as triggers: a codeb container that dies or is removed schedules a reconcile of
//! its environment, unless codeb itself stopped or removed it (no storms from its own actions); a
//! container of a watched environment that starts without codeb starting it (Podman's restart
//! policy after a crash, a `podman restart` or `podman start` by hand) schedules one at once,
//! since it may run on a new address that codeb's kernel rules must follow (docs/kernel-switch.md).
//!
//! One stream per host, reconnected with backoff when it ends (Podman restarted, or down; for a
//! remote host also its session ended: ssh's keep-alives end one over a silent partition within
//! about 4 s, so a partition does not hang the follower). Events sent while no stream was open
//! are lost, so every (re)connect also schedules a sweep of the host: level-triggered, it finds
//! whatever changed meanwhile. A remote host's events come through its agent (docs/multi-host.md):
//! the Podman adapter reads them from the local relay of the host's kept session, as from a
//! local socket.

use std::collections::BTreeMap;
use std::path::PathBuf;
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
use crate::reconcile::controller::{Expected, Handle, Work};
use crate::reconcile::{backoff, connect};

/// How long after a `remove` event its environment runs: enough to make one reconcile of a burst.
const REMOVE_DELAY: Duration = Duration::from_millis(100);

/// How long after a `start` event its environment runs: at once. The container runs when Podman
/// sends `start`, with its address, and `start` ends the burst: a restart-policy restart sends
/// `die`, `restart`, `init`, `start` within 60-130 ms (measured), so this trigger (earliest
/// deadline wins) overtakes the `die`'s [`DIE_DELAY`]. Every millisecond counts here: until the
/// rules follow a new address, requests fail, and Podman already sends events ~250 ms late. Not
/// `restart`: `podman restart` sends it before it stops the container, and a reconcile then would
/// find it stopping and start it itself.
const START_DELAY: Duration = Duration::ZERO;

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
    state_dir: PathBuf,
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
                let task = tokio::spawn(pump(
                    host.clone(),
                    state_dir.clone(),
                    handle.clone(),
                    watched.clone(),
                    shutdown.clone(),
                ));
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

/// The environment an event is about and when to reconcile it, unless the event is not about a
/// codeb container, codeb caused it, or (a `start`) its environment is not one the daemon keeps
/// on this host: a start changes nothing that such an environment's reconcile would do.
fn trigger_of(
    host: &str,
    event: &ContainerEvent,
    expected: &Expected,
    desired: &Desired,
) -> Option<(EnvKey, Duration)> {
    if event.volume || event.action == "create" {
        // Only the host's event epoch moves (a warm observation's owner mark or containers).
        return None;
    }
    let key = EnvKey::new(
        event.labels.get(LABEL_PROJECT)?,
        event.labels.get(LABEL_ENVIRONMENT)?,
    );
    let (ours, delay) = match event.action.as_str() {
        "start" => {
            if desired.envs.get(&key).is_none_or(|d| d.host != host) {
                return None;
            }
            (
                expected.started_by_codeb(host, &event.id, &event.name),
                START_DELAY,
            )
        }
        "die" => (
            expected.caused_by_codeb(host, &event.id, &event.name),
            DIE_DELAY,
        ),
        _ => (
            expected.caused_by_codeb(host, &event.id, &event.name),
            REMOVE_DELAY,
        ),
    };
    if ours {
        debug!(container = %event.name, action = %event.action, "event of codeb's own action");
        return None;
    }
    Some((key, delay))
}

async fn pump(
    host: HostRef,
    state_dir: PathBuf,
    handle: Handle,
    watched: watch::Receiver<Arc<Desired>>,
    shutdown: CancellationToken,
) {
    // A remote host's `podman` is a socket on that host: its relay here reaches it.
    let endpoint = match connect::podman_endpoint(&host, &state_dir) {
        Ok(e) => e,
        Err(e) => {
            warn!(host = %host.name, error = %e, "no container events from this host; resyncs still repair it");
            return;
        }
    };
    let podman = match Podman::connect(&endpoint) {
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
                let _open = StreamOpen::new(&handle, &host.name);
                handle.trigger(Work::Host(host.name.clone()), Duration::ZERO);
                let mut events = std::pin::pin!(events);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        item = events.next() => match item {
                            Some(Ok(event)) => {
                                handle.host_events().event(&host.name);
                                let desired = watched.borrow().clone();
                                if let Some((key, delay)) = trigger_of(&host.name, &event, handle.expected(), &desired) {
                                    info!(host = %host.name, container = %event.name, action = %event.action, key = %key, "container event");
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

/// Marks a host's event stream open in the controller's [`HostEvents`] while it lives: closed when
/// the stream ends, and when the pump is dropped (aborted when the host leaves the manifests).
struct StreamOpen {
    handle: Handle,
    host: String,
}

impl StreamOpen {
    fn new(handle: &Handle, host: &str) -> Self {
        handle.host_events().opened(host);
        StreamOpen {
            handle: handle.clone(),
            host: host.to_string(),
        }
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.handle.host_events().closed(&self.host);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::tests::{desired, env};

    /// An event of `myapp`'s production blue container (id `c1`) on host `app`.
    fn event(action: &str) -> ContainerEvent {
        ContainerEvent {
            id: "c1".into(),
            name: "myapp-production-blue".into(),
            action: action.into(),
            labels: BTreeMap::from([
                (LABEL_PROJECT.to_string(), "myapp".to_string()),
                (LABEL_ENVIRONMENT.to_string(), "production".to_string()),
            ]),
            volume: false,
        }
    }

    fn key() -> EnvKey {
        EnvKey::new("myapp", "production")
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_codeb_did_not_make_triggers_its_environment_at_once() {
        let d = desired([env("myapp")]);
        let e = Expected::default();
        assert_eq!(
            trigger_of("app", &event("start"), &e, &d),
            Some((key(), START_DELAY))
        );
        // Sooner than the `die` that came before it, so the start's reconcile runs first.
        assert!(START_DELAY < DIE_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn codebs_own_start_is_ignored_once_and_the_restart_after_a_crash_is_not() {
        let d = desired([env("myapp")]);
        let e = Expected::default();
        // A deploy names the container it creates.
        e.expect_start("app", "myapp-production-blue");
        assert_eq!(trigger_of("app", &event("start"), &e, &d), None);
        // The app crashes; Podman's restart policy starts it again.
        assert_eq!(
            trigger_of("app", &event("die"), &e, &d),
            Some((key(), DIE_DELAY))
        );
        assert_eq!(
            trigger_of("app", &event("start"), &e, &d),
            Some((key(), START_DELAY))
        );
        // A start codeb makes of an existing container names its id.
        e.expect_start("app", "c1");
        assert_eq!(trigger_of("app", &event("start"), &e, &d), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exit_codeb_expects_does_not_hide_a_start_nor_a_start_an_exit() {
        let d = desired([env("myapp")]);
        let e = Expected::default();
        e.expect("app", "c1");
        assert_eq!(trigger_of("app", &event("die"), &e, &d), None);
        assert_eq!(trigger_of("app", &event("remove"), &e, &d), None);
        assert!(trigger_of("app", &event("start"), &e, &d).is_some());
        let e = Expected::default();
        e.expect_start("app", "c1");
        assert!(trigger_of("app", &event("die"), &e, &d).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_volume_event_or_a_creation_triggers_nothing() {
        let d = desired([env("myapp")]);
        let e = Expected::default();
        let mut volume = event("remove");
        volume.volume = true;
        assert_eq!(trigger_of("app", &volume, &e, &d), None);
        assert_eq!(trigger_of("app", &event("create"), &e, &d), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expected_start_lapses() {
        let d = desired([env("myapp")]);
        let e = Expected::default();
        e.expect_start("app", "c1");
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(trigger_of("app", &event("start"), &e, &d).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_of_an_environment_not_kept_on_this_host_triggers_nothing() {
        let e = Expected::default();
        // Not declared (another codeb's, or applied by hand beside the daemon).
        let none = desired([env("other")]);
        assert_eq!(trigger_of("app", &event("start"), &e, &none), None);
        // Declared on another host.
        let d = desired([env("myapp")]);
        assert_eq!(trigger_of("elsewhere", &event("start"), &e, &d), None);
        // Its exits still trigger (a prune may need to remove it).
        assert!(trigger_of("app", &event("die"), &e, &none).is_some());
        // Not codeb's container at all.
        let mut foreign = event("start");
        foreign.labels.clear();
        assert_eq!(trigger_of("app", &foreign, &e, &d), None);
    }
}
