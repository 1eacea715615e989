//! In-memory fakes of Podman, Caddy, the kernel's NAT rules and PowerDNS, for unit tests and
//! benchmarks only.
//!
//! One [`World`] is one host: its containers, codeb's Caddy server and codeb's service addresses.
//! Every mutating call is counted, so a test can prove that a converged system gets none. A
//! container is "healthy" when it runs and its image name does not contain `unhealthy`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use super::{caddy, netfilter, podman, powerdns, Kernel, Proxy, Runtime};
use crate::model::observed::{
    NetworkInfo, ObservedAccessLog, ObservedContainer, ObservedLoopback, ObservedProxy,
    ObservedService, ObservedServices, ObservedZone, ServiceRule,
};
use crate::model::ownership::{LABEL_PROJECT, ROUTE_ID_PREFIX};
use crate::model::writes::{
    AccessLog, ContainerSpec, HookWrite, LoopbackWrite, Route, Rrset, RrsetChange, ServerSpec,
    ServiceWrite,
};

/// The gateway of the fake host's network: service addresses are `FAKE_GATEWAY:base_port`.
pub const FAKE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The fake network's bridge.
pub const FAKE_BRIDGE: &str = "fake0";

#[derive(Debug, Default)]
pub struct State {
    pub containers: BTreeMap<String, (ObservedContainer, ContainerSpec)>,
    pub server: Option<ServerSpec>,
    /// codeb's access log as last written (its logger and the server's `logs`).
    pub access_log: Option<AccessLog>,
    /// Every route of codeb's server, including foreign ones (only `codeb-` ones are observed).
    pub routes: Vec<Route>,
    pub mutations: usize,
    pub reads: usize,
    /// Reads of Caddy alone: one per observation of the host, whatever else is down.
    pub caddy_reads: usize,
    pub next_id: u64,
    pub podman_down: bool,
    pub caddy_down: bool,
    /// codeb's NAT rules on [`FAKE_GATEWAY`].
    pub nat: ObservedServices,
    /// codeb's NAT rules on the loopback address slots are published on (any `127.x`).
    pub published: ObservedServices,
    pub loopback: ObservedLoopback,
    /// codeb's tenant isolation is in place.
    pub isolated: bool,
    /// Set: the kernel cannot be managed (as without root); codeb falls back to Caddy.
    pub kernel_unsupported: Option<String>,
    /// Config changes of Caddy (each one a reload) and of the NAT rules, counted apart.
    pub route_writes: usize,
    pub kernel_writes: usize,
    /// Connections still open to a target, for drain tests (none unless set).
    pub open: BTreeMap<SocketAddrV4, usize>,
    /// The host's owner mark.
    pub owner: Option<crate::model::observed::Owner>,
    /// Set: codeb switches through Caddy although it may read and change the rules (as with
    /// `CODEB_SWITCH=caddy-admin`).
    pub kernel_fallback: Option<String>,
    /// Set: codeb's network does not exist yet (a fresh host); `ensure_network` creates it.
    pub no_network: bool,
    /// Set: writes of a service address's rule on [`FAKE_GATEWAY`] are refused (as nf_tables
    /// refusing a transaction); other rules are written.
    pub refuse_services: bool,
}

/// A fake host; clones share state.
#[derive(Debug, Clone, Default)]
pub struct World(pub Arc<Mutex<State>>);

