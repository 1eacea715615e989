//! Connecting to the hosts and zones named in manifests or in the store: clients for each,
//! making no request.

use std::collections::BTreeMap;

use super::{Backends, HostBackends};
use crate::backend::caddy::Caddy;
use crate::backend::netfilter::Netfilter;
use crate::backend::podman::Podman;
use crate::backend::powerdns::PowerDns;
use crate::model::dns::ZoneRef;
use crate::model::HostRef;

pub type Real = Backends<Podman, Caddy, Netfilter, PowerDns>;

/// An endpoint that cannot become a client, or a Zone whose key variable is unset: invalid input
/// (exit 2, HTTP 400). The message names the Host or Zone and the variable, never a key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Set to `caddy-admin` to switch traffic through Caddy's admin API even where codeb could manage
/// the kernel's NAT rules (to compare the two, or on a machine whose firewall someone else owns).
pub const SWITCH_ENV: &str = "CODEB_SWITCH";

/// Clients for each host. Connecting makes no request; an endpoint that is malformed is invalid
/// input (exit 2), caught earlier by validation.
pub fn connect<'a>(hosts: impl IntoIterator<Item = &'a HostRef>) -> Result<Real, Invalid> {
    let mut out = BTreeMap::new();
    for h in hosts {
        let runtime =
            Podman::connect(&h.podman).map_err(|e| Invalid(format!("host {}: {e}", h.name)))?;
        let proxy =
            Caddy::new(&h.caddy_admin).map_err(|e| Invalid(format!("host {}: {e}", h.name)))?;
        let kernel = match local_kernel(h) {
            Ok(()) => Netfilter::new(),
            Err((reason, local)) => Netfilter::unsupported(reason, local),
        };
        out.insert(
            h.name.clone(),
            HostBackends {
                runtime,
                proxy,
                kernel,
                publish: h.publish_address.parse().ok(),
            },
        );
    }
    Ok(Backends::hosts(out))
}

/// Clients for each managed zone (zones without `powerdns` are skipped), with the API key read
/// from the variable the Zone names. Makes no request.
///
/// # Errors
/// Exit 2 when a variable is unset or empty, naming the Zone and the variable (never a value).
pub fn connect_zones<'a>(
    zones: impl IntoIterator<Item = &'a ZoneRef>,
) -> Result<BTreeMap<String, PowerDns>, Invalid> {
    let mut out = BTreeMap::new();
    for z in zones {
        let Some(p) = &z.powerdns else { continue };
        let key = match std::env::var(&p.api_key_env) {
            Ok(k) if !k.is_empty() => k,
            Ok(_) => return Err(missing_key(z, &p.api_key_env, "is empty")),
            Err(_) => return Err(missing_key(z, &p.api_key_env, "is not set")),
        };
        let client = PowerDns::new(&p.api, &p.server_id, &p.api_key_env, &key)
            .map_err(|e| Invalid(format!("Zone {}: {e}", z.name)))?;
        out.insert(z.name.clone(), client);
    }
    Ok(out)
}

fn missing_key(zone: &ZoneRef, var: &str, what: &str) -> Invalid {
    Invalid(format!(
        "Zone {}: the environment variable {var} (its spec.powerdns.apiKeyEnv) {what}; export it \
         with the PowerDNS API key",
        zone.name
    ))
}

/// codeb can manage a host's NAT rules only from that host: the Podman it drives is on this
/// machine (a unix socket) and so is the Caddy that dials service addresses (a loopback admin
/// address). Privilege and the network's gateway are checked when observing. The error says why
/// not, and whether the host's containers are on this machine all the same.
fn local_kernel(h: &HostRef) -> Result<(), (String, bool)> {
    let local_podman = h.podman.starts_with("unix://");
    if std::env::var(SWITCH_ENV).is_ok_and(|v| v == "caddy-admin") {
        return Err((format!("{SWITCH_ENV}=caddy-admin"), local_podman));
    }
    if !local_podman {
        return Err((
            format!(
                "Podman at {} is not on this machine (only a unix socket is)",
                h.podman
            ),
            false,
        ));
    }
    let admin_host = h
        .caddy_admin
        .split("://")
        .nth(1)
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(host, _)| host.trim_matches(['[', ']']));
    match admin_host {
        Some("localhost" | "::1") => Ok(()),
        Some(ip)
            if ip
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback()) =>
        {
            Ok(())
        }
        _ => Err((
            format!(
                "Caddy's admin API at {} is not on this machine's loopback",
                h.caddy_admin
            ),
            true,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(podman: &str, admin: &str) -> HostRef {
        HostRef {
            name: "h".into(),
            address: "127.0.0.1".into(),
            podman: podman.into(),
            caddy_admin: admin.into(),
            listen: vec![],
            tls: crate::spec::Tls::Off,
            publish_address: "127.0.0.1".into(),
            image_allow: vec![],
        }
    }

    #[test]
    fn only_a_local_podman_and_caddy_get_kernel_switching() {
        assert!(local_kernel(&host("unix:///run/podman.sock", "http://127.0.0.1:2019")).is_ok());
        assert!(local_kernel(&host("unix:///run/podman.sock", "http://localhost:2019")).is_ok());
        assert!(local_kernel(&host("tcp://10.0.0.5:8888", "http://127.0.0.1:2019")).is_err());
        assert!(local_kernel(&host("unix:///run/podman.sock", "http://10.0.0.5:2019")).is_err());
    }
}
