//! The planner: a pure function from what the manifests want, what runs on the hosts and what the
//! store recorded, to the ordered steps that converge them.
//!
//! No I/O, no clock (`now_ms` is passed in), no randomness. `codeb diff`, `apply --dry-run`,
//! `apply`, `promote`, `rollback` and `delete` all go through the functions here; the executor
//! carries the steps out without making choices.
//!
//! Order of a host's steps: Caddy server and the kernel's hook, then per environment container
//! work, the traffic switch (the record, then the service address's NAT rule), the routes, and last
//! the removal of retired slots, so that no route or rule ever points at a container that was
//! removed first. DNS steps (see [`dns`]: one write per zone) come before all host steps: they are
//! independent of them, and a deleted project's names stop resolving before its routes and
//! containers go.

mod adopt;
pub mod api;
pub mod data;
mod display;
pub mod dns;
mod env;
pub mod fields;
pub mod migrate;
mod service;
mod switch;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use smallvec::SmallVec;

use crate::model::observed::{
    ObservedAccessLog, ObservedContainer, ObservedLoopback, ObservedProxy, ObservedServices,
};
use crate::model::ownership::{
    belongs_to, LABEL_ENVIRONMENT, LABEL_PORT, LABEL_PROJECT, ROUTE_ID_PREFIX,
};
use crate::model::ports::PortSet;
use crate::model::writes::{
    AccessLog, ContainerSpec, HookWrite, LoopbackWrite, Route, ServerSpec, ServiceWrite, TlsMode,
};
use crate::model::{
    Desired, DesiredEnv, EnvKey, EnvRecord, HostRef, MigrationPhase, Recorded, Release, Slot,
    SwitchMode,
};

pub use dns::{DnsChange, ZoneObservation};
pub use env::{container_spec, plan_env, route_diff, routes, switch as switch_record, DRAIN_MS};
pub use service::{service_address, service_diff};
pub use switch::{plan_promote, plan_rollback, probe_ahead, SwitchError};

/// The name of codeb's HTTP server in every Caddy.
pub const SERVER_NAME: &str = "codeb";
/// The Podman network every codeb container joins.
pub const NETWORK: &str = "codeb-main";

/// What one host looked like when it was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostObservation {
    Reachable {
        containers: Vec<ObservedContainer>,
        proxy: ObservedProxy,
        kernel: KernelObservation,
        /// Whether the host carries this codeb's owner mark (a host marked by another codeb is
        /// observed as unreachable: nothing is planned there).
        owner: crate::model::observed::OwnerMark,
    },
    /// A backend could not be read; the message names the Host, the endpoint and how to start it.
    Unreachable { error: String },
}

impl HostObservation {
    /// The observation's parts, when the host was reachable.
    pub fn view(&self) -> Option<HostView<'_>> {
        match self {
            HostObservation::Reachable {
                containers,
                proxy,
                kernel,
                owner,
            } => Some(HostView {
                containers,
                proxy,
                kernel,
                owner: *owner,
            }),
            HostObservation::Unreachable { .. } => None,
        }
    }
}

/// A reachable host's observation, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct HostView<'a> {
    pub containers: &'a [ObservedContainer],
    pub proxy: &'a ObservedProxy,
    pub kernel: &'a KernelObservation,
    pub owner: crate::model::observed::OwnerMark,
}

/// Whether codeb manages the kernel's NAT rules on a host, and what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelObservation {
    /// Service addresses live on `gateway` (codeb's network's address on the host): each
    /// environment's is `gateway:base_port`, and promote and rollback change its NAT rule only.
    Managed {
        gateway: Ipv4Addr,
        services: ObservedServices,
        /// Set where the host publishes slot ports on a loopback address: codeb's rules publish
        /// them, not Podman.
        publish: Option<Box<Published>>,
        /// codeb's tenant isolation (the table `bridge codeb`: no frame between a container codeb
        /// created and another port of a bridge) is in place, exactly as codeb writes it.
        isolated: bool,
        /// codeb's network's bridge (`None` when Podman does not name it).
        bridge: Option<Box<ObservedBridge>>,
    },
    /// Kernel mode on a host whose network does not exist yet (a fresh host): the plan creates
    /// the network first, and the kernel-mode steps follow in the next round, once its gateway is
    /// known. Never a Caddy-mode deploy first: the mode is the host's configuration's, whether or
    /// not a container runs.
    NoNetwork,
    /// The rules cannot be managed (no privilege, no nf_tables, rootless or remote Podman, or
    /// `CODEB_SWITCH=caddy-admin`): hostname routes dial the active slot, and a switch is a Caddy
    /// config change.
    Unavailable {
        reason: String,
        /// codeb's rules on the host's publish address, where codeb may still read and change this
        /// machine's rules (switching through Caddy was asked for): a kernel-mode run's slot port
        /// rule would catch the slot's port before Podman's, so each environment's are removed
        /// before it deploys.
        leftover: Option<Box<Published>>,
    },
}

/// codeb's network's bridge on a kernel-mode host, for its MAC: a Linux bridge takes the lowest
/// MAC of its ports unless one was set, so a container joining or leaving changes the gateway's
/// MAC under the other containers' ARP caches, and their answers to the host (a health probe,
/// Caddy's requests, anything through a DNAT rule) go to a MAC nobody has until the cache expires:
/// seconds to a minute of timeouts. Measured on the remote hosts of `deploy/hosts.sh`: of ten
/// projects deployed in one apply, the switch gate of one timed out twice after its deploy's
/// health check had passed. So codeb pins it (see [`ObservedLoopback::mac_pinned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedBridge {
    /// The interface's name (`podman1`).
    pub name: String,
    /// The interface exists: netavark creates it with the first container on the network and
    /// removes it with the last.
    pub present: bool,
    pub mac_pinned: bool,
}