impl World {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("fake world lock")
    }

    pub fn mutations(&self) -> usize {
        self.state().mutations
    }

    /// The image that answers a request for `hostname` through the fake Caddy: its route's
    /// upstream, through the NAT rules when it is a service address, to a running container.
    pub fn serving(&self, hostname: &str) -> Option<String> {
        let s = self.state();
        let route = s
            .routes
            .iter()
            .find(|r| r.hosts.iter().any(|h| h == hostname))?;
        let dial: SocketAddrV4 = route.upstream.parse().ok()?;
        s.behind(dial).map(|(_, spec)| spec.image.clone())
    }

    /// Restarts the container named `name` as `podman restart` (or a stop and a start) does:
    /// Podman 4.3 gives it a new address, which no rule leads to yet.
    pub fn restart(&self, name: &str) {
        let mut s = self.state();
        s.next_id += 1;
        let ip = Ipv4Addr::from(u32::from(FAKE_GATEWAY) + 1 + s.next_id as u32);
        let (c, _) = find(&mut s, name).expect("a container to restart");
        c.ip = Some(ip);
        c.running = true;
        c.state = "running".into();
    }

    /// True when `url`'s address and port lead to a running container that is healthy.
    pub fn healthy_at(&self, url: &str) -> bool {
        let dial = url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .and_then(|a| a.parse::<SocketAddrV4>().ok());
        let s = self.state();
        dial.and_then(|d| s.behind(d))
            .is_some_and(|(_, spec)| !spec.image.contains("unhealthy"))
    }

    fn podman<T>(
        &self,
        mutate: bool,
        f: impl FnOnce(&mut State) -> Result<T, podman::Error>,
    ) -> super::Result<T> {
        let mut s = self.state();
        if s.podman_down {
            return Err(podman_down().into());
        }
        if mutate {
            s.mutations += 1;
        } else {
            s.reads += 1;
        }
        Ok(f(&mut s)?)
    }

    fn caddy<T>(&self, mutate: bool, f: impl FnOnce(&mut State) -> T) -> super::Result<T> {
        let mut s = self.state();
        if s.caddy_down {
            return Err(caddy_down().into());
        }
        if mutate {
            s.mutations += 1;
        } else {
            s.reads += 1;
            s.caddy_reads += 1;
        }
        Ok(f(&mut s))
    }
}

impl State {
    /// The running container a connection to `dial` reaches: through codeb's rules for a
    /// service address or a kernel-published slot port, through Podman's publication, or
    /// straight to a container's own address.
    fn behind(&self, dial: SocketAddrV4) -> Option<&(ObservedContainer, ContainerSpec)> {
        let through = |rules: &ObservedServices| {
            let service = rules.services.get(&dial.port())?;
            if service.dispatch == 0 || !rules.chain || rules.hooks == 0 {
                return None;
            }
            let Some(ServiceRule::Dnat(t)) = service.rules.first() else {
                return None;
            };
            Some(t.to)
        };
        let to = if *dial.ip() == FAKE_GATEWAY {
            through(&self.nat)?
        } else if dial.ip().is_loopback() {
            match through(&self.published) {
                Some(to) => to,
                None => {
                    return self.containers.values().find(|(c, spec)| {
                        c.running && spec.publish && spec.host_port == dial.port()
                    })
                }
            }
        } else {
            dial
        };
        self.containers.values().find(|(c, spec)| {
            c.running && c.ip == Some(*to.ip()) && spec.container_port == to.port()
        })
    }
}

impl Runtime for World {
    async fn ping(&self) -> super::Result<()> {
        self.podman(false, |_| Ok(()))
    }

    async fn list_owned(&self) -> super::Result<Vec<ObservedContainer>> {
        self.podman(false, |s| {
            Ok(s.containers
                .values()
                .filter(|(c, _)| c.labels.contains_key(LABEL_PROJECT))
                .map(|(c, _)| c.clone())
                .collect())
        })
    }

    async fn network_gateway(&self, _name: &str) -> super::Result<Option<NetworkInfo>> {
        self.podman(false, |s| {
            Ok((!s.no_network).then(|| NetworkInfo {
                gateway: FAKE_GATEWAY,
                bridge: FAKE_BRIDGE.into(),
            }))
        })
    }

    async fn owner(&self) -> super::Result<Option<crate::model::observed::Owner>> {
        self.podman(false, |s| Ok(s.owner.clone()))
    }

