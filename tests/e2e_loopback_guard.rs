//! Issue #13's finding 5: the loopback guard fails closed. `route_localnet` on codeb's bridge lets
//! loopback-published slot ports reach containers; without a guard it would also let a container
//! reach the host's services on 127.0.0.1 (CVE-2020-8558: a packet for 127.0.0.1 sent to the
//! gateway's MAC, as `CAP_NET_RAW` allows).
//!
//! The attacker here is a veth pair of the test's own: one end a port of codeb's bridge, the other
//! a free end that frames are written to with an `AF_PACKET` socket, so that they arrive on the
//! bridge exactly as a container's would. A UDP listener on 127.0.0.1 must never receive them; a
//! UDP listener on the gateway's address receives a control packet sent right after each probe
//! (same path, in order), so that "not received" is checked without a sleep. Also with a `notrack`
//! rule (the test's own table) making the probes untracked, which the guard's old single rule let
//! through; and while `codeb watch` runs, after codeb's whole table is deleted (what `nft flush
//! ruleset` does to it; the whole ruleset is not flushed, as that would take Podman's rules of the
//! other tests along): the daemon turns `route_localnet` off at once and puts the guard back.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::kernel::{assert_kernel_mode, service_address};
use common::*;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sys_net(link: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{link}/{file}"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The interface that holds `address`.
fn interface_of(address: Ipv4Addr) -> String {
    run("ip", &["-o", "-4", "addr", "show"])
        .lines()
        .find(|l| l.contains(&format!(" {address}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no interface holds {address}"))
        .to_string()
}

fn route_localnet(bridge: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"))
        .unwrap()
        .trim()
        .to_string()
}

/// The test's veth pair and nft table, removed whatever happens.
struct Attacker {
    port: String,
    free: String,
    table: Option<String>,
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.port])
            .output();
        if let Some(t) = &self.table {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", t])
                .output();
        }
    }
}

