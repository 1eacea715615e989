//! Backend adapters: the only code that speaks Podman's, Caddy's or PowerDNS's wire protocols, or
//! the kernel's NAT rules.
//!
//! Each adapter converts wire types to the plain data types below at its edge, so that `plan` and
//! `reconcile` never see bollard, JSON or netlink bytes. Adapters make no decisions: they observe and
//! they carry out one mutation per call. Ownership marks (container labels, route `@id`s, chain
//! names, rrset comments) are applied by the caller; adapters only ever list and touch objects that
//! carry them (PowerDNS answers a zone whole, so its adapter reports every rrset and says which
//! carry codeb's mark).

pub mod caddy;
pub mod fake;
pub mod netfilter;
pub mod podman;
pub mod powerdns;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Label keys that mark a container as codeb's. A container without [`LABEL_PROJECT`] is never touched.
pub const LABEL_PROJECT: &str = "codeb.project";
pub const LABEL_ENVIRONMENT: &str = "codeb.environment";
pub const LABEL_SLOT: &str = "codeb.slot";
pub const LABEL_RELEASE: &str = "codeb.release";
/// The slot's host port, on every container: where codeb's kernel rules publish a container that
/// Podman does not, so that port allocation sees it (see [`ContainerSpec::publish`]).
pub const LABEL_PORT: &str = "codeb.port";

/// The start of every HTTP client codeb builds. Every endpoint it speaks to is plain `http://`
/// (Podman's API, Caddy's admin API and PowerDNS's API refuse other schemes at their edge, and
/// health probes dial a slot's published port), so the client trusts no certificate: by default
/// reqwest's rustls verifier reads the machine's whole certificate store for every client built
/// (about 140 files here), which was a third of the wall time of `codeb promote`. An `https://` URL
/// fails closed.
pub fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_certs_only(Vec::new())
}

/// An error and its causes on one line, each cause once (a cause whose text is already in the
/// line, as "connection refused" often is, is not repeated).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Prefix of every Caddy route `@id` that codeb owns. Routes without it are never touched.
pub const ROUTE_ID_PREFIX: &str = "codeb-";

/// A container as codeb wants it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// `{project}-{environment}-{slot}`.
    pub name: String,
    pub image: String,
    /// Replaces the image's CMD when set.
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Includes the ownership labels above.
    pub labels: BTreeMap<String, String>,
    /// The TCP port the app listens on inside the container.
    pub container_port: u16,
    /// Host address the port is published on (loopback by default).
    pub host_ip: String,
    pub host_port: u16,
    /// Podman publishes `host_ip:host_port` itself. When false the container publishes nothing
    /// and codeb's kernel rules map the slot port to it: a new release can then start beside the
    /// container it replaces, which holds no port.
    pub publish: bool,
    /// The network the container joins (`codeb-main`).
    pub network: String,
}

/// A codeb-owned container as Podman reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// True only when Podman says `running`. Transient states (`stopped`, `created`, `exited`,
    /// `configured`) are all "not running".
    pub running: bool,
    /// Podman's state word, for display.
    pub state: String,
    /// The host port the container port is published on, if any.
    pub host_port: Option<u16>,
    /// The container's IPv4 address on its network (codeb's containers join exactly one), read
    /// from the same list call. Absent while the container is not running.
    pub ip: Option<Ipv4Addr>,
}

