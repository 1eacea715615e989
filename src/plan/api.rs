//! Publishing codeb's own API through a host's Caddy (`codeb serve --publish HOSTNAME`): one route,
//! `codeb-api`, from the hostname to the daemon's loopback listener, so that the API gets Caddy's
//! TLS; a daemon that does not publish removes it. Pure: expected → diff → the writes to make,
//! none when converged.
//!
//! The route's id has no `_`, so it belongs to no environment ([`super::route_key`]): the
//! environments' planner never touches it, and it never touches theirs.

use crate::model::observed::ObservedProxy;
use crate::model::ownership::ROUTE_ID_PREFIX;
use crate::model::writes::{Route, ServerSpec};

/// The `@id` of the API's route.
pub fn api_route_id() -> String {
    format!("{ROUTE_ID_PREFIX}api")
}

/// The route codeb wants for its API.
pub fn api_route(hostname: &str, upstream: std::net::SocketAddr) -> Route {
    Route {
        id: api_route_id(),
        hosts: vec![hostname.to_string()],
        upstream: upstream.to_string(),
        keep_alive: true,
    }
}

/// One write to Caddy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiWrite {
    EnsureServer(ServerSpec),
    Add(Route),
    Replace(Route),
    /// The API is no longer published (a daemon started without `--publish`).
    Delete(String),
}

/// The writes that make `observed` serve `wanted` (or, with `None`, no API route) on codeb's
/// server `server`.
pub fn plan_api_route(
    observed: &ObservedProxy,
    server: &ServerSpec,
    wanted: Option<&Route>,
) -> Vec<ApiWrite> {
    let id = api_route_id();
    let current = observed.routes.iter().find(|r| r.id == id);
    let Some(wanted) = wanted else {
        return current
            .map(|r| ApiWrite::Delete(r.id.clone()))
            .into_iter()
            .collect();
    };
    let mut writes = Vec::new();
    if observed.server.as_ref() != Some(server) {
        writes.push(ApiWrite::EnsureServer(server.clone()));
    }
    match current {
        Some(r) if r == wanted => {}
        Some(_) => writes.push(ApiWrite::Replace(wanted.clone())),
        // A server just (re)created has no routes: the route goes in after it.
        None => writes.push(ApiWrite::Add(wanted.clone())),
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::writes::TlsMode;

    fn server() -> ServerSpec {
        ServerSpec {
            name: "codeb".into(),
            listen: vec![":443".into()],
            tls: TlsMode::Auto,
        }
    }

    #[test]
    fn the_api_route_is_added_once_and_replaced_only_when_it_drifted() {
        let wanted = api_route("api.example.com", "127.0.0.1:9100".parse().unwrap());
        let empty = ObservedProxy {
            server: None,
            routes: vec![],
            ..ObservedProxy::default()
        };
        assert_eq!(
            plan_api_route(&empty, &server(), Some(&wanted)),
            vec![
                ApiWrite::EnsureServer(server()),
                ApiWrite::Add(wanted.clone())
            ]
        );
        assert!(plan_api_route(&empty, &server(), None).is_empty());
        let converged = ObservedProxy {
            server: Some(server()),
            routes: vec![wanted.clone()],
            ..ObservedProxy::default()
        };
        assert!(plan_api_route(&converged, &server(), Some(&wanted)).is_empty());
        assert_eq!(
            plan_api_route(&converged, &server(), None),
            vec![ApiWrite::Delete(api_route_id())],
            "a daemon that no longer publishes removes the route"
        );
        let mut edited = wanted.clone();
        edited.upstream = "127.0.0.1:1".into();
        let drifted = ObservedProxy {
            server: Some(server()),
            routes: vec![edited],
            ..ObservedProxy::default()
        };
        assert_eq!(
            plan_api_route(&drifted, &server(), Some(&wanted)),
            vec![ApiWrite::Replace(wanted.clone())]
        );
    }

    #[test]
    fn the_api_route_belongs_to_no_environment() {
        assert_eq!(crate::plan::route_key(&api_route_id()), None);
    }
}
