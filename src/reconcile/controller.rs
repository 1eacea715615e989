//! The reconcile loop of `codeb watch`: one task that owns the [`Queue`], takes triggers as
//! messages, runs reconciles as tasks, and turns their results into the next schedule.
//!
//! The unit of work is one project environment ([`Work::Env`]), plus one sweep per host
//! ([`Work::Host`]) and one reconcile per managed DNS zone ([`Work::Zone`]). A reconcile is
//! level-triggered: it is never told why it runs (a saved file, a container event, a resync, a
//! timer); it observes its host or zone, plans from the full state and executes. Its result is a value ([`Action`]: run again after a delay, schedule other work, or
//! wait for a change); its error goes through one [`error_policy`] to a per-key backoff.
//!
//! Why hosts are work of their own: two things on a host are shared by its environments, codeb's
//! Caddy server and the port allocation of new environments (the planner allocates from every
//! recorded and observed port). Two environments planned at once could both create the server or
//! take the same ports. So only the host's sweep does host-wide steps (steps with no key, and the
//! registration of a new environment), and a host is one key of the queue, so never two sweeps of
//! it run at once. An environment reconcile that finds host-wide work first hands over to its
//! host's sweep instead of doing it. The sweep is also what a resync runs: one observation and one
//! plan of the whole host, which schedules only the environments that have something to do, so a
//! resync of a converged host costs one container list and one Caddy read, whatever the number of
//! projects.
//!
//! Why zones are work of their own: a zone holds the records of every environment whose names
//! fall in it, and all of a zone's changes go in one write. So only a zone's reconcile writes the
//! zone (never two at once), planning it with every desired environment; it runs at start, at
//! every resync (a record edited by hand produces no event) and when a saved change can affect
//! it. PowerDNS being down then fails that key alone, which backs off like any other, and holds
//! back no container or Caddy work. A pruned environment's reconcile removes its containers and
//! routes, hands its records to the zone's reconcile, and forgets the environment only once no
//! zone holds a record of it (the zone's reconcile runs it again when it removed them).
//!
//! Why a moving environment is observed on two hosts: a migration's phases act on its source
//! host (forwarding, its grace period, its cleanup) and wait for what the target and the zone hold,
//! so its reconcile observes both hosts and its zones and executes with both hosts' clients, and
//! the end of its grace period requeues it; the daemon then carries a migration (or a rollback's
//! way back) through to the cleanup without an `apply` (see `reconcile_env`).
//!
//! Must not: hold a lock across an `.await`, run two reconciles of one key at once, or make a
//! decision the planner should make.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoffs;
use super::health::{Health, Subject};
use super::queue::{Claim, Queue, Ticket};
use super::{execute_until, observe, Backends, HostBackends, Prober, MAX_ROUNDS};
use crate::backend::{Dns, Kernel, Proxy, Runtime};
use crate::model::dns::ZoneRef;
use crate::model::{
    Desired, DesiredEnv, EnvKey, EnvRecord, HostRef, MigrationPhase, Recorded, Slot, SlotState,
};
use crate::plan::{self, HostObservation, Note, Plan, Step, ZoneObservation};
use crate::store::Store;

/// One unit of work: a host's sweep, one project environment, or one managed DNS zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    Host(String),
    Env(EnvKey),
    Zone(String),
}

impl Work {
    /// `host`, `env` or `zone`: the label of its metrics.
    fn kind(&self) -> &'static str {
        match self {
            Work::Host(_) => "host",
            Work::Env(_) => "env",
            Work::Zone(_) => "zone",
        }
    }
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Work::Host(h) => write!(f, "host {h}"),
            Work::Env(k) => write!(f, "{k}"),
            Work::Zone(z) => write!(f, "zone {z}"),
        }
    }
}

/// What a reconcile decided about the future: a value, never a side effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Action {
    /// Run this work again after this delay (a grace period ends then); `None`: only on a change.
    pub requeue_after: Option<Duration>,
    /// Other work this run found needed, and in how long.
    pub schedule: Vec<(Work, Duration)>,
    /// One word for the log line: `converged`, `handed-to-host`, `blocked`, `swept`, ...
    pub result: &'static str,
    /// Problems that no retry fixes (a failed release, no free ports): logged, not retried.
    pub problems: Vec<String>,
}

impl Action {
    fn new(result: &'static str) -> Self {
        Action {
            result,
            ..Action::default()
        }
    }
}

/// Why a reconcile failed. Every variant is retried (see [`error_policy`]); none stops the loop.
///
/// Worth a quick retry ([`Error::retryable`]): [`Error::Unreachable`], [`Error::NotConverged`],
/// and the others when what failed says so (a store conflict, a backend that was down or timed
/// out). Not worth one until something changes: a host or zone that is not connected, a backend
/// that refused (a wrong key, a 4xx, a name held by a foreign container), a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed. A conflict means the record moved under the plan; a re-plan fixes it.
    #[error(transparent)]
    Reconcile(#[from] super::Error),
    /// The host's Podman or Caddy could not be observed. Always retryable: the observation keeps
    /// only its text (almost always a service that is down or slow).
    #[error("host {host} is unreachable: {error}")]
    Unreachable { host: String, error: String },
    /// The host's endpoints could not be turned into clients (a bad endpoint string).
    #[error("host {host} is not connected: {error}")]
    NotConnected { host: String, error: String },
    /// A managed zone could not be read (PowerDNS down, or the key refused); the message names
    /// the endpoint, never the key.
    #[error("zone {zone} is unreachable: {error}")]
    ZoneUnreachable {
        zone: String,
        error: String,
        retryable: bool,
    },
    /// The zone's client could not be made (its key variable unset, a bad endpoint).
    #[error("zone {zone} is not connected: {error}")]
    ZoneNotConnected { zone: String, error: String },
    /// A step failed; the executor skipped the key's remaining steps.
    #[error("{step}: {error}")]
    StepFailed {
        step: String,
        error: String,
        retryable: bool,
    },
    /// Plans kept having steps (something else keeps changing the host).
    #[error("still not converged after {rounds} rounds")]
    NotConverged { rounds: usize },
    /// The reconcile task panicked (a bug); the key is retried like any failure.
    #[error("the reconcile panicked")]
    Panicked,
}

impl Error {
    /// Why an observation failed, without the host or zone (the health registry is keyed by it).
    fn reason(&self) -> String {
        match self {
            Error::Unreachable { error, .. }
            | Error::NotConnected { error, .. }
            | Error::ZoneUnreachable { error, .. }
            | Error::ZoneNotConnected { error, .. } => error.clone(),
            other => other.to_string(),
        }
    }

