//! The Redis adapter: project ACL users and their keys on one shared server, driven as its admin
//! user over plain TCP (redis-rs on tokio, no TLS: the server is on loopback or the hosts' bridge).
//!
//! Responsible for the commands of [`Cache`]: `ACL GETUSER` into [`ObservedCacheUser`], one
//! `ACL SETUSER … reset …` per environment, and removing a user with its keys. It must not decide
//! which users should exist (the planner's business, which also tells codeb's users from foreign
//! ones by its records), must not retry, and must never let a password reach a message, a log
//! line or a `Debug` output: passwords go to the server as SHA-256 hashes (`#hex`), never in clear.
//!
//! # Server facts this relies on (Redis 7.0.15, measured on deploy/stack.sh's server)
//! - `ACL SETUSER u reset …` replaces the whole user in one command: it never exists half-set.
//!   Every rule of `CacheWrite::rules` is accepted (names and container commands such as
//!   `-function`, which denies every `FUNCTION` subcommand).
//! - `ACL SAVE` answers an error when the server has no `aclfile` ("This Redis instance is not
//!   configured to use an ACL file…"): the users then live until the server restarts.
//! - `ACL DELUSER` closes the user's open connections (`tests/redis_adapter.rs`).
//! - `ACL GETUSER` answers `flags`, `passwords` (their SHA-256s), `commands` (one string, with the
//!   rules folded: what `-@dangerous` already denies is not repeated), `keys` and `channels` (one
//!   string each, patterns separated by spaces), `selectors`; or nil for no such user.
//! - A wrong admin password answers `WRONGPASS`, which redis-rs reports as an authentication
//!   failure.

use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, Value};
use sha2::{Digest, Sha256};

use crate::backend::Cache;
use crate::model::data::{CacheNames, CacheWrite, ObservedCacheUser};
use crate::model::vars::SecretText;

/// A local server answers in well under a millisecond; two seconds to connect is a dead one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One reply; `SCAN … COUNT 1000` and `UNLINK` of 1000 keys take milliseconds.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole call. Dropping a cache of a million keys is ~1000 rounds of SCAN and UNLINK (about a
/// second each way on this machine's Redis); two minutes bounds a stuck one.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Keys per `SCAN` round, and so per `UNLINK`.
const SCAN_COUNT: usize = 1000;

/// Errors of the Redis adapter. None of them holds a password.
///
/// Worth a retry: [`Error::Unreachable`], [`Error::Timeout`], and [`Error::Command`] after an I/O
/// error or a server still loading. Not worth one: a bad URL, a refused admin login, a command the
/// server refuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Redis admin URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the Redis admin URL must not contain a password: give it in the password variable")]
    PasswordInUrl,
    #[error("cannot reach Redis at {endpoint} ({op})")]
    Unreachable {
        endpoint: String,
        op: &'static str,
        #[source]
        source: RedisError,
    },
    #[error("Redis at {endpoint} did not answer {op} within {timeout:?}")]
    Timeout {
        endpoint: String,
        op: &'static str,
        timeout: Duration,
    },
    #[error(
        "Redis at {endpoint} refused the login of the user {user} (wrong password, or the user \
         is disabled): check the admin password variable"
    )]
    Refused { endpoint: String, user: String },
    #[error("Redis at {endpoint} failed {op}")]
    Command {
        endpoint: String,
        op: &'static str,
        #[source]
        source: RedisError,
    },
    #[error("unexpected answer from Redis at {endpoint} to {op}: {detail}")]
    Malformed {
        endpoint: String,
        op: &'static str,
        detail: String,
    },
}

