//! Semantic and cross-document checks of a loaded set of documents, producing [`Manifests`].
//!
//! Each check reports at the origin of the offending value (found through the document's node
//! tree): names are DNS labels, no kind+name is defined twice, a Project's Host and Zone exist,
//! addresses, endpoints, ports, paths, durations, images, env names and hostnames are well-formed,
//! durations are within their maximums (see `limits`), every hostname is served by one
//! environment only and leaves room for its preview hostnames, no two environments need one
//! container name, a Host's `containers` policy is well-formed, and every environment's image and
//! `resources` are within its Host's allow-list and maximums. [`check_recorded`] checks the same names against the environments earlier
//! applies recorded (the service passes them in). No I/O; `env` values are never read.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::document::{Document, Kind, Spec};
use super::error::{did_you_mean, quote, Error, Errors};
use super::limits::{MAX_GRACE_PERIOD, MAX_HEALTH_TIMEOUT, MAX_STOP_TIMEOUT};
use super::resources::{
    capability, has_registry, parse_cpus, parse_memory, show_cpus, show_memory, Limits, MAX_PIDS,
    MIN_MEMORY_BYTES,
};
use super::types::{
    ContainerPolicy, EnvOrigins, HostSpec, Manifests, Named, Origin, ProjectSpec, Resources,
    ZoneSpec,
};

/// The longest hostname whose preview hostnames (`blue.` and `green.` before it) are still DNS
/// names of at most 253 characters.
const MAX_PREVIEWED_HOSTNAME: usize = 253 - "green.".len();

const LABEL_RULE: &str =
    "lowercase letters, digits and `-`, starting with a letter, ending with a letter or digit, at most 63 characters";

/// Checks every document and the set as a whole. References to Hosts and Zones are only checked
/// when `complete`: after a load error the referenced document may be the one that failed.
///
/// # Errors
/// Every mistake found, each at the origin of the offending value.
pub(crate) fn validate(documents: Vec<Document>, complete: bool) -> Result<Manifests, Vec<Error>> {
    let mut errors = Vec::new();
    let mut manifests = Manifests::default();
    let mut origins: BTreeMap<(Kind, String), Origin> = BTreeMap::new();
    let mut checked = Vec::new();
    for doc in documents {
        check_name(&doc, &mut errors);
        check_labels(&doc, &mut errors);
        match &doc.spec {
            Spec::Host(host) => check_host(&doc, host, &mut errors),
            Spec::Zone(zone) => check_zone(&doc, zone, &mut errors),
            Spec::Project(project) => check_project(&doc, project, &mut errors),
        }
        if let Some(first) = origins.get(&(doc.kind, doc.name.clone())) {
            errors.push(Error::new(
                doc.name_origin.clone(),
                format!(
                    "duplicate {} {}: already defined at {first}",
                    doc.kind,
                    doc.show(&["metadata", "name"], &doc.name)
                ),
            ));
            continue;
        }
        origins.insert((doc.kind, doc.name.clone()), doc.name_origin.clone());
        let (name, origin, labels) = (
            doc.name.clone(),
            doc.name_origin.clone(),
            doc.labels.clone(),
        );
        match doc.spec.clone() {
            Spec::Host(spec) => {
                manifests.hosts.insert(
                    name.clone(),
                    Named {
                        name,
                        labels,
                        origin,
                        spec,
                    },
                );
            }
            Spec::Zone(spec) => {
                manifests.zones.insert(
                    name.clone(),
                    Named {
                        name,
                        labels,
                        origin,
                        spec,
                    },
                );
            }
            Spec::Project(spec) => {
                for env_name in spec.environments.keys() {
                    manifests.env_origins.insert(
                        (name.clone(), env_name.clone()),
                        env_origins(&doc, env_name),
                    );
                }
                manifests.projects.insert(
                    name.clone(),
                    Named {
                        name,
                        labels,
                        origin,
                        spec,
                    },
                );
            }
        }
        checked.push(doc);
    }
    if complete {
        check_references(&checked, &manifests, &mut errors);
        check_confinement(&checked, &manifests, &mut errors);
        check_zone_consent(&checked, &manifests, &mut errors);
        check_host_consent(&checked, &manifests, &mut errors);
    }
    check_hostnames(&checked, &mut errors);
    check_container_names(&checked, &mut errors);
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// Where environment `env_name` of `doc` was written: found when asked, from the document's tree.
fn env_origins(doc: &Document, env_name: &str) -> EnvOrigins {
    let explicit_hostname = match &doc.spec {
        Spec::Project(p) => p
            .environments
            .get(env_name)
            .is_some_and(|e| e.hostname.is_some()),
        _ => false,
    };
    EnvOrigins {
        file: doc.file.clone(),
        tree: doc.tree.clone(),
        env: env_name.to_string(),
        explicit_hostname,
    }
}

/// Refuses an inline `env:` value for a protected key (`protected`: the operator's list, see
/// `config`): those are set through `codeb env set --protected` only, so a manifest (which a
/// developer may write) cannot replace a database password.
///
/// # Errors
/// One error per such key, at its file:line:column, naming the key, never its value.
pub fn check_protected(manifests: &Manifests, protected: &[String]) -> Result<(), Errors> {
    let mut errors = Vec::new();
    for ((project, env), origins) in &manifests.env_origins {
        let keys = manifests
            .projects
            .get(project)
            .and_then(|p| p.spec.environments.get(env))
            .map(|e| e.env.keys());
        for key in keys.into_iter().flatten() {
            if protected.iter().any(|p| p == key) {
                errors.push(Error::new(
                    origins.env_key(key),
                    format!(
                        "`{}` is a protected env key ({project}/{env}): it is set with `codeb env set {project} --env {env} --protected {}=...` by an admin, never in a manifest; remove it from `env:`",
                        quote(key),
                        quote(key)
                    ),
                ));
            }
        }
    }
    errors.sort_by(|a, b| a.origin().cmp(b.origin()));
    match Errors::from_vec(errors) {
        None => Ok(()),
        Some(errors) => Err(errors),
    }
}

fn check_name(doc: &Document, errors: &mut Vec<Error>) {
    let name = &doc.name;
    match doc.kind {
        Kind::Zone if !is_dns_name(name) => errors.push(Error::new(
            doc.name_origin.clone(),
            format!(
                "invalid Zone name {}: expected a DNS domain name (labels of lowercase letters, digits and `-`, separated by `.`, at most 253 characters)",
                doc.show(&["metadata", "name"], name)
            ),
        )),
        Kind::Host | Kind::Project if !is_dns_label(name) => errors.push(Error::new(
            doc.name_origin.clone(),
            format!(
                "invalid name {}: expected a DNS-1123 label ({LABEL_RULE})",
                doc.show(&["metadata", "name"], name)
            ),
        )),
        _ => {}
    }
}

fn check_host(doc: &Document, host: &HostSpec, errors: &mut Vec<Error>) {
    // "invalid {what} {value}: {expected}", at the value.
    let mut invalid = |path: &[&str], what: &str, value: &str, expected: &str| {
        let message = format!("invalid {what} {}: {expected}", doc.show(path, value));
        errors.push(Error::new(doc.value_origin(path), message));
    };
    if host.address.parse::<IpAddr>().is_err() {
        invalid(
            &["spec", "address"],
            "address",
            &host.address,
            "expected an IPv4 or IPv6 address, e.g. `203.0.113.10`",
        );
    }
    if host.publish_address.parse::<IpAddr>().is_err() {
        invalid(
            &["spec", "publishAddress"],
            "publishAddress",
            &host.publish_address,
            "expected an IP address, e.g. `127.0.0.1`",
        );
    }
    if !is_podman_endpoint(&host.podman) {
        invalid(
            &["spec", "podman"],
            "podman endpoint",
            &host.podman,
            "expected `unix:///path/to/podman.sock` or `tcp://host:port`",
        );
    }
    if !is_http_url(&host.caddy.admin) {
        invalid(
            &["spec", "caddy", "admin"],
            "caddy admin",
            &host.caddy.admin,
            "expected an `http://` URL, e.g. `http://127.0.0.1:2019`",
        );
    }
    for (i, listen) in host.caddy.listen.iter().enumerate() {
        if !is_listen_address(listen) {
            invalid(
                &["spec", "caddy", "listen", &i.to_string()],
                "listen address",
                listen,
                "expected `host:port` or `:port`, e.g. `:443`",
            );
        }
    }
    for (i, grant) in host.projects.iter().flatten().enumerate() {
        if !is_project_grant(grant) {
            invalid(
                &["spec", "projects", &i.to_string()],
                "project",
                grant,
                "expected a project name, or a prefix of one and `*`, e.g. `shop` or `team-a-*`",
            );
        }
    }
    if host.caddy.listen.is_empty() {
        errors.push(Error::new(
            doc.value_origin(&["spec", "caddy", "listen"]),
            "`listen` is empty: expected at least one `host:port`".to_string(),
        ));
    }
    check_container_policy(doc, &host.containers, errors);
    check_data_servers(doc, host, errors);
    check_ssh(doc, host, errors);
}

/// A remote Host's `ssh` block, and what `ssh` asks of its other endpoints: the agent reaches
/// only a unix socket and a loopback Caddy admin on its host. Its publish address is the host's
/// (a loopback one is the host's loopback: its agent makes the health probes there).
fn check_ssh(doc: &Document, host: &HostSpec, errors: &mut Vec<Error>) {
    let Some(ssh) = &host.ssh else { return };
    let mut invalid = |path: &[&str], what: &str, value: &str, expected: &str| {
        let message = format!("invalid {what} {}: {expected}", doc.show(path, value));
        errors.push(Error::new(doc.value_origin(path), message));
    };
    if !is_ssh_target(&ssh.target) {
        invalid(
            &["spec", "ssh", "target"],
            "ssh target",
            &ssh.target,
            "expected `[user@]host` (letters, digits, `.`, `-`, `_`), e.g. `root@203.0.113.10`",
        );
    }
    if ssh.port == Some(0) {
        invalid(
            &["spec", "ssh", "port"],
            "ssh port",
            "0",
            "expected 1 to 65535",
        );
    }
    for (field, value) in [
        ("identityFile", &ssh.identity_file),
        ("knownHosts", &ssh.known_hosts),
    ] {
        if let Some(path) = value.as_deref().filter(|p| !is_ssh_path(p)) {
            invalid(
                &["spec", "ssh", field],
                field,
                path,
                "expected an absolute path of letters, digits, `.`, `_`, `-` and `/` on codeb's machine",
            );
        }
    }
    if ssh.agent != "codeb" && !is_ssh_path(&ssh.agent) {
        invalid(
            &["spec", "ssh", "agent"],
            "agent",
            &ssh.agent,
            "expected `codeb` or an absolute path of letters, digits, `.`, `_`, `-` and `/`, e.g. `/usr/local/bin/codeb`",
        );
    }
    let socket = host.podman.strip_prefix("unix://");
    if is_podman_endpoint(&host.podman) && !socket.is_some_and(is_ssh_path) {
        invalid(
            &["spec", "podman"],
            "podman endpoint of a Host with `ssh`",
            &host.podman,
            "expected the Podman socket on that host, `unix:///run/podman/podman.sock` (the agent reaches a unix socket only)",
        );
    }
    if is_http_url(&host.caddy.admin) && remote_admin(&host.caddy.admin).is_none() {
        invalid(
            &["spec", "caddy", "admin"],
            "caddy admin of a Host with `ssh`",
            &host.caddy.admin,
            "expected Caddy's admin API on that host's loopback, `http://127.0.0.1:2019` (the agent reaches nothing else)",
        );
    }
}

/// `http://127.0.0.1:2019` → `127.0.0.1:2019`: a loopback IP and a port, what the agent dials.
pub(crate) fn remote_admin(url: &str) -> Option<String> {
    let authority = url.strip_prefix("http://")?.trim_end_matches('/');
    let (ip, port) = authority.rsplit_once(':')?;
    let ip: IpAddr = ip.trim_matches(['[', ']']).parse().ok()?;
    (ip.is_loopback() && is_port(port)).then(|| authority.to_string())
}

/// `[user@]host`: see `patterns::SSH_TARGET`.
fn is_ssh_target(s: &str) -> bool {
    let (user, host) = match s.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, s),
    };
    let user_ok = user.is_none_or(|u| {
        (1..=32).contains(&u.len())
            && !u.starts_with(['.', '-'])
            && u.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    });
    user_ok
        && (1..=253).contains(&host.len())
        && host.starts_with(|c: char| c.is_ascii_alphanumeric())
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
}