    /// True when the same reconcile may succeed soon with nothing else changed; see the enum's
    /// documentation.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Reconcile(e) => e.retryable(),
            Error::Unreachable { .. } | Error::NotConverged { .. } => true,
            Error::ZoneUnreachable { retryable, .. } | Error::StepFailed { retryable, .. } => {
                *retryable
            }
            Error::NotConnected { .. } | Error::ZoneNotConnected { .. } | Error::Panicked => false,
        }
    }
}

/// The one place where a failed reconcile becomes a retry decision, from what the error says.
///
/// A retryable error ([`Error::retryable`]: a backend down or slow, a store conflict) waits for
/// the key's next backoff delay (0.8 s doubling to 15 s, plus up to 100 % jitter). One that
/// retrying cannot fix by itself (a refused key, a 4xx, a name held by a foreign container, a host
/// that is not connected) waits the longest delay (15-30 s) at once, and the key stays there
/// until it succeeds: retrying it every second or two would only load the backend and the log.
/// It is still retried, since what blocks it is often fixed outside codeb (the foreign container
/// removed, the key corrected on the server), and is then repaired within 30 s. A success resets
/// the schedule.
///
/// Resyncs respect the delay; a saved change of the key resets it, and a container event of the
/// key runs it at once. There is no "give up": a host or a PowerDNS that is down is tried again
/// within 30 s forever, and recovers within one step of the schedule after it comes back; only
/// its own keys wait (a zone's failure holds back no container or Caddy work). A release that
/// fails its health check is an error once; the retry then finds it `failed`, which the planner
/// leaves alone until the manifests name another release, so the retry makes no write and the
/// key settles.
pub fn error_policy(work: &Work, error: &Error, backoffs: &mut Backoffs<Work>) -> Duration {
    if error.retryable() {
        backoffs.next(work.clone())
    } else {
        backoffs.longest(work.clone())
    }
}

/// The planner's clock, in milliseconds since the Unix epoch. Injected so that tests move it with
/// tokio's paused time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Turns a host's endpoints into clients.
pub type Connect<R, P, K> = Box<dyn Fn(&HostRef) -> Result<HostBackends<R, P, K>, String> + Send>;

/// Turns a managed Zone into its PowerDNS client (reading the key from the variable it names). The
/// error names the Zone and the variable, never the key.
pub type ConnectZone<D> = Box<dyn Fn(&ZoneRef) -> Result<D, String> + Send>;

/// How the loop makes its clients, for hosts and for zones.
pub struct Connectors<R, P, K, D> {
    pub host: Connect<R, P, K>,
    pub zone: ConnectZone<D>,
}

/// How the loop runs.
pub struct Config {
    /// Reconciles at once, all hosts together. Most of a reconcile's time is spent waiting on a
    /// health check, so this bounds load on the hosts rather than on codeb.
    pub concurrency: usize,
    /// Remove recorded environments that the manifests no longer declare.
    pub prune: bool,
    pub clock: Clock,
    /// How long a stop waits for reconciles in flight (each finishes its current step) before it
    /// abandons them. The journal shows an abandoned step as interrupted; the next start resumes.
    pub shutdown_grace: Duration,
}

impl Config {
    pub fn new(concurrency: usize, prune: bool) -> Self {
        Config {
            concurrency,
            prune,
            clock: Arc::new(super::now_ms),
            shutdown_grace: Duration::from_secs(8),
        }
    }
}

/// How long an expectation is remembered: events arrive up to ~250 ms late, and a stop takes
/// at most Podman's stop timeout (5 s) plus the request.
const EXPECTED_FOR: Duration = Duration::from_secs(15);

/// Containers that codeb itself is stopping, removing or starting, so that their `die`, `remove`
/// and `start` events do not requeue work that codeb is doing or has done (no storms from its own
/// actions), while a start that Podman's restart policy (or a hand) made still triggers.
///
/// Exits and starts are kept apart: an exit codeb expects must not hide the start that Podman's
/// restart policy makes moments later, and a start codeb makes must not hide the crash that
/// follows it. An expected exit holds for [`EXPECTED_FOR`] (a stop sends `die`, then `remove` may
/// follow); an expected start is used up by the one `start` event it causes.
#[derive(Debug, Clone, Default)]
pub struct Expected(Arc<Mutex<Expectations>>);

/// Per (host, container id or name): until when an event of it is codeb's own.
#[derive(Debug, Default)]
struct Expectations {
    exits: HashMap<(String, String), Instant>,
    starts: HashMap<(String, String), Instant>,
}

impl Expected {
    /// Notes that codeb is about to stop or remove `container` (an id or a name) on `host`.
    pub fn expect(&self, host: &str, container: &str) {
        self.note(host, container, |e| &mut e.exits);
    }

    /// Notes that codeb is about to start `container` (an id, or the name of a container it is
    /// about to create) on `host`: the next `start` event of it is codeb's own.
    pub fn expect_start(&self, host: &str, container: &str) {
        self.note(host, container, |e| &mut e.starts);
    }

    fn note(
        &self,
        host: &str,
        container: &str,
        map: impl FnOnce(&mut Expectations) -> &mut HashMap<(String, String), Instant>,
    ) {
        let now = Instant::now();
        let mut e = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        e.exits.retain(|_, until| *until > now);
        e.starts.retain(|_, until| *until > now);
        map(&mut e).insert(
            (host.to_string(), container.to_string()),
            now + EXPECTED_FOR,
        );
    }

    /// True when a `die` or `remove` event of this container on `host` was caused by codeb.
    pub fn caused_by_codeb(&self, host: &str, id: &str, name: &str) -> bool {
        let now = Instant::now();
        let e = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        [id, name].iter().any(|c| {
            !c.is_empty()
                && e.exits
                    .get(&(host.to_string(), c.to_string()))
                    .is_some_and(|until| *until > now)
        })
    }

    /// True when a `start` event of this container on `host` was caused by codeb; that
    /// expectation is then used up, so the container's next start (a restart after a crash) is
    /// not codeb's.
    pub fn started_by_codeb(&self, host: &str, id: &str, name: &str) -> bool {
        let now = Instant::now();
        let mut e = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found = false;
        for c in [id, name] {
            if c.is_empty() {
                continue;
            }
            if let Some(until) = e.starts.remove(&(host.to_string(), c.to_string())) {
                found |= until > now;
            }
        }
        found
    }

    /// The containers `plan` stops or removes, by id, and those it starts, by id or (a container
    /// it creates) by name. Not the container of a health check that may fail (the executor then
    /// stops it): it is named, not identified, and a name would also hide the events of the next
    /// container of that slot. Its `die` costs one reconcile that writes nothing.
    fn expect_plan(&self, plan: &Plan) {
        use crate::plan::Action as A;
        for step in &plan.steps {
            match &step.action {
                A::Start { container, .. } => self.expect_start(&step.host, container),
                A::Deploy {
                    container, replace, ..
                }
                | A::Recreate {
                    container, replace, ..
                } => {
                    self.expect_start(&step.host, &container.name);
                    if let Some(c) = replace {
                        self.expect(&step.host, c);
                    }
                }
                A::Retire {
                    container: Some(c), ..
                }
                | A::RemoveContainer { id: c, .. }
                | A::Stop { container: c, .. } => self.expect(&step.host, c),
                _ => {}
            }
        }
    }
}

