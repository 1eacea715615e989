//! `/mcp` on `codeb serve`'s listener: MCP's streamable HTTP transport (rmcp), stateless.
//!
//! Each POST is answered on its own, as JSON (`json_response`): no session map that a restart or
//! a second instance would lose, no server-sent stream left open. In front of it, in this order:
//!
//! 1. the Host and Origin check (DNS rebinding: a web page must not reach a loopback daemon
//!    through a name it controls): Host must be a loopback name or the published hostname, and
//!    an Origin, when sent, one of those too. 403 otherwise, before any key is looked at;
//! 2. the API's key check and rate limits (`api::auth::Authed`): the same keys, the same 401 for
//!    every bad key (audited, failures limited per address, 429), the same per-key rate;
//! 3. the body limit, 4 MiB as the API's (413, answered as the API answers it, with
//!    `Connection: close`), and the API's body timeout.
//!
//! The authenticated caller travels to the tools in the request's extensions. No OAuth metadata
//! is advertised: clients that find some ignore the static key header people configure.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tower::ServiceExt;

use super::Server;
use crate::api::auth::Authed;
use crate::api::{Api, ApiError, HealthSource, BODY_LIMIT};
use crate::service::Ctx;

/// The MCP service of one daemon.
pub type Service = StreamableHttpService<Server, NeverSessionManager>;

/// The names `/mcp` answers under: loopback, and the hostname the API is published on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    names: Vec<String>,
}

impl Allowed {
    pub fn new(published: Option<&str>) -> Allowed {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(String::from)
            .collect();
        names.extend(published.map(str::to_ascii_lowercase));
        Allowed { names }
    }

    fn admits(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Refuses a request whose Host, or Origin when it has one, is not an allowed name.
    ///
    /// # Errors
    /// What is wrong, for a 403.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self.admits(host_name(host)) {
            return Err(format!(
                "Host {host:?} is not a name codeb serve answers MCP on (loopback, or its --publish hostname)"
            ));
        }
        if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let authority = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .map(|rest| rest.split('/').next().unwrap_or(""));
            if !authority.is_some_and(|a| self.admits(host_name(a))) {
                return Err(format!(
                    "Origin {origin:?} is not allowed (a web page may not drive codeb)"
                ));
            }
        }
        Ok(())
    }
}

/// The host of an authority: `[::1]:9100` → `::1`, `localhost:9100` → `localhost`.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// The MCP service over `ctx` (the daemon's), stateless, JSON answers, at most 4 MiB a body.
pub fn service(ctx: Ctx, health: HealthSource, allowed: &Allowed) -> Service {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_allowed_hosts(allowed.names.clone())
        .with_max_request_body_bytes(BODY_LIMIT);
    StreamableHttpService::new(
        move || Ok(Server::new(ctx.clone(), None, Some(health.clone()))),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// `/mcp` in the API's state: the service and the names it answers under.
#[derive(Clone)]
pub struct Endpoint {
    pub service: Service,
    pub allowed: Allowed,
}

/// A request whose Host and Origin passed [`Allowed::check`].
pub struct Checked;

impl FromRequestParts<Api> for Checked {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        api.mcp
            .allowed
            .check(&parts.headers)
            .map(|()| Checked)
            .map_err(|m| ApiError::new(403, "forbidden", m))
    }
}

/// `/mcp`: the checks above, then the SDK's transport with the caller in the extensions.
pub async fn handle(
    State(api): State<Api>,
    _checked: Checked,
    Authed(caller): Authed,
    mut req: Request,
) -> Response {
    req.extensions_mut().insert(caller);
    let res = match api.mcp.service.clone().oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    if res.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        // The API's own 413: JSON, and `Connection: close`, since the rest of the body is left
        // unread and a client that pools connections must not send its next request into it.
        return ApiError::new(
            413,
            "too-large",
            format!("the body is larger than {} MiB", BODY_LIMIT >> 20),
        )
        .into_response();
    }
    res.map(axum::body::Body::new).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", host.parse().unwrap());
        if let Some(o) = origin {
            h.insert("origin", o.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_names_and_the_published_hostname_pass_and_any_other_name_is_refused() {
        let allowed = Allowed::new(Some("api.example.com"));
        for ok in [
            "127.0.0.1:9100",
            "localhost:9100",
            "LOCALHOST",
            "[::1]:9100",
            "api.example.com",
            "api.example.com:443",
        ] {
            assert!(allowed.check(&headers(ok, None)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example:9100",
            "127.0.0.2:9100",
            "api.example.com.evil",
            "",
        ] {
            assert!(allowed.check(&headers(bad, None)).is_err(), "{bad}");
        }
        assert!(Allowed::new(None)
            .check(&headers("api.example.com", None))
            .is_err());
    }

    #[test]
    fn an_origin_must_name_an_allowed_host_too() {
        let allowed = Allowed::new(None);
        let host = "127.0.0.1:9100";
        assert!(allowed
            .check(&headers(host, Some("http://localhost:3000")))
            .is_ok());
        for bad in [
            "http://evil.example",
            "null",
            "file://",
            "https://127.0.0.1.evil:1",
        ] {
            let refused = allowed.check(&headers(host, Some(bad))).unwrap_err();
            assert!(refused.contains("Origin"), "{bad}: {refused}");
        }
    }
}
