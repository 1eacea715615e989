//! The backup use cases (`backup run`, `backup list`, `restore`) and the daemon's schedule: where
//! an environment's backups go and which admin connection they use, found from its recorded
//! Host (`spec.postgres`, `spec.redis`, `spec.backups`); the work itself is [`crate::backup`]'s.
//!
//! Must not: read a password from anywhere but the variable the Host names (and the operator's
//! configuration allows), or write one into a view or a message.

use std::time::{Duration, SystemTime};

use super::view::{BackupFailed, BackupMade, BackupRow, BackupRunView, RestoreView, TableCheck};
use super::{Ctx, Error, Result};
use crate::backup::{self, cache::RedisAdmin, dest::Check, postgres::PgAdmin, Dest, Kind};
use crate::config::Config;
use crate::model::data::DataWants;
use crate::model::vars::SecretText;
use crate::model::{EnvKey, HostRef};
use crate::store::Store;

/// One recorded environment and what it has to back up.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: EnvKey,
    pub host: HostRef,
    pub wants: DataWants,
}

impl Target {
    /// The kinds it has (a database, a cache), among `only` when given.
    pub fn kinds(&self, only: Option<Kind>) -> Vec<Kind> {
        let mut k = Vec::new();
        if self.wants.database {
            k.push(Kind::Database);
        }
        if self.wants.cache {
            k.push(Kind::Cache);
        }
        k.retain(|k| only.is_none_or(|o| o == *k));
        k
    }
}

/// The recorded environments (of `project`, or all; of `env` when given), with their Host and
/// what they declared.
pub fn targets(store: &Store, project: Option<&str>, env: Option<&str>) -> Result<Vec<Target>> {
    let recorded = store.load()?;
    let mut out = Vec::new();
    for (key, rec) in &recorded.envs {
        if project.is_some_and(|p| p != key.project) || env.is_some_and(|e| e != key.env) {
            continue;
        }
        let Some(host) = recorded.hosts.get(&rec.host) else {
            continue;
        };
        let wants = store.declared(key)?.map(|d| d.data).unwrap_or_default();
        out.push(Target {
            key: key.clone(),
            host: host.clone(),
            wants,
        });
    }
    Ok(out)
}

fn no_env(project: &str, env: Option<&str>) -> Error {
    match env {
        Some(e) => Error::not_found(format!("no environment {project}/{e} is recorded")),
        None => Error::not_found(format!("no environment of project {project} is recorded")),
    }
}

/// The Host's backup destination.
pub fn dest(host: &HostRef) -> Result<(Dest, &crate::model::data::BackupPolicy)> {
    let policy = host.backups.as_ref().ok_or_else(|| {
        Error::invalid(format!(
            "Host {} declares no spec.backups (the directory backups go to)",
            host.name
        ))
    })?;
    Ok((Dest::new(&policy.dir), policy))
}

/// The value of a Host's `passwordEnv` variable, if the configuration allows the variable.
fn password(config: &Config, host: &str, what: &str, var: &str) -> Result<SecretText> {
    if !config.allows_key_variable(var) {
        return Err(Error::invalid(format!(
            "Host {host}: spec.{what}.passwordEnv names {var}, which the operator's configuration does not let a manifest read a key from"
        )));
    }
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(SecretText(v)),
        Ok(_) => Err(Error::invalid(format!(
            "Host {host}: the environment variable {var} (its spec.{what}.passwordEnv) is empty"
        ))),
        Err(_) => Err(Error::invalid(format!(
            "Host {host}: the environment variable {var} (its spec.{what}.passwordEnv) is not set; export it with the admin password"
        ))),
    }
}

fn pg_admin(config: &Config, host: &HostRef) -> Result<PgAdmin> {
    let p = host
        .postgres
        .as_ref()
        .ok_or_else(|| Error::invalid(format!("Host {} declares no spec.postgres", host.name)))?;
    Ok(PgAdmin {
        url: p.url.clone(),
        password: password(config, &host.name, "postgres", &p.password_env)?,
    })
}

fn redis_admin(config: &Config, host: &HostRef) -> Result<RedisAdmin> {
    let r = host
        .redis
        .as_ref()
        .ok_or_else(|| Error::invalid(format!("Host {} declares no spec.redis", host.name)))?;
    Ok(RedisAdmin {
        url: r.url.clone(),
        password: password(config, &host.name, "redis", &r.password_env)?,
    })
}

/// A backup error as a use case's.
pub fn error(e: backup::Error) -> Error {
    use backup::Error as B;
    let message = e.to_string();
    match e {
        B::NotFound { .. } => Error::not_found(message),
        B::Refused(_) => Error::invalid(message),
        B::Postgres { .. } | B::Redis { .. } => Error::unavailable(message),
        _ => Error::failed(message),
    }
}

