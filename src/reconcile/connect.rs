//! Connecting to the hosts and zones named in manifests or in the store: clients for each,
//! making no request. The one place clients are built from what a manifest names, so the one
//! place the operator's configuration ([`crate::config`]) is enforced: an endpoint or a key
//! variable it does not allow is refused before a client exists or a variable is read.

use std::collections::BTreeMap;

use super::{Backends, HostBackends};
use crate::backend::caddy::Caddy;
use crate::backend::netfilter::agent::AgentKernel;
use crate::backend::netfilter::{HostKernel, Netfilter};
use crate::backend::podman::Podman;
use crate::backend::powerdns::PowerDns;
use crate::config::Config;
use crate::model::dns::ZoneRef;
use crate::model::observed::Owner;
use crate::model::HostRef;

pub type Real = Backends<Podman, Caddy, HostKernel, PowerDns>;

/// An endpoint that cannot become a client or that the configuration does not allow, or a Zone
/// whose key variable is unset or not allowed: invalid input (exit 2, HTTP 400). The message
/// names the Host or Zone and the variable or endpoint, never a key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Set to `caddy-admin` to switch traffic through Caddy's admin API even where codeb could manage
/// the kernel's NAT rules (to compare the two, or on a machine whose firewall someone else owns).
pub const SWITCH_ENV: &str = "CODEB_SWITCH";

/// Names the codeb instance that owns the hosts this process acts on, for several state
/// directories that are one owner (every test and bench of one local stack). Unset, the owner is
/// the state directory's own random id.
pub const INSTANCE_ENV: &str = "CODEB_INSTANCE";

/// The owner this process marks hosts with and expects on them: `CODEB_INSTANCE` (1-64 letters,
/// digits, `.`, `_` or `-`; empty counts as unset), or the store's id, named after the machine and
/// the state directory.
///
/// # Errors
/// A malformed `CODEB_INSTANCE` (invalid input); a store that cannot be read.
pub fn owner(store: &crate::store::Store) -> Result<Owner, Invalid> {
    if let Some(value) = std::env::var_os(INSTANCE_ENV).filter(|v| !v.is_empty()) {
        let value = value.to_string_lossy();
        let ok = (1..=64).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(Invalid(format!(
                "{INSTANCE_ENV}: must be 1-64 letters, digits, '.', '_' or '-' (got {:?})",
                crate::service::sanitize(&value)
            )));
        }
        return Ok(Owner {
            id: value.to_string(),
            name: value.to_string(),
        });
    }
    let id = store
        .owner_id()
        .map_err(|e| Invalid(format!("cannot read the store's id: {e}")))?;
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    Ok(Owner {
        id,
        name: format!("{}:{}", machine.trim(), store.dir().display()),
    })
}

/// Clients for each host. Connecting makes no request: a remote Host (`spec.ssh`) gets its
/// relay's unix sockets under `state_dir/remote/HOST` (see [`crate::backend::remote`]), and its
/// ssh session opens at the first request.
///
/// # Errors
/// Exit 2 when `config` does not allow a Host's SSH target, Podman or Caddy endpoint (checked for
/// every host before any client is built), an endpoint is malformed (caught earlier by
/// validation), or a remote Host's relay cannot be made.
pub fn connect<'a>(
    hosts: impl IntoIterator<Item = &'a HostRef>,
    config: &Config,
    owner: &Owner,
    state_dir: &std::path::Path,
) -> Result<Real, Invalid> {
    let hosts: Vec<&HostRef> = hosts.into_iter().collect();
    for h in &hosts {
        config.check_host(h).map_err(|e| Invalid(e.to_string()))?;
    }
    let mut out = BTreeMap::new();
    for h in hosts {
        let invalid = |e: &dyn std::fmt::Display| Invalid(format!("host {}: {e}", h.name));
        let (runtime, proxy, kernel, agent) = match &h.ssh {
            None => (
                Podman::connect(&h.podman).map_err(|e| invalid(&e))?,
                Caddy::new(&h.caddy_admin).map_err(|e| invalid(&e))?,
                HostKernel::Local(match local_kernel(h, socket_owner(&h.podman)) {
                    Ok(None) => Netfilter::new(),
                    Ok(Some(forced)) => Netfilter::fallback(forced),
                    Err((reason, local)) => Netfilter::unsupported(reason, local),
                }),
                None,
            ),
            Some(ssh) => {
                let (socket, admin) = remote_endpoints(h).ok_or_else(|| {
                    invalid(&"with spec.ssh, podman must be unix:///PATH and caddy.admin http://LOOPBACK:PORT")
                })?;
                let relay =
                    crate::backend::remote::relay_for(state_dir, &h.name, ssh, socket, admin)
                        .map_err(|e| {
                            invalid(&format!("the local relay to {}: {e}", ssh.display()))
                        })?;
                let through = format!("unix://{}", relay.podman.display());
                let session = relay.session().clone();
                // The agent decides what it can on the host (root, nf_tables, a rootful Podman,
                // the network there); only the operator's request for Caddy is known here.
                let forced = std::env::var(SWITCH_ENV)
                    .is_ok_and(|v| v == "caddy-admin")
                    .then(|| format!("{SWITCH_ENV}=caddy-admin"));
                (
                    Podman::connect(&through).map_err(|e| invalid(&e))?,
                    Caddy::through(&h.caddy_admin, &relay.caddy).map_err(|e| invalid(&e))?,
                    HostKernel::Remote(AgentKernel::new(session.clone(), forced)),
                    Some(session),
                )
            }
        };
        out.insert(
            h.name.clone(),
            HostBackends {
                runtime,
                proxy,
                kernel,
                publish: h.publish_address.parse().ok(),
                owner: Some(owner.clone()),
                agent,
            },
        );
    }
    Ok(Backends::hosts(out))
}