/// Slot ports published by codeb's kernel rules: `address:slot_port` leads to the slot's
/// container, like a service address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The host's `publishAddress` (a loopback address).
    pub address: Ipv4Addr,
    /// codeb's network's bridge, which connections from loopback leave through.
    pub bridge: String,
    /// codeb's rules on `address`.
    pub services: ObservedServices,
    pub loopback: ObservedLoopback,
}

impl KernelObservation {
    /// codeb's kernel publication of slot ports, when it applies to `host` (its publish address
    /// is the observed one).
    pub fn published(&self, host: &HostRef) -> Option<&Published> {
        match self {
            KernelObservation::Managed {
                publish: Some(p), ..
            } if host.publish_address.parse() == Ok(p.address) => Some(p),
            _ => None,
        }
    }

    pub fn mode(&self) -> SwitchMode {
        match self {
            KernelObservation::Managed { .. } | KernelObservation::NoNetwork => SwitchMode::Kernel,
            KernelObservation::Unavailable { .. } => SwitchMode::CaddyAdmin,
        }
    }

    /// The reason for the fallback, when there is one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            KernelObservation::Managed { .. } => None,
            KernelObservation::NoNetwork => Some(NO_NETWORK_YET),
            KernelObservation::Unavailable { reason, .. } => Some(reason),
        }
    }
}

/// Why a host in kernel mode has no service addresses yet (`get hosts` shows it).
pub const NO_NETWORK_YET: &str =
    "the network codeb-main does not exist yet: the first apply creates it, then publishes with \
     kernel rules";

/// Every host's and managed zone's observation, keyed by Host name and zone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub hosts: BTreeMap<String, HostObservation>,
    pub zones: BTreeMap<String, ZoneObservation>,
}

/// One step: an action on one host, usually for one environment, or on one DNS zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Empty for a zone's step (see [`Action::zone`]).
    pub host: String,
    /// The environment the step belongs to; when a step fails, the executor skips the remaining
    /// steps of the same key.
    pub key: Option<EnvKey>,
    /// The generation of the key's record the plan was computed from (`None`: no record yet). The
    /// executor refuses to write a record whose generation moved since.
    pub generation: Option<u64>,
    pub action: Action,
}

/// What a step does. Each is idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Mark the host as this codeb's (see [`crate::model::ownership::OWNER_VOLUME`]): before
    /// anything else changes on a host that carries no mark.
    MarkHost,
    /// Create codeb's Podman network (kernel mode on a fresh host: its gateway, where service
    /// addresses live, is known once it exists; its bridge comes up with the first container).
    EnsureNetwork {
        name: String,
    },
    /// Create codeb's Caddy server, or correct its listen/TLS settings.
    EnsureServer(ServerSpec),
    /// Write codeb's access log in Caddy as this (its logger, then the server's `logs` naming it),
    /// or remove it (`None`). After [`Action::EnsureServer`]: the server must exist.
    EnsureAccessLog(Option<AccessLog>),
    /// Create or update the environment's record (port allocation, hostname, grace period).
    Register(Box<EnvRecord>),
    /// Record an environment the store has no record of, as its host holds it by codeb's marks
    /// (a fresh or restored state directory): its ports, hostname, active slot and the releases
    /// its containers run. Writes the record only; nothing on the host changes.
    Adopt(Box<Adoption>),
    /// Record the slot as deploying this release, remove `replace` (or, with `aside`, rename it
    /// to that name and leave it running: its removal comes after the switch), create and start
    /// the container.
    Deploy {
        slot: Slot,
        release: Box<Release>,
        container: Box<ContainerSpec>,
        replace: Option<String>,
        /// Where `replace` goes instead of being removed first: set where codeb's kernel rules
        /// publish slot ports, so that the new container holds no port the old one has.
        aside: Option<String>,
        health_path: String,
        health_timeout_ms: u64,
        /// Set when `replace` is a slot that served traffic moments ago.
        drain: Option<Drain>,
    },
    /// Recreate a container that went missing or drifted, keeping the slot's state.
    Recreate {
        slot: Slot,
        container: Box<ContainerSpec>,
        replace: Option<String>,
    },
    Start {
        slot: Slot,
        container: String,
    },
    /// Stop a failed slot's container (kept for inspection).
    Stop {
        slot: Slot,
        container: String,
    },
    /// Probe the slot until it answers 2xx/3xx or the timeout passes; it becomes `deployed`, or
    /// `failed` with its container stopped and its log tail recorded.
    AwaitHealthy {
        slot: Slot,
        url: String,
        timeout_ms: u64,
        container: String,
        hash: String,
        /// Probe the container's own address instead of `url`: where the slot's port is
        /// published by codeb's rules, which lead to the new container only from the next round.
        direct: Option<DirectProbe>,
    },
    /// Create codeb's dispatch chain for an address (a gateway, or the loopback address slots are
    /// published on) and its rule in codeb's base chain.
    HookServices(HookWrite),
    /// Set up what a loopback address needs to lead to containers on codeb's bridge.
    Loopback(LoopbackWrite),
    /// Put codeb's tenant isolation in place (missing, or changed by someone else): containers
    /// codeb created exchange no frame with any other container, so that one project cannot
    /// reach another's. A host step, before any container is created.
    Isolate,
    /// Turn `route_localnet` off on codeb's bridge: no slot port is published on loopback any more,
    /// so nothing needs it (the guard's rules stay; they drop nothing legitimate).
    LoopbackOff {
        bridge: String,
    },
    /// Pin the MAC address of codeb's bridge to the one it has (see [`ObservedBridge`]): right
    /// after the first container of the plan on a host whose bridge is not pinned, before the
    /// next joins (which would change it), or as a host step where no container starts.
    PinMac {
        bridge: String,
    },
    /// Record that the hostname moves to `to` after one passing probe of `url`; `from` goes to
    /// grace. The traffic follows with the `SetService` or route step after it.
    Switch {
        to: Slot,
        from: Option<Slot>,
        hold: Option<String>,
        url: String,
    },
    /// Point the environment's service address at its active slot's container in one atomic
    /// kernel transaction (or remove it): the switch itself in kernel mode.
    SetService(ServiceWrite),
    AddRoute(Route),
    ReplaceRoute(Route),
    DeleteRoute {
        id: String,
    },
    /// Remove a slot's container and record the slot empty (grace period over, or stale), after
    /// `drain` when it served traffic moments ago.
    Retire {
        slot: Slot,
        container: Option<String>,
        drain: Option<Drain>,
    },
    /// Remove a container codeb owns that no slot accounts for.
    RemoveContainer {
        id: String,
        name: String,
    },
    /// Delete the environment's record (after `delete` or `--prune` removed everything).
    Forget,
    /// Create a managed zone that does not exist (Native, with the server's default SOA).
    EnsureZone {
        zone: String,
        api: String,
    },
    /// Every change of one zone's codeb rrsets, written at once (one PATCH, one serial bump).
    DnsPatch {
        zone: String,
        changes: Vec<DnsChange>,
    },
    /// Record that the environment moves to the host this record names (see
    /// [`crate::model::Migration`]): the whole record, on fresh ports with no slot yet, holding
    /// the source's record. Writes the record only.
    MigrateBegin {
        record: Box<EnvRecord>,
        /// Where the source's route will forward to (the target's Caddy), for the plan's lines.
        forward: String,
    },
    /// On the source host: record the migration as forwarding, then point the hostname's route
    /// at the target's Caddy (added when `add`, else replaced).
    MigrateForward {
        route: Route,
        add: bool,
    },
    /// Record that the migration entered this phase (only ever forward). Writes the record only.
    MigratePhase(MigrationPhase),
    /// On the source host: record the migration's grace period as begun, then stop the serving
    /// slot's container (kept for a rollback until the grace period ends).
    MigrateGrace {
        container: Option<String>,
    },
    /// The source is cleaned up: the migration's record goes. Writes the record only.
    MigrateFinish,
    /// A migration aborted while its target deployed: the record becomes the source's again
    /// (this one, whole), after the target's part was removed. Writes the record only.
    MigrateAbort(Box<EnvRecord>),
    /// `codeb rollback` during a migration: the record becomes the source's again (this one,
    /// whole, marked rolled back), holding a migration back from the target (whose part goes
    /// through forwarding, DNS and grace like any source's). Writes the record only; everything
    /// else follows from the plan.
    MigrateRollback(Box<EnvRecord>),
    /// The manifests no longer name the host a rollback moved away from: its mark goes. Writes
    /// the record only.
    ClearRolledBack,
}

