//! What codeb's kernel switch looks like from outside: the service address Caddy dials, the DNAT
//! targets of codeb's nf_tables chains (read with `nft`, never written), and a container's address.

use std::net::Ipv4Addr;
use std::process::Command;

use super::load::fresh_get;
use super::{podman, text, Sandbox};

/// Fails loudly unless the host switches through the kernel.
pub fn assert_kernel_mode(sb: &Sandbox) {
    let out = sb.codeb(&["get", "hosts", "-o", "json"]);
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        hosts[0]["switch"], "kernel",
        "these tests need root and nf_tables (codeb fell back to Caddy's admin API): {hosts}"
    );
}

/// The service address the project's hostname route dials, from Caddy's config.
pub fn service_address(admin: &str, name: &str) -> (Ipv4Addr, u16) {
    let addr = admin.trim_start_matches("http://");
    let (status, body) = fresh_get(addr, addr, "/config/").unwrap();
    assert_eq!(status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = format!("codeb-{name}_production");
    let route = config["apps"]["http"]["servers"]["codeb"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["@id"] == id.as_str())
        .unwrap_or_else(|| panic!("no route {id}"));
    assert_eq!(
        route["handle"][0]["transport"]["keep_alive"]["enabled"], false,
        "the hostname route must not keep upstream connections: {route}"
    );
    let dial = route["handle"][0]["upstreams"][0]["dial"].as_str().unwrap();
    let (ip, port) = dial.rsplit_once(':').unwrap();
    (ip.parse().unwrap(), port.parse().unwrap())
}

/// codeb's table as `nft list` prints it (reading only; `deploy/stack.sh up` installs nftables).
pub fn nat_rules() -> String {
    let out = Command::new("nft")
        .args(["list", "table", "ip", "codeb"])
        .output()
        .expect("nft runs");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The chain holding the DNAT rule of `address:port` (a service address, or a published slot
/// port on its loopback address).
pub fn service_chain((address, port): (Ipv4Addr, u16)) -> String {
    format!("CODEB-{:08x}-{port}", u32::from(address))
}

/// The DNAT targets (`ip:port`) of the chain of `address:port`.
pub fn nat_targets(service: (Ipv4Addr, u16)) -> Vec<String> {
    let head = format!("chain {} {{", service_chain(service));
    nat_rules()
        .lines()
        .skip_while(|l| l.trim() != head)
        .take_while(|l| l.trim() != "}")
        .filter_map(|l| l.split("dnat to ").nth(1))
        .map(|t| t.split(' ').next().unwrap().to_string())
        .collect()
}

/// A slot container's address on codeb-main.
pub fn container_ip(name: &str) -> String {
    inspect(
        name,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    )
}

/// `podman inspect --format FORMAT NAME`, trimmed.
pub fn inspect(name: &str, format: &str) -> String {
    let out = podman(&["inspect", "--format", format, name]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
