//! The Caddy adapter: codeb's server and routes in one Caddy, through its JSON admin API only.
//!
//! Responsible for converting between Caddy's config JSON and [`ServerSpec`] / [`Route`], and for
//! carrying out one change per call with as few config writes as the admin API allows. Every write
//! is a full graceful reload of Caddy that closes idle client keep-alive connections (measured, see
//! ENVIRONMENT.md), so nothing here writes what is already there.
//!
//! It must not decide anything (which routes should exist is the planner's business), must not
//! retry (the reconciler does, using [`Error::is_retryable`]), and must never return, change or
//! delete a route whose `@id` does not start with [`ROUTE_ID_PREFIX`]: ids without it are refused
//! before any request is made.
//!
//! # What codeb owns in a Caddy
//! - The server `apps.http.servers.{name}`: its `listen`, `automatic_https` and
//!   `tls_connection_policies` keys, and the routes in it whose `@id` starts with `codeb-`.
//!   Foreign routes in that server are left exactly as they are (byte for byte).
//! - For [`TlsMode::Internal`] only: the certificate authority `apps.pki.certificate_authorities.codeb`
//!   (with `install_trust: false`, so Caddy never edits the system trust store) and the TLS
//!   automation policy with `@id` [`TLS_POLICY_ID`], which issues from that CA. The CA is codeb's
//!   own rather than Caddy's shared `local` one so that no setting another user of this Caddy relies
//!   on is changed.
//! - While its access log is on: the logger `logging.logs.codeb-access` ([`access_logger`]), which
//!   takes only the entries of the access logger `http.log.access.codeb-access` and writes them as
//!   JSON to a file, and the server's `logs` key naming it. No other logger (Caddy's `default`
//!   included) and nothing else under `logging` is read for a decision or written: the logger is
//!   written at its own path, never by replacing `logging`. With the access log off, a `logs` key
//!   of the server that is not exactly codeb's is left as it is.
//!
//! # Admin API facts this relies on (Caddy 2.6.2, measured)
//! - `GET` of a key under a missing parent answers `400 {"error":"invalid traversal path at: …"}`;
//!   a missing key under an existing map answers `200 null`.
//! - `PUT` creates every missing parent map on its way (`apps`, `apps.http`, `apps.http.servers`),
//!   and answers `500 "… key already exists: …"` when the key exists (even with a `null` value).
//! - `PATCH` replaces an existing key and answers `500 "… key does not exist: …"` otherwise.
//! - `POST` appends to an array; on a missing parent it answers `500 "invalid traversal path …"`.
//! - `PATCH`/`DELETE` of `/id/X` for an unknown id answer `404 {"error":"unknown object ID 'X'"}`.
//! - A change whose resulting config Caddy cannot load (bad shape, unknown module, port in use)
//!   answers `500 {"error":"loading new config: …"}` and leaves the running config untouched.
//! - Every change replaces the admin server itself: connections to the admin API do not survive
//!   a write, so this client keeps none.
//! - The `ETag` of a `GET` comes as an HTTP trailer, which reqwest does not expose, so writes are
//!   not guarded with `If-Match`; instead no write here ever carries data that was read (routes are
//!   never rewritten when the server's settings change).
//! - A `PUT` of `/config/logging/logs/NAME` creates `logging` and `logging.logs` when missing or
//!   `null`, and `GET` answers the logger as written (keys sorted).
//! - A file logger's file is opened at its first entry, not when the config loads (rolling is on
//!   by default, through lumberjack): a file Caddy cannot write is not refused by the admin API;
//!   each entry then logs `write error: …` to Caddy's own log. Caddy creates missing directories.
//! - Access entries also reach every logger that does not exclude them, Caddy's `default` (its
//!   own log, stderr) included; the `Authorization` and `Cookie` request headers are logged with
//!   empty values, the URI with its query string.

use backon::{ExponentialBuilder, Retryable};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Map, Value};

use crate::model::observed::{ObservedAccessLog, ObservedProxy};
use crate::model::ownership::ROUTE_ID_PREFIX;
use crate::model::writes::{AccessLog, Route, ServerSpec, TlsMode};

/// codeb's logger of `server`'s access log in Caddy's `logging.logs` (`codeb-access` for
/// codeb's server `codeb`), which is also the access logger name the server's `logs` sends
/// entries to (`http.log.access.codeb-access`). One per server: a server name is codeb's, so its
/// logger's is too.
pub fn access_logger(server: &str) -> String {
    format!("{server}-access")
}

/// `@id` of the TLS automation policy that makes Caddy's internal CA issue codeb's certificates.
///
/// It has no `subjects`, so it applies to every name no earlier policy covers: the hostnames of
/// codeb's routes change with every deploy, and keeping a subject list in step would cost one more
/// reload per route change. It is appended after any existing policy, so foreign policies with
/// subjects (and a foreign catch-all, which then wins over it) keep precedence.
pub const TLS_POLICY_ID: &str = "codeb-tls-internal";

/// The `apps.pki.certificate_authorities` key of codeb's own CA (used with [`TlsMode::Internal`]).
pub const CA_ID: &str = "codeb";

/// The admin API is local and answers in milliseconds (p50 3.5 ms per change, measured); two
/// seconds to connect is already a dead Caddy.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A config change reloads Caddy, which waits for the old servers' listeners to hand over; ten
/// seconds is far beyond anything measured and short enough not to stall a reconcile.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Caddy's error answers are short JSON; a longer body is cut in error messages.
const MAX_ERROR_BODY: usize = 512;

/// Errors of the Caddy adapter.
///
/// Worth a retry (see [`Error::is_retryable`]): [`Error::Unreachable`] and [`Error::Timeout`]
/// (Caddy restarting), [`Error::MissingServer`], and [`Error::Api`] with status 404, 409, 412 or
/// 5xx: those mean the config changed between the caller's observation and this write (an id
/// vanished after a Caddy restart with `persist: false`, a key appeared or disappeared), so a new
/// observe and plan will succeed.
/// Not worth a retry until something changes: [`Error::InvalidEndpoint`], [`Error::InvalidName`],
/// [`Error::Client`], [`Error::Rejected`] (Caddy refused the resulting config), other
/// [`Error::Api`] statuses (403: the admin API refuses this origin) and [`Error::Malformed`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The admin address given to [`Caddy::new`] is not usable.
    #[error("invalid Caddy admin endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// A server name or route id that cannot be used in an admin API path, or a route id that is
    /// not codeb's.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for Caddy's admin API")]
    Client(#[source] reqwest::Error),
    /// No connection to the admin API (or it broke mid-request).
    #[error(
        "cannot reach Caddy's admin API at {admin} ({op}): is Caddy running with its admin API on \
         {admin}? (deploy/stack.sh up starts one)"
    )]
    Unreachable {
        admin: String,
        op: String,
        #[source]
        source: reqwest::Error,
    },
    /// Connected, but no answer in time.
    #[error("Caddy's admin API at {admin} did not answer {op} within {timeout:?}")]
    Timeout {
        admin: String,
        op: String,
        timeout: Duration,
    },
    /// Caddy refused a change because it could not load the config it would produce.
    #[error("Caddy at {admin} rejected {op}: {reason}")]
    Rejected {
        admin: String,
        op: String,
        reason: String,
    },
    /// Any other unexpected answer; `body` is Caddy's `error` message when it sent one.
    #[error("Caddy at {admin} answered {status} to {op}: {body}")]
    Api {
        admin: String,
        op: String,
        status: u16,
        body: String,
    },
    /// An answer that is not the JSON Caddy's config can hold.
    #[error("unexpected JSON from Caddy at {admin} for {op}: {detail}")]
    Malformed {
        admin: String,
        op: String,
        detail: String,
    },
    /// codeb's server is not there for a change that needs it (Caddy restarted since it was
    /// observed): the next observe and plan create it first.
    #[error("codeb's server {server:?} is not in Caddy at {admin} (restarted?): {op} needs it")]
    MissingServer {
        admin: String,
        op: String,
        server: String,
    },
}