impl Action {
    /// The zone a DNS step acts on; `None` for a host's step.
    pub fn zone(&self) -> Option<&str> {
        match self {
            Action::EnsureZone { zone, .. } | Action::DnsPatch { zone, .. } => Some(zone),
            _ => None,
        }
    }
}

/// The records a plan's [`Action::Adopt`] steps write, by environment.
pub fn adoptions(plan: &Plan) -> BTreeMap<EnvKey, EnvRecord> {
    plan.steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Adopt(a) => Some((a.record.key.clone(), a.record.clone())),
            _ => None,
        })
        .collect()
}

/// What an [`Action::Adopt`] records, and what it was read from (for the plan's line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    pub record: EnvRecord,
    /// The environment's routes, kernel rules and marked DNS rrsets found.
    pub routes: usize,
    pub rules: usize,
    pub records: usize,
}

/// A health probe of a container's own address, found when the probe runs: `http://{its
/// address}:{port}{path}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectProbe {
    pub port: u16,
    pub path: String,
}

/// Waiting before a container that served traffic moments ago is removed, so that requests in
/// flight finish: until `until_ms`, or earlier once the kernel shows no connection open to
/// `target` (its address and port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub until_ms: u64,
    pub target: Option<SocketAddrV4>,
}

/// Something the plan wants the user to know; some mean "not converged".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A healthy release waits for `codeb promote` (manual promotion). Converged.
    AwaitingPromotion {
        key: EnvKey,
        slot: Slot,
        preview: String,
    },
    /// The desired release failed its health check; it is not retried until it changes.
    Failed {
        key: EnvKey,
        slot: Slot,
        hash: String,
    },
    /// A rollback holds: the desired release is the one rolled away from. Converged.
    Held { key: EnvKey, hash: String },
    /// A host's backend could not be observed; its environments were not planned.
    Unreachable { host: String, error: String },
    /// No free port pair is left in the environment's range.
    NoPorts { key: EnvKey },
    /// The manifests name another host than the one the environment is recorded on, and the
    /// migration cannot begin or go on, for `reason`.
    HostMoved {
        key: EnvKey,
        from: String,
        to: String,
        reason: String,
    },
    /// A migration's source keeps its forwarding route and its stopped slot until `until_ms`,
    /// then is cleaned up. Converged.
    MigrationGrace {
        key: EnvKey,
        from: String,
        until_ms: u64,
    },
    /// `codeb rollback` moved the environment back to `to` from `from` during a migration: the
    /// manifests' `host: FROM` is not acted on until they name another host. Converged.
    RolledBack {
        key: EnvKey,
        to: String,
        from: String,
        by: String,
        at_ms: u64,
    },
    /// A managed zone could not be observed; its DNS was not planned. The message names the
    /// endpoint.
    ZoneUnreachable { zone: String, error: String },
    /// A name the environment needs holds a record codeb does not own (or one another
    /// environment's): none of the environment's records are written, the holder is untouched.
    DnsConflict {
        key: EnvKey,
        zone: String,
        name: String,
        holder: String,
    },
    /// The hostname is in no declared Zone: codeb writes no DNS record for it. Converged.
    NoZone { key: EnvKey, hostname: String },
    /// `delete` removed environments the store did not record, found by codeb's marks on the
    /// hosts; their DNS records (if any) are left, since no record says in which zone.
    Unrecorded { keys: Vec<EnvKey> },
    /// The host holds these environments by codeb's marks, and neither the manifests nor the
    /// store know them (a fresh state directory, or manifests that no longer name them): left as
    /// they are; `codeb delete project NAME` or `apply --prune --prune-project NAME` removes them. Converged.
    Undeclared { host: String, keys: Vec<EnvKey> },
}

