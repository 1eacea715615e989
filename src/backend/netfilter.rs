//! The netfilter adapter: codeb's NAT rules in this machine's kernel, in an nf_tables table of
//! codeb's own, read and changed over netlink from this process, one atomic transaction per change.
//!
//! Responsible for naming codeb's chains, turning each change into one transaction, and reading
//! codeb's table back into [`ObservedServices`]. It decides nothing (which address leads where is
//! the planner's business) and never retries. The bytes on the wire are [`wire`]'s, the socket is
//! `netlink`'s.
//!
//! # What codeb owns: the table `ip codeb`
//! For a gateway `G` (the address of codeb's Podman network on this host, `10.89.144.1`, written
//! in hex: `0a599001`), as `nft list table ip codeb` prints it:
//! - the base chain `output` (`type nat hook output priority -101`), with one rule per gateway:
//!   `ip daddr G meta l4proto tcp jump CODEB-0a599001 comment "codeb service addresses"`;
//! - the dispatch chain `CODEB-0a599001`: per service port `P`, `meta l4proto tcp tcp dport P jump
//!   CODEB-0a599001-P`;
//! - a service chain `CODEB-0a599001-P` per environment, holding exactly one rule: `dnat to IP:PORT
//!   comment "codeb project/env"` (the active slot's container).
//!
//! Slot ports published on a loopback address `L` (`127.0.0.1`, `7f000001`) have the same three
//! parts: `ip daddr L ... jump CODEB-7f000001`, a dispatch rule per slot port, and a chain per slot
//! port with one `dnat to IP:PORT comment "codeb project/env/slot"`. For those to reach a container
//! on codeb's bridge `B`, the table also holds:
//! - the base chain `postrouting` (`type nat hook postrouting priority srcnat - 1`), one rule per
//!   bridge: `oifname B ip saddr 127.0.0.0/8 masquerade`;
//! - the base chain `input` (`type filter hook input priority filter`), the guard, three rules per
//!   bridge: `iifname B ip daddr 127.0.0.0/8 ct state invalid,untracked drop`, `iifname B ip daddr
//!   127.0.0.0/8 ct status ! dnat drop` and `iifname B ip saddr 127.0.0.0/8 drop` (with
//!   `route_localnet`, which codeb turns on for `B` alone, a container could otherwise reach the
//!   host's loopback services). The first is what makes the guard fail closed: a `ct status`
//!   expression does not match a packet conntrack has no entry for (untracked, invalid), so the
//!   second alone let those through.
//!
//! # And the table `bridge codeb`: tenant isolation
//! Frames between two ports of a bridge (container to container) never reach the `ip` family's
//! hooks (without `br_netfilter`), so the isolation of tenants lives in the `bridge` family: a
//! base chain `forward` (`type filter hook forward priority 0`, policy accept) with exactly two
//! rules, `ether saddr 0a:cb:00:00:00:00/16 drop` and `ether daddr 0a:cb:00:00:00:00/16 drop`
//! (source, then destination MAC starting with `0a:cb`, the prefix of the MAC codeb gives every container it creates:
//! [`crate::model::ownership::tenant_mac`]). No rule names a container, an address or a
//! bridge (this kernel has no `meta ibrname`: `NFT_BRIDGE_META` is not built), so restarts,
//! deploys and removals never change the table; a container that is not codeb's (another MAC)
//! passes as before, except to and from codeb's. It is written whole (table and chain created
//! where missing, chain flushed, both rules) in one transaction, and stays when the last project
//! goes (it drops nothing but frames of codeb's containers).
//!
//! Nothing outside these tables is ever written, flushed or deleted: rules of Podman (netavark's
//! iptables chains), of the distribution or of the user live in other tables. The base chain and
//! a gateway's dispatch chain stay when the last environment goes (another state directory may
//! share the gateway); `deploy/stack.sh down --purge` removes them with the stack's network.
//!
//! # Why these choices (measured on Debian 12, kernel 6.x, beside iptables 1.8.9 nf_tables)
//! - A table of codeb's own, spoken to over netlink: a switch is one batch that flushes the
//!   service chain and adds its new rule, which the kernel commits whole or not at all. A
//!   connection opened at any instant reaches the old target or the new one, never none and never
//!   both; one that is already open keeps its target (conntrack) until it closes. No process is
//!   started: `iptables-save` and `iptables-restore` cost 4-10 ms each just to start on this VM,
//!   and `iptables-restore` waited for the kernel to release the replaced rules before it exited.
//! - Priority -101, one before the iptables `nat` chains (-100): the kernel runs a hook's NAT
//!   chains in priority order and stops at the first that maps the connection, so netavark's
//!   hostport rules (a port published on all addresses) never catch a service address.
//! - The service address is the network's gateway, an address of this host on codeb's bridge:
//!   Caddy's connection to it leaves with that address as its source, so after the DNAT the
//!   container answers straight back. A loopback service address would need `route_localnet` and
//!   a MASQUERADE rule, and would meet netavark's hostport rules for `127.0.0.1`.
//! - Chains named after the gateway keep codeb installations on one machine apart: each Podman
//!   network has its own bridge and address. State directories that share one Podman host share
//!   the gateway, and their environments have distinct base ports (the allocation sees every
//!   codeb container's published port).
//! - Only locally generated connections are translated (`output`): the data path is Caddy on this
//!   host, and nothing arriving from outside can reach a service address by accident.

pub mod agent;
mod netlink;
pub mod wire;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};

use self::wire::{ChainDef, Expr, Hook, ListedRule, Op};
use super::Kernel;
use crate::model::observed::{
    NetworkInfo, ObservedLoopback, ObservedService, ObservedServices, ServiceRule,
};
use crate::model::ownership::TENANT_MAC_PREFIX;
use crate::model::writes::{HookWrite, LoopbackWrite, ServiceTarget, ServiceWrite};

/// codeb's table, in the `ip` family.
pub const TABLE: &str = "codeb";
/// codeb's base chain at nat `output`.
pub const BASE_CHAIN: &str = "output";
/// One before `NF_IP_PRI_NAT_DST` (-100), where iptables' nat `OUTPUT` runs.
pub const PRIORITY: i32 = -101;
/// codeb's nat chain at `postrouting` and filter chain at `input`, for loopback publication.
pub const MASQUERADE_CHAIN: &str = "postrouting";
pub const GUARD_CHAIN: &str = "input";
/// codeb's filter chain at the bridge family's `forward` hook, in the table `bridge codeb`: the
/// tenant isolation.
pub const ISOLATION_CHAIN: &str = "forward";
/// Prefix of every other chain codeb owns.
pub const CHAIN_PREFIX: &str = "CODEB-";
/// The comment of a gateway's rule in the base chain.
const HOOK_COMMENT: &str = "codeb service addresses";
/// The comment prefix of a service rule (followed by `project/env`).
const RULE_COMMENT_PREFIX: &str = "codeb ";
/// Where conntrack lists the connections of this network namespace.
const CONNTRACK: &str = "/proc/net/nf_conntrack";

/// Errors of the netfilter adapter.
///
/// [`Error::Unsupported`] is not worth a retry: codeb switches through Caddy's admin API on such a
/// host. [`Error::Refused`] is (a chain created or deleted by a concurrent codeb between observe
/// and write): a fresh observe and plan will succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rules of this host cannot be managed from this process.
    #[error("the kernel's NAT rules cannot be managed here: {reason}")]
    Unsupported { reason: String },
    /// The kernel refused a read or a change (a change is then not applied at all).
    #[error("nf_tables refused {what}")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True when the same call may succeed later without any change to codeb's inputs.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::Unsupported { .. })
    }

    /// A missing privilege or a kernel without nf_tables is [`Error::Unsupported`]; anything else
    /// is the kernel refusing `what`.
    fn from_io(what: impl Into<String>, e: io::Error) -> Error {
        const EPERM: i32 = 1;
        const EACCES: i32 = 13;
        const EPROTONOSUPPORT: i32 = 93;
        const EOPNOTSUPP: i32 = 95;
        const EAFNOSUPPORT: i32 = 97;
        let what = what.into();
        match e.raw_os_error() {
            Some(EPERM | EACCES) => Error::Unsupported {
                reason: format!("{what} needs root (CAP_NET_ADMIN): {e}"),
            },
            Some(EPROTONOSUPPORT | EOPNOTSUPP | EAFNOSUPPORT) => Error::Unsupported {
                reason: format!("this kernel has no nf_tables ({what}: {e})"),
            },
            _ => Error::Refused { what, source: e },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At the trait's edge: the same text and causes; [`Error::Unsupported`] keeps its reason, for
/// the caller that switches through Caddy instead.
impl From<Error> for super::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Unsupported { reason } => super::ErrorKind::Unsupported {
                reason: reason.clone(),
            },
            Error::Refused { .. } => super::ErrorKind::from_retryable(e.is_retryable()),
        };
        super::Error::new(super::Backend::Kernel, kind, e)
    }
}