impl Error {
    /// True when the same call may succeed later without any change to codeb's inputs (after a
    /// fresh observe and plan). See the enum's documentation for the reasons per variant.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout { .. } | Error::MissingServer { .. } => true,
            Error::Api { status, .. } => matches!(status, 404 | 409 | 412) || *status >= 500,
            Error::InvalidEndpoint { .. }
            | Error::InvalidName { .. }
            | Error::Client(_)
            | Error::Rejected { .. }
            | Error::Malformed { .. } => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At the trait's edge: the same text and causes, with [`Error::is_retryable`]'s answer.
impl From<Error> for super::Error {
    fn from(e: Error) -> Self {
        let kind = super::ErrorKind::from_retryable(e.is_retryable());
        super::Error::new(super::Backend::Caddy, kind, e)
    }
}

/// One Caddy, driven through its admin API.
#[derive(Debug)]
pub struct Caddy {
    /// The endpoint as given, without a trailing `/`, for error messages.
    admin: String,
    base: Url,
    client: reqwest::Client,
    /// Successful config changes made through this value; each one was a Caddy reload.
    writes: AtomicU64,
}

impl Caddy {
    /// A client for the admin API at `admin` (`http://127.0.0.1:2019`). Makes no request.
    ///
    /// # Errors
    /// [`Error::InvalidEndpoint`] unless `admin` is an `http://` URL with a host and no path,
    /// query or credentials (Caddy's admin API over HTTPS needs client certificates, which codeb
    /// does not support).
    pub fn new(admin: &str) -> Result<Caddy> {
        Caddy::build(admin, None)
    }

    /// A client for the admin API at `admin` as seen on a remote host, reached through the local
    /// unix socket `relay` (see [`crate::backend::remote`]): requests carry `admin`'s URL, so
    /// paths and messages are the same as for a local Caddy. Makes no request.
    ///
    /// # Errors
    /// As [`Caddy::new`].
    pub fn through(admin: &str, relay: &std::path::Path) -> Result<Caddy> {
        Caddy::build(admin, Some(relay))
    }

    fn build(admin: &str, relay: Option<&std::path::Path>) -> Result<Caddy> {
        let invalid = |reason: &str| Error::InvalidEndpoint {
            endpoint: admin.to_string(),
            reason: reason.to_string(),
        };
        let base =
            Url::parse(admin).map_err(|e| invalid(&format!("{e}; expected http://HOST:PORT")))?;
        if base.scheme() != "http" {
            return Err(invalid(
                "expected an http:// URL such as http://127.0.0.1:2019",
            ));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host; expected http://HOST:PORT"));
        }
        if base.path() != "/" || base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(
                "expected no path, query or fragment, only http://HOST:PORT",
            ));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(invalid("credentials in the URL are not supported"));
        }
        let mut client = crate::backend::http_client();
        if let Some(relay) = relay {
            client = client.unix_socket(relay);
        }
        let client = client
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // The admin API is on the Caddy's own host; an HTTP(S)_PROXY meant for the internet
            // must not see (or break) config changes.
            .no_proxy()
            // Every config change makes Caddy replace its admin server, which closes the
            // connections of the old one: a pooled connection reused after a write fails with
            // "connection reset" or "incomplete message" (seen in 2 of 5 test runs). A fresh
            // loopback connection per call costs well under a millisecond.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(Error::Client)?;
        Ok(Caddy {
            admin: admin.trim_end_matches('/').to_string(),
            base,
            client,
            writes: AtomicU64::new(0),
        })
    }

    /// The admin endpoint, as given to [`Caddy::new`].
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// How many config changes this client has made (each one reloaded Caddy). Lets callers and
    /// tests check that a converged system gets zero writes.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// One request to the admin API. Any HTTP answer is returned; only transport failures are
    /// errors here.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, String)> {
        let op = format!("{method} {path}");
        let url = self.base.join(path).map_err(|e| Error::InvalidName {
            what: "admin API path",
            name: path.to_string(),
            reason: e.to_string(),
        })?;
        let started = Instant::now();
        let transport = |source: reqwest::Error| {
            // A connect timeout is a dead or absent Caddy, not a slow answer.
            if source.is_timeout() && !source.is_connect() {
                Error::Timeout {
                    admin: self.admin.clone(),
                    op: op.clone(),
                    timeout: REQUEST_TIMEOUT,
                }
            } else {
                Error::Unreachable {
                    admin: self.admin.clone(),
                    op: op.clone(),
                    source,
                }
            }
        };
        // Caddy replaces its admin server after every config change, and a connection that lands in
        // that window is refused or reset. A connect-level failure never reached Caddy, so even a
        // POST is safe to send again; a GET is safe to repeat whatever broke. A write that may have
        // reached Caddy is not repeated: the next observe and plan decide. A dead Caddy is reported
        // after ~0.3 s.
        let send = || {
            let mut request = self.client.request(method.clone(), url.clone());
            if let Some(body) = body {
                request = request.json(body);
            }
            request.send()
        };
        let response = send
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(10))
                    .with_max_delay(Duration::from_millis(160))
                    .with_max_times(5)
                    .with_jitter(),
            )
            .when(|e: &reqwest::Error| e.is_connect() || method == Method::GET)
            .await
            .map_err(transport)?;
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        tracing::debug!(
            admin = %self.admin,
            %method,
            path,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "caddy admin call"
        );
        if method != Method::GET && status.is_success() {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok((status, text))
    }

    /// A write that must answer 2xx.
    async fn write(&self, write: &Write) -> Result<()> {
        let (status, body) = self
            .call(write.method.clone(), &write.path, write.body.as_ref())
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.api_error(&write.op(), status, &body))
        }
    }

    async fn get_json(&self, path: &str) -> Result<(StatusCode, Value, String)> {
        let (status, body) = self.call(Method::GET, path, None).await?;
        if !status.is_success() {
            return Ok((status, Value::Null, body));
        }
        // With nothing at a path Caddy answers `null`; an empty body is read the same way.
        if body.trim().is_empty() {
            return Ok((status, Value::Null, body));
        }
        let value =
            serde_json::from_str(&body).map_err(|e| self.malformed(&format!("GET {path}"), e))?;
        Ok((status, value, body))
    }

    fn api_error(&self, op: &str, status: StatusCode, body: &str) -> Error {
        let message = caddy_error_message(body);
        match message.strip_prefix("loading new config: ") {
            Some(reason) => Error::Rejected {
                admin: self.admin.clone(),
                op: op.to_string(),
                reason: reason.to_string(),
            },
            None => Error::Api {
                admin: self.admin.clone(),
                op: op.to_string(),
                status: status.as_u16(),
                body: message,
            },
        }
    }

    fn malformed(&self, op: &str, detail: impl std::fmt::Display) -> Error {
        Error::Malformed {
            admin: self.admin.clone(),
            op: op.to_string(),
            detail: detail.to_string(),
        }
    }
}

