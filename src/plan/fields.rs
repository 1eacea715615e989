//! What an apply changes in each environment, field by field: the `image v1 → v2`,
//! `healthCheck.path / → /healthz` and `env API_TOKEN changed` lines that `codeb diff` prints
//! before the steps.
//!
//! Pure: the caller passes what runs or was declared (the environment's record and its last
//! declared spec) and what is desired, with the environment variables of each side as names and
//! keyed digests ([`EnvDigests`]). No value of a variable ever reaches this module, so none can
//! reach its output; a digest is not output either (names and `added`/`changed`/`removed` only).
//!
//! The base an environment is compared with is what an apply would move it from:
//! - release fields (image, command, port, resources, stop timeout, env): the slot that already
//!   holds the desired release (one awaiting a manual promotion, a held or failed one: apply
//!   does not roll it out again, and the plan's notes tell its state), else the active slot's
//!   release, else the newest release in a slot;
//! - the rest (health check, promotion, grace period, hostname, `envFrom`, data): the spec last
//!   declared (what apply records), else, for a store written before specs were recorded, what
//!   the environment's record and the base slot tell (hostname, grace period, health check).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::data::{DataWants, OnDelete};
use crate::model::{Confinement, DesiredEnv, EnvKey, EnvRecord, Promotion, Release, Slot};
use crate::spec::resources::{show_cpus, show_memory};
use crate::spec::EnvFrom;

/// The variables a container of one side gets: each name with the keyed digest of its value
/// (inline `env:` first, the stored env version over it, as the executor resolves them), or
/// `None` where the value could not be read (its digest is then unknown).
pub type EnvDigests = BTreeMap<String, Option<String>>;

/// What is there now for one environment.
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    pub record: &'a EnvRecord,
    /// The spec last declared for it (`None`: a store that recorded none).
    pub declared: Option<&'a DesiredEnv>,
}

/// What an environment becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not recorded yet: every field is new.
    New,
    Changed,
    /// Recorded and no longer declared: pruned.
    Removed,
}

/// One field, old → new (`None`: not set, or unknown on that side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// As the manifest names it (`image`, `healthCheck.path`, `resources.memory`, …).
    pub name: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// What happens to one environment variable; never its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarChange {
    Added,
    Changed,
    Removed,
    /// The old value could not be read (its sealed copy is gone or does not open): it may have
    /// changed.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub name: String,
    pub change: VarChange,
}

/// Everything that changes in one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvChanges {
    pub key: EnvKey,
    pub kind: Kind,
    pub fields: Vec<Field>,
    pub vars: Vec<Var>,
}

impl EnvChanges {
    pub fn is_empty(&self) -> bool {
        self.kind == Kind::Changed && self.fields.is_empty() && self.vars.is_empty()
    }
}

/// The release an environment is compared with (see the module's doc): the slot holding the
/// desired release, else the active one, else the newest.
pub fn base_release<'a>(record: &'a EnvRecord, desired: Option<&Release>) -> Option<&'a Release> {
    let slots = Slot::ALL.map(|s| record.slot(s));
    if let Some(d) = desired {
        if let Some(r) = slots
            .iter()
            .filter_map(|s| s.release.as_ref())
            .find(|r| r.hash() == d.hash())
        {
            return Some(r);
        }
    }
    if let Some(r) = record.active.and_then(|s| record.slot(s).release.as_ref()) {
        return Some(r);
    }
    slots
        .iter()
        .filter(|s| s.release.is_some())
        .max_by_key(|s| s.since_ms)
        .and_then(|s| s.release.as_ref())
}

/// Whether the variables of `base` and `desired` may differ: another inline env (by digest) or
/// another stored env version. Where not, no variable is compared (and none need be read).
pub fn env_differs(base: Option<&Release>, desired: &Release) -> bool {
    base.is_none_or(|b| {
        b.env != desired.env
            || b.env.digest() != desired.env.digest()
            || b.env_version != desired.env_version
    })
}

