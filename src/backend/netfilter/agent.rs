//! codeb's kernel operations on a remote host, through its agent (issue #18, docs/multi-host.md
//! "Kernel operations through the agent"): the [`Kernel`] trait's operations as typed requests
//! ([`KernelOp`]) and answers ([`KernelAnswer`]); the client's [`AgentKernel`], a [`Kernel`] that
//! sends them over the host's kept ssh session; and the agent's side, [`serve`], which checks
//! them ([`check`]) and runs them with this adapter's own [`Netfilter`] in the host's network
//! namespace (the agent runs there, as root).
//!
//! There is no raw nft text and no other table: an op names a service address, a hook, a bridge
//! or a conntrack target, and the agent builds the same transactions on `ip codeb` (and the
//! isolation on `bridge codeb`) that a local codeb builds. Must not: decide anything (the plan
//! does), or touch anything but codeb's tables and a codeb bridge's `route_localnet` and MAC.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::{locality, loopback_in, parse, Error, Netfilter, Ruleset};
use crate::backend::{Kernel, Result as BackendResult};
use crate::model::observed::{NetworkInfo, ObservedLoopback, ObservedServices};
use crate::model::writes::{HookWrite, LoopbackWrite, ServiceWrite};

/// One kernel request. Every variant is one call of the [`Kernel`] trait on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum KernelOp {
    /// codeb's table, with the host's network facts; `isolation: false` for a switch (the NAT
    /// part only: see [`Kernel::read_for_switch`]).
    Read {
        isolation: bool,
    },
    SetService(ServiceWrite),
    Hook(HookWrite),
    SetLoopback(LoopbackWrite),
    LoopbackOff {
        bridge: String,
    },
    PinMac {
        bridge: String,
    },
    Isolate,
    OpenConnections {
        target: SocketAddrV4,
    },
}

/// The agent's answer to a [`KernelOp`], in the response's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum KernelAnswer {
    Table(Box<Ruleset>),
    Done,
    Connections(Option<usize>),
    /// The host's rules cannot be managed by its agent (not root, no nf_tables, a rootless
    /// Podman): the host switches through Caddy, with this reason.
    Unsupported(String),
    /// The kernel refused the op (nothing of it applied), or the op was out of bounds.
    Refused(String),
}

/// The most dispatch or hook rules an op may say it observed (a write deletes all but one).
const MAX_RULES: usize = 64;
/// The longest label (`project/env/slot`, the rule's comment; nft keeps 128 bytes).
const MAX_LABEL: usize = 120;

/// Whether the agent runs `op`: every field within codeb's own shapes, or why not.
///
/// # Errors
/// The refusal, naming the field.
pub fn check(op: &KernelOp) -> Result<(), String> {
    let address = |a: Ipv4Addr, what: &str| {
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
            Err(format!("{what} {a} is not a host address"))
        } else {
            Ok(())
        }
    };
    let rules = |n: usize, what: &str| {
        if n > MAX_RULES {
            Err(format!("{what} {n} is over {MAX_RULES}"))
        } else {
            Ok(())
        }
    };
    let bridge = |b: &str| {
        if super::is_interface_name(b)
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        {
            Ok(())
        } else {
            Err(format!("{b:?} is not an interface name"))
        }
    };
    match op {
        KernelOp::Read { .. } | KernelOp::Isolate | KernelOp::OpenConnections { .. } => Ok(()),
        KernelOp::SetService(w) => {
            address(w.gateway, "the service gateway")?;
            rules(w.dispatch, "the dispatch rules observed")?;
            if w.port == 0 {
                return Err("the service port 0".into());
            }
            if let Some(t) = &w.target {
                address(*t.to.ip(), "the target")?;
                let label_ok = !t.label.is_empty()
                    && t.label.len() <= MAX_LABEL
                    && t.label
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c));
                if !label_ok || t.to.port() == 0 {
                    return Err(format!(
                        "the target {} labelled {:?} (a port, and a label of at most {MAX_LABEL} letters, digits, `-_./`)",
                        t.to, t.label
                    ));
                }
            }
            Ok(())
        }
        KernelOp::Hook(w) => {
            address(w.gateway, "the hooked address")?;
            rules(w.hooks, "the hook rules observed")
        }
        KernelOp::SetLoopback(w) => {
            bridge(&w.bridge)?;
            rules(w.observed.masquerade, "the masquerade rules observed")?;
            rules(w.observed.guard, "the guard rules observed")?;
            // `route_localnet` goes on for a bridge only: never the host's uplink or loopback.
            if !super::sys_class_net(&w.bridge, "bridge").is_some_and(|p| p.exists()) {
                return Err(format!("{} is not a bridge on this host", w.bridge));
            }
            Ok(())
        }
        KernelOp::LoopbackOff { bridge: b } => bridge(b),
        KernelOp::PinMac { bridge: b } => {
            bridge(b)?;
            // A bridge only, never the host's uplink or loopback; a missing one has nothing to
            // pin (the deploy that would have brought it up failed).
            let exists = |file| super::sys_class_net(b, file).is_some_and(|p| p.exists());
            if exists("") && !exists("bridge") {
                return Err(format!("{b} is not a bridge on this host"));
            }
            Ok(())
        }
    }
}