/// Messages to the loop.
enum Msg {
    Desired(Arc<Desired>),
    Trigger {
        work: Work,
        after: Duration,
    },
    Resync,
    Claim {
        works: Vec<Work>,
        reply: oneshot::Sender<ClaimGuard>,
    },
    Release(Vec<Work>),
}

/// The way into a running loop. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    expected: Expected,
    health: Health,
    events: HostEvents,
}

/// Per host: whether its container event stream is open, and an epoch bumped by every event the
/// stream delivers and by every open and close. While the stream stays open and the epoch stays
/// the same, no container of the host changed since the epoch was read (but for events Podman
/// has not sent yet: it sends them ~250 ms late), which is what a warm observation relies on.
#[derive(Clone, Default)]
pub struct HostEvents(Arc<std::sync::Mutex<HashMap<String, (bool, u64)>>>);

impl HostEvents {
    fn bump(&self, host: &str, open: Option<bool>) {
        let mut hosts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = hosts.entry(host.to_string()).or_insert((false, 0));
        if let Some(open) = open {
            entry.0 = open;
        }
        entry.1 += 1;
    }

    /// The host's stream opened.
    pub fn opened(&self, host: &str) {
        self.bump(host, Some(true));
    }

    /// The host's stream ended (or its pump stopped).
    pub fn closed(&self, host: &str) {
        self.bump(host, Some(false));
    }

    /// The host's stream delivered an event.
    pub fn event(&self, host: &str) {
        self.bump(host, None);
    }

    /// The host's epoch while its stream is open; `None` while it is not.
    pub fn epoch(&self, host: &str) -> Option<u64> {
        let hosts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hosts
            .get(host)
            .and_then(|&(open, epoch)| open.then_some(epoch))
    }
}

impl Handle {
    /// A new valid desired state (the manifests changed): environments whose desired state changed
    /// run now, with their backoff reset.
    pub fn set_desired(&self, desired: Arc<Desired>) {
        let _ = self.tx.send(Msg::Desired(desired));
    }

    /// Schedules `work` after `after` (earliest deadline wins).
    pub fn trigger(&self, work: Work, after: Duration) {
        let _ = self.tx.send(Msg::Trigger { work, after });
    }

    /// Sweeps every host and reconciles every managed zone now.
    pub fn resync(&self) {
        let _ = self.tx.send(Msg::Resync);
    }

    /// Takes `works` for a command, waiting while any of them runs. `None` when the loop stopped.
    pub async fn claim(&self, works: Vec<Work>) -> Option<ClaimGuard> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Claim { works, reply }).ok()?;
        rx.await.ok()
    }

    /// The registry the event pump consults.
    pub fn expected(&self) -> &Expected {
        &self.expected
    }

    /// The hosts' event streams, as the daemon's event pumps report them.
    pub fn host_events(&self) -> &HostEvents {
        &self.events
    }

    /// Per host and managed zone, when the loop last observed it and since when it fails to;
    /// times on the loop's clock ([`Config::clock`]).
    pub fn health(&self) -> Health {
        self.health.clone()
    }
}

/// Holds claimed work; dropping it gives the work back to the loop.
pub struct ClaimGuard {
    works: Vec<Work>,
    tx: mpsc::UnboundedSender<Msg>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Release(std::mem::take(&mut self.works)));
    }
}

/// What every reconcile task shares.
struct Shared<H> {
    store: Arc<Store>,
    prober: H,
    clock: Clock,
    prune: bool,
    expected: Expected,
    events: HostEvents,
    /// What each reconcile observed of its host or zone.
    health: Health,
    /// Set when the loop stops: executions start no further step.
    stop: CancellationToken,
}

impl<H> Shared<H> {
    /// Records whether `subject` could be observed now: `error` is why not.
    fn saw(&self, subject: Subject, error: Option<&Error>) {
        self.health.record(
            subject,
            (self.clock)(),
            error.map_or(Ok(()), |e| Err(e.reason())),
        );
    }
}

/// Per host, its clients alone (no zone); per managed zone, its client alone (no host).
type Clients<R, P, K, D> = Arc<BTreeMap<String, Arc<Backends<R, P, K, D>>>>;

struct Finished {
    work: Work,
    result: Result<Action, Error>,
    executed: Vec<String>,
    elapsed: Duration,
}

/// The loop. Build it with [`Controller::new`], take a [`Handle`], then [`Controller::run`] it.
pub struct Controller<R, P, K, D, H> {
    shared: Arc<Shared<H>>,
    config: Config,
    connect: Connectors<R, P, K, D>,
    endpoints: BTreeMap<String, HostRef>,
    hosts: Clients<R, P, K, D>,
    zone_endpoints: BTreeMap<String, ZoneRef>,
    zones: Clients<R, P, K, D>,
    desired: Arc<Desired>,
    queue: Queue<Work>,
    backoffs: Backoffs<Work>,
    /// When each failing key's backoff ends: sweeps (resyncs) do not run it before then.
    retry_at: HashMap<Work, Instant>,
    waiting: HashMap<Ticket, (Vec<Work>, oneshot::Sender<ClaimGuard>)>,
    tasks: JoinSet<Finished>,
    in_flight: HashMap<tokio::task::Id, Work>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
}

