//! The backup schedule of `codeb watch` and `codeb serve`: every [`TICK`], the backups that are
//! due (see [`service::backup::due`]: every recorded environment with a database or a cache on a
//! Host with `spec.backups`, whose newest backup of that kind, read from the destination
//! directory, is at least `every` old) run one at a time.
//!
//! A task of its own beside the reconcile loop: a backup never holds a claim or blocks a
//! reconcile. Because "due" is read from the directory, a schedule missed while the daemon was
//! down runs at its first tick after it is back, and a backup made by `codeb backup run` counts.
//! A failure is logged and counted (`codeb_backups{result="error"}`) and that backup is tried
//! again after a backoff (1 min, doubling, at most 1 h; reset by a success), never in a tight
//! loop. The env store's sealed versions (what `codeb env backup` writes) go to each backup
//! directory too, on the database schedule, under `_codeb/env/`. A stop cancels a backup in flight: `pg_dump` is killed and its temporary directory
//! removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backup::Kind;
use crate::config::Config;
use crate::metrics::{metrics, BackupLabels};
use crate::model::EnvKey;
use crate::service;
use crate::store::Store;

/// How often the schedule looks for due backups (schedules are hours and days; a minute late is
/// fine, and a look is one directory listing per environment and kind).
pub const TICK: Duration = Duration::from_secs(60);
/// The first look, soon after start: a schedule missed while the daemon was down runs now.
const FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// When a failed backup may be tried again.
fn backoff(failures: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(BACKOFF_MAX)
}

pub async fn run(store: Arc<Store>, config: Arc<Config>, shutdown: CancellationToken) {
    let mut failing: HashMap<(EnvKey, Kind), (u32, Instant)> = HashMap::new();
    let mut wait = FIRST;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = TICK;
        let due = match service::backup::due(&store, SystemTime::now()) {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e, "backup schedule: cannot list what is due");
                continue;
            }
        };
        env_store(&store, &shutdown, &mut failing).await;
        for (target, kind) in due {
            let id = (target.key.clone(), kind);
            if failing.get(&id).is_some_and(|(_, at)| Instant::now() < *at) {
                continue;
            }
            let start = Instant::now();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = service::backup::backup_one(&config, &target, kind, SystemTime::now()) => r,
            };
            let m = metrics();
            m.backup_seconds
                .get_or_create(&crate::metrics::KindLabels {
                    kind: kind.as_str(),
                })
                .observe(start.elapsed().as_secs_f64());
            match result {
                Ok(made) => {
                    failing.remove(&id);
                    m.backups
                        .get_or_create(&BackupLabels {
                            kind: kind.as_str(),
                            result: "ok",
                        })
                        .inc();
                    info!(env = %target.key, %kind, id = %made.id, bytes = made.size,
                        items = made.items, ms = made.elapsed_ms, deleted = made.deleted.len(),
                        "scheduled backup made");
                }
                Err(e) => {
                    let n = failing.get(&id).map_or(1, |(n, _)| n + 1);
                    let again = backoff(n);
                    failing.insert(id, (n, Instant::now() + again));
                    m.backups
                        .get_or_create(&BackupLabels {
                            kind: kind.as_str(),
                            result: "error",
                        })
                        .inc();
                    warn!(env = %target.key, %kind, error = %e, failures = n,
                        retry_s = again.as_secs(), "scheduled backup failed");
                }
            }
        }
    }
}

/// The env store's sealed versions into each backup directory, when due.
async fn env_store(
    store: &Store,
    shutdown: &CancellationToken,
    failing: &mut HashMap<(EnvKey, Kind), (u32, Instant)>,
) {
    let due = match service::backup::env_due(store, SystemTime::now()) {
        Ok(due) => due,
        Err(e) => {
            warn!(error = %e, "backup schedule: cannot list the env-store backups that are due");
            return;
        }
    };
    // No env version stored yet: nothing to keep.
    if due.is_empty() || store.env_backup().is_ok_and(|b| b.versions.is_empty()) {
        return;
    }
    let (p, e) = crate::backup::manifest::ENV_STORE;
    let id = (EnvKey::new(p, e), Kind::Env);
    if failing.get(&id).is_some_and(|(_, at)| Instant::now() < *at) {
        return;
    }
    for (dest, keep) in due {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = crate::backup::env_store(store, &dest, keep, SystemTime::now()) => r,
        };
        let labels = |result| BackupLabels {
            kind: "env",
            result,
        };
        match result {
            Ok(done) => {
                failing.remove(&id);
                metrics().backups.get_or_create(&labels("ok")).inc();
                info!(dir = %dest.root.display(), id = %done.manifest.id,
                    versions = done.manifest.keys.unwrap_or(0), "scheduled env-store backup made");
            }
            Err(err) => {
                let n = failing.get(&id).map_or(1, |(n, _)| n + 1);
                failing.insert(id.clone(), (n, Instant::now() + backoff(n)));
                metrics().backups.get_or_create(&labels("error")).inc();
                warn!(dir = %dest.root.display(), error = %err, "scheduled env-store backup failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_backup_backs_off_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(6), Duration::from_secs(1920));
        assert_eq!(backoff(7), Duration::from_secs(3600));
        assert_eq!(backoff(40), Duration::from_secs(3600));
    }
}
