//! Reconcile: observe the hosts and zones, plan, execute, repeat until nothing is left to do.
//!
//! The executor carries out a plan's steps in order and makes no choices: it journals each step's
//! intent, performs it, and journals the outcome. When a step fails, the remaining steps of the same
//! environment are skipped (others carry on) and the failure is reported. A zone whose write failed
//! is left out of the remaining rounds of the apply, so that DNS never holds back container and
//! Caddy work.
//!
//! `converge` is what `codeb apply` runs once; `controller` is the loop of `codeb watch`, which
//! reconciles one environment, host sweep or DNS zone at a time per key from a `queue`, with a
//! per-key `backoff`, and records in `health` what it could observe of each host and zone. Both
//! count into the process's metrics (`crate::metrics`).

pub mod backoff;
pub mod connect;
pub mod controller;
pub mod data;
mod execute;
pub(crate) mod fault;
#[cfg(test)]
mod fixtures;
pub mod health;
mod observe;
mod probe;
pub mod progress;
pub mod queue;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use execute::{execute, execute_until, execute_with, Report, StepFailure};
pub use observe::{observe, observe_env, observe_env_parts, observe_env_warm, HostParts};
pub use probe::{Ahead, HttpProber, Prober};
pub use progress::{Control, Event, Progress};

use crate::backend::powerdns::PowerDns;
use crate::backend::{Dns, Kernel, Proxy, Runtime};
use crate::model::{Desired, EnvKey, HostRef, SwitchMode};
use crate::plan::{self, Note, Plan};
use crate::store::Store;

/// Reconcile errors. Backend errors are reported per step in [`Report`] rather than returned.
///
/// Worth a retry (see [`Error::retryable`]): a store `Conflict`, [`Error::DnsChanged`] and
/// [`Error::MissingRecord`] (a re-plan from the fresh state fixes them), a backend error its
/// backend calls retryable, and a slot that is not healthy (yet). Not worth one until something
/// changes: any other store error, a backend error that is not retryable, a host or zone that
/// is not connected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// One of the host's backends (Podman, Caddy or the kernel's NAT rules) failed.
    #[error("host {host}: {source}")]
    Backend {
        host: String,
        source: crate::backend::Error,
    },
    #[error("{slot} never answered 2xx/3xx on {url} within {timeout}: {last}")]
    Unhealthy {
        slot: crate::model::Slot,
        url: String,
        timeout: String,
        last: String,
    },
    #[error("refusing to switch traffic to {slot}: {url} does not answer 2xx/3xx ({last})")]
    NotHealthy {
        slot: crate::model::Slot,
        url: String,
        last: String,
    },
    #[error("zone {zone}: {source}")]
    Dns {
        zone: String,
        source: crate::backend::Error,
    },
    /// The zone changed between observation and write in a way that makes the write unsafe.
    #[error(
        "zone {zone} changed since it was planned ({reason}); nothing was written, plan again"
    )]
    DnsChanged { zone: String, reason: String },
    #[error("zone {zone} is not connected")]
    UnknownZone { zone: String },
    #[error("no record for {key}; plan again")]
    MissingRecord { key: EnvKey },
    #[error("host {host} is not connected")]
    UnknownHost { host: String },
    /// The container's env could not be read (its key file, a sealed version): a person acts.
    #[error(transparent)]
    Env(#[from] crate::store::secrets::EnvError),
    /// The run's deadline (`apply --timeout`) passed while the step waited: see
    /// [`progress::Control`] for what is left as it was.
    #[error("stopped {what}: the run's --timeout was reached")]
    Stopped { what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when the same reconcile may succeed later with nothing else changed; see the enum's
    /// documentation for the reasons per variant.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Store(e) => matches!(e, crate::store::Error::Conflict { .. }),
            Error::Backend { source, .. } | Error::Dns { source, .. } => source.retryable(),
            Error::Unhealthy { .. }
            | Error::NotHealthy { .. }
            | Error::DnsChanged { .. }
            | Error::MissingRecord { .. }
            | Error::Stopped { .. } => true,
            Error::UnknownZone { .. } | Error::UnknownHost { .. } => false,
            // A key file comes back when a person puts it back; a resync then finds it.
            Error::Env(_) => false,
        }
    }
}

