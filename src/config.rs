//! codeb's own configuration: what the operator lets manifests reach. A manifest author (a pull
//! request run through `codeb diff` in CI, a developer API key, an agent over MCP) names endpoints
//! and a key variable in Zones and Hosts; only this configuration decides whether codeb may read
//! that variable and connect to that endpoint.
//!
//! ```yaml
//! # <state dir>/config.yaml, or the file --config / CODEB_CONFIG names
//! keyVariables: [PDNS_API_KEY, PG_ADMIN_PASSWORD]   # exact names, or one `*` as a wildcard: PDNS_*
//! protectedEnv: [DATABASE_URL, POSTGRES_USER, POSTGRES_PASSWORD, REDIS_URL]   # the default
//! endpoints:
//!   powerdns: [loopback, "http://10.0.0.2:8081"]
//!   podman: [unix, loopback, "tcp://10.0.0.5:8888"]
//!   caddyAdmin: [loopback]
//!   postgres: [loopback, "postgres://10.0.0.3:5432"]
//!   redis: [loopback]
//!   ssh: ["root@203.0.113.10", "deploy@10.0.0.6:2222"]   # remote Hosts' `spec.ssh` (none by default)
//! accessLogs:                 # Caddy's access log of codeb's server, per Host (the defaults)
//!   enabled: true             # false: off on every Host, whatever the manifests say
//!   dir: /var/log/caddy       # on each Host's Caddy machine: DIR/codeb-HOST.access.log
//!   files: {edge: /srv/log/edge-access.log}   # a Host's own file instead
//!   rollSizeMb: 100           # Caddy starts a new file at this size
//!   rollKeep: 10              # and keeps this many rolled files
//! ```
//!
//! Without a file (or a list left out of it), the defaults hold: key variables `PDNS_*`,
//! `CODEB_*`, `PG_*` and `REDIS_*`; endpoints on this machine only (`loopback`, and `unix` sockets
//! for Podman), no remote Host (`ssh` is empty); access logs on, in `/var/log/caddy`.
//!
//! A remote Host (`spec.ssh`) is reached over SSH, never in the clear, but which machines codeb
//! logs into with the operator's key is still the operator's decision: its `[user@]host[:port]`
//! must be listed under `endpoints.ssh` (an entry without a user allows any user, without a port
//! port 22 or ssh's default). Its `podman` and `caddy.admin` are then endpoints as seen on that
//! host, checked against the same lists (a unix socket and loopback, by default, are that host's).
//!
//! Where Caddy writes a Host's access log is also the operator's: Caddy opens that file as the
//! user it runs as and appends request lines whose text clients choose, so a path a manifest
//! could name would let a manifest author have Caddy write into any file of the Host (a cron
//! table, an `authorized_keys`). A manifest only turns its Host's access log off
//! (`caddy.accessLog: false`).
//!
//! Every transport codeb speaks to these APIs is plaintext (`http://`, `tcp://`), so an address
//! off this machine is allowed only by its exact origin (`scheme://host:port`), never by a range
//! or a wildcard: sending a key or driving a container engine over a network in the clear is a
//! decision about one server the operator knows, not about a subnet.
//!
//! Must not: connect, resolve a name, or read any file but its one.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::Deserialize;

use crate::model::dns::ZoneRef;
use crate::model::writes::AccessLog;
use crate::model::{Desired, HostRef};

/// The file looked for in the state directory when neither `--config` nor [`ENV`] names one.
pub const FILE_NAME: &str = "config.yaml";
/// The variable that names the configuration file (as `--config` does).
pub const ENV: &str = "CODEB_CONFIG";
/// A configuration is a few lines; anything this large is not one.
const MAX_BYTES: u64 = 64 * 1024;
/// The key variables allowed without a configuration: the stack and the examples export
/// `PDNS_API_KEY`; a CI's `GITHUB_TOKEN`, `AWS_*` or `NPM_TOKEN` are not among them.
const DEFAULT_KEY_VARIABLES: [&str; 4] = ["PDNS_*", "CODEB_*", "PG_*", "REDIS_*"];
/// The env keys only an admin changes, with `--protected` (`codeb env`), and no manifest sets:
/// those of the platform codeb replaces, which its data services fill.
pub const DEFAULT_PROTECTED_ENV: [&str; 4] = [
    "DATABASE_URL",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "REDIS_URL",
];

/// A configuration file codeb cannot use: invalid input (exit 2). Nothing in it is a secret, but
/// its values are not echoed either, only the field and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading codeb's configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("codeb's configuration {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("codeb's configuration {path} is larger than {MAX_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("codeb's configuration {path} is writable by group or others (mode {mode:04o}): whoever can write it decides where codeb sends keys; `chmod go-w {path}`")]
    Writable { path: PathBuf, mode: u32 },
    #[error("codeb's configuration {path} is owned by uid {owner}, neither this user ({uid}) nor root: `chown {uid} {path}`")]
    Foreign { path: PathBuf, owner: u32, uid: u32 },
    #[error("codeb's configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A Zone or Host that names a key variable or an endpoint the configuration does not allow:
/// invalid input (exit 2, HTTP 400). The message names the Zone or Host, the variable or endpoint
/// and where to allow it; never a key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    key_variables: Option<Vec<String>>,
    protected_env: Option<Vec<String>>,
    #[serde(default)]
    endpoints: FileEndpoints,
    #[serde(default)]
    access_logs: FileAccessLogs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileAccessLogs {
    enabled: Option<bool>,
    dir: Option<String>,
    files: Option<BTreeMap<String, String>>,
    roll_size_mb: Option<u32>,
    roll_keep: Option<u32>,
}