impl<R, P, K, D, H> Controller<R, P, K, D, H>
where
    R: Runtime + 'static,
    P: Proxy + 'static,
    K: Kernel + 'static,
    D: Dns + 'static,
    H: Prober + 'static,
{
    /// A loop over `desired`, connected to its hosts and managed zones, and to the recorded ones
    /// (which a prune still needs to reach).
    pub fn new(
        desired: Arc<Desired>,
        store: Arc<Store>,
        prober: H,
        connect: Connectors<R, P, K, D>,
        config: Config,
    ) -> Result<Self, super::Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let recorded_hosts = store.hosts()?;
        let recorded_zones = store.load()?.zones;
        let mut c = Controller {
            shared: Arc::new(Shared {
                store,
                prober,
                clock: config.clock.clone(),
                prune: config.prune,
                expected: Expected::default(),
                events: HostEvents::default(),
                health: Health::default(),
                stop: CancellationToken::new(),
            }),
            queue: Queue::new(config.concurrency),
            config,
            connect,
            endpoints: BTreeMap::new(),
            hosts: Arc::new(BTreeMap::new()),
            zone_endpoints: BTreeMap::new(),
            zones: Arc::new(BTreeMap::new()),
            desired: desired.clone(),
            backoffs: Backoffs::default(),
            retry_at: HashMap::new(),
            waiting: HashMap::new(),
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            tx,
            rx,
        };
        let mut endpoints = recorded_hosts;
        endpoints.extend(desired.hosts.clone());
        c.connect_hosts(&endpoints);
        let mut zones = recorded_zones;
        zones.extend(desired.zones.clone());
        c.connect_zones(&zones);
        Ok(c)
    }

    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.tx.clone(),
            expected: self.shared.expected.clone(),
            health: self.shared.health.clone(),
            events: self.shared.events.clone(),
        }
    }

    /// (Re)connects every host whose endpoints are new or changed.
    fn connect_hosts(&mut self, hosts: &BTreeMap<String, HostRef>) -> Vec<String> {
        let mut map = (*self.hosts).clone();
        let mut changed = Vec::new();
        for (name, h) in hosts {
            if self.endpoints.get(name) == Some(h) && map.contains_key(name) {
                continue;
            }
            self.endpoints.insert(name.clone(), h.clone());
            match (self.connect.host)(h) {
                Ok(b) => {
                    map.insert(
                        name.clone(),
                        Arc::new(Backends::hosts(BTreeMap::from([(name.clone(), b)]))),
                    );
                }
                Err(error) => {
                    warn!(host = %name, %error, "cannot connect");
                    map.remove(name);
                }
            }
            changed.push(name.clone());
        }
        self.hosts = Arc::new(map);
        changed
    }

    /// (Re)connects every managed zone whose Zone is new or changed.
    fn connect_zones(&mut self, zones: &BTreeMap<String, ZoneRef>) -> Vec<String> {
        let mut map = (*self.zones).clone();
        let mut changed = Vec::new();
        for (name, z) in zones.iter().filter(|(_, z)| z.is_managed()) {
            if self.zone_endpoints.get(name) == Some(z) && map.contains_key(name) {
                continue;
            }
            self.zone_endpoints.insert(name.clone(), z.clone());
            match (self.connect.zone)(z) {
                Ok(dns) => {
                    map.insert(
                        name.clone(),
                        Arc::new(Backends {
                            hosts: BTreeMap::new(),
                            zones: BTreeMap::from([(name.clone(), Arc::new(dns))]),
                        }),
                    );
                }
                Err(error) => {
                    warn!(zone = %name, %error, "cannot connect");
                    map.remove(name);
                }
            }
            changed.push(name.clone());
        }
        self.zones = Arc::new(map);
        changed
    }

    /// Runs until `shutdown`, then stops taking work, lets each reconcile in flight finish its
    /// current step (at most [`Config::shutdown_grace`]) and returns.
    ///
    /// Starts by sweeping every host and reconciling every managed zone: a start is an apply of
    /// the manifests as they are.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.sweep_all(Instant::now());
        let mut hard_stop: Option<Instant> = None;
        loop {
            if hard_stop.is_none() {
                let now = Instant::now();
                while let Some(work) = self.queue.pop(now) {
                    self.spawn(work);
                }
            }
            // Every change of the queue happens in one turn of this loop, so it is counted here.
            crate::metrics::metrics()
                .queue_depth
                .set(self.queue.pending() as i64);
            let wake = self.queue.next_deadline();
            tokio::select! {
                _ = shutdown.cancelled(), if hard_stop.is_none() => {
                    hard_stop = Some(Instant::now() + self.config.shutdown_grace);
                    self.shared.stop.cancel();
                    for ticket in self.queue.drain_waiting() {
                        self.waiting.remove(&ticket);
                    }
                    info!(in_flight = self.tasks.len(), "stopping: no new work; in-flight steps finish");
                }
                Some(msg) = self.rx.recv(), if hard_stop.is_none() => self.on_message(msg),
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_finished(done);
                }
                _ = sleep_until(wake), if wake.is_some() && hard_stop.is_none() => {}
                _ = sleep_until(hard_stop), if hard_stop.is_some() => {
                    warn!(
                        abandoned = self.tasks.len(),
                        "stop grace over: abandoning reconciles in flight; the journal shows their step as interrupted and the next start resumes it"
                    );
                    self.tasks.abort_all();
                    break;
                }
            }
            if hard_stop.is_some() && self.tasks.is_empty() {
                break;
            }
        }
    }

    fn on_message(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Trigger { work, after } => self.queue.schedule(work, now + after),
            Msg::Resync => self.sweep_all(now),
            Msg::Desired(new) => self.on_desired(new, now),
            Msg::Claim { works, reply } => match self.queue.claim(works.clone()) {
                Claim::Granted => self.grant(works, reply),
                Claim::Waiting(ticket) => {
                    self.waiting.insert(ticket, (works, reply));
                }
            },
            Msg::Release(works) => {
                for w in works {
                    self.finish(&w);
                }
            }
        }
    }

    /// Schedules a sweep of every host of the manifests, and with `prune` of every host that
    /// still has recorded environments (a host only recorded, without prune, has nothing to do,
    /// and may be gone for good); and a reconcile of every managed zone of the manifests (a zone
    /// only recorded is written only for a pruned environment, which hands it over).
    fn sweep_all(&mut self, now: Instant) {
        for host in self.swept_hosts() {
            self.schedule_resync(Work::Host(host), now);
        }
        for zone in managed_zones(&self.desired) {
            self.schedule_resync(Work::Zone(zone), now);
        }
    }

    /// The hosts a resync sweeps (see [`Controller::sweep_all`]).
    fn swept_hosts(&self) -> BTreeSet<String> {
        self.hosts
            .keys()
            .filter(|h| self.config.prune || self.desired.hosts.contains_key(*h))
            .cloned()
            .collect()
    }

    /// Schedules work that a resync found: not before its backoff ends, so that a key that keeps
    /// failing is retried on its schedule, not at every resync. A saved change (which resets the
    /// backoff) and a container event (a change on the host) do not wait: as in kube-runtime, a
    /// change is always worth a look.
    fn schedule_resync(&mut self, work: Work, at: Instant) {
        let at = self.retry_at.get(&work).map_or(at, |retry| at.max(*retry));
        self.queue.schedule(work, at);
    }

    fn grant(&self, works: Vec<Work>, reply: oneshot::Sender<ClaimGuard>) {
        // A claimant that went away gets the guard dropped here, which releases the work.
        let _ = reply.send(ClaimGuard {
            works,
            tx: self.tx.clone(),
        });
    }

    fn finish(&mut self, work: &Work) {
        for ticket in self.queue.finish(work) {
            if let Some((works, reply)) = self.waiting.remove(&ticket) {
                self.grant(works, reply);
            }
        }
    }

    /// Environments whose desired state changed run now, with their failures forgotten: a new
    /// spec deserves a fresh start. Hosts whose endpoints changed are reconnected and swept; zones
    /// the change can affect (a Zone, a hostname or a Host address changed, an environment came or
    /// went) are reconnected if their Zone changed, and run now, afresh too.
    fn on_desired(&mut self, new: Arc<Desired>, now: Instant) {
        let old = std::mem::replace(&mut self.desired, new.clone());
        for host in self.connect_hosts(&new.hosts) {
            self.queue.schedule(Work::Host(host), now);
        }
        let zones: BTreeSet<String> = managed_zones(&new).into_iter().collect();
        self.shared
            .health
            .forget_except(&self.swept_hosts(), &zones);
        let mut zones = plan::dns::zones_changed(&old, &new);
        zones.extend(self.connect_zones(&new.zones));
        for zone in zones.into_iter().filter(|z| new.zones.contains_key(z)) {
            let work = Work::Zone(zone);
            self.backoffs.reset(&work);
            self.retry_at.remove(&work);
            self.queue.schedule(work, now);
        }
        let keys: BTreeSet<&EnvKey> = old.envs.keys().chain(new.envs.keys()).collect();
        for key in keys {
            if old.envs.get(key) == new.envs.get(key) {
                continue;
            }
            let work = Work::Env(key.clone());
            self.backoffs.reset(&work);
            self.retry_at.remove(&work);
            if new.envs.contains_key(key) || self.config.prune {
                self.queue.schedule(work, now);
            } else {
                info!(%key, "no longer declared; left as it is (codeb watch --prune removes it)");
            }
        }
    }

    fn spawn(&mut self, work: Work) {
        let shared = self.shared.clone();
        let desired = self.desired.clone();
        let hosts = self.hosts.clone();
        let zones = self.zones.clone();
        let w = work.clone();
        let handle = self.tasks.spawn(async move {
            let started = Instant::now();
            let mut executed = Vec::new();
            let (d, ex) = (&desired, &mut executed);
            let result = match &w {
                Work::Host(h) => sweep(&shared, h, d, &hosts, ex).await,
                Work::Env(k) => reconcile_env(&shared, k, d, &hosts, &zones, ex).await,
                Work::Zone(z) => reconcile_zone(&shared, z, d, &zones, ex).await,
            };
            Finished {
                work: w,
                result,
                executed,
                elapsed: started.elapsed(),
            }
        });
        self.in_flight.insert(handle.id(), work);
    }

    fn on_finished(&mut self, done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        let finished = match done {
            Ok((id, f)) => {
                self.in_flight.remove(&id);
                f
            }
            Err(e) => {
                let Some(work) = self.in_flight.remove(&e.id()) else {
                    return;
                };
                if e.is_cancelled() {
                    self.finish(&work);
                    return;
                }
                Finished {
                    work,
                    result: Err(Error::Panicked),
                    executed: Vec::new(),
                    elapsed: Duration::ZERO,
                }
            }
        };
        let Finished {
            work,
            result,
            executed,
            elapsed,
        } = finished;
        self.finish(&work);
        count(&work, result.is_ok(), elapsed);
        let now = Instant::now();
        let duration_ms = elapsed.as_millis() as u64;
        let actions = executed.len();
        let steps = executed.join("; ");
        match result {
            Ok(action) => {
                self.backoffs.reset(&work);
                self.retry_at.remove(&work);
                for (w, after) in &action.schedule {
                    self.schedule_resync(w.clone(), now + *after);
                }
                if let Some(after) = action.requeue_after {
                    self.queue.schedule(work.clone(), now + after);
                }
                let next_ms = action.requeue_after.map(|d| d.as_millis() as u64);
                if action.problems.is_empty() {
                    info!(work = %work, result = action.result, duration_ms, actions, steps, next_ms, scheduled = action.schedule.len(), "reconciled");
                } else {
                    let problems = action.problems.join("; ");
                    warn!(work = %work, result = action.result, duration_ms, actions, steps, problems, "reconciled");
                }
            }
            Err(error) => {
                let retry = error_policy(&work, &error, &mut self.backoffs);
                self.retry_at.insert(work.clone(), now + retry);
                self.queue.schedule(work.clone(), now + retry);
                let retry_ms = retry.as_millis() as u64;
                warn!(work = %work, result = "error", duration_ms, actions, steps, %error, retry_ms, "reconciled");
            }
        }
    }
}