/// The container runtime of one host (Podman's Docker-compatible API).
///
/// Every call is one request (or a short fixed sequence) and is idempotent where the wire allows:
/// removing a missing container or stopping a stopped one succeeds.
pub trait Runtime: Send + Sync {
    /// Cheap liveness check; an error names the endpoint and how to start the service.
    fn ping(&self) -> impl Future<Output = Result<(), podman::Error>> + Send;
    /// Every container carrying the [`LABEL_PROJECT`] label, running or not. One list call.
    fn list_owned(
        &self,
    ) -> impl Future<Output = Result<Vec<ObservedContainer>, podman::Error>> + Send;
    /// The containers of one project environment only (its [`LABEL_PROJECT`] and
    /// [`LABEL_ENVIRONMENT`]), for a command that acts on it alone: Podman's list costs about
    /// 1 ms per container it reports, so on a host of 35 containers this is 5 ms instead of 35.
    fn list_env(
        &self,
        key: &crate::model::EnvKey,
    ) -> impl Future<Output = Result<Vec<ObservedContainer>, podman::Error>> + Send {
        async move {
            Ok(self
                .list_owned()
                .await?
                .into_iter()
                .filter(|c| crate::plan::belongs_to(c, key))
                .collect())
        }
    }
    /// The IPv4 gateway of a network (its bridge's address on the Podman host) and the bridge's
    /// interface name. `None` when the network does not exist (or has no IPv4 subnet).
    fn network_gateway(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<NetworkInfo>, podman::Error>> + Send;
    /// Creates the bridge network when it does not exist. Returns true when it created it.
    fn ensure_network(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<bool, podman::Error>> + Send;
    /// Pulls the image only when it is not present locally.
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), podman::Error>> + Send;
    /// Creates (does not start) the container; returns its id. Runs with an init process and a
    /// restart policy.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, podman::Error>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<(), podman::Error>> + Send;
    fn stop(&self, id: &str) -> impl Future<Output = Result<(), podman::Error>> + Send;
    /// Renames a container (it keeps running, with its labels).
    fn rename(
        &self,
        id: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), podman::Error>> + Send;
    /// The container's IPv4 address on its network; `None` while it does not run.
    fn address(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Ipv4Addr>, podman::Error>> + Send;
    /// Force-removes the container; a missing container is not an error.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), podman::Error>> + Send;
    /// The last `lines` lines of stdout+stderr.
    fn logs_tail(
        &self,
        id: &str,
        lines: usize,
    ) -> impl Future<Output = Result<Vec<String>, podman::Error>> + Send;
}

/// How codeb's Caddy server terminates connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// ACME certificates (Caddy's automatic HTTPS).
    Auto,
    /// Caddy's internal CA (`tls internal`, no trust store changes).
    Internal,
    /// Plain HTTP; automatic HTTPS disabled.
    Off,
}

/// codeb's own HTTP server in Caddy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// The key under `apps.http.servers` (`codeb`).
    pub name: String,
    pub listen: Vec<String>,
    pub tls: TlsMode,
}

/// One codeb route: requests for `hosts` go to `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Unique, starts with [`ROUTE_ID_PREFIX`].
    pub id: String,
    pub hosts: Vec<String>,
    /// A `host:port` dial address.
    pub upstream: String,
    /// Whether Caddy may keep idle connections to the upstream open and reuse them (its default).
    /// Off for a service address: the kernel maps a connection to a slot when it opens, so a
    /// reused connection would keep reaching the old slot after a switch.
    pub keep_alive: bool,
}

/// What codeb owns in one Caddy, as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedProxy {
    /// codeb's server, when it exists. `None` also after a Caddy restart with `persist: false`.
    pub server: Option<ServerSpec>,
    /// Every route in codeb's server whose `@id` starts with [`ROUTE_ID_PREFIX`], in order. A route
    /// whose shape is not the one codeb writes is still listed (with what could be read) so that the
    /// diff replaces it.
    pub routes: Vec<Route>,
}

/// One Caddy, driven only through its admin API.
pub trait Proxy: Send + Sync {
    fn observe(
        &self,
        server: &str,
    ) -> impl Future<Output = Result<ObservedProxy, caddy::Error>> + Send;
    /// Creates codeb's server (with no routes) when missing, or replaces its listen/TLS settings
    /// while keeping its routes.
    fn ensure_server(
        &self,
        spec: &ServerSpec,
    ) -> impl Future<Output = Result<(), caddy::Error>> + Send;
    /// Appends a route to codeb's server.
    fn add_route(
        &self,
        server: &str,
        route: &Route,
    ) -> impl Future<Output = Result<(), caddy::Error>> + Send;
    /// Replaces the route with the same `@id`.
    fn replace_route(&self, route: &Route)
        -> impl Future<Output = Result<(), caddy::Error>> + Send;
    /// Deletes the route with this `@id`; a missing one is not an error.
    fn delete_route(&self, id: &str) -> impl Future<Output = Result<(), caddy::Error>> + Send;
}

/// codeb's network on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The bridge's address on the host: where service addresses live.
    pub gateway: Ipv4Addr,
    /// The bridge's interface name (`podman1`, `cb18080`); empty when Podman does not say.
    pub bridge: String,
}

