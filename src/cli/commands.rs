//! One function per command. Each loads what it needs, calls `plan`/`reconcile`, writes its answer
//! to `out`, and returns the exit code.
//!
//! The same functions answer in the CLI's own process and, for a client, inside `codeb watch`
//! ([`Ctx`] says which store to use). A command that would act on environments takes them from the
//! daemon's queue first, so that it never runs beside a reconcile of the same environment.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::connect::{connect, connect_zones};
use super::output;
use super::remote::{self, Request};
use super::{default_state_dir, Cli, Command, Failure, Files};
use crate::model::dns::ZoneRef;
use crate::model::{desired::desired, Desired, EnvKey};
use crate::plan::{self, HostObservation, Note};
use crate::reconcile::controller::{ClaimGuard, Work};
use crate::reconcile::{self, HttpProber, Outcome, Target};
use crate::store::Store;

/// What a command reads besides its arguments: standard input, read once up front when a path is
/// `-`, so that it can be sent to the daemon if the store turns out to be held.
#[derive(Debug, Default)]
pub struct Input {
    pub stdin: Option<String>,
}

impl Input {
    fn read(command: &Command) -> anyhow::Result<Input> {
        let paths: &[PathBuf] = match command {
            Command::Apply { files, .. } | Command::Diff { files } => &files.paths,
            Command::Delete { paths, .. } => paths,
            _ => &[],
        };
        if !paths.iter().any(|p| p.as_os_str() == "-") {
            return Ok(Input::default());
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
            .map_err(|e| Failure::invalid(format!("cannot read standard input: {e}")))?;
        Ok(Input { stdin: Some(text) })
    }
}

/// Where a command gets its store.
pub enum Ctx<'a> {
    /// This process opens the store when the command needs it.
    Local {
        dir: PathBuf,
        store: Option<Arc<Store>>,
    },
    /// Inside `codeb watch`, answering a client.
    Daemon(&'a super::watch::Daemon),
}

/// The store is held by another process; `codeb watch` may answer instead.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Held(crate::store::Error);

impl Ctx<'_> {
    fn store(&mut self) -> anyhow::Result<Arc<Store>> {
        match self {
            Ctx::Local { dir, store } => {
                if let Some(s) = store {
                    return Ok(s.clone());
                }
                let opened = match Store::open(dir) {
                    Err(e @ crate::store::Error::Locked { .. }) => return Err(Held(e).into()),
                    other => Arc::new(
                        other.with_context(|| format!("opening the store in {}", dir.display()))?,
                    ),
                };
                *store = Some(opened.clone());
                Ok(opened)
            }
            Ctx::Daemon(d) => Ok(d.store.clone()),
        }
    }

    /// In the daemon, waits until no reconcile runs on `works` and holds them off until the guard
    /// drops. Here, nothing else runs: no claim.
    async fn claim(&self, works: Vec<Work>) -> anyhow::Result<Option<ClaimGuard>> {
        match self {
            Ctx::Local { .. } => Ok(None),
            Ctx::Daemon(d) => d.controller.claim(works).await.map(Some).ok_or_else(|| {
                Failure::unconverged("codeb watch is stopping; nothing was done").into()
            }),
        }
    }
}

/// Runs the command line: here, or, when `codeb watch` holds the store, in the daemon.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    if let Command::Watch(args) = cli.command {
        return super::watch::run(state_dir, args).await;
    }
    let input = Input::read(&cli.command)?;
    let mut out = Vec::new();
    let mut ctx = Ctx::Local {
        dir: state_dir.clone(),
        store: None,
    };
    let result = execute(cli.command, &mut ctx, &input, &mut out).await;
    match result {
        Err(e) if e.is::<Held>() => {
            // Nothing was done or printed yet (the store is opened before anything acts): the
            // daemon answers the whole command.
            let req = Request {
                argv: std::env::args_os()
                    .skip(1)
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
                cwd: std::env::current_dir().unwrap_or_default(),
                stdin: input.stdin,
            };
            match remote::forward(&state_dir, &req).await {
                Ok(answer) => {
                    std::io::stdout().write_all(answer.stdout.as_bytes())?;
                    std::io::stderr().write_all(answer.stderr.as_bytes())?;
                    Ok(answer.code)
                }
                Err(remote::Error::NoDaemon { .. }) => Err(e),
                Err(other) => Err(other.into()),
            }
        }
        result => {
            std::io::stdout().write_all(&out)?;
            result
        }
    }
}