/// Clients for each managed zone (zones without `powerdns` are skipped), with the API key read
/// from the variable the Zone names. Makes no request.
///
/// # Errors
/// Exit 2 when `config` does not allow a Zone's key variable or PowerDNS API (checked for every
/// zone before any variable is read), or a variable is unset or empty; the message names the Zone
/// and the variable or endpoint (never a value).
pub fn connect_zones<'a>(
    zones: impl IntoIterator<Item = &'a ZoneRef>,
    config: &Config,
) -> Result<BTreeMap<String, PowerDns>, Invalid> {
    let zones: Vec<&ZoneRef> = zones.into_iter().collect();
    for z in &zones {
        config.check_zone(z).map_err(|e| Invalid(e.to_string()))?;
    }
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

/// The kept ssh session of a remote Host (the one its relay serves, made by [`connect`] if it
/// was not yet); `None` for a local Host or one whose relay cannot be made.
pub fn session(
    h: &HostRef,
    state_dir: &std::path::Path,
) -> Option<std::sync::Arc<crate::backend::remote::Session>> {
    let ssh = h.ssh.as_ref()?;
    let (socket, admin) = remote_endpoints(h)?;
    crate::backend::remote::relay_for(state_dir, &h.name, ssh, socket, admin)
        .ok()
        .map(|r| r.session().clone())
}

/// Where codeb's Podman adapter reaches Host `h`: its own endpoint, or for a remote Host the
/// local relay of its kept session (made if it was not yet), which carries Podman's events too.
///
/// # Errors
/// A remote Host whose endpoints the agent cannot take, or whose relay cannot be made.
pub fn podman_endpoint(h: &HostRef, state_dir: &std::path::Path) -> Result<String, String> {
    let Some(ssh) = &h.ssh else {
        return Ok(h.podman.clone());
    };
    let (socket, admin) = remote_endpoints(h)
        .ok_or("with spec.ssh, podman must be unix:///PATH and caddy.admin http://LOOPBACK:PORT")?;
    crate::backend::remote::relay_for(state_dir, &h.name, ssh, socket, admin)
        .map(|r| format!("unix://{}", r.podman.display()))
        .map_err(|e| format!("the local relay to {}: {e}", ssh.display()))
}

/// A remote Host's Podman socket and Caddy admin `HOST:PORT`, as the agent takes them.
fn remote_endpoints(h: &HostRef) -> Option<(&str, &str)> {
    let socket = h.podman.strip_prefix("unix://")?;
    let admin = h.caddy_admin.strip_prefix("http://")?.trim_end_matches('/');
    Some((socket, admin))
}

/// The uid owning a unix socket's file (`None` for another transport, or a socket not there
/// yet: Podman is then unreachable, which observing says).
fn socket_owner(endpoint: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let path = endpoint.strip_prefix("unix://")?;
    std::fs::metadata(path).ok().map(|m| m.uid())
}

/// codeb can manage a host's NAT rules only from that host: the Podman it drives is on this
/// machine and rootful (a unix socket owned by root: `owner`), and so is the Caddy that dials
/// service addresses (a loopback admin address). These are the host's configuration, so the
/// switch mode is decided from them from the first apply, whether or not a container runs yet;
/// privilege and nf_tables show at the first read, the network's locality when observing (see
/// [`crate::backend::netfilter::locality`]).
///
/// `Ok(None)`: kernel mode. `Ok(Some(reason))`: the host could be, but `CODEB_SWITCH=caddy-admin`
/// asks for Caddy; codeb still reads its rules there and removes what a kernel-mode run left.
/// `Err((reason, local))`: why not, and whether the host's containers are on this machine.
fn local_kernel(h: &HostRef, owner: Option<u32>) -> Result<Option<String>, (String, bool)> {
    let local_podman = h.podman.starts_with("unix://");
    if !local_podman {
        return Err((
            format!(
                "Podman at {} is not on this machine (only a unix socket is)",
                h.podman
            ),
            false,
        ));
    }
    if let Some(uid) = owner.filter(|uid| *uid != 0) {
        // A rootless Podman's bridge lives in its own network namespace: its gateway is never an
        // address of this machine, and codeb's rules here would catch nothing of it.
        return Err((
            format!(
                "Podman at {} is rootless (its socket belongs to uid {uid})",
                h.podman
            ),
            true,
        ));
    }
    let admin_host = h
        .caddy_admin
        .split("://")
        .nth(1)
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(host, _)| host.trim_matches(['[', ']']));
    let loopback = match admin_host {
        Some("localhost" | "::1") => true,
        Some(ip) => ip
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback()),
        None => false,
    };
    if !loopback {
        return Err((
            format!(
                "Caddy's admin API at {} is not on this machine's loopback",
                h.caddy_admin
            ),
            true,
        ));
    }
    if std::env::var(SWITCH_ENV).is_ok_and(|v| v == "caddy-admin") {
        return Ok(Some(format!("{SWITCH_ENV}=caddy-admin")));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(podman: &str, admin: &str) -> HostRef {
        HostRef {
            podman: podman.into(),
            caddy_admin: admin.into(),
            ..crate::plan::tests::host()
        }
    }

    #[test]
    fn a_zone_or_host_the_configuration_refuses_gets_no_client_and_its_variable_is_not_read() {
        let config = Config::defaults("/s/config.yaml");
        let zone = ZoneRef {
            name: "codeb.test".into(),
            powerdns: Some(crate::model::dns::PowerDnsRef {
                api: "http://127.0.0.1:8081".into(),
                server_id: "localhost".into(),
                api_key_env: "CODEB_TEST_UNSET_GITHUB_TOKEN_LIKE".into(),
            }),
            ttl: 300,
        };
        // Allowed, so the variable is read: unset.
        let err = connect_zones([&zone], &config).unwrap_err().to_string();
        assert!(err.contains("is not set"), "{err}");
        // Refused before it is read: the message is the configuration's.
        let mut foreign = zone.clone();
        foreign.powerdns.as_mut().unwrap().api_key_env = "GITHUB_TOKEN".into();
        let err = connect_zones([&zone, &foreign], &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("apiKeyEnv names GITHUB_TOKEN"), "{err}");
        let err = connect(
            [
                &host("unix:///run/podman.sock", "http://127.0.0.1:2019"),
                &host("tcp://10.0.0.5:8888", "http://127.0.0.1:2019"),
            ],
            &config,
            &Owner {
                id: "test".into(),
                name: "test".into(),
            },
            std::path::Path::new("/nonexistent"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("tcp://10.0.0.5:8888 is plaintext"), "{err}");
    }

    #[test]
    fn only_a_local_rootful_podman_and_caddy_get_kernel_switching() {
        let local = host("unix:///run/podman.sock", "http://127.0.0.1:2019");
        assert_eq!(local_kernel(&local, Some(0)), Ok(None));
        assert_eq!(
            local_kernel(&local, None),
            Ok(None),
            "a socket not there yet"
        );
        let by_name = host("unix:///run/podman.sock", "http://localhost:2019");
        assert_eq!(local_kernel(&by_name, Some(0)), Ok(None));
        let remote = host("tcp://10.0.0.5:8888", "http://127.0.0.1:2019");
        assert!(local_kernel(&remote, None).is_err());
        let far_caddy = host("unix:///run/podman.sock", "http://10.0.0.5:2019");
        assert!(local_kernel(&far_caddy, Some(0)).is_err());
        let (reason, on_this_machine) = local_kernel(&local, Some(1000)).unwrap_err();
        assert!(reason.contains("rootless"), "{reason}");
        assert!(on_this_machine);
    }
}
