//! Who is calling: the API key from `X-API-Key` or `Authorization: Bearer`, verified against the
//! store, and the rate limits.
//!
//! Every key that does not authenticate (missing, malformed, unknown, expired, revoked) gets the
//! same 401; the precise reason goes to the audit log only. Limits, keyed so that memory stays
//! bounded whatever a client sends: a valid key has its own bucket (by its id); failed attempts
//! share one bucket per source address, so a flood of bad keys is answered 429 before it costs an
//! audit write, and holds back no valid key.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::error::ApiError;
use super::Api;
use crate::auth::{AuditEntry, Caller, Rejection};

/// Requests per second and burst, per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    /// 50 requests a second with bursts of 100: a CI job or an agent polls far less; a runaway
    /// loop is held back before it loads the daemon.
    fn default() -> Self {
        RateLimit {
            per_second: 50,
            burst: 100,
        }
    }
}

/// Failed authentications per source address: 10 a second, bursts of 20.
const FAILURES: RateLimit = RateLimit {
    per_second: 10,
    burst: 20,
};

/// The limiters. `None` when the operator turned limits off (`--rate-limit 0`).
pub struct Limits {
    keys: Option<DefaultKeyedRateLimiter<String>>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
}

fn quota(r: RateLimit) -> Quota {
    let per_second = NonZeroU32::new(r.per_second.max(1)).expect("at least one");
    let burst = NonZeroU32::new(r.burst.max(1)).expect("at least one");
    Quota::per_second(per_second).allow_burst(burst)
}

impl Limits {
    pub fn new(per_key: RateLimit) -> Limits {
        Limits {
            keys: (per_key.per_second > 0).then(|| DefaultKeyedRateLimiter::keyed(quota(per_key))),
            failures: DefaultKeyedRateLimiter::keyed(quota(FAILURES)),
        }
    }

    /// Drops the state of keys and addresses that have been quiet (called periodically), so the
    /// limiters hold only recent clients.
    pub fn forget_quiet(&self) {
        if let Some(k) = &self.keys {
            k.retain_recent();
        }
        self.failures.retain_recent();
    }
}

/// The presented key: `X-API-Key`, else `Authorization: Bearer`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().ok();
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An authenticated caller: handlers that take it run only for a valid key within its rate.
pub struct Authed(pub Caller);

impl FromRequestParts<Api> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let now = crate::reconcile::now_ms();
        let verified = match presented(&parts.headers) {
            None => Err(Rejection::Malformed),
            Some(key) => api
                .ctx
                .store
                .verify_key(key, now)
                .map_err(|e| e.rejection().cloned().unwrap_or(Rejection::Malformed)),
        };
        let action = format!("{} {}", parts.method, route(parts));
        match verified {
            Ok(record) => {
                if let Some(limiter) = &api.limits.keys {
                    if limiter.check_key(&record.id).is_err() {
                        return Err(ApiError::rate_limited());
                    }
                }
                if let Err(e) = api.ctx.store.touch_key(&record.id, now) {
                    tracing::warn!(error = %e, "cannot record a key's last use");
                }
                Ok(Authed(Caller::from_key(
                    &record,
                    peer.map(|p| p.to_string()),
                )))
            }
            Err(why) => {
                let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
                if api.limits.failures.check_key(&ip).is_err() {
                    return Err(ApiError::rate_limited());
                }
                let entry = AuditEntry::rejected(now, peer.map(|p| p.to_string()), action, &why);
                if let Err(e) = api.ctx.store.audit(entry, &api.ctx.retention) {
                    tracing::error!(error = %e, "cannot record an audit entry");
                }
                Err(ApiError::unauthorized())
            }
        }
    }
}

/// The route's pattern (`/api/v1/projects/{project}`), never the path a client sent.
pub fn route(parts: &Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string())
}

/// Shared by the state: one set of limiters per daemon.
pub type SharedLimits = Arc<Limits>;
