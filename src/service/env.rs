//! The env use cases: set, unset, import, list, get, export, history, diff, restore, backup and
//! restore-backup of a project environment's stored env (see `store::secrets`), and the binding
//! of releases to it.
//!
//! Every change writes a new version (never rewriting one) and is a new release: the
//! environment's declared spec is rolled out through the normal blue/green path, pinned to the
//! new version, under the same claim as the write, and handed to the daemon's loop before the
//! claim is dropped (else the loop could plan from the old version in between).
//!
//! Protected keys (the operator's `protectedEnv`) change only for a caller holding
//! `env-protected` who says `protected`; anyone else's change keeps their stored values, and the
//! answer names them.
//!
//! Must not: put a value in a view other than `get`/`export`'s, in an error, a log line, the
//! audit or a record.

use std::collections::{BTreeMap, BTreeSet};

use super::view::{
    EnvBackupView, EnvChangeView, EnvDiffView, EnvExportView, EnvHistoryRow, EnvListRow,
    EnvListView, EnvValueView, OutcomeView,
};
use super::{Ctx, Error, Result};
use crate::auth::Permission;
use crate::model::vars::{EnvValues, SecretText};
use crate::model::{Desired, EnvKey};
use crate::plan::fields;
use crate::reconcile::controller::Work;
use crate::store::secrets::{MAX_KEYS, MAX_VALUE_BYTES};
use crate::store::Store;

/// A key name codeb accepts: POSIX-ish `[A-Za-z_][A-Za-z0-9_]*`, at most 256 characters.
pub fn is_key_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 256
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks one variable; `at` says where it came from (`FILE:LINE`, `argument 2`).
///
/// # Errors
/// `Invalid`, naming the place and the key, never the value.
pub fn check_var(at: &str, name: &str, value: &str) -> Result<()> {
    if !is_key_name(name) {
        let shown: String = name.chars().take(64).collect();
        return Err(Error::invalid(format!(
            "{at}: invalid env key name {shown:?}: expected letters, digits and `_`, not starting with a digit (e.g. DATABASE_URL)"
        )));
    }
    if value.contains('\0') {
        return Err(Error::invalid(format!(
            "{at}: the value of {name} contains a NUL byte, which no process environment can hold"
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::invalid(format!(
            "{at}: the value of {name} is {} bytes, over the limit of {} KiB per value (env holds configuration and secrets; mount files as files)",
            value.len(),
            MAX_VALUE_BYTES / 1024
        )));
    }
    Ok(())
}

/// Parses dotenv text: `KEY=VALUE` lines, `export KEY=VALUE`, `#` comments and blank lines;
/// a value may be in single quotes (taken as written) or double quotes (`\n`, `\"`, `\\`
/// escapes), or bare (trailing spaces and a ` #` comment dropped). Multi-line values are not
/// supported: use `\n` in double quotes.
///
/// # Errors
/// `Invalid` at `FILE:LINE` for a malformed line, an invalid key name, a NUL byte, a value over
/// the limit, a key given twice; never echoing a value.
pub fn parse_dotenv(file: &str, text: &str) -> Result<EnvValues> {
    let mut out = BTreeMap::new();
    let mut lines_at: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let at = format!("{file}:{n}");
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let body = trimmed
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(trimmed);
        let Some((name, rest)) = body.split_once('=') else {
            return Err(Error::invalid(format!(
                "{at}: malformed line: expected KEY=VALUE (or a # comment)"
            )));
        };
        let name = name.trim_end();
        let value = dotenv_value(&at, name, rest)?;
        check_var(&at, name, &value)?;
        if let Some(first) = lines_at.insert(name.to_string(), n) {
            return Err(Error::invalid(format!(
                "{at}: {name} is given twice (first at line {first})"
            )));
        }
        out.insert(name.to_string(), value);
        if out.len() > MAX_KEYS {
            return Err(Error::invalid(format!(
                "{at}: more than {MAX_KEYS} variables"
            )));
        }
    }
    Ok(EnvValues(out))
}

fn dotenv_value(at: &str, name: &str, rest: &str) -> Result<String> {
    let rest = rest.trim_start();
    let unterminated = |q: char| {
        Error::invalid(format!(
            "{at}: the value of {name} opens a {q} quote it does not close (values are one line; write a newline as \\n in double quotes)"
        ))
    };
    let after = |tail: &str| -> Result<()> {
        let tail = tail.trim();
        if tail.is_empty() || tail.starts_with('#') {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "{at}: malformed line: text after the quoted value of {name}"
            )))
        }
    };
    if let Some(r) = rest.strip_prefix('\'') {
        let end = r.find('\'').ok_or_else(|| unterminated('\''))?;
        after(&r[end + 1..])?;
        return Ok(r[..end].to_string());
    }
    if let Some(r) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = r.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    after(&r[i + 1..])?;
                    return Ok(value);
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some('r') => value.push('\r'),
                    Some(c @ ('"' | '\\' | '$')) => value.push(c),
                    Some(c) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(unterminated('"')),
                },
                c => value.push(c),
            }
        }
        return Err(unterminated('"'));
    }
    let bare = match rest.find(" #") {
        Some(i) => &rest[..i],
        None => rest,
    };
    Ok(bare.trim_end().to_string())
}