impl Error {
    /// True when the same call may succeed later without any change to codeb's inputs.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout { .. } => true,
            Error::Command { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || matches!(source.code(), Some("LOADING" | "TRYAGAIN" | "BUSY"))
            }
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At the trait's edge: the same text and causes, with [`Error::is_retryable`]'s answer.
impl From<Error> for super::Error {
    fn from(e: Error) -> Self {
        let kind = super::ErrorKind::from_retryable(e.is_retryable());
        super::Error::new(super::Backend::Redis, kind, e)
    }
}

/// One Redis server, as its admin user. Connects anew for every call.
pub struct RedisAdmin {
    /// `host:port`, for messages.
    endpoint: String,
    /// The admin user's name (`default` unless the URL names one).
    user: String,
    /// Holds the password; never printed (see the `Debug` impl).
    client: ::redis::Client,
}

impl std::fmt::Debug for RedisAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdmin")
            .field("endpoint", &self.endpoint)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl RedisAdmin {
    /// The admin of the server at `url` (`redis://127.0.0.1:6379`, or `redis://USER@HOST:PORT`),
    /// logging in with `password`. Makes no connection.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for anything but a `redis://` URL of one TCP host;
    /// [`Error::PasswordInUrl`] when it holds a password.
    pub fn new(url: &str, password: &SecretText) -> Result<RedisAdmin> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let Some(rest) = url.strip_prefix("redis://") else {
            return Err(invalid(
                "expected redis://HOST:PORT or redis://USER@HOST:PORT",
            ));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        {
            return Err(Error::PasswordInUrl);
        }
        let info = url
            .into_connection_info()
            .map_err(|e| invalid(&e.to_string()))?;
        let endpoint = match info.addr() {
            ::redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            _ => return Err(invalid("expected a plain TCP address")),
        };
        let user = info
            .redis_settings()
            .username()
            .unwrap_or("default")
            .to_string();
        let settings = info
            .redis_settings()
            .clone()
            .set_password(&password.0)
            .set_skip_set_lib_name();
        let client = ::redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| invalid(&e.to_string()))?;
        Ok(RedisAdmin {
            endpoint,
            user,
            client,
        })
    }

    async fn connect(&self, op: &'static str) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        // The library's timeout covers the TCP connect; this one the AUTH after it too.
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
            Err(_) => Err(Error::Timeout {
                endpoint: self.endpoint.clone(),
                op,
                timeout: CONNECT_TIMEOUT * 2,
            }),
            Ok(Err(e)) if e.kind() == ::redis::ErrorKind::AuthenticationFailed => {
                Err(Error::Refused {
                    endpoint: self.endpoint.clone(),
                    user: self.user.clone(),
                })
            }
            Ok(Err(e)) if e.code() == Some("WRONGPASS") => Err(Error::Refused {
                endpoint: self.endpoint.clone(),
                user: self.user.clone(),
            }),
            Ok(Err(e)) => Err(Error::Unreachable {
                endpoint: self.endpoint.clone(),
                op,
                source: e,
            }),
            Ok(Ok(c)) => Ok(c),
        }
    }

    fn command(&self, op: &'static str) -> impl Fn(RedisError) -> Error + '_ {
        move |source| Error::Command {
            endpoint: self.endpoint.clone(),
            op,
            source,
        }
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    endpoint: self.endpoint.clone(),
                    op,
                    timeout: CALL_TIMEOUT,
                })
            })
    }

    async fn do_observe(&self, users: &[String]) -> Result<Vec<Option<ObservedCacheUser>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.connect("observe").await?;
        // One pipeline: every user in one round trip, whatever their number.
        let mut pipe = ::redis::pipe();
        for user in users {
            pipe.cmd("ACL").arg("GETUSER").arg(user);
        }
        let answers: Vec<Value> = pipe
            .query_async(&mut con)
            .await
            .map_err(self.command("ACL GETUSER"))?;
        if answers.len() != users.len() {
            return Err(Error::Malformed {
                endpoint: self.endpoint.clone(),
                op: "ACL GETUSER",
                detail: format!("{} answers to {} users", answers.len(), users.len()),
            });
        }
        answers
            .iter()
            .map(|answer| {
                parse_getuser(answer).map_err(|detail| Error::Malformed {
                    endpoint: self.endpoint.clone(),
                    op: "ACL GETUSER",
                    detail,
                })
            })
            .collect()
    }

    async fn do_ensure(&self, write: &CacheWrite, passwords: &[SecretText]) -> Result<()> {
        if passwords.is_empty() || passwords.iter().any(|p| p.0.is_empty()) {
            return Err(Error::Malformed {
                endpoint: self.endpoint.clone(),
                op: "ACL SETUSER",
                detail: "no password, or an empty one (a user without one would be `nopass`)"
                    .to_string(),
            });
        }
        let mut con = self.connect("ensure").await?;
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&write.names.user).arg("reset");
        for p in passwords {
            cmd.arg(format!("#{}", sha256_hex(&p.0)));
        }
        for rule in write.rules() {
            cmd.arg(rule);
        }
        let () = cmd
            .query_async(&mut con)
            .await
            .map_err(self.command("ACL SETUSER"))?;
        self.save(&mut con).await
    }

    /// `ACL SAVE`, when the server has an ACL file.
    async fn save(&self, con: &mut MultiplexedConnection) -> Result<()> {
        match ::redis::cmd("ACL").arg("SAVE").query_async::<()>(con).await {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("not configured to use an ACL file") => Ok(()),
            Err(e) => Err(self.command("ACL SAVE")(e)),
        }
    }

    async fn do_drop(&self, names: &CacheNames) -> Result<()> {
        let mut con = self.connect("drop_cache").await?;
        // The user first: its connections are closed, so no key is written behind the scan.
        let _: i64 = ::redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&names.user)
            .query_async(&mut con)
            .await
            .map_err(self.command("ACL DELUSER"))?;
        self.save(&mut con).await?;
        let pattern = format!("{}*", glob_escape(&names.prefix));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut con)
                .await
                .map_err(self.command("SCAN"))?;
            if !keys.is_empty() {
                let _: i64 = ::redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut con)
                    .await
                    .map_err(self.command("UNLINK"))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `s` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Reads `ACL GETUSER`'s answer (field names and values, alternating; nil for no user).