    async fn mark_owner(&self, owner: &crate::model::observed::Owner) -> super::Result<()> {
        self.podman(true, |s| {
            s.owner = Some(owner.clone());
            Ok(())
        })
    }

    async fn unmark_owner(&self) -> super::Result<()> {
        self.podman(true, |s| {
            s.owner = None;
            Ok(())
        })
    }

    async fn ensure_network(&self, _name: &str) -> super::Result<bool> {
        let missing = self.state().no_network;
        self.podman(missing, |s| {
            s.no_network = false;
            Ok(missing)
        })
    }

    async fn ensure_image(&self, _image: &str) -> super::Result<()> {
        self.podman(false, |_| Ok(()))
    }

    async fn create(&self, spec: &ContainerSpec) -> super::Result<String> {
        self.podman(true, |s| {
            if s.containers.values().any(|(c, _)| c.name == spec.name) {
                return Err(name_in_use(&spec.name));
            }
            s.next_id += 1;
            let id = format!("fake{:08}", s.next_id);
            let c = ObservedContainer {
                id: id.clone(),
                name: spec.name.clone(),
                image: spec.image.clone(),
                labels: spec.labels.clone(),
                running: false,
                state: "created".into(),
                host_port: spec.publish.then_some(spec.host_port),
                ip: None,
            };
            s.containers.insert(id.clone(), (c, spec.clone()));
            Ok(id)
        })
    }

    async fn start(&self, id: &str) -> super::Result<()> {
        self.podman(true, |s| {
            let (c, _) = find(s, id)?;
            // An address drawn from the container's id; `restart` draws a new one, as Podman's
            // stop and start do (ids and draws share one counter, so no two containers meet).
            let n = c.id.trim_start_matches("fake").parse::<u32>().unwrap_or(0);
            c.ip = Some(Ipv4Addr::from(u32::from(FAKE_GATEWAY) + 1 + n));
            c.running = true;
            c.state = "running".into();
            Ok(())
        })
    }

    async fn stop(&self, id: &str) -> super::Result<()> {
        self.podman(true, |s| {
            if let Ok((c, _)) = find(s, id) {
                c.running = false;
                c.state = "exited".into();
                c.ip = None;
            }
            Ok(())
        })
    }

    async fn remove(&self, id: &str) -> super::Result<()> {
        self.podman(true, |s| {
            let key = s
                .containers
                .iter()
                .find(|(k, (c, _))| k.as_str() == id || c.name == id)
                .map(|(k, _)| k.clone());
            if let Some(k) = key {
                s.containers.remove(&k);
            }
            Ok(())
        })
    }

    async fn rename(&self, id: &str, name: &str) -> super::Result<()> {
        self.podman(true, |s| {
            if s.containers.values().any(|(c, _)| c.name == name) {
                return Err(name_in_use(name));
            }
            let (c, spec) = find(s, id)?;
            c.name = name.to_string();
            spec.name = name.to_string();
            Ok(())
        })
    }

    async fn address(&self, id: &str) -> super::Result<Option<Ipv4Addr>> {
        self.podman(false, |s| Ok(find(s, id)?.0.ip))
    }

    async fn logs_tail(&self, _id: &str, _lines: usize) -> super::Result<Vec<String>> {
        self.podman(false, |_| Ok(vec!["fake log line".to_string()]))
    }

    fn logs_follow(
        &self,
        _id: &str,
        _lines: usize,
    ) -> futures_util::stream::BoxStream<'static, super::Result<String>> {
        use futures_util::StreamExt;
        let line = self.podman(false, |_| Ok("fake log line".to_string()));
        futures_util::stream::iter([line]).boxed()
    }
}

// Errors shaped like the real adapters' for the same situations.
fn podman_down() -> podman::Error {
    podman::Error::Unreachable {
        endpoint: "unix:///fake/podman.sock".into(),
        reason: "the fake host is down".into(),
    }
}

fn name_in_use(name: &str) -> podman::Error {
    podman::Error::Api {
        op: "create".into(),
        status: Some(500),
        message: format!("the container name \"{name}\" is already in use"),
    }
}

