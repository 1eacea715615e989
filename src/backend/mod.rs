//! Backend adapters: the only code that speaks Podman's, Caddy's or PowerDNS's wire protocols, or
//! the kernel's NAT rules.
//!
//! Each adapter converts wire types to the domain model's plain data types at its edge
//! ([`crate::model::observed`], [`crate::model::writes`], marked as [`crate::model::ownership`]
//! says), so that `plan` and `reconcile` never see bollard, JSON or netlink bytes. Adapters make no decisions: they observe and
//! they carry out one mutation per call. Ownership marks (container labels, route `@id`s, chain
//! names, rrset comments) are applied by the caller; adapters only ever list and touch objects that
//! carry them (PowerDNS answers a zone whole, so its adapter reports every rrset and says which
//! carry codeb's mark).

pub mod caddy;
mod error;
pub mod fake;
pub mod netfilter;
pub mod podman;
pub mod postgres;
pub mod powerdns;
pub mod redis;
pub mod remote;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::observed::{
    NetworkInfo, ObservedContainer, ObservedLoopback, ObservedProxy, ObservedServices,
    ObservedZone, Owner,
};
use crate::model::writes::{
    AccessLog, ContainerSpec, HookWrite, LoopbackWrite, Route, RrsetChange, ServerSpec,
    ServiceWrite,
};

pub use error::{Backend, Error, ErrorKind, Result};

/// Kept at their old path for `cli/watch/events.rs` alone, which is being moved on another branch
/// and must compile unchanged meanwhile; everything else names them in [`crate::model::ownership`].
pub use crate::model::ownership::{LABEL_ENVIRONMENT, LABEL_PROJECT};

/// The start of every HTTP client codeb builds. Every endpoint it speaks to is plain `http://`
/// (Podman's API, Caddy's admin API and PowerDNS's API refuse other schemes at their edge, and
/// health probes dial a slot's published port), so the client trusts no certificate: by default
/// reqwest's rustls verifier reads the machine's whole certificate store for every client built
/// (about 140 files here), which was a third of the wall time of `codeb promote`. An `https://` URL
/// fails closed.
///
/// No client goes through a proxy: `HTTP_PROXY`, `http_proxy` and `ALL_PROXY` are ignored. A
/// proxy would see PowerDNS's API key and Caddy's admin API, and could answer a health probe in
/// the slot's place (a proxy answering 302 to everything promoted an app that answered 404).
pub fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_certs_only(Vec::new())
        .no_proxy()
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