/// This machine's netfilter, or the reason it cannot be managed.
#[derive(Debug)]
pub struct Netfilter {
    unsupported: Option<String>,
    /// Why codeb switches through Caddy on this host although it may read and change this
    /// machine's rules (`CODEB_SWITCH=caddy-admin`): the rules stay readable and removable, so
    /// that what a kernel-mode run left (a slot port's DNAT rule) is observed and removed.
    fallback: Option<String>,
    /// The host's containers run on this machine, so its conntrack tells their open connections.
    local: bool,
    /// The socket of the last call that succeeded, kept for the next one. Closing a netlink
    /// socket after a transaction that deleted rules waits for the kernel to free them (an RCU
    /// grace period, 13 ms here, after the new rules were already live): kept open, that wait
    /// happens when the process exits, not in a switch.
    socket: Arc<Mutex<Option<netlink::Socket>>>,
}

/// codeb's table as one read found it: its chains, and its rules in each chain's order; and
/// whether its tenant isolation (the table `bridge codeb`) is in place. A remote host's read (by
/// its agent, [`agent`]) also carries the host's network facts, gathered there in the same call:
/// what [`Kernel::local`] and [`Kernel::loopback`] read from this machine for a local host.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ruleset {
    pub chains: Vec<ChainDef>,
    pub rules: Vec<ListedRule>,
    pub isolated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<HostFacts>,
}

/// A host's network as its agent found it, for the checks a local host makes on this machine:
/// its IPv4 addresses (a gateway among them is "bindable": the network is the host's), its links,
/// and per bridge what codeb's loopback plumbing reads (`route_localnet`, the MAC pinned).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    pub addresses: Vec<Ipv4Addr>,
    pub links: Vec<String>,
    pub bridges: std::collections::BTreeMap<String, BridgeFacts>,
}

/// One bridge's settings that codeb's loopback plumbing reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeFacts {
    pub route_localnet: bool,
    pub mac_pinned: bool,
}

/// The most links or addresses a host's facts carry (a host of 1,000 containers has about as
/// many veth links): what an agent answers stays bounded.
pub const MAX_FACTS: usize = 4096;

/// This machine's (this network namespace's) network facts: what an agent answers with a read.
pub fn host_facts() -> HostFacts {
    let mut links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_interface_name(n))
                .take(MAX_FACTS)
                .collect()
        })
        .unwrap_or_default();
    links.sort();
    let bridges = links
        .iter()
        .filter(|l| sys_class_net(l, "bridge").is_some_and(|p| p.exists()))
        .map(|l| {
            let facts = BridgeFacts {
                route_localnet: route_localnet_on(l),
                mac_pinned: mac_pinned(l),
            };
            if facts.route_localnet {
                guarded().insert(l.clone());
            }
            (l.clone(), facts)
        })
        .collect();
    HostFacts {
        addresses: ipv4_addresses(),
        links,
        bridges,
    }
}

/// The IPv4 addresses of this network namespace's interfaces.
fn ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = interface_addresses().into_iter().map(|a| a.1).collect();
    out.sort();
    out.dedup();
    out
}

/// Each IPv4 address of this network namespace's interfaces: (interface, address, netmask).
pub fn interface_addresses() -> Vec<(String, Ipv4Addr, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below by freeifaddrs; an entry's address
    // and netmask are read only when they are AF_INET sockaddrs, its name as a C string.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let v4 = |sa: *const libc::sockaddr| {
            (!sa.is_null() && i32::from((*sa).sa_family) == libc::AF_INET).then(|| {
                let sin = &*(sa as *const libc::sockaddr_in);
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
            })
        };
        let mut cur = head;
        while !cur.is_null() && out.len() < MAX_FACTS {
            let entry = &*cur;
            if let Some(addr) = v4(entry.ifa_addr) {
                let mask = v4(entry.ifa_netmask).unwrap_or(Ipv4Addr::BROADCAST);
                let name = if entry.ifa_name.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(entry.ifa_name)
                        .to_string_lossy()
                        .into_owned()
                };
                out.push((name, addr, mask));
            }
            cur = entry.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Whether a health probe from this host may dial `ip`: a loopback address (a slot port
/// published there), one of the host's own addresses (a port Podman published), or an address on
/// one of its bridges' subnets (a container). Nothing beyond the host.
pub fn probe_reaches(ip: Ipv4Addr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    interface_addresses().iter().any(|(name, addr, mask)| {
        let net = |a: Ipv4Addr| u32::from(a) & u32::from(*mask);
        *addr == ip
            || (net(*addr) == net(ip) && sys_class_net(name, "bridge").is_some_and(|p| p.exists()))
    })
}

/// 3: NET_ADDR_SET, an address set by user space (1 is random, 0 taken from a port).
fn mac_pinned(bridge: &str) -> bool {
    sys_class_net(bridge, "addr_assign_type")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|v| v.trim() == "3")
}

/// codeb's loopback plumbing for `bridge` in `table`, with the bridge's settings as read
/// (`None`: the bridge does not exist).
pub fn loopback_in(
    table: &Ruleset,
    bridge: &str,
    settings: Option<BridgeFacts>,
) -> ObservedLoopback {
    let count = |chain: &ChainDef, exprs: Vec<Expr>| {
        let hooked = table.chains.contains(chain);
        let n = table
            .rules
            .iter()
            .filter(|r| r.chain == chain.name && r.exprs == exprs)
            .count();
        if hooked {
            n
        } else {
            0
        }
    };
    // The guard is in place once each of its rules is, once.
    let guards: Vec<usize> = guard_rules(bridge)
        .into_iter()
        .map(|(rule, _)| count(&guard_chain(), rule))
        .collect();
    let guard = if guards.contains(&0) {
        0
    } else {
        guards.into_iter().max().unwrap_or(0)
    };
    let settings_or_default = settings.unwrap_or_default();
    ObservedLoopback {
        masquerade: count(&masquerade_chain(), masquerade_rule(bridge)),
        guard,
        route_localnet: settings_or_default.route_localnet,
        mac_pinned: settings_or_default.mac_pinned,
        bridge_missing: settings.is_none(),
    }
}

impl Netfilter {
    /// This machine's netfilter. Opens nothing yet: a missing privilege shows at the first read
    /// as [`Error::Unsupported`].
    pub fn new() -> Netfilter {
        Netfilter {
            unsupported: None,
            fallback: None,
            local: true,
            socket: Default::default(),
        }
    }

    /// This machine's netfilter on a host that switches through Caddy all the same (`reason`):
    /// codeb's rules are read and its leftovers removed, no switch is made with them.
    pub fn fallback(reason: impl Into<String>) -> Netfilter {
        Netfilter {
            fallback: Some(reason.into()),
            ..Netfilter::new()
        }
    }

    /// A netfilter that codeb must not manage (a remote host, or switching through Caddy was
    /// asked for); every call answers [`Error::Unsupported`] with `reason`. `local`: the host's
    /// containers still run on this machine, so draining may count their connections here.
    pub fn unsupported(reason: impl Into<String>, local: bool) -> Netfilter {
        Netfilter {
            unsupported: Some(reason.into()),
            fallback: None,
            local,
            socket: Default::default(),
        }
    }