/// The agent's side: runs `op` in this process's network namespace, with the Podman socket the
/// agent serves (a rootless Podman's bridge is in another namespace: unsupported, as locally).
pub fn serve(op: &KernelOp, podman_socket: &std::path::Path) -> KernelAnswer {
    if let Err(why) = check(op) {
        return KernelAnswer::Refused(format!("not allowed by the agent: {why}"));
    }
    if let Some(reason) = rootless(podman_socket) {
        return KernelAnswer::Unsupported(reason);
    }
    watch_guard();
    let n = netfilter();
    let answer = runtime().block_on(async {
        match op {
            KernelOp::Read { isolation } => {
                let table = if *isolation {
                    n.read().await
                } else {
                    n.read_for_switch().await
                };
                table.map(|mut t| {
                    t.facts = Some(super::host_facts());
                    KernelAnswer::Table(Box::new(t))
                })
            }
            KernelOp::SetService(w) => n.set_service(w).await.map(|()| KernelAnswer::Done),
            KernelOp::Hook(w) => n.hook(w).await.map(|()| KernelAnswer::Done),
            KernelOp::SetLoopback(w) => n.set_loopback(w).await.map(|()| KernelAnswer::Done),
            KernelOp::LoopbackOff { bridge } => {
                n.loopback_off(bridge).await.map(|()| KernelAnswer::Done)
            }
            KernelOp::PinMac { bridge } => n.pin_mac(bridge).await.map(|()| KernelAnswer::Done),
            KernelOp::Isolate => n.isolate().await.map(|()| KernelAnswer::Done),
            KernelOp::OpenConnections { target } => {
                Ok(KernelAnswer::Connections(n.open_connections(*target).await))
            }
        }
    });
    answer.unwrap_or_else(|e| match e.kind() {
        crate::backend::ErrorKind::Unsupported { reason } => {
            KernelAnswer::Unsupported(format!("on the host: {reason}"))
        }
        _ => KernelAnswer::Refused(crate::backend::error_chain(&e)),
    })
}

/// From the session's first kernel op until it ends, the agent fails closed as the daemon does
/// on codeb's own machine (`daemon::ruleset`): when someone changes codeb's loopback guard, its
/// masquerade, the isolation or a whole table on the host (a `nft flush ruleset`), it turns
/// `route_localnet` off at once on each bridge whose guard is gone, so that no container reaches
/// the host's loopback services through it; the next reconcile of the host puts the guard back
/// and `route_localnet` on after it. One thread, blocked on nf_tables' notifications (a second at
/// most per wait); none where the kernel refuses the subscription (then no rule of codeb's can
/// exist either).
fn watch_guard() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let Ok(mut monitor) = super::RulesetMonitor::open() else {
            return;
        };
        std::thread::spawn(move || loop {
            match monitor.wait() {
                Ok(Some(true)) => match super::fail_closed() {
                    Ok(reset) if !reset.is_empty() => eprintln!(
                        "codeb agent: codeb's loopback guard was removed: route_localnet is off on {} until it is back",
                        reset.join(", ")
                    ),
                    Ok(_) => {}
                    Err(e) => eprintln!("codeb agent: cannot check codeb's loopback guard: {e}"),
                },
                Ok(_) => {}
                Err(e) => {
                    eprintln!("codeb agent: nf_tables notifications stopped: {e}");
                    return;
                }
            }
        });
    });
}

/// Why the host's Podman is not one whose bridge is in this namespace: its socket belongs to
/// another user than root (a missing socket says nothing: Podman is then unreachable).
fn rootless(podman_socket: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(podman_socket).ok()?.uid();
    (uid != 0).then(|| {
        format!(
            "Podman at {} on the host is rootless (its socket belongs to uid {uid})",
            podman_socket.display()
        )
    })
}

/// The agent's netfilter: one for the session, so its netlink socket is kept between ops.
fn netfilter() -> &'static Netfilter {
    static N: OnceLock<Netfilter> = OnceLock::new();
    N.get_or_init(Netfilter::new)
}

/// The agent's requests run on plain threads; the netfilter adapter is async: one small
/// runtime for the session, entered by each op's thread.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the agent's kernel ops")
    })
}