/// The backends of one host.
pub struct HostBackends<R, P, K> {
    pub runtime: R,
    pub proxy: P,
    /// The kernel's NAT rules, where the host's service addresses live.
    pub kernel: K,
    /// The host's `publishAddress`, when it is an IPv4 address: where codeb's kernel rules
    /// publish slot ports (a loopback address), or where Podman publishes them.
    pub publish: Option<std::net::Ipv4Addr>,
    /// The owner this codeb marks the host with and expects on it; `None`: not checked (fakes).
    pub owner: Option<crate::model::observed::Owner>,
    /// A remote host's agent session: its health probes are made there, where the slots are
    /// (see [`Prober::probe_on`]). `None`: a local host, probed from this machine.
    pub agent: Option<std::sync::Arc<crate::backend::remote::Session>>,
}

/// Every connected host, by name, and every connected managed zone, by domain.
///
/// Each client is shared (`Arc`), so that the daemon, which keeps one `Backends` per host and per
/// zone, can put together the few that one reconcile needs (a migrating environment's two hosts
/// and its zones: [`Backends::joined`]) without connecting again.
pub struct Backends<R, P, K, D = PowerDns> {
    pub hosts: BTreeMap<String, Arc<HostBackends<R, P, K>>>,
    pub zones: BTreeMap<String, Arc<D>>,
}

impl<R, P, K, D> Backends<R, P, K, D> {
    /// Hosts only: no zone is observed, planned or written.
    pub fn hosts(hosts: BTreeMap<String, HostBackends<R, P, K>>) -> Self {
        Backends {
            hosts: hosts.into_iter().map(|(n, b)| (n, Arc::new(b))).collect(),
            zones: BTreeMap::new(),
        }
    }

    /// Adds a managed zone's client.
    pub fn with_zone(mut self, zone: impl Into<String>, dns: D) -> Self {
        self.zones.insert(zone.into(), Arc::new(dns));
        self
    }

    /// The hosts and zones of every one of `parts`, sharing their clients (the last part wins
    /// a name held twice).
    pub fn joined<'a>(parts: impl IntoIterator<Item = &'a Self>) -> Self
    where
        Self: 'a,
    {
        let mut out = Backends {
            hosts: BTreeMap::new(),
            zones: BTreeMap::new(),
        };
        for p in parts {
            out.hosts
                .extend(p.hosts.iter().map(|(n, b)| (n.clone(), b.clone())));
            out.zones
                .extend(p.zones.iter().map(|(n, d)| (n.clone(), d.clone())));
        }
        out
    }
}

impl Error {
    /// The zone of a DNS step's failure.
    pub fn zone(&self) -> Option<&str> {
        match self {
            Error::Dns { zone, .. }
            | Error::DnsChanged { zone, .. }
            | Error::UnknownZone { zone } => Some(zone),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch: the only clock the planner sees, read here at the edge.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What an apply ended with.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every step executed, in order, as printed.
    pub executed: Vec<String>,
    pub failures: Vec<StepFailure>,
    /// The notes of the last plan.
    pub notes: Vec<Note>,
    /// The first plan (what `--dry-run` shows).
    pub first_plan: Plan,
    /// The deadline passed: the apply stopped between steps (or cut a wait short) with work left.
    pub timed_out: bool,
}

impl Outcome {
    /// Converged: no step failed, the last plan has no problem, and the deadline did not stop it.
    pub fn converged(&self) -> bool {
        self.failures.is_empty() && !self.notes.iter().any(Note::is_problem) && !self.timed_out
    }
}

/// How many observe → plan → execute rounds an apply may take. A deploy takes three (deploy and
/// probe, switch and routes, nothing left); drift repair adds at most one.
const MAX_ROUNDS: usize = 8;

/// What to converge: the desired state, and environments to remove.
pub struct Target<'a> {
    pub desired: &'a Desired,
    /// Recorded environments to delete (pruned or deleted).
    pub remove: Vec<EnvKey>,
    pub dry_run: bool,
}

/// Converges the hosts to `target`: observe → plan → execute until a plan has no step.
///
/// # Guarantees
/// - A converged system gets no mutating call: the first plan is empty, so nothing executes.
/// - A failed step does not stop the apply while later rounds make progress; every failure is in
///   the outcome, which is then not converged.
/// - `dry_run` observes and plans once, and changes nothing.
pub async fn converge<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    target: Target<'_>,
    store: &Store,
    backends: &Backends<R, P, K, D>,
    prober: &H,
) -> Result<Outcome> {
    converge_with(target, store, backends, prober, &Control::default()).await
}