/// What a loopback address needs so that its NAT rules can lead to containers on a bridge: a
/// connection from `127.0.0.1` leaves through the bridge only with `route_localnet` set on it, and
/// the container answers it only once it is masqueraded to the bridge's address; the guard drops
/// anything arriving from the bridge for a loopback address that codeb did not translate (with
/// `route_localnet` on, a container could otherwise reach the host's loopback services).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedLoopback {
    /// codeb's masquerade rules for the bridge (1 when in place).
    pub masquerade: usize,
    /// codeb's guard rules for the bridge (1 when in place).
    pub guard: usize,
    pub route_localnet: bool,
}

/// Brings a bridge's loopback plumbing to one masquerade rule, one guard rule and
/// `route_localnet` on, from what was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopbackWrite {
    pub bridge: String,
    pub observed: ObservedLoopback,
}

/// codeb's NAT rules for the service addresses on one gateway, as observed.
///
/// A service address is `gateway:port`: the gateway is the address of codeb's Podman network on
/// the host, the port is the environment's base port. Its rules map it to one container's
/// `ip:port` (see [`netfilter`] for the chains).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedServices {
    /// codeb's dispatch chain for this gateway exists.
    pub chain: bool,
    /// Rules of codeb's base chain jumping to the dispatch chain (1 once hooked).
    pub hooks: usize,
    /// Each service port that has a dispatch rule or a chain. Hashed: the planner looks up one
    /// port per environment, and a tree of 10,000 ports was a tenth of planning a converged host.
    pub services: rustc_hash::FxHashMap<u16, ObservedService>,
}

/// One service address's rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedService {
    /// Dispatch rules sending the port to the service's chain (1 when in place).
    pub dispatch: usize,
    /// The service's own chain exists.
    pub chain: bool,
    /// The rules of the service's chain, in order: exactly one `Dnat` when converged.
    pub rules: Vec<ServiceRule>,
}

/// A rule of a service's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceRule {
    /// The one shape codeb writes.
    Dnat(ServiceTarget),
    /// Anything else (a rule changed by hand), described for a person.
    Other(String),
}

/// Where a service address leads: a container's address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub to: SocketAddrV4,
    /// `project/environment`, kept in the rule's comment for people reading `nft list ruleset`.
    pub label: String,
}

/// One atomic change to a service address: its chain is replaced whole (or removed), and its
/// dispatch rule is brought to exactly one (or none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceWrite {
    pub gateway: Ipv4Addr,
    pub port: u16,
    /// `None` removes the service address.
    pub target: Option<ServiceTarget>,
    /// Dispatch rules observed for the port (the write adds or deletes to reach 1, or 0).
    pub dispatch: usize,
}

/// Creates an address's dispatch chain and its rule in codeb's base chain at nat `output`,
/// whichever is missing (the address is a gateway, or the loopback address slot ports are
/// published on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookWrite {
    pub gateway: Ipv4Addr,
    /// The dispatch chain exists already.
    pub chain: bool,
    /// Rules observed jumping to the dispatch chain from codeb's base chain.
    pub hooks: usize,
}

