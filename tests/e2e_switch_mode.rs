//! Finding 1 of the issue, the switch mode: it is a property of the host (a local rootful Podman,
//! a local Caddy, privilege and nf_tables), stable from the first apply, and each mode observes and
//! removes what the other left: a kernel-mode run's slot port rule in Caddy mode, a Caddy-mode
//! run's Podman-published port in kernel mode.
//!
//! The shared stack's network `codeb-main` is never removed here (other tests run on it): the
//! fresh-host decision is shown on a network of this test's own, created and removed by it.

mod common;

use common::kernel::{assert_kernel_mode, container_ip, inspect, nat_rules, nat_targets};
use common::*;

/// The operator's switch to Caddy's admin API (see `docs/kernel-switch.md`).
const CADDY: &[(&str, &str)] = &[("CODEB_SWITCH", "caddy-admin")];

fn switch_of(sb: &Sandbox, vars: &[(&str, &str)]) -> serde_json::Value {
    let out = sb.codeb_env(&["get", "hosts", "-o", "json"], vars);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    hosts[0]["switch"].clone()
}

/// The slot port rules codeb's table holds for `name`'s production environment.
fn slot_rules(name: &str) -> Vec<String> {
    nat_rules()
        .lines()
        .filter(|l| l.contains(&format!("codeb {name}/production/")))
        .map(|l| l.trim().to_string())
        .collect()
}

/// The host ports Podman publishes for a container (empty when none: an exposed port that is not
/// published shows in `PortBindings` with no binding).
fn podman_ports(container: &str) -> String {
    inspect(
        container,
        "{{range $p, $b := .HostConfig.PortBindings}}{{range $b}}{{.HostIP}}:{{.HostPort}} {{end}}{{end}}",
    )
}

/// Deletes the project through codeb when the test ends, also when an assertion fails.
struct Gone<'a>(&'a Sandbox, String);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        cleanup(self.0, &self.1);
    }
}

#[test]
fn finding_1_a_kernel_runs_slot_port_rule_does_not_break_a_caddy_admin_deploy() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("mode-left");
    let gone = Gone(&sb, name.clone());
    let host = format!("{name}.codeb.test");
    for image in ["v1", "v2"] {
        let dir = sb.write(&[ProjectYaml::new(
            &name,
            &format!("localhost/codeb-test-app:{image}"),
        )]);
        let out = sb.apply(&dir);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert_kernel_mode(&sb);
    // Green serves v2, blue keeps v1 in grace: both slot ports are published by codeb's rules.
    assert_eq!(slot_rules(&name).len(), 2, "{}", nat_rules());

    // The same state, now switching through Caddy: v3 deploys into blue, whose port the kernel
    // rule still led to v1's address (removed by the deploy): the probe met "connection refused".
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v3")]);
    let diff = sb.codeb_env(&["diff", "-f", dir.to_str().unwrap()], CADDY);
    let shown = String::from_utf8_lossy(&diff.stdout);
    assert!(
        shown.contains(&format!(
            "{name}/production: remove published port 127.0.0.1:"
        )),
        "diff shows the removal as steps: {}",
        text(&diff)
    );
    let out = sb.codeb_env(&["apply", "-f", dir.to_str().unwrap()], CADDY);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(switch_of(&sb, CADDY), "caddy-admin");
    assert_eq!(sb.slot_state(&name, "blue"), "active");
    assert_eq!(sb.get(&host, "/"), (200, "v3".to_string()));
    assert!(
        slot_rules(&name).is_empty(),
        "the kernel-mode run's slot port rules are gone:\n{}",
        nat_rules()
    );
    // Podman publishes the active slot now.
    assert!(!podman_ports(&format!("{name}-production-blue")).is_empty());

    drop(gone);
    assert!(containers(&name).is_empty(), "{:?}", containers(&name));
}

#[test]
fn finding_1_a_port_podman_published_in_caddy_admin_mode_is_repaired_in_kernel_mode() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("mode-pub");
    let gone = Gone(&sb, name.clone());
    let host = format!("{name}.codeb.test");
    let container = format!("{name}-production-blue");
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let out = sb.codeb_env(&["apply", "-f", dir.to_str().unwrap()], CADDY);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(switch_of(&sb, CADDY), "caddy-admin");
    assert!(!podman_ports(&container).is_empty(), "Podman publishes it");
    let caddy_id = inspect(&container, "{{.Id}}");

    // Back in kernel mode, the same release: the container is recreated without Podman's
    // publication, and codeb's rule is the port's one publisher.
    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&diff.stdout).contains("recreate"),
        "diff shows the repair: {}",
        text(&diff)
    );
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_kernel_mode(&sb);
    assert_ne!(inspect(&container, "{{.Id}}"), caddy_id, "recreated");
    assert_eq!(podman_ports(&container), "", "Podman publishes nothing");
    let slots = sb.slots();
    let port = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == name.as_str() && s["slot"] == "blue")
        .and_then(|s| s["port"].as_u64())
        .unwrap_or_else(|| panic!("blue's port in {slots}"));
    assert_eq!(
        nat_targets((std::net::Ipv4Addr::LOCALHOST, port as u16)),
        [format!("{}:8080", container_ip(&container))],
        "{}",
        nat_rules()
    );
    assert_eq!(sb.get(&host, "/"), (200, "v1".to_string()));
    let again = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "converged: {}", text(&again));

    drop(gone);
    assert!(containers(&name).is_empty(), "{:?}", containers(&name));
}

/// Removes the test's own network at the end, also when an assertion fails.
struct OwnNetwork(String);

impl Drop for OwnNetwork {
    fn drop(&mut self) {
        let _ = podman(&["network", "rm", "-f", &self.0]);
    }
}

#[tokio::test]
async fn finding_1_a_fresh_network_whose_bridge_is_not_up_yet_decides_kernel_mode() {
    use codeb::backend::{Kernel, Runtime};
    let net = OwnNetwork(unique("mode-net"));
    let out = podman(&["network", "create", &net.0]);
    assert!(out.status.success(), "{}", text(&out));
    let podman = codeb::backend::podman::Podman::connect(&env("CODEB_TEST_PODMAN")).unwrap();
    let info = podman
        .network_gateway(&net.0)
        .await
        .unwrap()
        .expect("the network exists");
    // As measured: the bridge is named but not there, and its gateway is not an address here.
    assert!(!info.bridge.is_empty(), "{info:?}");
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&info.bridge)
            .exists(),
        "no container runs on it, so netavark made no bridge yet: {info:?}"
    );
    assert!(
        std::net::UdpSocket::bind((info.gateway, 0)).is_err(),
        "{info:?}"
    );
    // The decision is the host's configuration's: kernel mode all the same.
    let kernel = codeb::backend::netfilter::Netfilter::new();
    let table = codeb::backend::netfilter::Ruleset::default();
    kernel.local(&table, &info).unwrap();
    // And a gateway that is no address here behind a bridge that exists is not this machine's.
    let foreign = codeb::model::observed::NetworkInfo {
        bridge: "lo".into(),
        ..info
    };
    assert!(kernel.local(&table, &foreign).is_err());
}