/// As [`converge`], reporting progress to `control.progress` and stopping at `control.deadline`
/// (no further round or step; the outcome says `timed_out`).
pub async fn converge_with<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    target: Target<'_>,
    store: &Store,
    backends: &Backends<R, P, K, D>,
    prober: &H,
    control: &Control,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    // A dry run writes nothing, not even what the manifests name.
    if !target.dry_run {
        store.put_zones(target.desired.zones.values())?;
    }
    // Zones whose write failed in this apply, with why: not planned again until the next apply.
    let mut failed_zones: BTreeMap<String, String> = BTreeMap::new();
    let mut held: Vec<Note> = Vec::new();
    for round in 0..MAX_ROUNDS {
        if !target.dry_run && control.expired() {
            outcome.timed_out = true;
            break;
        }
        let recorded = store.recorded()?;
        let mut observed = observe(backends).await;
        if !target.dry_run {
            record_hosts(store, target.desired, &observed)?;
            record_switch_modes(store, &observed)?;
        }
        for (zone, error) in &failed_zones {
            observed.zones.insert(
                zone.clone(),
                plan::ZoneObservation::Unreachable {
                    error: error.clone(),
                    retryable: false,
                },
            );
        }
        let plan = plan::plan(
            target.desired,
            &observed,
            &recorded,
            &target.remove,
            now_ms(),
        );
        if round == 0 {
            // What the hosts hold that nothing here declares or records is named, never touched
            // (the rounds change none of it: it is left, or pruned in `remove`).
            held = plan::undeclared(target.desired, &observed, &recorded, &target.remove);
            outcome.first_plan = plan.clone();
            outcome.first_plan.notes.extend(held.iter().cloned());
        }
        outcome.notes = plan.notes.clone();
        outcome.notes.extend(held.iter().cloned());
        if target.dry_run || plan.is_empty() {
            break;
        }
        let report = execute_with(&plan, store, backends, prober, control, &|| false).await?;
        let progressed = !report.executed.is_empty();
        outcome.executed.extend(report.executed);
        // A zone whose write failed is not planned again in this apply (it would fail the same
        // way); the rounds go on for the rest.
        for f in &report.failures {
            if let Some(zone) = f.error.zone() {
                let error = f.error.to_string();
                let reason = error
                    .trim_start_matches(&format!("zone {zone}: "))
                    .to_string();
                failed_zones.insert(
                    zone.to_string(),
                    format!("its write failed earlier in this apply: {reason}"),
                );
            }
        }
        let failed = !report.failures.is_empty();
        outcome.failures.extend(report.failures);
        if control.expired() {
            outcome.timed_out = true;
            break;
        }
        // After a failure, plan again: a failed health check leaves work that follows from it (the
        // failed slot's preview route goes), and the planner never redeploys a failed release, so
        // this cannot loop hot. A round that failed without any step succeeding stops the apply (a
        // backend that refuses every write would fail the same way again).
        if failed && !progressed {
            break;
        }
    }
    Ok(outcome)
}

/// Records the declared Hosts (so that `delete` and `get` work without the manifests), as
/// declared; written only on a change. A recorded Host that could not be observed keeps its
/// record as it was: a declaration that cannot reach it (a `knownHosts` pinning another key, a
/// wrong address or credential) never replaces the one a later `delete` needs to reach it. A
/// Host not recorded yet is recorded whether or not it answered (`get hosts` then shows it
/// `Unknown`, and `host adopt` finds a host another codeb owns).
pub fn record_hosts(store: &Store, desired: &Desired, observed: &plan::Observed) -> Result<()> {
    let recorded = store.hosts()?;
    let seen: Vec<&HostRef> = desired
        .hosts
        .values()
        .filter(|h| {
            !recorded.contains_key(&h.name)
                || observed
                    .hosts
                    .get(&h.name)
                    .is_some_and(|o| o.view().is_some())
        })
        .collect();
    store.put_hosts(seen)?;
    Ok(())
}

/// Records how each observed host switches traffic, for `get hosts` (written only on a change).
pub fn record_switch_modes(store: &Store, observed: &plan::Observed) -> Result<()> {
    let modes: BTreeMap<String, (SwitchMode, Option<String>)> = observed
        .hosts
        .iter()
        .filter_map(|(name, obs)| {
            let kernel = obs.view()?.kernel;
            Some((
                name.clone(),
                (kernel.mode(), kernel.reason().map(str::to_string)),
            ))
        })
        .collect();
    store.put_switch_modes(&modes)?;
    Ok(())
}