/// Counts a finished reconcile into the process's metrics.
fn count(work: &Work, ok: bool, elapsed: Duration) {
    use crate::metrics::{metrics, KindLabels, ReconcileLabels};
    let m = metrics();
    let kind = work.kind();
    let result = if ok { "ok" } else { "error" };
    m.reconciles
        .get_or_create(&ReconcileLabels { kind, result })
        .inc();
    m.reconcile_seconds
        .get_or_create(&KindLabels { kind })
        .observe(elapsed.as_secs_f64());
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// True for a step that belongs to the host rather than to one environment: a host step with no
/// key (codeb's Caddy server, the kernel's hook), or the registration or adoption of an
/// environment the store has no record of, or the start of a migration (each allocates or takes
/// ports on the host). A zone's step has no key either, but it is its zone's work, never the host's:
/// counted as the host's, a pruned environment whose records are still in a zone went back and
/// forth between its reconcile and the host's sweep without end.
fn host_wide(step: &Step) -> bool {
    step.action.zone().is_none()
        && (step.key.is_none()
            || matches!(step.action, plan::Action::MigrateBegin { .. })
            || (matches!(
                step.action,
                plan::Action::Register(_) | plan::Action::Adopt(_)
            ) && step.generation.is_none()))
}

/// When the next grace period of `rec` ends, if one runs: a slot's (the slot is retired then) or
/// a migration's (its source is cleaned up then), not at the next resync. One millisecond late,
/// so the planner's `since + grace <= now` holds.
fn next_grace_end(rec: &EnvRecord, now_ms: u64) -> Option<Duration> {
    let slots = Slot::ALL
        .into_iter()
        .map(|s| rec.slot(s))
        .filter(|s| s.state == SlotState::Grace)
        .map(|s| s.since_ms.saturating_add(rec.grace_period_ms));
    let migration = rec
        .migration
        .as_deref()
        .filter(|m| m.phase == MigrationPhase::Grace)
        .map(|m| m.grace_ends_ms());
    slots
        .chain(migration)
        .map(|end| end.saturating_sub(now_ms))
        .min()
        .map(|ms| Duration::from_millis(ms + 1))
}

/// The clients of `host`; a host without them is recorded as failing.
fn backends_of<'a, R, P, K, D, H>(
    sh: &Shared<H>,
    hosts: &'a Clients<R, P, K, D>,
    host: &str,
) -> Result<&'a Arc<Backends<R, P, K, D>>, Error> {
    hosts.get(host).ok_or_else(|| {
        let e = Error::NotConnected {
            host: host.to_string(),
            error: "no clients for its endpoints (see the log at start or reload)".into(),
        };
        sh.saw(Subject::Host(host.to_string()), Some(&e));
        e
    })
}