    fn supported(&self) -> Result<()> {
        match &self.unsupported {
            Some(reason) => Err(Error::Unsupported {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs `f` where it may block (a netlink call blocks for well under a millisecond, but it
    /// blocks) with the kept socket, or a new one. A socket whose call failed is closed: answers
    /// it did not read must not meet the next call.
    async fn with_socket<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut netlink::Socket) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.supported()?;
        let kept = self.socket.clone();
        let call = move || {
            let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
            let mut socket = match kept.take() {
                Some(s) => s,
                None => netlink::Socket::open()
                    .map_err(|e| Error::from_io("a netlink socket to nf_tables", e))?,
            };
            let result = f(&mut socket);
            if result.is_ok() {
                *kept = Some(socket);
            }
            result
        };
        // A call is a few netlink round trips (0.1-0.5 ms): on a multi-threaded runtime (the
        // daemon's) it runs on this worker, its other tasks handed to another, rather than waking
        // a thread of the blocking pool, which on a busy two-core machine cost a switch 1-1.5 ms
        // between its kernel read and its rule; elsewhere (a current-thread runtime) on the pool.
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            return tokio::task::block_in_place(call);
        }
        tokio::task::spawn_blocking(call).await.unwrap_or_else(|e| {
            Err(Error::Refused {
                what: "a netlink call".into(),
                source: io::Error::other(e.to_string()),
            })
        })
    }

    /// Commits `ops` on codeb's table `ip codeb` as one transaction; `what` names it in an error.
    async fn commit(&self, what: String, ops: Vec<Op>) -> Result<()> {
        self.commit_in(wire::FAMILY_IPV4, what, ops).await
    }

    /// Commits `ops` on codeb's table of `family` as one transaction.
    async fn commit_in(&self, family: u8, what: String, ops: Vec<Op>) -> Result<()> {
        let started = std::time::Instant::now();
        let count = ops.len();
        let described = what.clone();
        self.with_socket(move |s| {
            s.transact(family, TABLE, &ops).map_err(|refused| {
                let op = refused.op.and_then(|i| ops.get(i));
                let what = match op {
                    Some(op) => format!("{what} at `{}`", describe(op)),
                    None => what,
                };
                Error::from_io(what, refused.error)
            })
        })
        .await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            ops = count,
            what = described,
            "nf_tables transaction"
        );
        Ok(())
    }
}

impl Default for Netfilter {
    fn default() -> Self {
        Self::new()
    }
}

/// `observe` is two netlink dumps (codeb's chains, codeb's rules), parsed for this gateway's
/// chains only. It fails with [`Error::Unsupported`] without privilege, without nf_tables, or when
/// `gateway` is not an address of this machine (a rootless or remote Podman: its containers are
/// not reachable from here, so neither are service addresses).
impl Kernel for Netfilter {
    type Table = Ruleset;

    async fn read(&self) -> super::Result<Ruleset> {
        Ok(self.with_socket(|s| read_table(s, true)).await?)
    }

    async fn read_for_switch(&self) -> super::Result<Ruleset> {
        Ok(self.with_socket(|s| read_table(s, false)).await?)
    }

    fn services(&self, table: &Ruleset, gateway: Ipv4Addr) -> super::Result<ObservedServices> {
        self.supported()?;
        Ok(parse(table, gateway))
    }

    fn local(&self, _table: &Ruleset, net: &NetworkInfo) -> super::Result<()> {
        self.supported()?;
        let bound = std::net::UdpSocket::bind(SocketAddrV4::new(net.gateway, 0));
        let present = sys_class_net(&net.bridge, "").is_some_and(|p| p.exists());
        Ok(locality(net, bound.err(), present)?)
    }

    fn fallback(&self) -> Option<String> {
        self.fallback.clone()
    }

    fn isolated(&self, table: &Ruleset) -> bool {
        table.isolated
    }

    async fn isolate(&self) -> super::Result<()> {
        Ok(self
            .commit_in(
                wire::FAMILY_BRIDGE,
                format!("the tenant isolation (table bridge {TABLE})"),
                isolation_ops(),
            )
            .await?)
    }

    fn loopback(&self, table: &Ruleset, bridge: &str) -> ObservedLoopback {
        let present = sys_class_net(bridge, "").is_some_and(|p| p.exists());
        let route_localnet = route_localnet_on(bridge);
        if route_localnet {
            guarded().insert(bridge.to_string());
        }
        let settings = BridgeFacts {
            route_localnet,
            mac_pinned: mac_pinned(bridge),
        };
        loopback_in(table, bridge, present.then_some(settings))
    }

    async fn set_loopback(&self, write: &LoopbackWrite) -> super::Result<()> {
        let o = &write.observed;
        // Rules are added and deleted one by one: what is there is read first.
        let ops = if o.masquerade != 1 || o.guard != 1 {
            let rules = self.read().await?.rules;
            let found: Vec<Vec<u64>> = loopback_rules(&write.bridge)
                .iter()
                .map(|r| handles(&rules, r.chain, |l| l.exprs == r.exprs))
                .collect();
            loopback_ops(&write.bridge, &found)
        } else {
            Vec::new()
        };
        if !ops.is_empty() {
            let what = format!("the loopback rules of {}", write.bridge);
            self.commit(what, ops).await?;
        }
        if !o.mac_pinned {
            self.supported()?;
            pin_mac(&write.bridge).await?;
        }
        if !o.route_localnet {
            self.supported()?;
            let path = route_localnet_path(&write.bridge).ok_or_else(|| Error::Unsupported {
                reason: format!("{:?} is not an interface name", write.bridge),
            })?;
            guarded().insert(write.bridge.clone());
            tokio::fs::write(&path, "1")
                .await
                .map_err(|e| Error::from_io(format!("{}", path.display()), e))?;
        }
        Ok(())
    }

    async fn loopback_off(&self, bridge: &str) -> super::Result<()> {
        self.supported()?;
        let path = route_localnet_path(bridge).ok_or_else(|| Error::Unsupported {
            reason: format!("{bridge:?} is not an interface name"),
        })?;
        match tokio::fs::write(&path, "0").await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other.map_err(|e| Error::from_io(format!("{}", path.display()), e))?,
        }
        guarded().remove(bridge);
        Ok(())
    }

    async fn pin_mac(&self, bridge: &str) -> super::Result<()> {
        self.supported()?;
        if !sys_class_net(bridge, "").is_some_and(|p| p.exists()) {
            return Ok(()); // no container has brought it up (or all left): nothing to pin
        }
        pin_mac(bridge).await
    }

    async fn hook(&self, write: &HookWrite) -> super::Result<()> {
        let extra = if write.hooks > 1 {
            let rules = self.read().await?.rules;
            let hook = hook_rule(write.gateway);
            handles(&rules, BASE_CHAIN, |r| r.exprs == hook)
        } else {
            Vec::new()
        };
        let ops = hook_ops(write, &extra);
        if ops.is_empty() {
            return Ok(());
        }
        let what = format!("the hook of {}", dispatch_chain(write.gateway));
        Ok(self.commit(what, ops).await?)
    }

    async fn set_service(&self, write: &ServiceWrite) -> super::Result<()> {
        // Rules are deleted by handle: only a write that deletes dispatch rules reads them first.
        let keep = usize::from(write.target.is_some());
        let extra = if write.dispatch > keep {
            let rules = self.read().await?.rules;
            let (dispatch, rule) = (
                dispatch_chain(write.gateway),
                dispatch_rule(write.gateway, write.port),
            );
            let found = handles(&rules, &dispatch, |r| r.exprs == rule);
            found.into_iter().skip(keep).collect()
        } else {
            Vec::new()
        };
        let what = format!("the change of {}", service_chain(write.gateway, write.port));
        Ok(self.commit(what, service_ops(write, &extra)).await?)
    }

    /// Counts conntrack entries whose reply comes from `target` and that are not closing. `None`
    /// for a host on another machine, and without the privilege to read conntrack.
    async fn open_connections(&self, target: SocketAddrV4) -> Option<usize> {
        if !self.local {
            return None;
        }
        let text = tokio::fs::read_to_string(CONNTRACK).await.ok()?;
        Some(count_open(&text, target))
    }
}

/// A host's kernel: this machine's netfilter, or a remote host's through its agent. One type
/// for the daemon's and the commands' backends; both read into a [`Ruleset`].
pub enum HostKernel {
    Local(Netfilter),
    Remote(agent::AgentKernel),
}

impl Kernel for HostKernel {
    type Table = Ruleset;

    async fn read(&self) -> super::Result<Ruleset> {
        match self {
            HostKernel::Local(k) => k.read().await,
            HostKernel::Remote(k) => k.read().await,
        }
    }

    async fn read_for_switch(&self) -> super::Result<Ruleset> {
        match self {
            HostKernel::Local(k) => k.read_for_switch().await,
            HostKernel::Remote(k) => k.read_for_switch().await,
        }
    }

    fn services(&self, table: &Ruleset, gateway: Ipv4Addr) -> super::Result<ObservedServices> {
        match self {
            HostKernel::Local(k) => k.services(table, gateway),
            HostKernel::Remote(k) => k.services(table, gateway),
        }
    }

    fn local(&self, table: &Ruleset, net: &NetworkInfo) -> super::Result<()> {
        match self {
            HostKernel::Local(k) => k.local(table, net),
            HostKernel::Remote(k) => k.local(table, net),
        }
    }

    fn fallback(&self) -> Option<String> {
        match self {
            HostKernel::Local(k) => k.fallback(),
            HostKernel::Remote(k) => k.fallback(),
        }
    }

    fn isolated(&self, table: &Ruleset) -> bool {
        table.isolated
    }

    async fn isolate(&self) -> super::Result<()> {
        match self {
            HostKernel::Local(k) => k.isolate().await,
            HostKernel::Remote(k) => k.isolate().await,
        }
    }

