//! Databases and caches in the domain model: the shared PostgreSQL and Redis a Host declares, the
//! names codeb gives each project environment's role, database and ACL user, the marks that say
//! they are codeb's, and what the adapters report of them and are asked to write.
//!
//! Plain data and pure functions only: no wire types, no I/O.
//!
//! # Names
//! Project and environment names are DNS labels (`[a-z][a-z0-9-]*`, never `_`), so
//! `{project}_{environment}` names one environment without ambiguity: PostgreSQL gets it as a quoted
//! identifier (it keeps its `-`). That name is the database and its owner role (`NOLOGIN`); the
//! apps log in as one of two login roles, `{name}_1` and `{name}_2`, members of the owner whose
//! sessions act as it (`ALTER ROLE … SET role`), so that a credential rotation moves to the other
//! login while the old one keeps working for the grace slot. A name over 63 bytes (PostgreSQL's
//! limit) keeps its first 52 bytes and gets `_` and 8 hex digits of the SHA-256 of the whole name.
//! In Redis the ACL user is `codeb.{project}.{environment}`, confined to keys and channels under
//! `{project}:{environment}:`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::EnvKey;

/// A shared PostgreSQL server as a Host declares it (`spec.postgres`).
///
/// Holds the NAME of the environment variable with the admin password, never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresRef {
    /// The admin connection, without a password: `postgres://codeb_admin@127.0.0.1:5432/postgres`.
    pub url: String,
    pub password_env: String,
    /// The `host:port` written into apps' `DATABASE_URL` (containers on the bridge reach the
    /// server elsewhere than codeb does); `None`: the admin URL's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_host: Option<String>,
}

/// A shared Redis server as a Host declares it (`spec.redis`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisRef {
    /// The admin connection, without a password: `redis://127.0.0.1:6379` (the admin user is
    /// `default` unless the URL names one).
    pub url: String,
    pub password_env: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_host: Option<String>,
}

/// Where and how often a Host's databases and caches are backed up (`spec.backups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    /// The destination directory (the backup host's mount): one subdirectory per backup, each
    /// with a manifest of its files, their SHA-256 and size.
    pub dir: String,
    /// `pg_dump` (custom format) of each project database: daily, 7 kept, by default.
    pub database: Schedule,
    /// A dump of each project's Redis keys: hourly, 24 kept, by default.
    pub cache: Schedule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// How often, in seconds.
    pub every_secs: u64,
    /// How many backups of one environment are kept (older ones are deleted after a new one is
    /// written and verified).
    pub keep: u32,
}

/// What becomes of an environment's data when the environment is removed (deleted or pruned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// The database, roles, ACL user and keys stay (the default): a re-created project finds
    /// them again.
    #[default]
    Retain,
    /// Dropped with the environment: shown in `diff` as destructive.
    Drop,
}

/// What an environment asks of its Host's data services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataWants {
    /// A database in the Host's PostgreSQL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub database: bool,
    /// An ACL user in the Host's Redis.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache: bool,
    #[serde(default, skip_serializing_if = "OnDelete::is_retain")]
    pub on_delete: OnDelete,
}

impl DataWants {
    pub fn is_none(&self) -> bool {
        !self.database && !self.cache
    }

    pub fn is_default(&self) -> bool {
        *self == DataWants::default()
    }
}

impl OnDelete {
    pub fn is_retain(&self) -> bool {
        *self == OnDelete::Retain
    }
}

/// PostgreSQL's limit on identifiers, in bytes.
pub const PG_NAME_MAX: usize = 63;

/// The PostgreSQL names of one environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PgNames {
    /// The database, and its owner role (`NOLOGIN`).
    pub database: String,
    /// The two login roles; a rotation moves from one to the other.
    pub logins: [String; 2],
}

impl PgNames {
    pub fn of(key: &EnvKey) -> PgNames {
        let base = fit(&format!("{}_{}", key.project, key.env), PG_NAME_MAX - 2);
        PgNames {
            logins: [format!("{base}_1"), format!("{base}_2")],
            database: base,
        }
    }

    /// The owner role: the database's name.
    pub fn owner(&self) -> &str {
        &self.database
    }
}

/// `name` when it fits in `max` bytes, else its first `max - 9` bytes, `_` and 8 hex digits of
/// its SHA-256 (names are ASCII).
fn fit(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let hash = Sha256::digest(name.as_bytes());
    let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}_{hex}", &name[..max - 9])
}

/// The start of the comment codeb puts on every role it creates (the owner role and both logins):
/// `managed by codeb OWNER-ID: project/environment`. A role's comment needs `CREATEROLE` to
/// change, so a project cannot forge or remove it; the database is codeb's when its owner is a
/// role so marked.
pub const PG_MARK_PREFIX: &str = "managed by codeb ";