/// An absolute path of `[A-Za-z0-9._/-]`: see `patterns::SSH_PATH`.
fn is_ssh_path(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 4096
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// A project name, or a prefix of one (letters, digits, `-`, starting with a letter) and `*`.
fn is_project_grant(s: &str) -> bool {
    match s.strip_suffix('*') {
        Some(prefix) => {
            (1..=63).contains(&prefix.len())
                && prefix.starts_with(|c: char| c.is_ascii_lowercase())
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        }
        None => is_dns_label(s),
    }
}

/// A Host's `postgres`, `redis` and `backups`: URLs without passwords, the password's variable
/// name, an app address, an absolute backup directory and schedules in range.
fn check_data_servers(doc: &Document, host: &HostSpec, errors: &mut Vec<Error>) {
    let errors = std::cell::RefCell::new(errors);
    let invalid_at = |origin: Origin, message: String| {
        errors.borrow_mut().push(Error::new(origin, message));
    };
    let invalid = |path: &[&str], what: &str, value: &str, expected: &str| {
        let message = format!("invalid {what} {}: {expected}", doc.show(path, value));
        invalid_at(doc.value_origin(path), message);
    };
    let servers = [
        (
            "postgres",
            host.postgres.as_deref(),
            "postgres://",
            "`postgres://codeb_admin@127.0.0.1:5432/postgres`",
        ),
        (
            "redis",
            host.redis.as_deref(),
            "redis://",
            "`redis://127.0.0.1:6379`",
        ),
    ];
    for (field, server, scheme, example) in servers {
        let Some(server) = server else { continue };
        let url_path = ["spec", field, "url"];
        let url_problem = match data_url_problem(&server.url, scheme) {
            // The URL holds a secret: it is not shown.
            Some(UrlProblem::Password) => Some(format!(
                "invalid {field} url (not shown: it holds a password): give the NAME of a \
                 variable holding the password in `passwordEnv`, e.g. {example}"
            )),
            Some(UrlProblem::Other(problem)) => Some(format!(
                "invalid {field} url {}: {problem}, e.g. {example}",
                doc.show(&url_path, &server.url)
            )),
            None => None,
        };
        if let Some(message) = url_problem {
            invalid_at(doc.value_origin(&url_path), message);
        }
        if !is_env_name(&server.password_env) {
            invalid(
                &["spec", field, "passwordEnv"],
                "passwordEnv",
                &server.password_env,
                "expected the NAME of an environment variable (letters, digits and `_`, not \
                 starting with a digit), e.g. `PG_ADMIN_PASSWORD`; the password itself never \
                 goes in a manifest",
            );
        }
        if let Some(app) = &server.app_host {
            if !is_host_port(app) {
                invalid(
                    &["spec", field, "appHost"],
                    "appHost",
                    app,
                    "expected `host:port`, e.g. `10.89.0.1:5432`",
                );
            }
        }
    }
    let Some(backups) = &host.backups else { return };
    if !backups.dir.starts_with('/')
        || backups.dir.contains(['\0', '\n'])
        || backups.dir.len() > 4096
    {
        invalid(
            &["spec", "backups", "dir"],
            "backup dir",
            &backups.dir,
            "expected an absolute path, e.g. `/srv/backups/codeb`",
        );
    }
    for (field, schedule) in [("database", &backups.database), ("cache", &backups.cache)] {
        if schedule.every < Duration::from_secs(60)
            || schedule.every > Duration::from_secs(366 * 86_400)
        {
            let written = humantime::format_duration(schedule.every).to_string();
            invalid(
                &["spec", "backups", field, "every"],
                "backup interval",
                &written,
                "expected `1m` to `366d`, e.g. `24h`",
            );
        }
        if schedule.keep == 0 || schedule.keep > 1000 {
            invalid(
                &["spec", "backups", field, "keep"],
                "keep",
                &schedule.keep.to_string(),
                "expected how many backups to keep per environment, 1 to 1000",
            );
        }
    }
}

enum UrlProblem {
    Password,
    Other(&'static str),
}

/// What is wrong with an admin URL of a data server, if anything.
fn data_url_problem(url: &str, scheme: &str) -> Option<UrlProblem> {
    let Some(rest) = url.strip_prefix(scheme) else {
        return Some(UrlProblem::Other("expected the scheme it names"));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(UrlProblem::Other("expected no spaces"));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.rsplit_once('@') {
        Some((user, host)) => {
            if user.contains(':') {
                return Some(UrlProblem::Password);
            }
            if user.is_empty() {
                return Some(UrlProblem::Other("expected a user name before `@`"));
            }
            host
        }
        None => authority,
    };
    if !is_host_port(host) {
        return Some(UrlProblem::Other("expected `host:port` after the scheme"));
    }
    None
}

/// A Host's `containers`: quantities parse and are in range, its defaults are within its
/// maximums, capabilities are Linux's, the user is a user, allowed images name their registry.
fn check_container_policy(doc: &Document, policy: &ContainerPolicy, errors: &mut Vec<Error>) {
    let base = ["spec", "containers"];
    check_resources(
        doc,
        &[&base[..], &["resources"]].concat(),
        &policy.resources,
        errors,
    );
    let max_path = [&base[..], &["maxResources"]].concat();
    check_resources(doc, &max_path, &policy.max_resources, errors);
    let (defaults, max) = (policy.default_limits(), policy.max_limits());
    for (field, default, maximum) in limit_fields(defaults, max) {
        if default.0 > maximum.0 {
            let path = [&max_path[..], &[field]].concat();
            errors.push(Error::new(
                doc.value_origin(&path),
                format!(
                    "invalid maxResources {field} `{}`: below the Host's default `{}` (its \
                     `containers.resources`, or codeb's default); expected at least that",
                    maximum.1, default.1
                ),
            ));
        }
    }
    for (list, names) in [
        ("add", &policy.capabilities.add),
        ("drop", &policy.capabilities.drop),
    ] {
        for (i, name) in names.iter().enumerate() {
            let all = list == "drop" && name.eq_ignore_ascii_case("ALL");
            if !all && capability(name).is_none() {
                let index = i.to_string();
                let path = [&base[..], &["capabilities", list, &index]].concat();
                let message = format!(
                    "invalid capability {}: expected a Linux capability, e.g. `NET_BIND_SERVICE` \
                     (`CAP_` may be left out){}",
                    doc.show(&path, name),
                    if list == "drop" { ", or `ALL`" } else { "" }
                );
                errors.push(Error::new(doc.value_origin(&path), message));
            }
        }
    }
    if let Some(user) = &policy.user {
        if !is_user(user) {
            let path = [&base[..], &["user"]].concat();
            let message = format!(
                "invalid user {}: expected `uid`, `uid:gid` or a user name, e.g. `1000:1000`",
                doc.show(&path, user)
            );
            errors.push(Error::new(doc.value_origin(&path), message));
        }
    }
    for (i, prefix) in policy.images.allow.iter().enumerate() {
        if !has_registry(prefix) || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let index = i.to_string();
            let path = [&base[..], &["images", "allow", &index]].concat();
            let message = format!(
                "invalid allowed image prefix {}: expected a registry and more, without spaces, \
                 e.g. `ghcr.io/acme/` or `localhost/acme-`",
                doc.show(&path, prefix)
            );
            errors.push(Error::new(doc.value_origin(&path), message));
        }
    }
}

/// A limit as a number to compare and as a person writes it.
type Shown = (u64, String);

/// `(field, a's, b's)` of each limit, for comparisons.
fn limit_fields(a: Limits, b: Limits) -> [(&'static str, Shown, Shown); 3] {
    let memory = |l: Limits| (l.memory_bytes, show_memory(l.memory_bytes));
    let cpus = |l: Limits| (u64::from(l.millicpus), show_cpus(l.millicpus));
    let pids = |l: Limits| (u64::from(l.pids), l.pids.to_string());
    [
        ("memory", memory(a), memory(b)),
        ("cpus", cpus(a), cpus(b)),
        ("pids", pids(a), pids(b)),
    ]
}

/// One `resources` mapping at `path`: each quantity parses and is in range.
fn check_resources(doc: &Document, path: &[&str], r: &Resources, errors: &mut Vec<Error>) {
    let mut invalid = |field: &str, value: &str, expected: &str| {
        let path = [path, &[field]].concat();
        let message = format!("invalid {field} {}: {expected}", doc.show(&path, value));
        errors.push(Error::new(doc.value_origin(&path), message));
    };
    if let Some(memory) = &r.memory {
        match parse_memory(&memory.0) {
            Err(expected) => invalid("memory", &memory.0, expected),
            Ok(bytes) if bytes < MIN_MEMORY_BYTES => invalid(
                "memory",
                &memory.0,
                "expected at least `6Mi` (Podman's minimum)",
            ),
            Ok(_) => {}
        }
    }
    if let Some(cpus) = &r.cpus {
        match parse_cpus(&cpus.0) {
            Err(expected) => invalid("cpus", &cpus.0, expected),
            Ok(0) => invalid("cpus", &cpus.0, "expected at least `0.01`"),
            Ok(_) => {}
        }
    }
    if let Some(pids) = r.pids {
        if pids == 0 || pids > MAX_PIDS {
            invalid(
                "pids",
                &pids.to_string(),
                "expected 1-4194304 processes, e.g. `256`",
            );
        }
    }
}

/// `uid`, `uid:gid`, or a POSIX-ish user (and group) name.
fn is_user(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && (p.chars().all(|c| c.is_ascii_digit())
                || (p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && p.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
                    })))
    };
    match s.split_once(':') {
        Some((user, group)) => part(user) && part(group),
        None => part(s),
    }
}

