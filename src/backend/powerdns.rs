//! The PowerDNS adapter: one zone's rrsets through the authoritative server's HTTP API (v1).
//!
//! Responsible for converting between the API's JSON and [`ObservedZone`] / [`RrsetChange`], and
//! for sending a zone's changes as one `PATCH`. It must not decide anything (which rrsets should
//! exist, and which are codeb's to change, is the planner's business), must not retry, and must
//! never let the API key reach a message, a log line or a `Debug` output: the key lives only in a
//! header value marked sensitive.
//!
//! # API facts this relies on (PowerDNS Authoritative 4.7, gsqlite3, measured)
//! - Names are canonical, with a trailing dot, or the API answers 422.
//! - `GET /zones/{zone}.` answers the zone with every rrset, comments included, or `404 Not Found`
//!   (plain text) for a missing zone and for an unknown server id alike.
//! - `PATCH` with `changetype: REPLACE` replaces the whole rrset (`ttl` required); `comments: []`
//!   clears its comments and an omitted `comments` keeps them, so codeb always sends its mark.
//!   `DELETE` of a missing rrset succeeds. A `PATCH` is one transaction and bumps the SOA serial
//!   once, even when it changes nothing (an empty `rrsets` list too): callers never send one.
//! - A CNAME beside any other type answers `422 {"error": "… Conflicts with pre-existing RRset"}`.
//! - A wrong key answers `401 Unauthorized`; creating an existing zone answers `409 Conflict`.
//! - The server answers with `Connection: close`, so connections are never reused anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::model::observed::ObservedZone;
use crate::model::ownership::DNS_ACCOUNT;
use crate::model::writes::{Rrset, RrsetChange};

/// The API is a local HTTP server answering in milliseconds; two seconds to connect is a dead one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A `PATCH` of a few hundred rrsets into gsqlite3 takes tens of milliseconds (see
/// `benches/dns-100-projects.sh`); ten seconds is far beyond that and short enough not to stall a
/// reconcile.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// PowerDNS's error answers are one short line; a longer body is cut in messages.
const MAX_ERROR_BODY: usize = 512;

/// Errors of the PowerDNS adapter. None of them holds the API key.
///
/// Worth a retry: [`Error::Unreachable`], [`Error::Timeout`] and [`Error::Api`] with a 5xx status.
/// Not worth one until something changes: a bad endpoint, key or server id, a change the server
/// refuses ([`Error::Rejected`]) and an answer it cannot read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid PowerDNS API endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The variable's value cannot be sent as an HTTP header (a control character or non-ASCII).
    #[error("the API key in ${env} is not a valid HTTP header value (printable ASCII expected)")]
    InvalidKey { env: String },
    #[error("cannot build the HTTP client for PowerDNS's API")]
    Client(#[source] reqwest::Error),
    #[error(
        "cannot reach PowerDNS's API at {api} ({op}): is pdns_server running with `api=yes`, \
         `webserver=yes` and its webserver on that address? (deploy/stack.sh up starts one)"
    )]
    Unreachable {
        api: String,
        op: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("PowerDNS's API at {api} did not answer {op} within {timeout:?}")]
    Timeout {
        api: String,
        op: String,
        timeout: Duration,
    },
    /// 401/403: the key is wrong, or this client's address is not in `webserver-allow-from`.
    #[error(
        "PowerDNS at {api} refused the API key from ${env} (HTTP {status} to {op}): set {env} to \
         the server's `api-key`"
    )]
    Unauthorized {
        api: String,
        env: String,
        op: String,
        status: u16,
    },
    #[error("PowerDNS at {api} has no server `{server_id}` (check the Zone's `serverId`)")]
    NoServer { api: String, server_id: String },
    /// The server refused the change (400/422): its message says why.
    #[error("PowerDNS at {api} refused {op}: {message}")]
    Rejected {
        api: String,
        op: String,
        message: String,
    },
    #[error("PowerDNS at {api} answered {status} to {op}: {body}")]
    Api {
        api: String,
        op: String,
        status: u16,
        body: String,
    },
    #[error("unexpected answer from PowerDNS at {api} to {op}: {detail}")]
    Malformed {
        api: String,
        op: String,
        detail: String,
    },
}

