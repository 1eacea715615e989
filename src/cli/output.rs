//! Rendering the service's typed results: tables and text for people, JSON and YAML for machines.
//! The views hold no environment variable's value, so nothing here can print one.

use std::io::Write;

use serde::Serialize;

use super::Format;
use crate::service::view::{OutcomeView, PlanView, ProjectView};
use crate::service::Response;

/// Renders any result in `format`: JSON and YAML are the view itself; a table or text otherwise.
pub fn render(response: &Response, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    if format != Format::Table {
        return match response {
            Response::Apply(v) => data(out, v, format),
            Response::Diff(v) => data(out, v, format),
            Response::Projects(v) => data(out, v, format),
            Response::Slots(v) => data(out, v, format),
            Response::Hosts(v) => data(out, v, format),
            Response::Project(v) => data(out, v, format),
            Response::Outcome(v) => data(out, v, format),
            Response::Releases(v) => data(out, v, format),
            Response::Logs(v) => data(out, v, format),
            Response::KeyCreated { key, record } => data(
                out,
                &serde_json::json!({"key": key, "record": record}),
                format,
            ),
            Response::Keys(v) => data(out, v, format),
            Response::Version(v) => data(out, v, format),
            Response::KeyRevoked(v) => data(out, v, format),
            Response::Audit(v) => data(out, v, format),
            Response::Planned(v) => data(out, v, format),
            Response::EnvChanged(v) => data(out, v, format),
            Response::EnvList(v) => data(out, v, format),
            Response::EnvValue(v) => data(out, v, format),
            Response::EnvExport(v) => data(out, v, format),
            Response::EnvHistory(v) => data(out, v, format),
            Response::EnvDiff(v) => data(out, v, format),
            Response::BackupRun(v) => data(out, v, format),
            Response::Backups(v) => data(out, v, format),
            Response::Restored(v) => data(out, v, format),
            Response::EnvBackup(v) => data(
                out,
                &serde_json::json!({"versions": v.versions, "environments": v.environments}),
                format,
            ),
        };
    }
    match response {
        Response::Apply(a) => match &a.outcome {
            None => {
                plan(&a.plan, out)?;
                if a.plan.steps.is_empty() {
                    if a.plan.has_problems() {
                        writeln!(
                            out,
                            "nothing to do, yet not converged (see the notes marked !)"
                        )?;
                    } else if !a.plan.changes.is_empty() {
                        writeln!(out, "no step: apply records the changes above")?;
                    } else {
                        writeln!(out, "nothing to do")?;
                    }
                }
                Ok(())
            }
            Some(o) => {
                outcome(o, out)?;
                for note in &a.daemon_notes {
                    writeln!(out, "· {note}")?;
                }
                Ok(())
            }
        },
        Response::Diff(p) => plan(p, out),
        Response::Planned(p) => {
            plan(&p.plan, out)?;
            writeln!(out, "fingerprint {}", p.fingerprint)?;
            Ok(())
        }
        Response::Outcome(o) => outcome(o, out),
        Response::Project(p) => describe(p, out),
        Response::Logs(l) => {
            for line in &l.lines {
                writeln!(out, "{line}")?;
            }
            Ok(())
        }
        Response::KeyCreated { key, record } => {
            writeln!(out, "{key}")?;
            writeln!(
                out,
                "· key {} ({}) created; this is the only time its text is shown: store it now",
                record.id, record.role
            )?;
            Ok(())
        }
        Response::Version(v) => {
            writeln!(
                out,
                "codeb {} (commit {}, {})",
                v.version, v.commit, v.commit_date
            )?;
            Ok(())
        }
        Response::Keys(keys) => emit(
            out,
            keys,
            format,
            &[
                "ID",
                "NAME",
                "ROLE",
                "PROJECTS",
                "CREATED",
                "LAST USED",
                "EXPIRES",
                "REVOKED",
            ],
            |k| {
                let at = |t: Option<u64>| t.map_or("-".into(), |t| rfc3339(t).to_string());
                vec![
                    k.id.clone(),
                    k.name.clone().unwrap_or_else(|| "-".into()),
                    k.role.to_string(),
                    k.projects.as_ref().map_or("*".into(), |ps| {
                        ps.iter().cloned().collect::<Vec<_>>().join(",")
                    }),
                    rfc3339(k.created_ms).to_string(),
                    at(k.last_used_ms),
                    at(k.expires_ms),
                    at(k.revoked_ms),
                ]
            },
        ),
        Response::KeyRevoked(k) => {
            writeln!(out, "key {} revoked", k.id)?;
            Ok(())
        }
        Response::EnvChanged(v) => env_changed(v, out),
        Response::EnvList(v) => {
            match v.version {
                Some(n) => writeln!(
                    out,
                    "{}/{} env version {n} (values hidden; digests are keyed)",
                    v.project, v.environment
                )?,
                None => writeln!(out, "{}/{} has no stored env", v.project, v.environment)?,
            }
            if v.vars.is_empty() {
                return Ok(());
            }
            emit(
                out,
                &v.vars,
                format,
                &["NAME", "DIGEST", "PROTECTED"],
                |r| {
                    vec![
                        r.name.clone(),
                        r.digest.clone(),
                        if r.protected { "yes" } else { "-" }.into(),
                    ]
                },
            )
        }
        Response::EnvValue(v) => {
            writeln!(out, "{}", v.value.0)?;
            Ok(())
        }
        Response::EnvExport(v) => {
            write!(out, "{}", v.text.0)?;
            Ok(())
        }
        Response::Releases(rows) => emit(
            out,
            rows,
            format,
            &[
                "RELEASE", "IMAGE", "ENV", "SLOT", "STATE", "SINCE", "DEPLOYED", "BY", "NOTE",
            ],
            |r| {
                vec![
                    r.number.to_string(),
                    r.image.clone(),
                    r.env_version.map_or("-".into(), |v| v.to_string()),
                    r.slot.to_string(),
                    r.state.clone(),
                    rfc3339(r.since_ms).to_string(),
                    rfc3339(r.at_ms).to_string(),
                    r.by.clone(),
                    r.rollback_of
                        .map_or(String::new(), |n| format!("rollback of {n}")),
                ]
            },
        ),
        Response::EnvHistory(rows) => emit(
            out,
            rows,
            format,
            &["VERSION", "TIME", "BY", "ADDED", "CHANGED", "REMOVED"],
            |r| {
                let names = |n: &[String]| {
                    if n.is_empty() {
                        "-".to_string()
                    } else {
                        n.join(",")
                    }
                };
                let version = match r.restored_from {
                    Some(f) => format!("{} (= {f})", r.version),
                    None => r.version.to_string(),
                };
                vec![
                    version,
                    rfc3339(r.at_ms).to_string(),
                    r.by.clone(),
                    names(&r.added),
                    names(&r.changed),
                    names(&r.removed),
                ]
            },
        ),
        Response::EnvDiff(d) => {
            writeln!(
                out,
                "{}/{} env {} → {} (names only)",
                d.project, d.environment, d.from, d.to
            )?;
            for n in &d.added {
                writeln!(out, "+ {n}")?;
            }
            for n in &d.changed {
                writeln!(out, "~ {n}")?;
            }
            for n in &d.removed {
                writeln!(out, "- {n}")?;
            }
            if d.added.is_empty() && d.changed.is_empty() && d.removed.is_empty() {
                writeln!(out, "no difference")?;
            }
            Ok(())
        }
        Response::EnvBackup(b) => {
            writeln!(
                out,
                "{} env versions of {} environment{} ({}), still encrypted",
                b.versions,
                b.environments.len(),
                if b.environments.len() == 1 { "" } else { "s" },
                b.environments.join(", ")
            )?;
            Ok(())
        }
        Response::BackupRun(v) => {
            for m in &v.made {
                writeln!(
                    out,
                    "{}/{} {} backup {}: {} bytes, {} {} in {} ms{}",
                    m.project,
                    m.environment,
                    m.kind,
                    m.id,
                    m.size,
                    m.items,
                    if m.kind == "cache" { "keys" } else { "rows" },
                    m.elapsed_ms,
                    if m.deleted.is_empty() {
                        String::new()
                    } else {
                        format!("; retention deleted {}", m.deleted.join(", "))
                    }
                )?;
            }
            for f in &v.failed {
                writeln!(
                    out,
                    "! {}/{} {} backup failed: {}",
                    f.project, f.environment, f.kind, f.error
                )?;
            }
            Ok(())
        }
        Response::Backups(rows) => emit(
            out,
            rows,
            format,
            &["ENV", "ID", "KIND", "CREATED", "SIZE", "ROWS/KEYS", "CHECK"],
            |r| {
                vec![
                    r.environment.clone(),
                    r.id.clone(),
                    r.kind.clone(),
                    r.created.clone(),
                    r.size.to_string(),
                    r.items.to_string(),
                    match &r.problem {
                        Some(p) => format!("problem: {p}"),
                        None => r.check.clone(),
                    },
                ]
            },
        ),
        Response::Restored(r) => {
            match (&r.database, r.keys) {
                (Some(db), _) => {
                    writeln!(
                        out,
                        "restored {} of {}/{} into database {db} in {} ms; row counts match the backup's:",
                        r.id, r.project, r.environment, r.elapsed_ms
                    )?;
                    let show = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
                    writeln!(out, "{:<40} {:>12} {:>12}", "TABLE", "EXPECTED", "ACTUAL")?;
                    for t in &r.tables {
                        writeln!(
                            out,
                            "{:<40} {:>12} {:>12}",
                            t.table,
                            show(t.expected),
                            show(t.actual)
                        )?;
                    }
                }
                (None, Some((expected, restored))) => writeln!(
                    out,
                    "restored {} of {}/{}: {restored} of {expected} keys written under {} in {} ms",
                    r.id,
                    r.project,
                    r.environment,
                    r.prefix.as_deref().unwrap_or(""),
                    r.elapsed_ms
                )?,
                (None, None) => writeln!(out, "restored {}", r.id)?,
            }
            Ok(())
        }
        Response::Audit(entries) => emit(
            out,
            entries,
            format,
            &[
                "TIME", "ACTOR", "ROLE", "SOURCE", "ACTION", "TARGET", "OUTCOME", "STEPS",
            ],
            |e| {
                let target = match (&e.project, &e.environment) {
                    (Some(p), Some(env)) => format!("{p}/{env}"),
                    (Some(p), None) => p.clone(),
                    _ => "-".into(),
                };
                vec![
                    rfc3339(e.at_ms).to_string(),
                    e.actor.clone(),
                    e.role.map_or("-".into(), |r| r.to_string()),
                    e.source.clone().unwrap_or_else(|| "-".into()),
                    e.action.clone(),
                    target,
                    e.outcome.to_string(),
                    e.steps.len().to_string(),
                ]
            },
        ),
        Response::Projects(rows) => emit(
            out,
            rows,
            format,
            &["PROJECT", "ENV", "URL", "ACTIVE", "HOST", "PORTS"],
            |p| {
                vec![
                    p.project.clone(),
                    p.environment.clone(),
                    p.url.clone(),
                    p.active_slot.map_or("-".into(), |s| s.to_string()),
                    p.host.clone(),
                    p.ports.clone(),
                ]
            },
        ),
        Response::Slots(rows) => emit(
            out,
            rows,
            format,
            &[
                "PROJECT", "ENV", "SLOT", "STATE", "IMAGE", "PORT", "PREVIEW",
            ],
            |s| {
                vec![
                    s.project.clone(),
                    s.environment.clone(),
                    s.slot.to_string(),
                    s.state.clone(),
                    s.image.clone().unwrap_or_else(|| "-".into()),
                    s.port.to_string(),
                    s.preview_url.clone(),
                ]
            },
        ),
        Response::Hosts(rows) => emit(
            out,
            rows,
            format,
            &[
                "NAME",
                "ADDRESS",
                "REACHABLE",
                "SWITCH",
                "TRANSPORT",
                "RTT",
                "ENVS",
                "PODMAN",
                "CADDY",
                "LISTEN",
                "TLS",
                "LAST ERROR",
            ],
            |h| {
                let reachable = match h.unknown_since_ms {
                    Some(since) => format!(
                        "Unknown since {}",
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(since)
                        ),
                    ),
                    None => h.reachable.clone(),
                };
                vec![
                    h.name.clone(),
                    h.address.clone(),
                    reachable,
                    h.switch.clone(),
                    h.transport.clone(),
                    crate::service::hosts::rtt_text(h.rtt_us),
                    h.environments.to_string(),
                    h.podman_version.clone().unwrap_or_else(|| "-".into()),
                    h.caddy_version.clone().unwrap_or_else(|| "-".into()),
                    h.listen.clone(),
                    h.tls.clone(),
                    h.last_error.clone().unwrap_or_else(|| "-".into()),
                ]
            },
        ),
    }
}

