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
        let (ip, source) = client(&parts.headers, peer, api.trust_forwarded);
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
                Ok(Authed(Caller::from_key(&record, source)))
            }
            Err(why) => {
                if api.limits.failures.check_key(&ip).is_err() {
                    return Err(ApiError::rate_limited());
                }
                let entry = AuditEntry::rejected(now, source, action, &why);
                if let Err(e) = api.ctx.store.audit(entry, &api.ctx.retention) {
                    tracing::error!(error = %e, "cannot record an audit entry");
                }
                Err(ApiError::unauthorized())
            }
        }
    }
}

/// The client's address, for the limits and the audit: the peer's; or, when the API is published
/// through Caddy (which sets `X-Forwarded-For` itself and ignores a client's own), the last
/// address Caddy appended, for a request that came from loopback.
fn client(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trust_forwarded: bool,
) -> (IpAddr, Option<String>) {
    let unknown = IpAddr::from([0, 0, 0, 0]);
    let forwarded = || {
        let value = headers.get("x-forwarded-for")?.to_str().ok()?;
        value.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
    };
    match peer {
        Some(p) if trust_forwarded && p.ip().is_loopback() => match forwarded() {
            Some(ip) => (ip, Some(format!("{ip} (via {p})"))),
            None => (p.ip(), Some(p.to_string())),
        },
        Some(p) => (p.ip(), Some(p.to_string())),
        None => (unknown, None),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = xff {
            h.insert("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_forwarded_address_counts_only_when_published_and_from_loopback() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let xff = headers(Some("203.0.113.9, 198.51.100.4"));
        // Caddy appends the client it saw last.
        let (ip, source) = client(&xff, Some(local), true);
        assert_eq!(ip, "198.51.100.4".parse::<IpAddr>().unwrap());
        assert_eq!(source.unwrap(), "198.51.100.4 (via 127.0.0.1:5000)");
        // Not published: the header is anyone's to forge.
        assert_eq!(client(&xff, Some(local), false).0, local.ip());
        // Not from loopback: not Caddy.
        assert_eq!(client(&xff, Some(remote), true).0, remote.ip());
        assert_eq!(client(&headers(None), Some(local), true).0, local.ip());
    }

    #[test]
    fn a_key_is_taken_from_either_header_and_nothing_else() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(presented(&h), Some("xyz"));
    }
}
