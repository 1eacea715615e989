//! The netfilter adapter against this machine's kernel.
//!
//! Needs root (CI has it). The gateway is a loopback address unique to the run and the targets are
//! two listeners on 127.0.0.1, so no traffic leaves loopback and no other codeb's chains are
//! touched. Everything is removed at the end, also when an assertion fails (see [`Cleanup`]), with
//! the `nft` command (`deploy/stack.sh up` installs nftables), which also checks what codeb wrote
//! from the outside.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codeb::backend::netfilter::{self, Netfilter};
use codeb::backend::Kernel;
use codeb::model::observed::{ObservedService, ServiceRule};
use codeb::model::writes::{HookWrite, ServiceTarget, ServiceWrite};

/// A loopback gateway no other run uses: 127.99.x.y from the process id.
fn gateway() -> Ipv4Addr {
    gateway_in(99)
}

/// 127.`net`.x.y from the process id: two runs of this file at once (two worktrees' test runs on
/// one machine) never share a gateway, whose chains are named after it.
fn gateway_in(net: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, net, (pid >> 8) as u8, (pid as u8).max(1))
}

/// Runs `nft` with a script on stdin; panics when it fails.
fn nft(script: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft runs (deploy/stack.sh up installs nftables)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft -f - <<< {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft -a list ...`: with each rule's handle.
fn list(what: &str) -> String {
    let out = std::process::Command::new("nft")
        .args(["-a", "list"])
        .args(what.split(' '))
        .output()
        .expect("nft runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The handles of the base chain's rules that jump to `chain`, as `nft -a` prints them.
fn jumps_to(chain: &str) -> Vec<String> {
    list("chain ip codeb output")
        .lines()
        .filter(|l| l.contains(&format!("jump {chain} ")))
        .filter_map(|l| l.rsplit("# handle ").next().map(str::to_string))
        .collect()
}

/// Removes the run's chains and its rule in the base chain whatever happens, with `nft`.
struct Cleanup(Ipv4Addr);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let chain = netfilter::dispatch_chain(self.0);
        let mut lines: Vec<String> = jumps_to(&chain)
            .iter()
            .map(|h| format!("delete rule ip codeb output handle {h}"))
            .collect();
        let mut chains: Vec<String> = list("table ip codeb")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("chain ")?.split(' ').next())
            .filter(|n| *n == chain || n.starts_with(&format!("{chain}-")))
            .map(str::to_string)
            .collect();
        // Service chains (longer names) go before the dispatch chain that jumps to them.
        chains.sort_by_key(|c| std::cmp::Reverse(c.len()));
        lines.extend(chains.iter().map(|c| format!("flush chain ip codeb {c}")));
        lines.extend(chains.iter().map(|c| format!("delete chain ip codeb {c}")));
        if !lines.is_empty() {
            nft(&lines.join("\n"));
        }
    }
}

/// A listener that counts the connections it accepts.
fn listener() -> (SocketAddrV4, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = match l.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    (addr, n)
}

fn target(to: SocketAddrV4) -> ServiceTarget {
    ServiceTarget {
        to,
        label: "adapter/test".into(),
    }
}

#[tokio::test]
async fn a_service_address_is_created_switched_atomically_read_back_and_removed() {
    let gw = gateway();
    let _cleanup = Cleanup(gw);
    let nf = Netfilter::new();
    let port = 4999;
    let (a, hits_a) = listener();
    let (b, hits_b) = listener();

    let fresh = nf.observe(gw).await.expect("root and nf_tables");
    assert!(!fresh.chain && fresh.hooks == 0 && fresh.services.is_empty());
    nf.hook(&HookWrite {
        gateway: gw,
        chain: false,
        hooks: 0,
    })
    .await
    .unwrap();
    nf.set_service(&ServiceWrite {
        gateway: gw,
        port,
        target: Some(target(a)),
        dispatch: 0,
    })
    .await
    .unwrap();

    // What was written reads back exactly as written: a converged service gets no second write.
    let observed = nf.observe(gw).await.unwrap();
    assert!(observed.chain);
    assert_eq!(observed.hooks, 1);
    assert_eq!(
        observed.services.get(&port),
        Some(&ObservedService {
            dispatch: 1,
            chain: true,
            rules: vec![ServiceRule::Dnat(target(a))],
        })
    );

    // A client connecting in a loop while the address switches 200 times: every connection is
    // accepted by one target, never refused.
    let service = SocketAddrV4::new(gw, port);
    let stop = Arc::new(AtomicBool::new(false));
    // How many connections the client made so far: the switches go on until it made 200 (how
    // many it makes per switch depends on the machine's speed, not on codeb).
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = {
        let (stop, connected) = (stop.clone(), connected.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match TcpStream::connect_timeout(&service.into(), Duration::from_secs(2)) {
                    Ok(_) => {
                        ok += 1;
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    let mut writes = Vec::new();
    let mut i = 0;
    while i < 200 || (connected.load(Ordering::Relaxed) <= 200 && i < 20_000) {
        let to = if i % 2 == 0 { b } else { a };
        let t = Instant::now();
        nf.set_service(&ServiceWrite {
            gateway: gw,
            port,
            target: Some(target(to)),
            dispatch: 1,
        })
        .await
        .unwrap();
        writes.push(t.elapsed());
        // New connections reach the new target as soon as the write returns.
        let (before_a, before_b) = (
            hits_a.load(Ordering::Relaxed),
            hits_b.load(Ordering::Relaxed),
        );
        drop(TcpStream::connect(service).unwrap());
        let deadline = Instant::now() + Duration::from_secs(2);
        let hit = loop {
            let (na, nb) = (
                hits_a.load(Ordering::Relaxed),
                hits_b.load(Ordering::Relaxed),
            );
            // The client thread's connections land too: only the target's count may grow.
            if to == a && na > before_a || to == b && nb > before_b {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::yield_now();
        };
        assert!(hit, "switch {i}: the new target got no connection");
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    writes.sort();
    eprintln!(
        "{i} switches: {ok} connections, {} failed; write p50 {:?} max {:?}",
        failed.len(),
        writes[writes.len() / 2],
        writes[writes.len() - 1]
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 200);
    let after = nf.observe(gw).await.unwrap();
    assert_eq!(after.services[&port].rules.len(), 1, "never two targets");

    // Removal takes the dispatch rule and the chain.
    nf.set_service(&ServiceWrite {
        gateway: gw,
        port,
        target: None,
        dispatch: 1,
    })
    .await
    .unwrap();
    let gone = nf.observe(gw).await.unwrap();
    assert!(gone.services.is_empty(), "{gone:?}");
    assert!(TcpStream::connect_timeout(&service.into(), Duration::from_millis(500)).is_err());
}

#[tokio::test]
async fn a_failing_transaction_changes_nothing() {
    let gw = gateway_in(98);
    let _cleanup = Cleanup(gw);
    let nf = Netfilter::new();
    let (a, _) = listener();
    // No dispatch chain yet: the dispatch rule's line fails, and the service chain declared on
    // the line before it must not exist afterwards.
    let err = nf
        .set_service(&ServiceWrite {
            gateway: gw,
            port: 4998,
            target: Some(target(a)),
            dispatch: 0,
        })
        .await
        .unwrap_err();
    assert!(err.retryable(), "{err}");
    let observed = nf.observe(gw).await.unwrap();
    assert!(observed.services.is_empty(), "{observed:?}");
}

#[tokio::test]
async fn nft_reads_codebs_rules_as_written_and_drift_is_observed_and_repaired() {
    let gw = gateway_in(97);
    let _cleanup = Cleanup(gw);
    let nf = Netfilter::new();
    let (a, _) = listener();
    let (b, _) = listener();
    let port = 4997;
    nf.hook(&HookWrite {
        gateway: gw,
        chain: false,
        hooks: 0,
    })
    .await
    .unwrap();
    nf.set_service(&ServiceWrite {
        gateway: gw,
        port,
        target: Some(target(a)),
        dispatch: 0,
    })
    .await
    .unwrap();

    // The table as a person reads it with nft: the base chain before iptables' nat (-100), the
    // gateway's jump, the dispatch rule and the DNAT with its comment.
    let dispatch = netfilter::dispatch_chain(gw);
    let service = netfilter::service_chain(gw, port);
    let base = list("chain ip codeb output");
    assert!(
        base.contains("type nat hook output priority -101; policy accept;"),
        "{base}"
    );
    assert!(
        base.contains(&format!(
            "ip daddr {gw} meta l4proto tcp jump {dispatch} comment \"codeb service addresses\""
        )),
        "{base}"
    );
    let chains = list("table ip codeb");
    assert!(
        chains.contains(&format!("tcp dport {port} jump {service}")),
        "{chains}"
    );
    assert!(
        chains.contains(&format!("dnat to {a} comment \"codeb adapter/test\"")),
        "{chains}"
    );

    // A rule changed by hand (same DNAT, no comment, then a second rule) is not codeb's shape.
    nft(&format!(
        "flush chain ip codeb {service}\nadd rule ip codeb {service} meta l4proto tcp dnat to {b}\nadd rule ip codeb {service} meta l4proto tcp dnat to {a}"
    ));
    let drifted = nf.observe(gw).await.unwrap();
    let rules = &drifted.services[&port].rules;
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(
        rules.iter().all(|r| matches!(r, ServiceRule::Other(_))),
        "{rules:?}"
    );
    // A doubled dispatch rule and a lost jump are counted as such.
    nft(&format!(
        "add rule ip codeb {dispatch} meta l4proto tcp tcp dport {port} jump {service}"
    ));
    for h in jumps_to(&dispatch) {
        nft(&format!("delete rule ip codeb output handle {h}"));
    }
    let drifted = nf.observe(gw).await.unwrap();
    assert_eq!(
        (drifted.hooks, drifted.services[&port].dispatch),
        (0, 2),
        "{drifted:?}"
    );

    // The writes a plan makes of that observation repair it.
    nf.hook(&HookWrite {
        gateway: gw,
        chain: drifted.chain,
        hooks: drifted.hooks,
    })
    .await
    .unwrap();
    nf.set_service(&ServiceWrite {
        gateway: gw,
        port,
        target: Some(target(a)),
        dispatch: drifted.services[&port].dispatch,
    })
    .await
    .unwrap();
    let repaired = nf.observe(gw).await.unwrap();
    assert_eq!(repaired.hooks, 1);
    assert_eq!(
        repaired.services[&port],
        ObservedService {
            dispatch: 1,
            chain: true,
            rules: vec![ServiceRule::Dnat(target(a))],
        }
    );
}

/// Runs `ip` with `args`; panics when it fails.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the run's links whatever happens (a bridge's ports go with their veth peers).
struct Links(Vec<String>);

impl Drop for Links {
    fn drop(&mut self) {
        for link in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", link])
                .output();
        }
    }
}

fn sys_net(link: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{link}/{file}"))
        .unwrap()
        .trim()
        .to_string()
}

/// A Linux bridge takes the lowest MAC of its ports unless one was set on it, so each container
/// joining or leaving codeb's bridge changed the gateway's MAC under the others' ARP caches (their
/// connections to PostgreSQL on the gateway stalled 5 s). codeb's loopback plumbing pins it: after
/// it, a port with a lower MAC joins and the bridge keeps its address.
#[tokio::test]
async fn a_bridge_mac_is_pinned_so_that_a_port_with_a_lower_mac_does_not_change_it() {
    use codeb::model::observed::ObservedLoopback;
    use codeb::model::writes::LoopbackWrite;
    let id = std::process::id() % 100_000;
    let bridge = format!("cbpin{id}");
    let (a, a_peer, b, b_peer) = (
        format!("cbpa{id}"),
        format!("cbpA{id}"),
        format!("cbpb{id}"),
        format!("cbpB{id}"),
    );
    let _links = Links(vec![bridge.clone(), a.clone(), b.clone()]);
    ip(&["link", "add", "name", &bridge, "type", "bridge"]);
    ip(&["link", "add", &a, "type", "veth", "peer", "name", &a_peer]);
    ip(&["link", "set", "dev", &a, "address", "02:00:00:00:00:02"]);
    ip(&["link", "set", "dev", &a, "master", &bridge]);
    // Unpinned, the bridge follows its port: the problem.
    assert_eq!(sys_net(&bridge, "address"), "02:00:00:00:00:02");
    let nf = Netfilter::new();
    let table = nf.read().await.expect("root and nf_tables");
    let observed = nf.loopback(&table, &bridge);
    assert!(!observed.mac_pinned, "{observed:?}");
    // Only the pin is missing (the rules and route_localnet observed in place): only it is written.
    nf.set_loopback(&LoopbackWrite {
        bridge: bridge.clone(),
        observed: ObservedLoopback {
            masquerade: 1,
            guard: 1,
            route_localnet: true,
            mac_pinned: false,
            bridge_missing: false,
        },
    })
    .await
    .unwrap();
    assert_eq!(sys_net(&bridge, "addr_assign_type"), "3");
    assert!(nf.loopback(&nf.read().await.unwrap(), &bridge).mac_pinned);
    let pinned = sys_net(&bridge, "address");
    assert_eq!(pinned, "02:00:00:00:00:02", "pinned to the address it had");
    ip(&["link", "add", &b, "type", "veth", "peer", "name", &b_peer]);
    ip(&["link", "set", "dev", &b, "address", "02:00:00:00:00:01"]);
    ip(&["link", "set", "dev", &b, "master", &bridge]);
    assert_eq!(sys_net(&bridge, "address"), pinned);
    ip(&["link", "del", &a]);
    assert_eq!(sys_net(&bridge, "address"), pinned);
}

/// The tenant isolation (the table `bridge codeb`) reads as in place only when its chain holds
/// exactly codeb's two rules; a rule added or deleted by hand, or the table deleted, reads as
/// missing, and one write puts it back whole from any of them. The table is left in place: it is
/// machine-wide and drops only frames of codeb's own containers.
#[tokio::test]
async fn the_tenant_isolation_reads_as_in_place_only_when_whole_and_one_write_puts_it_back() {
    let nf = Netfilter::new();
    let isolated = || async { nf.isolated(&nf.read().await.unwrap()) };
    nf.isolate().await.unwrap();
    assert!(isolated().await);
    let printed = list("table bridge codeb");
    assert!(
        printed.contains("ether saddr 0a:cb:00:00:00:00/16 drop")
            && printed.contains("ether daddr 0a:cb:00:00:00:00/16 drop")
            && printed.contains("hook forward priority 0"),
        "{printed}"
    );
    // Writing it again changes nothing.
    nf.isolate().await.unwrap();
    assert!(isolated().await);
    let handles = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.contains("codeb tenant isolation"))
            .filter_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.to_string()))
            .collect()
    };
    assert_eq!(handles(&list("table bridge codeb")).len(), 2);

    // Each edit is made on the table as the previous write left it (a write renews the handles).
    let edits: [&dyn Fn() -> String; 3] = [
        &|| "add rule bridge codeb forward ether saddr 02:00:00:00:00:01 accept".to_string(),
        &|| {
            format!(
                "delete rule bridge codeb forward handle {}",
                handles(&list("table bridge codeb"))[1]
            )
        },
        &|| "delete table bridge codeb".to_string(),
    ];
    for edit in edits {
        let edit = edit();
        nft(&edit);
        assert!(!isolated().await, "after `{edit}`");
        nf.isolate().await.unwrap();
        assert!(isolated().await, "put back after `{edit}`");
        assert_eq!(handles(&list("table bridge codeb")).len(), 2);
    }

    // What the observation of every apply now also costs: the read with the two dumps of the
    // bridge table beside the two of `ip codeb`.
    let mut reads = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        nf.read().await.unwrap();
        reads.push(t.elapsed());
    }
    reads.sort();
    eprintln!(
        "read with the isolation: p50 {:?}, max {:?}",
        reads[25], reads[49]
    );
}