/// The comment that marks a role as `owner`'s (a codeb instance's id) and `key`'s.
pub fn pg_mark(owner: &str, key: &EnvKey) -> String {
    format!("{PG_MARK_PREFIX}{owner}: {key}")
}

/// `(owner id, environment)` of a role comment codeb wrote.
pub fn parse_pg_mark(comment: &str) -> Option<(&str, EnvKey)> {
    let (owner, key) = comment.strip_prefix(PG_MARK_PREFIX)?.split_once(": ")?;
    let (project, env) = key.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.contains(['/', ' ', ':']);
    (ok(owner) && ok(project) && ok(env)).then(|| (owner, EnvKey::new(project, env)))
}

/// The limits every project database gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseLimits {
    /// Connections per login role (`CONNECTION LIMIT`).
    pub connections: u32,
    /// `statement_timeout` of the roles, in milliseconds.
    pub statement_timeout_ms: u64,
    /// `idle_in_transaction_session_timeout` of the roles, in milliseconds.
    pub idle_in_transaction_ms: u64,
}

impl Default for DatabaseLimits {
    fn default() -> Self {
        DatabaseLimits {
            connections: 20,
            statement_timeout_ms: 30_000,
            idle_in_transaction_ms: 60_000,
        }
    }
}

/// What one environment's database should be: what `Postgres::ensure` converges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseWrite {
    pub names: PgNames,
    /// The comment every role gets ([`pg_mark`]).
    pub mark: String,
    pub limits: DatabaseLimits,
    /// The login role (0 or 1) whose password is set; the other is left as it is.
    pub login: usize,
}

/// An environment's roles and database as observed. Every role and database is reported whether
/// codeb's or not: the plan tells a foreign one from codeb's by the marks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedDatabase {
    pub owner: Option<ObservedRole>,
    pub logins: [Option<ObservedRole>; 2],
    pub database: Option<ObservedDb>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedRole {
    /// `COMMENT ON ROLE`, if any.
    pub comment: Option<String>,
    pub can_login: bool,
    /// `CONNECTION LIMIT` (-1: none).
    pub connection_limit: i32,
    /// The role's settings (`ALTER ROLE … SET`), as `name=value` strings as the catalog holds them.
    pub settings: Vec<String>,
    /// Roles it is a member of.
    pub member_of: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedDb {
    /// The owning role's name.
    pub owner: String,
    /// Whether `PUBLIC` may connect to it (codeb revokes that).
    pub public_connect: bool,
}

/// The Redis names of one environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CacheNames {
    /// The ACL user: `codeb.{project}.{environment}`.
    pub user: String,
    /// Every key and channel of the environment starts with this: `{project}:{environment}:`.
    pub prefix: String,
}

/// The naming convention that marks an ACL user as codeb's: Redis users carry no comment, so
/// codeb also records each user it creates and never touches a user of this name it has no record
/// of (a foreign one).
pub const REDIS_USER_PREFIX: &str = "codeb.";

impl CacheNames {
    pub fn of(key: &EnvKey) -> CacheNames {
        CacheNames {
            user: format!("{REDIS_USER_PREFIX}{}.{}", key.project, key.env),
            prefix: format!("{}:{}:", key.project, key.env),
        }
    }
}

/// The commands a project's ACL user is denied beyond `-@dangerous -@admin`: those that ignore key
/// patterns or see or change other projects' state (measured on Redis 7.0: DBSIZE counts every
/// project's keys, PUBSUB CHANNELS lists theirs, FUNCTION DELETE/FLUSH removed another user's
/// library, SCRIPT FLUSH is global).
pub const REDIS_DENIED: &[&str] = &[
    "-@dangerous",
    "-@admin",
    "-keys",
    "-scan",
    "-randomkey",
    "-flushall",
    "-flushdb",
    "-select",
    "-swapdb",
    "-dbsize",
    "-pubsub",
    "-function",
    "-fcall",
    "-fcall_ro",
    "-script",
    "-move",
    "-info",
    "-wait",
];

/// What one environment's ACL user should be: what `Cache::ensure` converges. Every field but
/// the passwords; the passwords (one, or two during a rotation) are handed over separately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheWrite {
    pub names: CacheNames,
}

impl CacheWrite {
    /// The ACL rules after `reset` and the passwords: keys and channels under the prefix, every
    /// command but [`REDIS_DENIED`].
    pub fn rules(&self) -> Vec<String> {
        let p = &self.names.prefix;
        let mut r = vec![
            "on".to_string(),
            format!("~{p}*"),
            "resetchannels".to_string(),
            format!("&{p}*"),
            "+@all".to_string(),
        ];
        r.extend(REDIS_DENIED.iter().map(|s| s.to_string()));
        r
    }
}