/// Where and how Caddy writes each Host's access log (`accessLogs`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AccessLogs {
    enabled: bool,
    dir: String,
    /// A Host's own file, by Host name.
    files: BTreeMap<String, String>,
    roll_size_mb: u32,
    roll_keep: u32,
}

/// The largest `rollSizeMb`: 100 GiB per file is already past any log a host keeps.
const MAX_ROLL_SIZE_MB: u32 = 100 * 1024;
/// The most rolled files kept.
const MAX_ROLL_KEEP: u32 = 1000;
/// The longest path accepted (Linux's `PATH_MAX`).
const MAX_PATH: usize = 4096;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileEndpoints {
    powerdns: Option<Vec<String>>,
    podman: Option<Vec<String>>,
    caddy_admin: Option<Vec<String>>,
    postgres: Option<Vec<String>>,
    redis: Option<Vec<String>>,
    ssh: Option<Vec<String>>,
}

/// What an endpoint list may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// Any loopback address (127.0.0.0/8, ::1, `localhost`), any port: it never leaves the machine.
    Loopback,
    /// Any unix socket (Podman only).
    Unix,
    /// This unix socket (Podman only).
    UnixPath(String),
    /// This host and port, as the URL parser normalizes them.
    Origin { host: String, port: u16 },
    /// An SSH target (`endpoints.ssh`): this host, as this user (any when `None`), on this port
    /// (22 or ssh's default when `None`).
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

/// The three kinds of endpoint a manifest names, with their field and their configuration list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PowerDns,
    Podman,
    CaddyAdmin,
    Postgres,
    Redis,
    Ssh,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::PowerDns => "powerdns",
            Kind::Podman => "podman",
            Kind::CaddyAdmin => "caddyAdmin",
            Kind::Postgres => "postgres",
            Kind::Redis => "redis",
            Kind::Ssh => "ssh",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Kind::Podman => "tcp",
            Kind::PowerDns | Kind::CaddyAdmin => "http",
            Kind::Postgres => "postgres",
            Kind::Redis => "redis",
            Kind::Ssh => "ssh",
        }
    }

    fn defaults(self) -> Vec<Allowed> {
        match self {
            Kind::Podman => vec![Allowed::Loopback, Allowed::Unix],
            Kind::PowerDns | Kind::CaddyAdmin | Kind::Postgres | Kind::Redis => {
                vec![Allowed::Loopback]
            }
            Kind::Ssh => vec![],
        }
    }
}

/// The operator's configuration, loaded once per process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file read, or the one that would be (messages say where to allow something).
    path: PathBuf,
    /// Whether `path` was read.
    loaded: bool,
    key_variables: Vec<String>,
    endpoints: BTreeMap<&'static str, (Vec<String>, Vec<Allowed>)>,
    protected_env: Vec<String>,
    access_logs: AccessLogs,
}

impl Config {
    /// The defaults, as when no file exists at `path`.
    pub fn defaults(path: impl Into<PathBuf>) -> Config {
        Config::from_file(path.into(), false, File::default()).expect("the defaults are valid")
    }