fn check_zone(doc: &Document, zone: &ZoneSpec, errors: &mut Vec<Error>) {
    let mut invalid = |path: &[&str], what: &str, value: &str, expected: &str| {
        let message = format!("invalid {what} {}: {expected}", doc.show(path, value));
        errors.push(Error::new(doc.value_origin(path), message));
    };
    // RFC 2181 §8: a TTL is 31 bits; 0 would make every resolver ask again for every lookup.
    if zone.ttl == 0 || zone.ttl > i32::MAX as u32 {
        invalid(
            &["spec", "ttl"],
            "ttl",
            &zone.ttl.to_string(),
            "expected seconds from 1 to 2147483647, e.g. `300`",
        );
    }
    for (i, grant) in zone.external_hostnames.iter().enumerate() {
        let name = grant.strip_prefix("*.").unwrap_or(grant);
        if !is_dns_name(name) {
            let index = i.to_string();
            invalid(
                &["spec", "externalHostnames", &index],
                "external hostname",
                grant,
                "expected a lowercase DNS name, or `*.` and one, e.g. `shop.example.com` or `*.example.com`",
            );
        }
    }
    let Some(pdns) = &zone.powerdns else {
        return;
    };
    if !is_base_url(&pdns.api) {
        invalid(
            &["spec", "powerdns", "api"],
            "PowerDNS api",
            &pdns.api,
            "expected an `http://` URL without a path, e.g. `http://127.0.0.1:8081`",
        );
    }
    if !is_server_id(&pdns.server_id) {
        invalid(
            &["spec", "powerdns", "serverId"],
            "PowerDNS serverId",
            &pdns.server_id,
            "expected letters, digits, `.`, `_` or `-`, e.g. `localhost`",
        );
    }
    if !is_env_name(&pdns.api_key_env) {
        invalid(
            &["spec", "powerdns", "apiKeyEnv"],
            "apiKeyEnv",
            &pdns.api_key_env,
            "expected the NAME of an environment variable (letters, digits and `_`, not starting \
             with a digit), e.g. `PDNS_API_KEY`; the key itself never goes in a manifest",
        );
    }
}

fn check_project(doc: &Document, project: &ProjectSpec, errors: &mut Vec<Error>) {
    if project.environments.is_empty() {
        errors.push(Error::new(
            doc.value_origin(&["spec", "environments"]),
            "a Project needs at least one environment, e.g. `production`".to_string(),
        ));
    }
    for (name, env) in &project.environments {
        let path = |field: &[&'static str]| {
            let mut path = vec!["spec", "environments", name.as_str()];
            path.extend_from_slice(field);
            path
        };
        check_resources(doc, &path(&["resources"]), &env.resources, errors);
        // "invalid {what} {value}: {expected}", at the value.
        let mut invalid = |field: &[&'static str], what: &str, value: &str, expected: &str| {
            let path = path(field);
            let message = format!("invalid {what} {}: {expected}", doc.show(&path, value));
            errors.push(Error::new(doc.value_origin(&path), message));
        };
        if env.image.is_empty() || env.image.chars().any(char::is_whitespace) {
            invalid(
                &["image"],
                "image",
                &env.image,
                "expected an image reference without spaces, e.g. `ghcr.io/acme/app:1.4.2`",
            );
        }
        if !env.health_check.path.starts_with('/')
            || env.health_check.path.chars().any(char::is_whitespace)
        {
            invalid(
                &["healthCheck", "path"],
                "health check path",
                &env.health_check.path,
                "expected a path starting with `/`, without spaces",
            );
        }
        if let Some(hostname) = &env.hostname {
            if !is_dns_name(hostname) {
                invalid(
                    &["hostname"],
                    "hostname",
                    hostname,
                    "expected a DNS name (labels of lowercase letters, digits and `-` of at most \
                     63 characters, separated by `.`, at most 253 characters)",
                );
            }
        }
        let mut fail = |origin: Origin, message: String| errors.push(Error::new(origin, message));
        if !is_dns_label(name) {
            fail(
                doc.key_origin(&path(&[])),
                format!(
                    "invalid environment name `{}`: expected a DNS-1123 label ({LABEL_RULE})",
                    quote(name)
                ),
            );
        }
        if env.port == 0 {
            fail(
                doc.value_origin(&path(&["port"])),
                "invalid port 0: expected an integer 1-65535".to_string(),
            );
        }
        if env.command.as_ref().is_some_and(Vec::is_empty) {
            fail(
                doc.value_origin(&path(&["command"])),
                "`command` is empty: omit it to run the image's command".to_string(),
            );
        }
        if env.health_check.timeout.is_zero() {
            fail(
                doc.value_origin(&path(&["healthCheck", "timeout"])),
                "invalid health check timeout 0s: expected more than 0, e.g. `60s`".to_string(),
            );
        }
        check_maximum(
            doc,
            &path(&["healthCheck", "timeout"]),
            env.health_check.timeout,
            (MAX_HEALTH_TIMEOUT, "`1h`"),
            "health check timeout",
            "a new slot is waited for this long while its environment is held; e.g. `60s`",
            &mut fail,
        );
        check_maximum(
            doc,
            &path(&["gracePeriod"]),
            env.grace_period,
            (MAX_GRACE_PERIOD, "`30d`"),
            "grace period",
            "the previous slot is kept this long for a rollback; e.g. `1h`",
            &mut fail,
        );
        check_maximum(
            doc,
            &path(&["migrationGrace"]),
            env.migration_grace,
            (MAX_GRACE_PERIOD, "`30d`"),
            "migration grace period",
            "the Host an environment leaves keeps its forwarding route and stopped slot this long; \
             e.g. `48h`",
            &mut fail,
        );
        if env.stop_timeout.is_zero() || env.stop_timeout.subsec_nanos() != 0 {
            let written = humantime::format_duration(env.stop_timeout).to_string();
            fail(
                doc.value_origin(&path(&["stopTimeout"])),
                format!(
                    "invalid stop timeout {}: expected whole seconds from `1s` to `5m`, e.g. \
                     `30s` (Podman counts the grace period before SIGKILL in seconds)",
                    doc.show_written(&path(&["stopTimeout"]), &written)
                ),
            );
        }
        check_maximum(
            doc,
            &path(&["stopTimeout"]),
            env.stop_timeout,
            (MAX_STOP_TIMEOUT, "`5m`"),
            "stop timeout",
            "every removal of a container waits this long for the app before SIGKILL; e.g. `30s`",
            &mut fail,
        );
        if (env.database.is_some() || env.cache.is_some()) && !env.env_from.is_stored() {
            let field = if env.database.is_some() {
                "database"
            } else {
                "cache"
            };
            fail(
                doc.value_origin(&path(&["envFrom"])),
                format!(
                    "`envFrom: none` with `{field}`: the credentials codeb generates reach the \
                     containers through the stored env; remove `envFrom: none`"
                ),
            );
        }
        let derived = crate::model::data::DATABASE_KEYS
            .iter()
            .filter(|_| env.database.is_some())
            .chain(
                crate::model::data::CACHE_KEYS
                    .iter()
                    .filter(|_| env.cache.is_some()),
            );
        for key in derived {
            if env.env.contains_key(*key) {
                fail(
                    doc.key_origin(&["spec", "environments", name, "env", key]),
                    format!(
                        "`{key}` is derived by codeb from `database`/`cache` (a protected key \
                         of the stored env): remove it from `env`"
                    ),
                );
            }
        }
        for key in env.env.keys() {
            if !is_env_name(key) {
                fail(
                    doc.key_origin(&["spec", "environments", name, "env", key]),
                    format!(
                        "invalid env variable name `{}`: expected letters, digits and `_`, not \
                         starting with a digit",
                        quote(key)
                    ),
                );
            }
        }
    }
}

