//! Databases and caches: observe each environment's roles, database and ACL user on its Host's
//! PostgreSQL and Redis, plan with [`crate::plan::data`], and carry the steps out, the catalog
//! record written before each act (intent) and the applied credentials' digest after it.
//!
//! Passwords are read from the stored env version a step names, right before the call that sets
//! them, and go nowhere else: not into the plan, the record, the journal or a message.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::future::join_all;

use crate::backend::postgres::PgAdmin;
use crate::backend::redis::RedisAdmin;
use crate::backend::{Cache, Postgres};
use crate::model::data::{
    redis_password, CacheNames, DataRecord, DataWants, DatabaseLimits, OnDelete, PgNames,
};
use crate::model::vars::SecretText;
use crate::model::{EnvKey, HostRef, SlotState};
use crate::plan::data::{
    cache_intent, database_intent, plan_data, Credentials, DataEnv, DataPlan, DataStep,
    LiveCredentials, Seen,
};
use crate::store::Store;

/// The admin clients of every server the environments in question use, by admin URL; a server
/// whose password variable is unset is an error message instead.
#[derive(Default)]
pub struct Servers {
    postgres: BTreeMap<String, Result<PgAdmin, String>>,
    redis: BTreeMap<String, Result<RedisAdmin, String>>,
}

fn password(var: &str, what: &str, url: &str) -> Result<SecretText, String> {
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(SecretText(p)),
        Ok(_) => Err(format!(
            "{what} at {url}: the environment variable {var} (its passwordEnv) is empty"
        )),
        Err(_) => Err(format!(
            "{what} at {url}: the environment variable {var} (its passwordEnv) is not set; export \
             it with the admin password"
        )),
    }
}

impl Servers {
    /// Clients for the servers these Hosts declare. Makes no connection.
    pub fn connect<'a>(hosts: impl IntoIterator<Item = &'a HostRef>) -> Servers {
        let mut out = Servers::default();
        for h in hosts {
            if let Some(pg) = &h.postgres {
                out.postgres.entry(pg.url.clone()).or_insert_with(|| {
                    let pw = password(&pg.password_env, "PostgreSQL", &pg.url)?;
                    PgAdmin::new(&pg.url, &pw).map_err(|e| format!("PostgreSQL at {}: {e}", pg.url))
                });
            }
            if let Some(r) = &h.redis {
                out.redis.entry(r.url.clone()).or_insert_with(|| {
                    let pw = password(&r.password_env, "Redis", &r.url)?;
                    RedisAdmin::new(&r.url, &pw).map_err(|e| format!("Redis at {}: {e}", r.url))
                });
            }
        }
        out
    }

    fn postgres(&self, url: &str) -> Result<&PgAdmin, String> {
        match self.postgres.get(url) {
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("PostgreSQL at {url}: no Host declares it")),
        }
    }

    fn redis(&self, url: &str) -> Result<&RedisAdmin, String> {
        match self.redis.get(url) {
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("Redis at {url}: no Host declares it")),
        }
    }
}

/// One environment to plan: what it asks for, on which Host.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub key: EnvKey,
    pub host: String,
    pub wants: DataWants,
}

/// What a data reconcile did.
#[derive(Debug, Default)]
pub struct DataOutcome {
    /// The plan it computed (for display).
    pub plan: DataPlan,
    /// The steps carried out, as displayed.
    pub executed: Vec<String>,
    /// `(step, error)` of each step that failed.
    pub failures: Vec<(String, String)>,
    /// Environments whose data is not ready (a note or a failure): their releases wait.
    pub blocked: BTreeSet<EnvKey>,
}

/// Observes, plans and (unless `dry_run`) converges the data of `wanted` environments on these
/// Hosts. An environment that asks for nothing and has no record is left out at once.
///
/// # Errors
/// The store's, or an env key error (a person must act).
pub async fn converge(
    store: &Store,
    owner: &str,
    hosts: &BTreeMap<String, HostRef>,
    wanted: &[Wanted],
    dry_run: bool,
) -> Result<DataOutcome, super::Error> {
    converge_with(
        store,
        owner,
        hosts,
        wanted,
        dry_run,
        &super::Progress::none(),
    )
    .await
}