impl super::Proxy for Caddy {
    /// One `GET` of the whole config (`/config/`), which holds both the server and codeb's
    /// logger under `logging`: one read per observation, as when only the server was read (the
    /// server is most of a codeb host's config). A missing server (or missing `apps`,
    /// `apps.http`, …, as after a restart with `persist: false`) is `server: None` with no routes.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the server is not a JSON object; transport and API errors.
    async fn observe(&self, server: &str) -> super::Result<ObservedProxy> {
        check_server_name(server)?;
        let path = CONFIG_PATH;
        let (status, config, body) = self.get_json(path).await?;
        if !status.is_success() {
            return Err(self.api_error(&format!("GET {path}"), status, &body).into());
        }
        Ok(observed_from_config(server, &config)
            .map_err(|detail| self.malformed(&format!("GET {path}"), detail))?)
    }

    /// One `GET` of `/config/apps`, then only the writes that differ (none when the server is
    /// already as specified). A missing server is created whole with one `PUT`, which also
    /// creates whichever of `apps`, `apps.http` and `apps.http.servers` is missing. An existing
    /// server gets its `listen`, `automatic_https` and `tls_connection_policies` keys set one by
    /// one; its routes are never rewritten (only an absent `routes` key is created, empty).
    ///
    /// With [`TlsMode::Internal`], codeb's CA and issuer policy are written first, so the server
    /// never serves TLS without them. With [`TlsMode::Auto`], the issuer policy is deleted
    /// afterwards unless another server still has codeb's internal TLS settings (it would
    /// otherwise keep issuing internal certificates instead of ACME ones). With [`TlsMode::Off`]
    /// it is left alone: a server without TLS does not use it.
    ///
    /// # Guarantees
    /// One reload per key that differs: a TLS mode change takes two to four, and a request
    /// arriving between them may fail its TLS handshake. Nothing outside the keys listed above is
    /// written.
    async fn ensure_server(&self, spec: &ServerSpec) -> super::Result<()> {
        check_server_name(&spec.name)?;
        let (status, apps, body) = self.get_json("/config/apps").await?;
        if !status.is_success() {
            return Err(self.api_error("GET /config/apps", status, &body).into());
        }
        let writes = server_writes(&apps, spec)
            .map_err(|detail| self.malformed("GET /config/apps", detail))?;
        for write in &writes {
            self.write(write).await?;
        }
        Ok(())
    }

    /// One `GET` of the whole config, then only the writes that differ (none when the access
    /// log is already as wanted, or off and absent): with a log, codeb's logger
    /// ([`access_logger`]) first, then the server's `logs` naming it, so that the server never
    /// sends entries to a logger that is not there yet; without, the server's `logs` (only when it
    /// is exactly codeb's), then the logger.
    ///
    /// # Guarantees
    /// At most two reloads. Nothing under `logging` but codeb's logger is written, and nothing of
    /// the server but its `logs`.
    ///
    /// # Errors
    /// [`Error::MissingServer`] when a log is wanted and the server is not there.
    async fn ensure_access_log(&self, server: &str, log: Option<&AccessLog>) -> super::Result<()> {
        check_server_name(server)?;
        let op = format!("GET {CONFIG_PATH}");
        let (status, config, body) = self.get_json(CONFIG_PATH).await?;
        if !status.is_success() {
            return Err(self.api_error(&op, status, &body).into());
        }
        let has_server = matches!(
            config.pointer(&format!("/apps/http/servers/{server}")),
            Some(Value::Object(_))
        );
        if log.is_some() && !has_server {
            return Err(Error::MissingServer {
                admin: self.admin.clone(),
                op: "writing its access log".to_string(),
                server: server.to_string(),
            }
            .into());
        }
        for write in &access_log_writes(&config, server, log) {
            self.write(write).await?;
        }
        Ok(())
    }

    /// One `POST` appending the route to the server's `routes`.
    ///
    /// # Assumptions
    /// The server exists (else Caddy answers 500 "invalid traversal path", a retryable
    /// [`Error::Api`]) and no route with this id exists anywhere in this Caddy: Caddy accepts a
    /// duplicate `@id` silently and `/id/…` then means the last one, so the caller's diff must add
    /// only ids it did not observe.
    async fn add_route(&self, server: &str, route: &Route) -> super::Result<()> {
        check_server_name(server)?;
        check_route_id(&route.id)?;
        let path = format!("{}/routes", server_path(server));
        Ok(self
            .write(&Write::new(Method::POST, path, Some(route_json(route))))
            .await?)
    }

    /// One `PATCH /id/{id}` with the whole route.
    ///
    /// # Errors
    /// A missing id is a retryable [`Error::Api`] with status 404.
    async fn replace_route(&self, route: &Route) -> super::Result<()> {
        check_route_id(&route.id)?;
        Ok(self
            .write(&Write::new(
                Method::PATCH,
                id_path(&route.id),
                Some(route_json(route)),
            ))
            .await?)
    }

    /// One `DELETE /id/{id}`; an unknown id is success.
    async fn delete_route(&self, id: &str) -> super::Result<()> {
        check_route_id(id)?;
        let path = id_path(id);
        let (status, body) = self.call(Method::DELETE, &path, None).await?;
        if status.is_success() || is_unknown_id(status, &body) {
            Ok(())
        } else {
            Err(self
                .api_error(&format!("DELETE {path}"), status, &body)
                .into())
        }
    }
}

/// One config change, decided before any is made (so that the decision is testable without Caddy).
#[derive(Debug, Clone, PartialEq)]
struct Write {
    method: Method,
    /// Relative to the admin endpoint: `/config/…` or `/id/…`.
    path: String,
    body: Option<Value>,
}

impl Write {
    fn new(method: Method, path: String, body: Option<Value>) -> Write {
        Write { method, path, body }
    }

    fn op(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// The whole config: what an observation reads.
const CONFIG_PATH: &str = "/config/";

fn server_path(server: &str) -> String {
    format!("/config/apps/http/servers/{server}")
}

fn id_path(id: &str) -> String {
    format!("/id/{id}")
}

/// Names go into admin API paths unescaped, and Caddy splits paths on `/`: allow only characters
/// that cannot change the path's meaning.
fn check_path_segment(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            name: name.to_string(),
            reason: "expected letters, digits, '-', '_' or '.'".to_string(),
        })
    }
}

fn check_server_name(server: &str) -> Result<()> {
    check_path_segment("Caddy server name", server)
}

/// Refuses, before any request, every id that is not codeb's: the adapter can then never change
/// or delete a foreign route, whatever the caller passes.
fn check_route_id(id: &str) -> Result<()> {
    check_path_segment("route id", id)?;
    let reason = if !(id.len() > ROUTE_ID_PREFIX.len() && id.starts_with(ROUTE_ID_PREFIX)) {
        format!("codeb only touches routes whose @id starts with {ROUTE_ID_PREFIX:?}")
    } else if id == TLS_POLICY_ID {
        // `/id/…` reaches any object: this id names codeb's issuer policy, not a route.
        format!("{TLS_POLICY_ID:?} is reserved for codeb's TLS issuer policy")
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        what: "route id",
        name: id.to_string(),
        reason,
    })
}

