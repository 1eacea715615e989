//! Databases and caches in the use cases: the credentials an environment's database and cache
//! need, generated into its stored env (protected keys) before its release is bound, and the data
//! reconcile that apply, delete and the daemon's loop run beside the container work.

use std::collections::BTreeMap;

use super::view::{NoteView, OutcomeView, PlanView};
use super::{Error, Result};
use crate::config::Config;
use crate::model::data::{
    database_url, redis_password, redis_url, url_host, CacheNames, DataWants, PgNames,
};
use crate::model::vars::EnvValues;
use crate::model::{Desired, EnvKey, HostRef};
use crate::plan::data::DataNote;
use crate::reconcile::data::{DataOutcome, Wanted};
use crate::reconcile::Progress;
use crate::store::Store;

/// Who writes the credential versions, as `env history` shows it.
pub const AUTHOR: &str = "codeb (database and cache credentials)";

/// A new random password: 32 hex digits of 128 random bits (nothing to escape in a URL).
fn generate() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::failed(format!("no randomness: {e}")))?;
    Ok(crate::auth::hex(&bytes))
}

/// `current` with the keys the environment's database and cache derive: the existing password
/// kept when it is there, a new one generated when not; the URLs always derived from the Host as
/// declared now (an `appHost` change rewrites them).
pub fn derive(
    key: &EnvKey,
    wants: DataWants,
    host: &HostRef,
    current: &EnvValues,
) -> Result<EnvValues> {
    let mut next = current.clone();
    if let (true, Some(pg)) = (wants.database, &host.postgres) {
        let names = PgNames::of(key);
        let user = current
            .0
            .get("POSTGRES_USER")
            .filter(|u| names.logins.contains(u))
            .cloned();
        let password = match (&user, current.0.get("POSTGRES_PASSWORD")) {
            (Some(_), Some(p)) if !p.is_empty() => p.clone(),
            _ => generate()?,
        };
        let user = user.unwrap_or_else(|| names.logins[0].clone());
        let app = pg
            .app_host
            .as_deref()
            .or(url_host(&pg.url))
            .unwrap_or_default();
        next.0.insert(
            "DATABASE_URL".into(),
            database_url(app, &user, &password, &names.database),
        );
        next.0.insert("POSTGRES_USER".into(), user);
        next.0.insert("POSTGRES_PASSWORD".into(), password);
    }
    if let (true, Some(r)) = (wants.cache, &host.redis) {
        let names = CacheNames::of(key);
        let password = match current.0.get("REDIS_URL").and_then(|u| redis_password(u)) {
            Some(p) if !p.is_empty() => p,
            _ => generate()?,
        };
        let app = r
            .app_host
            .as_deref()
            .or(url_host(&r.url))
            .unwrap_or_default();
        next.0
            .insert("REDIS_URL".into(), redis_url(app, &names.user, &password));
        next.0.insert("REDIS_PREFIX".into(), names.prefix);
    }
    Ok(next)
}

/// `current` with new credentials: the other login role with a new password, a new cache
/// password; the URLs derived anew. The old login and password stay valid while a slot runs the
/// version that holds them (see `plan::data`).
pub fn rotate(
    key: &EnvKey,
    wants: DataWants,
    host: &HostRef,
    current: &EnvValues,
) -> Result<EnvValues> {
    let names = PgNames::of(key);
    let mut fresh = current.clone();
    if wants.database {
        let next = match current.0.get("POSTGRES_USER") {
            Some(u) if *u == names.logins[0] => &names.logins[1],
            _ => &names.logins[0],
        };
        fresh.0.insert("POSTGRES_USER".into(), next.clone());
        fresh.0.insert("POSTGRES_PASSWORD".into(), generate()?);
    }
    if wants.cache {
        fresh.0.remove("REDIS_URL");
    }
    derive(key, wants, host, &fresh)
}

/// Writes a new stored env version for every environment of `d` whose database or cache lacks
/// its credentials (or whose URLs changed), before its release is bound to the latest version.
/// Nothing when `dry` (a dry run shows the credentials as generated on apply).
pub fn credentials(store: &Store, d: &Desired, dry: bool) -> Result<()> {
    if dry {
        return Ok(());
    }
    for env in d.envs.values() {
        if env.data.is_none() || !env.env_from.is_stored() {
            continue;
        }
        let Some(host) = d.hosts.get(&env.host) else {
            continue;
        };
        let latest = store.latest_env_version(&env.key)?;
        let current = match latest {
            Some(v) => store.open_env(&env.key, v)?,
            None => EnvValues::default(),
        };
        let next = derive(&env.key, env.data, host, &current)?;
        if next != current {
            store.put_env_version(
                &env.key,
                latest,
                &next,
                AUTHOR,
                crate::reconcile::now_ms(),
                None,
            )?;
        }
    }
    Ok(())
}