fn no_such_container(id: &str) -> podman::Error {
    podman::Error::NotFound {
        op: "inspect".into(),
        message: format!("no container {id}"),
    }
}

fn caddy_down() -> caddy::Error {
    caddy::Error::Timeout {
        admin: "http://fake".into(),
        op: "observe".into(),
        timeout: std::time::Duration::from_secs(10),
    }
}

fn find<'a>(
    s: &'a mut State,
    id: &str,
) -> Result<&'a mut (ObservedContainer, ContainerSpec), podman::Error> {
    s.containers
        .values_mut()
        .find(|(c, _)| c.id == id || c.name == id)
        .ok_or_else(|| no_such_container(id))
}

impl Proxy for World {
    async fn observe(&self, _server: &str) -> super::Result<ObservedProxy> {
        self.caddy(false, |s| ObservedProxy {
            // As in Caddy, the server's `logs` goes with the server: a logger without it is
            // codeb's access log half there.
            access_log: match (&s.server, &s.access_log) {
                (_, None) => ObservedAccessLog::Absent,
                (Some(_), Some(log)) => ObservedAccessLog::Is(log.clone()),
                (None, Some(_)) => ObservedAccessLog::Other,
            },
            server: s.server.clone(),
            routes: s
                .routes
                .iter()
                .filter(|r| r.id.starts_with(ROUTE_ID_PREFIX))
                .cloned()
                .collect(),
        })
    }

    async fn ensure_server(&self, spec: &ServerSpec) -> super::Result<()> {
        self.caddy(true, |s| s.server = Some(spec.clone()))
    }

    async fn ensure_access_log(&self, _server: &str, log: Option<&AccessLog>) -> super::Result<()> {
        self.caddy(true, |s| s.access_log = log.cloned())
    }

    async fn add_route(&self, _server: &str, route: &Route) -> super::Result<()> {
        self.caddy(true, |s| {
            s.route_writes += 1;
            s.routes.push(route.clone())
        })
    }

    async fn replace_route(&self, route: &Route) -> super::Result<()> {
        self.caddy(true, |s| {
            s.route_writes += 1;
            if let Some(r) = s.routes.iter_mut().find(|r| r.id == route.id) {
                *r = route.clone();
            }
        })
    }

    async fn delete_route(&self, id: &str) -> super::Result<()> {
        self.caddy(true, |s| {
            s.route_writes += 1;
            s.routes.retain(|r| r.id != id)
        })
    }
}

impl World {
    fn kernel<T>(
        &self,
        mutate: bool,
        f: impl FnOnce(&mut State) -> Result<T, netfilter::Error>,
    ) -> super::Result<T> {
        let mut s = self.state();
        if let Some(reason) = s.kernel_unsupported.clone() {
            return Err(netfilter::Error::Unsupported { reason }.into());
        }
        if mutate {
            s.mutations += 1;
            s.kernel_writes += 1;
        } else {
            s.reads += 1;
        }
        Ok(f(&mut s)?)
    }
}

/// One read of the fake kernel: the rules on [`FAKE_GATEWAY`], on the loopback address, the
/// loopback plumbing, and whether the tenant isolation is in place.
pub type FakeTable = (ObservedServices, ObservedServices, ObservedLoopback, bool);

impl State {
    /// The rules on `address`: the gateway's, or the loopback publication's.
    fn rules_on(&mut self, address: Ipv4Addr) -> &mut ObservedServices {
        if address.is_loopback() {
            &mut self.published
        } else {
            &mut self.nat
        }
    }
}

impl Kernel for World {
    type Table = FakeTable;

    async fn read(&self) -> super::Result<FakeTable> {
        self.kernel(false, |s| {
            Ok((
                s.nat.clone(),
                s.published.clone(),
                s.loopback.clone(),
                s.isolated,
            ))
        })
    }