fn parse_getuser(v: &Value) -> std::result::Result<Option<ObservedCacheUser>, String> {
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Nil => return Ok(None),
        Value::Array(items) if items.len() % 2 == 0 => {
            items.chunks(2).map(|c| (&c[0], &c[1])).collect()
        }
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        other => return Err(format!("{other:?}")),
    };
    let mut user = ObservedCacheUser::default();
    for (k, v) in pairs {
        match text(k).as_deref() {
            Some("flags") => user.enabled = strings(v).iter().any(|f| f == "on"),
            Some("passwords") => user.passwords = strings(v).len(),
            Some("commands") => user.commands = text(v).unwrap_or_default(),
            Some("keys") => user.keys = split(v),
            Some("channels") => user.channels = split(v),
            _ => {}
        }
    }
    Ok(Some(user))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

/// A pattern list: one string of patterns separated by spaces (Redis 7), or an array (6.2).
fn split(v: &Value) -> Vec<String> {
    match text(v) {
        Some(s) => s.split_whitespace().map(str::to_string).collect(),
        None => strings(v),
    }
}

impl Cache for RedisAdmin {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn observe(&self, users: &[String]) -> super::Result<Vec<Option<ObservedCacheUser>>> {
        Ok(self.bounded("observe", self.do_observe(users)).await?)
    }

    async fn ensure(&self, write: &CacheWrite, passwords: &[SecretText]) -> super::Result<()> {
        Ok(self
            .bounded("ensure", self.do_ensure(write, passwords))
            .await?)
    }

    async fn drop_cache(&self, names: &CacheNames) -> super::Result<()> {
        Ok(self.bounded("drop_cache", self.do_drop(names)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getuser_answers_are_read_and_nil_is_no_user() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let answer = Value::Array(vec![
            b("flags"),
            Value::Array(vec![b("on"), b("sanitize-payload")]),
            b("passwords"),
            Value::Array(vec![b("ab"), b("cd")]),
            b("commands"),
            b("+@all -@admin"),
            b("keys"),
            b("~p:e:*"),
            b("channels"),
            b("&p:e:*"),
            b("selectors"),
            Value::Array(vec![]),
        ]);
        let user = parse_getuser(&answer).unwrap().unwrap();
        assert!(user.enabled);
        assert_eq!(user.passwords, 2);
        assert_eq!(user.keys, vec!["~p:e:*"]);
        assert_eq!(user.channels, vec!["&p:e:*"]);
        assert_eq!(user.commands, "+@all -@admin");
        assert_eq!(parse_getuser(&Value::Nil).unwrap(), None);
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_repeating_it() {
        let pw = SecretText("x".into());
        let e = RedisAdmin::new("redis://default:hunter2@127.0.0.1:6379", &pw).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = RedisAdmin::new("http://127.0.0.1:6379", &pw).unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");
        let ok = RedisAdmin::new("redis://127.0.0.1:16379", &pw).unwrap();
        assert_eq!(ok.endpoint, "127.0.0.1:16379");
        assert_eq!(ok.user, "default");
        assert_eq!(glob_escape("a*b:"), "a\\*b:");
    }
}