/// Every Host the store recorded, with `d`'s laid over (a removed environment's servers are
/// found through its recorded Host), and only those whose data servers and password variables
/// the operator's configuration allows: a Host it refuses contributes no server.
fn hosts(store: &Store, config: &Config, d: &Desired) -> Result<BTreeMap<String, HostRef>> {
    let mut hosts = store.recorded()?.hosts.clone();
    hosts.extend(d.hosts.iter().map(|(n, h)| (n.clone(), h.clone())));
    hosts.retain(|_, h| config.check_host(h).is_ok());
    Ok(hosts)
}

/// Converges the data of `d`'s environments and of `removed` ones (their records' data goes as
/// their `onDelete` says).
pub async fn converge(
    store: &Store,
    config: &Config,
    d: &Desired,
    removed: &[EnvKey],
    dry_run: bool,
) -> Result<DataOutcome> {
    converge_with(store, config, d, removed, dry_run, &Progress::none()).await
}

/// As [`converge`], reporting each data step's start and end to `progress`.
pub async fn converge_with(
    store: &Store,
    config: &Config,
    d: &Desired,
    removed: &[EnvKey],
    dry_run: bool,
    progress: &Progress,
) -> Result<DataOutcome> {
    let mut wanted: Vec<Wanted> = d
        .envs
        .values()
        .map(|e| Wanted {
            key: e.key.clone(),
            host: e.host.clone(),
            wants: e.data,
        })
        .collect();
    if !removed.is_empty() {
        let recorded = store.load()?;
        let records = store.data_records()?;
        for key in removed {
            let host = recorded
                .envs
                .get(key)
                .map(|r| r.host.clone())
                .or_else(|| {
                    let r = records.get(key)?;
                    r.database
                        .as_ref()
                        .map(|d| d.host.clone())
                        .or_else(|| r.cache.as_ref().map(|c| c.host.clone()))
                })
                .unwrap_or_default();
            wanted.push(Wanted {
                key: key.clone(),
                host,
                wants: DataWants::default(),
            });
        }
    }
    if wanted.iter().all(|w| w.wants.is_none()) && store.data_records()?.is_empty() {
        return Ok(DataOutcome::default());
    }
    let owner =
        crate::reconcile::connect::owner(store).map_err(|e| Error::invalid(e.to_string()))?;
    let hosts = hosts(store, config, d)?;
    Ok(
        crate::reconcile::data::converge_with(store, &owner.id, &hosts, &wanted, dry_run, progress)
            .await?,
    )
}

/// `first` followed by `second`, a pass after the containers changed: its steps and failures are
/// added (its plan, computed after the first pass's, is not shown again).
pub fn then(first: &mut DataOutcome, second: DataOutcome) {
    first.executed.extend(second.executed);
    first.failures.extend(second.failures);
}

/// `d` without the environments whose data is not ready: their releases wait (their running
/// slots are left as they are).
pub fn without_blocked(d: &Desired, data: &DataOutcome) -> Desired {
    if data.blocked.is_empty() {
        return d.clone();
    }
    let mut out = d.clone();
    out.envs.retain(|k, _| !data.blocked.contains(k));
    out
}

fn note_view(n: &DataNote) -> NoteView {
    NoteView {
        text: match n {
            DataNote::Conflict { .. } | DataNote::Unreachable { .. } => {
                format!("{n}; its release waits")
            }
            DataNote::Retained { .. } => n.to_string(),
        },
        problem: n.blocks(),
        unobserved: matches!(n, DataNote::Unreachable { .. }),
    }
}

/// The data steps and notes, before the plan's own.
pub fn add_to_plan(view: &mut PlanView, data: &DataOutcome) {
    let steps = data.plan.steps.iter().map(|s| s.to_string());
    view.steps.splice(0..0, steps);
    let notes = data.plan.notes.iter().map(note_view);
    view.notes.splice(0..0, notes);
}

/// The data steps carried out and failed, before the outcome's own.
pub fn add_to_outcome(view: &mut OutcomeView, data: &DataOutcome) {
    view.executed.splice(0..0, data.executed.iter().cloned());
    view.failures.splice(
        0..0,
        data.failures
            .iter()
            .map(|(step, error)| super::view::FailureView {
                step: step.clone(),
                error: error.clone(),
            }),
    );
    view.notes
        .splice(0..0, data.plan.notes.iter().map(note_view));
    view.converged = view.converged && data.failures.is_empty() && data.blocked.is_empty();
}