/// `KEY=VALUE` arguments of `env set`, checked.
///
/// # Errors
/// `Invalid` naming the argument's position and key.
pub fn parse_assignments(args: &[String]) -> Result<EnvValues> {
    let mut out = BTreeMap::new();
    for (i, a) in args.iter().enumerate() {
        let at = format!("argument {}", i + 1);
        let Some((name, value)) = a.split_once('=') else {
            return Err(Error::invalid(format!(
                "{at}: expected KEY=VALUE (the value may be empty: KEY=)"
            )));
        };
        check_var(&at, name, value)?;
        out.insert(name.to_string(), value.to_string());
    }
    Ok(EnvValues(out))
}

/// Binds every environment of `d` to the env store: its inline env to its keyed digest (sealed
/// in the store unless `dry`), and, with `envFrom: stored`, its release to the latest stored
/// version. Run wherever a desired state is made for planning (`effective`, a rollout).
///
/// # Errors
/// A key error (`Invalid`: a person must put the key back), or the store's.
pub fn bind(store: &Store, d: &mut Desired, dry: bool) -> Result<()> {
    // One read of the env versions for every environment (none is written while binding).
    let versions = store.latest_env_versions(
        d.envs
            .values()
            .filter(|e| e.env_from.is_stored())
            .map(|e| &e.key),
    )?;
    for env in d.envs.values_mut() {
        let inline = store.bind_inline(&env.key, &env.release.env, dry)?;
        let version = versions.get(&env.key).copied().flatten();
        if inline != env.release.env
            || inline.digest() != env.release.env.digest()
            || version != env.release.env_version
        {
            env.release = env
                .release
                .clone()
                .with_inline_env(inline)
                .with_env_version(version);
        }
    }
    Ok(())
}

/// What an apply changes in each environment of `d` and each of `remove`, field by field (see
/// [`plan::fields`]), for `diff` and `apply`'s plan. Writes nothing (a dry run's answer).
///
/// Variables are compared by keyed digest per name: the stored versions' own digests, and for
/// inline values (in memory for the manifests; opened from their sealed copy for a recorded
/// release) the same keyed digest computed here. Values never leave this function, and digests
/// stay in it too: the result holds names only.
///
/// # Errors
/// A store error reading the records.
pub fn field_changes(
    store: &Store,
    d: &Desired,
    remove: &[EnvKey],
) -> Result<Vec<fields::EnvChanges>> {
    let recorded = store.recorded()?;
    field_changes_from(store, &recorded, d, remove, &BTreeMap::new())
}