impl Error {
    /// True when the same call may succeed later without any change to codeb's inputs.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout { .. } => true,
            Error::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At the trait's edge: the same text and causes, with [`Error::is_retryable`]'s answer.
impl From<Error> for super::Error {
    fn from(e: Error) -> Self {
        let kind = super::ErrorKind::from_retryable(e.is_retryable());
        super::Error::new(super::Backend::PowerDns, kind, e)
    }
}

/// One PowerDNS server (one `serverId` of one API), as used for one Zone.
pub struct PowerDns {
    /// The endpoint as given, without a trailing `/`, for messages.
    api: String,
    server_id: String,
    /// `{api}/api/v1/servers/{server_id}/`.
    base: Url,
    /// Marked sensitive: never printed by reqwest's or our `Debug`.
    key: HeaderValue,
    /// The name of the variable the key came from, for messages.
    key_env: String,
    client: reqwest::Client,
    /// Successful writes made through this value.
    writes: AtomicU64,
}

impl std::fmt::Debug for PowerDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerDns")
            .field("api", &self.api)
            .field("server_id", &self.server_id)
            .field("key_env", &self.key_env)
            .finish_non_exhaustive()
    }
}

impl PowerDns {
    /// A client for `api` (`http://127.0.0.1:8081`), server `server_id`, with the key read from
    /// the variable `key_env` by the caller. Makes no request.
    ///
    /// # Errors
    /// [`Error::InvalidEndpoint`] unless `api` is an `http://` URL with a host and no path;
    /// [`Error::InvalidKey`] when the key cannot be an HTTP header value.
    pub fn new(api: &str, server_id: &str, key_env: &str, key: &str) -> Result<PowerDns> {
        let invalid = |reason: &str| Error::InvalidEndpoint {
            endpoint: api.to_string(),
            reason: reason.to_string(),
        };
        let root =
            Url::parse(api).map_err(|e| invalid(&format!("{e}; expected http://HOST:PORT")))?;
        if root.scheme() != "http" || root.host_str().is_none_or(str::is_empty) {
            return Err(invalid(
                "expected an http:// URL such as http://127.0.0.1:8081",
            ));
        }
        if root.path() != "/" || root.query().is_some() || !root.username().is_empty() {
            return Err(invalid(
                "expected no path, query or credentials, only http://HOST:PORT",
            ));
        }
        if server_id.is_empty() || server_id.contains(['/', '?', '#', '%']) {
            return Err(invalid(
                "the server id must be a plain name such as `localhost`",
            ));
        }
        let base = root
            .join(&format!("api/v1/servers/{server_id}/"))
            .map_err(|e| invalid(&e.to_string()))?;
        let mut key = HeaderValue::from_str(key).map_err(|_| Error::InvalidKey {
            env: key_env.to_string(),
        })?;
        key.set_sensitive(true);
        let client = crate::backend::http_client()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // The API is on the operator's network; a proxy meant for the internet must not see
            // the key.
            .no_proxy()
            .build()
            .map_err(Error::Client)?;
        Ok(PowerDns {
            api: api.trim_end_matches('/').to_string(),
            server_id: server_id.to_string(),
            base,
            key,
            key_env: key_env.to_string(),
            client,
            writes: AtomicU64::new(0),
        })
    }

    /// How many writes (zone creations and patches) this client made.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// One request; any HTTP answer is returned, only transport failures are errors.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, String)> {
        let op = format!("{method} {path}");
        // The server itself is `…/servers/{id}`: with the trailing slash PowerDNS answers 404.
        let url = match path {
            "" => Url::parse(self.base.as_str().trim_end_matches('/')),
            _ => self.base.join(path),
        }
        .map_err(|e| Error::InvalidEndpoint {
            endpoint: self.api.clone(),
            reason: e.to_string(),
        })?;
        let mut request = self
            .client
            .request(method.clone(), url)
            .header("X-API-Key", self.key.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let transport = |source: reqwest::Error| {
            if source.is_timeout() && !source.is_connect() {
                Error::Timeout {
                    api: self.api.clone(),
                    op: op.clone(),
                    timeout: REQUEST_TIMEOUT,
                }
            } else {
                Error::Unreachable {
                    api: self.api.clone(),
                    op: op.clone(),
                    source: source.without_url(),
                }
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        tracing::debug!(
            api = %self.api,
            %method,
            path,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "powerdns call"
        );
        if method != Method::GET && status.is_success() {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok((status, text))
    }

    fn error(&self, op: &str, status: StatusCode, body: &str) -> Error {
        let api = self.api.clone();
        let op = op.to_string();
        match status.as_u16() {
            401 | 403 => Error::Unauthorized {
                api,
                env: self.key_env.clone(),
                op,
                status: status.as_u16(),
            },
            400 | 422 => Error::Rejected {
                api,
                op,
                message: error_message(body),
            },
            status => Error::Api {
                api,
                op,
                status,
                body: error_message(body),
            },
        }
    }

    /// After a 404: is it the zone that is missing, or the server id that is wrong?
    async fn check_server(&self) -> Result<()> {
        let (status, body) = self.call(Method::GET, "", None).await?;
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Error::NoServer {
                api: self.api.clone(),
                server_id: self.server_id.clone(),
            }),
            s => Err(self.error("GET server", s, &body)),
        }
    }
}

impl super::Dns for PowerDns {
    fn endpoint(&self) -> &str {
        &self.api
    }