/// A remote host's kernel, driven through its agent over the kept session.
pub struct AgentKernel {
    session: Arc<crate::backend::remote::Session>,
    /// `CODEB_SWITCH=caddy-admin`: the host switches through Caddy although its agent could.
    fallback: Option<String>,
}

impl AgentKernel {
    pub fn new(session: Arc<crate::backend::remote::Session>, fallback: Option<String>) -> Self {
        AgentKernel { session, fallback }
    }

    async fn call(&self, op: KernelOp) -> BackendResult<KernelAnswer> {
        let answer = self.session.kernel(op).await.map_err(|e| {
            let retryable = matches!(
                e,
                crate::backend::remote::Error::Unreachable { .. }
                    | crate::backend::remote::Error::Lost { .. }
                    | crate::backend::remote::Error::Timeout { .. }
            );
            crate::backend::Error::new(
                crate::backend::Backend::Kernel,
                crate::backend::ErrorKind::from_retryable(retryable),
                e,
            )
        })?;
        match answer {
            KernelAnswer::Unsupported(reason) => Err(Error::Unsupported { reason }.into()),
            KernelAnswer::Refused(what) => Err(crate::backend::Error::new(
                crate::backend::Backend::Kernel,
                crate::backend::ErrorKind::Transient,
                Remote(format!("host {}: {what}", self.session.host())),
            )),
            answer => Ok(answer),
        }
    }

    /// codeb's loopback plumbing for `bridge`, from a remote read: its rules and the bridge's
    /// settings as the agent found them (a bridge it did not list does not exist there).
    fn loopback_of(table: &Ruleset, bridge: &str) -> ObservedLoopback {
        let settings = table
            .facts
            .as_ref()
            .and_then(|f| f.bridges.get(bridge).copied());
        loopback_in(table, bridge, settings)
    }

