//! The JSON Schemas in `crds-schema/` and codeb agree, document by document.
//!
//! Every document of `manifests/examples/` and `manifests/invalid/`, and of a table of one-change
//! mutations of a manifest that sets every field, goes through codeb (`load_str`) and through the
//! committed schemas (`codeb.json` and the kind's own file) with the `jsonschema` crate: a
//! document the schema refuses is one codeb refuses, and the other way round. The exceptions are
//! the rules of [`CODEB_ONLY`], each named: a codeb error of one of them does not count as a
//! refusal, and the test fails when a rule there is never seen (a stale exception). Every
//! mutation is checked twice: with its keys in sorted order (`kind` before `spec`) and with each
//! document's `kind` written last, which codeb reads the same (a YAML mapping has no order).
//!
//! Not in the table, knowingly: codeb reads a quoted `ttl`, `keep` or `pids`, and a number or
//! boolean written where text is expected (`image: 5`), by its text; the schema asks for the
//! written type there (it accepts a quoted `port` and number or boolean `env` values, as codeb).

use std::path::{Path, PathBuf};

use codeb::spec::{load_str, schema, Kind};
use serde_json::{json, Value};

/// Rules codeb checks and the schema knowingly does not, with a text every error of the rule
/// holds. All but the last group need other documents; the last are single-document rules that
/// JSON Schema cannot state.
const CODEB_ONLY: &[(&str, &str)] = &[
    // Cross-document.
    ("a Project's host names a Host of the set", "unknown host "),
    ("a Project's zone names a Zone of the set", "unknown zone "),
    ("a kind and name are defined once", "duplicate "),
    (
        "a hostname routes to one environment (across environments and documents)",
        "is already used by",
    ),
    (
        "a hostname is not another's preview hostname",
        "preview hostname of",
    ),
    (
        "two environments never need one container name",
        "needs the container names",
    ),
    (
        "an image is one its Host's allow-list allows",
        "allows: expected an image starting",
    ),
    (
        "resources are within the Host's maxResources",
        "over the most Host",
    ),
    (
        "`database`/`cache` need the Host's `postgres`/`redis`",
        "declares no `",
    ),
    (
        "a hostname outside its Project's zone is one the Zone grants",
        "is outside zone `",
    ),
    (
        "a project runs on a Host that admits it",
        "may not run on Host `",
    ),
    (
        "a Project's hostSelector is met by its Host's labels",
        "spec.hostSelector requires the label",
    ),
    // Single-document, not expressible in JSON Schema.
    (
        "a default hostname fits DNS (built from three values)",
        "the default hostname",
    ),
    (
        "a Host's maxResources are at least its resources",
        "below the Host's default",
    ),
    (
        "duration bounds (a pattern reads the syntax only)",
        "expected at most `",
    ),
    (
        "a stop timeout is whole seconds, at least 1s",
        "expected whole seconds from",
    ),
    (
        "a health check timeout is more than 0",
        "expected more than 0",
    ),
    ("a backup interval is 1m to 366d", "expected `1m` to `366d`"),
    (
        "a Host with `ssh` has a unix socket and a loopback Caddy admin",
        "of a Host with `ssh`",
    ),
];

/// The rule of [`CODEB_ONLY`] an error message belongs to, if any.
fn codeb_only(message: &str) -> Option<&'static str> {
    CODEB_ONLY
        .iter()
        .find(|(_, marker)| message.contains(marker))
        .map(|(name, _)| *name)
}

struct Schemas {
    combined: jsonschema::Validator,
    kinds: Vec<(Kind, jsonschema::Validator)>,
}