    fn loopback(&self, table: &Ruleset, bridge: &str) -> ObservedLoopback {
        match self {
            HostKernel::Local(k) => k.loopback(table, bridge),
            HostKernel::Remote(k) => k.loopback(table, bridge),
        }
    }

    async fn set_loopback(&self, write: &LoopbackWrite) -> super::Result<()> {
        match self {
            HostKernel::Local(k) => k.set_loopback(write).await,
            HostKernel::Remote(k) => k.set_loopback(write).await,
        }
    }

    async fn loopback_off(&self, bridge: &str) -> super::Result<()> {
        match self {
            HostKernel::Local(k) => k.loopback_off(bridge).await,
            HostKernel::Remote(k) => k.loopback_off(bridge).await,
        }
    }

    async fn pin_mac(&self, bridge: &str) -> super::Result<()> {
        match self {
            HostKernel::Local(k) => k.pin_mac(bridge).await,
            HostKernel::Remote(k) => k.pin_mac(bridge).await,
        }
    }

    async fn hook(&self, write: &HookWrite) -> super::Result<()> {
        match self {
            HostKernel::Local(k) => k.hook(write).await,
            HostKernel::Remote(k) => k.hook(write).await,
        }
    }

    async fn set_service(&self, write: &ServiceWrite) -> super::Result<()> {
        match self {
            HostKernel::Local(k) => k.set_service(write).await,
            HostKernel::Remote(k) => k.set_service(write).await,
        }
    }

    async fn open_connections(&self, target: SocketAddrV4) -> Option<usize> {
        match self {
            HostKernel::Local(k) => k.open_connections(target).await,
            HostKernel::Remote(k) => k.open_connections(target).await,
        }
    }
}

/// The handles of the rules of `chain` that `pick` selects, in the chain's order.
fn handles(rules: &[ListedRule], chain: &str, pick: impl Fn(&ListedRule) -> bool) -> Vec<u64> {
    rules
        .iter()
        .filter(|r| r.chain == chain && pick(r))
        .map(|r| r.handle)
        .collect()
}

/// Whether codeb's network `net` is this machine's, so that its gateway holds service addresses
/// codeb's rules can publish: a property of the host's configuration, not of whether a container
/// runs. `bind`: why binding a socket to the gateway failed (`None`: it is an address here);
/// `bridge_present`: the network's bridge interface exists here.
///
/// Measured on Podman 4.3 (netavark): a network just created, with no container yet, has its
/// bridge named in its configuration (`network_interface`) but no such interface, and its gateway
/// cannot be bound (EADDRNOTAVAIL); both appear when the first container starts. So a bridge that
/// does not exist yet on a local, rootful Podman (checked when connecting: a unix socket owned by
/// root) is this machine's bridge to come, not a sign of a remote one: kernel mode from the first
/// apply. Only a bridge that exists without the gateway on it (another network namespace's
/// Podman, a rootless one) is not this machine's.
pub fn locality(net: &NetworkInfo, bind: Option<io::Error>, bridge_present: bool) -> Result<()> {
    match bind {
        None => Ok(()),
        Some(_) if !bridge_present && is_interface_name(&net.bridge) => Ok(()),
        Some(e) => {
            Err(Error::Unsupported {
                reason: format!(
                "the network's gateway {} is not an address of this machine ({e}) although its \
                 bridge {} {}: a rootless or remote Podman",
                net.gateway,
                if net.bridge.is_empty() { "(unnamed)" } else { &net.bridge },
                if bridge_present { "exists" } else { "is not named" },
            ),
            })
        }
    }
}

/// `CODEB-0a599001` for 10.89.144.1.
pub fn dispatch_chain(gateway: Ipv4Addr) -> String {
    format!("{CHAIN_PREFIX}{:08x}", u32::from(gateway))
}

/// `CODEB-0a599001-4051`.
pub fn service_chain(gateway: Ipv4Addr, port: u16) -> String {
    format!("{}-{port}", dispatch_chain(gateway))
}

fn base_chain() -> ChainDef {
    base(BASE_CHAIN, wire::HOOK_LOCAL_OUT, PRIORITY, "nat")
}

fn base(name: &str, num: u32, priority: i32, kind: &str) -> ChainDef {
    ChainDef {
        name: name.into(),
        hook: Some(Hook {
            num,
            priority,
            kind: kind.into(),
        }),
    }
}

/// The nat chain at `postrouting` holding the masquerade rules, one before iptables' (100).
fn masquerade_chain() -> ChainDef {
    base(MASQUERADE_CHAIN, wire::HOOK_POST_ROUTING, 99, "nat")
}

/// The filter chain at `input` holding the guard rules.
fn guard_chain() -> ChainDef {
    base(GUARD_CHAIN, wire::HOOK_LOCAL_IN, 0, "filter")
}

/// `meta iifname`/`oifname` compared with `bridge`, as nft writes it: the name in 16 bytes.
fn interface_is(key: u32, bridge: &str) -> [Expr; 2] {
    let mut name = bridge.as_bytes().to_vec();
    name.resize(16, 0);
    [
        Expr::Meta {
            dreg: wire::REG_1,
            key,
        },
        Expr::Cmp {
            sreg: wire::REG_1,
            op: wire::CMP_EQ,
            data: name,
        },
    ]
}

/// `ip saddr|daddr 127.0.0.0/8` (`offset` 12 or 16 of the IPv4 header).
fn loopback_net(offset: u32) -> [Expr; 3] {
    [
        Expr::Payload {
            dreg: wire::REG_1,
            base: wire::BASE_NETWORK,
            offset,
            len: 4,
        },
        Expr::Bitwise {
            sreg: wire::REG_1,
            dreg: wire::REG_1,
            mask: vec![255, 0, 0, 0],
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: wire::REG_1,
            op: wire::CMP_EQ,
            data: vec![127, 0, 0, 0],
        },
    ]
}

/// `oifname BRIDGE ip saddr 127.0.0.0/8 masquerade`: a connection from loopback that a DNAT sent
/// to a container leaves with the bridge's address, so that the container can answer it.
fn masquerade_rule(bridge: &str) -> Vec<Expr> {
    let mut e = interface_is(wire::META_OIFNAME, bridge).to_vec();
    e.extend(loopback_net(12));
    e.push(Expr::Masquerade);
    e
}

/// The guard's rules for `bridge`, each with what its comment names. With `route_localnet` on the
/// bridge, a container could send packets to the host's loopback services; only the answers of
/// connections codeb translated may come in that way:
/// - `iifname BRIDGE ip daddr 127.0.0.0/8 ct state invalid,untracked drop`: a packet conntrack
///   has no entry for (a `ct status` expression does not match it, so the next rule would let it
///   pass);
/// - `iifname BRIDGE ip daddr 127.0.0.0/8 ct status & dnat == 0 drop`: any packet of a flow codeb
///   did not translate;
/// - `iifname BRIDGE ip saddr 127.0.0.0/8 drop`: a loopback source from the bridge is forged.
fn guard_rules(bridge: &str) -> Vec<(Vec<Expr>, &'static str)> {
    let to_loopback = || {
        let mut e = interface_is(wire::META_IIFNAME, bridge).to_vec();
        e.extend(loopback_net(16));
        e
    };
    let ct_masked = |key: u32, mask: u32, op: u32| {
        [
            Expr::Ct {
                dreg: wire::REG_1,
                key,
            },
            Expr::Bitwise {
                sreg: wire::REG_1,
                dreg: wire::REG_1,
                mask: mask.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: wire::REG_1,
                op,
                data: vec![0; 4],
            },
        ]
    };
    let mut untracked = to_loopback();
    untracked.extend(ct_masked(
        wire::CT_STATE,
        wire::CT_STATE_INVALID | wire::CT_STATE_UNTRACKED,
        wire::CMP_NEQ,
    ));
    untracked.push(Expr::Drop);
    let mut untranslated = to_loopback();
    untranslated.extend(ct_masked(wire::CT_STATUS, wire::IPS_DST_NAT, wire::CMP_EQ));
    untranslated.push(Expr::Drop);
    let mut forged = interface_is(wire::META_IIFNAME, bridge).to_vec();
    forged.extend(loopback_net(12));
    forged.push(Expr::Drop);
    vec![
        (untracked, "guard untracked"),
        (untranslated, "guard"),
        (forged, "guard source"),
    ]
}

/// One rule of a bridge's loopback plumbing: its chain, expressions and comment.
struct LoopbackRule {
    chain: &'static str,
    def: ChainDef,
    exprs: Vec<Expr>,
    comment: String,
}