/// A duration at `path` is at most `max` (its value and how it is written). Durations are
/// kept and compared as milliseconds in a `u64`; the maximums keep every conversion far from
/// wrapping (`18446744073709552s` is 384 ms once wrapped).
fn check_maximum(
    doc: &Document,
    path: &[&str],
    value: Duration,
    (max, max_text): (Duration, &str),
    what: &str,
    why: &str,
    fail: &mut impl FnMut(Origin, String),
) {
    if value <= max {
        return;
    }
    let shown = doc.show_written(path, &humantime::format_duration(value).to_string());
    fail(
        doc.value_origin(path),
        format!("invalid {what} {shown}: expected at most {max_text} ({why})"),
    );
}

fn check_references(documents: &[Document], manifests: &Manifests, errors: &mut Vec<Error>) {
    for doc in documents {
        let Spec::Project(project) = &doc.spec else {
            continue;
        };
        let refs = [
            (
                "host",
                "Host",
                &project.host,
                manifests.hosts.keys().collect::<Vec<_>>(),
            ),
            (
                "zone",
                "Zone",
                &project.zone,
                manifests.zones.keys().collect::<Vec<_>>(),
            ),
        ];
        check_data_references(doc, project, manifests, errors);
        check_host_selector(doc, project, manifests, errors);
        for (field, kind, name, defined) in refs {
            if defined.contains(&name) {
                continue;
            }
            let names: Vec<&str> = defined.iter().map(|s| s.as_str()).collect();
            let known = if names.is_empty() {
                format!("no {kind} is defined")
            } else {
                format!("defined: {}", names.join(", "))
            };
            errors.push(Error::new(
                doc.value_origin(&["spec", field]),
                format!(
                    "unknown {field} {}: no {kind} with this name ({known}){}",
                    doc.show(&["spec", field], name),
                    did_you_mean(name, &names)
                ),
            ));
        }
    }
}