/// Runs one command with the store of `ctx`, writing what it prints to `out`.
pub async fn execute(
    command: Command,
    ctx: &mut Ctx<'_>,
    input: &Input,
    out: &mut Vec<u8>,
) -> anyhow::Result<u8> {
    match command {
        Command::Watch(_) => {
            Err(Failure::invalid("codeb watch is already running for this state directory").into())
        }
        Command::Apply {
            files,
            dry_run,
            prune,
            allow_empty,
        } => {
            let d = load(&files, input)?;
            let store = ctx.store()?;
            let remove = if prune {
                prunable(&d, &store, allow_empty)?
            } else {
                vec![]
            };
            let zones = apply_zones(&d, &store, &remove)?;
            let _claim = if dry_run {
                None
            } else {
                let hosts = d.hosts.keys().cloned().map(Work::Host);
                let envs = d.envs.keys().chain(&remove).cloned().map(Work::Env);
                let zones = managed(&zones).map(Work::Zone);
                ctx.claim(hosts.chain(envs).chain(zones).collect()).await?
            };
            let code = apply(&d, &store, &zones, remove, dry_run, out).await?;
            if let Ctx::Daemon(daemon) = ctx {
                for note in daemon.apply_notes(&d) {
                    writeln!(out, "· {note}")?;
                }
            }
            Ok(code)
        }
        Command::Diff { files } => {
            let d = load(&files, input)?;
            let store = ctx.store()?;
            let mut backends = connect(d.hosts.values())?;
            backends.zones = connect_zones(d.zones.values())?;
            let observed = reconcile::observe(&backends).await;
            let p = plan::plan(&d, &observed, &store.load()?, &[], reconcile::now_ms());
            write!(out, "{p}")?;
            if p.notes.iter().any(Note::is_unobserved) {
                return Ok(3);
            }
            Ok(if p.is_empty() { 0 } else { 1 })
        }
        Command::Get {
            what,
            output: format,
        } => {
            let store = ctx.store()?;
            output::get(&store.load()?, &store.switch_modes()?, what, format, out)?;
            Ok(0)
        }
        Command::Describe { name, .. } => {
            let store = ctx.store()?;
            output::describe(&store, &name, out)?;
            Ok(0)
        }
        Command::Promote { project, env } => {
            let key = EnvKey::new(project, env);
            let _claim = ctx.claim(vec![Work::Env(key.clone())]).await?;
            {
                let store = ctx.store()?;
                switch(&store, key, false, out).await
            }
        }
        Command::Rollback { project, env } => {
            let key = EnvKey::new(project, env);
            let _claim = ctx.claim(vec![Work::Env(key.clone())]).await?;
            {
                let store = ctx.store()?;
                switch(&store, key, true, out).await
            }
        }
        Command::Delete { what, name, paths } => {
            let store = ctx.store()?;
            let recorded = store.load()?;
            let projects: BTreeSet<String> = match (what, name, paths.is_empty()) {
                (Some(_), Some(name), true) => BTreeSet::from([name]),
                (None, None, false) => load(&Files { paths }, input)?
                    .envs
                    .keys()
                    .map(|k| k.project.clone())
                    .collect(),
                _ => {
                    return Err(Failure::invalid(
                        "use `codeb delete project NAME` or `codeb delete -f PATH…`",
                    )
                    .into())
                }
            };
            let keys: Vec<EnvKey> = recorded
                .envs
                .keys()
                .filter(|k| projects.contains(&k.project))
                .cloned()
                .collect();
            if keys.is_empty() {
                let names: Vec<_> = projects.into_iter().collect();
                return Err(Failure::invalid(format!(
                    "no recorded project named {}",
                    names.join(", ")
                ))
                .into());
            }
            if let Ctx::Daemon(daemon) = ctx {
                daemon.check_delete(&keys)?;
            }
            let hostnames = keys
                .iter()
                .filter_map(|k| recorded.envs.get(k))
                .map(|r| r.hostname.as_str());
            let zones = plan::dns::zones_for(hostnames, &recorded.zones);
            let works = keys.iter().cloned().map(Work::Env);
            let claim = ctx
                .claim(works.chain(managed(&zones).map(Work::Zone)).collect())
                .await?;
            let hosts: BTreeSet<&String> = keys
                .iter()
                .filter_map(|k| recorded.envs.get(k))
                .map(|r| &r.host)
                .collect();
            let mut backends =
                connect(recorded.hosts.values().filter(|h| hosts.contains(&h.name)))?;
            backends.zones = connect_zones(zones.values())?;
            let observed = reconcile::observe(&backends).await;
            // Planned from the records as they are now that the keys are held.
            let recorded = store.load()?;
            let p = plan::plan_delete(&keys, &observed, &recorded);
            let report = reconcile::execute(&p, &store, &backends, &HttpProber::new()).await?;
            drop(claim);
            // A name the deleted environments held may be wanted by another one: its zone looks.
            if let Ctx::Daemon(daemon) = ctx {
                for zone in managed(&zones) {
                    daemon
                        .controller
                        .trigger(Work::Zone(zone), std::time::Duration::ZERO);
                }
            }
            print_outcome(
                &Outcome {
                    executed: report.executed,
                    failures: report.failures,
                    notes: p.notes,
                    ..Outcome::default()
                },
                out,
            )
        }
    }
}

/// Loads and validates manifests; any error is exit 2 with nothing applied.
fn load(files: &Files, input: &Input) -> anyhow::Result<Desired> {
    let m = crate::spec::load_paths_with_stdin(&files.paths, input.stdin.as_deref())
        .map_err(|e| Failure::invalid(e.to_string()))?;
    Ok(desired(&m))
}

