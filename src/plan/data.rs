//! Planning databases and caches: each environment's role, database and ACL user, diffed against
//! what its Host's PostgreSQL and Redis hold and what codeb recorded, into steps.
//!
//! Pure: no I/O. The credentials are desired state: codeb generates them into the environment's
//! stored env (protected keys) before planning, and the plan carries only the version that holds
//! them and their keyed digests; the executor opens that version when it sets a password.
//!
//! # Ownership
//! A role is codeb's when its comment is this codeb's mark for this environment
//! ([`crate::model::data::pg_mark`]); a project cannot change a role's comment. A database is
//! codeb's when its owner is such a role. An ACL user is codeb's when codeb recorded it (Redis
//! users carry no comment; the `codeb.` naming convention alone proves nothing). Anything of an
//! environment's names that is not codeb's is a conflict: no step touches it, the environment's
//! data is not planned, and a note names the object in the way. Removing an environment keeps its
//! data unless its `onDelete` is `drop`; a drop touches only what is codeb's.

use std::collections::BTreeMap;

use crate::model::data::{
    parse_pg_mark, pg_mark, CacheNames, CacheRecord, CacheWrite, DataRecord, DataWants,
    DatabaseLimits, DatabaseRecord, DatabaseWrite, ObservedCacheUser, ObservedDatabase,
    ObservedRole, OnDelete, PgNames,
};
use crate::model::EnvKey;

/// What one server looked like, for one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen<T> {
    Observed(T),
    /// The server could not be read; the message names it.
    Unreachable(String),
}

/// The credentials the environment's latest stored env version holds (their keyed digests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The version holding them (`None`: not generated yet, as in a dry run before the first apply).
    pub version: Option<u64>,
    /// The login role in use (0 or 1) and the digest of its password.
    pub database: Option<(usize, String)>,
    /// The digest of the cache password.
    pub cache: Option<String>,
    /// Older versions that slots still run (a grace slot after a rotation): their passwords stay
    /// valid until no slot runs them.
    pub live: Vec<LiveCredentials>,
}

/// The credentials of an older env version a slot still runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveCredentials {
    pub version: u64,
    pub database: Option<(usize, String)>,
    pub cache: Option<String>,
}

/// Everything planning one environment's data reads.
#[derive(Debug, Clone)]
pub struct DataEnv {
    pub key: EnvKey,
    /// The Host whose servers hold it.
    pub host: String,
    /// What it asks for now; nothing when it is removed.
    pub wants: DataWants,
    /// What becomes of what it no longer asks for: its `onDelete` (declared or last recorded).
    pub on_delete: OnDelete,
    /// The server's admin URL (without password), when the Host declares one.
    pub postgres: Option<String>,
    pub redis: Option<String>,
    pub database: Option<Seen<ObservedDatabase>>,
    pub cache: Option<Seen<Option<ObservedCacheUser>>>,
    pub recorded: Option<DataRecord>,
    pub credentials: Credentials,
}

/// One step on one environment's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataStep {
    /// Record the database (intent) and converge it to `write`, with the password the stored env
    /// version `version` holds; then record the password's digest as applied.
    EnsureDatabase {
        key: EnvKey,
        host: String,
        server: String,
        write: DatabaseWrite,
        version: Option<u64>,
        digest: Option<String>,
    },
    /// Record the ACL user (intent) and converge it, with the password of version `version` and
    /// those of the older versions slots still run (`also`), each with its digest.
    EnsureCache {
        key: EnvKey,
        host: String,
        server: String,
        write: CacheWrite,
        version: Option<u64>,
        digest: Option<String>,
        also: Vec<(u64, String)>,
    },
    /// Make a login role no slot uses any more unable to log in (after a rotation, once the
    /// grace slot that used it is gone).
    DisableLogin {
        key: EnvKey,
        host: String,
        server: String,
        role: String,
        login: usize,
    },
    /// Drop the database and its roles (onDelete: drop). Destructive.
    DropDatabase {
        key: EnvKey,
        host: String,
        server: String,
        names: PgNames,
    },
    /// Delete the ACL user and its keys (onDelete: drop). Destructive.
    DropCache {
        key: EnvKey,
        host: String,
        server: String,
        names: CacheNames,
    },
    /// Forget the database or cache record: what it names was dropped, or is retained and no
    /// longer codeb's to manage (a database keeps its mark, so it is found again).
    Forget {
        key: EnvKey,
        database: bool,
        cache: bool,
    },
}