/// As [`converge`], reporting each step's start and end to `progress`.
pub async fn converge_with(
    store: &Store,
    owner: &str,
    hosts: &BTreeMap<String, HostRef>,
    wanted: &[Wanted],
    dry_run: bool,
    progress: &super::Progress,
) -> Result<DataOutcome, super::Error> {
    let records = store.data_records()?;
    let wanted: Vec<&Wanted> = wanted
        .iter()
        .filter(|w| !w.wants.is_none() || records.contains_key(&w.key))
        .collect();
    if wanted.is_empty() {
        return Ok(DataOutcome::default());
    }
    let servers = Servers::connect(hosts.values());
    let t = std::time::Instant::now();
    let envs = observe(store, &servers, hosts, &wanted, &records).await?;
    tracing::debug!(
        envs = envs.len(),
        observe_us = t.elapsed().as_micros() as u64,
        "data observed"
    );
    let plan = plan_data(owner, &envs, DatabaseLimits::default());
    let mut out = DataOutcome {
        blocked: plan.blocked().cloned().collect(),
        ..Default::default()
    };
    if !dry_run {
        for step in &plan.steps {
            if out.blocked.contains(step.key()) {
                continue;
            }
            let text = step.to_string();
            let started = std::time::Instant::now();
            progress.started(&text);
            let result = execute(store, &servers, step).await;
            progress.ended(&text, started.elapsed(), result.as_ref().err().cloned());
            match result {
                Ok(()) => out.executed.push(text),
                Err(e) => {
                    out.failures.push((text, e));
                    out.blocked.insert(step.key().clone());
                }
            }
        }
    }
    out.plan = plan;
    Ok(out)
}

/// Every environment's [`DataEnv`]: its servers read at once per server.
async fn observe(
    store: &Store,
    servers: &Servers,
    hosts: &BTreeMap<String, HostRef>,
    wanted: &[&Wanted],
    records: &BTreeMap<EnvKey, DataRecord>,
) -> Result<Vec<DataEnv>, super::Error> {
    // Per server, the names to read.
    let mut pg: BTreeMap<String, Vec<PgNames>> = BTreeMap::new();
    let mut redis: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut envs = Vec::new();
    for w in wanted {
        let host = hosts.get(&w.host);
        let recorded = records.get(&w.key).cloned();
        let postgres = host
            .and_then(|h| h.postgres.as_ref().map(|p| p.url.clone()))
            .or_else(|| {
                recorded
                    .as_ref()?
                    .database
                    .as_ref()
                    .map(|d| d.server.clone())
            });
        let redis_url = host
            .and_then(|h| h.redis.as_ref().map(|r| r.url.clone()))
            .or_else(|| recorded.as_ref()?.cache.as_ref().map(|c| c.server.clone()));
        let needs_db = w.wants.database || recorded.as_ref().is_some_and(|r| r.database.is_some());
        let needs_cache = w.wants.cache || recorded.as_ref().is_some_and(|r| r.cache.is_some());
        if let (Some(url), true) = (&postgres, needs_db) {
            pg.entry(url.clone()).or_default().push(PgNames::of(&w.key));
        }
        if let (Some(url), true) = (&redis_url, needs_cache) {
            redis
                .entry(url.clone())
                .or_default()
                .push(CacheNames::of(&w.key).user);
        }
        let on_delete = store
            .declared(&w.key)?
            .map(|d| d.data.on_delete)
            .unwrap_or(OnDelete::Retain);
        let on_delete = if w.wants.is_none() {
            on_delete
        } else {
            w.wants.on_delete
        };
        envs.push(DataEnv {
            key: w.key.clone(),
            host: w.host.clone(),
            wants: w.wants,
            on_delete,
            postgres: postgres.filter(|_| needs_db),
            redis: redis_url.filter(|_| needs_cache),
            database: None,
            cache: None,
            recorded,
            credentials: credentials(store, &w.key)?,
        });
    }
    let pg_reads = pg.iter().map(|(url, names)| async move {
        let read = match servers.postgres(url) {
            Ok(c) => c
                .observe(names)
                .await
                .map_err(|e| crate::backend::error_chain(&e)),
            Err(e) => Err(e),
        };
        (url.clone(), names.clone(), read)
    });
    let redis_reads = redis.iter().map(|(url, users)| async move {
        let read = match servers.redis(url) {
            Ok(c) => c
                .observe(users)
                .await
                .map_err(|e| crate::backend::error_chain(&e)),
            Err(e) => Err(e),
        };
        (url.clone(), users.clone(), read)
    });
    let t = std::time::Instant::now();
    let ((pg_seen, pg_us), (redis_seen, redis_us)) = tokio::join!(
        async { (join_all(pg_reads).await, t.elapsed().as_micros() as u64) },
        async { (join_all(redis_reads).await, t.elapsed().as_micros() as u64) }
    );
    tracing::debug!(pg_us, redis_us, "data servers read");
    let mut db_by = by_server(pg_seen);
    let mut cache_by = by_server(redis_seen);
    for env in &mut envs {
        if let Some(url) = &env.postgres {
            env.database = db_by.remove(&(url.clone(), PgNames::of(&env.key)));
        }
        if let Some(url) = &env.redis {
            env.cache = cache_by.remove(&(url.clone(), CacheNames::of(&env.key).user));
        }
    }
    Ok(envs)
}