/// Makes one backup of `kind` of a target now.
pub async fn backup_one(
    config: &Config,
    t: &Target,
    kind: Kind,
    now: SystemTime,
) -> Result<BackupMade> {
    let (dest, policy) = dest(&t.host)?;
    let done = match kind {
        Kind::Database => {
            let admin = pg_admin(config, &t.host)?;
            backup::postgres::backup(&admin, &dest, &t.key, policy.database.keep, now).await
        }
        Kind::Cache => {
            let admin = redis_admin(config, &t.host)?;
            backup::cache::backup(&admin, &dest, &t.key, policy.cache.keep, now).await
        }
        Kind::Env => return Err(Error::invalid("env-store backups have no environment")),
    }
    .map_err(error)?;
    Ok(BackupMade {
        project: t.key.project.clone(),
        environment: t.key.env.clone(),
        id: done.manifest.id.clone(),
        kind: kind.to_string(),
        size: done.manifest.size(),
        items: done.manifest.items(),
        elapsed_ms: done.elapsed_ms,
        deleted: done.deleted,
    })
}

/// `codeb backup run`: every database and cache of the project's environments (or one's), one
/// after the other; a failure of one does not stop the others.
pub async fn run(
    ctx: &Ctx,
    project: &str,
    env: Option<&str>,
    only: Option<Kind>,
) -> Result<BackupRunView> {
    let targets = targets(&ctx.store, Some(project), env)?;
    if targets.is_empty() {
        return Err(no_env(project, env));
    }
    let work: Vec<(&Target, Kind)> = targets
        .iter()
        .flat_map(|t| t.kinds(only).into_iter().map(move |k| (t, k)))
        .collect();
    if work.is_empty() {
        let what = only.map_or("a database or a cache".to_string(), |k| format!("a {k}"));
        return Err(Error::invalid(format!(
            "no environment of {project}{} declares {what} to back up",
            env.map(|e| format!(" named {e}")).unwrap_or_default()
        )));
    }
    let mut view = BackupRunView {
        made: vec![],
        failed: vec![],
    };
    for (t, kind) in work {
        match backup_one(&ctx.config, t, kind, SystemTime::now()).await {
            Ok(m) => view.made.push(m),
            Err(e) => view.failed.push(BackupFailed {
                project: t.key.project.clone(),
                environment: t.key.env.clone(),
                kind: kind.to_string(),
                error: e.message,
            }),
        }
    }
    Ok(view)
}

/// `codeb backup list`: the backups in the destinations of the project's environments' Hosts.
pub async fn list(
    ctx: &Ctx,
    project: &str,
    env: Option<&str>,
    verify: bool,
) -> Result<Vec<BackupRow>> {
    let targets = targets(&ctx.store, Some(project), env)?;
    if targets.is_empty() {
        return Err(no_env(project, env));
    }
    let mut dests: Vec<Dest> = Vec::new();
    for t in &targets {
        if let Ok((d, _)) = dest(&t.host) {
            if !dests.contains(&d) {
                dests.push(d);
            }
        }
    }
    let (project, env) = (project.to_string(), env.map(str::to_string));
    tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        for d in dests {
            for l in d.list(&project, env.as_deref(), verify).map_err(error)? {
                let (check, problem) = match l.check {
                    Check::Sizes => ("sizes", None),
                    Check::Verified => ("verified", None),
                    Check::Problem(p) => ("problem", Some(p)),
                };
                let m = l.manifest.as_ref();
                rows.push(BackupRow {
                    project: project.clone(),
                    environment: l.env,
                    kind: backup::manifest::parse_id(&l.id)
                        .map(|(_, k)| k.to_string())
                        .unwrap_or_default(),
                    id: l.id,
                    created: m.map(|m| m.created.clone()).unwrap_or_default(),
                    size: m.map_or(0, |m| m.size()),
                    items: m.map_or(0, |m| m.items()),
                    check: check.to_string(),
                    problem,
                });
            }
        }
        Ok(rows)
    })
    .await
    .map_err(|e| Error::failed(format!("backup list: {e}")))?
}

