//! Connecting to the hosts named in manifests or in the store.

use std::collections::BTreeMap;

use crate::backend::caddy::Caddy;
use crate::backend::podman::Podman;
use crate::model::HostRef;
use crate::reconcile::{Backends, HostBackends};

pub type Real = Backends<Podman, Caddy>;

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
    Ok(Backends { hosts: out })
}
