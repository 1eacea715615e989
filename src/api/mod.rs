//! The HTTP API of `codeb serve`: a thin front end over `service`. Each route authenticates the
//! caller ([`auth`]), turns the request into a `service::Request`, and answers the typed result as
//! JSON; `service::call` authorizes it from the one permission table and audits it.
//!
//! - `GET /health` (no key), `GET /metrics` (Prometheus text; a key with `read`).
//! - `POST /api/tool` with `{"tool": NAME, ...}`: the original platform's interface.
//! - `/api/v1/...`: REST over the same services, described by `GET /api/v1/openapi.json`
//!   (generated from these handlers and the view types: no hand-written copy).
//! - `/mcp`: MCP's streamable HTTP transport (`crate::mcp::http`), behind the same key check,
//!   limits and audit.
//!
//! Bounded: bodies at most 4 MiB (413), headers within 10 s and bodies within 30 s of the request
//! (a client that trickles is cut off and holds no task long), at most 256 connections at once,
//! per-key rate limits (429). Listens on loopback only: codeb speaks plain HTTP, so anything
//! beyond the machine reaches it through Caddy's TLS.
//!
//! Must not: decide anything a use case decides, echo a key, or log a request body.

pub mod auth;
pub mod error;
mod routes;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use auth::RateLimit;
pub use error::ApiError;
pub use routes::{openapi, router, Route, ROUTES, TOOLS};
pub use server::serve;

use crate::service::Ctx;

/// The most a request body may hold: manifests are bounded at 4 MiB per file by the loader.
pub const BODY_LIMIT: usize = 4 << 20;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// Per host and zone: whether the loop observed it lately, for `GET /health`.
pub type HealthSource = Arc<dyn Fn() -> HealthView + Send + Sync>;

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    /// False when a host or zone has been unreachable for longer than two resyncs.
    pub ok: bool,
    pub version: String,
    pub targets: Vec<TargetHealth>,
}

/// One host or zone in `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetHealth {
    /// `host` or `zone`.
    pub kind: String,
    pub name: String,
    /// Observed in the last resync.
    pub observed: bool,
    pub last_ok_ms: Option<u64>,
    pub failing_since_ms: Option<u64>,
    /// What failed (an endpoint and an error; never a key).
    pub error: Option<String>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct Api {
    /// The daemon's context; each request gets its own caller.
    pub ctx: Ctx,
    pub limits: auth::SharedLimits,
    pub health: HealthSource,
    /// The API is published through Caddy (`--publish`): a request from loopback carries the
    /// client's address in `X-Forwarded-For`, which Caddy sets.
    pub trust_forwarded: bool,
    /// `/mcp` (see `crate::mcp::http`).
    pub mcp: crate::mcp::http::Endpoint,
}

impl Api {
    /// The API of `ctx`'s daemon; `published` is the hostname of `--publish`, under which `/mcp`
    /// answers too (besides loopback names).
    pub fn new(ctx: Ctx, rate: RateLimit, health: HealthSource, published: Option<&str>) -> Api {
        let allowed = crate::mcp::http::Allowed::new(published);
        let mcp = crate::mcp::http::Endpoint {
            service: crate::mcp::http::service(ctx.clone(), health.clone(), &allowed),
            allowed,
        };
        Api {
            ctx,
            limits: Arc::new(auth::Limits::new(rate)),
            health,
            trust_forwarded: published.is_some(),
            mcp,
        }
    }
}

/// Refuses an address codeb must not listen on: anything but loopback, since codeb speaks
/// plain HTTP (publish the API through Caddy for TLS).
pub fn check_listen(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "--listen {addr}: codeb serves plain HTTP and listens on loopback only (127.0.0.1 or ::1); reach it from elsewhere through Caddy's TLS"
    ))
}