/// Observes `host` through its clients, and records whether it could.
async fn observe_host<R: Runtime, P: Proxy, K: Kernel, D: Dns, H>(
    sh: &Shared<H>,
    host: &str,
    backends: &Backends<R, P, K, D>,
) -> Result<plan::Observed, Error> {
    let observed = observe(backends).await;
    let error = unreachable(host, &observed);
    sh.saw(Subject::Host(host.to_string()), error.as_ref());
    error.map_or(Ok(observed), Err)
}

fn unreachable(host: &str, observed: &plan::Observed) -> Option<Error> {
    match observed.hosts.get(host) {
        Some(HostObservation::Reachable { .. }) => None,
        Some(HostObservation::Unreachable { error }) => Some(Error::Unreachable {
            host: host.to_string(),
            error: error.clone(),
        }),
        None => Some(Error::Unreachable {
            host: host.to_string(),
            error: "not observed".into(),
        }),
    }
}

/// One environment: observe its host, plan the environment alone, execute; again until a plan is
/// empty. Host-wide work found on the way is handed to the sweep of the host it is on.
///
/// An environment that moves between hosts (see [`scope`]: a migration in progress, a rollback's
/// mark, or manifests naming another host than its record) is observed on both hosts and in the
/// zones holding its names, planned with both, and executed with both hosts' clients, journaled as
/// `apply` does: the planner's migration phases need the source's routes and containers and the
/// zone's records. Its start (`MigrateBegin`, which allocates the target's ports) is the target
/// host's sweep's, like a registration. Its DNS writes stay the zone's (handed over before any
/// other step, so that each phase's records are written before the next phase acts, as apply
/// orders them; the zone's reconcile runs it again once it wrote them). A converged plan requeues
/// it at the end of its grace period, so that the source is cleaned up then, not at a resync.
///
/// A pruned environment also observes the zones holding its names. Their records are the zone's
/// reconcile's to remove (handed over); its record is forgotten only once they are gone, so that
/// no record of it is orphaned. A zone that cannot be read keeps it, and fails this key.
async fn reconcile_env<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    sh: &Shared<H>,
    key: &EnvKey,
    desired: &Desired,
    hosts: &Clients<R, P, K, D>,
    zones: &Clients<R, P, K, D>,
    executed: &mut Vec<String>,
) -> Result<Action, Error> {
    let store = &sh.store;
    let wanted = desired.envs.get(key);
    let Some(rec) = store.env(key).map_err(super::Error::from)? else {
        return Ok(match wanted {
            // Registration allocates ports: the host's sweep does it, then schedules this key.
            Some(d) => Action {
                schedule: vec![(Work::Host(d.host.clone()), Duration::ZERO)],
                ..Action::new("handed-to-host")
            },
            None => Action::new("unknown"),
        });
    };
    let prune = wanted.is_none() && sh.prune;
    if wanted.is_none() && !prune {
        return Ok(Action::new("not-declared"));
    }
    let (host, others) = scope(&rec, wanted);
    let moving = !others.is_empty();
    let own = backends_of(sh, hosts, &host)?;
    // A moving environment's hosts, joined into one set of clients (shared, not connected again).
    let joined;
    let backends: &Backends<R, P, K, D> = if moving {
        let mut parts = vec![own.as_ref()];
        for h in &others {
            parts.push(backends_of(sh, hosts, h)?.as_ref());
        }
        joined = Backends::joined(parts);
        &joined
    } else {
        own
    };
    // The environment alone, on the host it is planned on.
    let mut one = Desired::default();
    if let Some(h) = desired.hosts.get(&host) {
        one.hosts.insert(host.clone(), h.clone());
    }
    if let Some(d) = wanted {
        one.envs.insert(key.clone(), d.clone());
    }
    let remove: Vec<EnvKey> = if prune { vec![key.clone()] } else { vec![] };
    // Its database and cache first: its release waits while they are not ready.
    reconcile_data(sh, key, &host, wanted, desired, executed).await?;
    // Zones matter to a removal, and to a move (its phases wait for its records). As in apply, a
    // declared Zone overrides its record (one no longer managed is left alone).
    let recorded_zones = if prune {
        let mut zones = store.load().map_err(super::Error::from)?.zones;
        zones.extend(desired.zones.clone());
        zones
    } else {
        BTreeMap::new()
    };
    if let Some(d) = wanted.filter(|_| moving) {
        one.zones = plan::dns::zones_for([d.hostname.as_str()], &desired.zones);
    }
    let its_zones: BTreeSet<String> =
        plan::dns::zones_for([rec.hostname.as_str()], &recorded_zones)
            .into_keys()
            .chain(one.zones.keys().cloned())
            .collect();
    let its_zones: Vec<String> = its_zones.into_iter().collect();
    let mut recorded = Recorded {
        zones: recorded_zones,
        ..Recorded::default()
    };
    for _round in 0..MAX_ROUNDS {
        recorded.hosts = store.hosts().map_err(super::Error::from)?;
        recorded.envs = store
            .env(key)
            .map_err(super::Error::from)?
            .map(|r| (key.clone(), r))
            .into_iter()
            .collect();
        let mut observed = observe(backends).await;
        // The host it is planned on must answer; the other one of a move is planned around (its
        // part waits, noted), and fails the key once the rest has converged.
        let mut elsewhere = None;
        for h in std::iter::once(&host).chain(&others) {
            let error = unreachable(h, &observed);
            sh.saw(Subject::Host(h.clone()), error.as_ref());
            match error {
                Some(e) if *h == host => return Err(e),
                Some(e) => elsewhere = elsewhere.or(Some(e)),
                None => {}
            }
        }
        observe_zones(&its_zones, zones, &mut observed).await;
        let now = (sh.clock)();
        let mut plan = plan::plan(&one, &observed, &recorded, &remove, now);
        let wide: BTreeSet<String> = plan
            .steps
            .iter()
            .filter(|s| host_wide(s))
            .map(|s| s.host.clone())
            .collect();
        if !wide.is_empty() {
            return Ok(Action {
                schedule: wide
                    .into_iter()
                    .map(|h| (Work::Host(h), Duration::ZERO))
                    .collect(),
                ..Action::new("handed-to-host")
            });
        }
        // Only a zone's reconcile writes the zone; the record stays until it has.
        let dns: BTreeSet<String> = plan
            .steps
            .iter()
            .filter_map(|s| s.action.zone())
            .map(str::to_string)
            .collect();
        if !dns.is_empty() {
            plan.steps
                .retain(|s| s.action.zone().is_none() && !matches!(s.action, plan::Action::Forget));
        }
        if plan.is_empty() || (moving && !dns.is_empty()) {
            if !dns.is_empty() {
                return Ok(Action {
                    schedule: dns
                        .into_iter()
                        .map(|z| (Work::Zone(z), Duration::ZERO))
                        .collect(),
                    ..Action::new("handed-to-zone")
                });
            }
            if let Some(e) = plan.notes.iter().find_map(zone_unreachable) {
                return Err(e); // the record is kept until its zone can be read
            }
            if let Some(e) = elsewhere {
                return Err(e);
            }
            let problems: Vec<String> = plan
                .notes
                .iter()
                .filter(|n| n.is_problem())
                .map(|n| n.to_string())
                .collect();
            let requeue_after = recorded.envs.get(key).and_then(|r| next_grace_end(r, now));
            // The other host of a move is swept after it: what it no longer holds may leave
            // host-wide work there (no slot port published on its loopback any more).
            let schedule = others
                .into_iter()
                .map(|h| (Work::Host(h), Duration::ZERO))
                .collect();
            return Ok(Action {
                requeue_after,
                schedule,
                problems,
                ..Action::new(if prune { "pruned" } else { "converged" })
            });
        }
        if sh.stop.is_cancelled() {
            return Ok(Action::new("stopped"));
        }
        sh.expected.expect_plan(&plan);
        run(sh, &plan, backends, executed).await?;
        if sh.stop.is_cancelled() {
            return Ok(Action::new("stopped"));
        }
    }
    Err(Error::NotConverged { rounds: MAX_ROUNDS })
}