impl Schemas {
    fn load() -> Schemas {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds-schema");
        let read = |file: &str| -> Value {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let compile = |schema: &Value| jsonschema::validator_for(schema).unwrap();
        Schemas {
            combined: compile(&read(schema::COMBINED_FILE)),
            kinds: Kind::ALL
                .into_iter()
                .map(|k| (k, compile(&read(&schema::file_name(k)))))
                .collect(),
        }
    }

    /// The schema's verdict on one document: `Err` with its first complaint. The kind's own
    /// schema must say the same as the combined one.
    fn check(&self, doc: &Value) -> Result<(), String> {
        let verdict = match self.combined.iter_errors(doc).next() {
            None => Ok(()),
            Some(e) => Err(format!("{} at {}", e, e.instance_path())),
        };
        let kind = doc.get("kind").and_then(Value::as_str);
        if let Some((_, own)) = self.kinds.iter().find(|(k, _)| Some(k.as_str()) == kind) {
            assert_eq!(
                own.is_valid(doc),
                verdict.is_ok(),
                "{kind:?} schema vs codeb.json on {doc}"
            );
        }
        verdict
    }
}

/// One document of a file: the lines it spans (1-based, inclusive) and its value (`Err` when
/// its YAML does not read).
struct Doc {
    lines: (usize, usize),
    value: Result<Value, String>,
}

/// The documents of a YAML stream, split at its `---` lines.
fn split(text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut chunk = String::new();
    let mut push = |chunk: &str, start: usize, end: usize| {
        let has_content = chunk
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if has_content {
            let value = serde_saphyr::from_str::<Value>(chunk).map_err(|e| e.to_string());
            docs.push(Doc {
                lines: (start, end),
                value,
            });
        }
    };
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.starts_with("---") {
            push(&chunk, start, number - 1);
            chunk.clear();
            start = number + 1;
        } else {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    push(&chunk, start, text.lines().count());
    docs
}

/// codeb's verdict on each document of `text`: the errors at its lines, and which of them are
/// [`CODEB_ONLY`]'s.
fn codeb_errors(text: &str, docs: &[Doc]) -> Vec<Vec<(String, Option<&'static str>)>> {
    let mut per_doc = vec![Vec::new(); docs.len()];
    if let Err(errors) = load_str("t.yaml", text) {
        for e in errors.iter() {
            let line = e.origin().line;
            let i = docs
                .iter()
                .rposition(|d| d.lines.0 <= line)
                .unwrap_or_default();
            per_doc[i].push((e.to_string(), codeb_only(e.message())));
        }
    }
    per_doc
}

/// Runs `text` through both; returns a line per disagreement, and notes each CODEB_ONLY rule
/// seen in `seen`.
fn disagreements(
    label: &str,
    text: &str,
    schemas: &Schemas,
    seen: &mut Vec<&'static str>,
) -> Vec<String> {
    let docs = split(text);
    let codeb = codeb_errors(text, &docs);
    let mut out = Vec::new();
    for (doc, errors) in docs.iter().zip(codeb) {
        seen.extend(errors.iter().filter_map(|(_, rule)| *rule));
        let refusals: Vec<&String> = errors
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(m, _)| m)
            .collect();
        let schema = match &doc.value {
            Ok(value) => schemas.check(value),
            Err(e) => Err(format!("not YAML: {e}")),
        };
        match (refusals.first(), &schema) {
            (None, Err(why)) => out.push(format!(
                "{label} (lines {}-{}): the schema refuses what codeb accepts: {why}",
                doc.lines.0, doc.lines.1
            )),
            (Some(error), Ok(())) => out.push(format!(
                "{label} (lines {}-{}): the schema accepts what codeb refuses: {error}",
                doc.lines.0, doc.lines.1
            )),
            _ => {}
        }
    }
    out
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
    files.sort();
    files
}

/// A manifest that sets every field of every kind, valid.
const FULL: &str = r#"
apiVersion: codeb.kr/v1
kind: Host
metadata:
  name: local
spec:
  address: 203.0.113.10
  podman: unix:///run/podman/podman.sock
  publishAddress: 127.0.0.1
  caddy:
    admin: http://127.0.0.1:2019
    listen: [":8443", "127.0.0.1:18080"]
    tls: internal
    accessLog: false
  containers:
    resources: {memory: 256Mi, cpus: 0.5, pids: 128}
    maxResources: {memory: 2Gi, cpus: 2, pids: 1024}
    noNewPrivileges: true
    readOnlyRootFs: false
    user: "1000:1000"
    capabilities: {add: [NET_RAW], drop: [CHOWN]}
    images: {allow: ["ghcr.io/acme/", "localhost/codeb-test-"]}
  postgres:
    url: postgres://codeb_admin@127.0.0.1:5432/postgres
    passwordEnv: PG_ADMIN_PASSWORD
    appHost: 10.89.0.1:5432
  redis:
    url: redis://127.0.0.1:6379
    passwordEnv: REDIS_ADMIN_PASSWORD
  backups:
    dir: /srv/backups/codeb
    database: {every: 24h, keep: 7}
    cache: {every: 1h, keep: 24}
---
apiVersion: codeb.kr/v1
kind: Zone
metadata:
  name: codeb.test
spec:
  powerdns:
    api: http://127.0.0.1:8081
    serverId: localhost
    apiKeyEnv: PDNS_API_KEY
  ttl: 300
---
apiVersion: codeb.kr/v1
kind: Project
metadata:
  name: shop
spec:
  host: local
  zone: codeb.test
  environments:
    production:
      image: ghcr.io/acme/shop:1.4.2
      port: 8080
      command: ["/app/serve", "--port", "8080"]
      env:
        LOG_LEVEL: info
      envFrom: stored
      healthCheck: {path: /health, timeout: 60s}
      promotion: manual
      gracePeriod: 1h
      stopTimeout: 30s
      hostname: www.codeb.test
      resources: {memory: 512Mi, cpus: 1, pids: 256}
      database: postgres
      cache: redis
      onDelete: retain
    pre-release:
      image: localhost/codeb-test-app:v1
      port: 8081
"#;

/// A change to [`FULL`]'s documents (as JSON values, indexed by document).
enum Change {
    /// Sets the value at a JSON pointer, creating the last key.
    Set(&'static str, Value),
    /// Removes the key at a JSON pointer.
    Remove(&'static str),
    /// Renames the key at a JSON pointer.
    Rename(&'static str, &'static str),
    /// Adds a document.
    Append(Value),
}

use Change::{Append, Remove, Rename, Set};

/// What codeb says of a mutation: it is the table's claim, checked before the agreement.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Codeb {
    Accepts,
    Refuses,
    /// Refuses by a rule of [`CODEB_ONLY`] alone: the schema accepts.
    RefusesAlone,
}

const ENV: &str = "/2/spec/environments/production";

/// The one-change mutations: every issue example (port 0, capital and 70-character names,
/// `gracePeriod: banana`, an empty image, `ttl: 0`, `env: {N: 3}`, `port: "8080"`, a Zone with
/// `spec: null`) and one or more per rule of `validate`.
fn mutations() -> Vec<(String, Change, Codeb)> {
    use Codeb::*;
    let long = |n: usize| json!("a".repeat(n));
    let p = |field: &str| format!("{ENV}/{field}").leak() as &'static str;
    // A remote Host beside the others, with one field of its `ssh` (or what `ssh` constrains)
    // changed.
    let remote = |ssh: Value, publish: &str, admin: &str| {
        Append(json!({
            "apiVersion": "codeb.kr/v1",
            "kind": "Host",
            "metadata": {"name": "far"},
            "spec": {
                "address": "203.0.113.20",
                "podman": "unix:///run/podman/podman.sock",
                "publishAddress": publish,
                "caddy": {"admin": admin},
                "ssh": ssh,
            },
        }))
    };
    let ssh_with = |key: &str, value: Value| {
        let mut ssh = json!({
            "target": "root@203.0.113.20",
            "port": 2222,
            "identityFile": "/etc/codeb/id_ed25519",
            "knownHosts": "/etc/codeb/known_hosts",
            "agent": "/usr/local/bin/codeb",
        });
        ssh[key] = value;
        ssh
    };
    let far = |key: &str, value: Value| {
        remote(
            ssh_with(key, value),
            "203.0.113.20",
            "http://127.0.0.1:2019",
        )
    };
    let rows: Vec<(&str, Change, Codeb)> = vec![
        // A remote Host.
        ("a remote host", far("agent", json!("codeb")), Accepts),
        (
            "ssh target starting with -",
            far("target", json!("-oProxyCommand=x")),
            Refuses,
        ),
        (
            "ssh target with a space",
            far("target", json!("root@a b")),
            Refuses,
        ),
        ("ssh port 0", far("port", json!(0)), Refuses),
        (
            "ssh identityFile relative",
            far("identityFile", json!("id_ed25519")),
            Refuses,
        ),
        (
            "ssh agent with a shell word",
            far("agent", json!("codeb; rm -rf /")),
            Refuses,
        ),
        ("ssh unknown field", far("user", json!("root")), Refuses),
        (
            "ssh host publishing on its loopback (probed there by its agent)",
            remote(
                ssh_with("port", json!(22)),
                "127.0.0.1",
                "http://127.0.0.1:2019",
            ),
            Accepts,
        ),
        (
            "ssh host with a Caddy admin off its loopback",
            remote(
                ssh_with("port", json!(22)),
                "203.0.113.20",
                "http://203.0.113.20:2019",
            ),
            RefusesAlone,
        ),
        // Names.
        (
            "project name with a capital",
            Set("/2/metadata/name", json!("Shop")),
            Refuses,
        ),
        (
            "project name of 70 characters",
            Set("/2/metadata/name", long(70)),
            Refuses,
        ),
        (
            "project name of 63 characters",
            Set("/2/metadata/name", long(63)),
            RefusesAlone,
        ),
        (
            "project name starting with a digit",
            Set("/2/metadata/name", json!("2shop")),
            Refuses,
        ),
        (
            "project name ending with -",
            Set("/2/metadata/name", json!("shop-")),
            Refuses,
        ),
        (
            "host name with an underscore",
            Set("/0/metadata/name", json!("lo_cal")),
            Refuses,
        ),
        (
            "zone name with an empty label",
            Set("/1/metadata/name", json!("codeb..test")),
            Refuses,
        ),
        (
            "zone name with a capital",
            Set("/1/metadata/name", json!("Codeb.test")),
            Refuses,
        ),
        (
            "zone name of one digit label",
            Set("/1/metadata/name", json!("1.test")),
            RefusesAlone,
        ),
        (
            "environment name with a capital",
            Rename(ENV, "Production"),
            Refuses,
        ),
        (
            "environment name with an underscore",
            Rename(ENV, "prod_1"),
            Refuses,
        ),
        (
            "environments empty",
            Set("/2/spec/environments", json!({})),
            Refuses,
        ),
        ("metadata without name", Remove("/2/metadata/name"), Refuses),
        // Ports and numbers.
        ("port 0", Set(p("port"), json!(0)), Refuses),
        ("port 65536", Set(p("port"), json!(65536)), Refuses),
        ("port -1", Set(p("port"), json!(-1)), Refuses),
        ("port 80.5", Set(p("port"), json!(80.5)), Refuses),
        ("port 65535", Set(p("port"), json!(65535)), Accepts),
        ("ttl 0", Set("/1/spec/ttl", json!(0)), Refuses),
        (
            "ttl 2^31",
            Set("/1/spec/ttl", json!(2_147_483_648u64)),
            Refuses,
        ),
        (
            "ttl 2^31-1",
            Set("/1/spec/ttl", json!(2_147_483_647u64)),
            Accepts,
        ),
        (
            "keep 0",
            Set("/0/spec/backups/database/keep", json!(0)),
            Refuses,
        ),
        (
            "keep 1001",
            Set("/0/spec/backups/cache/keep", json!(1001)),
            Refuses,
        ),
        ("pids 0", Set(p("resources/pids"), json!(0)), Refuses),
        (
            "pids over the kernel's",
            Set("/0/spec/containers/maxResources/pids", json!(4_194_305)),
            Refuses,
        ),
        // Durations.
        (
            "gracePeriod banana",
            Set(p("gracePeriod"), json!("banana")),
            Refuses,
        ),
        (
            "gracePeriod 1h 30m",
            Set(p("gracePeriod"), json!("1h 30m")),
            Accepts,
        ),
        (
            "gracePeriod 1.5h",
            Set(p("gracePeriod"), json!("1.5h")),
            Accepts,
        ),
        (
            "gracePeriod 31d",
            Set(p("gracePeriod"), json!("31d")),
            RefusesAlone,
        ),
        (
            "gracePeriod without a unit",
            Set(p("gracePeriod"), json!("3600")),
            Refuses,
        ),
        (
            "gracePeriod as a number",
            Set(p("gracePeriod"), json!(3600)),
            Refuses,
        ),
        (
            "health timeout 10 parsecs",
            Set(p("healthCheck/timeout"), json!("10 parsecs")),
            Refuses,
        ),
        (
            "health timeout 0s",
            Set(p("healthCheck/timeout"), json!("0s")),
            RefusesAlone,
        ),
        (
            "stopTimeout 1500ms",
            Set(p("stopTimeout"), json!("1500ms")),
            RefusesAlone,
        ),
        (
            "backup every 30s",
            Set("/0/spec/backups/cache/every", json!("30s")),
            RefusesAlone,
        ),
        (
            "backup every soon",
            Set("/0/spec/backups/cache/every", json!("soon")),
            Refuses,
        ),
        // Images, paths, commands, hostnames.
        ("empty image", Set(p("image"), json!("")), Refuses),
        (
            "image with a space",
            Set(p("image"), json!("ghcr.io/acme/shop 1")),
            Refuses,
        ),
        (
            "image outside the allow-list",
            Set(p("image"), json!("docker.io/library/nginx")),
            RefusesAlone,
        ),
        (
            "health path without /",
            Set(p("healthCheck/path"), json!("health")),
            Refuses,
        ),
        ("empty command", Set(p("command"), json!([])), Refuses),
        (
            "hostname with a capital",
            Set(p("hostname"), json!("WWW.codeb.test")),
            Refuses,
        ),
        (
            "hostname with a 64-character label",
            Set(p("hostname"), json!(format!("{}.test", "a".repeat(64)))),
            Refuses,
        ),
        (
            "hostname of 248 characters",
            Set(
                p("hostname"),
                json!(format!(
                    "{}.{}.{}.{}",
                    "a".repeat(62),
                    "a".repeat(62),
                    "a".repeat(62),
                    "a".repeat(59)
                )),
            ),
            Refuses,
        ),
        (
            "hostname of 247 characters",
            Set(
                p("hostname"),
                json!(format!(
                    "{}.{}.{}.{}.codeb.test",
                    "a".repeat(62),
                    "a".repeat(62),
                    "a".repeat(62),
                    "a".repeat(47)
                )),
            ),
            Accepts,
        ),
        (
            "hostname outside the zone, not granted",
            Set(p("hostname"), json!("www.example.com")),
            RefusesAlone,
        ),
        (
            "hostname of the other environment",
            Set(p("hostname"), json!("shop-pre-release.codeb.test")),
            RefusesAlone,
        ),
        (
            "hostname a preview of the other's",
            Set(p("hostname"), json!("blue.shop-pre-release.codeb.test")),
            RefusesAlone,
        ),
        // env.
        ("env key 1BAD", Set(p("env/1BAD"), json!("x")), Refuses),
        (
            "env key with a dash",
            Set(p("env/A-B"), json!("x")),
            Refuses,
        ),
        ("env value a number", Set(p("env/N"), json!(3)), Accepts),
        (
            "env key derived from database",
            Set(p("env/DATABASE_URL"), json!("x")),
            Refuses,
        ),
        (
            "env key derived from cache",
            Set(p("env/REDIS_PREFIX"), json!("x")),
            Refuses,
        ),
        (
            "envFrom none with database",
            Set(p("envFrom"), json!("none")),
            Refuses,
        ),
        (
            "envFrom none without database or cache",
            Set("/2/spec/environments/pre-release/envFrom", json!("none")),
            Accepts,
        ),
        (
            "database mysql",
            Set(p("database"), json!("mysql")),
            Refuses,
        ),
        // Quoted numbers.
        ("port \"8080\"", Set(p("port"), json!("8080")), Accepts),
        // Zone.
        ("zone spec null", Set("/1/spec", Value::Null), Accepts),
        ("zone without spec", Remove("/1/spec"), Accepts),
        (
            "powerdns api with a path",
            Set(
                "/1/spec/powerdns/api",
                json!("http://127.0.0.1:8081/api/v1"),
            ),
            Refuses,
        ),
        (
            "powerdns api https",
            Set("/1/spec/powerdns/api", json!("https://127.0.0.1:8081")),
            Refuses,
        ),
        (
            "serverId with a slash",
            Set("/1/spec/powerdns/serverId", json!("a/b")),
            Refuses,
        ),
        (
            "apiKeyEnv a key",
            Set("/1/spec/powerdns/apiKeyEnv", json!("pdns-key 123")),
            Refuses,
        ),
        // Host.
        (
            "host admitting other projects only",
            Set("/0/spec/projects", json!(["web", "team-a-*"])),
            RefusesAlone,
        ),
        (
            "host admitting the project by a prefix",
            Set("/0/spec/projects", json!(["sh*"])),
            Accepts,
        ),
        (
            "host projects `*` alone",
            Set("/0/spec/projects", json!(["*"])),
            Refuses,
        ),
        (
            "address not an IP",
            Set("/0/spec/address", json!("example.com")),
            Refuses,
        ),
        (
            "address with a leading zero",
            Set("/0/spec/address", json!("203.0.113.010")),
            Refuses,
        ),
        (
            "address IPv6",
            Set("/0/spec/address", json!("2001:db8::10")),
            Accepts,
        ),
        (
            "address IPv6 with IPv4",
            Set("/0/spec/address", json!("::ffff:203.0.113.10")),
            Accepts,
        ),
        (
            "address IPv6 with two ::",
            Set("/0/spec/address", json!("2001::db8::10")),
            Refuses,
        ),
        (
            "publishAddress 999.0.0.1",
            Set("/0/spec/publishAddress", json!("999.0.0.1")),
            Refuses,
        ),
        (
            "podman http",
            Set("/0/spec/podman", json!("http://10.0.0.2:8888")),
            Refuses,
        ),
        (
            "podman tcp without a port",
            Set("/0/spec/podman", json!("tcp://10.0.0.2")),
            Refuses,
        ),
        (
            "podman tcp",
            Set("/0/spec/podman", json!("tcp://10.0.0.2:8888")),
            Accepts,
        ),
        (
            "podman relative socket",
            Set("/0/spec/podman", json!("unix://relative.sock")),
            Refuses,
        ),
        (
            "caddy admin https",
            Set("/0/spec/caddy/admin", json!("https://127.0.0.1:2019")),
            Refuses,
        ),
        (
            "caddy admin without a port",
            Set("/0/spec/caddy/admin", json!("http://localhost/")),
            Accepts,
        ),
        (
            "listen empty",
            Set("/0/spec/caddy/listen", json!([])),
            Refuses,
        ),
        (
            "listen without a port",
            Set("/0/spec/caddy/listen", json!(["127.0.0.1"])),
            Refuses,
        ),
        (
            "listen :0",
            Set("/0/spec/caddy/listen", json!([":0"])),
            Refuses,
        ),
        (
            "listen [::1]:80",
            Set("/0/spec/caddy/listen", json!(["[::1]:80"])),
            Accepts,
        ),
        ("tls on", Set("/0/spec/caddy/tls", json!("on")), Refuses),
        (
            "postgres url with a password",
            Set(
                "/0/spec/postgres/url",
                json!("postgres://admin:secret@127.0.0.1:5432/postgres"),
            ),
            Refuses,
        ),
        (
            "postgres url of redis",
            Set("/0/spec/postgres/url", json!("redis://127.0.0.1:6379")),
            Refuses,
        ),
        (
            "redis url of postgres",
            Set("/0/spec/redis/url", json!("postgres://a@127.0.0.1:5432")),
            Refuses,
        ),
        (
            "redis url without a port",
            Set("/0/spec/redis/url", json!("redis://127.0.0.1")),
            Refuses,
        ),
        (
            "redis url with a user",
            Set(
                "/0/spec/redis/url",
                json!("redis://admin@cache.internal:6379/0"),
            ),
            Accepts,
        ),
        (
            "passwordEnv with a dash",
            Set("/0/spec/redis/passwordEnv", json!("REDIS-PASSWORD")),
            Refuses,
        ),
        (
            "appHost without a port",
            Set("/0/spec/postgres/appHost", json!("10.89.0.1")),
            Refuses,
        ),
        (
            "backup dir relative",
            Set("/0/spec/backups/dir", json!("backups")),
            Refuses,
        ),
        (
            "memory 512M",
            Set(p("resources/memory"), json!("512M")),
            Refuses,
        ),
        (
            "memory 1Mi",
            Set(p("resources/memory"), json!("1Mi")),
            Refuses,
        ),
        (
            "memory 6Mi",
            Set(p("resources/memory"), json!("6Mi")),
            Accepts,
        ),
        (
            "memory 6291455 bytes",
            Set(p("resources/memory"), json!(6_291_455)),
            Refuses,
        ),
        (
            "memory 6291456 bytes",
            Set(p("resources/memory"), json!("6291456")),
            Accepts,
        ),
        (
            "memory 6144Ki",
            Set(p("resources/memory"), json!("6144Ki")),
            Accepts,
        ),
        (
            "memory 6143Ki",
            Set(p("resources/memory"), json!("6143Ki")),
            Refuses,
        ),
        ("cpus 0", Set(p("resources/cpus"), json!(0)), Refuses),
        (
            "cpus \"0.00\"",
            Set(p("resources/cpus"), json!("0.00")),
            Refuses,
        ),
        (
            "cpus 0.125 as text",
            Set(p("resources/cpus"), json!("0.125")),
            Refuses,
        ),
        ("cpus abc", Set(p("resources/cpus"), json!("abc")), Refuses),
        ("cpus 0.01", Set(p("resources/cpus"), json!(0.01)), Accepts),
        (
            "cpus over the Host's maximum",
            Set(p("resources/cpus"), json!(3)),
            RefusesAlone,
        ),
        (
            "maxResources below resources",
            Set("/0/spec/containers/maxResources/pids", json!(64)),
            RefusesAlone,
        ),
        (
            "capability NET_RAWR",
            Set("/0/spec/containers/capabilities/add", json!(["NET_RAWR"])),
            Refuses,
        ),
        (
            "capability cap_net_admin",
            Set(
                "/0/spec/containers/capabilities/add",
                json!(["cap_net_admin"]),
            ),
            Accepts,
        ),
        (
            "capability ALL added",
            Set("/0/spec/containers/capabilities/add", json!(["ALL"])),
            Refuses,
        ),
        (
            "capability all dropped",
            Set("/0/spec/containers/capabilities/drop", json!(["all"])),
            Accepts,
        ),
        (
            "user with a space",
            Set("/0/spec/containers/user", json!("root user")),
            Refuses,
        ),
        (
            "user a name",
            Set("/0/spec/containers/user", json!("app:app")),
            Accepts,
        ),
        (
            "allowed prefix without a registry",
            Set("/0/spec/containers/images/allow", json!(["acme/"])),
            Refuses,
        ),
        // Structure.
        ("unknown field", Set(p("prot"), json!(80)), Refuses),
        (
            "accessLog that is not a boolean",
            Set("/0/spec/caddy/accessLog", json!("sometimes")),
            Refuses,
        ),
        (
            "an access log path in a manifest",
            Set("/0/spec/caddy/accessLogFile", json!("/etc/cron.d/x")),
            Refuses,
        ),
        (
            "unknown top-level field",
            Set("/2/specs", json!({})),
            Refuses,
        ),
        (
            "wrong apiVersion",
            Set("/2/apiVersion", json!("v1")),
            Refuses,
        ),
        ("unknown kind", Set("/2/kind", json!("Projet")), Refuses),
        ("project without spec", Remove("/2/spec"), Refuses),
        // Another document.
        (
            "a second Project of the same name",
            Append(project("shop")),
            RefusesAlone,
        ),
        (
            "a Project needing the other's container names",
            Append(project("shop-pre")),
            RefusesAlone,
        ),
        (
            "a Project on an unknown Host",
            Append(on_host(project("cart"), "remote")),
            RefusesAlone,
        ),
    ];
    rows.into_iter()
        .map(|(label, change, codeb)| (label.to_string(), change, codeb))
        .collect()
}

/// A Project `name` on Host `local` with one environment, `release`, at its default hostname.
fn project(name: &str) -> Value {
    json!({
        "apiVersion": "codeb.kr/v1", "kind": "Project", "metadata": {"name": name},
        "spec": {"host": "local", "zone": "codeb.test",
                 "environments": {"release": {"image": "localhost/codeb-test-app:v1", "port": 80}}},
    })
}

/// `doc` with its `spec.host` set to `host`.
fn on_host(mut doc: Value, host: &str) -> Value {
    doc["spec"]["host"] = json!(host);
    doc
}

/// `docs` with `change` made; panics when the pointer does not fit [`FULL`] (a stale row).
fn mutate(docs: &[Value], change: &Change) -> Vec<Value> {
    let mut docs = docs.to_vec();
    if let Append(doc) = change {
        docs.push(doc.clone());
        return docs;
    }
    let pointer = match change {
        Set(ptr, _) | Remove(ptr) | Rename(ptr, _) => *ptr,
        Append(_) => unreachable!(),
    };
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let (index, rest) = parent[1..].split_once('/').unwrap_or((&parent[1..], ""));
    let doc = &mut docs[index.parse::<usize>().unwrap()];
    let inner = format!("/{rest}");
    let target = doc
        .pointer_mut(inner.trim_end_matches('/'))
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no mapping {parent} in FULL"));
    match change {
        Set(_, value) => drop(target.insert(key.to_string(), value.clone())),
        Remove(_) => assert!(target.remove(key).is_some(), "no {pointer} in FULL"),
        Rename(_, to) => {
            let value = target.remove(key).expect(pointer);
            target.insert(to.to_string(), value);
        }
        Append(_) => unreachable!(),
    }
    docs
}

/// The documents as a YAML stream of one JSON document per line (JSON is YAML). Keys come in
/// sorted order, so `kind` before `spec`.
fn stream(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{d}\n"))
        .collect::<String>()
}

/// How a mutation's documents are written as a stream.
type Render = fn(&[Value]) -> String;

/// As [`stream`], with each document's `kind` written last, after its `spec` (a YAML mapping has
/// no order: codeb reads it all the same).
fn stream_kind_last(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| {
            let mut rest = d.clone();
            let kind = rest.as_object_mut().and_then(|o| o.remove("kind"));
            let text = rest.to_string();
            match (kind, text.strip_suffix('}')) {
                (Some(kind), Some(open)) if open.len() > 1 => {
                    format!("---\n{open},\"kind\":{kind}}}\n")
                }
                (Some(kind), Some(_)) => format!("---\n{{\"kind\":{kind}}}\n"),
                _ => format!("---\n{d}\n"),
            }
        })
        .collect::<String>()
}

#[test]
fn the_schema_and_codeb_agree_on_the_examples_and_the_invalid_manifests() {
    let schemas = Schemas::load();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let mut files = yaml_files("manifests/examples");
    files.extend(yaml_files("manifests/invalid"));
    assert!(files.len() > 10, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let label = file.file_name().unwrap().to_string_lossy();
        out.extend(disagreements(&label, &text, &schemas, &mut seen));
    }
    assert!(out.is_empty(), "{}", out.join("\n"));
}

#[test]
fn the_schema_and_codeb_agree_on_every_one_change_mutation() {
    let schemas = Schemas::load();
    let base: Vec<Value> = split(FULL).into_iter().map(|d| d.value.unwrap()).collect();
    let text = stream(&base);
    load_str("t.yaml", &text).expect("FULL is valid");
    let mut seen = Vec::new();
    let mut out = disagreements("FULL", &text, &schemas, &mut seen);
    let kind_last = stream_kind_last(&base);
    assert!(kind_last.contains(",\"kind\":\"Project\"}"), "{kind_last}");
    load_str("t.yaml", &kind_last).expect("FULL with kind last is valid");
    let renderings: [(&str, Render); 2] = [("", stream), (" (kind last)", stream_kind_last)];
    let rows = renderings.into_iter().flat_map(|(suffix, render)| {
        mutations()
            .into_iter()
            .map(move |(label, change, claim)| (format!("{label}{suffix}"), change, claim, render))
    });
    for (label, change, claim, render) in rows {
        let text = render(&mutate(&base, &change));
        let docs = split(&text);
        let errors: Vec<_> = codeb_errors(&text, &docs).into_iter().flatten().collect();
        let said = match (
            errors.is_empty(),
            errors.iter().all(|(_, rule)| rule.is_some()),
        ) {
            (true, _) => Codeb::Accepts,
            (false, true) => Codeb::RefusesAlone,
            (false, false) => Codeb::Refuses,
        };
        if said != claim {
            out.push(format!(
                "{label}: codeb {said:?}, the table says {claim:?}: {errors:?}"
            ));
        }
        out.extend(disagreements(&label, &text, &schemas, &mut seen));
    }
    assert!(
        out.is_empty(),
        "{} disagreements:\n{}",
        out.len(),
        out.join("\n")
    );
}

#[test]
fn every_rule_left_to_codeb_is_met_by_the_examples_invalid_manifests_or_mutations() {
    let schemas = Schemas::load();
    let mut seen = Vec::new();
    let mut files = yaml_files("manifests/examples");
    files.extend(yaml_files("manifests/invalid"));
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        disagreements("", &text, &schemas, &mut seen);
    }
    let base: Vec<Value> = split(FULL).into_iter().map(|d| d.value.unwrap()).collect();
    for (_, change, _) in mutations() {
        disagreements("", &stream(&mutate(&base, &change)), &schemas, &mut seen);
    }
    let unseen: Vec<&str> = CODEB_ONLY
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !seen.contains(name))
        .collect();
    assert!(
        unseen.is_empty(),
        "rules no input shows (stale exceptions?): {unseen:?}"
    );
}