impl Note {
    /// True for notes that mean the desired state was not reached (apply exits 1).
    pub fn is_problem(&self) -> bool {
        !matches!(
            self,
            Note::AwaitingPromotion { .. }
                | Note::Held { .. }
                | Note::NoZone { .. }
                | Note::Unrecorded { .. }
                | Note::Undeclared { .. }
                | Note::MigrationGrace { .. }
                | Note::RolledBack { .. }
        )
    }

    /// True for notes that mean a backend could not be observed (`diff` exits 3).
    pub fn is_unobserved(&self) -> bool {
        matches!(
            self,
            Note::Unreachable { .. } | Note::ZoneUnreachable { .. }
        )
    }
}

/// The ordered steps, and what the user should know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<Note>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn has_problems(&self) -> bool {
        self.notes.iter().any(Note::is_problem)
    }
}

/// Plans convergence of every desired environment, and of the recorded ones in `prune`.
///
/// # Guarantees
/// - Touches only containers carrying codeb's labels for a key that is desired or recorded, and
///   only routes whose `@id` belongs to such a key.
/// - Changes or deletes only rrsets carrying codeb's mark, with at most one write per zone, and
///   none for a converged zone.
/// - Never switches traffic to a slot that has not passed its health check (`Switch` carries the
///   probe the executor runs first, and only `deployed` or `grace` slots are switched to).
/// - Planning again after executing the plan against a world that behaved yields no steps.
pub fn plan(
    desired: &Desired,
    observed: &Observed,
    recorded: &Recorded,
    prune: &[EnvKey],
    now_ms: u64,
) -> Plan {
    let threads = planning_threads();
    plan_on(
        desired,
        observed,
        recorded,
        prune,
        now_ms,
        threads,
        PARALLEL_MIN,
    )
}