    /// Parses a configuration's text (read from `path`).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and what is expected.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let file: File = serde_saphyr::from_str(text).map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Config::from_file(path.to_path_buf(), true, file)
    }

    fn from_file(path: PathBuf, loaded: bool, file: File) -> Result<Config> {
        let invalid = |message: String| Error::Invalid {
            path: path.clone(),
            message,
        };
        let key_variables = match file.key_variables {
            Some(v) => v,
            None => DEFAULT_KEY_VARIABLES.map(String::from).to_vec(),
        };
        for (i, p) in key_variables.iter().enumerate() {
            if !is_key_pattern(p) {
                return Err(invalid(format!(
                    "keyVariables[{i}] is not a variable name (letters, digits, `_`, at most one `*`)"
                )));
            }
        }
        let protected_env = match file.protected_env {
            Some(v) => v,
            None => DEFAULT_PROTECTED_ENV.map(String::from).to_vec(),
        };
        for (i, p) in protected_env.iter().enumerate() {
            if !crate::service::env::is_key_name(p) {
                return Err(invalid(format!(
                    "protectedEnv[{i}] is not an env variable name (letters, digits and `_`, not starting with a digit)"
                )));
            }
        }
        let mut endpoints = BTreeMap::new();
        let e = file.endpoints;
        for (kind, listed) in [
            (Kind::PowerDns, e.powerdns),
            (Kind::Podman, e.podman),
            (Kind::CaddyAdmin, e.caddy_admin),
            (Kind::Postgres, e.postgres),
            (Kind::Redis, e.redis),
            (Kind::Ssh, e.ssh),
        ] {
            let (texts, allowed) = match listed {
                None => {
                    let d = kind.defaults();
                    (d.iter().map(show).collect(), d)
                }
                Some(texts) => {
                    let allowed = texts
                        .iter()
                        .enumerate()
                        .map(|(i, t)| {
                            allowed_entry(kind, t).map_err(|why| {
                                invalid(format!("endpoints.{}[{i}]: {why}", kind.key()))
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    (texts, allowed)
                }
            };
            endpoints.insert(kind.key(), (texts, allowed));
        }
        let access_logs = access_logs(file.access_logs).map_err(invalid)?;
        Ok(Config {
            path,
            loaded,
            key_variables,
            endpoints,
            protected_env,
            access_logs,
        })
    }

    /// Places every Host's access log where this configuration says (`accessLogs`): its file
    /// (`files`, else `dir`/codeb-HOST.access.log) and its rolling, or off when `enabled: false`.
    /// A Host whose manifest turned it off stays off. Called on every desired state read from
    /// manifests, before anything is planned.
    pub fn place_access_logs(&self, d: &mut Desired) {
        let a = &self.access_logs;
        for (name, host) in &mut d.hosts {
            if host.access_log.is_none() {
                continue;
            }
            host.access_log = a.enabled.then(|| AccessLog {
                file: a
                    .files
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| AccessLog::file_in(&a.dir, name)),
                roll_size_mb: a.roll_size_mb,
                roll_keep: a.roll_keep,
            });
        }
    }

    /// The protected env keys (`protectedEnv`, default [`DEFAULT_PROTECTED_ENV`]).
    pub fn protected_env(&self) -> &[String] {
        &self.protected_env
    }

    /// The file read, or the one that would be.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the file `explicit` names (`--config`, [`ENV`]; it must exist), or else
    /// `<state_dir>/config.yaml` when it exists, or else the defaults.
    ///
    /// # Errors
    /// Any [`Error`]: a file that cannot be read, is not a regular file, too large, writable by
    /// group or others, owned by another user than this one or root, or invalid.
    pub fn load(explicit: Option<&Path>, state_dir: &Path) -> Result<Config> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (state_dir.join(FILE_NAME), false),
        };
        let read = |source| Error::Read {
            path: path.clone(),
            source,
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            // A FIFO would block the open; it is refused below as not a regular file.
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::defaults(path))
            }
            Err(e) => return Err(read(e)),
        };
        let meta = file.metadata().map_err(read)?;
        if !meta.is_file() {
            return Err(Error::NotAFile { path });
        }
        let uid = crate::store::dir::process_uid().map_err(read)?;
        if meta.uid() != uid && meta.uid() != 0 {
            return Err(Error::Foreign {
                owner: meta.uid(),
                uid,
                path,
            });
        }
        if meta.mode() & 0o022 != 0 {
            return Err(Error::Writable {
                mode: meta.mode() & 0o7777,
                path,
            });
        }
        let mut text = String::new();
        file.take(MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_BYTES {
            return Err(Error::TooLarge { path });
        }
        Config::parse(&path, &text)
    }

    /// Where to allow something: the file, or the file to create.
    fn place(&self) -> String {
        if self.loaded {
            self.path.display().to_string()
        } else {
            format!(
                "{} (there is none: codeb runs on its defaults; or name one with --config or {ENV})",
                self.path.display()
            )
        }
    }

    /// Whether a Zone may read its key from `var`.
    pub fn allows_key_variable(&self, var: &str) -> bool {
        self.key_variables.iter().any(|p| glob(p, var))
    }

    /// Checks a managed Zone's key variable and PowerDNS API (an unmanaged Zone names neither).
    ///
    /// # Errors
    /// [`Refused`] naming the Zone, the variable or the endpoint, and where to allow it.
    pub fn check_zone(&self, zone: &ZoneRef) -> Result<(), Refused> {
        let Some(p) = &zone.powerdns else {
            return Ok(());
        };
        if !self.allows_key_variable(&p.api_key_env) {
            return Err(Refused(format!(
                "Zone {}: spec.powerdns.apiKeyEnv names {}, a variable codeb's configuration does \
                 not let a manifest read a key from (allowed: {}); an operator allows it under \
                 `keyVariables` in {}",
                zone.name,
                p.api_key_env,
                self.key_variables.join(", "),
                self.place()
            )));
        }
        self.check_endpoint(
            &format!("Zone {}", zone.name),
            "spec.powerdns.api",
            Kind::PowerDns,
            &p.api,
        )
    }

    /// Checks every Host and Zone of a manifest set.
    ///
    /// # Errors
    /// The first [`Refused`].
    pub fn check_desired(&self, d: &Desired) -> Result<(), Refused> {
        for h in d.hosts.values() {
            self.check_host(h)?;
        }
        d.zones.values().try_for_each(|z| self.check_zone(z))
    }

    /// Checks a Host's SSH target (a remote Host), Podman endpoint and Caddy admin API.
    ///
    /// # Errors
    /// [`Refused`] naming the Host, the endpoint and where to allow it.
    pub fn check_host(&self, host: &HostRef) -> Result<(), Refused> {
        let who = format!("Host {}", host.name);
        if let Some(ssh) = &host.ssh {
            self.check_ssh(&who, ssh)?;
        }
        self.check_endpoint(&who, "spec.podman", Kind::Podman, &host.podman)?;
        self.check_endpoint(
            &who,
            "spec.caddy.admin",
            Kind::CaddyAdmin,
            &host.caddy_admin,
        )?;
        let servers = [
            (
                "postgres",
                Kind::Postgres,
                host.postgres.as_ref().map(|p| (&p.url, &p.password_env)),
            ),
            (
                "redis",
                Kind::Redis,
                host.redis.as_ref().map(|r| (&r.url, &r.password_env)),
            ),
        ];
        for (field, kind, server) in servers {
            let Some((url, var)) = server else { continue };
            if !self.allows_key_variable(var) {
                return Err(Refused(format!(
                    "{who}: spec.{field}.passwordEnv names {var}, a variable codeb's \
                     configuration does not let a manifest read a password from (allowed: {}); \
                     an operator allows it under `keyVariables` in {}",
                    self.key_variables.join(", "),
                    self.place()
                )));
            }
            self.check_endpoint(&who, &format!("spec.{field}.url"), kind, url)?;
        }
        Ok(())
    }

    fn check_ssh(&self, who: &str, ssh: &crate::model::SshRef) -> Result<(), Refused> {
        let (texts, allowed) = &self.endpoints[Kind::Ssh.key()];
        let (user, host) = match ssh.target.split_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, ssh.target.as_str()),
        };
        let port = |p: Option<u16>| p.unwrap_or(22);
        let ok = allowed.iter().any(|a| match a {
            Allowed::Ssh {
                user: u,
                host: h,
                port: p,
            } => {
                h.eq_ignore_ascii_case(host)
                    && u.as_deref().is_none_or(|u| Some(u) == user)
                    && port(*p) == port(ssh.port)
            }
            _ => false,
        });
        if ok {
            return Ok(());
        }
        Err(Refused(format!(
            "{who}: spec.ssh {} is not an SSH target codeb's configuration allows (allowed: {}); \
             an operator allows it under `endpoints.ssh` in {}",
            ssh.display(),
            if texts.is_empty() {
                "none".to_string()
            } else {
                texts.join(", ")
            },
            self.place()
        )))
    }

    fn check_endpoint(
        &self,
        who: &str,
        field: &str,
        kind: Kind,
        endpoint: &str,
    ) -> Result<(), Refused> {
        let (texts, allowed) = &self.endpoints[kind.key()];
        let refuse =
            |why: &str| {
                Refused(format!(
                "{who}: {field} {endpoint} {why} (allowed: {}); an operator allows an endpoint \
                 under `endpoints.{}` in {}",
                if texts.is_empty() { "none".to_string() } else { texts.join(", ") },
                kind.key(),
                self.place()
            ))
            };
        let target = target(kind, endpoint).map_err(|why| refuse(&why))?;
        let ok = allowed.iter().any(|a| match (a, &target) {
            (Allowed::Loopback, Target::Net { loopback, .. }) => *loopback,
            (Allowed::Unix, Target::Unix(_)) => true,
            (Allowed::UnixPath(p), Target::Unix(t)) => p == t,
            (
                Allowed::Origin { host, port },
                Target::Net {
                    host: h, port: p, ..
                },
            ) => host == h && port == p,
            _ => false,
        });
        if ok {
            return Ok(());
        }
        Err(refuse(match target {
            Target::Net { loopback: false, .. } => {
                "is plaintext to an address off this machine, which codeb's configuration does not name"
            }
            _ => "is not an endpoint codeb's configuration allows",
        }))
    }
}