/// Every rule of `bridge`'s loopback plumbing: the masquerade, then the guard's.
fn loopback_rules(bridge: &str) -> Vec<LoopbackRule> {
    let mut rules = vec![LoopbackRule {
        chain: MASQUERADE_CHAIN,
        def: masquerade_chain(),
        exprs: masquerade_rule(bridge),
        comment: format!("codeb loopback {bridge}"),
    }];
    rules.extend(
        guard_rules(bridge)
            .into_iter()
            .map(|(exprs, what)| LoopbackRule {
                chain: GUARD_CHAIN,
                def: guard_chain(),
                exprs,
                comment: format!("codeb loopback {what} {bridge}"),
            }),
    );
    rules
}

/// The transaction that brings `bridge`'s loopback rules to one each, from the handles `found` of
/// each (in [`loopback_rules`]' order): the table and a chain where a rule is missing, the missing
/// rules, and duplicates deleted.
pub fn loopback_ops(bridge: &str, found: &[Vec<u64>]) -> Vec<Op> {
    let rules = loopback_rules(bridge);
    let mut ops = Vec::new();
    let missing: Vec<&LoopbackRule> = rules
        .iter()
        .zip(found)
        .filter(|(_, f)| f.is_empty())
        .map(|(r, _)| r)
        .collect();
    if !missing.is_empty() {
        ops.push(Op::AddTable);
    }
    let mut chains: Vec<&str> = Vec::new();
    for rule in missing {
        if !chains.contains(&rule.chain) {
            chains.push(rule.chain);
            ops.push(Op::AddChain(rule.def.clone()));
        }
        ops.push(Op::AddRule {
            chain: rule.chain.into(),
            exprs: rule.exprs.clone(),
            comment: Some(rule.comment.clone()),
            first: false,
        });
    }
    for (rule, handles) in rules.iter().zip(found) {
        ops.extend(handles.iter().skip(1).map(|h| Op::DelRule {
            chain: rule.chain.into(),
            handle: *h,
        }));
    }
    ops
}

/// `/proc/sys/net/ipv4/conf/BRIDGE/route_localnet`, for a name the kernel could have given an
/// interface (no path separator, at most 15 bytes).
fn route_localnet_path(bridge: &str) -> Option<std::path::PathBuf> {
    is_interface_name(bridge)
        .then(|| format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet").into())
}

fn route_localnet_on(bridge: &str) -> bool {
    route_localnet_path(bridge)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|v| v.trim() == "1")
}