/// [`plan`] on at most `threads` threads, when there are at least `min_parallel` environments.
fn plan_on(
    desired: &Desired,
    observed: &Observed,
    recorded: &Recorded,
    prune: &[EnvKey],
    now_ms: u64,
    threads: usize,
    min_parallel: usize,
) -> Plan {
    let mut plan = Plan::default();
    dns::plan_apply(desired, observed, recorded, prune, &mut plan);
    let dns_pending = migrate::dns_pending(&plan, desired, recorded);
    let source = migrate::Source {
        desired,
        recorded,
        observed,
        dns_pending: &dns_pending,
    };
    let mut taken = LazyPorts {
        set: None,
        recorded,
        observed,
    };
    // Per host: its observation indexed by key, codeb's Caddy server and the kernel's hook.
    let mut hosts: BTreeMap<&str, (&HostRef, Index<'_>, &KernelObservation)> = BTreeMap::new();
    let mut unpinned: Vec<(String, &ObservedBridge)> = Vec::new();
    for (host_name, host) in &desired.hosts {
        let Some(view) = reachable(host_name, observed, &mut plan) else {
            continue;
        };
        let host_step = |action| Step {
            host: host_name.clone(),
            key: None,
            generation: None,
            action,
        };
        if view.owner == crate::model::observed::OwnerMark::Absent {
            plan.steps.push(host_step(Action::MarkHost));
        }
        let server = server_spec(host);
        if view.proxy.server.as_ref() != Some(&server) {
            plan.steps.push(host_step(Action::EnsureServer(server)));
        }
        if let Some(write) = access_log_diff(&view.proxy.access_log, host.access_log.as_ref()) {
            plan.steps.push(host_step(Action::EnsureAccessLog(write)));
        }
        if *view.kernel == KernelObservation::NoNetwork {
            // Its environments are planned in the next round, in kernel mode, once the network's
            // gateway is known: a deploy now would publish through Podman, then be redone.
            if desired.envs.values().any(|d| d.host == *host_name) {
                plan.steps.push(host_step(Action::EnsureNetwork {
                    name: NETWORK.to_string(),
                }));
            }
            continue;
        }
        if desired.envs.values().any(|d| d.host == *host_name) {
            if let KernelObservation::Managed {
                isolated: false, ..
            } = view.kernel
            {
                plan.steps.push(host_step(Action::Isolate));
            }
            if let Some(hook) = service::hook_diff(view.kernel) {
                plan.steps.push(host_step(Action::HookServices(hook)));
            }
            if let Some(bridge) = service::unpinned_bridge(view.kernel, host) {
                unpinned.push((host_name.clone(), bridge));
            }
            if let Some(p) = view.kernel.published(host) {
                if let Some(write) = service::loopback_diff(p) {
                    plan.steps.push(host_step(Action::Loopback(write)));
                }
                if let Some(hook) = service::publish_hook_diff(p) {
                    plan.steps.push(host_step(Action::HookServices(hook)));
                }
            }
        } else if let Some(p) = view.kernel.published(host) {
            // Nothing of the manifests runs here and no slot port is published any more (a
            // recorded environment of another manifest set would still have its rules).
            if p.loopback.route_localnet && p.services.services.is_empty() {
                plan.steps.push(host_step(Action::LoopbackOff {
                    bridge: p.bridge.clone(),
                }));
            }
        }
        hosts.insert(
            host_name.as_str(),
            (
                host,
                index(view.containers, view.proxy, threads, min_parallel),
                view.kernel,
            ),
        );
    }
    // One environment's plan, from its record (`None`: new) and its host's observation.
    let plan_one =
        |d: &DesiredEnv, rec: Option<&EnvRecord>, taken: &mut LazyPorts<'_>, out: &mut Plan| {
            // A rollback's mark: the manifests' host rolled away from is not acted on.
            let pinned;
            let d = match rec.map_or(migrate::Mark::None, |r| migrate::mark(d, r)) {
                migrate::Mark::None => d,
                migrate::Mark::Pinned(p, note) => {
                    out.notes.push(note);
                    pinned = *p;
                    &pinned
                }
                migrate::Mark::Clear(step) => {
                    out.steps.push(step);
                    d
                }
            };
            let Some((host, (containers, routes), kernel)) = hosts.get(d.host.as_str()) else {
                return; // unreachable: noted above
            };
            // A migration: its start is one step of its own; once begun, the target is planned
            // as always (with the source's serving release while it deploys), then the source.
            let mut migration = None;
            if let Some(r) = rec {
                match migrate::decide(d, r, desired, taken, now_ms) {
                    migrate::Decision::Stay => {}
                    migrate::Decision::Begin(step) => return out.steps.push(step),
                    migrate::Decision::Refuse(note) => return out.notes.push(note),
                    migrate::Decision::Abort(m) => return migrate::plan_abort(r, m, observed, out),
                    migrate::Decision::Migrating(m) => migration = Some((r, m)),
                }
            }
            let target = match migration {
                Some((_, m)) => migrate::target_desired(d, m),
                None => std::borrow::Cow::Borrowed(d),
            };
            let d = target.as_ref();
            let (steps_before, notes_before) = (out.steps.len(), out.notes.len());
            let k = (d.key.project.as_str(), d.key.env.as_str());
            let (cs, rs) = (gather(containers, &k), gather(routes, &k));
            if let Some(r) = rec {
                let direct = kernel.published(host).is_some();
                if let Some(actions) = migrate::restart_kept(d, r, host, &cs, direct) {
                    out.steps.extend(actions.into_iter().map(|action| Step {
                        host: d.host.clone(),
                        key: Some(d.key.clone()),
                        generation: Some(r.generation),
                        action,
                    }));
                    return;
                }
            }
            // No record, but the host may hold it by codeb's marks: adopted as it runs, not
            // deployed again beside itself on other ports.
            let adopted = rec.is_none().then(|| {
                let records = dns::marked_rrsets(&d.key, observed);
                adopt::adoption(d, host, kernel, &cs, &rs, records, now_ms)
            });
            let adopted = adopted.flatten().map(|a| {
                // Its ports stay taken for the environments allocated after it.
                let ports = taken.get();
                ports.insert(a.record.base_port);
                ports.insert(a.record.base_port + 1);
                out.steps.push(Step {
                    host: d.host.clone(),
                    key: Some(d.key.clone()),
                    generation: None,
                    action: Action::Adopt(Box::new(a.clone())),
                });
                a.record
            });
            plan_env(
                d,
                host,
                kernel,
                rec,
                adopted.as_ref(),
                &cs,
                &rs,
                taken,
                now_ms,
                out,
            );
            if let Some((r, m)) = migration {
                let converged = out.steps.len() == steps_before
                    && !out.notes[notes_before..].iter().any(Note::is_problem);
                migrate::plan_source(d, r, m, converged, &source, now_ms, out);
            }
        };
    // The environments from `from` on (to the end, or up to `to`), merge-joined with their records
    // (both maps are ordered by key), so that planning stays linear and touches each record once.
    // `only_recorded`: stop at the first environment without a record (it needs ports allocated,
    // which only a plan made on one thread may do); returns false then.
    let plan_range = |from: Option<&EnvKey>,
                      to: Option<&EnvKey>,
                      only_recorded: bool,
                      taken: &mut LazyPorts<'_>,
                      out: &mut Plan|
     -> bool {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let lo = from.map_or(Unbounded, Included);
        let hi = to.map_or(Unbounded, Excluded);
        let mut records = recorded.envs.range::<EnvKey, _>((lo, Unbounded)).peekable();
        for (key, d) in desired.envs.range::<EnvKey, _>((lo, hi)) {
            // One comparison per record passed or met (each is two strings on cold data).
            let rec = loop {
                match records.peek().map(|(k, r)| ((*k).cmp(key), *r)) {
                    Some((std::cmp::Ordering::Less, _)) => {
                        records.next();
                    }
                    Some((std::cmp::Ordering::Equal, r)) => break Some(r),
                    _ => break None,
                }
            };
            if only_recorded && rec.is_none() {
                return false;
            }
            plan_one(d, rec, taken, out);
        }
        true
    };
    // An environment's plan reads only its own record and observations, except the ports a new
    // one is allocated. So a large plan is split over threads, each planning a contiguous run of
    // environments into a plan of its own; concatenated in order they are the plan one thread
    // makes. A plan with a new environment is made on one thread.
    let mut done = false;
    if threads > 1 && desired.envs.len() >= min_parallel.max(threads) {
        let chunk = desired.envs.len().div_ceil(threads);
        let bounds: Vec<&EnvKey> = desired.envs.keys().step_by(chunk).collect();
        let parts: Vec<Option<Plan>> = std::thread::scope(|scope| {
            let plan_range = &plan_range;
            let handles: Vec<_> = (0..bounds.len())
                .map(|i| {
                    let (from, to) = (bounds[i], bounds.get(i + 1).copied());
                    scope.spawn(move || {
                        let mut taken = LazyPorts {
                            set: None,
                            recorded,
                            observed,
                        };
                        let mut out = Plan::default();
                        plan_range(Some(from), to, true, &mut taken, &mut out).then_some(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a planning thread panicked"))
                .collect()
        });
        if parts.iter().all(Option::is_some) {
            for part in parts.into_iter().flatten() {
                plan.steps.extend(part.steps);
                plan.notes.extend(part.notes);
            }
            done = true;
        }
    }
    if !done {
        plan_range(None, None, false, &mut taken, &mut plan);
    }
    for (host, bridge) in unpinned {
        pin_bridge(&mut plan, host, bridge);
    }
    // A pruned environment the store does not record is removed as the hosts hold it (the
    // service found it there by codeb's marks: see [`undeclared`]).
    let unrecorded: Vec<&EnvKey> = prune
        .iter()
        .filter(|k| !recorded.envs.contains_key(*k))
        .collect();
    let found = if unrecorded.is_empty() {
        Vec::new()
    } else {
        held(observed, recorded, |k| unrecorded.contains(&k))
    };
    for key in prune {
        let rec = recorded
            .envs
            .get(key)
            .or_else(|| found.iter().find(|r| r.key == *key));
        if let Some(rec) = rec {
            let host = desired
                .hosts
                .get(&rec.host)
                .or_else(|| recorded.hosts.get(&rec.host));
            if let Some(view) = host.and_then(|_| reachable(&rec.host, observed, &mut plan)) {
                if remove_source(rec, observed, &mut plan) {
                    plan_removal(rec, view, &mut plan);
                }
            }
        }
    }
    if !prune.is_empty() {
        let mut zones = recorded.zones.clone();
        zones.extend(desired.zones.clone());
        dns::keep_unplanned_records(&mut plan, &zones, recorded, observed);
    }
    plan
}

/// Pins `bridge`'s MAC on `host`: right after the plan's first step there that starts a container
/// (the bridge exists from then on, and the next container would change its MAC), as a step of
/// that environment (the daemon's reconcile of one environment carries it out with its deploy),
/// else at once, as a host step, where the bridge exists.
fn pin_bridge(plan: &mut Plan, host: String, bridge: &ObservedBridge) {
    let first = plan.steps.iter().position(|s| {
        s.host == host
            && matches!(
                s.action,
                Action::Deploy { .. } | Action::Recreate { .. } | Action::Start { .. }
            )
    });
    let action = Action::PinMac {
        bridge: bridge.name.clone(),
    };
    match first {
        Some(i) => {
            let after = &plan.steps[i];
            let step = Step {
                host,
                key: after.key.clone(),
                generation: after.generation,
                action,
            };
            plan.steps.insert(i + 1, step);
        }
        None if bridge.present => plan.steps.push(Step {
            host,
            key: None,
            generation: None,
            action,
        }),
        None => {}
    }
}

/// Plans the removal of environments: their DNS records, their routes, their service addresses,
/// then their containers, then their records.
pub fn plan_delete(keys: &[EnvKey], observed: &Observed, recorded: &Recorded) -> Plan {
    let mut plan = Plan::default();
    dns::plan_delete(keys, observed, recorded, &mut plan);
    for key in keys {
        if let Some(rec) = recorded.envs.get(key) {
            if let Some(view) = reachable(&rec.host, observed, &mut plan) {
                if remove_source(rec, observed, &mut plan) {
                    plan_removal(rec, view, &mut plan);
                }
            }
        }
    }
    dns::keep_unplanned_records(&mut plan, &recorded.zones, recorded, observed);
    plan
}

/// Environments of `projects` that the observed hosts hold by codeb's marks but the store does not
/// record (its state directory was lost or is a fresh one): a record made from what was observed
/// (the host, the hostname of the environment's route, the base port from a container's or a
/// rule's), enough for [`plan_delete`] to remove them.
pub fn orphans(
    projects: &std::collections::BTreeSet<String>,
    observed: &Observed,
    recorded: &Recorded,
) -> Vec<EnvRecord> {
    held(observed, recorded, |k| projects.contains(&k.project))
}

/// The environments the manifests' hosts hold by codeb's marks that neither `desired` nor the
/// store knows, nor `remove` removes: one note per host naming them (see [`Note::Undeclared`]).
/// Computed for an apply or a diff of the whole manifests, not in [`plan`]: the daemon plans one
/// environment at a time, and every other one would look undeclared there.
pub fn undeclared(
    desired: &Desired,
    observed: &Observed,
    recorded: &Recorded,
    remove: &[EnvKey],
) -> Vec<Note> {
    let found = held(observed, recorded, |k| {
        !desired.envs.contains_key(k) && !remove.contains(k)
    });
    let mut by_host: BTreeMap<String, Vec<EnvKey>> = BTreeMap::new();
    for rec in found {
        if desired.hosts.contains_key(&rec.host) {
            by_host.entry(rec.host).or_default().push(rec.key);
        }
    }
    by_host
        .into_iter()
        .map(|(host, keys)| Note::Undeclared { host, keys })
        .collect()
}

/// As [`orphans`], for the keys `wanted` accepts.
fn held(
    observed: &Observed,
    recorded: &Recorded,
    wanted: impl Fn(&EnvKey) -> bool,
) -> Vec<EnvRecord> {
    let mut found: BTreeMap<EnvKey, EnvRecord> = BTreeMap::new();
    for (host, obs) in &observed.hosts {
        let Some(view) = obs.view() else { continue };
        let mut note = |key: EnvKey, hostname: Option<&str>, base: Option<u16>| {
            if !wanted(&key) || recorded.envs.contains_key(&key) {
                return;
            }
            let rec = found
                .entry(key.clone())
                .or_insert_with(|| EnvRecord::new(key, host.clone(), String::new(), 0));
            if let Some(h) = hostname {
                rec.hostname = h.to_string();
            }
            if let Some(b) = base.filter(|_| rec.base_port == 0) {
                rec.base_port = b;
            }
        };
        for c in view.containers {
            let (Some(p), Some(e)) = (c.labels.get(LABEL_PROJECT), c.labels.get(LABEL_ENVIRONMENT))
            else {
                continue;
            };
            let slot = c.labels.get(crate::model::ownership::LABEL_SLOT);
            let port: Option<u16> = c.labels.get(LABEL_PORT).and_then(|p| p.parse().ok());
            let base = match (slot.and_then(|s| Slot::parse(s)), port) {
                (Some(Slot::Green), Some(p)) => p.checked_sub(1),
                (Some(Slot::Blue), Some(p)) => Some(p),
                _ => None,
            };
            note(EnvKey::new(p.clone(), e.clone()), None, base);
        }
        for r in &view.proxy.routes {
            if let Some(key) = route_key(&r.id) {
                let hostname = (r.id == key.route_id()).then(|| r.hosts.first()).flatten();
                note(key, hostname.map(String::as_str), None);
            }
        }
        if let KernelObservation::Managed {
            services, publish, ..
        } = view.kernel
        {
            let published = publish.iter().flat_map(|p| p.services.services.iter());
            for (port, service) in services.services.iter().chain(published) {
                for rule in &service.rules {
                    let crate::model::observed::ServiceRule::Dnat(t) = rule else {
                        continue;
                    };
                    // `project/env` for a service address, `project/env/slot` for a slot port.
                    let mut parts = t.label.split('/');
                    let (Some(p), Some(e)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    let base = match parts.next().and_then(Slot::parse) {
                        Some(Slot::Green) => port.checked_sub(1),
                        _ => Some(*port),
                    };
                    note(EnvKey::new(p, e), None, base);
                }
            }
        }
    }
    found.into_values().collect()
}

fn plan_removal(rec: &EnvRecord, view: HostView<'_>, plan: &mut Plan) {
    plan_removal_on(rec, view, plan);
    plan.steps.push(Step {
        host: rec.host.clone(),
        key: Some(rec.key.clone()),
        generation: Some(rec.generation),
        action: Action::Forget,
    });
}

/// The removal of what `rec`'s host holds of it: routes, kernel rules, containers (not its record).
fn plan_removal_on(rec: &EnvRecord, view: HostView<'_>, plan: &mut Plan) {
    let HostView {
        containers,
        proxy,
        kernel,
        ..
    } = view;
    let step = |action| Step {
        host: rec.host.clone(),
        key: Some(rec.key.clone()),
        generation: Some(rec.generation),
        action,
    };
    let ids = route_ids(&rec.key);
    for route in proxy.routes.iter().filter(|r| ids.contains(&r.id)) {
        plan.steps.push(step(Action::DeleteRoute {
            id: route.id.clone(),
        }));
    }
    if let Some(write) = service::removal(rec, kernel) {
        plan.steps.push(step(Action::SetService(write)));
    }
    // The slot ports codeb's rules publish, or that a kernel-mode run left where codeb now
    // switches through Caddy.
    if let KernelObservation::Managed {
        publish: Some(p), ..
    }
    | KernelObservation::Unavailable {
        leftover: Some(p), ..
    } = kernel
    {
        for write in service::publication_removals(rec, p) {
            plan.steps.push(step(Action::SetService(write)));
        }
    }
    for c in containers.iter().filter(|c| belongs_to(c, &rec.key)) {
        plan.steps.push(step(Action::RemoveContainer {
            id: c.id.clone(),
            name: c.name.clone(),
        }));
    }
}

/// A migrating environment that is removed: what its source holds goes first (its record is the
/// migration's, forgotten with the environment's). False when the source cannot be observed: the
/// record stays, so that a later delete still finds the source.
fn remove_source(rec: &EnvRecord, observed: &Observed, plan: &mut Plan) -> bool {
    let Some(m) = rec.migration.as_deref() else {
        return true;
    };
    let Some(view) = reachable(&m.source.host, observed, plan) else {
        return false;
    };
    let mut source = m.source.clone();
    source.generation = rec.generation;
    plan_removal_on(&source, view, plan);
    true
}

fn reachable<'a>(host: &str, observed: &'a Observed, plan: &mut Plan) -> Option<HostView<'a>> {
    match observed.hosts.get(host) {
        Some(obs @ HostObservation::Reachable { .. }) => obs.view(),
        Some(HostObservation::Unreachable { error }) => {
            if !plan
                .notes
                .iter()
                .any(|n| matches!(n, Note::Unreachable { host: h, .. } if h == host))
            {
                plan.notes.push(Note::Unreachable {
                    host: host.to_string(),
                    error: error.clone(),
                });
            }
            None
        }
        None => {
            plan.notes.push(Note::Unreachable {
                host: host.to_string(),
                error: "not observed".into(),
            });
            None
        }
    }
}

/// FxHash: the keys are names codeb itself reads from its own labels and ids, and SipHash was a
/// tenth of the time of planning 10,000 environments. A key has two containers and three routes
/// at most unless something duplicated them: inline, so that indexing 10,000 environments does not
/// allocate (and free) 20,000 vectors, which was a sixth of the plan's time.
type ByKey<'a, T, const N: usize> = rustc_hash::FxHashMap<(&'a str, &'a str), SmallVec<[&'a T; N]>>;

/// Groups a host's containers and routes by the (project, environment) that owns them, once per
/// plan and without allocating keys, so that planning stays linear in the number of environments.
/// A large host's lists are indexed in parts, on threads, one map per part: an environment's
/// containers and routes are what the parts hold for its key, in part order (the lists' order).
type Index<'a> = (
    Vec<ByKey<'a, ObservedContainer, 2>>,
    Vec<ByKey<'a, Route, 3>>,
);

/// What the parts of an index hold for `key`, in their order.
fn gather<'a, T, const N: usize>(
    parts: &[ByKey<'a, T, N>],
    key: &(&str, &str),
) -> SmallVec<[&'a T; N]> {
    let mut out = SmallVec::new();
    for part in parts {
        if let Some(found) = part.get(key) {
            out.extend(found.iter().copied());
        }
    }
    out
}

fn index<'a>(
    containers: &'a [ObservedContainer],
    proxy: &'a ObservedProxy,
    threads: usize,
    min_parallel: usize,
) -> Index<'a> {
    let index_containers = |part: &'a [ObservedContainer]| {
        let mut cs: ByKey<'a, ObservedContainer, 2> =
            ByKey::with_capacity_and_hasher(part.len(), Default::default());
        for c in part {
            if let (Some(p), Some(e)) =
                (c.labels.get(LABEL_PROJECT), c.labels.get(LABEL_ENVIRONMENT))
            {
                cs.entry((p.as_str(), e.as_str())).or_default().push(c);
            }
        }
        cs
    };
    let index_routes = |part: &'a [Route]| {
        // Sized for the most keys the routes can have (an environment has one to three): a map
        // that grows rehashes every key it holds.
        let mut rs: ByKey<'a, Route, 3> =
            ByKey::with_capacity_and_hasher(part.len(), Default::default());
        for r in part {
            if let Some(k) = route_key_str(&r.id) {
                rs.entry(k).or_default().push(r);
            }
        }
        rs
    };
    // Indexing is a third of planning a large converged host, and each entry is a cache miss on
    // its labels or id: the parts are indexed side by side.
    if threads <= 1 || proxy.routes.len() + containers.len() < min_parallel {
        return (
            vec![index_containers(containers)],
            vec![index_routes(&proxy.routes)],
        );
    }
    let (c_chunk, r_chunk) = (
        containers.len().div_ceil(threads).max(1),
        proxy.routes.len().div_ceil(threads).max(1),
    );
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let cs = containers.chunks(c_chunk).nth(i).unwrap_or_default();
                let rs = proxy.routes.chunks(r_chunk).nth(i).unwrap_or_default();
                scope.spawn(move || (index_containers(cs), index_routes(rs)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an index thread panicked"))
            .unzip()
    })
}