/// As [`field_changes`], against `recorded` (the records before an apply), with the records the
/// plan adopts (`adopted`: environments the host runs and the store did not record) compared as
/// if recorded: an adopted environment is not a new one.
///
/// # Errors
/// A store error reading the declared specs.
pub fn field_changes_from(
    store: &Store,
    recorded: &crate::model::Recorded,
    d: &Desired,
    remove: &[EnvKey],
    adopted: &BTreeMap<EnvKey, crate::model::EnvRecord>,
) -> Result<Vec<fields::EnvChanges>> {
    // The store's key; an ephemeral one where there is none yet (then nothing was sealed under a
    // key, and both sides' inline values are in memory, digested alike here). `None`: the key
    // does not open (its errors are reported by the commands that need it), so inline digests
    // are unknown.
    let ring = match store.keyring(false) {
        Ok(Some(r)) => Some(r),
        Ok(None) => {
            let mut master = [0u8; 32];
            getrandom::fill(&mut master).map_err(|e| Error::failed(e.to_string()))?;
            Some(std::sync::Arc::new(
                crate::store::secrets::Keyring::from_master(&master, Default::default()),
            ))
        }
        Err(_) => None,
    };
    let ring = ring.as_deref();
    // The declared specs of the recorded environments, in one read.
    let mut declared_of =
        store.declared_of(d.envs.keys().filter(|k| recorded.envs.contains_key(*k)))?;
    let mut out = Vec::new();
    for (key, want) in &d.envs {
        let declared = declared_of.remove(key);
        let rec = recorded.envs.get(key).or_else(|| adopted.get(key));
        let current = rec.map(|record| fields::Current {
            record,
            declared: declared.as_ref(),
        });
        let base = rec.and_then(|r| fields::base_release(r, Some(&want.release)));
        let (from, to) = if rec.is_none() || fields::env_differs(base, &want.release) {
            (
                base.map(|b| env_digests(store, ring, key, b))
                    .transpose()?
                    .unwrap_or_default(),
                env_digests(store, ring, key, &want.release)?,
            )
        } else {
            Default::default()
        };
        out.extend(fields::env_changes(key, current, Some(want), &from, &to));
    }
    for key in remove.iter().filter(|k| !d.envs.contains_key(*k)) {
        if let Some(record) = recorded.envs.get(key) {
            let current = fields::Current {
                record,
                declared: None,
            };
            let none = fields::EnvDigests::new();
            out.extend(fields::env_changes(key, Some(current), None, &none, &none));
        }
    }
    Ok(out)
}

/// The variables a container of `release` gets, each with the keyed digest of its value: the
/// inline env, then the pinned stored version over it (as the executor resolves them).
fn env_digests(
    store: &Store,
    ring: Option<&crate::store::secrets::Keyring>,
    key: &EnvKey,
    release: &crate::model::Release,
) -> Result<fields::EnvDigests> {
    let mut out = fields::EnvDigests::new();
    if !release.env.is_empty() {
        let values = ring.and(store.peek_inline(key, &release.env));
        for name in release.env.names() {
            let digest = values
                .as_ref()
                .zip(ring)
                .and_then(|(v, ring)| Some(ring.value_digest(key, name, v.0.get(name)?)));
            out.insert(name.clone(), digest);
        }
    }
    if let Some(v) = release.env_version {
        // A version that is gone (versions are never deleted) leaves its names unknown.
        if let Some(stored) = store
            .env_versions(key)?
            .into_iter()
            .find(|s| s.version == v)
        {
            out.extend(stored.digests.into_iter().map(|(n, d)| (n, Some(d))));
        }
    }
    Ok(out)
}

/// What a change does to the current values.
pub enum Change {
    Set(EnvValues),
    Unset(Vec<String>),
    /// The whole set, as a dotenv file says (protected keys aside).
    Import(EnvValues),
    Restore(u64),
    /// New credentials for the environment's database and cache (see `data::rotate`).
    Rotate,
}

impl Change {
    fn op(&self) -> &'static str {
        match self {
            Change::Set(_) => "set",
            Change::Unset(_) => "unset",
            Change::Import(_) => "import",
            Change::Restore(_) => "restore",
            Change::Rotate => "rotate",
        }
    }
}