    async fn done(&self, op: KernelOp) -> BackendResult<()> {
        match self.call(op).await? {
            KernelAnswer::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn table(&self, isolation: bool) -> BackendResult<Ruleset> {
        match self.call(KernelOp::Read { isolation }).await? {
            KernelAnswer::Table(t) if t.facts.is_some() => Ok(*t),
            other => Err(unexpected(&other)),
        }
    }
}

/// [`locality`] on the facts a remote read carried: the gateway is "bindable" when it is one of
/// the host's addresses, the bridge "present" when it is one of the host's links.
fn local_on(table: &Ruleset, net: &NetworkInfo) -> Result<(), Error> {
    let facts = table.facts.clone().unwrap_or_default();
    let bind = (!facts.addresses.contains(&net.gateway)).then(|| {
        std::io::Error::other(format!(
            "{} is not an address of the host (its agent found {:?})",
            net.gateway, facts.addresses
        ))
    });
    locality(net, bind, facts.links.contains(&net.bridge))
}

/// A refusal the agent sent, as text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Remote(String);

fn unexpected(answer: &KernelAnswer) -> crate::backend::Error {
    crate::backend::Error::new(
        crate::backend::Backend::Kernel,
        crate::backend::ErrorKind::Permanent,
        Remote(format!("the agent answered {answer:?}, not what was asked")),
    )
}

impl Kernel for AgentKernel {
    type Table = Ruleset;

    async fn read(&self) -> BackendResult<Ruleset> {
        self.table(true).await
    }

    async fn read_for_switch(&self) -> BackendResult<Ruleset> {
        self.table(false).await
    }

    fn services(&self, table: &Ruleset, gateway: Ipv4Addr) -> BackendResult<ObservedServices> {
        Ok(parse(table, gateway))
    }

    /// The network is the host's when its gateway is one of the host's addresses, or its bridge
    /// is not created yet: [`locality`], on the facts the agent read there.
    fn local(&self, table: &Ruleset, net: &NetworkInfo) -> BackendResult<()> {
        Ok(local_on(table, net)?)
    }

    fn fallback(&self) -> Option<String> {
        self.fallback.clone()
    }

    fn isolated(&self, table: &Ruleset) -> bool {
        table.isolated
    }

    async fn isolate(&self) -> BackendResult<()> {
        self.done(KernelOp::Isolate).await
    }

    fn loopback(&self, table: &Ruleset, bridge: &str) -> ObservedLoopback {
        Self::loopback_of(table, bridge)
    }

    async fn set_loopback(&self, write: &LoopbackWrite) -> BackendResult<()> {
        self.done(KernelOp::SetLoopback(write.clone())).await
    }

    async fn loopback_off(&self, bridge: &str) -> BackendResult<()> {
        self.done(KernelOp::LoopbackOff {
            bridge: bridge.to_string(),
        })
        .await
    }

    async fn pin_mac(&self, bridge: &str) -> BackendResult<()> {
        self.done(KernelOp::PinMac {
            bridge: bridge.to_string(),
        })
        .await
    }

    async fn hook(&self, write: &HookWrite) -> BackendResult<()> {
        self.done(KernelOp::Hook(write.clone())).await
    }

    async fn set_service(&self, write: &ServiceWrite) -> BackendResult<()> {
        let started = std::time::Instant::now();
        self.done(KernelOp::SetService(write.clone())).await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            host = %self.session.host(),
            "service address set through the agent"
        );
        Ok(())
    }

    async fn open_connections(&self, target: SocketAddrV4) -> Option<usize> {
        match self.call(KernelOp::OpenConnections { target }).await {
            Ok(KernelAnswer::Connections(n)) => n,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::writes::ServiceTarget;

    fn service(label: &str, port: u16, dispatch: usize) -> KernelOp {
        KernelOp::SetService(ServiceWrite {
            gateway: Ipv4Addr::new(10, 89, 0, 1),
            port,
            target: Some(ServiceTarget {
                to: SocketAddrV4::new(Ipv4Addr::new(10, 89, 0, 5), 8080),
                label: label.into(),
            }),
            dispatch,
        })
    }

    #[test]
    fn only_codeb_shaped_ops_within_bounds_are_run() {
        assert_eq!(check(&service("shop/production", 4051, 1)), Ok(()));
        assert_eq!(check(&KernelOp::Read { isolation: true }), Ok(()));
        // A bridge that does not exist (yet, or any more) has nothing to pin: not refused.
        let pin = |b: &str| KernelOp::PinMac { bridge: b.into() };
        assert_eq!(check(&pin("cbnone0")), Ok(()));
        for (op, names) in [
            (service("shop/production", 0, 1), "port 0"),
            (service("shop/production", 4051, 65), "over 64"),
            (service("a\" ; flush ruleset", 4051, 1), "labelled"),
            (service(&"x".repeat(121), 4051, 1), "labelled"),
            (
                KernelOp::LoopbackOff {
                    bridge: "../../../etc".into(),
                },
                "not an interface name",
            ),
            (
                KernelOp::LoopbackOff {
                    bridge: "averyveryverylongname".into(),
                },
                "not an interface name",
            ),
            (
                KernelOp::Hook(HookWrite {
                    gateway: Ipv4Addr::BROADCAST,
                    chain: true,
                    hooks: 1,
                }),
                "not a host address",
            ),
            (
                KernelOp::SetLoopback(LoopbackWrite {
                    bridge: "lo".into(),
                    observed: Default::default(),
                }),
                "not a bridge",
            ),
            // Never the MAC of the host's loopback or uplink.
            (pin("lo"), "not a bridge"),
            (pin("../../etc"), "not an interface name"),
        ] {
            let refused = check(&op).unwrap_err();
            assert!(refused.contains(names), "{op:?}: {refused}");
            // Refused before anything runs, whatever the privilege.
            let answer = serve(&op, std::path::Path::new("/nonexistent"));
            assert!(
                matches!(&answer, KernelAnswer::Refused(t) if t.starts_with("not allowed by the agent")),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn an_op_is_a_closed_typed_value_and_raw_text_or_unknown_fields_do_not_read() {
        let op = service("shop/production/blue", 4051, 0);
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(serde_json::from_str::<KernelOp>(&text).unwrap(), op);
        for foreign in [
            r#"{"nft":"flush ruleset"}"#,
            r#"{"read":{"isolation":true,"table":"filter"}}"#,
            r#""flush""#,
        ] {
            assert!(
                serde_json::from_str::<KernelOp>(foreign).is_err(),
                "{foreign}"
            );
        }
    }

    #[test]
    fn the_network_check_and_the_loopback_plumbing_read_the_hosts_facts() {
        let net = NetworkInfo {
            gateway: Ipv4Addr::new(10, 89, 0, 1),
            bridge: "podman1".into(),
        };
        let mut facts = super::super::HostFacts {
            addresses: vec![Ipv4Addr::new(10, 89, 0, 1)],
            links: vec!["podman1".into()],
            ..Default::default()
        };
        facts.bridges.insert(
            "podman1".into(),
            super::super::BridgeFacts {
                route_localnet: true,
                mac_pinned: false,
            },
        );
        let table = Ruleset {
            facts: Some(facts.clone()),
            ..Default::default()
        };
        assert!(local_on(&table, &net).is_ok());
        let lb = AgentKernel::loopback_of(&table, "podman1");
        assert!(lb.route_localnet && !lb.mac_pinned && !lb.bridge_missing);
        // The gateway is not the host's, and its bridge exists: another namespace's Podman.
        facts.addresses.clear();
        let table = Ruleset {
            facts: Some(facts),
            ..Default::default()
        };
        assert!(local_on(&table, &net).is_err());
    }
}