fn route_key_str(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix(ROUTE_ID_PREFIX)?;
    let mut parts = rest.split('_');
    let (p, e) = (parts.next()?, parts.next()?);
    match (parts.next(), parts.next()) {
        (None, _) => Some((p, e)),
        (Some(s), None) if Slot::parse(s).is_some() => Some((p, e)),
        _ => None,
    }
}

/// The key a route id belongs to: `codeb-{project}_{env}` or `codeb-{project}_{env}_{slot}`.
/// Names cannot contain `_`, so the split is unambiguous.
pub fn route_key(id: &str) -> Option<EnvKey> {
    route_key_str(id).map(|(p, e)| EnvKey::new(p, e))
}

/// The Caddy server codeb wants on a host.
pub fn server_spec(host: &HostRef) -> ServerSpec {
    use crate::spec::Tls;
    ServerSpec {
        name: SERVER_NAME.to_string(),
        listen: host.listen.clone(),
        tls: match host.tls {
            Tls::Auto => TlsMode::Auto,
            Tls::Internal => TlsMode::Internal,
            Tls::Off => TlsMode::Off,
        },
    }
}

/// The write that brings codeb's access log in a Caddy from `observed` to `wanted` (`None`: off),
/// if one is needed: none when it is already exactly as wanted, or off and absent.
pub fn access_log_diff(
    observed: &ObservedAccessLog,
    wanted: Option<&AccessLog>,
) -> Option<Option<AccessLog>> {
    match (observed, wanted) {
        (ObservedAccessLog::Is(is), Some(wanted)) if is == wanted => None,
        (ObservedAccessLog::Absent, None) => None,
        (_, wanted) => Some(wanted.cloned()),
    }
}