/// Caddy's `{"error": "…"}` message, else the body itself (cut to a readable length).
fn caddy_error_message(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    if message.len() <= MAX_ERROR_BODY {
        return message;
    }
    let mut end = MAX_ERROR_BODY;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// `/id/X` for an id Caddy does not know: 404 in Caddy 2.6, 500 in some other versions.
fn is_unknown_id(status: StatusCode, body: &str) -> bool {
    (status == StatusCode::NOT_FOUND || status.is_server_error())
        && caddy_error_message(body).starts_with("unknown object ID")
}

/// The one JSON shape of a codeb route, used by every write and by [`route_from_json`] to tell a
/// route codeb wrote from one changed by hand.
///
/// A route without keep-alive gets `transport.keep_alive.enabled: false`: Caddy then opens one
/// upstream connection per request, so a request after a kernel switch never rides a connection
/// the kernel mapped to the old slot (conntrack keeps a connection's target for its lifetime, and
/// under steady load Caddy's pooled connections never go idle long enough to close).
pub fn route_json(route: &Route) -> Value {
    let mut proxy = json!({
        "handler": "reverse_proxy",
        "upstreams": [{ "dial": route.upstream }],
    });
    if !route.keep_alive {
        proxy["transport"] = json!({ "protocol": "http", "keep_alive": { "enabled": false } });
    }
    json!({
        "@id": route.id,
        "match": [{ "host": route.hosts }],
        "handle": [proxy],
        "terminal": true,
    })
}

/// The codeb route in `value`, or `None` when it is not codeb's (no `@id` with the prefix).
///
/// `hosts` are read from every `match[].host` and `upstream` from the first `reverse_proxy`
/// handler's first upstream. When the JSON is not exactly what [`route_json`] writes (an extra
/// handler, a second upstream, another matcher…), `upstream` is returned empty: no desired route
/// has an empty upstream, so the caller's diff always replaces such a route.
fn route_from_json(value: &Value) -> Option<Route> {
    let id = value.get("@id")?.as_str()?;
    if !id.starts_with(ROUTE_ID_PREFIX) {
        return None;
    }
    let hosts = value
        .get("match")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("host")?.as_array())
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_string))
        .collect();
    let proxy = value
        .get("handle")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|h| h.get("handler").and_then(Value::as_str) == Some("reverse_proxy"));
    let upstream = proxy
        .and_then(|h| h.get("upstreams")?.get(0)?.get("dial")?.as_str())
        .unwrap_or_default()
        .to_string();
    let keep_alive = proxy
        .and_then(|h| h.pointer("/transport/keep_alive/enabled")?.as_bool())
        .unwrap_or(true);
    let mut route = Route {
        id: id.to_string(),
        hosts,
        upstream,
        keep_alive,
    };
    if route_json(&route) != *value {
        route.upstream.clear();
    }
    Some(route)
}

/// The values of the TLS-related server keys for a mode: (`automatic_https`,
/// `tls_connection_policies`); `None` means the key is absent.
///
/// Internal also disables Caddy's HTTP→HTTPS redirects: they would make Caddy listen on port 80
/// of the listen host, an address nobody asked codeb to take. Its connection policy turns TLS on
/// whatever the port (Caddy only does so by itself on non-HTTP ports that have host matchers).
fn tls_keys(mode: TlsMode) -> (Option<Value>, Option<Value>) {
    match mode {
        TlsMode::Auto => (None, None),
        TlsMode::Internal => (
            Some(json!({ "disable_redirects": true })),
            Some(json!([{}])),
        ),
        TlsMode::Off => (Some(json!({ "disable": true })), None),
    }
}

/// The TLS mode a server's keys express: `automatic_https.disable: true` is Off; exactly the keys
/// [`tls_keys`] writes for Internal is Internal; anything else is Caddy's default behaviour, Auto.
fn tls_mode_of(server: &Map<String, Value>) -> TlsMode {
    let automatic_https = server.get("automatic_https");
    if automatic_https
        .and_then(|a| a.get("disable"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return TlsMode::Off;
    }
    let (internal_https, internal_policies) = tls_keys(TlsMode::Internal);
    if automatic_https == internal_https.as_ref()
        && server.get("tls_connection_policies") == internal_policies.as_ref()
    {
        return TlsMode::Internal;
    }
    TlsMode::Auto
}

/// The whole server as [`Caddy::ensure_server`] creates it.
fn server_json(spec: &ServerSpec) -> Value {
    let mut server = Map::new();
    server.insert("listen".to_string(), json!(spec.listen));
    server.insert("routes".to_string(), json!([]));
    let (automatic_https, policies) = tls_keys(spec.tls);
    if let Some(value) = automatic_https {
        server.insert("automatic_https".to_string(), value);
    }
    if let Some(value) = policies {
        server.insert("tls_connection_policies".to_string(), value);
    }
    Value::Object(server)
}

/// What `observe` returns for the whole config (`/config/`): the server at
/// `apps.http.servers.{name}` and codeb's access log.
fn observed_from_config(name: &str, config: &Value) -> Result<ObservedProxy, String> {
    let server = config
        .pointer(&format!("/apps/http/servers/{name}"))
        .unwrap_or(&Value::Null);
    let mut observed = observed_from_json(name, server)?;
    observed.access_log = access_log_from_config(name, config);
    Ok(observed)
}

/// The logger codeb writes for `server`'s access log `log` at `logging.logs.{server}-access`:
/// JSON lines of the server's access entries only, to the file, rolled by Caddy.
pub fn logger_json(server: &str, log: &AccessLog) -> Value {
    json!({
        "writer": {
            "output": "file",
            "filename": log.file,
            "roll_size_mb": log.roll_size_mb,
            "roll_keep": log.roll_keep,
        },
        "encoder": { "format": "json" },
        "include": [format!("http.log.access.{}", access_logger(server))],
    })
}

/// The `logs` of `server` that sends its access entries to codeb's logger.
fn server_logs_json(server: &str) -> Value {
    json!({ "default_logger_name": access_logger(server) })
}

/// The access log `logger` of `server` describes, when it is exactly what [`logger_json`] writes.
fn access_log_from_json(server: &str, logger: &Value) -> Option<AccessLog> {
    let writer = logger.get("writer")?;
    let number = |key: &str| writer.get(key)?.as_u64()?.try_into().ok();
    let log = AccessLog {
        file: writer.get("filename")?.as_str()?.to_string(),
        roll_size_mb: number("roll_size_mb")?,
        roll_keep: number("roll_keep")?,
    };
    (logger_json(server, &log) == *logger).then_some(log)
}

/// codeb's access log in `config`: its logger and the `logs` of server `name`.
fn access_log_from_config(name: &str, config: &Value) -> ObservedAccessLog {
    let logger = config
        .pointer(&format!("/logging/logs/{}", access_logger(name)))
        .filter(|l| !l.is_null());
    let logs = config.pointer(&format!("/apps/http/servers/{name}/logs"));
    match (logger, logs == Some(&server_logs_json(name))) {
        (None, false) => ObservedAccessLog::Absent,
        (Some(logger), true) => match access_log_from_json(name, logger) {
            Some(log) => ObservedAccessLog::Is(log),
            None => ObservedAccessLog::Other,
        },
        _ => ObservedAccessLog::Other,
    }
}

/// The ordered writes that make `config` hold codeb's access log `log` for server `name`, or
/// none of it (`None`); empty when it already does. See [`Caddy::ensure_access_log`].
fn access_log_writes(config: &Value, name: &str, log: Option<&AccessLog>) -> Vec<Write> {
    let logger_path = format!("/config/logging/logs/{}", access_logger(name));
    let logger = config.pointer(&format!("/logging/logs/{}", access_logger(name)));
    let logs_path = format!("{}/logs", server_path(name));
    let logs = config.pointer(&format!("/apps/http/servers/{name}/logs"));
    let mut writes = Vec::new();
    match log {
        Some(log) => {
            writes.extend(set_key(logger_path, logger, Some(logger_json(name, log))));
            writes.extend(set_key(logs_path, logs, Some(server_logs_json(name))));
        }
        None => {
            // A `logs` of the server that codeb did not write is the operator's.
            if logs == Some(&server_logs_json(name)) {
                writes.extend(set_key(logs_path, logs, None));
            }
            writes.extend(set_key(logger_path, logger, None));
        }
    }
    writes
}

/// What `observe` returns for the JSON at `apps.http.servers.{name}` (the access log aside).
fn observed_from_json(name: &str, value: &Value) -> Result<ObservedProxy, String> {
    let server = match value {
        Value::Null => return Ok(ObservedProxy::default()),
        Value::Object(server) => server,
        other => return Err(format!("server {name:?} is not a JSON object: {other}")),
    };
    let listen = match server.get("listen") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect(),
        Some(other) => {
            return Err(format!(
                "server {name:?} has a listen that is not an array: {other}"
            ))
        }
    };
    let routes = match server.get("routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(routes)) => routes.iter().filter_map(route_from_json).collect(),
        Some(other) => {
            return Err(format!(
                "server {name:?} has routes that are not an array: {other}"
            ))
        }
    };
    Ok(ObservedProxy {
        server: Some(ServerSpec {
            name: name.to_string(),
            listen,
            tls: tls_mode_of(server),
        }),
        routes,
        access_log: ObservedAccessLog::Absent,
    })
}