/// The bridges this process saw or turned `route_localnet` on for: those [`fail_closed`] checks.
fn guarded() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<String>> {
    static GUARDED: Mutex<std::collections::BTreeSet<String>> =
        Mutex::new(std::collections::BTreeSet::new());
    GUARDED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Turns `route_localnet` off on every bridge codeb turned it on for whose guard is no longer in
/// place (a `nft flush ruleset`, a rule of it deleted), so that containers cannot reach the host's
/// loopback services until a reconcile puts the guard back (and `route_localnet` on after it).
/// Returns the bridges it turned it off for. Blocking: a netlink dump and a few small files.
///
/// # Errors
/// Reading codeb's table or writing a setting failed (the table being gone is no error).
pub fn fail_closed() -> io::Result<Vec<String>> {
    let bridges: Vec<String> = guarded().iter().cloned().collect();
    if bridges.is_empty() {
        return Ok(Vec::new());
    }
    let mut socket = netlink::Socket::open()?;
    let chains = socket.chains(TABLE)?;
    let rules = match socket.rules(TABLE) {
        Ok(rules) => rules,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Vec::new(),
        Err(e) => return Err(e),
    };
    let hooked = chains.contains(&guard_chain());
    let mut reset = Vec::new();
    for bridge in bridges {
        let in_place = hooked
            && guard_rules(&bridge).iter().all(|(exprs, _)| {
                rules
                    .iter()
                    .any(|r| r.chain == GUARD_CHAIN && r.exprs == *exprs)
            });
        if in_place || !route_localnet_on(&bridge) {
            continue;
        }
        if let Some(path) = route_localnet_path(&bridge) {
            std::fs::write(path, "0")?;
            reset.push(bridge);
        }
    }
    Ok(reset)
}

/// Notifications of changes to codeb's table that concern the loopback guard (see
/// [`netlink::Monitor`]).
#[derive(Debug)]
pub struct RulesetMonitor {
    inner: netlink::Monitor,
    buf: Vec<u8>,
}

impl RulesetMonitor {
    /// Subscribes to nf_tables' ruleset notifications (needs `CAP_NET_ADMIN`).
    ///
    /// # Errors
    /// The kernel refused the subscription.
    pub fn open() -> io::Result<RulesetMonitor> {
        Ok(RulesetMonitor {
            inner: netlink::Monitor::open()?,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Blocks up to a second: `Some(true)` when codeb's guard or masquerade chain (or its table)
    /// was changed, or notifications were lost; `Some(false)` for other changes; `None` for none.
    ///
    /// # Errors
    /// The socket failed.
    pub fn wait(&mut self) -> io::Result<Option<bool>> {
        // `touches` matches the table by name in any family: `bridge codeb`'s chain is the
        // isolation's, `ip codeb` has none of that name.
        self.inner.wait(
            &mut self.buf,
            TABLE,
            &[GUARD_CHAIN, MASQUERADE_CHAIN, ISOLATION_CHAIN],
        )
    }
}

/// codeb's base chain in the table `bridge codeb`: frames a bridge forwards from one port to
/// another (container to container), at the bridge family's filter priority.
fn isolation_chain() -> ChainDef {
    base(ISOLATION_CHAIN, wire::HOOK_BRIDGE_FORWARD, 0, "filter")
}

/// The isolation's rules, in order, each with its comment:
/// - `ether saddr 0a:cb:00:00:00:00/16 drop`: a frame a tenant container sends to another port of
///   its bridge (another container, any project, any protocol, ARP included);
/// - `ether daddr 0a:cb:00:00:00:00/16 drop`: a frame another port (a container codeb did not
///   create) sends to a tenant container.
///
/// Each is a 2-byte payload of the Ethernet header compared with [`TENANT_MAC_PREFIX`]. Frames
/// between a container and the host (the gateway: Caddy's and codeb's connections, PostgreSQL
/// and Redis, DNS, and the way out through the masquerade) go through the bridge's input and
/// output hooks, never `forward`.
fn isolation_rules() -> Vec<(Vec<Expr>, &'static str)> {
    let prefix = |offset: u32| {
        vec![
            Expr::Payload {
                dreg: wire::REG_1,
                base: wire::BASE_LINK,
                offset,
                len: 2,
            },
            Expr::Cmp {
                sreg: wire::REG_1,
                op: wire::CMP_EQ,
                data: TENANT_MAC_PREFIX.to_vec(),
            },
            Expr::Drop,
        ]
    };
    vec![
        (prefix(6), "codeb tenant isolation: from a tenant"),
        (prefix(0), "codeb tenant isolation: to a tenant"),
    ]
}

/// The transaction that puts the isolation in place from whatever the table `bridge codeb` holds:
/// the table and its chain created where missing, the chain flushed and its rules added. One
/// transaction: at no instant of it are the rules missing where they were in place.
pub fn isolation_ops() -> Vec<Op> {
    let mut ops = vec![
        Op::AddTable,
        Op::AddChain(isolation_chain()),
        Op::Flush(ISOLATION_CHAIN.into()),
    ];
    ops.extend(
        isolation_rules()
            .into_iter()
            .map(|(exprs, comment)| Op::AddRule {
                chain: ISOLATION_CHAIN.into(),
                exprs,
                comment: Some(comment.into()),
                first: false,
            }),
    );
    ops
}

/// True when the table `bridge codeb` holds codeb's base chain at `forward` with exactly its
/// isolation rules, in order (a missing table is not an error: the isolation is not in place).
/// codeb's chains and rules of `ip codeb`, and with `isolation` whether the isolation table is in
/// place (else taken as in place: not looked at).
fn read_table(s: &mut netlink::Socket, isolation: bool) -> Result<Ruleset> {
    let chains = s
        .chains(TABLE)
        .map_err(|e| Error::from_io("the list of chains", e))?;
    let rules = s
        .rules(TABLE)
        .map_err(|e| Error::from_io(format!("the rules of table ip {TABLE}"), e))?;
    let isolated = !isolation
        || isolation_in_place(s)
            .map_err(|e| Error::from_io(format!("the rules of table bridge {TABLE}"), e))?;
    Ok(Ruleset {
        chains,
        rules,
        isolated,
        facts: None,
    })
}

fn isolation_in_place(s: &mut netlink::Socket) -> io::Result<bool> {
    let chains = s.chains_in(wire::FAMILY_BRIDGE, TABLE)?;
    if !chains.contains(&isolation_chain()) {
        return Ok(false);
    }
    let rules = match s.rules_in(wire::FAMILY_BRIDGE, TABLE) {
        Ok(rules) => rules,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(isolation_matches(&rules))
}

/// The rules of `bridge codeb`'s base chain are exactly codeb's isolation rules, in order.
pub fn isolation_matches(rules: &[ListedRule]) -> bool {
    let found: Vec<&Vec<Expr>> = rules
        .iter()
        .filter(|r| r.chain == ISOLATION_CHAIN)
        .map(|r| &r.exprs)
        .collect();
    let wanted = isolation_rules();
    found.len() == wanted.len() && found.iter().zip(&wanted).all(|(f, (w, _))| *f == w)
}

/// `/sys/class/net/{bridge}/{file}`, for an interface name.
fn sys_class_net(bridge: &str, file: &str) -> Option<std::path::PathBuf> {
    is_interface_name(bridge).then(|| format!("/sys/class/net/{bridge}/{file}").into())
}

fn is_interface_name(name: &str) -> bool {
    !name.is_empty() && name.len() < 16 && !name.contains('/') && name != "." && name != ".."
}

/// Pins `bridge`'s MAC address to the one it has now (see [`ObservedLoopback::mac_pinned`]).
async fn pin_mac(bridge: &str) -> super::Result<()> {
    let read = |file: &str| {
        let path = sys_class_net(bridge, file).ok_or_else(|| Error::Unsupported {
            reason: format!("{bridge:?} is not an interface name"),
        })?;
        std::fs::read_to_string(&path).map_err(|e| Error::from_io(format!("{}", path.display()), e))
    };
    let index: i32 = read("ifindex")?
        .trim()
        .parse()
        .map_err(|_| Error::Unsupported {
            reason: format!("{bridge} has no interface index"),
        })?;
    let text = read("address")?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    let mac: [u8; 6] = bytes.try_into().map_err(|_| Error::Unsupported {
        reason: format!("{bridge}'s address {:?} is not a MAC address", text.trim()),
    })?;
    tokio::task::spawn_blocking(move || netlink::set_link_address(index, mac))
        .await
        .map_err(|e| Error::from_io(format!("pinning {bridge}'s MAC"), std::io::Error::other(e)))?
        .map_err(|e| Error::from_io(format!("pinning {bridge}'s MAC address"), e))?;
    Ok(())
}

/// `meta l4proto tcp`.
fn tcp() -> [Expr; 2] {
    [
        Expr::Meta {
            dreg: wire::REG_1,
            key: wire::META_L4PROTO,
        },
        Expr::Cmp {
            sreg: wire::REG_1,
            op: wire::CMP_EQ,
            data: vec![6],
        },
    ]
}

/// `ip daddr G meta l4proto tcp jump CODEB-<G>`.
fn hook_rule(gateway: Ipv4Addr) -> Vec<Expr> {
    let mut e = vec![
        Expr::Payload {
            dreg: wire::REG_1,
            base: wire::BASE_NETWORK,
            offset: 16,
            len: 4,
        },
        Expr::Cmp {
            sreg: wire::REG_1,
            op: wire::CMP_EQ,
            data: gateway.octets().to_vec(),
        },
    ];
    e.extend(tcp());
    e.push(Expr::Jump {
        chain: dispatch_chain(gateway),
    });
    e
}

/// `meta l4proto tcp tcp dport P jump CODEB-<G>-P`.
fn dispatch_rule(gateway: Ipv4Addr, port: u16) -> Vec<Expr> {
    let mut e = tcp().to_vec();
    e.push(Expr::Payload {
        dreg: wire::REG_1,
        base: wire::BASE_TRANSPORT,
        offset: 2,
        len: 2,
    });
    e.push(Expr::Cmp {
        sreg: wire::REG_1,
        op: wire::CMP_EQ,
        data: port.to_be_bytes().to_vec(),
    });
    e.push(Expr::Jump {
        chain: service_chain(gateway, port),
    });
    e
}

/// `dnat to IP:PORT`.
fn dnat_rule(to: SocketAddrV4) -> Vec<Expr> {
    vec![
        Expr::Value {
            dreg: wire::REG_1,
            data: to.ip().octets().to_vec(),
        },
        Expr::Value {
            dreg: wire::REG_2,
            data: to.port().to_be_bytes().to_vec(),
        },
        Expr::Dnat {
            addr: wire::REG_1,
            proto: wire::REG_2,
            flags: wire::NAT_FLAGS,
        },
    ]
}

/// The transaction of a [`HookWrite`]: the table, the base chain and the dispatch chain where
/// missing, the gateway's rule first in the base chain when it has none, and duplicates (their
/// `extra` handles) deleted. Empty when nothing is missing.
pub fn hook_ops(write: &HookWrite, extra: &[u64]) -> Vec<Op> {
    let mut ops = Vec::new();
    if write.hooks == 0 || !write.chain {
        // Creating what exists changes nothing, so a base chain or a table lost with it comes back.
        ops.push(Op::AddTable);
        ops.push(Op::AddChain(base_chain()));
    }
    if !write.chain {
        ops.push(Op::AddChain(ChainDef {
            name: dispatch_chain(write.gateway),
            hook: None,
        }));
    }
    if write.hooks == 0 {
        ops.push(Op::AddRule {
            chain: BASE_CHAIN.into(),
            exprs: hook_rule(write.gateway),
            comment: Some(HOOK_COMMENT.into()),
            first: true,
        });
    }
    for handle in extra.iter().skip(1) {
        ops.push(Op::DelRule {
            chain: BASE_CHAIN.into(),
            handle: *handle,
        });
    }
    ops
}

/// The transaction of a [`ServiceWrite`]; `extra` are the handles of the dispatch rules to delete
/// (beyond the one kept, or all of them when the service goes).
///
/// With a target: the service chain is created if missing, flushed and given its one rule, and
/// the dispatch rule is added when there is none, all in one transaction. Without: the dispatch
/// rules go, then the chain (created first when missing, so that the transaction does not depend
/// on it being there).
pub fn service_ops(write: &ServiceWrite, extra: &[u64]) -> Vec<Op> {
    let (gw, port) = (write.gateway, write.port);
    let dispatch = dispatch_chain(gw);
    let chain = service_chain(gw, port);
    let mut ops = Vec::new();
    let deletes = extra.iter().map(|h| Op::DelRule {
        chain: dispatch.clone(),
        handle: *h,
    });
    let declare = [
        Op::AddChain(ChainDef {
            name: chain.clone(),
            hook: None,
        }),
        Op::Flush(chain.clone()),
    ];
    match &write.target {
        Some(target) => {
            ops.extend(declare);
            ops.push(Op::AddRule {
                chain: chain.clone(),
                exprs: dnat_rule(target.to),
                comment: Some(format!("{RULE_COMMENT_PREFIX}{}", target.label)),
                first: false,
            });
            if write.dispatch == 0 {
                ops.push(Op::AddRule {
                    chain: dispatch.clone(),
                    exprs: dispatch_rule(gw, port),
                    comment: None,
                    first: false,
                });
            }
            ops.extend(deletes);
        }
        None => {
            ops.extend(deletes);
            ops.extend(declare);
            ops.push(Op::DelChain(chain));
        }
    }
    ops
}

/// An op as a person reads it, for errors.
fn describe(op: &Op) -> String {
    match op {
        Op::AddTable => format!("add table {TABLE}"),
        Op::AddChain(c) => format!("add chain {}", c.name),
        Op::DelChain(c) => format!("delete chain {c}"),
        Op::AddRule { chain, .. } => format!("add rule to {chain}"),
        Op::DelRule { chain, handle } => format!("delete rule {handle} of {chain}"),
        Op::Flush(c) => format!("flush chain {c}"),
    }
}

/// codeb's rules for `gateway` in a read of codeb's table. Chains and rules of other gateways are
/// skipped.
pub fn parse(set: &Ruleset, gateway: Ipv4Addr) -> ObservedServices {
    let dispatch = dispatch_chain(gateway);
    let hook = hook_rule(gateway);
    let mut out = ObservedServices::default();
    let hooked = set.chains.iter().any(|c| *c == base_chain());
    for c in &set.chains {
        if c.name == dispatch {
            out.chain = true;
        } else if let Some(port) = service_port(&c.name, &dispatch) {
            out.services.entry(port).or_default().chain = true;
        }
    }
    for rule in &set.rules {
        if rule.chain == BASE_CHAIN {
            // A rule in a chain that is not hooked as codeb's base chain leads nowhere.
            out.hooks += usize::from(hooked && rule.exprs == hook);
        } else if rule.chain == dispatch {
            if let Some(port) = dispatch_port(&rule.exprs, gateway) {
                out.services.entry(port).or_default().dispatch += 1;
            }
        } else if let Some(port) = service_port(&rule.chain, &dispatch) {
            let service: &mut ObservedService = out.services.entry(port).or_default();
            service.rules.push(service_rule(rule));
        }
    }
    out
}

/// The port of a service chain name under `dispatch`, written the way [`service_chain`] does.
fn service_port(name: &str, dispatch: &str) -> Option<u16> {
    let port = name.strip_prefix(dispatch)?.strip_prefix('-')?;
    let p: u16 = port.parse().ok()?;
    (p.to_string() == port).then_some(p)
}

/// The port of a dispatch rule exactly as [`dispatch_rule`] writes it.
fn dispatch_port(exprs: &[Expr], gateway: Ipv4Addr) -> Option<u16> {
    let Some(Expr::Cmp { data, .. }) = exprs.get(3) else {
        return None;
    };
    let port = u16::from_be_bytes(data.as_slice().try_into().ok()?);
    (exprs == dispatch_rule(gateway, port)).then_some(port)
}

/// A service chain's rule: codeb's DNAT shape with its comment, or anything else described.
fn service_rule(rule: &ListedRule) -> ServiceRule {
    let parsed = (|| {
        let (Some(Expr::Value { data: ip, .. }), Some(Expr::Value { data: port, .. })) =
            (rule.exprs.first(), rule.exprs.get(1))
        else {
            return None;
        };
        let ip: [u8; 4] = ip.as_slice().try_into().ok()?;
        let port: [u8; 2] = port.as_slice().try_into().ok()?;
        let to = SocketAddrV4::new(Ipv4Addr::from(ip), u16::from_be_bytes(port));
        let label = rule.comment.as_deref()?.strip_prefix(RULE_COMMENT_PREFIX)?;
        (rule.exprs == dnat_rule(to)).then(|| ServiceTarget {
            to,
            label: label.to_string(),
        })
    })();
    match parsed {
        Some(t) => ServiceRule::Dnat(t),
        None => ServiceRule::Other(describe_rule(rule)),
    }
}

/// A rule as a person reads it: its expressions and comment.
fn describe_rule(rule: &ListedRule) -> String {
    let exprs: Vec<String> = rule.exprs.iter().map(|e| format!("{e:?}")).collect();
    match &rule.comment {
        Some(c) => format!("{} comment {c:?}", exprs.join(" ")),
        None => exprs.join(" "),
    }
}

/// Connections in `/proc/net/nf_conntrack` whose reply comes from `target` and that are not
/// closing (their TCP state is SYN_SENT, SYN_RECV or ESTABLISHED). A line reads
/// `ipv4 2 tcp 6 431999 ESTABLISHED src=A dst=S sport=X dport=P src=T dst=A sport=Q dport=X ...`:
/// the second tuple is the reply's, whose source is the container after a DNAT.
pub fn count_open(conntrack: &str, target: SocketAddrV4) -> usize {
    let (ip, port) = (
        format!("src={}", target.ip()),
        format!("sport={}", target.port()),
    );
    conntrack
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let open = fields.get(2) == Some(&"tcp")
                && fields
                    .get(5)
                    .is_some_and(|s| matches!(*s, "ESTABLISHED" | "SYN_SENT" | "SYN_RECV"));
            // The reply tuple: the second `src=` and the second `sport=`.
            let nth = |prefix: &str| fields.iter().filter(|f| f.starts_with(prefix)).nth(1);
            open && nth("src=") == Some(&ip.as_str()) && nth("sport=") == Some(&port.as_str())
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 89, 144, 1);

    fn target(last: u8, label: &str) -> ServiceTarget {
        ServiceTarget {
            to: SocketAddrV4::new(Ipv4Addr::new(10, 89, 144, last), 8080),
            label: label.to_string(),
        }
    }

    fn rule(chain: &str, handle: u64, exprs: Vec<Expr>, comment: Option<&str>) -> ListedRule {
        ListedRule {
            chain: chain.into(),
            handle,
            exprs,
            comment: comment.map(str::to_string),
        }
    }

    fn chain(name: &str) -> ChainDef {
        ChainDef {
            name: name.into(),
            hook: None,
        }
    }

    /// codeb's table with two gateways: ours with two services (one changed by hand, its dispatch
    /// rule doubled), another gateway's with one.
    fn table() -> Ruleset {
        let other = Ipv4Addr::new(10, 89, 56, 1);
        let svc = "CODEB-0a599001-4051";
        Ruleset {
            chains: vec![
                base_chain(),
                chain("CODEB-0a599001"),
                chain(svc),
                chain("CODEB-0a599001-4060"),
                chain("CODEB-0a593801"),
                chain("CODEB-0a593801-4051"),
            ],
            rules: vec![
                rule("output", 1, hook_rule(GW), Some(HOOK_COMMENT)),
                rule("output", 2, hook_rule(other), Some(HOOK_COMMENT)),
                rule("CODEB-0a599001", 3, dispatch_rule(GW, 4051), None),
                rule("CODEB-0a599001", 4, dispatch_rule(GW, 4060), None),
                rule("CODEB-0a599001", 6, dispatch_rule(GW, 4060), None),
                rule(
                    svc,
                    5,
                    dnat_rule(target(2, "").to),
                    Some("codeb shop/production"),
                ),
                rule("CODEB-0a599001-4060", 7, dnat_rule(target(9, "").to), None),
                rule("CODEB-0a593801", 8, dispatch_rule(other, 4051), None),
                rule(
                    "CODEB-0a593801-4051",
                    9,
                    dnat_rule(SocketAddrV4::new(Ipv4Addr::new(10, 89, 56, 7), 8080)),
                    Some("codeb other/production"),
                ),
            ],
            isolated: false,
            facts: None,
        }
    }

    #[test]
    fn chain_names_carry_the_gateway_and_the_port() {
        assert_eq!(dispatch_chain(GW), "CODEB-0a599001");
        assert_eq!(service_chain(GW, 4051), "CODEB-0a599001-4051");
    }

    #[test]
    fn only_this_gateways_chains_are_read() {
        let observed = parse(&table(), GW);
        assert!(observed.chain);
        assert_eq!(observed.hooks, 1);
        assert_eq!(observed.services.len(), 2);
        assert_eq!(
            observed.services[&4051],
            ObservedService {
                dispatch: 1,
                chain: true,
                rules: vec![ServiceRule::Dnat(target(2, "shop/production"))],
            }
        );
    }

    #[test]
    fn a_rule_changed_by_hand_and_a_duplicate_dispatch_rule_are_seen_as_such() {
        let observed = parse(&table(), GW);
        let s = &observed.services[&4060];
        assert_eq!(s.dispatch, 2);
        assert!(matches!(&s.rules[..], [ServiceRule::Other(d)] if d.contains("Dnat")));
    }

    #[test]
    fn a_gateway_rule_in_an_output_chain_that_is_not_hooked_counts_for_nothing() {
        let mut t = table();
        t.chains[0] = chain("output");
        assert_eq!(parse(&t, GW).hooks, 0);
    }

    #[test]
    fn nothing_of_a_gateway_without_rules_is_observed() {
        let observed = parse(&table(), Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(observed, ObservedServices::default());
    }

    #[test]
    fn a_switch_replaces_the_service_chain_in_one_transaction() {
        let write = ServiceWrite {
            gateway: GW,
            port: 4051,
            target: Some(target(3, "shop/production")),
            dispatch: 1,
        };
        let svc = "CODEB-0a599001-4051";
        assert_eq!(
            service_ops(&write, &[]),
            vec![
                Op::AddChain(chain(svc)),
                Op::Flush(svc.into()),
                Op::AddRule {
                    chain: svc.into(),
                    exprs: dnat_rule(target(3, "").to),
                    comment: Some("codeb shop/production".into()),
                    first: false,
                },
            ]
        );
    }

    #[test]
    fn a_new_service_gets_its_dispatch_rule_and_duplicates_are_deleted() {
        let write = |dispatch| ServiceWrite {
            gateway: GW,
            port: 4051,
            target: Some(target(3, "a/b")),
            dispatch,
        };
        assert!(service_ops(&write(0), &[]).contains(&Op::AddRule {
            chain: "CODEB-0a599001".into(),
            exprs: dispatch_rule(GW, 4051),
            comment: None,
            first: false,
        }));
        let dup = service_ops(&write(3), &[8, 9]);
        let deleted = dup
            .iter()
            .filter(|o| matches!(o, Op::DelRule { .. }))
            .count();
        assert_eq!(deleted, 2);
    }

    #[test]
    fn removing_a_service_deletes_its_dispatch_rules_then_its_chain() {
        let write = ServiceWrite {
            gateway: GW,
            port: 4051,
            target: None,
            dispatch: 1,
        };
        let svc = "CODEB-0a599001-4051";
        assert_eq!(
            service_ops(&write, &[3]),
            vec![
                Op::DelRule {
                    chain: "CODEB-0a599001".into(),
                    handle: 3
                },
                Op::AddChain(chain(svc)),
                Op::Flush(svc.into()),
                Op::DelChain(svc.into()),
            ]
        );
    }

    #[test]
    fn the_hook_is_written_only_where_missing_and_goes_first_in_the_base_chain() {
        let write = |chain, hooks| HookWrite {
            gateway: GW,
            chain,
            hooks,
        };
        assert_eq!(hook_ops(&write(true, 1), &[]), vec![]);
        assert_eq!(
            hook_ops(&write(false, 0), &[]),
            vec![
                Op::AddTable,
                Op::AddChain(base_chain()),
                Op::AddChain(chain("CODEB-0a599001")),
                Op::AddRule {
                    chain: "output".into(),
                    exprs: hook_rule(GW),
                    comment: Some(HOOK_COMMENT.into()),
                    first: true,
                },
            ]
        );
        assert_eq!(
            hook_ops(&write(true, 2), &[4, 7]),
            vec![Op::DelRule {
                chain: "output".into(),
                handle: 7
            }]
        );
    }

    #[test]
    fn what_is_written_reads_back_as_the_same_target() {
        let t = target(7, "shop/production");
        let written = rule(
            "CODEB-0a599001-4051",
            1,
            dnat_rule(t.to),
            Some("codeb shop/production"),
        );
        assert_eq!(service_rule(&written), ServiceRule::Dnat(t));
        assert_eq!(dispatch_port(&dispatch_rule(GW, 4051), GW), Some(4051));
        // Without codeb's comment, the same DNAT is not codeb's shape.
        let bare = ListedRule {
            comment: None,
            ..written
        };
        assert!(matches!(service_rule(&bare), ServiceRule::Other(_)));
    }

    #[test]
    fn open_connections_are_counted_by_their_reply_source() {
        let ct = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.89.144.1 dst=10.89.144.1 sport=40000 dport=4051 src=10.89.144.2 dst=10.89.144.1 sport=8080 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 119 TIME_WAIT src=10.89.144.1 dst=10.89.144.1 sport=40001 dport=4051 src=10.89.144.2 dst=10.89.144.1 sport=8080 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=10.89.144.1 dst=10.89.144.1 sport=40002 dport=4051 src=10.89.144.3 dst=10.89.144.1 sport=8080 dport=40002 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 20 src=10.89.144.2 dst=10.89.144.1 sport=8080 dport=53 src=10.89.144.1 dst=10.89.144.2 sport=53 dport=8080 mark=0 zone=0 use=2
";
        let blue = SocketAddrV4::new(Ipv4Addr::new(10, 89, 144, 2), 8080);
        assert_eq!(count_open(ct, blue), 1);
    }

    #[test]
    fn a_missing_privilege_or_nf_tables_is_unsupported_not_a_failure() {
        let eperm = Error::from_io("x", io::Error::from_raw_os_error(1));
        assert!(matches!(eperm, Error::Unsupported { .. }), "{eperm}");
        assert!(!eperm.is_retryable());
        let enoent = Error::from_io("x", io::Error::from_raw_os_error(2));
        assert!(enoent.is_retryable(), "{enoent}");
    }

    #[tokio::test]
    async fn an_unsupported_netfilter_observes_nothing_and_writes_nothing() {
        let n = Netfilter::unsupported("Podman is on another machine", false);
        let unsupported = n.observe(GW).await.unwrap_err();
        assert_eq!(
            unsupported.kind(),
            &crate::backend::ErrorKind::Unsupported {
                reason: "Podman is on another machine".into()
            },
            "the trait's error keeps the reason"
        );
        assert!(!unsupported.retryable());
        assert_eq!(n.open_connections(SocketAddrV4::new(GW, 1)).await, None);
    }

    #[test]
    fn a_gateway_that_is_not_an_address_of_this_machine_is_unsupported_unless_its_bridge_is_to_come(
    ) {
        let n = Netfilter::new();
        // TEST-NET-1 (RFC 5737) is never assigned to a machine; `lo` always exists.
        let test_net = Ipv4Addr::new(192, 0, 2, 1);
        let on = |gateway, bridge: &str| NetworkInfo {
            gateway,
            bridge: bridge.into(),
        };
        let err = n
            .local(&Ruleset::default(), &on(test_net, "lo"))
            .unwrap_err();
        assert!(
            matches!(err.kind(), crate::backend::ErrorKind::Unsupported { .. }),
            "{err}"
        );
        assert!(n
            .local(&Ruleset::default(), &on(Ipv4Addr::LOCALHOST, "lo"))
            .is_ok());
        assert!(n
            .local(&Ruleset::default(), &on(test_net, "cbnotyet0"))
            .is_ok());
    }

    #[test]
    fn finding_1_a_network_whose_bridge_is_not_up_yet_is_this_machines_and_a_foreign_one_is_not() {
        let net = |bridge: &str| NetworkInfo {
            gateway: Ipv4Addr::new(10, 89, 57, 1),
            bridge: bridge.into(),
        };
        let not_here = || Some(io::Error::from_raw_os_error(libc::EADDRNOTAVAIL));
        // Bound: an address here, whatever the bridge.
        assert!(locality(&net("podman1"), None, true).is_ok());
        // A fresh network on a local Podman: no bridge yet, so no gateway yet either.
        assert!(locality(&net("podman1"), not_here(), false).is_ok());
        // A bridge that exists without the gateway on it, or no bridge named: not this machine's.
        let err = locality(&net("podman1"), not_here(), true).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("10.89.57.1"), "{err}");
        assert!(locality(&net(""), not_here(), false).is_err());
    }

    /// The isolation is one transaction in the bridge family that converges from any state (the
    /// table and chain created where missing, the chain flushed, then its two rules), and what it
    /// writes, as the kernel would list it, is recognised as in place; a rule missing, changed or
    /// added by hand is not.
    #[test]
    fn the_isolation_is_written_whole_and_reads_back_as_in_place() {
        let ops = isolation_ops();
        assert_eq!(ops[0], Op::AddTable);
        assert_eq!(ops[1], Op::AddChain(isolation_chain()));
        assert_eq!(ops[2], Op::Flush(ISOLATION_CHAIN.into()));
        assert_eq!(ops.len(), 5);
        let mut w = wire::Writer::default();
        w.batch(1, wire::FAMILY_BRIDGE, TABLE, &ops);
        let replies = wire::replies(&w.buf);
        // Every message of the transaction (between the batch's begin and end) is in the bridge
        // family: byte 0 of the nf_tables header.
        assert!(replies[1..replies.len() - 1]
            .iter()
            .all(|r| r.body[0] == wire::FAMILY_BRIDGE));
        // As the kernel lists them: with a handle (`NFTA_RULE_HANDLE`, 3) after what was sent.
        let listed: Vec<ListedRule> = replies
            .iter()
            .filter(|r| wire::is_rule(r.kind))
            .filter_map(|r| {
                let mut body = r.body.to_vec();
                body.extend_from_slice(&12u16.to_ne_bytes());
                body.extend_from_slice(&3u16.to_ne_bytes());
                body.extend_from_slice(&7u64.to_be_bytes());
                wire::rule(&body)
            })
            .collect();
        assert_eq!(listed.len(), 2);
        assert!(isolation_matches(&listed));
        assert!(!isolation_matches(&listed[..1]));
        let mut doubled = listed.clone();
        doubled.push(listed[0].clone());
        assert!(!isolation_matches(&doubled));
        let mut changed = listed.clone();
        changed[1].exprs[1] = Expr::Cmp {
            sreg: wire::REG_1,
            op: wire::CMP_EQ,
            data: vec![0x0a, 0xcc],
        };
        assert!(!isolation_matches(&changed));
        // The source MAC's first two bytes (offset 6), then the destination's (offset 0).
        assert!(matches!(
            listed[0].exprs[0],
            Expr::Payload {
                base: wire::BASE_LINK,
                offset: 6,
                len: 2,
                ..
            }
        ));
        assert!(matches!(
            listed[1].exprs[0],
            Expr::Payload {
                base: wire::BASE_LINK,
                offset: 0,
                len: 2,
                ..
            }
        ));
    }
}
