//! `codeb serve --publish HOSTNAME`: the API published through a Host's Caddy, so that it is
//! reached over Caddy's TLS while codeb itself listens on loopback only.
//!
//! Level-triggered like the rest: at start and at every resync, observe codeb's Caddy server,
//! plan the one route (`plan::api`), write only what differs. Each round claims the host's sweep
//! from the loop, since creating codeb's server is host-wide work the loop also does. A daemon
//! that does not publish (`codeb watch`, `codeb serve` without `--publish`) removes a route an
//! earlier one left, once at start, from every Host of the manifests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::caddy::Caddy;
use crate::backend::Proxy;
use crate::model::Desired;
use crate::plan::api::{api_route, plan_api_route, ApiWrite};
use crate::plan::{server_spec, SERVER_NAME};
use crate::reconcile::controller::{Handle, Work};
use crate::service::Error;

/// Where to publish the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub hostname: String,
    /// The Host (by name) whose Caddy serves it; `None`: the manifests' only Host.
    pub host: Option<String>,
}

/// Checks `publish` against the manifests: a DNS name no environment serves, on a declared Host.
/// Returns the Host's name.
///
/// # Errors
/// `Invalid`, saying what to change.
pub fn check(publish: &Publish, desired: &Desired) -> Result<String, Error> {
    let name = &publish.hostname;
    if !crate::spec::is_dns_name(name) || !name.contains('.') {
        return Err(Error::invalid(format!(
            "--publish {name:?}: expected a lowercase DNS name such as api.example.com"
        )));
    }
    for env in desired.envs.values() {
        let previews = crate::model::Slot::ALL.map(|s| env.preview_hostname(s));
        if &env.hostname == name || previews.contains(name) {
            return Err(Error::invalid(format!(
                "--publish {name}: {} already serves that hostname",
                env.key
            )));
        }
    }
    match &publish.host {
        Some(h) if desired.hosts.contains_key(h) => Ok(h.clone()),
        Some(h) => Err(Error::invalid(format!(
            "--publish-on {h}: no Host of that name in the manifests"
        ))),
        None if desired.hosts.len() == 1 => {
            Ok(desired.hosts.keys().next().expect("one").clone())
        }
        None => Err(Error::invalid(
            "--publish: the manifests declare several Hosts; name the one whose Caddy serves the API with --publish-on HOST",
        )),
    }
}

/// Keeps the route in place until `shutdown`: at start, then at every `resync`.
pub async fn keep(
    publish: Publish,
    host: String,
    upstream: SocketAddr,
    loop_handle: Handle,
    watched: watch::Receiver<Arc<Desired>>,
    resync: Duration,
    shutdown: CancellationToken,
) {
    let wanted = api_route(&publish.hostname, upstream);
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(h) = watched.borrow().hosts.get(&host).cloned() else {
            warn!(%host, "the Host that publishes the API is no longer in the manifests");
            continue;
        };
        if !round(&h, Some(&wanted), &loop_handle).await {
            return;
        }
    }
}

/// Removes an API route an earlier daemon left on the Hosts of the manifests (once, at start).
pub async fn unpublish(loop_handle: Handle, desired: Arc<Desired>) {
    for h in desired.hosts.values() {
        if !round(h, None, &loop_handle).await {
            return;
        }
    }
}

/// One observe → plan → write round on `h`; false when the loop stopped.
async fn round(
    h: &crate::model::HostRef,
    wanted: Option<&crate::model::writes::Route>,
    loop_handle: &Handle,
) -> bool {
    let host = &h.name;
    if h.ssh.is_some() {
        // Its Caddy is reached through the agent, and would dial codeb's API on that host's
        // loopback, not this machine's: the API is published on local Hosts only.
        debug!(%host, "the API is not published through a remote host's Caddy");
        return true;
    }
    let caddy = match Caddy::new(&h.caddy_admin) {
        Ok(c) => c,
        Err(e) => {
            warn!(%host, error = %e, "cannot reach Caddy for the API's route");
            return true;
        }
    };
    let Some(_claim) = loop_handle.claim(vec![Work::Host(host.clone())]).await else {
        return false;
    };
    let observed = match caddy.observe(SERVER_NAME).await {
        Ok(o) => o,
        Err(e) => {
            warn!(%host, error = %crate::backend::error_chain(&e), "cannot read Caddy for the API's route; tried again at the next resync");
            return true;
        }
    };
    for write in plan_api_route(&observed, &server_spec(h), wanted) {
        let result = match &write {
            ApiWrite::EnsureServer(s) => caddy.ensure_server(s).await,
            ApiWrite::Add(r) => caddy.add_route(SERVER_NAME, r).await,
            ApiWrite::Replace(r) => caddy.replace_route(r).await,
            ApiWrite::Delete(id) => caddy.delete_route(id).await,
        };
        match result {
            Ok(()) => info!(%host, ?write, "the API's route written"),
            Err(e) => {
                warn!(%host, error = %crate::backend::error_chain(&e), "cannot write the API's route; tried again at the next resync");
                break;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DesiredEnv, EnvKey, HostRef, Promotion, Release};

    fn desired(hosts: &[&str]) -> Desired {
        let mut d = Desired::default();
        for h in hosts {
            d.hosts.insert(
                h.to_string(),
                HostRef {
                    name: h.to_string(),
                    address: "127.0.0.1".into(),
                    podman: "unix:///run/podman.sock".into(),
                    caddy_admin: "http://127.0.0.1:2019".into(),
                    listen: vec![],
                    tls: crate::spec::Tls::Off,
                    publish_address: "127.0.0.1".into(),
                    image_allow: vec![],
                    postgres: None,
                    redis: None,
                    backups: None,
                    access_log: None,
                    ssh: None,
                },
            );
        }
        let key = EnvKey::new("shop", "production");
        d.envs.insert(
            key.clone(),
            DesiredEnv {
                key,
                host: hosts[0].to_string(),
                hostname: "shop.example.com".into(),
                release: Release::new("app:v1", None, Default::default(), 8080),
                health_path: "/".into(),
                health_timeout: Duration::from_secs(5),
                promotion: Promotion::Auto,
                grace_period: Duration::from_secs(60),
                migration_grace: crate::model::DEFAULT_MIGRATION_GRACE,
                env_from: Default::default(),
                data: Default::default(),
            },
        );
        d
    }

    fn publish(hostname: &str, host: Option<&str>) -> Publish {
        Publish {
            hostname: hostname.into(),
            host: host.map(str::to_string),
        }
    }

    #[test]
    fn the_api_is_published_on_a_free_dns_name_of_a_declared_host() {
        let one = desired(&["app"]);
        assert_eq!(
            check(&publish("api.example.com", None), &one).unwrap(),
            "app"
        );
        for taken in ["shop.example.com", "blue.shop.example.com"] {
            let e = check(&publish(taken, None), &one).unwrap_err();
            assert!(e.message.contains("shop/production"), "{e}");
        }
        assert!(check(&publish("API example", None), &one).is_err());
        assert!(check(&publish("api.example.com", Some("nope")), &one).is_err());
        let two = desired(&["app", "edge"]);
        assert!(check(&publish("api.example.com", None), &two)
            .unwrap_err()
            .message
            .contains("--publish-on"));
        assert_eq!(
            check(&publish("api.example.com", Some("edge")), &two).unwrap(),
            "edge"
        );
    }
}