/// `current` with `proposed` applied, except that protected keys keep their current value (or
/// absence) unless `may_protect`; also returns the protected keys whose change was refused.
fn protect(
    current: &EnvValues,
    proposed: EnvValues,
    protected: &[String],
    may_protect: bool,
) -> (EnvValues, Vec<String>) {
    if may_protect {
        return (proposed, vec![]);
    }
    let mut out = proposed;
    let mut kept = Vec::new();
    for p in protected {
        let now = current.0.get(p);
        if out.0.get(p) != now {
            kept.push(p.clone());
            match now {
                Some(v) => out.0.insert(p.clone(), v.clone()),
                None => out.0.remove(p),
            };
        }
    }
    (out, kept)
}

/// Runs a change: validated, claimed, written as a new version, rolled out, published.
pub(super) async fn change(
    ctx: &Ctx,
    key: EnvKey,
    change: Change,
    protected: bool,
) -> Result<EnvChangeView> {
    if let Change::Unset(names) = &change {
        for (i, n) in names.iter().enumerate() {
            check_var(&format!("argument {}", i + 1), n, "")?;
        }
    }
    let store = &ctx.store;
    let declared = super::declared_env(ctx, &key)?;
    let (scope, host_zones) = match &declared {
        Some(env) => {
            let (host, zones, works) = super::rollout_scope(ctx, env)?;
            (works, Some((host, zones)))
        }
        None => (vec![Work::Env(key.clone())], None),
    };
    let claim = ctx.claim(scope).await?;
    let current_version = store.latest_env_version(&key)?;
    let current = match current_version {
        Some(v) => store.open_env(&key, v)?,
        None => EnvValues::default(),
    };
    let mut named: BTreeSet<String> = BTreeSet::new();
    let (proposed, restored_from) = match &change {
        Change::Set(vars) => {
            let mut next = current.clone();
            for (k, v) in &vars.0 {
                named.insert(k.clone());
                next.0.insert(k.clone(), v.clone());
            }
            (next, None)
        }
        Change::Unset(names) => {
            let mut next = current.clone();
            for n in names {
                named.insert(n.clone());
                next.0.remove(n);
            }
            (next, None)
        }
        Change::Import(vars) => {
            named.extend(vars.0.keys().cloned());
            (vars.clone(), None)
        }
        Change::Restore(v) => {
            let values = store.open_env(&key, *v)?;
            named.extend(values.0.keys().cloned());
            named.extend(current.0.keys().cloned());
            (values, Some(*v))
        }
        Change::Rotate => {
            let (env, (host, _)) = match (&declared, &host_zones) {
                (Some(env), Some(hz)) if !env.data.is_none() => (env, hz),
                _ => {
                    return Err(Error::invalid(format!(
                        "{key} declares no `database` or `cache`: there is nothing to rotate"
                    )))
                }
            };
            let next = super::data::rotate(&key, env.data, host, &current)?;
            named.extend(next.0.keys().cloned());
            (next, None)
        }
    };
    let may_protect = protected
        && crate::auth::authorize(&ctx.caller, Permission::EnvProtected, Some(&key.project))
            .is_ok();
    let (next, mut kept) = protect(&current, proposed, ctx.config.protected_env(), may_protect);
    kept.retain(|k| named.contains(k));
    let mut view = EnvChangeView {
        project: key.project.clone(),
        environment: key.env.clone(),
        op: change.op().to_string(),
        version: None,
        previous: current_version,
        added: vec![],
        changed: vec![],
        removed: vec![],
        kept,
        rollout: None,
        notes: vec![],
    };
    if !view.kept.is_empty() {
        view.notes.push(format!(
            "kept as stored: {} {} protected; an admin changes {} with --protected",
            view.kept.join(", "),
            if view.kept.len() == 1 { "is" } else { "are" },
            if view.kept.len() == 1 { "it" } else { "them" },
        ));
    }
    // A restore always writes its version, even one equal to the latest: after a rollback the
    // latest version is held (rolled away from), and a restore is how a person asks for it again.
    if next == current && !matches!(change, Change::Restore(_)) {
        view.notes.push(match current_version {
            Some(v) => format!("nothing changed: {key} stays at env version {v}"),
            None => format!("nothing changed: {key} has no stored env"),
        });
        return Ok(view);
    }
    let stored = store.put_env_version(
        &key,
        current_version,
        &next,
        &ctx.caller.label(),
        crate::reconcile::now_ms(),
        restored_from,
    )?;
    view.version = Some(stored.version);
    view.added = stored.added.clone();
    view.changed = stored.changed.clone();
    view.removed = stored.removed.clone();
    match (declared, host_zones) {
        (Some(env), Some((host, zones))) if env.env_from.is_stored() => {
            let outcome = super::roll_out(ctx, &key, env, host, zones).await;
            drop(claim);
            view.rollout = Some(outcome.map_err(|e| {
                Error::new(
                    e.code,
                    format!(
                        "{key} env version {} is stored, but its rollout did not run: {} (the next apply or resync rolls it out)",
                        stored.version, e.message
                    ),
                )
            })?);
        }
        (Some(_), _) => view.notes.push(format!(
            "{key} declares `envFrom: none`: its containers do not get the stored env"
        )),
        (None, _) => view.notes.push(format!(
            "{key} is not declared (yet): its next apply deploys with env version {}",
            stored.version
        )),
    }
    Ok(view)
}

