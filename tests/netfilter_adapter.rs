//! The netfilter adapter against this machine's kernel.
//!
//! Needs root and iptables (CI has both; `deploy/stack.sh up` installs iptables). The gateway is a
//! loopback address unique to the run and the targets are two listeners on 127.0.0.1, so no
//! traffic leaves loopback and no other codeb's chains are touched. Everything is removed at the
//! end, also when an assertion fails (see [`Cleanup`]).

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codeb::backend::netfilter::{self, Netfilter};
use codeb::backend::{
    HookWrite, Kernel, ObservedService, ServiceRule, ServiceTarget, ServiceWrite,
};

/// A loopback gateway no other run uses: 127.99.x.y from the process id.
fn gateway() -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, 99, (pid >> 8) as u8, (pid as u8).max(1))
}

/// Removes the run's chains whatever happens.
struct Cleanup(Ipv4Addr);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let chain = netfilter::dispatch_chain(self.0);
        let save = std::process::Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut lines = Vec::new();
        let mut chains = Vec::new();
        for l in save.lines() {
            if l.starts_with("-A OUTPUT ") && l.ends_with(&format!("-j {chain}")) {
                lines.push(format!("-D {}", &l[3..]));
            }
            if let Some(decl) = l.strip_prefix(':') {
                let name = decl.split(' ').next().unwrap_or_default();
                if name == chain || name.starts_with(&format!("{chain}-")) {
                    chains.push(name.to_string());
                }
            }
        }
        chains.sort();
        lines.extend(chains.iter().map(|c| format!(":{c} - [0:0]")));
        lines.extend(chains.iter().rev().map(|c| format!("-X {c}")));
        let script = format!("*nat\n{}\nCOMMIT\n", lines.join("\n"));
        let mut child = std::process::Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("iptables-restore runs");
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
        let _ = child.wait();
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

    let fresh = nf.observe(gw).await.expect("root and iptables");
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
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match TcpStream::connect_timeout(&service.into(), Duration::from_secs(2)) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    let mut writes = Vec::new();
    for i in 0..200 {
        let to = if i % 2 == 0 { b } else { a };
        // Half of the writes go through an iptables-restore started ahead (as a promote does).
        if i % 2 == 1 {
            nf.prepare();
        }
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
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    writes.sort();
    eprintln!(
        "200 switches: {ok} connections, {} failed; write p50 {:?} max {:?}",
        failed.len(),
        writes[100],
        writes[199]
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
    let gw = Ipv4Addr::new(127, 98, (std::process::id() >> 8) as u8, 1);
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
    assert!(err.is_retryable(), "{err}");
    let observed = nf.observe(gw).await.unwrap();
    assert!(observed.services.is_empty(), "{observed:?}");
}

#[tokio::test]
async fn a_prepared_restore_that_is_never_given_a_script_changes_nothing() {
    let gw = Ipv4Addr::new(127, 97, (std::process::id() >> 8) as u8, 1);
    let _cleanup = Cleanup(gw);
    let nf = Netfilter::new();
    nf.hook(&HookWrite {
        gateway: gw,
        chain: false,
        hooks: 0,
    })
    .await
    .unwrap();
    let before = nf.observe(gw).await.unwrap();
    assert!(before.chain && before.hooks == 1, "{before:?}");
    // Prepared, then dropped before any write: the waiting iptables-restore is killed unread.
    let prepared = Netfilter::new();
    prepared.prepare();
    drop(prepared);
    // Prepared twice, used once: the second prepare keeps the first process; the write after
    // the used one starts its own.
    let nf2 = Netfilter::new();
    nf2.prepare();
    nf2.prepare();
    let (a, _) = listener();
    for _ in 0..2 {
        nf2.set_service(&ServiceWrite {
            gateway: gw,
            port: 4997,
            target: Some(target(a)),
            dispatch: nf
                .observe(gw)
                .await
                .unwrap()
                .services
                .get(&4997)
                .map_or(0, |s| s.dispatch),
        })
        .await
        .unwrap();
    }
    let after = nf.observe(gw).await.unwrap();
    assert_eq!(
        after.services[&4997].rules,
        vec![ServiceRule::Dnat(target(a))]
    );
    assert_eq!((after.chain, after.hooks), (before.chain, before.hooks));
}