/// The 16-bit ones' complement sum of an IPv4 header.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet from `src` to `dst` carrying `payload` (UDP checksum 0: none).
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend(src.ip().octets());
    p.extend(dst.ip().octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend(src.port().to_be_bytes());
    p.extend(dst.port().to_be_bytes());
    p.extend((udp_len as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(payload);
    p
}

/// Writes IPv4 packets out of interface `free` to the link address `mac` (`AF_PACKET`,
/// `SOCK_DGRAM`: the kernel adds the Ethernet header).
struct RawSender {
    fd: i32,
    ifindex: i32,
    mac: [u8; 6],
}

impl RawSender {
    fn new(free: &str, mac: [u8; 6]) -> RawSender {
        let ifindex: i32 = sys_net(free, "ifindex").parse().unwrap();
        // SAFETY: a plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM,
                i32::from((libc::ETH_P_IP as u16).to_be()),
            )
        };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        RawSender { fd, ifindex, mac }
    }

    fn send(&self, packet: &[u8]) {
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set are those sendto(2) reads for
        // AF_PACKET; `packet` outlives the call.
        let sent = unsafe {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            to.sll_ifindex = self.ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&self.mac);
            libc::sendto(
                self.fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            sent,
            packet.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// The listeners and the sender of one probe round.
struct Probe {
    sender: RawSender,
    from: SocketAddrV4,
    target: UdpSocket,
    control: UdpSocket,
    round: u32,
}

impl Probe {
    /// Sends a probe to 127.0.0.1 and then a control packet to the gateway; true when the probe
    /// reached the host's loopback listener. Panics when the control never arrives.
    fn loopback_reached(&mut self) -> bool {
        self.round += 1;
        let tag = format!("round {}", self.round);
        let target = match self.target.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        let control = match self.control.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        // The pair is sent again until the control arrives: a port just added to the bridge
        // forwards once its carrier is up, a moment after `ip link set up`.
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(5);
        'sent: loop {
            assert!(
                Instant::now() < deadline,
                "the control packet of {tag} never reached the gateway: the test's path is broken"
            );
            self.sender
                .send(&udp_packet(self.from, target, tag.as_bytes()));
            self.sender
                .send(&udp_packet(self.from, control, tag.as_bytes()));
            // Up to 100 ms (the read timeout) for it.
            while let Ok(n) = self.control.recv(&mut buf) {
                if buf[..n] == *tag.as_bytes() {
                    break 'sent;
                }
            }
        }
        // The probe went first on the same path: had it been let in, it is there now.
        let mut reached = false;
        while let Ok(n) = self.target.recv(&mut buf) {
            reached |= buf[..n] == *tag.as_bytes();
        }
        reached
    }
}

#[test]
fn finding_5_a_container_cannot_reach_the_hosts_loopback_even_untracked_or_after_a_flush() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("guard");
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_kernel_mode(&sb);
    let (gateway, _) = service_address(&sb.stack.caddy_admin, &name);
    let bridge = interface_of(gateway);
    assert_eq!(
        route_localnet(&bridge),
        "1",
        "slot ports are published on loopback"
    );

    let id = std::process::id() % 100_000;
    let mut attacker = Attacker {
        port: format!("cbgp{id}"),
        free: format!("cbgf{id}"),
        table: None,
    };
    run(
        "ip",
        &[
            "link",
            "add",
            &attacker.port,
            "type",
            "veth",
            "peer",
            "name",
            &attacker.free,
        ],
    );
    run(
        "ip",
        &["link", "set", "dev", &attacker.port, "master", &bridge],
    );
    run("ip", &["link", "set", "dev", &attacker.port, "up"]);
    run("ip", &["link", "set", "dev", &attacker.free, "up"]);
    let mac: Vec<u8> = sys_net(&bridge, "address")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let target = UdpSocket::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let control = UdpSocket::bind(SocketAddrV4::new(gateway, 0)).unwrap();
    control
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let [a, b, c, _] = gateway.octets();
    let mut probe = Probe {
        sender: RawSender::new(&attacker.free, mac.try_into().unwrap()),
        from: SocketAddrV4::new(Ipv4Addr::new(a, b, c, 253), 40000),
        target,
        control,
        round: 0,
    };

    // Tracked: the guard drops a flow codeb did not translate.
    assert!(
        !probe.loopback_reached(),
        "a tracked probe reached 127.0.0.1"
    );
    // Untracked (a raw-table notrack of the test's own): conntrack has no entry, which a
    // `ct status` match alone let through.
    let table = format!("cbguard{id}");
    attacker.table = Some(table.clone());
    let target_port = probe.target.local_addr().unwrap().port();
    let script = format!(
        "add table ip {table}\nadd chain ip {table} pre {{ type filter hook prerouting priority raw; }}\nadd rule ip {table} pre iifname \"{bridge}\" udp dport {target_port} notrack\n"
    );
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
    }
    assert!(nft.wait().unwrap().success());
    assert!(
        !probe.loopback_reached(),
        "an untracked probe reached 127.0.0.1"
    );
    // Without the guard's `ct state invalid,untracked` rule (the guard as it was: one `ct status`
    // rule), the same probe gets in; an apply puts the rule back.
    let handle = run("nft", &["-a", "list", "chain", "ip", "codeb", "input"])
        .lines()
        .find(|l| l.contains(&format!("\"codeb loopback guard untracked {bridge}\"")))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_string())
        .expect("the guard's untracked rule");
    run(
        "nft",
        &["delete", "rule", "ip", "codeb", "input", "handle", &handle],
    );
    assert!(
        probe.loopback_reached(),
        "the probe does not get in even without the rule: the test proves nothing"
    );
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !probe.loopback_reached(),
        "an untracked probe reached 127.0.0.1 after the apply"
    );

    // With codeb watch running, codeb's table goes: the daemon notices at once, turns
    // route_localnet off, and puts the guard back (route_localnet on after it).
    let watch = sb.watch(&dir, &["--resync", "1h"]);
    assert!(
        watch.wait_log(Duration::from_secs(20), "swept"),
        "{}",
        watch.log()
    );
    assert!(!probe.loopback_reached());
    let deleted = Instant::now();
    run("nft", &["delete", "table", "ip", "codeb"]);
    let restored = eventually(Duration::from_secs(5), || {
        let rules = Command::new("nft")
            .args(["list", "chain", "ip", "codeb", "input"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        rules.matches(&format!("\"{bridge}\"")).count() == 3 && route_localnet(&bridge) == "1"
    });
    let took = deleted.elapsed();
    assert!(
        restored,
        "the guard was not put back within 5 s\n{}",
        watch.log()
    );
    eprintln!(
        "guard restored {} ms after codeb's table was deleted",
        took.as_millis()
    );
    assert!(
        watch
            .log()
            .contains("route_localnet is off until it is back"),
        "the daemon did not fail closed first\n{}",
        watch.log()
    );
    assert!(
        !probe.loopback_reached(),
        "a probe reached 127.0.0.1 after the flush"
    );
    // The app is served again through its published slot port and its hostname.
    assert!(
        eventually(Duration::from_secs(5), || serves(
            &sb,
            &format!("{name}.codeb.test"),
            "v1"
        )),
        "{}",
        watch.log()
    );
    drop(watch);
    drop(probe);
    drop(attacker);
    cleanup(&sb, &name);
}