/// The hosts one environment's reconcile acts on: the one it is planned on, and the others it
/// must observe. Planned on the manifests' host (on its recorded one when it is pruned, or while
/// a rollback's mark holds it there because the manifests still name the host rolled away from:
/// see [`plan::migrate::mark`]). The others: its record's host and its migration's source, when
/// they differ from that one (a move begins, goes on, is aborted or is rolled back).
fn scope(rec: &EnvRecord, wanted: Option<&DesiredEnv>) -> (String, BTreeSet<String>) {
    let host = match (wanted, &rec.rolled_back) {
        (None, _) => rec.host.clone(),
        (Some(d), Some(mark)) if d.host == mark.from && rec.host != d.host => rec.host.clone(),
        (Some(d), _) => d.host.clone(),
    };
    let others = std::iter::once(&rec.host)
        .chain(rec.migration.as_deref().map(|m| &m.source.host))
        .filter(|h| **h != host)
        .cloned()
        .collect();
    (host, others)
}

/// One environment's database and cache (see [`super::data`]): converged before its containers,
/// or dropped or kept as its `onDelete` says when it is pruned. Not ready (a conflict, a server
/// down, a failed step) fails the key: a conflict waits for a person (the longest backoff), the
/// rest is retried.
async fn reconcile_data<H: Prober>(
    sh: &Shared<H>,
    key: &EnvKey,
    host: &str,
    wanted: Option<&crate::model::DesiredEnv>,
    desired: &Desired,
    executed: &mut Vec<String>,
) -> Result<(), Error> {
    let store = &sh.store;
    let wants = wanted.map(|d| d.data).unwrap_or_default();
    if wants.is_none()
        && store
            .data_record(key)
            .map_err(super::Error::from)?
            .is_none()
    {
        return Ok(());
    }
    let owner = super::connect::owner(store).map_err(|e| Error::StepFailed {
        step: format!("{key}: databases and caches"),
        error: e.to_string(),
        retryable: false,
    })?;
    // Its own Host only: the one the operator's configuration let this loop connect to.
    let mut hosts = store.hosts().map_err(super::Error::from)?;
    hosts.extend(desired.hosts.clone());
    hosts.retain(|name, _| name == host);
    let one = [super::data::Wanted {
        key: key.clone(),
        host: host.to_string(),
        wants,
    }];
    let out = super::data::converge(store, &owner.id, &hosts, &one, false).await?;
    executed.extend(out.executed.iter().cloned());
    if let Some((step, error)) = out.failures.first() {
        return Err(Error::StepFailed {
            step: step.clone(),
            error: error.clone(),
            retryable: true,
        });
    }
    if let Some(note) = out.plan.notes.iter().find(|n| n.blocks()) {
        return Err(Error::StepFailed {
            step: format!("{key}: databases and caches"),
            error: note.to_string(),
            retryable: matches!(note, plan::data::DataNote::Unreachable { .. }),
        });
    }
    Ok(())
}

/// Executes `plan` until the daemon stops, adding what ran to `executed`; the first failed step is
/// the reconcile's error (the executor skipped that key's remaining steps).
async fn run<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    sh: &Shared<H>,
    plan: &Plan,
    backends: &Backends<R, P, K, D>,
    executed: &mut Vec<String>,
) -> Result<(), Error> {
    let stop = sh.stop.clone();
    let report = execute_until(plan, &sh.store, backends, &sh.prober, &move || {
        stop.is_cancelled()
    })
    .await?;
    executed.extend(report.executed);
    match report.failures.into_iter().next() {
        Some(f) => Err(Error::StepFailed {
            step: f.step,
            error: crate::backend::error_chain(&f.error),
            retryable: f.error.retryable(),
        }),
        None => Ok(()),
    }
}

