//! In-memory fakes of Podman, Caddy, the kernel's NAT rules and PowerDNS, for unit tests and
//! benchmarks only.
//!
//! One [`World`] is one host: its containers, codeb's Caddy server and codeb's service addresses.
//! Every mutating call is counted, so a test can prove that a converged system gets none. A
//! container is "healthy" when it runs and its image name does not contain `unhealthy`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use super::{
    caddy, netfilter, podman, powerdns, ContainerSpec, HookWrite, Kernel, ObservedContainer,
    ObservedProxy, ObservedService, ObservedServices, Proxy, Route, Runtime, ServerSpec,
    ServiceRule, ServiceWrite, LABEL_PROJECT,
};

/// The gateway of the fake host's network: service addresses are `FAKE_GATEWAY:base_port`.
pub const FAKE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

#[derive(Debug, Default)]
pub struct State {
    pub containers: BTreeMap<String, (ObservedContainer, ContainerSpec)>,
    pub server: Option<ServerSpec>,
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
    /// Set: the kernel cannot be managed (as without root); codeb falls back to Caddy.
    pub kernel_unsupported: Option<String>,
    /// Config changes of Caddy (each one a reload) and of the NAT rules, counted apart.
    pub route_writes: usize,
    pub kernel_writes: usize,
    /// Connections still open to a target, for drain tests (none unless set).
    pub open: BTreeMap<SocketAddrV4, usize>,
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
        let container = if *dial.ip() == FAKE_GATEWAY {
            let service = s.nat.services.get(&dial.port())?;
            if service.dispatch == 0 || !s.nat.chain || s.nat.hooks == 0 {
                return None;
            }
            let Some(ServiceRule::Dnat(t)) = service.rules.first() else {
                return None;
            };
            s.containers
                .values()
                .find(|(c, spec)| c.ip == Some(*t.to.ip()) && spec.container_port == t.to.port())
        } else {
            s.containers
                .values()
                .find(|(c, spec)| c.running && spec.host_port == dial.port())
        };
        container
            .filter(|(c, _)| c.running)
            .map(|(_, spec)| spec.image.clone())
    }

    /// The container publishing `port`, if it runs and is healthy.
    pub fn healthy_on(&self, port: u16) -> bool {
        self.state().containers.values().any(|(c, spec)| {
            c.running && spec.host_port == port && !spec.image.contains("unhealthy")
        })
    }

    fn podman<T>(
        &self,
        mutate: bool,
        f: impl FnOnce(&mut State) -> Result<T, podman::Error>,
    ) -> Result<T, podman::Error> {
        let mut s = self.state();
        if s.podman_down {
            return Err(podman_down());
        }
        if mutate {
            s.mutations += 1;
        } else {
            s.reads += 1;
        }
        f(&mut s)
    }

    fn caddy<T>(&self, mutate: bool, f: impl FnOnce(&mut State) -> T) -> Result<T, caddy::Error> {
        let mut s = self.state();
        if s.caddy_down {
            return Err(caddy_down());
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

impl Runtime for World {
    async fn ping(&self) -> Result<(), podman::Error> {
        self.podman(false, |_| Ok(()))
    }

    async fn list_owned(&self) -> Result<Vec<ObservedContainer>, podman::Error> {
        self.podman(false, |s| {
            Ok(s.containers
                .values()
                .filter(|(c, _)| c.labels.contains_key(LABEL_PROJECT))
                .map(|(c, _)| c.clone())
                .collect())
        })
    }

    async fn network_gateway(&self, _name: &str) -> Result<Option<Ipv4Addr>, podman::Error> {
        self.podman(false, |_| Ok(Some(FAKE_GATEWAY)))
    }

    async fn ensure_network(&self, _name: &str) -> Result<bool, podman::Error> {
        self.podman(false, |_| Ok(false))
    }

    async fn ensure_image(&self, _image: &str) -> Result<(), podman::Error> {
        self.podman(false, |_| Ok(()))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, podman::Error> {
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
                host_port: Some(spec.host_port),
                ip: None,
            };
            s.containers.insert(id.clone(), (c, spec.clone()));
            Ok(id)
        })
    }

    async fn start(&self, id: &str) -> Result<(), podman::Error> {
        self.podman(true, |s| {
            let (c, _) = find(s, id)?;
            // Podman keeps a container's address for its lifetime and reports it while it runs.
            let n = c.id.trim_start_matches("fake").parse::<u32>().unwrap_or(0);
            c.ip = Some(Ipv4Addr::from(u32::from(FAKE_GATEWAY) + 1 + n));
            c.running = true;
            c.state = "running".into();
            Ok(())
        })
    }

    async fn stop(&self, id: &str) -> Result<(), podman::Error> {
        self.podman(true, |s| {
            if let Ok((c, _)) = find(s, id) {
                c.running = false;
                c.state = "exited".into();
                c.ip = None;
            }
            Ok(())
        })
    }

    async fn remove(&self, id: &str) -> Result<(), podman::Error> {
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

    async fn logs_tail(&self, _id: &str, _lines: usize) -> Result<Vec<String>, podman::Error> {
        self.podman(false, |_| Ok(vec!["fake log line".to_string()]))
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
    async fn observe(&self, _server: &str) -> Result<ObservedProxy, caddy::Error> {
        self.caddy(false, |s| ObservedProxy {
            server: s.server.clone(),
            routes: s
                .routes
                .iter()
                .filter(|r| r.id.starts_with(super::ROUTE_ID_PREFIX))
                .cloned()
                .collect(),
        })
    }

    async fn ensure_server(&self, spec: &ServerSpec) -> Result<(), caddy::Error> {
        self.caddy(true, |s| s.server = Some(spec.clone()))
    }

    async fn add_route(&self, _server: &str, route: &Route) -> Result<(), caddy::Error> {
        self.caddy(true, |s| {
            s.route_writes += 1;
            s.routes.push(route.clone())
        })
    }

    async fn replace_route(&self, route: &Route) -> Result<(), caddy::Error> {
        self.caddy(true, |s| {
            s.route_writes += 1;
            if let Some(r) = s.routes.iter_mut().find(|r| r.id == route.id) {
                *r = route.clone();
            }
        })
    }

    async fn delete_route(&self, id: &str) -> Result<(), caddy::Error> {
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
    ) -> Result<T, netfilter::Error> {
        let mut s = self.state();
        if let Some(reason) = s.kernel_unsupported.clone() {
            return Err(netfilter::Error::Unsupported { reason });
        }
        if mutate {
            s.mutations += 1;
            s.kernel_writes += 1;
        } else {
            s.reads += 1;
        }
        f(&mut s)
    }
}

impl Kernel for World {
    type Table = ObservedServices;

    async fn read(&self) -> Result<ObservedServices, netfilter::Error> {
        self.kernel(false, |s| Ok(s.nat.clone()))
    }

    fn services(
        &self,
        table: Result<ObservedServices, netfilter::Error>,
        gateway: Ipv4Addr,
    ) -> Result<ObservedServices, netfilter::Error> {
        let table = table?;
        Ok(if gateway == FAKE_GATEWAY {
            table
        } else {
            ObservedServices::default()
        })
    }

    async fn hook(&self, _write: &HookWrite) -> Result<(), netfilter::Error> {
        self.kernel(true, |s| {
            s.nat.chain = true;
            s.nat.hooks = 1;
            Ok(())
        })
    }

    /// Like an nf_tables transaction: all or nothing, and a dispatch rule needs the dispatch chain.
    async fn set_service(&self, write: &ServiceWrite) -> Result<(), netfilter::Error> {
        self.kernel(true, |s| {
            match &write.target {
                Some(t) => {
                    if !s.nat.chain {
                        return Err(no_chain(write));
                    }
                    s.nat.services.insert(
                        write.port,
                        ObservedService {
                            dispatch: 1,
                            chain: true,
                            rules: vec![ServiceRule::Dnat(t.clone())],
                        },
                    );
                }
                None => {
                    s.nat.services.remove(&write.port);
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

/// Probes fake worlds: a URL is healthy when a healthy container publishes its port.
#[derive(Debug, Clone, Default)]
pub struct FakeProber(pub Vec<World>);

impl crate::reconcile::Prober for FakeProber {
    async fn probe(&self, url: &str) -> Result<(), String> {
        let port = url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse::<u16>().ok());
        match port {
            Some(p) if self.0.iter().any(|w| w.healthy_on(p)) => Ok(()),
            _ => Err("connection refused".into()),
        }
    }
}

/// The zones of a fake PowerDNS.
#[derive(Debug, Default)]
pub struct DnsState {
    /// Zone name (no trailing dot) → its rrsets, foreign ones included.
    pub zones: BTreeMap<String, Vec<super::Rrset>>,
    /// Per zone: bumped by every patch, like PowerDNS's SOA serial.
    pub serials: BTreeMap<String, u32>,
    pub patches: usize,
    pub creates: usize,
    pub reads: usize,
    /// Every call, failed ones included (how often a down server was tried).
    pub calls: usize,
    /// Every call fails as an unreachable server would.
    pub down: bool,
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
    ) -> Result<T, powerdns::Error> {
        let mut s = self.state();
        s.calls += 1;
        if s.down {
            return Err(powerdns::Error::Timeout {
                api: "http://fake-pdns".into(),
                op: "GET zones".into(),
                timeout: std::time::Duration::from_secs(10),
            });
        }
        f(&mut s)
    }
}

impl super::Dns for FakeDns {
    fn endpoint(&self) -> &str {
        "http://fake-pdns"
    }

    async fn zone(&self, zone: &str) -> Result<Option<super::ObservedZone>, powerdns::Error> {
        self.call(|s| {
            s.reads += 1;
            Ok(s.zones.get(zone).map(|rrsets| super::ObservedZone {
                rrsets: rrsets.clone(),
            }))
        })
    }

    async fn create_zone(&self, zone: &str) -> Result<(), powerdns::Error> {
        self.call(|s| {
            s.creates += 1;
            s.zones.entry(zone.to_string()).or_default();
            s.serials.entry(zone.to_string()).or_insert(1);
            Ok(())
        })
    }

    /// Applies the changes as PowerDNS does (all or nothing), refusing a CNAME beside another type.
    async fn patch(
        &self,
        zone: &str,
        changes: &[super::RrsetChange],
    ) -> Result<(), powerdns::Error> {
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
                if let super::RrsetChange::Replace(r) = change {
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