/// Where an endpoint leads, as the clients would connect.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Unix(String),
    Net {
        host: String,
        port: u16,
        loopback: bool,
    },
}

/// Parses an endpoint of `kind` the way its client does: Podman's `tcp://HOST:PORT` becomes
/// `http://HOST:PORT` (see `backend::podman`), the others are `http://` URLs. Anything but a bare
/// `scheme://host:port` (credentials, a path, a query) is refused rather than guessed at, so that
/// the host checked is the host the client dials.
fn target(kind: Kind, endpoint: &str) -> Result<Target, String> {
    let url = match kind {
        Kind::Podman => {
            if let Some(path) = endpoint.strip_prefix("unix://") {
                return Ok(Target::Unix(path.to_string()));
            }
            match endpoint.strip_prefix("tcp://") {
                Some(addr) => format!("http://{}", addr.trim_end_matches('/')),
                None => return Err("is neither unix:// nor tcp://".into()),
            }
        }
        Kind::PowerDns | Kind::CaddyAdmin => endpoint.to_string(),
        Kind::Postgres | Kind::Redis => return data_target(kind, endpoint),
        Kind::Ssh => return Err("is not an SSH target".into()),
    };
    let bad = || format!("is not a plain {}://HOST:PORT", kind.scheme());
    let parsed = Url::parse(&url).map_err(|_| bad())?;
    if parsed.scheme() != "http"
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.path() != "/"
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(bad());
    }
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return Err(bad());
    };
    let loopback = is_loopback_host(host, authority_host(&url));
    Ok(Target::Net {
        host: host.to_string(),
        port,
        loopback,
    })
}

/// A data server's admin URL (`postgres://USER@HOST:PORT/DB`, `redis://[USER@]HOST:PORT`): its host
/// and port, as its client dials them. A password in it is refused (it comes from its variable).
fn data_target(kind: Kind, endpoint: &str) -> Result<Target, String> {
    let bad = || format!("is not a plain {}://[USER@]HOST:PORT", kind.scheme());
    let parsed = Url::parse(endpoint).map_err(|_| bad())?;
    let scheme_ok = parsed.scheme() == kind.scheme()
        || (kind == Kind::Postgres && parsed.scheme() == "postgresql");
    if !scheme_ok
        || parsed.password().is_some()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(bad());
    }
    let host = parsed.host_str().ok_or_else(bad)?;
    let port = parsed
        .port()
        .unwrap_or(if kind == Kind::Postgres { 5432 } else { 6379 });
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let written = format!("x://{host_port}");
    let written = authority_host(&written);
    Ok(Target::Net {
        host: host.to_string(),
        port,
        loopback: is_loopback_host(host, written),
    })
}