impl DataStep {
    pub fn key(&self) -> &EnvKey {
        match self {
            DataStep::EnsureDatabase { key, .. }
            | DataStep::EnsureCache { key, .. }
            | DataStep::DisableLogin { key, .. }
            | DataStep::DropDatabase { key, .. }
            | DataStep::DropCache { key, .. }
            | DataStep::Forget { key, .. } => key,
        }
    }

    /// Whether the step destroys data.
    pub fn destructive(&self) -> bool {
        matches!(
            self,
            DataStep::DropDatabase { .. } | DataStep::DropCache { .. }
        )
    }
}

/// As `codeb diff` prints it; never a password, only which stored env version holds it.
impl std::fmt::Display for DataStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |server: &str| {
            crate::model::data::url_host(server)
                .unwrap_or(server)
                .to_string()
        };
        let creds = |version: &Option<u64>| match version {
            Some(v) => format!("credentials in env v{v}"),
            None => "credentials generated on apply".to_string(),
        };
        match self {
            DataStep::EnsureDatabase {
                key,
                server,
                write,
                version,
                ..
            } => write!(
                f,
                "{key}: ensure database \"{}\" and login \"{}\" in PostgreSQL at {} ({})",
                write.names.database,
                write.names.logins[write.login],
                at(server),
                creds(version)
            ),
            DataStep::EnsureCache {
                key,
                server,
                write,
                version,
                ..
            } => write!(
                f,
                "{key}: ensure Redis user {} (keys and channels {}*) at {} ({})",
                write.names.user,
                write.names.prefix,
                at(server),
                creds(version)
            ),
            DataStep::DisableLogin {
                key, server, role, ..
            } => write!(
                f,
                "{key}: disable login \"{role}\" in PostgreSQL at {} (no slot uses it since the \
                 last rotation)",
                at(server)
            ),
            DataStep::DropDatabase {
                key, server, names, ..
            } => write!(
                f,
                "{key}: DROP database \"{}\" and its roles in PostgreSQL at {} (onDelete: drop; \
                 destructive)",
                names.database,
                at(server)
            ),
            DataStep::DropCache {
                key, server, names, ..
            } => write!(
                f,
                "{key}: DELETE Redis user {} and every key under {} at {} (onDelete: drop; \
                 destructive)",
                names.user,
                names.prefix,
                at(server)
            ),
            DataStep::Forget {
                key,
                database,
                cache,
            } => {
                let what = match (database, cache) {
                    (true, true) => "database and cache",
                    (true, false) => "database",
                    _ => "cache",
                };
                write!(f, "{key}: forget the record of its {what}")
            }
        }
    }
}

/// Something the user must know about an environment's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataNote {
    /// A name codeb needs is held by an object that is not codeb's: nothing is done there.
    Conflict { key: EnvKey, what: String },
    /// The server could not be read: the environment's data was not planned.
    Unreachable { key: EnvKey, error: String },
    /// The environment no longer asks for it, and it is kept (onDelete: retain).
    Retained { key: EnvKey, what: String },
}

impl DataNote {
    pub fn key(&self) -> &EnvKey {
        match self {
            DataNote::Conflict { key, .. }
            | DataNote::Unreachable { key, .. }
            | DataNote::Retained { key, .. } => key,
        }
    }

    /// Whether the environment's data is not ready (its release should wait).
    pub fn blocks(&self) -> bool {
        !matches!(self, DataNote::Retained { .. })
    }
}

