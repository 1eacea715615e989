//! Connecting to the hosts and zones named in manifests or in the store.

use std::collections::BTreeMap;

use crate::backend::caddy::Caddy;
use crate::backend::podman::Podman;
use crate::backend::powerdns::PowerDns;
use crate::model::dns::ZoneRef;
use crate::model::HostRef;
use crate::reconcile::{Backends, HostBackends};

pub type Real = Backends<Podman, Caddy, PowerDns>;

/// Clients for each host. Connecting makes no request; an endpoint that is malformed is invalid
/// input (exit 2), caught earlier by validation.
pub fn connect<'a>(hosts: impl IntoIterator<Item = &'a HostRef>) -> anyhow::Result<Real> {
    let mut out = BTreeMap::new();
    for h in hosts {
        let runtime = Podman::connect(&h.podman)
            .map_err(|e| super::Failure::invalid(format!("host {}: {e}", h.name)))?;
        let proxy = Caddy::new(&h.caddy_admin)
            .map_err(|e| super::Failure::invalid(format!("host {}: {e}", h.name)))?;
        out.insert(h.name.clone(), HostBackends { runtime, proxy });
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
) -> anyhow::Result<BTreeMap<String, PowerDns>> {
    let mut out = BTreeMap::new();
    for z in zones {
        let Some(p) = &z.powerdns else { continue };
        let key = match std::env::var(&p.api_key_env) {
            Ok(k) if !k.is_empty() => k,
            Ok(_) => return Err(missing_key(z, &p.api_key_env, "is empty").into()),
            Err(_) => return Err(missing_key(z, &p.api_key_env, "is not set").into()),
        };
        let client = PowerDns::new(&p.api, &p.server_id, &p.api_key_env, &key)
            .map_err(|e| super::Failure::invalid(format!("Zone {}: {e}", z.name)))?;
        out.insert(z.name.clone(), client);
    }
    Ok(out)
}

fn missing_key(zone: &ZoneRef, var: &str, what: &str) -> super::Failure {
    super::Failure::invalid(format!(
        "Zone {}: the environment variable {var} (its spec.powerdns.apiKeyEnv) {what}; export it \
         with the PowerDNS API key",
        zone.name
    ))
}
