//! One function per command. Each loads what it needs, calls `plan`/`reconcile`, prints, and
//! returns the exit code.

use std::collections::BTreeSet;

use anyhow::Context;

use super::connect::{connect, connect_zones};
use super::output;
use super::{default_state_dir, Cli, Command, Failure, Files};
use crate::model::{desired::desired, Desired, EnvKey};
use crate::plan::{self, HostObservation, Note};
use crate::reconcile::{self, HttpProber, Outcome, Target};
use crate::store::Store;

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let open = || {
        Store::open(&state_dir)
            .with_context(|| format!("opening the store in {}", state_dir.display()))
    };
    match cli.command {
        Command::Apply {
            files,
            dry_run,
            prune,
            allow_empty,
        } => {
            let d = load(&files)?;
            let store = open()?;
            let remove = if prune {
                prunable(&d, &store, allow_empty)?
            } else {
                vec![]
            };
            apply(&d, &store, remove, dry_run).await
        }
        Command::Diff { files } => {
            let d = load(&files)?;
            let store = open()?;
            let mut backends = connect(d.hosts.values())?;
            backends.zones = connect_zones(d.zones.values())?;
            let observed = reconcile::observe(&backends).await;
            let p = plan::plan(&d, &observed, &store.load()?, &[], reconcile::now_ms());
            print!("{p}");
            if p.notes.iter().any(Note::is_unobserved) {
                return Ok(3);
            }
            Ok(if p.is_empty() { 0 } else { 1 })
        }
        Command::Get {
            what,
            output: format,
        } => {
            let store = open()?;
            output::get(&store.load()?, &store.switch_modes()?, what, format)?;
            Ok(0)
        }
        Command::Describe { name, .. } => {
            let store = open()?;
            output::describe(&store, &name)?;
            Ok(0)
        }
        Command::Promote { project, env } => {
            switch(&open()?, EnvKey::new(project, env), false).await
        }
        Command::Rollback { project, env } => {
            switch(&open()?, EnvKey::new(project, env), true).await
        }
        Command::Delete { what, name, paths } => {
            let store = open()?;
            let recorded = store.load()?;
            let projects: BTreeSet<String> = match (what, name, paths.is_empty()) {
                (Some(_), Some(name), true) => BTreeSet::from([name]),
                (None, None, false) => load(&Files { paths })?
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
            let hosts: BTreeSet<&String> = keys
                .iter()
                .filter_map(|k| recorded.envs.get(k))
                .map(|r| &r.host)
                .collect();
            let mut backends =
                connect(recorded.hosts.values().filter(|h| hosts.contains(&h.name)))?;
            let hostnames = keys
                .iter()
                .filter_map(|k| recorded.envs.get(k))
                .map(|r| r.hostname.as_str());
            backends.zones =
                connect_zones(plan::dns::zones_for(hostnames, &recorded.zones).values())?;
            let observed = reconcile::observe(&backends).await;
            let p = plan::plan_delete(&keys, &observed, &recorded);
            let report = reconcile::execute(&p, &store, &backends, &HttpProber::new()).await?;
            print_outcome(&Outcome {
                executed: report.executed,
                failures: report.failures,
                notes: p.notes,
                ..Outcome::default()
            })
        }
    }
}

/// Loads and validates manifests; any error is exit 2 with nothing applied.
fn load(files: &Files) -> anyhow::Result<Desired> {
    let m = crate::spec::load_paths(&files.paths).map_err(|e| Failure::invalid(e.to_string()))?;
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
    remove: Vec<EnvKey>,
    dry_run: bool,
) -> anyhow::Result<u8> {
    let mut backends = connect(d.hosts.values())?;
    backends.zones = connect_zones(apply_zones(d, store, &remove)?.values())?;
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
        print!("{}", outcome.first_plan);
        if outcome.first_plan.is_empty() {
            println!("nothing to do");
        }
        return Ok(
            if outcome.first_plan.notes.iter().any(Note::is_unobserved) {
                1
            } else {
                0
            },
        );
    }
    print_outcome(&outcome)
}

/// The zones an apply writes: every declared managed Zone, and recorded ones no longer declared
/// that hold a pruned environment's names (its records go too).
fn apply_zones(
    d: &Desired,
    store: &Store,
    remove: &[EnvKey],
) -> anyhow::Result<std::collections::BTreeMap<String, crate::model::dns::ZoneRef>> {
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

fn print_outcome(outcome: &Outcome) -> anyhow::Result<u8> {
    for step in &outcome.executed {
        println!("✓ {step}");
    }
    for f in &outcome.failures {
        println!("✗ {}: {}", f.step, output::chain(&f.error));
    }
    for note in &outcome.notes {
        let mark = if note.is_problem() { "!" } else { "·" };
        println!("{mark} {note}");
    }
    if outcome.converged() {
        if outcome.executed.is_empty() {
            println!("converged: nothing to do");
        } else {
            println!("converged");
        }
        Ok(0)
    } else {
        println!("not converged");
        Ok(1)
    }
}

async fn switch(store: &Store, key: EnvKey, rollback: bool) -> anyhow::Result<u8> {
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
    let observed = reconcile::observe(&backends).await;
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
    print_outcome(&Outcome {
        executed: report.executed,
        failures: report.failures,
        ..Outcome::default()
    })
}