/// A Project's `spec.hostSelector`: its Host carries each label with that value.
fn check_host_selector(
    doc: &Document,
    project: &ProjectSpec,
    manifests: &Manifests,
    errors: &mut Vec<Error>,
) {
    let Some(host) = manifests.hosts.get(&project.host) else {
        return; // reported as an unknown host
    };
    for (key, want) in &project.host_selector {
        let has = host.labels.get(key);
        if has == Some(want) {
            continue;
        }
        let found = match has {
            Some(v) => format!("it has `{}: {}`", quote(key), quote(v)),
            None if host.labels.is_empty() => "it has no labels".to_string(),
            None => format!(
                "its labels: {}",
                host.labels
                    .iter()
                    .map(|(k, v)| format!("{}: {}", quote(k), quote(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        errors.push(Error::new(
            doc.value_origin(&["spec", "hostSelector", key]),
            format!(
                "spec.hostSelector requires the label `{}: {}` but Host `{}` (at {}) does not carry it ({found}): add it to the Host's metadata.labels, or put the project on a Host that has it",
                quote(key),
                quote(want),
                project.host,
                host.origin
            ),
        ));
    }
}

/// Label keys and values (`metadata.labels`, `spec.hostSelector`) are as Kubernetes spells them.
fn check_labels(doc: &Document, errors: &mut Vec<Error>) {
    // `patterns::LABEL_KEY` and `patterns::LABEL_VALUE`, by hand.
    fn name_ok(s: &str) -> bool {
        let b = s.as_bytes();
        (1..=63).contains(&b.len())
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
    }
    fn key_ok(k: &str) -> bool {
        match k.split_once('/') {
            None => name_ok(k),
            Some((prefix, name)) => {
                prefix.len() <= 253
                    && prefix.split('.').all(|l| {
                        let b = l.as_bytes();
                        !b.is_empty()
                            && b[0].is_ascii_alphanumeric()
                            && b[b.len() - 1].is_ascii_alphanumeric()
                            && b.iter()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                    })
                    && name_ok(name)
            }
        }
    }
    let selector = match &doc.spec {
        Spec::Project(p) => Some(&p.host_selector),
        _ => None,
    };
    let maps = [
        (["metadata", "labels"], Some(&doc.labels)),
        (["spec", "hostSelector"], selector),
    ];
    for (path, map) in maps {
        for (key, value) in map.into_iter().flatten() {
            let at = [path[0], path[1], key.as_str()];
            if !key_ok(key) {
                errors.push(Error::new(
                    doc.key_origin(&at),
                    format!(
                        "invalid label key `{}` in {}.{}: expected an optional DNS-subdomain prefix and `/`, then at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit (e.g. `role`)",
                        quote(key),
                        path[0],
                        path[1]
                    ),
                ));
            } else if !(value.is_empty() || name_ok(value)) {
                errors.push(Error::new(
                    doc.value_origin(&at),
                    format!(
                        "invalid label value `{}` for `{}` in {}.{}: expected at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit, or empty",
                        quote(value),
                        quote(key),
                        path[0],
                        path[1]
                    ),
                ));
            }
        }
    }
}

/// An environment's `database` and `cache` are served by its Host.
fn check_data_references(
    doc: &Document,
    project: &ProjectSpec,
    manifests: &Manifests,
    errors: &mut Vec<Error>,
) {
    let Some(host) = manifests.hosts.get(&project.host) else {
        return; // reported as an unknown host
    };
    for (name, env) in &project.environments {
        let wants = [
            (
                "database",
                env.database.is_some(),
                host.spec.postgres.is_some(),
                "postgres",
            ),
            (
                "cache",
                env.cache.is_some(),
                host.spec.redis.is_some(),
                "redis",
            ),
        ];
        for (field, wanted, served, server) in wants {
            if wanted && !served {
                errors.push(Error::new(
                    doc.value_origin(&["spec", "environments", name, field]),
                    format!(
                        "`{field}: {server}` but Host `{}` (at {}) declares no `{server}`: add \
                         `spec.{server}` to the Host",
                        project.host, host.origin
                    ),
                ));
            }
        }
    }
}

/// Every environment's image is one its Host allows, and its `resources` are within the Host's
/// maximums. Each refusal names the Host's setting and where it was written.
fn check_confinement(documents: &[Document], manifests: &Manifests, errors: &mut Vec<Error>) {
    let host_docs: BTreeMap<&str, &Document> = documents
        .iter()
        .filter(|d| d.kind == Kind::Host)
        .map(|d| (d.name.as_str(), d))
        .collect();
    for doc in documents {
        let Spec::Project(project) = &doc.spec else {
            continue;
        };
        let (Some(host), Some(host_doc)) = (
            manifests.hosts.get(&project.host),
            host_docs.get(project.host.as_str()),
        ) else {
            continue;
        };
        let policy = &host.spec.containers;
        for (env_name, env) in &project.environments {
            let path = |field: &[&'static str]| {
                let mut path = vec!["spec", "environments", env_name.as_str()];
                path.extend_from_slice(field);
                path
            };
            if !policy.images.allows(&env.image) {
                let image_path = path(&["image"]);
                let allowed: Vec<String> = policy
                    .images
                    .allow
                    .iter()
                    .map(|p| format!("`{}`", quote(p)))
                    .collect();
                let why = if has_registry(&env.image) {
                    "is not one Host".to_string()
                } else {
                    "does not name its registry (a short name may resolve to any image on the \
                     host), and Host"
                        .to_string()
                };
                errors.push(Error::new(
                    doc.value_origin(&image_path),
                    format!(
                        "image {} {why} `{}` allows: expected an image starting with {} (the \
                         Host's `containers.images.allow` at {})",
                        doc.show(&image_path, &env.image),
                        quote(&project.host),
                        allowed.join(" or "),
                        host_doc.value_origin(&["spec", "containers", "images", "allow"])
                    ),
                ));
            }
            let asked = policy.limits(&env.resources);
            let max = policy.max_limits();
            let written = [
                env.resources.memory.is_some(),
                env.resources.cpus.is_some(),
                env.resources.pids.is_some(),
            ];
            for ((field, value, maximum), written) in
                limit_fields(asked, max).into_iter().zip(written)
            {
                if !written || value.0 <= maximum.0 {
                    continue;
                }
                let value_path = path(&["resources", field]);
                errors.push(Error::new(
                    doc.value_origin(&value_path),
                    format!(
                        "invalid {field} {}: over the most Host `{}` allows, `{}` ({}); expected \
                         at most that, or the Host's admin raises `containers.maxResources.{field}`",
                        doc.show_written(&value_path, &value.1),
                        quote(&project.host),
                        maximum.1,
                        max_origin(host_doc, policy, field)
                    ),
                ));
            }
        }
    }
}

/// Where a Host's maximum for `field` comes from, for a message.
fn max_origin(host: &Document, policy: &ContainerPolicy, field: &str) -> String {
    let set = |r: &Resources| match field {
        "memory" => r.memory.is_some(),
        "cpus" => r.cpus.is_some(),
        _ => r.pids.is_some(),
    };
    for (key, r) in [
        ("maxResources", &policy.max_resources),
        ("resources", &policy.resources),
    ] {
        if set(r) {
            let path = ["spec", "containers", key, field];
            return format!(
                "its `containers.{key}.{field}` at {}",
                host.value_origin(&path)
            );
        }
    }
    format!(
        "codeb's default, as the Host at {} sets no `containers.maxResources.{field}`",
        host.name_origin
    )
}

/// A hostname outside its project's zone is one the Zone grants (`externalHostnames`): a project
/// may not take traffic for any name it likes (another tenant's, codeb's own API hostname).
fn check_zone_consent(documents: &[Document], manifests: &Manifests, errors: &mut Vec<Error>) {
    for doc in documents {
        let Spec::Project(project) = &doc.spec else {
            continue;
        };
        let Some(zone) = manifests.zones.get(&project.zone) else {
            continue;
        };
        for (env_name, env) in &project.environments {
            let Some(hostname) = &env.hostname else {
                continue;
            };
            // An invalid name is reported by itself.
            if !is_dns_name(hostname)
                || crate::model::dns::in_zone(hostname, &project.zone)
                || zone.spec.grants(hostname)
            {
                continue;
            }
            let path = ["spec", "environments", env_name, "hostname"];
            errors.push(Error::new(
                doc.value_origin(&path),
                format!(
                    "hostname {} is outside zone `{}`: a project serves a name outside its zone only when its Zone grants it (add it, or `*.` and its parent, to `externalHostnames` of the Zone at {})",
                    doc.show(&path, hostname),
                    quote(&project.zone),
                    zone.origin
                ),
            ));
        }
    }
}

/// A project runs on a Host that admits it (`projects` of the Host): a team's project may not
/// place itself on any Host of the manifest set (the storage host, another team's).
fn check_host_consent(documents: &[Document], manifests: &Manifests, errors: &mut Vec<Error>) {
    for doc in documents {
        let Spec::Project(project) = &doc.spec else {
            continue;
        };
        let Some(host) = manifests.hosts.get(&project.host) else {
            continue;
        };
        if host.spec.admits(&doc.name) {
            continue;
        }
        let path = ["spec", "host"];
        let grants: Vec<String> = host
            .spec
            .projects
            .iter()
            .flatten()
            .map(|g| format!("`{g}`"))
            .collect();
        let admitted = if grants.is_empty() {
            "no project".to_string()
        } else {
            format!("only {}", grants.join(", "))
        };
        errors.push(Error::new(
            doc.value_origin(&path),
            format!(
                "project `{}` may not run on Host {}: the Host admits {admitted} (add the project, or a prefix of its name and `*`, to `projects` of the Host at {})",
                doc.name,
                doc.show(&path, &project.host),
                host.origin
            ),
        ));
    }
}

/// Where an environment's hostname is written (its `hostname` value, or its name when the
/// hostname is the default), found only when a message needs it: origins come from the document's
/// tree, which a set without mistakes never parses.
struct HostnameAt<'a> {
    doc: &'a Document,
    env_name: &'a str,
    explicit: bool,
}

impl HostnameAt<'_> {
    fn origin(&self) -> Origin {
        if self.explicit {
            self.doc
                .value_origin(&["spec", "environments", self.env_name, "hostname"])
        } else {
            self.doc
                .key_origin(&["spec", "environments", self.env_name])
        }
    }

    /// `hostname` quoted for a message (or a placeholder, see [`Document::show`]).
    fn shown(&self, hostname: &str) -> String {
        if self.explicit {
            self.doc.show(
                &["spec", "environments", self.env_name, "hostname"],
                hostname,
            )
        } else {
            format!("`{}`", quote(hostname))
        }
    }
}

/// Every hostname, explicit or default, is served by one environment only.
fn check_hostnames(documents: &[Document], errors: &mut Vec<Error>) {
    let mut used: BTreeMap<String, (String, HostnameAt)> = BTreeMap::new();
    for doc in documents {
        let Spec::Project(project) = &doc.spec else {
            continue;
        };
        for (env_name, env) in &project.environments {
            let hostname = project.hostname(&doc.name, env_name).unwrap_or_default();
            let at = HostnameAt {
                doc,
                env_name,
                explicit: env.hostname.is_some(),
            };
            // Invalid names are reported by themselves; with valid ones, only the length can fail.
            let names_valid = is_dns_label(&doc.name) && is_dns_label(env_name);
            if env.hostname.is_none() && names_valid && !is_dns_name(&hostname) {
                errors.push(Error::new(
                    at.origin(),
                    format!(
                        "the default hostname `{}` is too long for DNS (a label over 63 or a name over 253 characters); set `hostname`",
                        quote(&hostname)
                    ),
                ));
            }
            // A valid name may still be too long once `green.` is put before it: PowerDNS then
            // refuses the zone's one PATCH, for every project in the zone.
            if is_dns_name(&hostname) && !is_dns_name(&format!("green.{hostname}")) {
                let shown = at.shown(&hostname);
                let (what, hint) = match env.hostname {
                    Some(_) => (format!("hostname {shown}"), ""),
                    None => (
                        format!("the default hostname {shown}"),
                        "; set a shorter `hostname`",
                    ),
                };
                errors.push(Error::new(
                    at.origin(),
                    format!(
                        "{what} is too long for its preview hostnames: `green.` before its {} \
                         characters is over DNS's 253; expected at most {MAX_PREVIEWED_HOSTNAME} \
                         characters{hint}",
                        hostname.len()
                    ),
                ));
            }
            let owner = format!("{}/{}", doc.name, env_name);
            if let Some((first, first_at)) = used.get(&hostname) {
                errors.push(Error::new(
                    at.origin(),
                    format!(
                        "hostname {} of {} is already used by {first} at {}; each hostname routes to one environment",
                        at.shown(&hostname),
                        quote(&owner),
                        first_at.origin()
                    ),
                ));
            } else {
                used.insert(hostname, (owner, at));
            }
        }
    }
    check_preview_collisions(&used, errors);
}

/// A hostname must not be another environment's preview hostname (`{slot}.{hostname}`): both
/// would want the same Caddy host and the same DNS record.
fn check_preview_collisions(
    used: &BTreeMap<String, (String, HostnameAt)>,
    errors: &mut Vec<Error>,
) {
    for (hostname, (owner, at)) in used {
        for slot in ["blue", "green"] {
            let Some(base) = hostname
                .strip_prefix(slot)
                .and_then(|r| r.strip_prefix('.'))
            else {
                continue;
            };
            if let Some((other, other_at)) = used.get(base).filter(|(o, _)| o != owner) {
                errors.push(Error::new(
                    at.origin(),
                    format!(
                        "hostname `{}` of {} is the {slot} preview hostname of {other} at {}; each hostname routes to one environment",
                        quote(hostname),
                        quote(owner),
                        other_at.origin()
                    ),
                ));
            }
        }
    }
}

/// Two environments never need one container name. Names are `{project}-{environment}-{slot}`
/// (kept: a new scheme would rename every existing container), and `-` may occur in both parts,
/// so project `a` environment `b-c` and project `a-b` environment `c` would both need
/// `a-b-c-blue`, and the second would fail at every apply. The slot suffixes differ, so two
/// names are equal exactly when their `{project}-{environment}` stems are.
fn check_container_names(documents: &[Document], errors: &mut Vec<Error>) {
    // The first environment to need each stem, and its document: its origin is found only when a
    // second one needs the stem too.
    let mut used: BTreeMap<String, (&Document, &str)> = BTreeMap::new();
    for doc in documents {
        let Spec::Project(project) = &doc.spec else {
            continue;
        };
        for env_name in project.environments.keys() {
            let stem = container_stem(&doc.name, env_name);
            if let Some(&(first_doc, first_env)) = used.get(&stem) {
                errors.push(Error::new(
                    doc.key_origin(&["spec", "environments", env_name]),
                    format!(
                        "{} needs the container names {}, as {} at {} does; \
                         {CONTAINER_NAME_RULE}: rename one of the projects or environments",
                        env_owner(&doc.name, env_name),
                        container_names(&stem),
                        env_owner(&first_doc.name, first_env),
                        first_doc.key_origin(&["spec", "environments", first_env]),
                    ),
                ));
            } else {
                used.insert(stem, (doc, env_name));
            }
        }
    }
}

const CONTAINER_NAME_RULE: &str = "container names are `{project}-{environment}-{slot}`";

/// What the container names of an environment start with.
fn container_stem(project: &str, environment: &str) -> String {
    format!("{project}-{environment}")
}

/// `` `a-b-c-blue` and `a-b-c-green` ``.
fn container_names(stem: &str) -> String {
    let stem = quote(stem);
    format!("`{stem}-blue` and `{stem}-green`")
}

/// `` project `a` environment `b-c` ``.
fn env_owner(project: &str, environment: &str) -> String {
    format!(
        "project `{}` environment `{}`",
        quote(project),
        quote(environment)
    )
}

/// An environment the store records (an earlier apply's), as [`check_recorded`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct RecordedEnv<'a> {
    pub project: &'a str,
    pub environment: &'a str,
    pub hostname: &'a str,
    /// The Host it runs on, named in messages.
    pub host: &'a str,
}

/// Checks `manifests` against the environments earlier applies recorded that these manifests do
/// not declare (a declared one is about to take its declared values, which validation checked
/// against the rest of the set): none of theirs may need the container names of a manifest
/// environment, or share a hostname with it (a preview hostname counts). Both would hold what
/// the new environment needs, and its every apply would fail or steal the other's traffic.
///
/// # Errors
/// One error per conflict, at the manifest environment's name (container names) or hostname,
/// naming the recorded environment that holds it and how to free it; sorted by origin.
pub fn check_recorded<'a>(
    manifests: &Manifests,
    recorded: impl IntoIterator<Item = RecordedEnv<'a>>,
) -> Result<(), Errors> {
    // Every name a manifest environment needs: its container stem, its hostname and previews.
    let mut stems: BTreeMap<String, (&str, &str)> = BTreeMap::new();
    let mut names: BTreeMap<String, (&str, &str, Option<&str>)> = BTreeMap::new();
    for (project, named) in &manifests.projects {
        for env_name in named.spec.environments.keys() {
            let key = (project.as_str(), env_name.as_str());
            stems.insert(container_stem(project, env_name), key);
            let hostname = named.spec.hostname(project, env_name).unwrap_or_default();
            for slot in ["blue", "green"] {
                names.insert(format!("{slot}.{hostname}"), (key.0, key.1, Some(slot)));
            }
            names.insert(hostname, (key.0, key.1, None));
        }
    }
    let declared = |project: &str, env: &str| {
        manifests
            .projects
            .get(project)
            .is_some_and(|p| p.spec.environments.contains_key(env))
    };
    let origins = |project: &str, env: &str| {
        manifests
            .env_origins
            .get(&(project.to_string(), env.to_string()))
    };
    let free = |r: &RecordedEnv| {
        format!(
            "free it first (`codeb delete project {}`, or an apply with `--prune` whose manifests \
             no longer declare it)",
            quote(r.project)
        )
    };
    let mut errors = Vec::new();
    for r in recorded {
        if declared(r.project, r.environment) {
            continue;
        }
        let holder = format!(
            "{} (recorded on Host `{}` by an earlier apply)",
            env_owner(r.project, r.environment),
            quote(r.host)
        );
        let stem = container_stem(r.project, r.environment);
        if let Some(&(project, env)) = stems.get(&stem) {
            if let Some(o) = origins(project, env) {
                errors.push(Error::new(
                    o.name(),
                    format!(
                        "{} needs the container names {}, which {holder} holds; \
                         {CONTAINER_NAME_RULE}: rename this project or environment, or {}",
                        env_owner(project, env),
                        container_names(&stem),
                        free(&r)
                    ),
                ));
            }
        }
        // The recorded environment's names against the manifests': equal hostnames, or one the
        // preview hostname of the other (two previews are equal only when the hostnames are).
        let theirs = [
            (r.hostname.to_string(), None),
            (format!("blue.{}", r.hostname), Some("blue")),
            (format!("green.{}", r.hostname), Some("green")),
        ];
        for (name, their_slot) in theirs {
            let Some(&(project, env, our_slot)) = names.get(&name) else {
                continue;
            };
            let Some(o) = origins(project, env) else {
                continue;
            };
            let ours = match our_slot {
                None => format!("hostname `{}`", quote(&name)),
                Some(slot) => format!("{slot} preview hostname `{}`", quote(&name)),
            };
            let what = match (our_slot, their_slot) {
                (Some(_), Some(_)) => continue,
                (_, None) => "the hostname".to_string(),
                (None, Some(slot)) => format!("the {slot} preview hostname"),
            };
            errors.push(Error::new(
                o.hostname(),
                format!(
                    "the {ours} of {} is {what} of {holder}; each hostname routes to one \
                     environment: choose another hostname, or {}",
                    env_owner(project, env),
                    free(&r)
                ),
            ));
        }
    }
    errors.sort_by(|a, b| a.origin().cmp(b.origin()));
    match Errors::from_vec(errors) {
        None => Ok(()),
        Some(errors) => Err(errors),
    }
}

/// A DNS-1123 label that starts with a letter (`metadata.name`, environment names).
pub(crate) fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A lowercase DNS name: labels of letters, digits and `-` (not at either end) of 1-63
/// characters, separated by `.`, at most 253 characters in all.
pub(crate) fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn is_env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_podman_endpoint(s: &str) -> bool {
    if let Some(path) = s.strip_prefix("unix://") {
        return path.starts_with('/') && path.len() > 1 && !path.contains(char::is_whitespace);
    }
    s.strip_prefix("tcp://").is_some_and(is_host_port)
}

fn is_http_url(s: &str) -> bool {
    s.strip_prefix("http://").is_some_and(|rest| {
        let authority = rest.split('/').next().unwrap_or_default();
        !authority.is_empty()
            && !rest.contains(char::is_whitespace)
            && (is_host_port(authority) || is_host(authority))
    })
}

/// An `http://` URL with a host and nothing after it but an optional `/`.
fn is_base_url(s: &str) -> bool {
    is_http_url(s)
        && s.strip_prefix("http://")
            .and_then(|rest| rest.split_once('/'))
            .is_none_or(|(_, path)| path.is_empty())
}

fn is_server_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_listen_address(s: &str) -> bool {
    match s.strip_prefix(':') {
        Some(port) => is_port(port),
        None => is_host_port(s),
    }
}

/// `host:port` or `[v6]:port`.
fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => is_host(host) && is_port(port),
        None => false,
    }
}