/// What `rollback --to` makes of the stored env: the values of `version` (the version the
/// release rolled back to ran with), the protected keys kept as they are now whoever asks (a
/// rollback never brings back credentials a rotation retired). `None` when the latest version
/// already holds exactly these values: nothing to write. Also returns the latest version.
///
/// # Errors
/// A key error, or `NotFound` when `version` does not exist.
pub(super) fn rollback_values(
    ctx: &Ctx,
    key: &EnvKey,
    version: u64,
) -> Result<(Option<u64>, Option<EnvValues>)> {
    let store = &ctx.store;
    let latest = store.latest_env_version(key)?;
    let current = match latest {
        Some(v) => store.open_env(key, v)?,
        None => EnvValues::default(),
    };
    let values = store.open_env(key, version)?;
    let (next, _) = protect(&current, values, ctx.config.protected_env(), false);
    Ok((latest, (next != current).then_some(next)))
}

/// Writes the env `rollback --to` restores (see [`rollback_values`]) as a new version, restored
/// from `version`, by the caller, and the release override `over`, in one transaction; the
/// caller holds the environment's claim. `None`: the env needs no new version, and nothing was
/// written (the override is the caller's to set).
pub(super) fn restore_for_rollback(
    ctx: &Ctx,
    key: &EnvKey,
    version: u64,
    over: Option<&crate::model::Override>,
) -> Result<Option<crate::store::secrets::StoredVersion>> {
    let (latest, Some(next)) = rollback_values(ctx, key, version)? else {
        return Ok(None);
    };
    let stored = ctx.store.restore_env_version_with_override(
        key,
        latest,
        &next,
        &ctx.caller.label(),
        crate::reconcile::now_ms(),
        version,
        over,
    )?;
    Ok(Some(stored))
}

fn rows(key: &EnvKey, v: &crate::store::secrets::StoredVersion) -> EnvHistoryRow {
    EnvHistoryRow {
        project: key.project.clone(),
        environment: key.env.clone(),
        version: v.version,
        at_ms: v.at_ms,
        by: v.by.clone(),
        added: v.added.clone(),
        changed: v.changed.clone(),
        removed: v.removed.clone(),
        restored_from: v.restored_from,
    }
}