/// Loopback as the URL parser reads the host AND as written: a host such as `127.1` or `0x7f.1`,
/// which the parser and a resolver may read differently, is not taken for loopback.
fn is_loopback_host(host: &str, written: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[') {
        let parsed = v6.trim_end_matches(']').parse::<Ipv6Addr>().ok();
        parsed.is_some_and(is_loopback_v6) && written.parse::<Ipv6Addr>().ok() == parsed
    } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
        v4.is_loopback() && written.parse::<Ipv4Addr>() == Ok(v4)
    } else {
        host == "localhost" && written.eq_ignore_ascii_case("localhost")
    }
}

/// The host of an `http://` URL as written (without brackets).
fn authority_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn is_loopback_v6(a: Ipv6Addr) -> bool {
    a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
}

/// `accessLogs` as written, checked, with the defaults for what it leaves out.
fn access_logs(f: FileAccessLogs) -> Result<AccessLogs, String> {
    let dir = f.dir.unwrap_or_else(|| AccessLog::DEFAULT_DIR.to_string());
    check_log_path(&dir).map_err(|why| format!("accessLogs.dir {why}"))?;
    let files = f.files.unwrap_or_default();
    for (host, file) in &files {
        if !crate::spec::is_dns_label(host) {
            return Err(format!(
                "accessLogs.files: {:?} is not a Host name (a DNS label: lowercase letters, digits and `-`)",
                host
            ));
        }
        check_log_path(file).map_err(|why| format!("accessLogs.files.{host} {why}"))?;
        if file.ends_with('/') {
            return Err(format!(
                "accessLogs.files.{host} is a directory; expected a file"
            ));
        }
    }
    let roll_size_mb = f.roll_size_mb.unwrap_or(AccessLog::DEFAULT_ROLL_SIZE_MB);
    if !(1..=MAX_ROLL_SIZE_MB).contains(&roll_size_mb) {
        return Err(format!(
            "accessLogs.rollSizeMb: expected 1 to {MAX_ROLL_SIZE_MB}"
        ));
    }
    let roll_keep = f.roll_keep.unwrap_or(AccessLog::DEFAULT_ROLL_KEEP);
    if !(1..=MAX_ROLL_KEEP).contains(&roll_keep) {
        return Err(format!(
            "accessLogs.rollKeep: expected 1 to {MAX_ROLL_KEEP}"
        ));
    }
    Ok(AccessLogs {
        enabled: f.enabled.unwrap_or(true),
        dir,
        files,
        roll_size_mb,
        roll_keep,
    })
}

/// A path Caddy is to write an access log at: absolute, without `.` or `..` steps, printable.
fn check_log_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("is not an absolute path");
    }
    if path.len() > MAX_PATH || path.chars().any(char::is_control) {
        return Err("is not a usable path (too long, or a control character)");
    }
    if path.split('/').any(|step| step == "." || step == "..") {
        return Err("has a `.` or `..` step; expected a plain absolute path");
    }
    Ok(())
}

/// Parses one entry of an endpoint list.
fn allowed_entry(kind: Kind, text: &str) -> Result<Allowed, String> {
    if kind == Kind::Ssh {
        return ssh_entry(text)
            .ok_or_else(|| "expected `[user@]host[:port]`, e.g. `root@203.0.113.10`".into());
    }
    match text {
        "loopback" => return Ok(Allowed::Loopback),
        "unix" if kind == Kind::Podman => return Ok(Allowed::Unix),
        _ => {}
    }
    if let Some(path) = text.strip_prefix("unix://") {
        if kind != Kind::Podman {
            return Err("unix sockets are for Podman only".into());
        }
        if !path.starts_with('/') {
            return Err("expected unix:///absolute/path".into());
        }
        return Ok(Allowed::UnixPath(path.to_string()));
    }
    let expected = || {
        format!(
            "expected `loopback`{}, or {}://HOST:PORT",
            if kind == Kind::Podman {
                ", `unix`, unix:///PATH"
            } else {
                ""
            },
            kind.scheme()
        )
    };
    if !text.starts_with(&format!("{}://", kind.scheme())) {
        return Err(expected());
    }
    match target(kind, text) {
        Ok(Target::Net { host, port, .. }) => Ok(Allowed::Origin { host, port }),
        _ => Err(expected()),
    }
}

