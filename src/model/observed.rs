//! What the backends report: codeb's containers, its Caddy server, routes and access log, its NAT rules and
//! loopback plumbing, and a zone's rrsets, as plain data.
//!
//! Adapters convert their wire answers into these types at their edge; `plan` diffs them against
//! what is desired. Only objects carrying codeb's marks (see [`super::ownership`]) are reported,
//! except a zone, which PowerDNS answers whole: its rrsets say which carry the mark.
//!
//! Must not: hold wire types (bollard, JSON, netlink bytes), do I/O, or decide anything.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[cfg(doc)]
use super::ownership::{DNS_ACCOUNT, LABEL_PROJECT, ROUTE_ID_PREFIX};
use super::writes::{AccessLog, Route, Rrset, ServerSpec, ServiceTarget};

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

/// What codeb owns in one Caddy, as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedProxy {
    /// codeb's server, when it exists. `None` also after a Caddy restart with `persist: false`.
    pub server: Option<ServerSpec>,
    /// Every route in codeb's server whose `@id` starts with [`ROUTE_ID_PREFIX`], in order. A route
    /// whose shape is not the one codeb writes is still listed (with what could be read) so that the
    /// diff replaces it.
    pub routes: Vec<Route>,
    /// codeb's access log: its logger and the server's `logs` naming it.
    pub access_log: ObservedAccessLog,
}

/// codeb's access log in one Caddy, as observed: its own logger (`logging.logs.codeb-access`)
/// and its server's `logs`, which sends the server's access entries to that logger.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ObservedAccessLog {
    /// Neither is there (a `logs` of the server naming another logger is not codeb's).
    #[default]
    Absent,
    /// Both are there, exactly as codeb writes them.
    Is(AccessLog),
    /// Some of it is there, not as codeb writes it (changed by hand, or half written): the diff
    /// writes it again, or removes it.
    Other,
}

/// The codeb instance that owns a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// What tells owners apart: the state directory's random id, or `CODEB_INSTANCE`.
    pub id: String,
    /// For people: `CODEB_INSTANCE`, or the machine's name and the state directory.
    pub name: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name == self.id {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{} (id {})", self.name, self.id)
        }
    }
}

/// What an observation found of a host's owner mark (see [`crate::model::ownership::OWNER_VOLUME`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnerMark {
    /// Not looked at (no owner given: the fakes of unit tests).
    #[default]
    Unchecked,
    /// The host carries this codeb's mark.
    Mine,
    /// The host carries no mark: the plan marks it before anything else.
    Absent,
}

/// codeb's network on a host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ObservedLoopback {
    /// codeb's masquerade rules for the bridge (1 when in place).
    pub masquerade: usize,
    /// codeb's guard rules for the bridge (1 when in place).
    pub guard: usize,
    pub route_localnet: bool,
    /// The bridge's MAC address is set (pinned), not taken from its ports: a Linux bridge takes
    /// the lowest MAC of its ports unless one was set, so each container joining or leaving would
    /// change the gateway's MAC under the other containers' ARP caches, and their new connections
    /// to a service on the gateway (PostgreSQL, Redis) stall for seconds.
    pub mac_pinned: bool,
    /// The bridge's interface does not exist yet: netavark creates it when the first container on
    /// the network starts, so a fresh host is in kernel mode before it has a bridge. Nothing can be
    /// set on it until then (no `route_localnet`, no MAC); the plumbing follows in the round after.
    pub bridge_missing: bool,
}

/// codeb's NAT rules for the service addresses on one gateway, as observed.
///
/// A service address is `gateway:port`: the gateway is the address of codeb's Podman network on
/// the host, the port is the environment's base port. Its rules map it to one container's
/// `ip:port` (the netfilter adapter's documentation describes the chains).
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

/// A zone as observed: every rrset in it, codeb's and foreign.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedZone {
    pub rrsets: Vec<Rrset>,
}