impl std::fmt::Display for DataNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataNote::Conflict { key, what } => write!(f, "{key}: {what}"),
            DataNote::Unreachable { key, error } => write!(f, "{key}: {error}"),
            DataNote::Retained { key, what } => {
                write!(f, "{key}: {what} retained (onDelete: retain)")
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataPlan {
    pub steps: Vec<DataStep>,
    pub notes: Vec<DataNote>,
}

impl DataPlan {
    /// The environments whose data is not ready: their releases wait.
    pub fn blocked(&self) -> impl Iterator<Item = &EnvKey> {
        self.notes.iter().filter(|n| n.blocks()).map(DataNote::key)
    }
}

/// The steps and notes for every environment: `owner` is this codeb's id (its marks).
pub fn plan_data(owner: &str, envs: &[DataEnv], limits: DatabaseLimits) -> DataPlan {
    let mut plan = DataPlan::default();
    for env in envs {
        plan_database(owner, env, limits, &mut plan);
        plan_cache(env, &mut plan);
    }
    plan
}

/// Whose a role is: this codeb's for this environment, or a description of whose it is.
fn role_is_mine(owner: &str, key: &EnvKey, role: &ObservedRole) -> Result<(), String> {
    match role.comment.as_deref().and_then(parse_pg_mark) {
        Some((o, k)) if o == owner && k == *key => Ok(()),
        Some((o, k)) if o == owner => Err(format!("codeb's role of {k}")),
        Some((o, _)) => Err(format!("a role of another codeb (instance {o})")),
        None => Err("a role codeb did not create".to_string()),
    }
}

/// The first object of the environment's names that is not codeb's, described.
fn database_conflict(
    owner: &str,
    key: &EnvKey,
    names: &PgNames,
    obs: &ObservedDatabase,
) -> Option<String> {
    let roles = std::iter::once((names.owner(), &obs.owner)).chain(
        names
            .logins
            .iter()
            .map(String::as_str)
            .zip(obs.logins.iter()),
    );
    for (name, role) in roles {
        if let Some(role) = role {
            if let Err(whose) = role_is_mine(owner, key, role) {
                return Some(format!(
                    "PostgreSQL role \"{name}\" exists and is {whose}: it is left alone, and \
                     this environment gets no database until it is renamed or dropped"
                ));
            }
        }
    }
    if let Some(db) = &obs.database {
        if db.owner != names.owner() || obs.owner.is_none() {
            return Some(format!(
                "PostgreSQL database \"{}\" exists, owned by \"{}\", not codeb's: it is left \
                 alone, and this environment gets no database until it is renamed or dropped",
                names.database, db.owner
            ));
        }
    }
    None
}

/// Whether a codeb role already is as `write` wants it (its password aside).
fn role_converged(
    role: &Option<ObservedRole>,
    login: bool,
    owner: &str,
    limits: DatabaseLimits,
) -> bool {
    let Some(role) = role else { return false };
    if role.can_login != login {
        return false;
    }
    if !login {
        return true;
    }
    let has = |s: String| role.settings.contains(&s);
    role.connection_limit == limits.connections as i32
        && role.member_of.iter().any(|m| m == owner)
        && has(format!("role={owner}"))
        && has(format!(
            "statement_timeout={}ms",
            limits.statement_timeout_ms
        ))
        && has(format!(
            "idle_in_transaction_session_timeout={}ms",
            limits.idle_in_transaction_ms
        ))
}

/// The server an environment wants something of, and what it showed; `None`, with a note, when
/// its Host declares no such server or it could not be read.
fn observed<'a, T>(
    env: &DataEnv,
    server: Option<&'a String>,
    seen: Option<&'a Seen<T>>,
    kind: &str,
    plan: &mut DataPlan,
) -> Option<(&'a String, &'a T)> {
    let error = match (server, seen) {
        (Some(server), Some(Seen::Observed(obs))) => return Some((server, obs)),
        (Some(_), Some(Seen::Unreachable(error))) => error.clone(),
        _ => format!("Host {} declares no {kind}", env.host),
    };
    plan.notes.push(DataNote::Unreachable {
        key: env.key.clone(),
        error,
    });
    None
}