pub(super) fn list(ctx: &Ctx, key: &EnvKey) -> Result<EnvListView> {
    let versions = ctx.store.env_versions(key)?;
    let latest = versions.last();
    Ok(EnvListView {
        project: key.project.clone(),
        environment: key.env.clone(),
        version: latest.map(|v| v.version),
        vars: latest
            .map(|v| {
                v.digests
                    .iter()
                    .map(|(name, digest)| EnvListRow {
                        name: name.clone(),
                        digest: digest.clone(),
                        protected: ctx.config.protected_env().contains(name),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn latest_or_none(ctx: &Ctx, key: &EnvKey) -> Result<u64> {
    ctx.store.latest_env_version(key)?.ok_or_else(|| {
        Error::not_found(format!(
            "{key} has no stored env (see `codeb env set {} --env {} KEY=VALUE`)",
            key.project, key.env
        ))
    })
}

pub(super) fn get(ctx: &Ctx, key: &EnvKey, name: &str) -> Result<EnvValueView> {
    let version = latest_or_none(ctx, key)?;
    let values = ctx.store.open_env(key, version)?;
    let value = values.0.get(name).cloned().ok_or_else(|| {
        Error::not_found(format!(
            "{key} env version {version} has no key {name} (see `codeb env list {}`)",
            key.project
        ))
    })?;
    Ok(EnvValueView {
        project: key.project.clone(),
        environment: key.env.clone(),
        version,
        key: name.to_string(),
        value: SecretText(value),
    })
}

/// Quotes a value for a dotenv line that [`parse_dotenv`] reads back as it was.
fn dotenv_quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn export(ctx: &Ctx, key: &EnvKey) -> Result<EnvExportView> {
    let version = latest_or_none(ctx, key)?;
    let values = ctx.store.open_env(key, version)?;
    let mut text = format!("# {key} env version {version}\n");
    for (k, v) in &values.0 {
        text.push_str(&format!("{k}={}\n", dotenv_quote(v)));
    }
    Ok(EnvExportView {
        project: key.project.clone(),
        environment: key.env.clone(),
        version,
        text: SecretText(text),
    })
}

pub(super) fn history(ctx: &Ctx, key: &EnvKey) -> Result<Vec<EnvHistoryRow>> {
    Ok(ctx
        .store
        .env_versions(key)?
        .iter()
        .map(|v| rows(key, v))
        .collect())
}

pub(super) fn diff(ctx: &Ctx, key: &EnvKey, from: u64, to: u64) -> Result<EnvDiffView> {
    let versions = ctx.store.env_versions(key)?;
    let find = |n: u64| {
        versions.iter().find(|v| v.version == n).ok_or_else(|| {
            Error::from(crate::store::secrets::EnvError::NoVersion {
                key: key.clone(),
                version: n,
            })
        })
    };
    let (a, b) = (find(from)?, find(to)?);
    Ok(EnvDiffView {
        project: key.project.clone(),
        environment: key.env.clone(),
        from,
        to,
        added: b
            .digests
            .keys()
            .filter(|n| !a.digests.contains_key(*n))
            .cloned()
            .collect(),
        changed: b
            .digests
            .iter()
            .filter(|(n, d)| a.digests.get(*n).is_some_and(|x| x != *d))
            .map(|(n, _)| n.clone())
            .collect(),
        removed: a
            .digests
            .keys()
            .filter(|n| !b.digests.contains_key(*n))
            .cloned()
            .collect(),
    })
}

pub(super) fn backup(ctx: &Ctx) -> Result<EnvBackupView> {
    let b = ctx.store.env_backup()?;
    let mut envs: Vec<String> = b.versions.iter().map(|v| v.key().to_string()).collect();
    envs.dedup();
    Ok(EnvBackupView {
        versions: b.versions.len(),
        environments: envs,
        backup: SecretText(serde_json::to_string_pretty(&b).expect("backups serialize")),
    })
}

pub(super) fn restore_backup(ctx: &Ctx, text: &SecretText) -> Result<EnvBackupView> {
    let b: crate::store::secrets::Backup = serde_json::from_str(&text.0)
        .map_err(|e| Error::invalid(format!("the env backup is not one codeb wrote: {e}")))?;
    let n = ctx.store.env_restore_backup(&b)?;
    let mut envs: Vec<String> = b.versions.iter().map(|v| v.key().to_string()).collect();
    envs.dedup();
    Ok(EnvBackupView {
        versions: n,
        environments: envs,
        backup: SecretText::default(),
    })
}

/// The audit's steps for an env result: names and versions only.
pub(super) fn audit_steps(r: &super::Response) -> Option<Vec<String>> {
    use super::Response as R;
    Some(match r {
        R::EnvChanged(v) => {
            let mut s = vec![match v.version {
                Some(n) => format!("env version {n}"),
                None => "env unchanged".into(),
            }];
            for (what, names) in [
                ("added", &v.added),
                ("changed", &v.changed),
                ("removed", &v.removed),
                ("kept (protected)", &v.kept),
            ] {
                if !names.is_empty() {
                    s.push(format!("{what} {}", names.join(", ")));
                }
            }
            if let Some(o) = &v.rollout {
                s.extend(o.executed.iter().cloned());
            }
            s
        }
        R::EnvValue(v) => vec![format!("read {} of env version {}", v.key, v.version)],
        R::EnvExport(v) => vec![format!("exported env version {}", v.version)],
        R::EnvBackup(v) => vec![format!(
            "{} env versions of {}",
            v.versions,
            v.environments.join(", ")
        )],
        _ => return None,
    })
}

/// The exit code of an env change: its rollout's.
pub(super) fn change_converged(v: &EnvChangeView) -> bool {
    v.rollout.as_ref().is_none_or(|o: &OutcomeView| o.converged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_parse_with_quotes_comments_and_export() {
        let v = parse_dotenv(
            "app.env",
            "# comment\n\nA=1\nexport B = two words  # note\nC='single # kept'\nD=\"x\\ny\\\"z\"\nE=\n",
        )
        .unwrap();
        assert_eq!(v.0["A"], "1");
        assert_eq!(v.0["B"], "two words");
        assert_eq!(v.0["C"], "single # kept");
        assert_eq!(v.0["D"], "x\ny\"z");
        assert_eq!(v.0["E"], "");
    }

    #[test]
    fn a_bad_dotenv_line_is_named_by_file_and_line_without_its_value() {
        let e = parse_dotenv("app.env", "A=1\nthis is not a line\n").unwrap_err();
        assert!(
            e.message.starts_with("app.env:2: malformed line"),
            "{}",
            e.message
        );
        let e = parse_dotenv("app.env", "A=1\n\n1BAD=secret-value\n").unwrap_err();
        assert!(
            e.message.starts_with("app.env:3: invalid env key name"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("secret-value"));
        let e = parse_dotenv("app.env", "A=\"open secret-value\n").unwrap_err();
        assert!(e.message.starts_with("app.env:1:"), "{}", e.message);
        assert!(!e.message.contains("secret-value"));
        let e = parse_dotenv("app.env", "A=x\0y\n").unwrap_err();
        assert!(e.message.contains("NUL"), "{}", e.message);
        let big = format!("A={}\n", "x".repeat(MAX_VALUE_BYTES + 1));
        let e = parse_dotenv("app.env", &big).unwrap_err();
        assert!(e.message.contains("64 KiB"), "{}", e.message);
        let e = parse_dotenv("app.env", "A=1\nA=2\n").unwrap_err();
        assert!(e.message.contains("twice"), "{}", e.message);
    }

    #[test]
    fn export_quotes_read_back_as_the_values() {
        let tricky = "a \"b\" \\ $HOME\nnext\t# not a comment";
        let line = format!("K={}", dotenv_quote(tricky));
        assert_eq!(parse_dotenv("x", &line).unwrap().0["K"], tricky);
    }

    #[test]
    fn a_change_without_the_flag_keeps_protected_keys_and_names_them() {
        let protected = vec!["DATABASE_URL".to_string()];
        let current = EnvValues(BTreeMap::from([("DATABASE_URL".into(), "old".into())]));
        let proposed = EnvValues(BTreeMap::from([
            ("DATABASE_URL".into(), "new".into()),
            ("A".into(), "1".into()),
        ]));
        let (next, kept) = protect(&current, proposed.clone(), &protected, false);
        assert_eq!(next.0["DATABASE_URL"], "old");
        assert_eq!(next.0["A"], "1");
        assert_eq!(kept, vec!["DATABASE_URL"]);
        let (next, kept) = protect(&current, proposed, &protected, true);
        assert_eq!(next.0["DATABASE_URL"], "new");
        assert!(kept.is_empty());
        // An import without the key does not remove it.
        let (next, _) = protect(&current, EnvValues::default(), &protected, false);
        assert_eq!(next.0["DATABASE_URL"], "old");
    }

    #[test]
    fn key_names_are_posix_ish() {
        for ok in ["A", "_x", "DATABASE_URL", "a1"] {
            assert!(is_key_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É", "A=B"] {
            assert!(!is_key_name(bad), "{bad}");
        }
    }

    fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn field_changes_name_each_changed_variable_from_stored_and_sealed_inline_values_and_write_nothing(
    ) {
        use crate::model::{EnvRecord, Release, Slot, SlotRecord, SlotState};
        use crate::plan::fields::{Kind, VarChange};
        const CANARY: &str = "canary-svc-7e57-s3cret";
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut d = Desired::default();
        let mut want = crate::plan::tests::env("hello");
        let key = want.key.clone();
        let vals = |pairs: &[(&str, &str)]| {
            EnvValues(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        store
            .put_env_version(
                &key,
                None,
                &vals(&[("API_TOKEN", CANARY), ("KEEP", "k")]),
                "t",
                1,
                None,
            )
            .unwrap();
        let inline_old = crate::model::vars::InlineEnv::unbound(BTreeMap::from([
            ("INLINE_A".to_string(), CANARY.to_string()),
            ("INLINE_B".to_string(), "b".to_string()),
        ]));
        let bound = store.bind_inline(&key, &inline_old, false).unwrap();
        // As read back from a record: names and digest, no values.
        let bound: crate::model::vars::InlineEnv =
            serde_json::from_str(&serde_json::to_string(&bound).unwrap()).unwrap();
        assert!(bound.values().is_none());
        let running = Release::new("localhost/app:v1", None, BTreeMap::new(), 8080)
            .with_inline_env(bound)
            .with_env_version(Some(1));
        let mut rec = EnvRecord::new(key.clone(), want.host.clone(), want.hostname.clone(), 20000);
        rec.active = Some(Slot::Blue);
        rec.blue = SlotRecord {
            state: SlotState::Active,
            release: Some(running),
            ..SlotRecord::default()
        };
        store.put_env(rec, None).unwrap();
        store
            .put_env_version(
                &key,
                Some(1),
                &vals(&[
                    ("API_TOKEN", &format!("{CANARY}-2")),
                    ("KEEP", "k"),
                    ("ADDED", "a"),
                ]),
                "t",
                2,
                None,
            )
            .unwrap();
        want.release = Release::new(
            "localhost/app:v2",
            None,
            BTreeMap::from([
                ("INLINE_A".to_string(), format!("{CANARY}-3")),
                ("INLINE_B".to_string(), "b".to_string()),
            ]),
            8080,
        );
        d.envs.insert(key.clone(), want);
        bind(&store, &mut d, true).unwrap();
        let before = files(dir.path());
        let got = field_changes(&store, &d, &[]).unwrap();
        assert_eq!(files(dir.path()), before, "a diff writes nothing");
        assert_eq!(got.len(), 1);
        let c = &got[0];
        assert_eq!(c.kind, Kind::Changed);
        let fields: Vec<(&str, Option<&str>, Option<&str>)> = c
            .fields
            .iter()
            .map(|f| (f.name, f.from.as_deref(), f.to.as_deref()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("image", Some("localhost/app:v1"), Some("localhost/app:v2")),
                ("envVersion", Some("1"), Some("2")),
            ]
        );
        let vars: Vec<(&str, VarChange)> =
            c.vars.iter().map(|v| (v.name.as_str(), v.change)).collect();
        assert_eq!(
            vars,
            vec![
                ("ADDED", VarChange::Added),
                ("API_TOKEN", VarChange::Changed),
                ("INLINE_A", VarChange::Changed),
            ],
            "KEEP and INLINE_B kept their values"
        );
        let mut view = super::super::view::PlanView::default();
        view.set_changes(&got);
        let shown = format!("{view}{}{got:?}", serde_json::to_string(&view).unwrap());
        assert!(!shown.contains(CANARY), "{shown}");
    }
}