/// `[user@]host[:port]` of `endpoints.ssh`.
fn ssh_entry(text: &str) -> Option<Allowed> {
    let (user, rest) = match text.split_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, text),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|p| *p > 0)?)),
        None => (rest, None),
    };
    let word = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    (user.is_none_or(word) && word(host)).then(|| Allowed::Ssh {
        user: user.map(str::to_string),
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// How an entry is shown in a refusal.
fn show(a: &Allowed) -> String {
    match a {
        Allowed::Loopback => "loopback".into(),
        Allowed::Unix => "unix".into(),
        Allowed::UnixPath(p) => format!("unix://{p}"),
        Allowed::Origin { host, port } => format!("{host}:{port}"),
        Allowed::Ssh { user, host, port } => format!(
            "{}{host}{}",
            user.as_ref().map(|u| format!("{u}@")).unwrap_or_default(),
            port.map(|p| format!(":{p}")).unwrap_or_default()
        ),
    }
}

/// A variable name, or one with a single `*` standing for any run of characters.
fn is_key_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.matches('*').count() <= 1
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*')
}

/// Whether `name` matches `pattern` (at most one `*`).
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, suffix)) => {
            name.len() >= prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dns::PowerDnsRef;

    fn zone(api: &str, var: &str) -> ZoneRef {
        ZoneRef {
            name: "codeb.test".into(),
            powerdns: Some(PowerDnsRef {
                api: api.into(),
                server_id: "localhost".into(),
                api_key_env: var.into(),
            }),
            ttl: 300,
        }
    }

    fn host(podman: &str, admin: &str) -> HostRef {
        HostRef {
            name: "web".into(),
            podman: podman.into(),
            caddy_admin: admin.into(),
            ..crate::plan::tests::host()
        }
    }

    fn config(text: &str) -> Config {
        Config::parse(Path::new("/etc/codeb/config.yaml"), text).unwrap()
    }

    fn remote(target: &str, port: Option<u16>) -> HostRef {
        HostRef {
            ssh: Some(crate::model::SshRef {
                target: target.into(),
                port,
                identity_file: None,
                known_hosts: None,
                agent: "codeb".into(),
            }),
            ..host("unix:///run/podman/podman.sock", "http://127.0.0.1:2019")
        }
    }

    #[test]
    fn a_remote_host_needs_its_ssh_target_listed_by_the_operator() {
        let none = Config::defaults("/s/config.yaml");
        let err = none
            .check_host(&remote("root@10.0.0.2", None))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Host web: spec.ssh root@10.0.0.2 is not an SSH target")
                && err.contains("(allowed: none)")
                && err.contains("endpoints.ssh"),
            "{err}"
        );
        let c = config("endpoints:\n  ssh: [\"root@10.0.0.2\", \"edge.example:2222\"]\n");
        c.check_host(&remote("root@10.0.0.2", None)).unwrap();
        c.check_host(&remote("root@10.0.0.2", Some(22))).unwrap();
        c.check_host(&remote("deploy@edge.example", Some(2222)))
            .unwrap();
        c.check_host(&remote("edge.example", Some(2222))).unwrap();
        for (target, port) in [
            ("deploy@10.0.0.2", None),
            ("root@10.0.0.2", Some(2222)),
            ("root@10.0.0.3", None),
            ("edge.example", None),
        ] {
            assert!(
                c.check_host(&remote(target, port)).is_err(),
                "{target} {port:?} allowed"
            );
        }
        // The remote endpoints still go through their own lists.
        let mut far = remote("root@10.0.0.2", None);
        far.podman = "tcp://10.0.0.9:8888".into();
        assert!(c.check_host(&far).is_err());
        for bad in ["-oProxyCommand=x", "root@", "a b", "root@10.0.0.2:0"] {
            let text = format!("endpoints:\n  ssh: [\"{bad}\"]\n");
            assert!(
                Config::parse(Path::new("/c.yaml"), &text).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn without_a_file_only_pdns_and_codeb_variables_may_hold_a_key() {
        let c = Config::defaults("/s/config.yaml");
        assert!(c.allows_key_variable("PDNS_API_KEY"));
        assert!(c.allows_key_variable("CODEB_TEST_WRONG_KEY"));
        for foreign in [
            "GITHUB_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "PDNS",
            "XPDNS_KEY",
            "pdns_key",
        ] {
            assert!(!c.allows_key_variable(foreign), "{foreign}");
        }
    }

    #[test]
    fn a_refused_key_variable_names_the_zone_the_variable_and_where_to_allow_it() {
        let c = Config::defaults("/var/lib/codeb/config.yaml");
        let err = c
            .check_zone(&zone("http://127.0.0.1:8081", "GITHUB_TOKEN"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Zone codeb.test: spec.powerdns.apiKeyEnv names GITHUB_TOKEN"),
            "{err}"
        );
        assert!(
            err.contains("keyVariables")
                && err.contains("/var/lib/codeb/config.yaml (there is none"),
            "{err}"
        );
    }

    #[test]
    fn without_a_file_only_loopback_and_unix_sockets_are_allowed() {
        let c = Config::defaults("/s/config.yaml");
        for api in [
            "http://127.0.0.1:8081",
            "http://localhost:8081",
            "http://[::1]:8081",
            "http://127.0.0.2:1",
        ] {
            assert!(c.check_zone(&zone(api, "PDNS_API_KEY")).is_ok(), "{api}");
        }
        assert!(c
            .check_host(&host(
                "unix:///run/podman/podman.sock",
                "http://127.0.0.1:2019"
            ))
            .is_ok());
        assert!(c
            .check_host(&host("tcp://127.0.0.1:8888", "http://localhost:2019"))
            .is_ok());
        for api in [
            "http://10.0.0.2:8081",
            "http://pdns.example.com:8081",
            "http://0.0.0.0:8081",
        ] {
            let err = c
                .check_zone(&zone(api, "PDNS_API_KEY"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "spec.powerdns.api {api} is plaintext to an address off this machine"
                )),
                "{err}"
            );
            assert!(err.contains("endpoints.powerdns"), "{err}");
        }
        let err = c
            .check_host(&host("tcp://10.0.0.5:8888", "http://127.0.0.1:2019"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Host web: spec.podman tcp://10.0.0.5:8888 is plaintext"),
            "{err}"
        );
        assert!(err.contains("(allowed: loopback, unix)"), "{err}");
        let err = c
            .check_host(&host("unix:///run/p.sock", "http://10.0.0.5:2019"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.caddy.admin http://10.0.0.5:2019")
                && err.contains("endpoints.caddyAdmin"),
            "{err}"
        );
    }

    #[test]
    fn a_host_that_only_looks_like_loopback_is_not_loopback() {
        let c = Config::defaults("/s/config.yaml");
        for api in [
            // Credentials: the client would dial the host after the `@`.
            "http://127.0.0.1:80@10.0.0.2:8081",
            "http://127.0.0.1@10.0.0.2",
            // Forms a URL parser and a resolver may read differently.
            "http://127.1:8081",
            "http://0x7f.0.0.1:8081",
            "http://2130706433:8081",
            "http://localhost.:8081",
            "http://127.0.0.1.nip.io:8081",
            // A path, a query or another scheme is not a plain endpoint.
            "http://127.0.0.1:8081/api",
            "https://127.0.0.1:8081",
        ] {
            assert!(c.check_zone(&zone(api, "PDNS_API_KEY")).is_err(), "{api}");
        }
        for podman in [
            "tcp://127.0.0.1:1@10.0.0.5:8888",
            "tcp://127.1:8888",
            "http://127.0.0.1:8888",
        ] {
            assert!(
                c.check_host(&host(podman, "http://127.0.0.1:2019"))
                    .is_err(),
                "{podman}"
            );
        }
    }

    #[test]
    fn a_file_allows_named_variables_and_exact_origins_only() {
        let c = config(
            "keyVariables: [DNS_KEY, 'TEAM_*_PDNS']\nendpoints:\n  powerdns: ['http://10.0.0.2:8081']\n  podman: [unix, 'tcp://10.0.0.5:8888']\n",
        );
        assert!(c.allows_key_variable("DNS_KEY") && c.allows_key_variable("TEAM_A_PDNS"));
        assert!(
            !c.allows_key_variable("PDNS_API_KEY"),
            "a list given replaces the default"
        );
        // (PowerDNS API, allowed?)
        for (api, ok) in [
            ("http://10.0.0.2:8081", true),
            ("http://10.0.0.2:8081/", true),
            ("http://10.0.0.2:8082", false),
            ("http://10.0.0.3:8081", false),
            // Loopback is not listed: a list given replaces its default.
            ("http://127.0.0.1:8081", false),
        ] {
            assert_eq!(c.check_zone(&zone(api, "DNS_KEY")).is_ok(), ok, "{api}");
        }
        // (Podman endpoint, allowed?): caddyAdmin, not listed, keeps its default (loopback).
        for (podman, ok) in [
            ("tcp://10.0.0.5:8888", true),
            ("tcp://10.0.0.5:8889", false),
            ("tcp://127.0.0.1:8888", false),
            ("unix:///run/podman/podman.sock", true),
        ] {
            let h = host(podman, "http://127.0.0.1:2019");
            assert_eq!(c.check_host(&h).is_ok(), ok, "{podman}");
        }
        let err = c
            .check_zone(&zone("http://10.0.0.3:8081", "DNS_KEY"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(allowed: http://10.0.0.2:8081)")
                && err.ends_with("in /etc/codeb/config.yaml"),
            "{err}"
        );
    }

    #[test]
    fn a_unix_path_entry_allows_that_socket_only() {
        let c = config("endpoints:\n  podman: ['unix:///run/podman/podman.sock']\n");
        assert!(c
            .check_host(&host(
                "unix:///run/podman/podman.sock",
                "http://127.0.0.1:2019"
            ))
            .is_ok());
        assert!(c
            .check_host(&host(
                "unix:///var/run/docker.sock",
                "http://127.0.0.1:2019"
            ))
            .is_err());
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_field() {
        let bad = [
            ("keyVariables: ['A B']\n", "keyVariables[0]"),
            ("keyVariables: ['A_**']\n", "keyVariables[0]"),
            (
                "endpoints:\n  powerdns: ['10.0.0.0/8']\n",
                "endpoints.powerdns[0]",
            ),
            ("endpoints:\n  powerdns: [unix]\n", "endpoints.powerdns[0]"),
            (
                "endpoints:\n  caddyAdmin: ['unix:///run/c.sock']\n",
                "endpoints.caddyAdmin[0]",
            ),
            (
                "endpoints:\n  podman: ['http://10.0.0.5:8888']\n",
                "endpoints.podman[0]",
            ),
            (
                "endpoints:\n  podman: ['tcp://u@10.0.0.5:8888']\n",
                "endpoints.podman[0]",
            ),
            ("keyVariable: [A]\n", "keyVariable"),
            ("endpoints:\n  pdns: []\n", "pdns"),
        ];
        for (text, field) in bad {
            let err = Config::parse(Path::new("/c.yaml"), text)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("codeb's configuration /c.yaml: ") && err.contains(field),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn loading_needs_a_named_file_and_falls_back_to_the_defaults_only_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(None, dir.path()).unwrap();
        assert!(!c.loaded && c.allows_key_variable("PDNS_API_KEY"));
        let named = dir.path().join("mine.yaml");
        assert!(matches!(
            Config::load(Some(&named), dir.path()),
            Err(Error::Read { .. })
        ));
        std::fs::write(dir.path().join(FILE_NAME), "keyVariables: [ONLY]\n").unwrap();
        let c = Config::load(None, dir.path()).unwrap();
        assert!(
            c.loaded && c.allows_key_variable("ONLY") && !c.allows_key_variable("PDNS_API_KEY")
        );
    }

    #[test]
    fn a_file_others_can_write_or_that_is_not_a_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "keyVariables: [ONLY]\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = Config::load(None, dir.path()).unwrap_err();
        assert!(matches!(err, Error::Writable { mode: 0o666, .. }), "{err}");
        assert!(matches!(
            Config::load(Some(dir.path()), dir.path()),
            Err(Error::NotAFile { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, "#".repeat(MAX_BYTES as usize + 1)).unwrap();
        assert!(matches!(
            Config::load(None, dir.path()),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn a_hosts_data_servers_are_checked_like_its_other_endpoints_and_their_password_variable() {
        use crate::model::data::{PostgresRef, RedisRef};
        let c = config("");
        let mut h = host("unix:///run/podman/podman.sock", "http://127.0.0.1:2019");
        h.postgres = Some(PostgresRef {
            url: "postgres://codeb_admin@127.0.0.1:5432/postgres".into(),
            password_env: "PG_ADMIN_PASSWORD".into(),
            app_host: None,
        });
        h.redis = Some(RedisRef {
            url: "redis://[::1]:6379".into(),
            password_env: "REDIS_ADMIN_PASSWORD".into(),
            app_host: None,
        });
        c.check_host(&h).unwrap();
        let mut leak = h.clone();
        leak.redis.as_mut().unwrap().password_env = "GITHUB_TOKEN".into();
        let err = c.check_host(&leak).unwrap_err().to_string();
        assert!(
            err.contains("spec.redis.passwordEnv names GITHUB_TOKEN")
                && err.contains("keyVariables"),
            "{err}"
        );
        let mut far = h.clone();
        far.postgres.as_mut().unwrap().url = "postgres://codeb_admin@10.0.0.3:5432/postgres".into();
        let err = c.check_host(&far).unwrap_err().to_string();
        assert!(
            err.contains("endpoints.postgres") && err.contains("off this machine"),
            "{err}"
        );
        let allowed = config("endpoints:\n  postgres: ['postgres://10.0.0.3:5432']\n");
        allowed.check_host(&far).unwrap();
        let mut tricky = h;
        tricky.postgres.as_mut().unwrap().url = "postgres://a@127.1:5432/postgres".into();
        assert!(
            c.check_host(&tricky).is_err(),
            "127.1 is not taken for loopback"
        );
    }

    /// Two Hosts with their access logs on and one a manifest turned off, placed by `c`.
    fn placed(c: &Config) -> BTreeMap<String, Option<AccessLog>> {
        let mut d = Desired::default();
        for (name, on) in [("edge", true), ("web", true), ("quiet", false)] {
            let h = HostRef {
                name: name.into(),
                access_log: on.then(|| AccessLog::default_for(name)),
                ..crate::plan::tests::host()
            };
            d.hosts.insert(name.into(), h);
        }
        c.place_access_logs(&mut d);
        d.hosts
            .into_iter()
            .map(|(n, h)| (n, h.access_log))
            .collect()
    }

    #[test]
    fn access_logs_go_to_var_log_caddy_per_host_by_default_and_where_the_operator_says() {
        let by_default = placed(&Config::defaults("/s/config.yaml"));
        assert_eq!(by_default["web"], Some(AccessLog::default_for("web")));
        assert_eq!(
            by_default["edge"].as_ref().unwrap().file,
            "/var/log/caddy/codeb-edge.access.log"
        );
        assert_eq!(
            by_default["quiet"], None,
            "a manifest's `accessLog: false` holds"
        );

        let c = config(
            "accessLogs:\n  dir: /srv/logs/\n  files: {edge: /data/edge.log}\n  rollSizeMb: 5\n  rollKeep: 3\n",
        );
        let logs = placed(&c);
        let log = |file: &str| {
            Some(AccessLog {
                file: file.into(),
                roll_size_mb: 5,
                roll_keep: 3,
            })
        };
        assert_eq!(logs["web"], log("/srv/logs/codeb-web.access.log"));
        assert_eq!(logs["edge"], log("/data/edge.log"));
        assert_eq!(
            logs["quiet"], None,
            "the operator places a log, never turns it on"
        );

        let off = placed(&config("accessLogs: {enabled: false}\n"));
        assert!(off.values().all(Option::is_none), "{off:?}");
    }

    #[test]
    fn an_access_log_path_that_is_relative_climbs_or_is_not_text_is_refused() {
        let bad = [
            (
                "accessLogs: {dir: logs}\n",
                "accessLogs.dir is not an absolute path",
            ),
            (
                "accessLogs: {dir: /var/log/../../etc}\n",
                "accessLogs.dir has a `.` or `..` step",
            ),
            (
                "accessLogs: {dir: \"/var/log/\\ncaddy\"}\n",
                "accessLogs.dir is not a usable path",
            ),
            (
                "accessLogs: {files: {web: ./web.log}}\n",
                "accessLogs.files.web is not an absolute path",
            ),
            (
                "accessLogs: {files: {web: /var/log/}}\n",
                "accessLogs.files.web is a directory",
            ),
            (
                "accessLogs: {files: {Web: /l/web.log}}\n",
                "\"Web\" is not a Host name",
            ),
            (
                "accessLogs: {files: {../x: /l/web.log}}\n",
                "is not a Host name",
            ),
            (
                "accessLogs: {rollSizeMb: 0}\n",
                "accessLogs.rollSizeMb: expected 1 to",
            ),
            (
                "accessLogs: {rollKeep: 0}\n",
                "accessLogs.rollKeep: expected 1 to",
            ),
            ("accessLogs: {file: /l/x.log}\n", "unknown field `file`"),
        ];
        for (text, message) in bad {
            let err = Config::parse(Path::new("/c.yaml"), text)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("codeb's configuration /c.yaml: ") && err.contains(message),
                "{text}: {err}"
            );
        }
    }
}