/// The container runtime of one host (Podman's Docker-compatible API).
///
/// Every call is one request (or a short fixed sequence) and is idempotent where the wire allows:
/// removing a missing container or stopping a stopped one succeeds.
pub trait Runtime: Send + Sync {
    /// Cheap liveness check; an error names the endpoint and how to start the service.
    fn ping(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Every container carrying the [`LABEL_PROJECT`] label, running or not. One list call.
    fn list_owned(&self) -> impl Future<Output = Result<Vec<ObservedContainer>, Error>> + Send;
    /// The containers of one project environment only (its [`LABEL_PROJECT`] and
    /// [`LABEL_ENVIRONMENT`]), for a command that acts on it alone: Podman's list costs about
    /// 1 ms per container it reports, so on a host of 35 containers this is 5 ms instead of 35.
    fn list_env(
        &self,
        key: &crate::model::EnvKey,
    ) -> impl Future<Output = Result<Vec<ObservedContainer>, Error>> + Send {
        async move {
            Ok(self
                .list_owned()
                .await?
                .into_iter()
                .filter(|c| crate::model::ownership::belongs_to(c, key))
                .collect())
        }
    }
    /// The IPv4 gateway of a network (its bridge's address on the Podman host) and the bridge's
    /// interface name. `None` when the network does not exist (or has no IPv4 subnet).
    fn network_gateway(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<NetworkInfo>, Error>> + Send;
    /// Creates the bridge network when it does not exist. Returns true when it created it.
    fn ensure_network(&self, name: &str) -> impl Future<Output = Result<bool, Error>> + Send;
    /// The owner mark the host carries (see [`crate::model::ownership::OWNER_VOLUME`]), if any. A
    /// mark without codeb's labels reads as an owner with an empty id: another's.
    fn owner(&self) -> impl Future<Output = Result<Option<Owner>, Error>> + Send;
    /// Marks the host as `owner`'s, replacing any mark.
    fn mark_owner(&self, owner: &Owner) -> impl Future<Output = Result<(), Error>> + Send;
    /// Removes the host's mark (none: nothing to do).
    fn unmark_owner(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Pulls the image only when it is not present locally.
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Creates (does not start) the container; returns its id. Runs with an init process and a
    /// restart policy.
    fn create(&self, spec: &ContainerSpec) -> impl Future<Output = Result<String, Error>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Stops the container gracefully: its stop signal (SIGTERM by default), then a grace period
    /// before SIGKILL. A stopped or missing container is not an error.
    fn stop(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Renames a container (it keeps running, with its labels).
    fn rename(&self, id: &str, name: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// The container's IPv4 address on its network; `None` while it does not run.
    fn address(&self, id: &str) -> impl Future<Output = Result<Option<Ipv4Addr>, Error>> + Send;
    /// Stops the container gracefully (as [`Runtime::stop`]), then removes it; forces the removal
    /// only when the stop failed. A missing container is not an error.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// The last `lines` lines of stdout+stderr.
    fn logs_tail(
        &self,
        id: &str,
        lines: usize,
    ) -> impl Future<Output = Result<Vec<String>, Error>> + Send;
    /// The last `lines` lines of stdout+stderr (0: none), then each line the container writes,
    /// as it writes it, until its log ends (the container stopped or was removed) or the stream
    /// is dropped. Lines come whole (a partial line waits for its end, or for the log's end).
    fn logs_follow(
        &self,
        id: &str,
        lines: usize,
    ) -> futures_util::stream::BoxStream<'static, Result<String, Error>>;
}

/// One Caddy, driven only through its admin API.
pub trait Proxy: Send + Sync {
    fn observe(&self, server: &str) -> impl Future<Output = Result<ObservedProxy, Error>> + Send;
    /// Creates codeb's server (with no routes) when missing, or replaces its listen/TLS settings
    /// while keeping its routes.
    fn ensure_server(&self, spec: &ServerSpec) -> impl Future<Output = Result<(), Error>> + Send;
    /// Makes codeb's access log of `server` what `log` says (`None`: removes it), writing only
    /// what differs: codeb's own logger, then the server's `logs` naming it. Nothing else of
    /// Caddy's logging is touched. The server must exist.
    fn ensure_access_log(
        &self,
        server: &str,
        log: Option<&AccessLog>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Appends a route to codeb's server.
    fn add_route(
        &self,
        server: &str,
        route: &Route,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Replaces the route with the same `@id`.
    fn replace_route(&self, route: &Route) -> impl Future<Output = Result<(), Error>> + Send;
    /// Deletes the route with this `@id`; a missing one is not an error.
    fn delete_route(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
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
    /// [`ErrorKind::Unsupported`] when this host's rules cannot be managed from here (no
    /// privilege, no nf_tables, a gateway that is not an address of this machine): the caller then
    /// switches through Caddy's admin API instead.
    fn observe(
        &self,
        gateway: Ipv4Addr,
    ) -> impl Future<Output = Result<ObservedServices, Error>> + Send {
        async move { self.services(&self.read().await?, gateway) }
    }
    /// The NAT rules as they are now, read before the gateway is known (the read and the lookup
    /// of codeb's network then run side by side; see [`Kernel::services`]).
    ///
    /// # Errors
    /// As [`Kernel::observe`], but only those that do not depend on the gateway.
    fn read(&self) -> impl Future<Output = Result<Self::Table, Error>> + Send;
    /// As [`Kernel::read`], for a switch: only what its plan reads (the NAT rules and their
    /// hook), not the tenant isolation, which a switch neither plans nor changes; the table then
    /// answers [`Kernel::isolated`] with `true` (not looked at). A warm switch reads the kernel on
    /// its way to the rule it writes, so every dump left out is time before traffic moves.
    fn read_for_switch(&self) -> impl Future<Output = Result<Self::Table, Error>> + Send {
        self.read()
    }
    /// codeb's rules for the addresses on `gateway` (a service gateway, or the loopback address
    /// slots are published on), from a [`Kernel::read`]. An address that is not one of this
    /// machine is [`ErrorKind::Unsupported`].
    fn services(&self, table: &Self::Table, gateway: Ipv4Addr) -> Result<ObservedServices, Error>;
    /// Whether codeb's network `net` is this machine's (its gateway an address here, or its
    /// bridge not created yet by a local Podman): then its service addresses are managed here.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] when it is not (a rootless or remote Podman).
    ///
    /// A remote host's is answered from the facts its agent read there with `table`.
    fn local(&self, table: &Self::Table, net: &NetworkInfo) -> Result<(), Error> {
        let _ = (table, net);
        Ok(())
    }
    /// Why this host switches through Caddy although its rules can be read and changed here (the
    /// operator asked for it): its rules are then observed for what a kernel-mode run left.
    fn fallback(&self) -> Option<String> {
        None
    }
    /// codeb's tenant isolation is in place, from a [`Kernel::read`].
    fn isolated(&self, table: &Self::Table) -> bool;
    /// Puts codeb's tenant isolation in place in one transaction, from whatever is there.
    fn isolate(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// codeb's loopback plumbing for `bridge`, from a [`Kernel::read`] and the bridge's settings.
    fn loopback(&self, table: &Self::Table, bridge: &str) -> ObservedLoopback;
    /// Applies a [`LoopbackWrite`]: the rules in one transaction, then `route_localnet`.
    fn set_loopback(&self, write: &LoopbackWrite)
        -> impl Future<Output = Result<(), Error>> + Send;
    /// Turns `route_localnet` off on `bridge` (a missing bridge has nothing to turn off).
    fn loopback_off(&self, bridge: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Pins `bridge`'s MAC address to the one it has now (see
    /// [`ObservedLoopback::mac_pinned`]); a missing bridge has nothing to pin.
    fn pin_mac(&self, bridge: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Applies a [`HookWrite`] in one transaction.
    fn hook(&self, write: &HookWrite) -> impl Future<Output = Result<(), Error>> + Send;
    /// Applies a [`ServiceWrite`] in one transaction: at no instant does the service address
    /// lead nowhere or to two targets.
    fn set_service(&self, write: &ServiceWrite) -> impl Future<Output = Result<(), Error>> + Send;
    /// How many connections to `target` are open (established or opening), for draining a slot
    /// before it is removed. `None` when the kernel does not tell.
    fn open_connections(&self, target: SocketAddrV4) -> impl Future<Output = Option<usize>> + Send;
}

/// The authoritative DNS server of one Zone (PowerDNS's HTTP API).
///
/// Zone names are given without the trailing dot. Every call is one request.
pub trait Dns: Send + Sync {
    /// Where the API is, for messages (never with the key).
    fn endpoint(&self) -> &str;
    /// The zone with all its rrsets, or `None` when it does not exist. One `GET`.
    fn zone(&self, zone: &str) -> impl Future<Output = Result<Option<ObservedZone>, Error>> + Send;
    /// Creates the zone (Native, with the server's default SOA). One `POST`.
    fn create_zone(&self, zone: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Applies every change in one `PATCH` (PowerDNS applies it as one transaction, and bumps the
    /// SOA serial once). Never called with no change: even an empty `PATCH` bumps the serial.
    fn patch(
        &self,
        zone: &str,
        changes: &[RrsetChange],
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// One shared PostgreSQL server, driven as the admin role a Host declares.
///
/// Names are quoted identifiers; every call is one connection's short sequence of statements and
/// is idempotent.
pub trait Postgres: Send + Sync {
    /// Where the server is, for messages (never with the password).
    fn endpoint(&self) -> &str;
    /// The roles and databases of these environments as they exist, codeb's or not (two catalog
    /// queries for all of them). An environment with nothing of its names reads as the default.
    fn observe(
        &self,
        names: &[crate::model::data::PgNames],
    ) -> impl Future<Output = Result<Vec<crate::model::data::ObservedDatabase>, Error>> + Send;
    /// Converges one environment to `write`: the owner role (`NOLOGIN`, the mark as comment), its
    /// database (owned by it; `CONNECT` and `TEMP` revoked from `PUBLIC`), the login role
    /// `write.login` (`LOGIN`, `password`, member of the owner, acting as it, the limits) and the
    /// other login's settings but not its password. Also revokes `CONNECT` and `TEMP` on the
    /// `postgres` and `template1` databases from `PUBLIC` (granting them to the admin role first
    /// unless it is a superuser). Refuses (conflict) a role or
    /// database of these names that does not carry `write.mark`'s owner.
    fn ensure(
        &self,
        write: &crate::model::data::DatabaseWrite,
        password: &crate::model::vars::SecretText,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Makes a login role unable to log in (`NOLOGIN`, no password); a missing role is fine.
    fn disable_login(&self, role: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Drops the database (terminating its connections) and the three roles; missing ones are fine.
    fn drop_database(
        &self,
        names: &crate::model::data::PgNames,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// One shared Redis server, driven as the admin user a Host declares.
pub trait Cache: Send + Sync {
    fn endpoint(&self) -> &str;
    /// These ACL users as they exist (`None`: no such user), codeb's or not.
    fn observe(
        &self,
        users: &[String],
    ) -> impl Future<Output = Result<Vec<Option<crate::model::data::ObservedCacheUser>>, Error>> + Send;
    /// `ACL SETUSER user reset` with `passwords` and `write.rules()`, in one command (the user
    /// never exists half-set), then `ACL SAVE` when the server has an ACL file.
    fn ensure(
        &self,
        write: &crate::model::data::CacheWrite,
        passwords: &[crate::model::vars::SecretText],
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Deletes the user and every key under its prefix; a missing user is fine.
    fn drop_cache(
        &self,
        names: &crate::model::data::CacheNames,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}