/// The changes an apply makes to one environment; `None` when there are none.
///
/// `current_env` and `desired_env` are the variables of the base release and of the desired
/// one ([`EnvDigests`]); they are compared only when the releases' env differs (another inline
/// digest or stored version), so an unreadable old value never shows as a change that is not.
///
/// # Guarantees
/// The result holds names, field values from the manifests and records (images, ports,
/// durations, hostnames), and no environment variable's value or digest.
pub fn env_changes(
    key: &EnvKey,
    current: Option<Current<'_>>,
    desired: Option<&DesiredEnv>,
    current_env: &EnvDigests,
    desired_env: &EnvDigests,
) -> Option<EnvChanges> {
    let out = match (current, desired) {
        (None, None) => return None,
        (Some(_), None) => EnvChanges {
            key: key.clone(),
            kind: Kind::Removed,
            fields: vec![],
            vars: vec![],
        },
        (None, Some(d)) => EnvChanges {
            key: key.clone(),
            kind: Kind::New,
            fields: fields(None, None, d),
            vars: desired_env
                .keys()
                .map(|name| Var {
                    name: name.clone(),
                    change: VarChange::Added,
                })
                .collect(),
        },
        (Some(c), Some(d)) => {
            let base = base_release(c.record, Some(&d.release));
            let env_differs = env_differs(base, &d.release);
            EnvChanges {
                key: key.clone(),
                kind: Kind::Changed,
                fields: fields(Some(c), base, d),
                vars: if env_differs {
                    vars(current_env, desired_env)
                } else {
                    vec![]
                },
            }
        }
    };
    (!out.is_empty()).then_some(out)
}