/// Every route id a key can own.
pub fn route_ids(key: &EnvKey) -> [String; 3] {
    [
        key.route_id(),
        key.preview_route_id(Slot::Blue),
        key.preview_route_id(Slot::Green),
    ]
}

/// Ports no new allocation may take: every recorded pair and every port a codeb container
/// publishes. Computed on the first allocation only: a plan with no new environment never needs it.
/// Below this many environments a plan is made on one thread: starting threads would cost more
/// than they save.
const PARALLEL_MIN: usize = 1024;

/// Threads for a large plan: the machine's cores, at most 4 (the plan is memory-bound beyond).
fn planning_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get().min(4))
            .unwrap_or(1)
    })
}

pub struct LazyPorts<'a> {
    set: Option<PortSet>,
    recorded: &'a Recorded,
    observed: &'a Observed,
}

impl LazyPorts<'_> {
    pub fn get(&mut self) -> &mut PortSet {
        let (recorded, observed) = (self.recorded, self.observed);
        self.set.get_or_insert_with(|| {
            // A migration's source keeps its ports until it is cleaned up.
            let mut taken: PortSet = recorded
                .envs
                .values()
                .flat_map(|r| {
                    let source = r.migration.as_ref().map(|m| m.source.base_port);
                    [Some(r.base_port), source]
                        .into_iter()
                        .flatten()
                        .flat_map(|b| [b, b + 1])
                })
                .collect();
            for obs in observed.hosts.values() {
                if let HostObservation::Reachable { containers, .. } = obs {
                    // Podman's published port, or the slot port codeb publishes (its label):
                    // another state directory sharing the host may own either.
                    taken.extend(containers.iter().filter_map(|c| {
                        c.host_port
                            .or_else(|| c.labels.get(LABEL_PORT)?.parse().ok())
                    }));
                }
            }
            taken
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