/// An ACL user as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedCacheUser {
    pub enabled: bool,
    /// How many passwords it has.
    pub passwords: usize,
    /// Its key patterns (`~…`), channel patterns (`&…`) and command rules, as `ACL GETUSER`
    /// answers them.
    pub keys: Vec<String>,
    pub channels: Vec<String>,
    pub commands: String,
}

/// What codeb recorded of one environment's data services: the catalog that says what it created
/// (written before it creates anything), and the digest of the credentials it last set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRecord {
    /// The server's admin URL (without password), and the Host that declared it.
    pub server: String,
    pub host: String,
    pub names: PgNames,
    /// Per login role: the keyed digest of the password codeb last set (`None`: not set yet, or
    /// disabled).
    pub applied: [Option<String>; 2],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub server: String,
    pub host: String,
    pub names: CacheNames,
    /// The keyed digests of the passwords codeb last set.
    pub applied: Vec<String>,
}

/// The env keys codeb derives for an environment's database and cache; protected keys of its env.
pub const DATABASE_KEYS: [&str; 3] = ["DATABASE_URL", "POSTGRES_USER", "POSTGRES_PASSWORD"];
pub const CACHE_KEYS: [&str; 2] = ["REDIS_URL", "REDIS_PREFIX"];

/// The connection URL an app gets: `postgres://USER:PASSWORD@HOST/DATABASE`, with the user,
/// password and database percent-encoded.
pub fn database_url(app_host: &str, user: &str, password: &str, database: &str) -> String {
    format!(
        "postgres://{}:{}@{app_host}/{}",
        encode(user),
        encode(password),
        encode(database)
    )
}

/// `redis://USER:PASSWORD@HOST`.
pub fn redis_url(app_host: &str, user: &str, password: &str) -> String {
    format!("redis://{}:{}@{app_host}", encode(user), encode(password))
}

/// The password of a `redis://USER:PASSWORD@HOST` URL, decoded.
pub fn redis_password(url: &str) -> Option<String> {
    let rest = url.strip_prefix("redis://")?;
    let (userinfo, _) = rest.split(['/', '?']).next()?.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    decode(password)
}

/// Reverses [`encode`]; `None` for a malformed escape or text that is not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `host:port` of a `scheme://[user@]host:port/...` URL.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (!host.is_empty()).then_some(host)
}

/// Every environment's names of one kind, for observing a server at once.
pub type ByEnv<T> = BTreeMap<EnvKey, T>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_the_environment_apart_and_fit_postgres() {
        let a = PgNames::of(&EnvKey::new("a-b", "c"));
        let b = PgNames::of(&EnvKey::new("a", "b-c"));
        assert_ne!(a.database, b.database);
        assert_eq!(a.database, "a-b_c");
        assert_eq!(a.logins[1], "a-b_c_2");
        let long = PgNames::of(&EnvKey::new("p".repeat(63), "e".repeat(63)));
        assert!(long.logins[0].len() <= PG_NAME_MAX, "{}", long.logins[0]);
        let other = PgNames::of(&EnvKey::new("p".repeat(63), "e".repeat(62)));
        assert_ne!(long.database, other.database);
        assert_eq!(
            CacheNames::of(&EnvKey::new("shop", "staging")).user,
            "codeb.shop.staging"
        );
    }

    #[test]
    fn marks_round_trip_and_foreign_comments_are_no_mark() {
        let key = EnvKey::new("hello", "production");
        let m = pg_mark("abc123", &key);
        assert_eq!(parse_pg_mark(&m), Some(("abc123", key)));
        assert_eq!(parse_pg_mark("made by hand"), None);
        assert_eq!(parse_pg_mark("managed by codeb x: a/b/c"), None);
    }

    #[test]
    fn urls_encode_what_a_password_may_hold() {
        let u = database_url("10.0.0.1:5432", "a-b_c_1", "p@ss/w:rd%", "a-b_c");
        assert_eq!(
            u,
            "postgres://a-b_c_1:p%40ss%2Fw%3Ard%25@10.0.0.1:5432/a-b_c"
        );
        assert_eq!(
            url_host("postgres://admin@127.0.0.1:5432/postgres"),
            Some("127.0.0.1:5432")
        );
        assert_eq!(url_host("redis://127.0.0.1:6379"), Some("127.0.0.1:6379"));
        let r = redis_url("10.0.0.1:6379", "codeb.a.b", "p@ss/w:rd%");
        assert_eq!(redis_password(&r).as_deref(), Some("p@ss/w:rd%"));
    }
}