/// Added, changed (or unknown) and removed names, sorted by name.
fn vars(from: &EnvDigests, to: &EnvDigests) -> Vec<Var> {
    let mut out = Vec::new();
    for (name, d) in to {
        let change = match (from.get(name), d) {
            (None, _) => VarChange::Added,
            (Some(Some(a)), Some(b)) if a == b => continue,
            (Some(Some(_)), Some(_)) => VarChange::Changed,
            (Some(_), _) => VarChange::Unknown,
        };
        out.push(Var {
            name: name.clone(),
            change,
        });
    }
    for name in from.keys().filter(|n| !to.contains_key(*n)) {
        out.push(Var {
            name: name.clone(),
            change: VarChange::Removed,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Every field that differs between the base and the desired environment (every field that is
/// set, for a new one).
fn fields(current: Option<Current<'_>>, base: Option<&Release>, d: &DesiredEnv) -> Vec<Field> {
    let mut out = Vec::new();
    let mut push = |name: &'static str, from: Option<String>, to: Option<String>| {
        if from != to {
            out.push(Field { name, from, to });
        }
    };
    let new = current.is_none();
    let declared = current.and_then(|c| c.declared);
    let record = current.map(|c| c.record);
    // Release fields, against the base release (none for a new environment, or one that never
    // ran one).
    let r = &d.release;
    push(
        "image",
        base.map(|b| b.image.clone()),
        Some(r.image.clone()),
    );
    if base.is_some() || r.command.is_some() {
        push(
            "command",
            base.map(|b| command(&b.command)),
            Some(command(&r.command)),
        );
    }
    push(
        "port",
        base.map(|b| b.port.to_string()),
        Some(r.port.to_string()),
    );
    // Against no release (a new environment, or one that never ran one), a default is not news.
    if base.is_some() || r.confinement != Confinement::default() {
        resources(&mut push, base.map(|b| &b.confinement), &r.confinement);
    }
    if base.is_some() || r.stop_timeout_secs != Release::default().stop_timeout_secs {
        push(
            "stopTimeout",
            base.map(|b| secs(b.stop_timeout_secs)),
            Some(secs(r.stop_timeout_secs)),
        );
    }
    push(
        "envVersion",
        base.and_then(|b| b.env_version).map(|v| v.to_string()),
        r.env_version.map(|v| v.to_string()),
    );
    // The environment's fields, against the declared spec (else the record).
    let slot_of_base = record.and_then(|rec| {
        Slot::ALL
            .into_iter()
            .find(|s| base.is_some() && rec.slot(*s).release.as_ref() == base)
            .map(|s| rec.slot(s))
    });
    let (path, timeout) = match (declared, slot_of_base) {
        (Some(x), _) => (Some(x.health_path.clone()), Some(x.health_timeout)),
        (None, Some(s)) if !s.health_path.is_empty() => (
            Some(s.health_path.clone()),
            Some(Duration::from_millis(s.health_timeout_ms)),
        ),
        _ => (None, None),
    };
    push(
        "hostname",
        record.map(|r| r.hostname.clone()),
        Some(d.hostname.clone()),
    );
    // Unknown before (no declared spec, no health check recorded with the release): not shown.
    if path.is_some() {
        push("healthCheck.path", path, Some(d.health_path.clone()));
        push(
            "healthCheck.timeout",
            timeout.map(duration),
            Some(duration(d.health_timeout)),
        );
    }
    if !new {
        push(
            "gracePeriod",
            declared
                .map(|x| duration(x.grace_period))
                .or(record.map(|r| duration(Duration::from_millis(r.grace_period_ms)))),
            Some(duration(d.grace_period)),
        );
    }
    // What only a declared spec tells: compared when there is one (a new environment shows what
    // differs from the defaults).
    if new || declared.is_some() {
        let was = |f: &dyn Fn(&DesiredEnv) -> String, default: String| {
            declared.map(f).or(new.then_some(default))
        };
        push(
            "promotion",
            was(&|x| promotion(x.promotion), promotion(Promotion::Auto)),
            Some(promotion(d.promotion)),
        );
        push(
            "envFrom",
            was(&|x| env_from(x.env_from), env_from(EnvFrom::default())),
            Some(env_from(d.env_from)),
        );
        push(
            "migrationGrace",
            was(
                &|x| duration(x.migration_grace),
                duration(crate::model::DEFAULT_MIGRATION_GRACE),
            ),
            Some(duration(d.migration_grace)),
        );
        data(&mut push, declared.map(|x| x.data), d.data);
    }
    out
}

fn resources(
    push: &mut impl FnMut(&'static str, Option<String>, Option<String>),
    from: Option<&Confinement>,
    to: &Confinement,
) {
    let mut field = |name: &'static str, f: &dyn Fn(&Confinement) -> String| {
        push(name, from.map(f), Some(f(to)));
    };
    field("resources.memory", &|c| show_memory(c.memory_bytes));
    field("resources.cpus", &|c| show_cpus(c.millicpus));
    field("resources.pids", &|c| c.pids.to_string());
    field("containers.user", &|c| {
        c.user.clone().unwrap_or_else(|| "(image default)".into())
    });
    field("containers.readOnlyRootFs", &|c| {
        c.read_only_root_fs.to_string()
    });
    field("containers.noNewPrivileges", &|c| {
        c.no_new_privileges.to_string()
    });
    field("containers.capabilities", &|c| c.capabilities.join(","));
}

fn data(
    push: &mut impl FnMut(&'static str, Option<String>, Option<String>),
    from: Option<DataWants>,
    to: DataWants,
) {
    let on = |b: bool| if b { "on" } else { "off" }.to_string();
    let from = from.unwrap_or_default();
    push("database", Some(on(from.database)), Some(on(to.database)));
    push("cache", Some(on(from.cache)), Some(on(to.cache)));
    let on_delete = |o: OnDelete| match o {
        OnDelete::Retain => "retain".to_string(),
        OnDelete::Drop => "drop".to_string(),
    };
    push(
        "onDelete",
        Some(on_delete(from.on_delete)),
        Some(on_delete(to.on_delete)),
    );
}

/// A command as JSON (`["sh","-c","…"]`), or the image's own.
fn command(c: &Option<Vec<String>>) -> String {
    match c {
        Some(args) => serde_json::to_string(args).expect("strings serialize"),
        None => "(image default)".into(),
    }
}

fn promotion(p: Promotion) -> String {
    match p {
        Promotion::Manual => "manual",
        Promotion::Auto => "auto",
    }
    .into()
}

fn env_from(e: EnvFrom) -> String {
    match e {
        EnvFrom::Stored => "stored",
        EnvFrom::None => "none",
    }
    .into()
}

fn secs(s: u32) -> String {
    format!("{s}s")
}

/// `5s`, `1500ms`, `1h`, `90m`: as a manifest would write it.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        0 => "0s".into(),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SlotRecord, SlotState};
    use crate::service::view::EnvChangesView;

    const CANARY: &str = "canary-d1ff-5ecret-value";

    fn desired() -> DesiredEnv {
        let mut d = crate::plan::tests::env("hello");
        d.release = Release::new("localhost/app:v1", None, BTreeMap::new(), 8080);
        d
    }

    /// `d` recorded as running in blue (active), declared as it is.
    fn running(d: &DesiredEnv) -> (EnvRecord, DesiredEnv) {
        let mut rec = EnvRecord::new(d.key.clone(), d.host.clone(), d.hostname.clone(), 20000);
        rec.grace_period_ms = d.grace_period.as_millis() as u64;
        rec.active = Some(Slot::Blue);
        rec.blue = SlotRecord {
            state: SlotState::Active,
            release: Some(d.release.clone()),
            since_ms: 10,
            health_path: d.health_path.clone(),
            health_timeout_ms: d.health_timeout.as_millis() as u64,
            ..SlotRecord::default()
        };
        (rec, d.clone())
    }

    fn changes(rec: &EnvRecord, declared: Option<&DesiredEnv>, d: &DesiredEnv) -> Vec<Field> {
        let none = EnvDigests::new();
        let current = Current {
            record: rec,
            declared,
        };
        env_changes(&d.key, Some(current), Some(d), &none, &none)
            .map(|c| c.fields)
            .unwrap_or_default()
    }

    fn field(name: &'static str, from: &str, to: &str) -> Field {
        Field {
            name,
            from: Some(from.into()),
            to: Some(to.into()),
        }
    }

    #[test]
    fn an_unchanged_environment_has_no_changes() {
        let d = desired();
        let (rec, declared) = running(&d);
        let none = EnvDigests::new();
        let current = Some(Current {
            record: &rec,
            declared: Some(&declared),
        });
        assert_eq!(env_changes(&d.key, current, Some(&d), &none, &none), None);
    }

    #[test]
    fn each_field_shows_old_and_new() {
        let old = desired();
        let (rec, declared) = running(&old);
        type Edit = Box<dyn Fn(&mut DesiredEnv)>;
        let cases: Vec<(Edit, Field)> = vec![
            (
                Box::new(|d| {
                    d.release = Release::new("localhost/app:v2", None, BTreeMap::new(), 8080)
                }),
                field("image", "localhost/app:v1", "localhost/app:v2"),
            ),
            (
                Box::new(|d| {
                    d.release = Release::new(
                        "localhost/app:v1",
                        Some(vec!["sh".into(), "-c".into(), "serve".into()]),
                        BTreeMap::new(),
                        8080,
                    )
                }),
                field("command", "(image default)", r#"["sh","-c","serve"]"#),
            ),
            (
                Box::new(|d| {
                    d.release = Release::new("localhost/app:v1", None, BTreeMap::new(), 9090)
                }),
                field("port", "8080", "9090"),
            ),
            (
                Box::new(|d| d.health_path = "/healthz".into()),
                field("healthCheck.path", "/health", "/healthz"),
            ),
            (
                Box::new(|d| d.health_timeout = Duration::from_millis(1500)),
                field("healthCheck.timeout", "5s", "1500ms"),
            ),
            (
                Box::new(|d| d.promotion = Promotion::Manual),
                field("promotion", "auto", "manual"),
            ),
            (
                Box::new(|d| d.grace_period = Duration::from_secs(90)),
                field("gracePeriod", "1h", "90s"),
            ),
            (
                Box::new(|d| d.migration_grace = Duration::from_secs(3600)),
                field("migrationGrace", "48h", "1h"),
            ),
            (
                Box::new(|d| d.hostname = "hello.other.test".into()),
                field("hostname", "hello.example.test", "hello.other.test"),
            ),
            (
                Box::new(|d| d.release = d.release.clone().with_stop_timeout(30)),
                field("stopTimeout", "10s", "30s"),
            ),
            (
                Box::new(|d| {
                    let c = Confinement {
                        memory_bytes: 2 << 30,
                        ..Confinement::default()
                    };
                    d.release = d.release.clone().with_confinement(c);
                }),
                field(
                    "resources.memory",
                    &show_memory(Confinement::default().memory_bytes),
                    "2Gi",
                ),
            ),
            (
                Box::new(|d| {
                    let c = Confinement {
                        user: Some("1000:1000".into()),
                        ..Confinement::default()
                    };
                    d.release = d.release.clone().with_confinement(c);
                }),
                field("containers.user", "(image default)", "1000:1000"),
            ),
            (
                Box::new(|d| d.env_from = EnvFrom::None),
                field("envFrom", "stored", "none"),
            ),
            (
                Box::new(|d| d.data.database = true),
                field("database", "off", "on"),
            ),
            (
                Box::new(|d| d.data.cache = true),
                field("cache", "off", "on"),
            ),
            (
                Box::new(|d| d.data.on_delete = OnDelete::Drop),
                field("onDelete", "retain", "drop"),
            ),
            (
                Box::new(|d| d.release = d.release.clone().with_env_version(Some(2))),
                Field {
                    name: "envVersion",
                    from: None,
                    to: Some("2".into()),
                },
            ),
        ];
        for (change, want) in cases {
            let mut d = old.clone();
            change(&mut d);
            assert_eq!(
                changes(&rec, Some(&declared), &d),
                vec![want.clone()],
                "{}",
                want.name
            );
        }
    }

    #[test]
    fn without_a_declared_spec_the_record_and_the_running_slot_tell_what_they_can() {
        let old = desired();
        let (rec, _) = running(&old);
        let mut d = old.clone();
        d.health_path = "/ready".into();
        d.grace_period = Duration::from_secs(120);
        d.promotion = Promotion::Manual;
        let got = changes(&rec, None, &d);
        assert_eq!(
            got,
            vec![
                field("healthCheck.path", "/health", "/ready"),
                field("gracePeriod", "1h", "2m"),
            ],
            "promotion is unknown without a declared spec: not shown"
        );
    }

    #[test]
    fn a_release_awaiting_promotion_is_no_change_and_otherwise_the_active_one_is_the_base() {
        let old = desired();
        let (mut rec, declared) = running(&old);
        let mut d = old.clone();
        d.release = Release::new("localhost/app:v2", None, BTreeMap::new(), 8080);
        rec.green = SlotRecord {
            state: SlotState::Deployed,
            release: Some(Release::new(
                "localhost/app:v3",
                None,
                BTreeMap::new(),
                8080,
            )),
            since_ms: 20,
            ..SlotRecord::default()
        };
        assert_eq!(
            changes(&rec, Some(&declared), &d),
            vec![field("image", "localhost/app:v1", "localhost/app:v2")],
            "the active slot's, not the newest"
        );
        rec.green.release = Some(d.release.clone());
        assert_eq!(
            changes(&rec, Some(&declared), &d),
            vec![],
            "deployed, awaiting promotion"
        );
        rec.active = None;
        rec.blue.state = SlotState::Deployed;
        rec.green.release = Some(Release::new(
            "localhost/app:v3",
            None,
            BTreeMap::new(),
            8080,
        ));
        assert_eq!(
            changes(&rec, Some(&declared), &d),
            vec![field("image", "localhost/app:v3", "localhost/app:v2")],
            "no active slot: the newest"
        );
    }

    #[test]
    fn env_variables_are_added_changed_removed_or_unknown_by_digest_and_never_shown() {
        let ring = crate::store::secrets::Keyring::from_master(&[7; 32], Default::default());
        let old_values = BTreeMap::from([
            ("API_TOKEN".to_string(), CANARY.to_string()),
            ("KEPT".to_string(), "same".to_string()),
            ("GONE".to_string(), CANARY.to_string()),
            ("SEALED".to_string(), "x".to_string()),
        ]);
        let mut new_values = old_values.clone();
        new_values.insert("API_TOKEN".into(), format!("{CANARY}-2"));
        new_values.insert("NEW".into(), CANARY.into());
        new_values.remove("GONE");
        let old = desired();
        let mut with_env = old.clone();
        with_env.release = Release::new("localhost/app:v1", None, old_values.clone(), 8080);
        let (rec, declared) = running(&with_env);
        let mut d = old.clone();
        d.release = Release::new("localhost/app:v1", None, new_values.clone(), 8080);
        let digests = |v: &BTreeMap<String, String>| -> EnvDigests {
            v.iter()
                .map(|(n, x)| (n.clone(), Some(ring.value_digest(&d.key, n, x))))
                .collect()
        };
        let mut from = digests(&old_values);
        from.insert("SEALED".into(), None);
        let to = digests(&new_values);
        let current = Current {
            record: &rec,
            declared: Some(&declared),
        };
        let got = env_changes(&d.key, Some(current), Some(&d), &from, &to).unwrap();
        assert_eq!(got.fields, vec![]);
        let vars: Vec<(&str, VarChange)> = got
            .vars
            .iter()
            .map(|v| (v.name.as_str(), v.change))
            .collect();
        assert_eq!(
            vars,
            vec![
                ("API_TOKEN", VarChange::Changed),
                ("GONE", VarChange::Removed),
                ("NEW", VarChange::Added),
                ("SEALED", VarChange::Unknown),
            ]
        );
        let view = EnvChangesView::from(&got);
        let text = view.to_string();
        let json = serde_json::to_string(&view).unwrap();
        assert!(
            text.contains("hello/production: env API_TOKEN changed (value hidden)"),
            "{text}"
        );
        for out in [&text, &json, &format!("{got:?}")] {
            assert!(!out.contains(CANARY), "{out}");
            for d in to.values().flatten() {
                assert!(!out.contains(d.as_str()), "no digest either: {out}");
            }
        }
        // The same release env: nothing read, nothing compared.
        let current = Current {
            record: &rec,
            declared: Some(&declared),
        };
        assert_eq!(
            env_changes(&d.key, Some(current), Some(&with_env), &from, &to),
            None
        );
    }

    #[test]
    fn a_new_environment_shows_what_it_sets_and_a_pruned_one_shows_removed() {
        let mut d = desired();
        d.release = Release::new(
            "localhost/app:v1",
            None,
            BTreeMap::from([("TOKEN".to_string(), CANARY.to_string())]),
            8080,
        );
        d.promotion = Promotion::Manual;
        let to = EnvDigests::from([("TOKEN".to_string(), Some("abc".to_string()))]);
        let got = env_changes(&d.key, None, Some(&d), &EnvDigests::new(), &to).unwrap();
        assert_eq!(got.kind, Kind::New);
        let names: Vec<&str> = got.fields.iter().map(|f| f.name).collect();
        assert_eq!(names, vec!["image", "port", "hostname", "promotion"]);
        assert_eq!(
            got.vars,
            vec![Var {
                name: "TOKEN".into(),
                change: VarChange::Added
            }]
        );
        let text = EnvChangesView::from(&got).to_string();
        assert!(
            text.starts_with("hello/production: new environment\n"),
            "{text}"
        );
        assert!(
            text.contains("hello/production: image localhost/app:v1\n"),
            "{text}"
        );
        assert!(!text.contains(CANARY), "{text}");

        let (rec, _) = running(&d);
        let current = Current {
            record: &rec,
            declared: None,
        };
        let none = EnvDigests::new();
        let gone = env_changes(&d.key, Some(current), None, &none, &none).unwrap();
        assert_eq!((gone.kind, gone.fields.len()), (Kind::Removed, 0));
        assert_eq!(
            EnvChangesView::from(&gone).to_string(),
            "hello/production: removed\n"
        );
    }
}