    /// One `GET` of the zone (and, only when it answers 404, one of the server).
    async fn zone(&self, zone: &str) -> super::Result<Option<ObservedZone>> {
        let path = zone_path(zone);
        let (status, body) = self.call(Method::GET, &path, None).await?;
        if status == StatusCode::NOT_FOUND {
            self.check_server().await?;
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.error(&format!("GET {path}"), status, &body).into());
        }
        let wire: WireZone = serde_json::from_str(&body).map_err(|e| Error::Malformed {
            api: self.api.clone(),
            op: format!("GET {path}"),
            detail: e.to_string(),
        })?;
        Ok(Some(ObservedZone {
            rrsets: wire.rrsets.into_iter().map(WireRrset::into_rrset).collect(),
        }))
    }

    /// One `POST`: a Native zone with no nameservers of codeb's choosing, so its SOA comes from
    /// the server's `default-soa-content`. An existing zone (409) is success.
    async fn create_zone(&self, zone: &str) -> super::Result<()> {
        let body = json!({"name": format!("{zone}."), "kind": "Native", "nameservers": []});
        let (status, text) = self.call(Method::POST, "zones", Some(&body)).await?;
        match status {
            s if s.is_success() || s == StatusCode::CONFLICT => Ok(()),
            StatusCode::NOT_FOUND => Err(Error::NoServer {
                api: self.api.clone(),
                server_id: self.server_id.clone(),
            }
            .into()),
            s => Err(self.error("POST zones", s, &text).into()),
        }
    }

    /// One `PATCH` with every change.
    async fn patch(&self, zone: &str, changes: &[RrsetChange]) -> super::Result<()> {
        let path = zone_path(zone);
        let body = json!({"rrsets": changes.iter().map(change_json).collect::<Vec<_>>()});
        let (status, text) = self.call(Method::PATCH, &path, Some(&body)).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.error(&format!("PATCH {path}"), status, &text).into())
        }
    }
}

fn zone_path(zone: &str) -> String {
    format!("zones/{zone}.")
}

fn change_json(change: &RrsetChange) -> Value {
    match change {
        RrsetChange::Replace(r) => json!({
            "name": r.name,
            "type": r.rtype,
            "ttl": r.ttl,
            "changetype": "REPLACE",
            "records": r.records.iter()
                .map(|c| json!({"content": c, "disabled": false}))
                .collect::<Vec<_>>(),
            // Always sent: an omitted `comments` would keep whatever comment is there.
            "comments": r.mark.iter()
                .map(|m| json!({"content": m, "account": DNS_ACCOUNT}))
                .collect::<Vec<_>>(),
        }),
        RrsetChange::Delete { name, rtype } => json!({
            "name": name,
            "type": rtype,
            "changetype": "DELETE",
        }),
    }
}

/// PowerDNS's `{"error": "..."}`, or the plain body, cut to a readable length.
fn error_message(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    match message.char_indices().nth(MAX_ERROR_BODY) {
        Some((i, _)) => format!("{}…", &message[..i]),
        None => message,
    }
}

#[derive(Deserialize)]
struct WireZone {
    #[serde(default)]
    rrsets: Vec<WireRrset>,
}