    fn services(&self, table: &FakeTable, gateway: Ipv4Addr) -> super::Result<ObservedServices> {
        Ok(if gateway == FAKE_GATEWAY {
            table.0.clone()
        } else if gateway.is_loopback() {
            table.1.clone()
        } else {
            ObservedServices::default()
        })
    }

    fn fallback(&self) -> Option<String> {
        self.state().kernel_fallback.clone()
    }

    fn isolated(&self, table: &FakeTable) -> bool {
        table.3
    }

    async fn isolate(&self) -> super::Result<()> {
        self.kernel(true, |s| {
            s.isolated = true;
            Ok(())
        })
    }

    fn loopback(&self, table: &FakeTable, bridge: &str) -> ObservedLoopback {
        if bridge == FAKE_BRIDGE {
            table.2.clone()
        } else {
            ObservedLoopback::default()
        }
    }

    async fn set_loopback(&self, _write: &LoopbackWrite) -> super::Result<()> {
        self.kernel(true, |s| {
            s.loopback = ObservedLoopback {
                masquerade: 1,
                guard: 1,
                route_localnet: true,
                mac_pinned: true,
                bridge_missing: false,
            };
            Ok(())
        })
    }

    async fn loopback_off(&self, _bridge: &str) -> super::Result<()> {
        self.kernel(true, |s| {
            s.loopback.route_localnet = false;
            Ok(())
        })
    }

    async fn pin_mac(&self, _bridge: &str) -> super::Result<()> {
        self.kernel(true, |s| {
            s.loopback.mac_pinned = true;
            Ok(())
        })
    }

    async fn hook(&self, write: &HookWrite) -> super::Result<()> {
        self.kernel(true, |s| {
            let rules = s.rules_on(write.gateway);
            rules.chain = true;
            rules.hooks = 1;
            Ok(())
        })
    }

    /// Like an nf_tables transaction: all or nothing, and a dispatch rule needs the dispatch chain.
    async fn set_service(&self, write: &ServiceWrite) -> super::Result<()> {
        self.kernel(true, |s| {
            if s.refuse_services && !write.gateway.is_loopback() {
                return Err(no_chain(write));
            }
            let rules = s.rules_on(write.gateway);
            match &write.target {
                Some(t) => {
                    if !rules.chain {
                        return Err(no_chain(write));
                    }
                    rules.services.insert(
                        write.port,
                        ObservedService {
                            dispatch: 1,
                            chain: true,
                            rules: vec![ServiceRule::Dnat(t.clone())],
                        },
                    );
                }
                None => {
                    rules.services.remove(&write.port);
                }
            }
            Ok(())
        })
    }

    async fn open_connections(&self, target: SocketAddrV4) -> Option<usize> {
        Some(self.state().open.get(&target).copied().unwrap_or(0))
    }
}

fn no_chain(write: &ServiceWrite) -> netfilter::Error {
    netfilter::Error::Refused {
        what: format!(
            "the change of {} at `add rule to {}`",
            netfilter::service_chain(write.gateway, write.port),
            netfilter::dispatch_chain(write.gateway)
        ),
        source: std::io::Error::from_raw_os_error(2),
    }
}

/// Probes fake worlds: a URL is healthy when what its address and port lead to is a healthy
/// running container.
#[derive(Debug, Clone, Default)]
pub struct FakeProber(pub Vec<World>);

impl crate::reconcile::Prober for FakeProber {
    async fn probe(&self, url: &str) -> Result<(), String> {
        if self.0.iter().any(|w| w.healthy_at(url)) {
            Ok(())
        } else {
            Err("connection refused".into())
        }
    }
}

