//! The netfilter adapter: codeb's NAT rules in this machine's kernel, read with `iptables-save`
//! and changed with `iptables-restore --noflush`, one atomic transaction per change.
//!
//! Responsible for naming codeb's chains, rendering each change as one restore script, and reading
//! codeb's chains back from `iptables-save` into [`ObservedServices`]. It decides nothing (which
//! address leads where is the planner's business) and never retries.
//!
//! # What codeb owns (nat table)
//! For a gateway `G` (the address of codeb's Podman network on this host, `10.89.144.1`, written
//! in hex: `0a599001`):
//! - in `OUTPUT`, one jump, inserted first: `-d G/32 -p tcp -m comment --comment "codeb service
//!   addresses" -j CODEB-0a599001`;
//! - the dispatch chain `CODEB-0a599001`: per service port `P`, `-p tcp -m tcp --dport P -j
//!   CODEB-0a599001-P`;
//! - a service chain `CODEB-0a599001-P` per environment, holding exactly one rule: `-p tcp -m
//!   comment --comment "codeb project/env" -j DNAT --to-destination IP:PORT` (the active slot's
//!   container).
//!
//! No other chain or rule is ever written, flushed or deleted: every line this module sends names
//! one of the chains above, and the only rule outside them is the jump. The jump and the dispatch
//! chain stay when the last environment goes (another state directory may share the gateway);
//! `deploy/stack.sh down --purge` removes them with the stack's network.
//!
//! # Why these choices (measured on Debian 12, iptables 1.8.9 nf_tables)
//! - A switch replaces a service chain whole: declaring a chain in a `--noflush` restore flushes
//!   it, and the restore commits as one transaction. A connection opened at any instant reaches
//!   the old target or the new one, never none and never both; one that is already open keeps its
//!   target (conntrack) until it closes. A restore took 3.4 ms on an idle machine and 12-15 ms
//!   (p50) with both CPUs saturated by a load generator; a failing line leaves everything as it
//!   was.
//! - The service address is the network's gateway, an address of this host on codeb's bridge:
//!   Caddy's connection to it leaves with that address as its source, so after the DNAT the
//!   container answers straight back. A loopback service address would need `route_localnet` and
//!   a MASQUERADE rule, and would meet netavark's hostport rules for `127.0.0.1`.
//! - Chains named after the gateway keep codeb installations on one machine apart: each Podman
//!   network has its own bridge and address. State directories that share one Podman host share
//!   the gateway, and their environments have distinct base ports (the allocation sees every
//!   codeb container's published port).
//! - Only locally generated connections are translated (`OUTPUT`): the data path is Caddy on this
//!   host, and nothing arriving from outside can reach a service address by accident.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::Child;

use super::{
    HookWrite, Kernel, ObservedService, ObservedServices, ServiceRule, ServiceTarget, ServiceWrite,
};

/// Prefix of every chain codeb owns.
pub const CHAIN_PREFIX: &str = "CODEB-";
/// The comment on the jump from nat `OUTPUT`, which also marks it as codeb's.
const HOOK_COMMENT: &str = "codeb service addresses";
/// The comment prefix of a service rule (followed by `project/env`).
const RULE_COMMENT_PREFIX: &str = "codeb ";
/// Both commands answer in a few milliseconds; ten seconds is a wedged kernel or lock holder.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds `iptables-restore` waits for the xtables lock while another writer (netavark starting
/// a container) holds it, instead of failing at once.
const LOCK_WAIT_SECS: &str = "5";
/// Where conntrack lists the connections of this network namespace.
const CONNTRACK: &str = "/proc/net/nf_conntrack";

/// Errors of the netfilter adapter.
///
/// [`Error::Unsupported`] is not worth a retry: codeb switches through Caddy's admin API on such a
/// host. [`Error::Command`] and [`Error::Timeout`] are (a lock held too long, a chain created by a
/// concurrent codeb between observe and write): a fresh observe and plan will succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rules of this host cannot be managed from this process.
    #[error("the kernel's NAT rules cannot be managed here: {reason}")]
    Unsupported { reason: String },
    /// iptables ran and refused.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// iptables did not finish in time (it was killed).
    #[error("{command} did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
}