/// One server's read: its URL, the names asked about, and its answer (one per name) or its error.
type ServerRead<N, T> = (String, Vec<N>, Result<Vec<T>, String>);

/// Each server's answer spread over the names it was asked about: `(server, name)` → what was
/// seen (the server's error for every name when it could not be read).
fn by_server<N: Ord, T>(reads: Vec<ServerRead<N, T>>) -> BTreeMap<(String, N), Seen<T>> {
    let mut out = BTreeMap::new();
    for (url, names, read) in reads {
        match read {
            Ok(obs) => {
                for (n, o) in names.into_iter().zip(obs) {
                    out.insert((url.clone(), n), Seen::Observed(o));
                }
            }
            Err(e) => {
                for n in names {
                    out.insert((url.clone(), n), Seen::Unreachable(e.clone()));
                }
            }
        }
    }
    out
}

/// The credentials the environment's latest stored env version holds, as digests, and those of
/// the older versions its slots still run (deploying, deployed, active or in grace).
fn credentials(store: &Store, key: &EnvKey) -> Result<Credentials, super::Error> {
    let mut versions = store.env_versions(key)?;
    let Some(latest) = versions.pop() else {
        return Ok(Credentials::default());
    };
    let Some(ring) = store.keyring(false)? else {
        return Ok(Credentials::default());
    };
    let names = PgNames::of(key);
    let database = |v: &crate::store::secrets::StoredVersion| match (
        v.digests.get("POSTGRES_USER"),
        v.digests.get("POSTGRES_PASSWORD"),
    ) {
        (Some(user), Some(pw)) => (0..2)
            .find(|&i| ring.value_digest(key, "POSTGRES_USER", &names.logins[i]) == *user)
            .map(|i| (i, pw.clone())),
        _ => None,
    };
    let running: BTreeSet<u64> = match store.env(key)? {
        Some(rec) => [&rec.blue, &rec.green]
            .into_iter()
            .filter(|s| !matches!(s.state, SlotState::Empty | SlotState::Failed))
            .filter_map(|s| s.release.as_ref()?.env_version)
            .filter(|v| *v != latest.version)
            .collect(),
        None => BTreeSet::new(),
    };
    let live = versions
        .iter()
        .filter(|v| running.contains(&v.version))
        .map(|v| LiveCredentials {
            version: v.version,
            database: database(v),
            cache: v.digests.get("REDIS_URL").cloned(),
        })
        .collect();
    Ok(Credentials {
        version: Some(latest.version),
        database: database(&latest),
        cache: latest.digests.get("REDIS_URL").cloned(),
        live,
    })
}