fn data<T: Serialize>(out: &mut dyn Write, v: &T, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => write!(out, "{}", serde_saphyr::to_string(v)?)?,
        _ => writeln!(out, "{}", serde_json::to_string_pretty(v)?)?,
    }
    Ok(())
}

fn plan(p: &PlanView, out: &mut dyn Write) -> anyhow::Result<()> {
    write!(out, "{p}")?;
    Ok(())
}

fn outcome(o: &OutcomeView, out: &mut dyn Write) -> anyhow::Result<()> {
    write!(out, "{o}")?;
    Ok(())
}

fn emit<T: Serialize>(
    out: &mut dyn Write,
    rows: &[T],
    format: Format,
    header: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(rows)?)?,
        Format::Yaml => write!(out, "{}", serde_saphyr::to_string(&rows)?)?,
        Format::Table => {
            let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for row in &body {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cols: Vec<String>| {
                cols.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            writeln!(
                out,
                "{}",
                line(header.iter().map(|h| h.to_string()).collect())
            )?;
            for row in body {
                writeln!(out, "{}", line(row))?;
            }
        }
    }
    Ok(())
}

fn describe(p: &ProjectView, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "Project: {}", p.project)?;
    for e in &p.environments {
        writeln!(out, "\nEnvironment: {}", e.environment)?;
        writeln!(out, "  Host:      {}", e.host)?;
        writeln!(out, "  URL:       {}", e.url)?;
        writeln!(
            out,
            "  Ports:     blue {}, green {}",
            e.base_port,
            e.base_port + 1
        )?;
        writeln!(
            out,
            "  Active:    {}",
            e.active.map_or("none".into(), |s| s.to_string())
        )?;
        writeln!(
            out,
            "  Grace:     {}",
            humantime::format_duration(std::time::Duration::from_millis(e.grace_period_ms))
        )?;
        if let Some(h) = &e.held {
            writeln!(
                out,
                "  Held:      release {h} was rolled back; apply does not promote it again"
            )?;
        }
        if let Some(o) = &e.release_override {
            writeln!(
                out,
                "  Override:  image {} set by {} at {} (the manifests name {}; a manifest naming another image supersedes it)",
                o.image,
                o.by,
                rfc3339(o.at_ms),
                o.manifest_image
            )?;
        }
        if let Some(m) = &e.migration {
            writeln!(out, "  Migrating: {m}")?;
        }
        if let Some(r) = &e.rolled_back {
            writeln!(out, "  Rolled back: {r}")?;
        }
        if let Some(d) = &e.database {
            writeln!(
                out,
                "  Database:  \"{}\" at {} (login {}; credentials in the stored env)",
                d.database,
                d.server,
                if d.logins.is_empty() {
                    "none set".to_string()
                } else {
                    d.logins.join(", ")
                }
            )?;
        }
        if let Some(c) = &e.cache {
            writeln!(
                out,
                "  Cache:     Redis user {} at {}, keys {}* ({} password{})",
                c.user,
                c.server,
                c.prefix,
                c.passwords,
                if c.passwords == 1 { "" } else { "s" }
            )?;
        }
        for s in &e.slots {
            writeln!(out, "  Slot {}:", s.slot)?;
            writeln!(out, "    State:   {}", s.state)?;
            if let Some(image) = &s.image {
                writeln!(out, "    Image:   {image}")?;
            }
            if let Some(release) = &s.release {
                writeln!(out, "    Release: {release}")?;
            }
            if !s.env_names.is_empty() {
                writeln!(
                    out,
                    "    Env:     {} (values hidden)",
                    s.env_names.join(", ")
                )?;
            }
            if let Some(v) = s.env_version {
                writeln!(out, "    Env version: {v} (codeb env history)")?;
            }
            if let Some(h) = &s.last_health {
                writeln!(out, "    Health:  {h}")?;
            }
            if !s.log_tail.is_empty() {
                writeln!(out, "    Log tail:")?;
                for l in &s.log_tail {
                    writeln!(out, "      {}", crate::service::sanitize(l))?;
                }
            }
        }
    }
    writeln!(out, "\nHistory:")?;
    for h in &p.history {
        let mark = if h.ok { "✓" } else { "✗" };
        write!(out, "  {} {mark} {}", rfc3339(h.at_ms), h.step)?;
        if let Some(m) = &h.message {
            write!(out, ": {m}")?;
        }
        writeln!(out)?;
    }
    for step in &p.interrupted {
        writeln!(out, "  interrupted: {step}")?;
    }
    Ok(())
}

fn env_changed(v: &crate::service::view::EnvChangeView, out: &mut dyn Write) -> anyhow::Result<()> {
    let key = format!("{}/{}", v.project, v.environment);
    if let Some(n) = v.version {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &v.added),
            ("changed", &v.changed),
            ("removed", &v.removed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        writeln!(
            out,
            "{key} env version {n} ({}): {}",
            v.op,
            if parts.is_empty() {
                "no name changed".to_string()
            } else {
                parts.join("; ")
            }
        )?;
    }
    for note in &v.notes {
        writeln!(out, "· {note}")?;
    }
    if let Some(o) = &v.rollout {
        outcome(o, out)?;
    }
    Ok(())
}

fn rfc3339(at_ms: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms),
    )
}