/// `codeb restore`: backup `from` of the project's environment (`env`, or the one environment
/// that has a backup of that id), into a new database, or its keys back under the environment's
/// prefix (only with `replace_keys`).
pub async fn restore(
    ctx: &Ctx,
    project: &str,
    env: Option<&str>,
    from: &str,
    to_database: Option<&str>,
    replace_keys: bool,
) -> Result<RestoreView> {
    let Some((_, kind)) = backup::manifest::parse_id(from) else {
        return Err(Error::invalid(format!(
            "{from:?} is not a backup id (as `codeb backup list` shows them: 20261207T121500Z-database)"
        )));
    };
    if kind == Kind::Env {
        return Err(Error::invalid(format!(
            "{from} is an env-store backup: restore it with `codeb env restore-backup --from DIR` (DIR: that backup's directory, under _codeb/env/)"
        )));
    }
    let targets = targets(&ctx.store, Some(project), env)?;
    if targets.is_empty() {
        return Err(no_env(project, env));
    }
    let holding: Vec<&Target> = targets
        .iter()
        .filter(|t| {
            dest(&t.host).is_ok_and(|(d, _)| d.open(&t.key.project, &t.key.env, from).is_ok())
        })
        .collect();
    let t = match holding.as_slice() {
        [t] => *t,
        [] => {
            return Err(Error::not_found(format!(
                "no backup {from} of {project}{} (see `codeb backup list {project}`)",
                env.map(|e| format!("/{e}")).unwrap_or_default()
            )))
        }
        _ => {
            return Err(Error::invalid(format!(
                "backup {from} exists for several environments of {project}: name one with --env"
            )))
        }
    };
    let (dest, _) = dest(&t.host)?;
    let mut view = RestoreView {
        project: t.key.project.clone(),
        environment: t.key.env.clone(),
        id: from.to_string(),
        kind: kind.to_string(),
        database: None,
        tables: vec![],
        prefix: None,
        keys: None,
        elapsed_ms: 0,
    };
    match kind {
        Kind::Env => unreachable!("refused above"),
        Kind::Database => {
            if replace_keys {
                return Err(Error::invalid(
                    "--replace-keys is for a cache backup; a database is restored into a new database",
                ));
            }
            let admin = pg_admin(&ctx.config, &t.host)?;
            let r = backup::postgres::restore(&admin, &dest, &t.key, from, to_database)
                .await
                .map_err(error)?;
            view.database = Some(r.database);
            view.tables = r
                .tables
                .into_iter()
                .map(|c| TableCheck {
                    table: c.table,
                    expected: c.expected,
                    actual: c.actual,
                })
                .collect();
            view.elapsed_ms = r.elapsed_ms;
        }
        Kind::Cache => {
            if to_database.is_some() {
                return Err(Error::invalid(
                    "--to-database is for a database backup; a cache backup is restored under the environment's own prefix",
                ));
            }
            let admin = redis_admin(&ctx.config, &t.host)?;
            let r = backup::cache::restore(&admin, &dest, &t.key, from, replace_keys)
                .await
                .map_err(error)?;
            view.prefix = Some(r.prefix);
            view.keys = Some((r.expected, r.restored));
            view.elapsed_ms = r.elapsed_ms;
        }
    }
    Ok(view)
}

/// The backups the schedule owes now: for every recorded environment with a database or a cache
/// on a Host with `spec.backups`, each kind whose newest backup (from the directory listing) is
/// at least its `every` old.
pub fn due(store: &Store, now: SystemTime) -> Result<Vec<(Target, Kind)>> {
    let mut out = Vec::new();
    for t in targets(store, None, None)? {
        let Ok((d, policy)) = dest(&t.host) else {
            continue;
        };
        for kind in t.kinds(None) {
            let every = match kind {
                Kind::Database | Kind::Env => policy.database.every_secs,
                Kind::Cache => policy.cache.every_secs,
            };
            let newest = d.newest(&t.key.project, &t.key.env, kind).map_err(error)?;
            if backup::manifest::due(newest, Duration::from_secs(every), now) {
                out.push((t.clone(), kind));
            }
        }
    }
    Ok(out)
}

/// The env-store backups the schedule owes now: one per distinct backup directory of the recorded
/// Hosts whose newest env-store backup is at least the database schedule's `every` old (daily by
/// default), when the store holds any env version.
pub fn env_due(store: &Store, now: SystemTime) -> Result<Vec<(Dest, u32)>> {
    let mut out: Vec<(Dest, u32)> = Vec::new();
    for host in store.load()?.hosts.values() {
        let Ok((d, policy)) = dest(host) else {
            continue;
        };
        if out.iter().any(|(o, _)| *o == d) {
            continue;
        }
        let (p, e) = backup::manifest::ENV_STORE;
        let newest = d.newest(p, e, Kind::Env).map_err(error)?;
        let every = Duration::from_secs(policy.database.every_secs);
        if backup::manifest::due(newest, every, now) {
            out.push((d, policy.database.keep));
        }
    }
    Ok(out)
}
