//! The manifests `codeb watch` keeps in force: read at start, again after each change under the
//! watched paths (notify, debounced) and at every resync (a change notify missed, a symlinked
//! checkout swapped under it, is found then).
//!
//! A set that does not load is reported once, with file:line:col, and changes nothing: the last
//! valid desired state stays in force, so a typo or a half-written file removes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::model::{desired::desired, Desired};
use crate::service::Daemon;
use crate::store::Store;

/// A save settles when no change came for this long. Editors write a file in two or three events
/// (write a temporary file, rename it over the old one, set attributes) within a few milliseconds;
/// a `git pull` of many files within ~100 ms.
const QUIET: Duration = Duration::from_millis(200);
/// A stream of changes that never pauses (a long checkout) is read at least this often.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// The rule that stops a prune from removing everything because the manifests went empty.
pub struct Guard {
    pub store: Arc<Store>,
    pub prune: bool,
    pub allow_empty: bool,
    /// The operator's configuration: manifests naming an endpoint or a key variable it does not
    /// allow are invalid, and the last valid ones stay in force.
    pub operator: Arc<crate::config::Config>,
}

impl Guard {
    fn check(&self, d: &Desired) -> Result<(), String> {
        self.operator.check_desired(d).map_err(|e| e.to_string())?;
        if !self.prune || self.allow_empty || !d.envs.is_empty() {
            return Ok(());
        }
        let recorded = self.store.load().map_err(|e| e.to_string())?.envs.len();
        if recorded == 0 {
            return Ok(());
        }
        Err(format!(
            "the manifests declare no environment, and --prune would remove all {recorded} recorded ones; add --allow-empty if that is meant"
        ))
    }
}

/// Loads and validates the manifests under `paths` (off the async threads: it reads files).
///
/// # Errors
/// The loader's errors (every one with file:line:col), or the guard's refusal.
pub async fn load(paths: &[PathBuf], guard: &Guard) -> Result<Desired, String> {
    let paths = paths.to_vec();
    let loaded = tokio::task::spawn_blocking(move || crate::spec::load_paths(&paths))
        .await
        .map_err(|e| format!("the loader failed: {e}"))?;
    let m = loaded.map_err(|e| e.to_string())?;
    crate::spec::check_protected(&m, guard.operator.protected_env()).map_err(|e| e.to_string())?;
    let mut d = desired(&m);
    guard.check(&d)?;
    guard.operator.place_access_logs(&mut d);
    Ok(d)
}

/// What to watch.
pub struct Watch {
    pub paths: Vec<PathBuf>,
    pub resync: Duration,
    pub guard: Guard,
}

/// Reloads on every settled change and at every resync; hands a changed valid set to the loop
/// (with the release overrides that hold laid over) and asks it for a resync on each tick.
pub async fn watch(
    w: Watch,
    daemon: Arc<Daemon>,
    current: watch::Sender<Arc<Desired>>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _watcher = match watcher(&w.paths, tx) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            warn!(error = %e, resync_s = w.resync.as_secs_f64(), "cannot watch the manifests for changes; they are read again at every resync only");
            None
        }
    };
    let mut resync = tokio::time::interval_at(Instant::now() + w.resync, w.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Option<String> = None;
    let mut watching = _watcher.is_some();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = settle(&mut rx, QUIET, MAX_WAIT), if watching => {
                if changed {
                    reload(&w, &daemon, &current, &mut reported).await;
                } else {
                    // The watcher is gone; resyncs still read the files.
                    watching = false;
                }
            }
            _ = resync.tick() => {
                reload(&w, &daemon, &current, &mut reported).await;
                daemon.controller.resync();
            }
        }
    }
}

async fn reload(
    w: &Watch,
    daemon: &Daemon,
    current: &watch::Sender<Arc<Desired>>,
    reported: &mut Option<String>,
) {
    match load(&w.paths, &w.guard).await {
        Err(errors) => {
            // Once per distinct problem, not at every resync.
            if reported.as_deref() != Some(errors.as_str()) {
                error!(%errors, "the manifests are invalid; the last valid ones stay in force and nothing changes");
                *reported = Some(errors);
            }
        }
        Ok(d) => {
            if reported.take().is_some() {
                info!("the manifests are valid again");
            }
            if **current.borrow() == d {
                return;
            }
            let changed = {
                let old = current.borrow();
                old.envs
                    .keys()
                    .chain(d.envs.keys())
                    .filter(|k| old.envs.get(*k) != d.envs.get(*k))
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            };
            info!(environments = d.envs.len(), changed, "manifests changed");
            if let Err(e) = w.guard.store.put_declared(d.envs.values()) {
                error!(error = %e, "the changed manifests could not be recorded; the last ones stay in force");
                return;
            }
            current.send_replace(Arc::new(d));
            if let Err(e) = daemon.publish(&w.guard.store) {
                error!(error = %e, "the changed manifests could not be handed to the loop");
            }
        }
    }
}

/// A watcher of every path: a directory recursively, a file through its directory (editors replace
/// a file by renaming another over it, which a watch on the file itself would lose).
fn watcher(
    paths: &[PathBuf],
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Reads are not changes.
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
            // An error (an overflowed inotify queue) may hide a change: read again.
            _ => {
                let _ = tx.send(());
            }
        }
    })?;
    for path in paths {
        if path.is_dir() {
            watcher.watch(path, RecursiveMode::Recursive)?;
        } else {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
    }
    Ok(watcher)
}

/// Waits for a change, then until changes stop for `quiet` (or `max` after the first): one reload
/// per save, however many events the save made. False when the sender is gone.
pub async fn settle(rx: &mut mpsc::UnboundedReceiver<()>, quiet: Duration, max: Duration) -> bool {
    if rx.recv().await.is_none() {
        return false;
    }
    let deadline = Instant::now() + max;
    loop {
        let until = (Instant::now() + quiet).min(deadline);
        tokio::select! {
            more = rx.recv() => {
                if more.is_none() {
                    return true;
                }
            }
            _ = tokio::time::sleep_until(until) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_settles_once_after_the_quiet_period() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sender = tokio::spawn(async move {
            for _ in 0..5 {
                tx.send(()).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(tx);
        });
        let start = Instant::now();
        assert!(settle(&mut rx, QUIET, MAX_WAIT).await);
        // Last change at 200 ms, then 200 ms of quiet.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        sender.await.unwrap();
        assert!(!settle(&mut rx, QUIET, MAX_WAIT).await, "sender gone");
    }

    #[tokio::test(start_paused = true)]
    async fn changes_that_never_pause_are_read_every_max_wait() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                if tx.send(()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let start = Instant::now();
        assert!(settle(&mut rx, QUIET, MAX_WAIT).await);
        assert_eq!(start.elapsed(), MAX_WAIT);
    }
}