/// One managed zone: observe it (and the zones its conflicts depend on, see
/// [`plan::dns::zone_scope`]), plan it with every desired environment, write it in one PATCH;
/// again until a plan is empty. Pruned environments whose records it removed are scheduled, so
/// that they are forgotten, and migrating ones whose records it wrote, so that their next phase
/// goes on.
///
/// # Errors
/// The zone cannot be read or written: the key backs off, and nothing else waits for it.
async fn reconcile_zone<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    sh: &Shared<H>,
    zone: &str,
    desired: &Desired,
    zones: &Clients<R, P, K, D>,
    executed: &mut Vec<String>,
) -> Result<Action, Error> {
    let store = &sh.store;
    let mut recorded = store.load().map_err(super::Error::from)?;
    match desired.zones.get(zone) {
        // Recorded as apply records it: the variable's name, never the key.
        Some(z) if z.is_managed() => {
            if recorded.zones.get(zone) != Some(z) {
                store
                    .put_zones([z])
                    .map_err(|e| Error::Reconcile(e.into()))?;
            }
        }
        // A Zone no longer declared is still written for the environments a prune removes.
        None if sh.prune && recorded.zones.get(zone).is_some_and(ZoneRef::is_managed) => {}
        _ => return Ok(Action::new("not-declared")),
    }
    let Some(backends) = zones.get(zone) else {
        let e = Error::ZoneNotConnected {
            zone: zone.to_string(),
            error: "no client for it (see the log at start or reload)".into(),
        };
        sh.saw(Subject::Zone(zone.to_string()), Some(&e));
        return Err(e);
    };
    let mut forget: BTreeSet<EnvKey> = BTreeSet::new();
    let mut moving: BTreeSet<EnvKey> = BTreeSet::new();
    for round in 0..MAX_ROUNDS {
        if round > 0 {
            recorded = store.load().map_err(super::Error::from)?;
        }
        let prune: Vec<EnvKey> = if sh.prune {
            recorded
                .envs
                .keys()
                .filter(|k| !desired.envs.contains_key(*k))
                .cloned()
                .collect()
        } else {
            vec![]
        };
        let mut observed = observe(backends.as_ref()).await;
        let read = match observed.zones.get(zone) {
            Some(ZoneObservation::Present(z)) => Ok(Some(z)),
            Some(ZoneObservation::Missing) => Ok(None),
            Some(ZoneObservation::Unreachable { error, retryable }) => {
                Err(Error::ZoneUnreachable {
                    zone: zone.to_string(),
                    error: error.clone(),
                    retryable: *retryable,
                })
            }
            None => unreachable!("observe reads every zone of its backends"),
        };
        sh.saw(Subject::Zone(zone.to_string()), read.as_ref().err());
        let scope = plan::dns::zone_scope(zone, desired, read?);
        let others: Vec<String> = scope.into_iter().filter(|z| z != zone).collect();
        observe_zones(&others, zones, &mut observed).await;
        let plan = plan::dns::plan_zone(zone, desired, &observed, &recorded, &prune);
        if plan.is_empty() {
            return Ok(Action {
                schedule: forget
                    .into_iter()
                    .chain(moving)
                    .map(|k| (Work::Env(k), Duration::ZERO))
                    .collect(),
                problems: plan.notes.iter().map(|n| n.to_string()).collect(),
                ..Action::new("converged")
            });
        }
        if sh.stop.is_cancelled() {
            return Ok(Action::new("stopped"));
        }
        forget.extend(
            plan.steps
                .iter()
                .flat_map(|s| super::execute::deleted_owners(&s.action))
                .filter(|k| prune.contains(k)),
        );
        // A migrating environment waits for its records to follow its phase: it runs again once
        // they are written.
        moving.extend(
            plan.steps
                .iter()
                .flat_map(|s| super::execute::written_owners(&s.action))
                .filter(|k| recorded.envs.get(k).is_some_and(|r| r.migration.is_some())),
        );
        run(sh, &plan, backends, executed).await?;
    }
    Err(Error::NotConverged { rounds: MAX_ROUNDS })
}

/// Reads these zones, each through its own client, into `observed`; a zone without a client is
/// unreachable.
async fn observe_zones<R: Runtime, P: Proxy, K: Kernel, D: Dns>(
    names: &[String],
    zones: &Clients<R, P, K, D>,
    observed: &mut plan::Observed,
) {
    let reads = names.iter().map(|name| async move {
        match zones.get(name) {
            Some(b) => observe(b.as_ref()).await.zones,
            None => BTreeMap::from([(
                name.clone(),
                ZoneObservation::Unreachable {
                    error: "not connected (see the log at start or reload)".into(),
                    retryable: false,
                },
            )]),
        }
    });
    for read in join_all(reads).await {
        observed.zones.extend(read);
    }
}

fn zone_unreachable(note: &Note) -> Option<Error> {
    match note {
        // The note keeps no retry answer: the zone's own reconcile has it, and this key only
        // waits for that one.
        Note::ZoneUnreachable { zone, error } => Some(Error::ZoneUnreachable {
            zone: zone.clone(),
            error: error.clone(),
            retryable: true,
        }),
        _ => None,
    }
}

/// The managed Zones of the manifests.
fn managed_zones(desired: &Desired) -> Vec<String> {
    desired
        .zones
        .values()
        .filter(|z| z.is_managed())
        .map(|z| z.name.clone())
        .collect()
}

/// A host's sweep: one observation and one plan of every environment on the host. Does the
/// host-wide steps itself, and schedules each environment that has steps of its own or is being
/// pruned (now), or has a grace period running (when it ends).
async fn sweep<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    sh: &Shared<H>,
    host: &str,
    desired: &Desired,
    hosts: &Clients<R, P, K, D>,
    executed: &mut Vec<String>,
) -> Result<Action, Error> {
    let store = &sh.store;
    let backends = backends_of(sh, hosts, host)?;
    let mut mine = Desired::default();
    if let Some(h) = desired.hosts.get(host) {
        mine.hosts.insert(host.to_string(), h.clone());
    }
    mine.envs = desired
        .envs
        .iter()
        .filter(|(_, d)| d.host == host)
        .map(|(k, d)| (k.clone(), d.clone()))
        .collect();
    let observed = observe_host(sh, host, backends).await?;
    // Recorded once observed (see `super::record_hosts`).
    super::record_hosts(store, &mine, &observed)?;
    // How the host switches traffic, for `get hosts` (written only when it changed).
    super::record_switch_modes(store, &observed)?;
    let recorded = store.load().map_err(super::Error::from)?;
    let remove: Vec<EnvKey> = if sh.prune {
        recorded
            .envs
            .values()
            .filter(|r| r.host == host && !desired.envs.contains_key(&r.key))
            .map(|r| r.key.clone())
            .collect()
    } else {
        vec![]
    };
    let now = (sh.clock)();
    let plan = plan::plan(&mine, &observed, &recorded, &remove, now);
    let host_steps = Plan {
        steps: plan
            .steps
            .iter()
            .filter(|s| host_wide(s))
            .cloned()
            .collect(),
        notes: vec![],
    };
    if !host_steps.is_empty() {
        run(sh, &host_steps, backends, executed).await?;
    }
    // Every pruned environment still recorded: one whose containers are gone may still wait for
    // its records to leave a zone (the sweep observes no zone, so its plan does not show that).
    let busy: BTreeSet<&EnvKey> = plan
        .steps
        .iter()
        .filter_map(|s| s.key.as_ref())
        .chain(&remove)
        .collect();
    let mut schedule: Vec<(Work, Duration)> = busy
        .iter()
        .map(|k| (Work::Env((*k).clone()), Duration::ZERO))
        .collect();
    for (key, rec) in recorded
        .envs
        .iter()
        .filter(|(k, _)| !busy.contains(k) && mine.envs.contains_key(*k))
    {
        if let Some(after) = next_grace_end(rec, now) {
            schedule.push((Work::Env(key.clone()), after));
        }
    }
    Ok(Action {
        schedule,
        ..Action::new("swept")
    })
}

#[cfg(test)]
mod tests;