/// The write that takes the key at `path` from `current` to `desired` (`None`: absent), if any.
/// A key present with a `null` value must be PATCHed: Caddy's PUT refuses any existing key.
fn set_key(path: String, current: Option<&Value>, desired: Option<Value>) -> Option<Write> {
    match (current, desired) {
        (None, None) => None,
        (Some(current), Some(desired)) if *current == desired => None,
        (None, Some(desired)) => Some(Write::new(Method::PUT, path, Some(desired))),
        (Some(_), Some(desired)) => Some(Write::new(Method::PATCH, path, Some(desired))),
        (Some(_), None) => Some(Write::new(Method::DELETE, path, None)),
    }
}

/// The ordered writes that make `apps` (the JSON at `/config/apps`) hold `spec`; empty when it
/// already does. See [`Caddy::ensure_server`] for the rules.
fn server_writes(apps: &Value, spec: &ServerSpec) -> Result<Vec<Write>, String> {
    let mut writes = Vec::new();
    if spec.tls == TlsMode::Internal {
        writes.extend(internal_issuer_writes(apps)?);
    }
    let path = server_path(&spec.name);
    let servers = apps.pointer("/http/servers");
    match servers.and_then(|s| s.get(&spec.name)) {
        None | Some(Value::Null) => {
            let current = servers.and_then(|s| s.get(&spec.name));
            writes.extend(set_key(path, current, Some(server_json(spec))));
        }
        Some(Value::Object(server)) => {
            let (automatic_https, policies) = tls_keys(spec.tls);
            let keys = [
                ("listen", Some(json!(spec.listen))),
                ("automatic_https", automatic_https),
                ("tls_connection_policies", policies),
            ];
            for (key, desired) in keys {
                writes.extend(set_key(format!("{path}/{key}"), server.get(key), desired));
            }
            // POSTing a route where `routes` is absent or null would store the route object
            // itself as `routes`, which Caddy then cannot load.
            match server.get("routes") {
                Some(Value::Array(_)) => {}
                current @ (None | Some(Value::Null)) => {
                    writes.extend(set_key(format!("{path}/routes"), current, Some(json!([]))));
                }
                Some(other) => {
                    return Err(format!(
                        "server {:?} has routes that are not an array: {other}",
                        spec.name
                    ))
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "server {:?} is not a JSON object: {other}",
                spec.name
            ))
        }
    }
    if spec.tls == TlsMode::Auto && find_policy(apps)?.is_some() {
        let other_internal = servers
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(name, _)| **name != spec.name)
            .any(|(_, server)| {
                server
                    .as_object()
                    .is_some_and(|s| tls_mode_of(s) == TlsMode::Internal)
            });
        if !other_internal {
            writes.push(Write::new(Method::DELETE, id_path(TLS_POLICY_ID), None));
        }
    }
    Ok(writes)
}

/// codeb's issuer policy as written.
fn tls_policy_json() -> Value {
    json!({
        "@id": TLS_POLICY_ID,
        "issuers": [{ "module": "internal", "ca": CA_ID }],
    })
}

/// codeb's policy in `apps.tls.automation.policies`, if there.
fn find_policy(apps: &Value) -> Result<Option<&Value>, String> {
    match apps.pointer("/tls/automation/policies") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(policies)) => Ok(policies
            .iter()
            .find(|p| p.get("@id").and_then(Value::as_str) == Some(TLS_POLICY_ID))),
        Some(other) => Err(format!(
            "apps.tls.automation.policies is not an array: {other}"
        )),
    }
}