fn plan_database(owner: &str, env: &DataEnv, limits: DatabaseLimits, plan: &mut DataPlan) {
    let key = &env.key;
    let names = PgNames::of(key);
    let recorded = env.recorded.as_ref().and_then(|r| r.database.as_ref());
    if !env.wants.database {
        let Some(rec) = recorded else { return };
        match env.on_delete {
            OnDelete::Retain => {
                plan.notes.push(DataNote::Retained {
                    key: key.clone(),
                    what: format!("database \"{}\"", rec.names.database),
                });
                plan.steps.push(DataStep::Forget {
                    key: key.clone(),
                    database: true,
                    cache: false,
                });
            }
            OnDelete::Drop => match &env.database {
                Some(Seen::Unreachable(error)) => plan.notes.push(DataNote::Unreachable {
                    key: key.clone(),
                    error: error.clone(),
                }),
                Some(Seen::Observed(obs)) => {
                    if let Some(what) = database_conflict(owner, key, &rec.names, obs) {
                        plan.notes.push(DataNote::Conflict {
                            key: key.clone(),
                            what,
                        });
                        return;
                    }
                    if obs.owner.is_some()
                        || obs.database.is_some()
                        || obs.logins.iter().any(Option::is_some)
                    {
                        plan.steps.push(DataStep::DropDatabase {
                            key: key.clone(),
                            host: rec.host.clone(),
                            server: rec.server.clone(),
                            names: rec.names.clone(),
                        });
                    }
                    plan.steps.push(DataStep::Forget {
                        key: key.clone(),
                        database: true,
                        cache: false,
                    });
                }
                // The server is no longer declared: nothing can be dropped; the record stays.
                None => plan.notes.push(DataNote::Unreachable {
                    key: key.clone(),
                    error: format!(
                        "PostgreSQL at {}: no Host declares it any more, so database \"{}\" \
                         cannot be dropped",
                        rec.server, rec.names.database
                    ),
                }),
            },
        }
        return;
    }
    let Some((server, obs)) = observed(
        env,
        env.postgres.as_ref(),
        env.database.as_ref(),
        "postgres",
        plan,
    ) else {
        return;
    };
    if let Some(what) = database_conflict(owner, key, &names, obs) {
        plan.notes.push(DataNote::Conflict {
            key: key.clone(),
            what,
        });
        return;
    }
    let (login, digest) = match &env.credentials.database {
        Some((login, digest)) => (*login, Some(digest.clone())),
        None => (0, None),
    };
    let converged = obs.owner.as_ref().is_some_and(|r| !r.can_login)
        && obs
            .database
            .as_ref()
            .is_some_and(|d| d.owner == names.database && !d.public_connect)
        && role_converged(&obs.logins[login], true, names.owner(), limits)
        && recorded.is_some_and(|r| {
            r.server == *server
                && r.names == names
                && digest.is_some()
                && r.applied[login] == digest
        });
    let other = 1 - login;
    let in_use = env
        .credentials
        .live
        .iter()
        .any(|l| l.database.as_ref().is_some_and(|(i, _)| *i == other));
    let disable = !in_use && obs.logins[other].as_ref().is_some_and(|r| r.can_login);
    let role = names.logins[other].clone();
    if !converged {
        plan.steps.push(DataStep::EnsureDatabase {
            key: key.clone(),
            host: env.host.clone(),
            server: server.clone(),
            write: DatabaseWrite {
                names,
                mark: pg_mark(owner, key),
                limits,
                login,
            },
            version: env.credentials.version,
            digest,
        });
    }
    if disable {
        plan.steps.push(DataStep::DisableLogin {
            key: key.clone(),
            host: env.host.clone(),
            server: server.clone(),
            role,
            login: other,
        });
    }
}