fn prunable(d: &Desired, store: &Store, allow_empty: bool) -> anyhow::Result<Vec<EnvKey>> {
    let recorded = store.load()?;
    let remove: Vec<EnvKey> = recorded
        .envs
        .keys()
        .filter(|k| !d.envs.contains_key(*k))
        .cloned()
        .collect();
    if d.envs.is_empty() && !remove.is_empty() && !allow_empty {
        return Err(Failure::invalid(format!(
            "--prune would remove every project ({} environments) because the manifests declare none; add --allow-empty if that is meant",
            remove.len()
        ))
        .into());
    }
    Ok(remove)
}

async fn apply(
    d: &Desired,
    store: &Store,
    zones: &BTreeMap<String, ZoneRef>,
    remove: Vec<EnvKey>,
    dry_run: bool,
    out: &mut Vec<u8>,
) -> anyhow::Result<u8> {
    let mut backends = connect(d.hosts.values())?;
    backends.zones = connect_zones(zones.values())?;
    let outcome = reconcile::converge(
        Target {
            desired: d,
            remove,
            dry_run,
        },
        store,
        &backends,
        &HttpProber::new(),
    )
    .await?;
    if dry_run {
        write!(out, "{}", outcome.first_plan)?;
        if outcome.first_plan.is_empty() {
            writeln!(out, "nothing to do")?;
        }
        return Ok(
            if outcome.first_plan.notes.iter().any(Note::is_unobserved) {
                1
            } else {
                0
            },
        );
    }
    print_outcome(&outcome, out)
}

/// The zones an apply writes: every declared managed Zone, and recorded ones no longer declared
/// that hold a pruned environment's names (its records go too).
fn apply_zones(
    d: &Desired,
    store: &Store,
    remove: &[EnvKey],
) -> anyhow::Result<BTreeMap<String, ZoneRef>> {
    let mut zones = d.zones.clone();
    if !remove.is_empty() {
        let recorded = store.load()?;
        let hostnames = remove
            .iter()
            .filter_map(|k| recorded.envs.get(k))
            .map(|r| r.hostname.as_str());
        for (name, z) in plan::dns::zones_for(hostnames, &recorded.zones) {
            zones.entry(name).or_insert(z);
        }
    }
    Ok(zones)
}

/// The names of the managed zones among `zones`.
fn managed(zones: &BTreeMap<String, ZoneRef>) -> impl Iterator<Item = String> + '_ {
    zones
        .values()
        .filter(|z| z.is_managed())
        .map(|z| z.name.clone())
}

fn print_outcome(outcome: &Outcome, out: &mut Vec<u8>) -> anyhow::Result<u8> {
    for step in &outcome.executed {
        writeln!(out, "✓ {step}")?;
    }
    for f in &outcome.failures {
        writeln!(
            out,
            "✗ {}: {}",
            f.step,
            crate::backend::error_chain(&f.error)
        )?;
    }
    for note in &outcome.notes {
        let mark = if note.is_problem() { "!" } else { "·" };
        writeln!(out, "{mark} {note}")?;
    }
    if outcome.converged() {
        if outcome.executed.is_empty() {
            writeln!(out, "converged: nothing to do")?;
        } else {
            writeln!(out, "converged")?;
        }
        Ok(0)
    } else {
        writeln!(out, "not converged")?;
        Ok(1)
    }
}

async fn switch(
    store: &Store,
    key: EnvKey,
    rollback: bool,
    out: &mut Vec<u8>,
) -> anyhow::Result<u8> {
    let recorded = store.load()?;
    let rec = recorded.envs.get(&key).ok_or_else(|| {
        Failure::invalid(format!(
            "no recorded environment {key} (see `codeb get projects`)"
        ))
    })?;
    let host = recorded.hosts.get(&rec.host).ok_or_else(|| {
        Failure::unconverged(format!("host {} of {key} is not recorded", rec.host))
    })?;
    let backends = connect([host])?;
    let observed = match backends.hosts.get(&host.name) {
        Some(b) => reconcile::observe_env(&host.name, b, &key).await,
        None => reconcile::observe(&backends).await,
    };
    reconcile::record_switch_modes(store, &observed)?;
    let view = match observed.hosts.get(&host.name) {
        Some(obs @ HostObservation::Reachable { .. }) => obs.view().expect("reachable"),
        Some(HostObservation::Unreachable { error }) => {
            return Err(Failure::unconverged(format!("host {}: {error}", host.name)).into())
        }
        None => {
            return Err(Failure::unconverged(format!("host {} was not observed", host.name)).into())
        }
    };
    let now = reconcile::now_ms();
    let p = if rollback {
        plan::plan_rollback(rec, host, view, now)
    } else {
        plan::plan_promote(rec, host, view, now)
    };
    let p = p.map_err(|e| Failure::unconverged(e.to_string()))?;
    let report = reconcile::execute(&p, store, &backends, &HttpProber::new()).await?;
    print_outcome(
        &Outcome {
            executed: report.executed,
            failures: report.failures,
            ..Outcome::default()
        },
        out,
    )
}