/// The writes that give codeb's CA `install_trust: false` and put codeb's issuer policy in place.
fn internal_issuer_writes(apps: &Value) -> Result<Vec<Write>, String> {
    let mut writes = Vec::new();
    let ca_path = format!("/config/apps/pki/certificate_authorities/{CA_ID}");
    match apps.pointer(&format!("/pki/certificate_authorities/{CA_ID}")) {
        current @ (None | Some(Value::Null)) => {
            writes.extend(set_key(
                ca_path,
                current,
                Some(json!({ "install_trust": false })),
            ));
        }
        // Other settings of codeb's CA (a name, lifetimes) set by an operator are kept.
        Some(Value::Object(ca)) => {
            writes.extend(set_key(
                format!("{ca_path}/install_trust"),
                ca.get("install_trust"),
                Some(json!(false)),
            ));
        }
        Some(other) => {
            return Err(format!(
                "the pki CA {CA_ID:?} is not a JSON object: {other}"
            ))
        }
    }
    let policies_path = "/config/apps/tls/automation/policies".to_string();
    let wanted = tls_policy_json();
    match find_policy(apps)? {
        Some(current) if *current == wanted => {}
        Some(_) => writes.push(Write::new(
            Method::PATCH,
            id_path(TLS_POLICY_ID),
            Some(wanted),
        )),
        None => match apps.pointer("/tls/automation/policies") {
            // Appended: foreign policies listed before it keep precedence.
            Some(Value::Array(_)) => {
                writes.push(Write::new(Method::POST, policies_path, Some(wanted)))
            }
            current => writes.extend(set_key(policies_path, current, Some(json!([wanted])))),
        },
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, hosts: &[&str], upstream: &str) -> Route {
        Route {
            id: id.to_string(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            upstream: upstream.to_string(),
            keep_alive: true,
        }
    }

    fn spec(tls: TlsMode) -> ServerSpec {
        ServerSpec {
            name: "codeb".to_string(),
            listen: vec![":80".to_string(), ":443".to_string()],
            tls,
        }
    }

    fn write(method: Method, path: &str, body: Option<Value>) -> Write {
        Write::new(method, path.to_string(), body)
    }

    /// `/config/apps` holding `server` as codeb's server, next to a foreign one.
    fn apps_with(server: Value) -> Value {
        json!({ "http": { "servers": { "codeb": server, "other": { "listen": [":8080"] } } } })
    }

    #[test]
    fn a_route_is_written_in_the_one_shape_codeb_owns() {
        let json = route_json(&route(
            "codeb-shop-prod",
            &["shop.example", "www.shop.example"],
            "127.0.0.1:20001",
        ));
        assert_eq!(
            json,
            json!({
                "@id": "codeb-shop-prod",
                "match": [{ "host": ["shop.example", "www.shop.example"] }],
                "handle": [{ "handler": "reverse_proxy", "upstreams": [{ "dial": "127.0.0.1:20001" }] }],
                "terminal": true,
            })
        );
    }

    #[test]
    fn a_route_without_keep_alive_reads_back_as_such() {
        let mut original = route("codeb-shop_prod", &["shop.example"], "10.89.144.1:4051");
        original.keep_alive = false;
        let json = route_json(&original);
        assert_eq!(
            json["handle"][0]["transport"],
            json!({ "protocol": "http", "keep_alive": { "enabled": false } })
        );
        assert_eq!(route_from_json(&json), Some(original));
    }

    #[test]
    fn a_written_route_reads_back_as_the_same_route() {
        let original = route(
            "codeb-shop-prod",
            &["shop.example", "www.shop.example"],
            "127.0.0.1:20001",
        );
        assert_eq!(route_from_json(&route_json(&original)), Some(original));
    }

    #[test]
    fn routes_without_the_codeb_prefix_are_never_returned() {
        let server = json!({
            "listen": [":80"],
            "routes": [
                { "@id": "shop-legacy", "handle": [{ "handler": "static_response", "body": "hi" }] },
                { "match": [{ "host": ["anon.example"] }], "handle": [{ "handler": "reverse_proxy", "upstreams": [{ "dial": "10.0.0.1:80" }] }] },
                { "@id": 7 },
                route_json(&route("codeb-a", &["a.example"], "127.0.0.1:1")),
                "not a route",
            ],
        });
        let observed = observed_from_json("codeb", &server).unwrap();
        assert_eq!(
            observed.routes,
            vec![route("codeb-a", &["a.example"], "127.0.0.1:1")]
        );
    }

    #[test]
    fn a_codeb_route_changed_by_hand_is_returned_with_an_empty_upstream_so_the_diff_replaces_it() {
        let mut json = route_json(&route("codeb-a", &["a.example"], "127.0.0.1:1"));
        json["handle"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({ "handler": "headers" }));
        assert_eq!(
            route_from_json(&json),
            Some(route("codeb-a", &["a.example"], ""))
        );
    }

    #[test]
    fn a_codeb_route_of_another_shape_is_returned_with_what_could_be_read() {
        let json = json!({ "@id": "codeb-b", "handle": [{ "handler": "static_response" }] });
        assert_eq!(route_from_json(&json), Some(route("codeb-b", &[], "")));
        let json = json!({ "@id": "codeb-c", "match": [{ "host": ["c.example", 3] }, { "path": ["/x"] }] });
        assert_eq!(
            route_from_json(&json),
            Some(route("codeb-c", &["c.example"], ""))
        );
    }

    #[test]
    fn a_missing_server_is_observed_as_none_with_no_routes() {
        assert_eq!(
            observed_from_json("codeb", &Value::Null).unwrap(),
            ObservedProxy::default()
        );
    }

    #[test]
    fn a_server_that_is_not_an_object_is_malformed() {
        assert!(observed_from_json("codeb", &json!("text")).is_err());
        assert!(observed_from_json("codeb", &json!({ "routes": {} })).is_err());
    }

    #[test]
    fn every_tls_mode_reads_back_from_the_server_ensure_server_creates() {
        for mode in [TlsMode::Auto, TlsMode::Internal, TlsMode::Off] {
            let observed = observed_from_json("codeb", &server_json(&spec(mode))).unwrap();
            assert_eq!(
                observed,
                ObservedProxy {
                    server: Some(spec(mode)),
                    ..ObservedProxy::default()
                },
                "{mode:?}"
            );
        }
    }

    #[test]
    fn a_server_with_automatic_https_disabled_is_off_whatever_else_it_holds() {
        let server = json!({ "listen": [":80"], "automatic_https": { "disable": true, "skip": ["x"] }, "tls_connection_policies": [{}] });
        assert_eq!(
            observed_from_json("codeb", &server)
                .unwrap()
                .server
                .unwrap()
                .tls,
            TlsMode::Off
        );
    }

    #[test]
    fn connection_policies_codeb_did_not_write_read_as_auto() {
        let server = json!({ "listen": [":443"], "tls_connection_policies": [{ "match": { "sni": ["a"] } }] });
        assert_eq!(
            observed_from_json("codeb", &server)
                .unwrap()
                .server
                .unwrap()
                .tls,
            TlsMode::Auto
        );
    }

    #[test]
    fn the_off_server_is_created_with_automatic_https_disabled_and_no_routes() {
        assert_eq!(
            server_json(&spec(TlsMode::Off)),
            json!({ "listen": [":80", ":443"], "routes": [], "automatic_https": { "disable": true } })
        );
    }

    #[test]
    fn a_missing_server_is_created_by_one_put_whichever_parents_are_missing() {
        let put = vec![write(
            Method::PUT,
            "/config/apps/http/servers/codeb",
            Some(server_json(&spec(TlsMode::Off))),
        )];
        for apps in [
            Value::Null,
            json!({}),
            json!({ "pki": { "certificate_authorities": {} } }),
            json!({ "http": {} }),
            json!({ "http": { "servers": null } }),
            json!({ "http": { "servers": { "other": { "listen": [":8080"] } } } }),
        ] {
            assert_eq!(
                server_writes(&apps, &spec(TlsMode::Off)).unwrap(),
                put,
                "apps: {apps}"
            );
        }
    }

    #[test]
    fn a_null_server_is_patched_because_caddy_refuses_to_put_an_existing_key() {
        let writes = server_writes(&apps_with(Value::Null), &spec(TlsMode::Off)).unwrap();
        assert_eq!(
            writes,
            vec![write(
                Method::PATCH,
                "/config/apps/http/servers/codeb",
                Some(server_json(&spec(TlsMode::Off)))
            )]
        );
    }

    #[test]
    fn a_server_already_as_specified_gets_no_write_whatever_its_routes() {
        let mut server = server_json(&spec(TlsMode::Off));
        server["routes"] =
            json!([{ "@id": "foreign" }, route_json(&route("codeb-a", &["a"], "b:1"))]);
        assert_eq!(
            server_writes(&apps_with(server), &spec(TlsMode::Off)).unwrap(),
            vec![]
        );
    }

    #[test]
    fn an_existing_server_gets_only_its_listen_and_tls_keys_written_never_its_routes() {
        let server = json!({
            "listen": [":8080"],
            "routes": [{ "@id": "foreign" }],
            "tls_connection_policies": [{}],
            "logs": {},
        });
        let writes = server_writes(&apps_with(server), &spec(TlsMode::Off)).unwrap();
        assert_eq!(
            writes,
            vec![
                write(
                    Method::PATCH,
                    "/config/apps/http/servers/codeb/listen",
                    Some(json!([":80", ":443"]))
                ),
                write(
                    Method::PUT,
                    "/config/apps/http/servers/codeb/automatic_https",
                    Some(json!({ "disable": true }))
                ),
                write(
                    Method::DELETE,
                    "/config/apps/http/servers/codeb/tls_connection_policies",
                    None
                ),
            ]
        );
    }

    #[test]
    fn an_existing_server_without_routes_gets_an_empty_route_list() {
        let server = json!({ "listen": [":80", ":443"], "automatic_https": { "disable": true } });
        let writes = server_writes(&apps_with(server), &spec(TlsMode::Off)).unwrap();
        assert_eq!(
            writes,
            vec![write(
                Method::PUT,
                "/config/apps/http/servers/codeb/routes",
                Some(json!([]))
            )]
        );
    }

    #[test]
    fn internal_tls_puts_codebs_ca_and_issuer_policy_before_creating_the_server() {
        let writes = server_writes(&Value::Null, &spec(TlsMode::Internal)).unwrap();
        assert_eq!(
            writes,
            vec![
                write(
                    Method::PUT,
                    "/config/apps/pki/certificate_authorities/codeb",
                    Some(json!({ "install_trust": false }))
                ),
                write(
                    Method::PUT,
                    "/config/apps/tls/automation/policies",
                    Some(json!([tls_policy_json()]))
                ),
                write(
                    Method::PUT,
                    "/config/apps/http/servers/codeb",
                    Some(server_json(&spec(TlsMode::Internal)))
                ),
            ]
        );
    }

    #[test]
    fn internal_tls_appends_its_policy_after_foreign_policies_and_keeps_the_cas_other_settings() {
        let apps = json!({
            "pki": { "certificate_authorities": { "codeb": { "name": "Ops CA", "install_trust": true } } },
            "tls": { "automation": { "policies": [{ "subjects": ["foreign.example"] }] } },
            "http": { "servers": { "codeb": server_json(&spec(TlsMode::Internal)) } },
        });
        let writes = server_writes(&apps, &spec(TlsMode::Internal)).unwrap();
        assert_eq!(
            writes,
            vec![
                write(
                    Method::PATCH,
                    "/config/apps/pki/certificate_authorities/codeb/install_trust",
                    Some(json!(false))
                ),
                write(
                    Method::POST,
                    "/config/apps/tls/automation/policies",
                    Some(tls_policy_json())
                ),
            ]
        );
    }

    #[test]
    fn internal_tls_already_in_place_gets_no_write() {
        let apps = json!({
            "pki": { "certificate_authorities": { "codeb": { "install_trust": false } } },
            "tls": { "automation": { "policies": [{ "subjects": ["x"] }, tls_policy_json()] } },
            "http": { "servers": { "codeb": server_json(&spec(TlsMode::Internal)) } },
        });
        assert_eq!(
            server_writes(&apps, &spec(TlsMode::Internal)).unwrap(),
            vec![]
        );
    }

    #[test]
    fn a_changed_issuer_policy_is_replaced_by_its_id() {
        let apps = json!({
            "pki": { "certificate_authorities": { "codeb": { "install_trust": false } } },
            "tls": { "automation": { "policies": [{ "@id": TLS_POLICY_ID, "issuers": [{ "module": "acme" }] }] } },
            "http": { "servers": { "codeb": server_json(&spec(TlsMode::Internal)) } },
        });
        let writes = server_writes(&apps, &spec(TlsMode::Internal)).unwrap();
        assert_eq!(
            writes,
            vec![write(
                Method::PATCH,
                "/id/codeb-tls-internal",
                Some(tls_policy_json())
            )]
        );
    }

    #[test]
    fn auto_tls_removes_codebs_issuer_policy_unless_another_server_still_uses_it() {
        let tls = json!({ "automation": { "policies": [tls_policy_json()] } });
        let internal = server_json(&spec(TlsMode::Internal));
        let apps = json!({ "tls": tls, "http": { "servers": { "codeb": internal } } });
        let writes = server_writes(&apps, &spec(TlsMode::Auto)).unwrap();
        assert_eq!(
            writes,
            vec![
                write(
                    Method::DELETE,
                    "/config/apps/http/servers/codeb/automatic_https",
                    None
                ),
                write(
                    Method::DELETE,
                    "/config/apps/http/servers/codeb/tls_connection_policies",
                    None
                ),
                write(Method::DELETE, "/id/codeb-tls-internal", None),
            ]
        );
        let apps = json!({ "tls": tls, "http": { "servers": { "codeb": server_json(&spec(TlsMode::Auto)), "codeb2": internal } } });
        assert_eq!(server_writes(&apps, &spec(TlsMode::Auto)).unwrap(), vec![]);
    }

    #[test]
    fn off_tls_leaves_codebs_issuer_policy_alone() {
        let apps = json!({
            "tls": { "automation": { "policies": [tls_policy_json()] } },
            "http": { "servers": { "codeb": server_json(&spec(TlsMode::Off)) } },
        });
        assert_eq!(server_writes(&apps, &spec(TlsMode::Off)).unwrap(), vec![]);
    }

    fn log(file: &str) -> AccessLog {
        AccessLog {
            file: file.to_string(),
            roll_size_mb: 100,
            roll_keep: 10,
        }
    }

    /// A config with codeb's server (with `logs` if given), codeb's logger (if given), and a
    /// foreign logger and default logger beside it.
    fn config_with(logs: Option<Value>, logger: Option<Value>) -> Value {
        let mut server = server_json(&spec(TlsMode::Off));
        if let Some(logs) = logs {
            server["logs"] = logs;
        }
        let mut loggers = json!({
            "default": { "exclude": ["http.log.access.other"] },
            "other": { "writer": { "output": "file", "filename": "/var/log/other.log" }, "include": ["http.log.access.other"] },
        });
        if let Some(logger) = logger {
            loggers["codeb-access"] = logger;
        }
        json!({
            "apps": { "http": { "servers": { "codeb": server, "other": { "listen": [":8080"], "logs": { "default_logger_name": "other" } } } } },
            "logging": { "logs": loggers },
        })
    }

    #[test]
    fn codebs_logger_takes_only_its_servers_access_entries_as_json_to_the_file() {
        assert_eq!(
            logger_json("codeb", &log("/var/log/caddy/codeb-local.access.log")),
            json!({
                "writer": { "output": "file", "filename": "/var/log/caddy/codeb-local.access.log", "roll_size_mb": 100, "roll_keep": 10 },
                "encoder": { "format": "json" },
                "include": ["http.log.access.codeb-access"],
            })
        );
        assert_eq!(
            server_logs_json("codeb"),
            json!({ "default_logger_name": "codeb-access" })
        );
    }

    #[test]
    fn the_access_log_is_observed_from_the_one_read_of_the_whole_config() {
        let ours = log("/l/codeb-a.access.log");
        let logs = Some(server_logs_json("codeb"));
        let logger = Some(logger_json("codeb", &ours));
        let observed = |config: &Value| observed_from_config("codeb", config).unwrap();
        let both = observed(&config_with(logs.clone(), logger.clone()));
        assert_eq!(both.access_log, ObservedAccessLog::Is(ours.clone()));
        assert_eq!(both.server, Some(spec(TlsMode::Off)));
        assert_eq!(
            observed(&config_with(None, None)).access_log,
            ObservedAccessLog::Absent
        );
        // A `logs` naming another logger is not codeb's: absent.
        let foreign = Some(json!({ "default_logger_name": "ops" }));
        assert_eq!(
            observed(&config_with(foreign.clone(), None)).access_log,
            ObservedAccessLog::Absent
        );
        // Half there, or changed by hand: other.
        let mut edited = logger_json("codeb", &ours);
        edited["level"] = json!("ERROR");
        for (logs, logger) in [
            (logs.clone(), None),
            (None, logger.clone()),
            (foreign, logger.clone()),
            (logs.clone(), Some(edited)),
            (
                logs.clone(),
                Some(json!({ "writer": { "output": "stderr" } })),
            ),
            (
                Some(json!({ "default_logger_name": "codeb-access", "skip_hosts": ["a"] })),
                logger,
            ),
        ] {
            assert_eq!(
                observed(&config_with(logs.clone(), logger.clone())).access_log,
                ObservedAccessLog::Other,
                "{logs:?} {logger:?}"
            );
        }
        // No config at all, as a Caddy started with none.
        assert_eq!(observed(&Value::Null), ObservedProxy::default());
    }

    #[test]
    fn an_access_log_is_written_logger_first_then_the_servers_logs() {
        let wanted = log("/var/log/caddy/codeb-local.access.log");
        let put_logger = write(
            Method::PUT,
            "/config/logging/logs/codeb-access",
            Some(logger_json("codeb", &wanted)),
        );
        let put_logs = write(
            Method::PUT,
            "/config/apps/http/servers/codeb/logs",
            Some(server_logs_json("codeb")),
        );
        assert_eq!(
            access_log_writes(&config_with(None, None), "codeb", Some(&wanted)),
            vec![put_logger.clone(), put_logs.clone()]
        );
        // Without any `logging`: the PUT creates it.
        let bare = json!({ "apps": { "http": { "servers": { "codeb": server_json(&spec(TlsMode::Off)) } } } });
        assert_eq!(
            access_log_writes(&bare, "codeb", Some(&wanted)),
            vec![put_logger, put_logs]
        );
    }

    #[test]
    fn an_access_log_in_place_gets_no_write_and_a_moved_one_only_its_logger() {
        let wanted = log("/var/log/caddy/codeb-local.access.log");
        let config = config_with(
            Some(server_logs_json("codeb")),
            Some(logger_json("codeb", &wanted)),
        );
        assert_eq!(access_log_writes(&config, "codeb", Some(&wanted)), vec![]);
        let moved = log("/srv/log/local.log");
        assert_eq!(
            access_log_writes(&config, "codeb", Some(&moved)),
            vec![write(
                Method::PATCH,
                "/config/logging/logs/codeb-access",
                Some(logger_json("codeb", &moved))
            )]
        );
    }

    #[test]
    fn a_foreign_logs_key_of_codebs_server_is_replaced_while_on_and_left_while_off() {
        let wanted = log("/l/a.log");
        let foreign = json!({ "default_logger_name": "ops" });
        let config = config_with(Some(foreign), None);
        assert_eq!(
            access_log_writes(&config, "codeb", Some(&wanted)),
            vec![
                write(
                    Method::PUT,
                    "/config/logging/logs/codeb-access",
                    Some(logger_json("codeb", &wanted))
                ),
                write(
                    Method::PATCH,
                    "/config/apps/http/servers/codeb/logs",
                    Some(server_logs_json("codeb"))
                ),
            ]
        );
        assert_eq!(access_log_writes(&config, "codeb", None), vec![]);
    }

    #[test]
    fn an_access_log_turned_off_removes_the_servers_logs_then_codebs_logger_only() {
        let config = config_with(
            Some(server_logs_json("codeb")),
            Some(logger_json("codeb", &log("/l/a.log"))),
        );
        let writes = access_log_writes(&config, "codeb", None);
        assert_eq!(
            writes,
            vec![
                write(Method::DELETE, "/config/apps/http/servers/codeb/logs", None),
                write(Method::DELETE, "/config/logging/logs/codeb-access", None),
            ]
        );
        // Never a write to `logging` as a whole, the default logger or another logger.
        for w in &writes {
            assert!(
                w.path.ends_with("/codeb-access") || w.path.ends_with("/codeb/logs"),
                "{w:?}"
            );
        }
        assert_eq!(
            access_log_writes(&config_with(None, None), "codeb", None),
            vec![]
        );
    }

    #[test]
    fn caddys_refusal_to_load_a_config_is_a_rejection_that_is_not_retried() {
        let caddy = Caddy::new("http://127.0.0.1:2019").unwrap();
        let body = r#"{"error":"loading new config: http app module: start: listening on :80: bind: address already in use"}"#;
        let error = caddy.api_error(
            "PUT /config/apps/http/servers/codeb",
            StatusCode::INTERNAL_SERVER_ERROR,
            body,
        );
        assert!(
            matches!(&error, Error::Rejected { reason, .. } if reason.starts_with("http app module")),
            "{error:?}"
        );
        assert!(!error.is_retryable());
        let body = r#"{"error":"[/config/apps/http/servers/codeb] key already exists: codeb"}"#;
        let error = caddy.api_error(
            "PUT /config/apps/http/servers/codeb",
            StatusCode::INTERNAL_SERVER_ERROR,
            body,
        );
        assert!(
            matches!(&error, Error::Api { status: 500, body, .. } if body.contains("key already exists")),
            "{error:?}"
        );
        assert!(error.is_retryable());
        let error = caddy.api_error(
            "GET /config/apps",
            StatusCode::FORBIDDEN,
            r#"{"error":"host not allowed: x"}"#,
        );
        assert!(!error.is_retryable());
    }

    #[test]
    fn an_unknown_id_is_recognised_in_caddys_404_and_500_answers() {
        let body = r#"{"error":"unknown object ID 'codeb-x'"}"#;
        assert!(is_unknown_id(StatusCode::NOT_FOUND, body));
        assert!(is_unknown_id(StatusCode::INTERNAL_SERVER_ERROR, body));
        assert!(!is_unknown_id(StatusCode::BAD_REQUEST, body));
        assert!(!is_unknown_id(
            StatusCode::NOT_FOUND,
            r#"{"error":"something else"}"#
        ));
    }

    #[test]
    fn only_plain_http_admin_urls_are_accepted() {
        assert_eq!(
            Caddy::new("http://127.0.0.1:2019/").unwrap().admin(),
            "http://127.0.0.1:2019"
        );
        for bad in [
            "127.0.0.1:2019",
            "https://127.0.0.1:2019",
            "http://127.0.0.1:2019/config",
            "unix:///run/caddy.sock",
            "http://u:p@h:1",
        ] {
            assert!(
                matches!(Caddy::new(bad), Err(Error::InvalidEndpoint { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_and_names_that_would_change_the_admin_path_or_are_not_codebs_are_refused() {
        assert!(check_route_id("codeb-shop-prod").is_ok());
        for bad in [
            "shop",
            "codeb-",
            TLS_POLICY_ID,
            "codeb-a/../x",
            "codeb-a b",
            "codeb-a?x",
            "",
        ] {
            assert!(check_route_id(bad).is_err(), "{bad}");
        }
        assert!(check_server_name("codeb").is_ok());
        assert!(check_server_name("a/b").is_err());
        assert!(check_server_name("..").is_err());
    }
}