fn plan_cache(env: &DataEnv, plan: &mut DataPlan) {
    let key = &env.key;
    let names = CacheNames::of(key);
    let recorded = env.recorded.as_ref().and_then(|r| r.cache.as_ref());
    if !env.wants.cache {
        let Some(rec) = recorded else { return };
        match env.on_delete {
            OnDelete::Retain => plan.notes.push(DataNote::Retained {
                key: key.clone(),
                what: format!("Redis user {} and its keys", rec.names.user),
            }),
            OnDelete::Drop => match &env.cache {
                Some(Seen::Unreachable(error)) => plan.notes.push(DataNote::Unreachable {
                    key: key.clone(),
                    error: error.clone(),
                }),
                Some(Seen::Observed(_)) => {
                    plan.steps.push(DataStep::DropCache {
                        key: key.clone(),
                        host: rec.host.clone(),
                        server: rec.server.clone(),
                        names: rec.names.clone(),
                    });
                    plan.steps.push(DataStep::Forget {
                        key: key.clone(),
                        database: false,
                        cache: true,
                    });
                }
                None => plan.notes.push(DataNote::Unreachable {
                    key: key.clone(),
                    error: format!(
                        "Redis at {}: no Host declares it any more, so user {} cannot be deleted",
                        rec.server, rec.names.user
                    ),
                }),
            },
        }
        return;
    }
    let Some((server, user)) = observed(env, env.redis.as_ref(), env.cache.as_ref(), "redis", plan)
    else {
        return;
    };
    let mine = recorded.is_some_and(|r| r.server == *server && r.names == names);
    if user.is_some() && !mine {
        plan.notes.push(DataNote::Conflict {
            key: key.clone(),
            what: format!(
                "Redis user {} exists and codeb has no record of creating it: it is left alone, \
                 and this environment gets no cache until it is renamed or deleted",
                names.user
            ),
        });
        return;
    }
    let digest = env.credentials.cache.clone();
    // The older versions' passwords that slots still run, once each, none equal to the latest.
    let mut also: Vec<(u64, String)> = Vec::new();
    for l in &env.credentials.live {
        if let Some(d) = &l.cache {
            if Some(d) != digest.as_ref() && !also.iter().any(|(_, x)| x == d) {
                also.push((l.version, d.clone()));
            }
        }
    }
    let mut wanted: Vec<String> = digest
        .iter()
        .cloned()
        .chain(also.iter().map(|(_, d)| d.clone()))
        .collect();
    wanted.sort();
    let prefix = format!("~{}*", names.prefix);
    let converged = user
        .as_ref()
        .is_some_and(|u| u.enabled && u.passwords == wanted.len() && u.keys == [prefix.clone()])
        && recorded.is_some_and(|r| {
            let mut applied = r.applied.clone();
            applied.sort();
            digest.is_some() && applied == wanted
        });
    if !converged {
        plan.steps.push(DataStep::EnsureCache {
            key: key.clone(),
            host: env.host.clone(),
            server: server.clone(),
            write: CacheWrite { names },
            version: env.credentials.version,
            digest,
            also,
        });
    }
}

/// The record an [`DataStep::EnsureDatabase`] writes before it acts: the catalog entry, with the
/// digests applied so far (the step's login's is cleared until it is set).
pub fn database_intent(
    recorded: Option<&DataRecord>,
    host: &str,
    server: &str,
    write: &DatabaseWrite,
) -> DataRecord {
    let mut rec = recorded.cloned().unwrap_or_default();
    let mut applied = rec
        .database
        .as_ref()
        .filter(|d| d.server == server && d.names == write.names)
        .map(|d| d.applied.clone())
        .unwrap_or_default();
    applied[write.login] = None;
    rec.database = Some(DatabaseRecord {
        server: server.to_string(),
        host: host.to_string(),
        names: write.names.clone(),
        applied,
    });
    rec
}

/// The record an [`DataStep::EnsureCache`] writes before it acts.
pub fn cache_intent(
    recorded: Option<&DataRecord>,
    host: &str,
    server: &str,
    write: &CacheWrite,
) -> DataRecord {
    let mut rec = recorded.cloned().unwrap_or_default();
    rec.cache = Some(CacheRecord {
        server: server.to_string(),
        host: host.to_string(),
        names: write.names.clone(),
        applied: Vec::new(),
    });
    rec
}

/// The environments planned here, by key, for display.
pub fn by_env(plan: &DataPlan) -> BTreeMap<&EnvKey, Vec<&DataStep>> {
    let mut out: BTreeMap<&EnvKey, Vec<&DataStep>> = BTreeMap::new();
    for s in &plan.steps {
        out.entry(s.key()).or_default().push(s);
    }
    out
}

#[cfg(test)]
mod tests;