impl Error {
    /// True when the same call may succeed later without any change to codeb's inputs.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::Unsupported { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// This machine's netfilter, or the reason it cannot be managed.
#[derive(Debug)]
pub struct Netfilter {
    tools: std::result::Result<Tools, String>,
    /// The host's containers run on this machine, so its conntrack tells their open connections.
    local: bool,
    /// An `iptables-restore` being started by [`Kernel::prepare`] (on a blocking thread: starting
    /// a process blocks the thread that does it until the new program is loaded), then waiting
    /// for its script.
    warm: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<Child>>>>,
}

#[derive(Debug)]
struct Tools {
    save: PathBuf,
    restore: PathBuf,
}

impl Netfilter {
    /// Finds `iptables-save` and `iptables-restore` on `PATH` or in the sbin directories (which a
    /// non-login shell may lack). Runs nothing; missing tools make every call
    /// [`Error::Unsupported`].
    pub fn new() -> Netfilter {
        let tools = match (find_tool("iptables-save"), find_tool("iptables-restore")) {
            (Some(save), Some(restore)) => Ok(Tools { save, restore }),
            _ => Err("iptables-save and iptables-restore are not installed".to_string()),
        };
        Netfilter {
            tools,
            local: true,
            warm: Default::default(),
        }
    }

    /// A netfilter that codeb must not manage (a remote host, or switching through Caddy was
    /// asked for); every call answers [`Error::Unsupported`] with `reason`. `local`: the host's
    /// containers still run on this machine, so draining may count their connections here.
    pub fn unsupported(reason: impl Into<String>, local: bool) -> Netfilter {
        Netfilter {
            tools: Err(reason.into()),
            local,
            warm: Default::default(),
        }
    }

    fn tools(&self) -> Result<&Tools> {
        self.tools.as_ref().map_err(|reason| Error::Unsupported {
            reason: reason.clone(),
        })
    }

    /// Runs one restore script as one transaction, in the `iptables-restore` that
    /// [`Kernel::prepare`] started when there is one.
    async fn restore(&self, script: &str) -> Result<()> {
        let tools = self.tools()?;
        let started = Instant::now();
        let warm = self
            .warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let warm = match warm {
            Some(started) => started.await.ok().and_then(Result::ok),
            None => None,
        };
        let child = match warm {
            Some(child) => child,
            None => spawn(&tools.restore, RESTORE_ARGS, true)?,
        };
        finish(child, &tools.restore, RESTORE_ARGS, Some(script)).await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            script,
            "iptables-restore"
        );
        Ok(())
    }
}

impl Default for Netfilter {
    fn default() -> Self {
        Self::new()
    }
}

/// `observe` is one `iptables-save -t nat`, parsed for this gateway's chains only. It fails with
/// [`Error::Unsupported`] without iptables, without privilege, or when `gateway` is not an address
/// of this machine (a rootless or remote Podman: its containers are not reachable from here, so
/// neither are service addresses).
impl Kernel for Netfilter {
    type Table = String;

    /// Starts `iptables-restore` now, so that the write that follows does not wait for a process
    /// to start and load its libraries (a few milliseconds of a switch). Dropped unused, it is
    /// killed before it read anything, and changed nothing.
    fn prepare(&self) {
        let Ok(tools) = self.tools() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut warm = self
            .warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if warm.is_none() {
            let restore = tools.restore.clone();
            *warm = Some(runtime.spawn_blocking(move || spawn(&restore, RESTORE_ARGS, true)));
        }
    }

    /// One `iptables-save -t nat`.
    async fn read(&self) -> Result<String> {
        let tools = self.tools()?;
        run(&tools.save, &["-t", "nat"], None).await
    }

    fn services(&self, table: Result<String>, gateway: Ipv4Addr) -> Result<ObservedServices> {
        is_local(gateway)?;
        Ok(parse(&table?, gateway))
    }

