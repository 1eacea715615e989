//! Finding 9 of issue 13 against the real Podman, Caddy and kernel: a container that comes back
//! on its own (its restart policy after the app crashed, or `podman restart` by hand, which gives
//! it a new address) gets its traffic back within two seconds while `codeb watch` runs, through
//! Caddy and on its slot's published port, without waiting for a resync.
//!
//! Two clients poll for the whole test, each request on a fresh connection: one through Caddy
//! with the project's Host header, one on `127.0.0.1:<slot port>`. Every request is recorded, and
//! each episode is judged from the moment Podman says the container started again
//! (`State.StartedAt`): the failures before it (the app is down: expected), the time to the first
//! success after it, and the failures after that (none allowed). The numbers are printed
//! (`cargo test --test e2e_restart -- --nocapture`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::kernel::{container_ip, inspect, nat_targets, service_address};
use common::*;

const START: Duration = Duration::from_secs(20);
/// How soon after the container runs again both clients must be served again.
const RECOVERY: Duration = Duration::from_secs(2);
/// A request that gets no answer within this is a failure: a DNAT rule to an address nobody
/// holds leaves the connection hanging (no ARP answer), and the poll must go on meanwhile.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Wall-clock nanoseconds since the epoch: Podman's `StartedAt` is on this clock.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One request: when it went out (ns since the epoch) and whether it was answered with `want`.
type Sample = (u128, bool);

/// A client polling `addr` with fresh connections until stopped (or dropped).
struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Poller {
    fn start(addr: &str, host: &str, want: &str) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, host, want, flag) = (
            addr.to_string(),
            host.to_string(),
            want.to_string(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            // Bounded whatever the test does: it never runs this long.
            let give_up = now_ns() + Duration::from_secs(300).as_nanos();
            while !flag.load(Ordering::Relaxed) && now_ns() < give_up {
                let at = now_ns();
                let (status, body) = http_get_within(&addr, &host, "/", REQUEST_TIMEOUT);
                samples.push((at, status == 200 && body == want));
                std::thread::sleep(POLL_EVERY);
            }
            samples
        });
        Poller {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("stopped once");
        thread.join().expect("poller thread")
    }
}

/// One way the container went down and came back.
struct Episode {
    what: &'static str,
    /// When the app was taken down, and when Podman started the container again (ns).
    down_at: u128,
    back_at: u128,
    ip_before: String,
    ip_after: String,
}

/// What one client saw of one episode.
#[derive(Debug)]
struct Seen {
    requests: usize,
    /// Failed requests sent before the container ran again.
    while_down: usize,
    /// Failed requests sent after it ran again, before the first success.
    after_back: usize,
    /// From the container running again to the first request that succeeded.
    recovered_in: Option<Duration>,
    /// Failed requests after that first success (must be none).
    after_recovery: usize,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recovered = self.recovered_in.map_or("never".into(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1e3)
        });
        write!(
            f,
            "{} requests; failed: {} while down, {} after it was back before the first success \
             ({recovered} after it was back), {} after that",
            self.requests, self.while_down, self.after_back, self.after_recovery
        )
    }
}

/// Judges `samples` between `episode.down_at` and `until`.
fn seen(samples: &[Sample], episode: &Episode, until: u128) -> Seen {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|(at, _)| *at >= episode.down_at && *at < until)
        .collect();
    let first_ok = window
        .iter()
        .find(|(at, ok)| *at >= episode.back_at && *ok)
        .map(|(at, _)| *at);
    let failed_in = |from: u128, to: u128| {
        window
            .iter()
            .filter(|(at, ok)| !ok && *at >= from && *at < to)
            .count()
    };
    Seen {
        requests: window.len(),
        while_down: failed_in(episode.down_at, episode.back_at),
        after_back: failed_in(episode.back_at, first_ok.unwrap_or(until)),
        recovered_in: first_ok.map(|at| Duration::from_nanos((at - episode.back_at) as u64)),
        after_recovery: first_ok.map_or(0, |ok| failed_in(ok, until)),
    }
}

/// `(StartedAt in ns, restart count, running)` of a container, as Podman reports it.
fn started(name: &str) -> (u128, u64, bool) {
    let line = inspect(
        name,
        "{{.State.StartedAt.UnixNano}} {{.RestartCount}} {{.State.Running}}",
    );
    let mut f = line.split_whitespace();
    (
        f.next().unwrap().parse().unwrap(),
        f.next().unwrap().parse().unwrap(),
        f.next() == Some("true"),
    )
}

/// Kills the app's process inside `container` (the init, PID 1, stays; the container exits
/// with the app) and waits until Podman's restart policy has started it again.
fn crash(container: &str) -> Episode {
    let ip_before = container_ip(container);
    let (_, count, _) = started(container);
    let down_at = now_ns();
    // The exec session may end with the container: its own exit status is not the point.
    let _ = podman(&["exec", container, "sh", "-c", "kill -KILL $(pidof httpd)"]);
    let mut back = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            let (at, n, running) = started(container);
            back = (n > count && running).then_some(at);
            back.is_some()
        }),
        "the restart policy did not start {container} again"
    );
    Episode {
        what: "app killed, restarted by the restart policy",
        down_at,
        back_at: back.unwrap(),
        ip_before,
        ip_after: container_ip(container),
    }
}