#[derive(Deserialize)]
struct WireRrset {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    #[serde(default)]
    ttl: u32,
    #[serde(default)]
    records: Vec<WireRecord>,
    #[serde(default)]
    comments: Vec<WireComment>,
}

#[derive(Deserialize)]
struct WireRecord {
    content: String,
    #[serde(default)]
    disabled: bool,
}

#[derive(Deserialize)]
struct WireComment {
    content: String,
    #[serde(default)]
    account: String,
}

impl WireRrset {
    fn into_rrset(self) -> Rrset {
        Rrset {
            name: self.name,
            rtype: self.rtype,
            ttl: self.ttl,
            records: self
                .records
                .into_iter()
                .filter(|r| !r.disabled)
                .map(|r| r.content)
                .collect(),
            mark: self
                .comments
                .into_iter()
                .find(|c| c.account == DNS_ACCOUNT)
                .map(|c| c.content),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rrset_is_codeb_s_only_with_a_comment_of_codeb_s_account() {
        let wire: WireZone = serde_json::from_str(
            r#"{"rrsets": [
                {"name": "a.z.", "type": "A", "ttl": 300,
                 "records": [{"content": "127.0.0.1", "disabled": false},
                             {"content": "127.0.0.2", "disabled": true}],
                 "comments": [{"content": "hand note", "account": "ops", "modified_at": 1},
                              {"content": "managed by codeb: a/production", "account": "codeb",
                               "modified_at": 2}]},
                {"name": "b.z.", "type": "TXT", "ttl": 60,
                 "records": [{"content": "\"managed by codeb: b/production\"", "disabled": false}],
                 "comments": [{"content": "managed by codeb: b/production", "account": ""}]}
            ]}"#,
        )
        .unwrap();
        let rrsets: Vec<Rrset> = wire.rrsets.into_iter().map(WireRrset::into_rrset).collect();
        assert_eq!(
            rrsets[0].records,
            ["127.0.0.1"],
            "disabled records count as absent"
        );
        assert_eq!(
            rrsets[0].mark.as_deref(),
            Some("managed by codeb: a/production")
        );
        assert_eq!(
            rrsets[1].mark, None,
            "a look-alike comment without the account is foreign"
        );
    }

    #[test]
    fn a_replace_always_sends_the_comment_and_a_delete_sends_no_records() {
        let replace = change_json(&RrsetChange::Replace(Rrset {
            name: "a.z.".into(),
            rtype: "A".into(),
            ttl: 300,
            records: vec!["127.0.0.1".into()],
            mark: Some("managed by codeb: a/production".into()),
        }));
        assert_eq!(replace["changetype"], "REPLACE");
        assert_eq!(replace["comments"][0]["account"], "codeb");
        assert_eq!(replace["records"][0]["content"], "127.0.0.1");
        let delete = change_json(&RrsetChange::Delete {
            name: "a.z.".into(),
            rtype: "A".into(),
        });
        assert_eq!(
            delete,
            json!({"name": "a.z.", "type": "A", "changetype": "DELETE"})
        );
    }

    #[test]
    fn the_key_is_in_no_debug_output_and_endpoints_are_checked() {
        let p = PowerDns::new(
            "http://127.0.0.1:8081",
            "localhost",
            "PDNS_API_KEY",
            "hunter2",
        )
        .unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        assert_eq!(
            p.base.as_str(),
            "http://127.0.0.1:8081/api/v1/servers/localhost/"
        );
        assert!(PowerDns::new("http://h:1/api", "localhost", "K", "k").is_err());
        assert!(PowerDns::new("https://h:1", "localhost", "K", "k").is_err());
        assert!(PowerDns::new("http://h:1", "a/b", "K", "k").is_err());
        let err = PowerDns::new("http://h:1", "localhost", "K", "bad\nkey").unwrap_err();
        assert!(!err.to_string().contains("bad"), "{err}");
    }

    #[test]
    fn error_messages_are_powerdns_s_own_and_short() {
        assert_eq!(
            error_message(r#"{"error": "RRset a.z. IN A: Conflicts with pre-existing RRset"}"#),
            "RRset a.z. IN A: Conflicts with pre-existing RRset"
        );
        assert_eq!(error_message("Not Found\n"), "Not Found");
        assert_eq!(error_message(&"x".repeat(600)).chars().count(), 513);
    }
}