/// One value of a stored env version, opened right before the call that uses it.
fn stored_value(store: &Store, key: &EnvKey, version: u64, name: &str) -> Result<String, String> {
    let mut values = store.open_env(key, version).map_err(|e| e.to_string())?;
    values
        .0
        .remove(name)
        .ok_or_else(|| format!("{key}: env v{version} holds no {name}"))
}

/// Reads the environment's record, changes it and writes it back.
fn update_record(
    store: &Store,
    key: &EnvKey,
    change: impl FnOnce(&mut DataRecord),
) -> Result<(), String> {
    let mut rec = store
        .data_record(key)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    change(&mut rec);
    store
        .put_data_record(key, Some(&rec))
        .map_err(|e| e.to_string())
}

/// Carries one step out; the error names the server (never a password).
async fn execute(store: &Store, servers: &Servers, step: &DataStep) -> Result<(), String> {
    let store_err = |e: crate::store::Error| e.to_string();
    match step {
        DataStep::EnsureDatabase {
            key,
            host,
            server,
            write,
            version,
            digest,
        } => {
            let pg = servers.postgres(server)?;
            let (Some(version), Some(digest)) = (version, digest) else {
                return Err(format!(
                    "{key}: no credentials in its stored env; apply again"
                ));
            };
            let password = stored_value(store, key, *version, "POSTGRES_PASSWORD")?;
            let mut rec = database_intent(
                store.data_record(key).map_err(store_err)?.as_ref(),
                host,
                server,
                write,
            );
            store.put_data_record(key, Some(&rec)).map_err(store_err)?;
            pg.ensure(write, &SecretText(password))
                .await
                .map_err(|e| crate::backend::error_chain(&e))?;
            if let Some(d) = rec.database.as_mut() {
                d.applied[write.login] = Some(digest.clone());
            }
            store.put_data_record(key, Some(&rec)).map_err(store_err)
        }
        DataStep::EnsureCache {
            key,
            host,
            server,
            write,
            version,
            digest,
            also,
        } => {
            let redis = servers.redis(server)?;
            let (Some(version), Some(digest)) = (version, digest) else {
                return Err(format!(
                    "{key}: no credentials in its stored env; apply again"
                ));
            };
            let password = |version: u64| -> Result<SecretText, String> {
                redis_password(&stored_value(store, key, version, "REDIS_URL")?)
                    .map(SecretText)
                    .ok_or_else(|| {
                        format!("{key}: env v{version} holds no REDIS_URL with a password")
                    })
            };
            let mut passwords = vec![password(*version)?];
            for (v, _) in also {
                passwords.push(password(*v)?);
            }
            let mut rec = cache_intent(
                store.data_record(key).map_err(store_err)?.as_ref(),
                host,
                server,
                write,
            );
            store.put_data_record(key, Some(&rec)).map_err(store_err)?;
            redis
                .ensure(write, &passwords)
                .await
                .map_err(|e| crate::backend::error_chain(&e))?;
            if let Some(c) = rec.cache.as_mut() {
                c.applied = std::iter::once(digest.clone())
                    .chain(also.iter().map(|(_, d)| d.clone()))
                    .collect();
            }
            store.put_data_record(key, Some(&rec)).map_err(store_err)
        }
        DataStep::DisableLogin {
            key,
            server,
            role,
            login,
            ..
        } => {
            servers
                .postgres(server)?
                .disable_login(role)
                .await
                .map_err(|e| crate::backend::error_chain(&e))?;
            update_record(store, key, |rec| {
                if let Some(d) = rec.database.as_mut() {
                    d.applied[*login] = None;
                }
            })
        }
        DataStep::DropDatabase { server, names, .. } => servers
            .postgres(server)?
            .drop_database(names)
            .await
            .map_err(|e| crate::backend::error_chain(&e)),
        DataStep::DropCache { server, names, .. } => servers
            .redis(server)?
            .drop_cache(names)
            .await
            .map_err(|e| crate::backend::error_chain(&e)),
        DataStep::Forget {
            key,
            database,
            cache,
        } => update_record(store, key, |rec| {
            if *database {
                rec.database = None;
            }
            if *cache {
                rec.cache = None;
            }
        }),
    }
}