/// The kernel's part of the data path on one host: NAT rules that map each environment's service
/// address to its active slot, and each slot's published port to its container. Caddy dials the
/// service address, so a switch changes one rule and never Caddy's config.
pub trait Kernel: Send + Sync {
    /// What one read of the rules holds, before it is parsed for a gateway.
    type Table: Send;
    /// codeb's rules for the service addresses on `gateway`.
    ///
    /// # Errors
    /// [`netfilter::Error::Unsupported`] when this host's rules cannot be managed from here (no
    /// privilege, no nf_tables, a gateway that is not an address of this machine): the caller then
    /// switches through Caddy's admin API instead.
    fn observe(
        &self,
        gateway: Ipv4Addr,
    ) -> impl Future<Output = Result<ObservedServices, netfilter::Error>> + Send {
        async move { self.services(&self.read().await?, gateway) }
    }
    /// The NAT rules as they are now, read before the gateway is known (the read and the lookup
    /// of codeb's network then run side by side; see [`Kernel::services`]).
    ///
    /// # Errors
    /// As [`Kernel::observe`], but only those that do not depend on the gateway.
    fn read(&self) -> impl Future<Output = Result<Self::Table, netfilter::Error>> + Send;
    /// codeb's rules for the addresses on `gateway` (a service gateway, or the loopback address
    /// slots are published on), from a [`Kernel::read`]. An address that is not one of this
    /// machine is [`netfilter::Error::Unsupported`].
    fn services(
        &self,
        table: &Self::Table,
        gateway: Ipv4Addr,
    ) -> Result<ObservedServices, netfilter::Error>;
    /// codeb's loopback plumbing for `bridge`, from a [`Kernel::read`] and the bridge's settings.
    fn loopback(&self, table: &Self::Table, bridge: &str) -> ObservedLoopback;
    /// Applies a [`LoopbackWrite`]: the rules in one transaction, then `route_localnet`.
    fn set_loopback(
        &self,
        write: &LoopbackWrite,
    ) -> impl Future<Output = Result<(), netfilter::Error>> + Send;
    /// Applies a [`HookWrite`] in one transaction.
    fn hook(&self, write: &HookWrite) -> impl Future<Output = Result<(), netfilter::Error>> + Send;
    /// Applies a [`ServiceWrite`] in one transaction: at no instant does the service address
    /// lead nowhere or to two targets.
    fn set_service(
        &self,
        write: &ServiceWrite,
    ) -> impl Future<Output = Result<(), netfilter::Error>> + Send;
    /// How many connections to `target` are open (established or opening), for draining a slot
    /// before it is removed. `None` when the kernel does not tell.
    fn open_connections(&self, target: SocketAddrV4) -> impl Future<Output = Option<usize>> + Send;
}

/// The `account` of the comment that marks an rrset as codeb's. An rrset without a comment of
/// this account is foreign: codeb never changes or deletes it.
pub const DNS_ACCOUNT: &str = "codeb";

/// One rrset (all records of one name and type) of a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rrset {
    /// Canonical, with the trailing dot: `hello.codeb.kr.`.
    pub name: String,
    /// `A`, `AAAA`, `CNAME`, `TXT`, ...
    pub rtype: String,
    pub ttl: u32,
    /// The contents of the enabled records (a disabled record counts as absent), as PowerDNS
    /// writes them (`127.0.0.1`, `2001:db8::1`, `"v=spf1 -all"`).
    pub records: Vec<String>,
    /// The content of the comment with account [`DNS_ACCOUNT`], when there is one: the rrset is
    /// codeb's. `None`: foreign.
    pub mark: Option<String>,
}

/// A zone as observed: every rrset in it, codeb's and foreign.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedZone {
    pub rrsets: Vec<Rrset>,
}

/// One change of a zone, all of which go in one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RrsetChange {
    /// Creates or replaces the rrset `name`/`rtype` with these records, TTL and mark.
    Replace(Rrset),
    /// Deletes the rrset; a missing one is not an error.
    Delete { name: String, rtype: String },
}

impl RrsetChange {
    pub fn name(&self) -> &str {
        match self {
            RrsetChange::Replace(r) => &r.name,
            RrsetChange::Delete { name, .. } => name,
        }
    }

    pub fn rtype(&self) -> &str {
        match self {
            RrsetChange::Replace(r) => &r.rtype,
            RrsetChange::Delete { rtype, .. } => rtype,
        }
    }
}

/// The authoritative DNS server of one Zone (PowerDNS's HTTP API).
///
/// Zone names are given without the trailing dot. Every call is one request.
pub trait Dns: Send + Sync {
    /// Where the API is, for messages (never with the key).
    fn endpoint(&self) -> &str;
    /// The zone with all its rrsets, or `None` when it does not exist. One `GET`.
    fn zone(
        &self,
        zone: &str,
    ) -> impl Future<Output = Result<Option<ObservedZone>, powerdns::Error>> + Send;
    /// Creates the zone (Native, with the server's default SOA). One `POST`.
    fn create_zone(&self, zone: &str) -> impl Future<Output = Result<(), powerdns::Error>> + Send;
    /// Applies every change in one `PATCH` (PowerDNS applies it as one transaction, and bumps the
    /// SOA serial once). Never called with no change: even an empty `PATCH` bumps the serial.
    fn patch(
        &self,
        zone: &str,
        changes: &[RrsetChange],
    ) -> impl Future<Output = Result<(), powerdns::Error>> + Send;
}