    async fn hook(&self, write: &HookWrite) -> Result<()> {
        match render_hook(write) {
            Some(script) => self.restore(&script).await,
            None => Ok(()),
        }
    }

    async fn set_service(&self, write: &ServiceWrite) -> Result<()> {
        self.restore(&render_service(write)).await
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

/// The first `name` on `PATH`, then in the sbin directories.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A service address must be an address of this machine: binding a socket to it (no port, no
/// listen) tells, without any traffic.
fn is_local(gateway: Ipv4Addr) -> Result<()> {
    std::net::UdpSocket::bind(SocketAddrV4::new(gateway, 0))
        .map(drop)
        .map_err(|e| Error::Unsupported {
            reason: format!(
                "the network's gateway {gateway} is not an address of this machine ({e}): a \
                 rootless or remote Podman"
            ),
        })
}

/// `iptables-restore`'s arguments: wait for the xtables lock (legacy back end), keep every other
/// chain and rule.
const RESTORE_ARGS: &[&str] = &["-w", LOCK_WAIT_SECS, "--noflush"];

/// Runs a tool with an optional stdin; returns its stdout.
async fn run(tool: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let child = spawn(tool, args, stdin.is_some())?;
    finish(child, tool, args, stdin).await
}

fn command_line(tool: &Path, args: &[&str]) -> String {
    format!("{} {}", tool.display(), args.join(" "))
}

/// Starts a tool, its stdin piped when it will be given one; killed if dropped unfinished.
fn spawn(tool: &Path, args: &[&str], stdin: bool) -> Result<Child> {
    tokio::process::Command::new(tool)
        .args(args)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Unsupported {
            reason: format!("cannot run {}: {e}", command_line(tool, args)),
        })
}

/// Gives a started tool its stdin, waits for it, and returns its stdout.
async fn finish(
    mut child: Child,
    tool: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let command = command_line(tool, args);
    if let Some(mut pipe) = child.stdin.take() {
        // A broken pipe means the tool exited early; its status and stderr say why.
        let _ = pipe.write_all(stdin.unwrap_or_default().as_bytes()).await;
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| Error::Timeout {
            command: command.clone(),
            timeout: COMMAND_TIMEOUT,
        })?
        .map_err(|e| Error::Command {
            command: command.clone(),
            status: "not run".into(),
            stderr: e.to_string(),
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !output.status.success() {
        return Err(if is_privilege_error(&stderr) {
            Error::Unsupported {
                reason: format!("{command} needs root: {stderr}"),
            }
        } else {
            Error::Command {
                command,
                status: output.status.to_string(),
                stderr,
            }
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// iptables' words for a missing privilege (nf_tables and legacy back ends).
fn is_privilege_error(stderr: &str) -> bool {
    [
        "Permission denied",
        "must be root",
        "Operation not permitted",
    ]
    .iter()
    .any(|w| stderr.contains(w))
}

/// `CODEB-0a599001` for 10.89.144.1.
pub fn dispatch_chain(gateway: Ipv4Addr) -> String {
    format!("{CHAIN_PREFIX}{:08x}", u32::from(gateway))
}

/// `CODEB-0a599001-4051`: at most 23 characters, within iptables' 28.
pub fn service_chain(gateway: Ipv4Addr, port: u16) -> String {
    format!("{}-{port}", dispatch_chain(gateway))
}

fn hook_rule(gateway: Ipv4Addr) -> String {
    format!(
        "-d {gateway}/32 -p tcp -m comment --comment \"{HOOK_COMMENT}\" -j {}",
        dispatch_chain(gateway)
    )
}

fn dispatch_rule(gateway: Ipv4Addr, port: u16) -> String {
    format!(
        "-p tcp -m tcp --dport {port} -j {}",
        service_chain(gateway, port)
    )
}

fn dnat_rule(target: &ServiceTarget) -> String {
    format!(
        "-p tcp -m comment --comment \"{RULE_COMMENT_PREFIX}{}\" -j DNAT --to-destination {}",
        target.label, target.to
    )
}

/// The restore script of a [`HookWrite`]; `None` when nothing is missing.
///
/// The jump goes first in `OUTPUT`: netavark's own jump there sends every local destination
/// through its hostport rules, and a port published on all addresses would otherwise catch a
/// service address too. The dispatch chain is created with `-N`, which fails (changing nothing)
/// if another codeb sharing the gateway created it meanwhile, where declaring it would flush that
/// codeb's dispatch rules.
pub fn render_hook(write: &HookWrite) -> Option<String> {
    let mut lines = Vec::new();
    if !write.chain {
        lines.push(format!("-N {}", dispatch_chain(write.gateway)));
    }
    if write.hooks == 0 {
        lines.push(format!("-I OUTPUT 1 {}", hook_rule(write.gateway)));
    }
    for _ in 1..write.hooks {
        lines.push(format!("-D OUTPUT {}", hook_rule(write.gateway)));
    }
    (!lines.is_empty()).then(|| script(lines))
}

/// The restore script of a [`ServiceWrite`].
///
/// With a target: the service chain is declared (created, or flushed if it exists) and given its
/// one rule, and the dispatch rule is brought to exactly one, all in one transaction. Without: the
/// dispatch rules go, then the chain (flushed first: a chain with rules cannot be deleted).
pub fn render_service(write: &ServiceWrite) -> String {
    let (gw, port) = (write.gateway, write.port);
    let dispatch = dispatch_chain(gw);
    let chain = service_chain(gw, port);
    let mut lines = Vec::new();
    match &write.target {
        Some(target) => {
            lines.push(format!(":{chain} - [0:0]"));
            lines.push(format!("-A {chain} {}", dnat_rule(target)));
            if write.dispatch == 0 {
                lines.push(format!("-A {dispatch} {}", dispatch_rule(gw, port)));
            }
            for _ in 1..write.dispatch {
                lines.push(format!("-D {dispatch} {}", dispatch_rule(gw, port)));
            }
        }
        None => {
            for _ in 0..write.dispatch {
                lines.push(format!("-D {dispatch} {}", dispatch_rule(gw, port)));
            }
            lines.push(format!(":{chain} - [0:0]"));
            lines.push(format!("-X {chain}"));
        }
    }
    script(lines)
}

fn script(lines: Vec<String>) -> String {
    let mut s = String::from("*nat\n");
    for l in lines {
        s.push_str(&l);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// codeb's rules for `gateway` in the output of `iptables-save -t nat`. Chains and rules of other
/// gateways, of netavark and of anyone else are skipped.
pub fn parse(save: &str, gateway: Ipv4Addr) -> ObservedServices {
    let dispatch = dispatch_chain(gateway);
    let hook = hook_rule(gateway);
    let mut out = ObservedServices::default();
    for line in save.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name == dispatch {
                out.chain = true;
            } else if let Some(port) = service_port(name, &dispatch) {
                out.services.entry(port).or_default().chain = true;
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let Some((chain, rest)) = rule.split_once(' ') else {
                continue;
            };
            if chain == "OUTPUT" {
                out.hooks += usize::from(rest == hook);
            } else if chain == dispatch {
                if let Some(port) = dispatch_port(rest, gateway) {
                    out.services.entry(port).or_default().dispatch += 1;
                }
            } else if let Some(port) = service_port(chain, &dispatch) {
                let service: &mut ObservedService = out.services.entry(port).or_default();
                service.rules.push(service_rule(rest));
            }
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
fn dispatch_port(rule: &str, gateway: Ipv4Addr) -> Option<u16> {
    let rest = rule.strip_prefix("-p tcp -m tcp --dport ")?;
    let (port, _) = rest.split_once(' ')?;
    let port: u16 = port.parse().ok()?;
    (rule == dispatch_rule(gateway, port)).then_some(port)
}

/// A service chain's rule: codeb's DNAT shape, or anything else as printed.
fn service_rule(rule: &str) -> ServiceRule {
    let parsed = (|| {
        let rest = rule.strip_prefix("-p tcp -m comment --comment \"")?;
        let (comment, rest) = rest.split_once('"')?;
        let label = comment.strip_prefix(RULE_COMMENT_PREFIX)?;
        let to: SocketAddrV4 = rest
            .strip_prefix(" -j DNAT --to-destination ")?
            .parse()
            .ok()?;
        let target = ServiceTarget {
            to,
            label: label.to_string(),
        };
        (dnat_rule(&target) == rule).then_some(target)
    })();
    match parsed {
        Some(t) => ServiceRule::Dnat(t),
        None => ServiceRule::Other(rule.to_string()),
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

    /// `iptables-save -t nat` as printed here with netavark's rules, another gateway's codeb
    /// chains, and two services of ours (one changed by hand).
    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Thu Nov 26 18:41:00 2026
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CODEB-0a599001 - [0:0]
:CODEB-0a599001-4051 - [0:0]
:CODEB-0a599001-4060 - [0:0]
:CODEB-0a593801 - [0:0]
:CODEB-0a593801-4051 - [0:0]
:NETAVARK-HOSTPORT-DNAT - [0:0]
-A OUTPUT -d 10.89.144.1/32 -p tcp -m comment --comment "codeb service addresses" -j CODEB-0a599001
-A OUTPUT -d 10.89.56.1/32 -p tcp -m comment --comment "codeb service addresses" -j CODEB-0a593801
-A OUTPUT -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT
-A CODEB-0a599001 -p tcp -m tcp --dport 4051 -j CODEB-0a599001-4051
-A CODEB-0a599001 -p tcp -m tcp --dport 4060 -j CODEB-0a599001-4060
-A CODEB-0a599001 -p tcp -m tcp --dport 4060 -j CODEB-0a599001-4060
-A CODEB-0a599001-4051 -p tcp -m comment --comment "codeb shop/production" -j DNAT --to-destination 10.89.144.2:8080
-A CODEB-0a599001-4060 -p tcp -j DNAT --to-destination 10.89.144.9:8080
-A CODEB-0a593801 -p tcp -m tcp --dport 4051 -j CODEB-0a593801-4051
-A CODEB-0a593801-4051 -p tcp -m comment --comment "codeb other/production" -j DNAT --to-destination 10.89.56.7:8080
-A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 4051 -m comment --comment "dnat name: codeb-main id: 72ae" -j NETAVARK-DN-85DE7B8076B99
COMMIT
"#;

    #[test]
    fn chain_names_carry_the_gateway_and_the_port_and_fit_iptables_limit() {
        assert_eq!(dispatch_chain(GW), "CODEB-0a599001");
        assert_eq!(service_chain(GW, 4051), "CODEB-0a599001-4051");
        let longest = service_chain(Ipv4Addr::new(255, 255, 255, 255), u16::MAX);
        assert!(longest.len() <= 28, "{longest}");
    }

    #[test]
    fn only_this_gateways_chains_are_read() {
        let observed = parse(SAVE, GW);
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
        let observed = parse(SAVE, GW);
        let s = &observed.services[&4060];
        assert_eq!(s.dispatch, 2);
        assert_eq!(
            s.rules,
            vec![ServiceRule::Other(
                "-p tcp -j DNAT --to-destination 10.89.144.9:8080".into()
            )]
        );
    }

    #[test]
    fn nothing_of_a_gateway_without_rules_is_observed() {
        let observed = parse(SAVE, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(observed, ObservedServices::default());
    }

    #[test]
    fn a_switch_replaces_the_service_chain_in_one_transaction() {
        let script = render_service(&ServiceWrite {
            gateway: GW,
            port: 4051,
            target: Some(target(3, "shop/production")),
            dispatch: 1,
        });
        assert_eq!(
            script,
            "*nat\n\
             :CODEB-0a599001-4051 - [0:0]\n\
             -A CODEB-0a599001-4051 -p tcp -m comment --comment \"codeb shop/production\" -j DNAT --to-destination 10.89.144.3:8080\n\
             COMMIT\n"
        );
    }

    #[test]
    fn a_new_service_gets_its_dispatch_rule_and_duplicates_are_deleted() {
        let new = render_service(&ServiceWrite {
            gateway: GW,
            port: 4051,
            target: Some(target(3, "a/b")),
            dispatch: 0,
        });
        assert!(
            new.contains("\n-A CODEB-0a599001 -p tcp -m tcp --dport 4051 -j CODEB-0a599001-4051\n")
        );
        let dup = render_service(&ServiceWrite {
            gateway: GW,
            port: 4051,
            target: Some(target(3, "a/b")),
            dispatch: 3,
        });
        assert_eq!(dup.matches("\n-D CODEB-0a599001 ").count(), 2);
    }

    #[test]
    fn removing_a_service_deletes_its_dispatch_rules_then_its_chain() {
        let script = render_service(&ServiceWrite {
            gateway: GW,
            port: 4051,
            target: None,
            dispatch: 1,
        });
        assert_eq!(
            script,
            "*nat\n\
             -D CODEB-0a599001 -p tcp -m tcp --dport 4051 -j CODEB-0a599001-4051\n\
             :CODEB-0a599001-4051 - [0:0]\n\
             -X CODEB-0a599001-4051\n\
             COMMIT\n"
        );
    }

    #[test]
    fn the_hook_is_written_only_where_missing_and_goes_first_in_output() {
        let none = HookWrite {
            gateway: GW,
            chain: true,
            hooks: 1,
        };
        assert_eq!(render_hook(&none), None);
        let fresh = render_hook(&HookWrite {
            gateway: GW,
            chain: false,
            hooks: 0,
        })
        .unwrap();
        assert_eq!(
            fresh,
            "*nat\n\
             -N CODEB-0a599001\n\
             -I OUTPUT 1 -d 10.89.144.1/32 -p tcp -m comment --comment \"codeb service addresses\" -j CODEB-0a599001\n\
             COMMIT\n"
        );
    }

    #[test]
    fn every_written_line_names_a_codeb_chain_or_is_the_hook() {
        let scripts = [
            render_service(&ServiceWrite {
                gateway: GW,
                port: 1,
                target: Some(target(3, "a/b")),
                dispatch: 2,
            }),
            render_service(&ServiceWrite {
                gateway: GW,
                port: 1,
                target: None,
                dispatch: 2,
            }),
            render_hook(&HookWrite {
                gateway: GW,
                chain: false,
                hooks: 3,
            })
            .unwrap(),
        ];
        for line in scripts.iter().flat_map(|s| s.lines()) {
            let ok = matches!(line, "*nat" | "COMMIT")
                || line
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|c| c.starts_with(CHAIN_PREFIX))
                || line.starts_with(":CODEB-")
                || line.ends_with(&format!("-j {}", dispatch_chain(GW)));
            assert!(ok, "{line}");
        }
    }

    #[test]
    fn what_is_written_reads_back_as_the_same_target() {
        let t = target(7, "shop/production");
        let rule = dnat_rule(&t);
        assert_eq!(service_rule(&rule), ServiceRule::Dnat(t));
        assert_eq!(dispatch_port(&dispatch_rule(GW, 4051), GW), Some(4051));
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
    fn a_missing_privilege_is_unsupported_not_a_failure() {
        assert!(is_privilege_error(
            "iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"
        ));
        assert!(!Error::Unsupported { reason: "x".into() }.is_retryable());
    }

    #[tokio::test]
    async fn an_unsupported_netfilter_observes_nothing_and_writes_nothing() {
        let n = Netfilter::unsupported("Podman is on another machine", false);
        assert!(matches!(
            n.observe(GW).await,
            Err(Error::Unsupported { .. })
        ));
        assert_eq!(n.open_connections(SocketAddrV4::new(GW, 1)).await, None);
    }

    #[test]
    fn a_gateway_that_is_not_an_address_of_this_machine_is_unsupported() {
        // TEST-NET-1 (RFC 5737) is never assigned to a machine.
        assert!(matches!(
            is_local(Ipv4Addr::new(192, 0, 2, 1)),
            Err(Error::Unsupported { .. })
        ));
        assert!(is_local(Ipv4Addr::LOCALHOST).is_ok());
    }
}