/// `podman restart` by hand: Podman 4.3 gives the container a new address.
fn restart(container: &str) -> Episode {
    let ip_before = container_ip(container);
    let down_at = now_ns();
    let out = podman(&["restart", "-t", "1", container]);
    assert!(out.status.success(), "{}", text(&out));
    Episode {
        what: "podman restart",
        down_at,
        back_at: started(container).0,
        ip_before,
        ip_after: container_ip(container),
    }
}

/// Waits until the DNAT rules of the service address and the slot port lead to `ip:8080`.
fn rules_follow(service: (std::net::Ipv4Addr, u16), slot_port: u16, ip: &str) -> bool {
    let want = vec![format!("{ip}:8080")];
    let slot = ("127.0.0.1".parse().unwrap(), slot_port);
    eventually(RECOVERY, || {
        nat_targets(service) == want && nat_targets(slot) == want
    })
}

/// Deletes the project through codeb when dropped, so that a failed assertion leaves nothing
/// behind either. Declare it before the daemon: the daemon is dropped (killed) first, and cannot
/// deploy the project again.
struct Cleanup<'a>(&'a Sandbox, &'a str);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        cleanup(self.0, self.1);
    }
}

/// The published port of `name`'s blue slot.
fn port_of(sb: &Sandbox, name: &str) -> u16 {
    let slots = sb.slots();
    slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == name && s["slot"] == "blue")
        .and_then(|s| s["port"].as_u64())
        .unwrap_or_else(|| panic!("no blue slot port: {slots}")) as u16
}

#[test]
fn finding_9_a_restarted_container_gets_its_traffic_back_within_two_seconds() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("restart");
    let host = format!("{name}.codeb.test");
    let _cleanup = Cleanup(&sb, &name);
    let dir = sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    // A resync far away: only the Podman events can repair the rules in time.
    let w = sb.watch(&dir, &["--resync", "10m"]);
    assert!(
        eventually(START, || serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );
    assert!(
        w.wait_log(START, "watching container events"),
        "{}",
        w.log()
    );
    let container = format!("{name}-production-blue");
    let service = service_address(&sb.stack.caddy_admin, &name);
    // Fails loudly on a host that switches through Caddy instead (`get hosts` through the daemon
    // does not say which).
    assert!(
        rules_follow(service, port_of(&sb, &name), &container_ip(&container)),
        "these tests need root and nf_tables: no kernel rules lead to {container}:\n{}",
        common::kernel::nat_rules()
    );
    let port = port_of(&sb, &name);
    let published = format!("127.0.0.1:{port}");
    assert_eq!(
        http_get_within(&published, &published, "/", REQUEST_TIMEOUT),
        (200, "v1".into())
    );

    let through_caddy = Poller::start(&sb.stack.http, &host, "v1");
    let on_slot_port = Poller::start(&published, &published, "v1");
    std::thread::sleep(Duration::from_millis(500));
    let mut episodes = Vec::new();
    for make in [crash as fn(&str) -> Episode, restart, crash, restart] {
        let e = make(&container);
        assert!(
            rules_follow(service, port, &e.ip_after),
            "{}: the rules do not lead to {} within {RECOVERY:?}:\n{}\n{}",
            e.what,
            e.ip_after,
            common::kernel::nat_rules(),
            w.log()
        );
        episodes.push(e);
        // Long enough to see that nothing fails once it is back.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let end = now_ns();
    let clients = [
        ("through Caddy", through_caddy.stop()),
        ("on the slot port", on_slot_port.stop()),
    ];

    let mut report = String::new();
    let mut verdicts = Vec::new();
    for (i, e) in episodes.iter().enumerate() {
        let until = episodes.get(i + 1).map_or(end, |n| n.down_at);
        report.push_str(&format!(
            "{}: {} -> {}, down for {:.0} ms\n",
            e.what,
            e.ip_before,
            e.ip_after,
            (e.back_at.saturating_sub(e.down_at)) as f64 / 1e6
        ));
        for (client, samples) in &clients {
            let s = seen(samples, e, until);
            report.push_str(&format!("  {client}: {s}\n"));
            verdicts.push((e.what, *client, s));
        }
    }
    let log = w.log();
    let events: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("container event") || l.contains("service address set"))
        .collect();
    eprintln!("{report}codeb watch saw:\n{}", events.join("\n"));
    for (what, client, s) in &verdicts {
        assert!(
            s.recovered_in.is_some_and(|d| d <= RECOVERY),
            "{what}, {client}: not served again within {RECOVERY:?}\n{report}\n{}",
            w.log()
        );
        assert_eq!(
            s.after_recovery, 0,
            "{what}, {client}: failures after it was back\n{report}"
        );
    }
    // `podman restart` moved the address (the finding); the rules followed (checked above).
    assert!(
        episodes
            .iter()
            .filter(|e| e.what == "podman restart")
            .all(|e| e.ip_before != e.ip_after),
        "{report}"
    );
    assert!(events.iter().any(|l| l.contains("action=start")), "{log}");
}