/// The zones of a fake PowerDNS.
#[derive(Debug, Default)]
pub struct DnsState {
    /// Zone name (no trailing dot) → its rrsets, foreign ones included.
    pub zones: BTreeMap<String, Vec<Rrset>>,
    /// Per zone: bumped by every patch, like PowerDNS's SOA serial.
    pub serials: BTreeMap<String, u32>,
    pub patches: usize,
    pub creates: usize,
    pub reads: usize,
    /// Every call, failed ones included (how often a down server was tried).
    pub calls: usize,
    /// Every call fails as an unreachable server would.
    pub down: bool,
    /// Every call fails as a server refusing the API key would (not retryable).
    pub refuse_key: bool,
    /// Patches fail as a refused change would (after being counted as an attempt).
    pub refuse_patches: bool,
    pub patch_attempts: usize,
}

/// A fake PowerDNS; clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeDns(pub Arc<Mutex<DnsState>>);

impl FakeDns {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, DnsState> {
        self.0.lock().expect("fake dns lock")
    }

    /// Writes (creations and patches) so far.
    pub fn writes(&self) -> usize {
        let s = self.state();
        s.patches + s.creates
    }

    fn call<T>(
        &self,
        f: impl FnOnce(&mut DnsState) -> Result<T, powerdns::Error>,
    ) -> super::Result<T> {
        let mut s = self.state();
        s.calls += 1;
        if s.down {
            return Err(powerdns::Error::Timeout {
                api: "http://fake-pdns".into(),
                op: "GET zones".into(),
                timeout: std::time::Duration::from_secs(10),
            }
            .into());
        }
        if s.refuse_key {
            return Err(powerdns::Error::Unauthorized {
                api: "http://fake-pdns".into(),
                env: "PDNS_API_KEY".into(),
                op: "GET zones".into(),
                status: 401,
            }
            .into());
        }
        Ok(f(&mut s)?)
    }
}

impl super::Dns for FakeDns {
    fn endpoint(&self) -> &str {
        "http://fake-pdns"
    }

    async fn zone(&self, zone: &str) -> super::Result<Option<ObservedZone>> {
        self.call(|s| {
            s.reads += 1;
            Ok(s.zones.get(zone).map(|rrsets| ObservedZone {
                rrsets: rrsets.clone(),
            }))
        })
    }

    async fn create_zone(&self, zone: &str) -> super::Result<()> {
        self.call(|s| {
            s.creates += 1;
            s.zones.entry(zone.to_string()).or_default();
            s.serials.entry(zone.to_string()).or_insert(1);
            Ok(())
        })
    }

    /// Applies the changes as PowerDNS does (all or nothing), refusing a CNAME beside another type.
    async fn patch(&self, zone: &str, changes: &[RrsetChange]) -> super::Result<()> {
        self.call(|s| {
            s.patch_attempts += 1;
            if s.refuse_patches {
                return Err(powerdns::Error::Rejected {
                    api: "http://fake-pdns".into(),
                    op: format!("PATCH zones/{zone}."),
                    message: "refused by the fake".into(),
                });
            }
            let mut rrsets = s
                .zones
                .get(zone)
                .cloned()
                .ok_or_else(|| powerdns::Error::Api {
                    api: "http://fake-pdns".into(),
                    op: format!("PATCH zones/{zone}."),
                    status: 404,
                    body: "Not Found".into(),
                })?;
            for change in changes {
                rrsets.retain(|r| !(r.name == change.name() && r.rtype == change.rtype()));
                if let RrsetChange::Replace(r) = change {
                    let clash = rrsets
                        .iter()
                        .any(|o| o.name == r.name && (o.rtype == "CNAME") != (r.rtype == "CNAME"));
                    if clash {
                        return Err(powerdns::Error::Rejected {
                            api: "http://fake-pdns".into(),
                            op: format!("PATCH zones/{zone}."),
                            message: format!(
                                "RRset {} IN {}: Conflicts with pre-existing RRset",
                                r.name, r.rtype
                            ),
                        });
                    }
                    rrsets.push(r.clone());
                }
            }
            s.patches += 1;
            *s.serials.entry(zone.to_string()).or_insert(1) += 1;
            s.zones.insert(zone.to_string(), rrsets);
            Ok(())
        })
    }
}