fn is_host(host: &str) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse::<IpAddr>().is_ok() || is_dns_name(&host.to_ascii_lowercase())
}

fn is_port(s: &str) -> bool {
    s.parse::<u16>().is_ok_and(|p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::load_str;

    const HOST_AND_ZONE: &str = "\
apiVersion: codeb.kr/v1
kind: Host
metadata: {name: local}
spec: {address: 127.0.0.1, podman: 'unix:///run/p.sock', caddy: {admin: 'http://127.0.0.1:2019'}}
---
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: codeb.test}
";

    /// A Project document with one environment, `fields` inside its flow mapping.
    fn project(name: &str, env: &str, fields: &str) -> String {
        format!(
            "---\napiVersion: codeb.kr/v1\nkind: Project\nmetadata: {{name: {name}}}\nspec:\n  \
             host: local\n  zone: codeb.test\n  environments:\n    {env}: {{image: a, port: 80{fields}}}\n"
        )
    }

    /// The manifests of the stack's Host and Zone and `projects`; they must load.
    fn manifests(projects: &[String]) -> Manifests {
        load_str("t.yaml", &format!("{HOST_AND_ZONE}{}", projects.concat())).unwrap()
    }

    fn errors(projects: &[String]) -> String {
        load_str("t.yaml", &format!("{HOST_AND_ZONE}{}", projects.concat()))
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn two_projects_that_need_one_container_name_are_refused_naming_both() {
        // Their default hostnames are equal too (and reported); another hostname leaves the
        // container names alone.
        let other = ", hostname: www.codeb.test";
        let text = errors(&[project("a", "b-c", ""), project("a-b", "c", other)]);
        assert_eq!(
            text,
            "t.yaml:26:5: project `a-b` environment `c` needs the container names `a-b-c-blue` \
             and `a-b-c-green`, as project `a` environment `b-c` at t.yaml:17:5 does; container \
             names are `{project}-{environment}-{slot}`: rename one of the projects or environments"
        );
    }

    #[test]
    fn a_hostname_whose_preview_hostnames_exceed_253_characters_is_refused() {
        // 247 characters is the longest: `green.` makes 253.
        let labels = [
            "a".repeat(60),
            "a".repeat(60),
            "a".repeat(60),
            "a".repeat(58),
        ];
        let too_long = format!("{}.codeb.test", labels.join("."));
        assert_eq!(too_long.len(), 252);
        let fits = &too_long[5..];
        manifests(&[project("a", "production", &format!(", hostname: {fits}"))]);
        let text = errors(&[project(
            "a",
            "production",
            &format!(", hostname: {too_long}"),
        )]);
        assert!(text.starts_with("t.yaml:17:48: hostname `aaaa"), "{text}");
        assert!(
            text.ends_with(
                "is too long for its preview hostnames: `green.` before its 252 characters is \
                 over DNS's 253; expected at most 247 characters"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_default_hostname_whose_preview_hostnames_are_too_long_asks_for_a_hostname() {
        // `{project}-{env}.codeb.test` of 250 characters: each label is valid.
        // `p-{60 e}` (62) + `.` + 177 + `.codeb.test` (11): 251 characters, each label valid.
        let env = "e".repeat(60);
        let zone_pad = format!("{}.{}.{}", "z".repeat(60), "z".repeat(60), "z".repeat(55));
        let text = load_str(
            "t.yaml",
            &format!(
                "{}{}",
                HOST_AND_ZONE.replace("codeb.test", &format!("{zone_pad}.codeb.test")),
                project("p", &env, "").replace("codeb.test", &format!("{zone_pad}.codeb.test"))
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(text.contains("the default hostname `p-eee"), "{text}");
        assert!(text.ends_with("; set a shorter `hostname`"), "{text}");
    }

    #[test]
    fn a_health_timeout_over_an_hour_is_refused_as_it_was_written() {
        let text = errors(&[project("a", "production", ", healthCheck: {timeout: 100y}")]);
        assert_eq!(
            text,
            "t.yaml:17:61: invalid health check timeout `100y`: expected at most `1h` (a new \
             slot is waited for this long while its environment is held; e.g. `60s`)"
        );
        manifests(&[project("a", "production", ", healthCheck: {timeout: 1h}")]);
    }

    #[test]
    fn a_duration_that_would_wrap_as_milliseconds_is_refused() {
        // 18446744073709552 s is 18446744073709552000 ms: 384 ms once cast to a u64.
        let text = errors(&[project(
            "a",
            "production",
            ", healthCheck: {timeout: 18446744073709552s}, gracePeriod: 18446744073709552s",
        )]);
        assert!(
            text.contains("t.yaml:17:61: invalid health check timeout `18446744073709552s`"),
            "{text}"
        );
        assert!(
            text.contains(
                "t.yaml:17:95: invalid grace period `18446744073709552s`: expected at most `30d`"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_grace_period_over_30_days_is_refused() {
        let text = errors(&[project("a", "production", ", gracePeriod: 31d")]);
        assert_eq!(
            text,
            "t.yaml:17:51: invalid grace period `31d`: expected at most `30d` (the previous slot \
             is kept this long for a rollback; e.g. `1h`)"
        );
        manifests(&[project("a", "production", ", gracePeriod: 30d")]);
    }

    #[test]
    fn a_migration_grace_over_30_days_is_refused_and_48h_is_the_default() {
        let text = errors(&[project("a", "production", ", migrationGrace: 31d")]);
        assert!(
            text.contains("invalid migration grace period `31d`: expected at most `30d`"),
            "{text}"
        );
        let m = manifests(&[project("a", "production", ", migrationGrace: 30d")]);
        let e = &m.projects["a"].spec.environments["production"];
        assert_eq!(e.migration_grace, Duration::from_secs(30 * 24 * 3600));
        let m = manifests(&[project("a", "production", "")]);
        let e = &m.projects["a"].spec.environments["production"];
        assert_eq!(e.migration_grace, crate::model::DEFAULT_MIGRATION_GRACE);
    }

    #[test]
    fn a_stop_timeout_is_whole_seconds_from_1s_to_5m_with_its_place() {
        let text = errors(&[project("a", "production", ", stopTimeout: 6m")]);
        assert_eq!(
            text,
            "t.yaml:17:51: invalid stop timeout `6m`: expected at most `5m` (every removal of a \
             container waits this long for the app before SIGKILL; e.g. `30s`)"
        );
        for bad in ["0s", "1500ms"] {
            let text = errors(&[project("a", "production", &format!(", stopTimeout: {bad}"))]);
            assert_eq!(
                text,
                format!(
                    "t.yaml:17:51: invalid stop timeout `{bad}`: expected whole seconds from `1s` \
                     to `5m`, e.g. `30s` (Podman counts the grace period before SIGKILL in seconds)"
                )
            );
        }
        let m = manifests(&[project("a", "production", ", stopTimeout: 5m")]);
        let env = &m.projects["a"].spec.environments["production"];
        assert_eq!(env.stop_timeout, Duration::from_secs(300));
        let m = manifests(&[project("a", "production", "")]);
        let env = &m.projects["a"].spec.environments["production"];
        assert_eq!(env.stop_timeout, Duration::from_secs(10), "the default");
    }

    /// The stack's Host with `containers` (a flow mapping's inside) and its Zone.
    fn confined_host(containers: &str) -> String {
        HOST_AND_ZONE.replace(
            "caddy: {admin: 'http://127.0.0.1:2019'}}",
            &format!("caddy: {{admin: 'http://127.0.0.1:2019'}}, containers: {{{containers}}}}}"),
        )
    }

    fn confined_errors(containers: &str, projects: &[String]) -> String {
        load_str(
            "t.yaml",
            &format!("{}{}", confined_host(containers), projects.concat()),
        )
        .expect_err("must be refused")
        .to_string()
    }

    const ALLOW: &str = "images: {allow: ['ghcr.io/acme/', 'localhost/codeb-test-']}";

    #[test]
    fn an_image_outside_the_hosts_allow_list_is_refused_where_it_is_written() {
        let ok = load_str(
            "t.yaml",
            &format!(
                "{}{}",
                confined_host(ALLOW),
                project("a", "production", "").replace("image: a", "image: ghcr.io/acme/a:1")
            ),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let theirs = project("a", "production", "").replace("image: a", "image: localhost/b:v1");
        assert_eq!(
            confined_errors(ALLOW, &[theirs]),
            "t.yaml:17:25: image `localhost/b:v1` is not one Host `local` allows: expected an \
             image starting with `ghcr.io/acme/` or `localhost/codeb-test-` (the Host's \
             `containers.images.allow` at t.yaml:4:128)"
        );
        let short = project("a", "production", "").replace("image: a", "image: codeb-test-x");
        assert!(
            confined_errors(ALLOW, &[short]).contains("does not name its registry"),
            "a short name may resolve to another tenant's local image"
        );
    }

    #[test]
    fn resources_over_the_hosts_maximum_are_refused_naming_the_maximum() {
        let host = "resources: {memory: 256Mi, pids: 128}, maxResources: {memory: 512Mi}";
        let text = confined_errors(
            host,
            &[project(
                "a",
                "production",
                ", resources: {memory: 1Gi, cpus: 2, pids: 64}",
            )],
        );
        assert_eq!(
            text,
            "t.yaml:17:58: invalid memory `1Gi`: over the most Host `local` allows, `512Mi` (its \
             `containers.maxResources.memory` at t.yaml:4:174); expected at most that, or the \
             Host's admin raises `containers.maxResources.memory`\n\
             t.yaml:17:69: invalid cpus `2`: over the most Host `local` allows, `1` (codeb's \
             default, as the Host at t.yaml:3:18 sets no `containers.maxResources.cpus`); \
             expected at most that, or the Host's admin raises `containers.maxResources.cpus`"
        );
        // Within the maximums (pids under the Host's default is fine).
        load_str(
            "t.yaml",
            &format!(
                "{}{}",
                confined_host(host),
                project("a", "production", ", resources: {memory: 512Mi, pids: 64}")
            ),
        )
        .unwrap();
    }

    #[test]
    fn a_hosts_container_policy_is_checked_field_by_field() {
        let text = confined_errors(
            "resources: {memory: 512M, cpus: 0.125, pids: 0}, maxResources: {pids: 8}, \
             capabilities: {add: [NET_RAWR], drop: [ALL]}, user: 'root user', \
             images: {allow: [acme/]}",
            &[],
        );
        for expected in [
            "invalid memory `512M`: expected bytes or a whole number with a binary suffix",
            "invalid cpus `0.125`: expected a number of CPUs with at most two decimals",
            "invalid pids `0`: expected 1-4194304 processes",
            "invalid capability `NET_RAWR`: expected a Linux capability",
            "invalid user `root user`",
            "invalid allowed image prefix `acme/`",
        ] {
            assert!(text.contains(expected), "{expected}\n{text}");
        }
        let text = confined_errors("resources: {pids: 64}, maxResources: {pids: 8}", &[]);
        assert!(
            text.contains("invalid maxResources pids `8`: below the Host's default `64`"),
            "{text}"
        );
    }

    #[test]
    fn a_project_environments_resources_are_checked_where_written() {
        let text = errors(&[project(
            "a",
            "production",
            ", resources: {memory: 1Mi, cpus: abc}",
        )]);
        assert!(
            text.contains("t.yaml:17:58: invalid memory `1Mi`: expected at least `6Mi`"),
            "{text}"
        );
        assert!(text.contains("invalid cpus `abc`"), "{text}");
    }

    fn recorded<'a>(project: &'a str, environment: &'a str, hostname: &'a str) -> RecordedEnv<'a> {
        RecordedEnv {
            project,
            environment,
            hostname,
            host: "local",
        }
    }

    /// The errors of [`check_recorded`] for `m` against one recorded environment.
    fn held_by(m: &Manifests, recorded: RecordedEnv) -> String {
        check_recorded(m, [recorded]).unwrap_err().to_string()
    }

    #[test]
    fn a_recorded_environment_of_another_key_holding_the_container_names_is_named() {
        let m = manifests(&[project("a-b", "c", "")]);
        let text = held_by(&m, recorded("a", "b-c", "www.codeb.test"));
        assert_eq!(
            text,
            "t.yaml:17:5: project `a-b` environment `c` needs the container names `a-b-c-blue` \
             and `a-b-c-green`, which project `a` environment `b-c` (recorded on Host `local` by \
             an earlier apply) holds; container names are `{project}-{environment}-{slot}`: \
             rename this project or environment, or free it first (`codeb delete project a`, or \
             an apply with `--prune` whose manifests no longer declare it)"
        );
    }

    #[test]
    fn a_hostname_recorded_for_another_environment_is_refused_naming_the_holder() {
        let m = manifests(&[project("b", "production", ", hostname: www.codeb.test")]);
        let text = held_by(&m, recorded("a", "production", "www.codeb.test"));
        assert!(
            text.starts_with(
                "t.yaml:17:48: the hostname `www.codeb.test` of project `b` environment \
                 `production` is the hostname of project `a` environment `production` (recorded \
                 on Host `local` by an earlier apply); each hostname routes to one environment"
            ),
            "{text}"
        );
        // Either side's preview hostname counts, and a default hostname is reported at the
        // environment's name.
        let m = manifests(&[project("blue", "production", "")]);
        let text = held_by(&m, recorded("a", "production", "codeb.test"));
        assert!(
            text.contains("t.yaml:17:5: the hostname `blue.codeb.test` of project `blue` environment `production` is the blue preview hostname of project `a`"),
            "{text}"
        );
        let text = held_by(&m, recorded("a", "production", "green.blue.codeb.test"));
        assert!(
            text.contains("the green preview hostname `green.blue.codeb.test` of project `blue` environment `production` is the hostname of project `a`"),
            "{text}"
        );
    }

    #[test]
    fn recorded_environments_the_manifests_declare_or_that_share_nothing_pass() {
        let m = manifests(&[project("a", "production", ", hostname: www.codeb.test")]);
        // The declared key itself (its hostname is about to change).
        check_recorded(&m, [recorded("a", "production", "old.codeb.test")]).unwrap();
        check_recorded(&m, [recorded("a", "staging", "a-staging.codeb.test")]).unwrap();
        check_recorded(&m, [recorded("b", "production", "b.codeb.test")]).unwrap();
    }

    #[test]
    fn dns_labels_start_with_a_letter_and_are_short() {
        assert!(is_dns_label("hello-2"));
        assert!(!is_dns_label("2hello"));
        assert!(!is_dns_label("hello-"));
        assert!(!is_dns_label("Hello"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_label(&"a".repeat(63)));
    }

    #[test]
    fn dns_names_have_short_labels_and_a_bounded_length() {
        assert!(is_dns_name("codeb.test"));
        assert!(is_dns_name("hello-staging.codeb.test"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("-a.b"));
        assert!(!is_dns_name(&format!("{}.test", "a".repeat(64))));
        assert!(!is_dns_name(
            &[
                "a".repeat(63),
                "a".repeat(63),
                "a".repeat(63),
                "a".repeat(63)
            ]
            .join(".")
        ));
    }

    #[test]
    fn env_names_are_shell_identifiers() {
        assert!(is_env_name("DATABASE_URL"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn a_remote_host_is_refused_at_each_field_ssh_cannot_carry() {
        let host = |ssh: &str, podman: &str, admin: &str, publish: &str| {
            format!(
                "apiVersion: codeb.kr/v1\nkind: Host\nmetadata: {{name: far}}\nspec:\n  address: 10.0.0.2\n  podman: '{podman}'\n  ssh: {ssh}\n  caddy: {{admin: '{admin}'}}\n  publishAddress: {publish}\n"
            )
        };
        let good = host(
            "{target: root@10.0.0.2, knownHosts: /k/known, agent: /usr/local/bin/codeb}",
            "unix:///run/podman/podman.sock",
            "http://127.0.0.1:2019",
            "10.0.0.2",
        );
        let m = load_str("h.yaml", &good).unwrap();
        let on_loopback = good.replace("publishAddress: 10.0.0.2", "publishAddress: 127.0.0.1");
        assert!(
            load_str("h.yaml", &on_loopback).is_ok(),
            "the host's own loopback"
        );
        let ssh = m.hosts["far"].spec.ssh.clone().unwrap();
        assert_eq!(ssh.known_hosts.as_deref(), Some("/k/known"));
        let bad = host(
            "{target: '-oProxyCommand=x', identityFile: 'k', agent: 'codeb; rm -rf /'}",
            "tcp://10.0.0.2:8888",
            "http://10.0.0.2:2019",
            "127.0.0.1",
        );
        let text = load_str("h.yaml", &bad).unwrap_err().to_string();
        for expected in [
            "h.yaml:7:17: invalid ssh target `-oProxyCommand=x`",
            "invalid identityFile `k`",
            "invalid agent `codeb; rm -rf /`",
            "h.yaml:6:11: invalid podman endpoint of a Host with `ssh`",
            "invalid caddy admin of a Host with `ssh` `http://10.0.0.2:2019`",
        ] {
            assert!(text.contains(expected), "{expected}\n{text}");
        }
    }

    #[test]
    fn podman_endpoints_are_unix_sockets_or_tcp() {
        assert!(is_podman_endpoint("unix:///run/podman/podman.sock"));
        assert!(is_podman_endpoint("tcp://10.0.0.2:8888"));
        assert!(!is_podman_endpoint("unix://relative.sock"));
        assert!(!is_podman_endpoint("http://10.0.0.2:8888"));
        assert!(!is_podman_endpoint("tcp://10.0.0.2"));
    }

    #[test]
    fn caddy_admin_is_an_http_url() {
        assert!(is_http_url("http://127.0.0.1:2019"));
        assert!(is_http_url("http://localhost:2019/"));
        assert!(!is_http_url("https://127.0.0.1:2019"));
        assert!(!is_http_url("127.0.0.1:2019"));
        assert!(!is_http_url("http://"));
    }

    #[test]
    fn powerdns_api_is_an_http_url_without_a_path() {
        assert!(is_base_url("http://127.0.0.1:8081"));
        assert!(is_base_url("http://pdns.internal:8081/"));
        assert!(!is_base_url("http://127.0.0.1:8081/api/v1"));
        assert!(!is_base_url("https://127.0.0.1:8081"));
        assert!(!is_base_url("127.0.0.1:8081"));
    }

    #[test]
    fn server_ids_are_plain_tokens() {
        assert!(is_server_id("localhost"));
        assert!(is_server_id("pdns-1.example"));
        assert!(!is_server_id(""));
        assert!(!is_server_id("a/b"));
        assert!(!is_server_id("a b"));
    }

    #[test]
    fn listen_addresses_have_a_port() {
        assert!(is_listen_address(":443"));
        assert!(is_listen_address("127.0.0.1:18080"));
        assert!(is_listen_address("[::1]:80"));
        assert!(!is_listen_address("127.0.0.1"));
        assert!(!is_listen_address(":0"));
    }
}
