//! What codeb asks the backends to create or change: a container, its Caddy server, routes and
//! access log, a change of NAT rules, a zone's rrsets.
//!
//! `plan` computes these values (pure); the executor hands each one to one adapter call. A
//! [`Route`], a [`ServerSpec`], a [`ServiceTarget`] and an [`Rrset`] are also what an observation
//! reports back (see [`super::observed`]), in the same shape, so a diff compares like with like
//! and a converged system gets no write.
//!
//! Must not: hold wire types, do I/O, or carry out anything: the adapters do.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::confinement::Confinement;
use super::observed::ObservedLoopback;
#[cfg(doc)]
use super::ownership::{DNS_ACCOUNT, ROUTE_ID_PREFIX};

/// A container as codeb wants it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// `{project}-{environment}-{slot}`.
    pub name: String,
    pub image: String,
    /// Replaces the image's CMD when set.
    pub command: Option<Vec<String>>,
    /// The values the container gets: empty in a plan; filled by the executor from
    /// `env_source` right before the container is created. `Debug` shows names only.
    pub env: super::vars::EnvValues,
    /// The stored version and inline env the values come from.
    pub env_source: super::vars::EnvSource,
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
    /// Its MAC address on that network, set at create so that it survives restarts
    /// ([`super::ownership::tenant_mac`]: what codeb's tenant isolation recognises); `None` lets
    /// Podman draw one (a new one at each start).
    pub mac: Option<String>,
    /// Its limits and privileges (the release's).
    pub confinement: Confinement,
    /// Seconds between its stop signal and SIGKILL (the release's), recorded on the container:
    /// every stop and removal grants it.
    pub stop_timeout_secs: u32,
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

/// codeb's access log in a Host's Caddy: every request to codeb's server, one JSON line each
/// (Caddy's access log entry: `request.host`, `request.uri`, `status`, `duration`, …), in a file
/// on the Caddy's machine that Caddy rolls by size.
///
/// Where it is comes from the operator's configuration (`accessLogs`, see `crate::config`), never
/// from a manifest: Caddy opens the file as the user it runs as (often root), and request lines
/// are text a client chooses, so a manifest's path would let its author have Caddy append to any
/// file of that machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessLog {
    /// An absolute path on the Caddy's machine.
    pub file: String,
    /// Caddy starts a new file when the current one reaches this many megabytes.
    pub roll_size_mb: u32,
    /// How many rolled files Caddy keeps (gzipped).
    pub roll_keep: u32,
}

impl AccessLog {
    /// Where a Host's access log goes unless the operator says otherwise: the directory Debian's
    /// `caddy` package creates for Caddy's logs, owned by the `caddy` user its service runs as.
    pub const DEFAULT_DIR: &'static str = "/var/log/caddy";
    /// Caddy's own default roll size.
    pub const DEFAULT_ROLL_SIZE_MB: u32 = 100;
    /// Caddy's own default number of rolled files.
    pub const DEFAULT_ROLL_KEEP: u32 = 10;

    /// The file of `host`'s access log in `dir`: `codeb-HOST.access.log`. A Host's name is a
    /// DNS label (letters, digits, `-`), so it cannot leave `dir`.
    pub fn file_in(dir: &str, host: &str) -> String {
        format!("{}/codeb-{host}.access.log", dir.trim_end_matches('/'))
    }

    /// The default access log of `host`: [`AccessLog::DEFAULT_DIR`], rolled as Caddy would.
    pub fn default_for(host: &str) -> AccessLog {
        AccessLog {
            file: AccessLog::file_in(AccessLog::DEFAULT_DIR, host),
            roll_size_mb: AccessLog::DEFAULT_ROLL_SIZE_MB,
            roll_keep: AccessLog::DEFAULT_ROLL_KEEP,
        }
    }
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

/// Where a service address leads: a container's address and port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceTarget {
    pub to: SocketAddrV4,
    /// `project/environment`, kept in the rule's comment for people reading `nft list ruleset`.
    pub label: String,
}

/// One atomic change to a service address: its chain is replaced whole (or removed), and its
/// dispatch rule is brought to exactly one (or none).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookWrite {
    pub gateway: Ipv4Addr,
    /// The dispatch chain exists already.
    pub chain: bool,
    /// Rules observed jumping to the dispatch chain from codeb's base chain.
    pub hooks: usize,
}

/// Brings a bridge's loopback plumbing to one masquerade rule, one guard rule and
/// `route_localnet` on, from what was observed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoopbackWrite {
    pub bridge: String,
    pub observed: ObservedLoopback,
}

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
