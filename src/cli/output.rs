//! What `get` and `describe` print: tables for people, JSON and YAML for machines. Reads the store
//! only; never prints an environment variable's value. Writes to the output it is given (stdout, or
//! the answer `codeb watch` sends back to a client).

use std::io::Write;

use serde::Serialize;

use super::{Format, GetWhat};
use crate::model::{preview_hostname, EnvRecord, HostRef, Recorded, Slot};
use crate::spec::Tls;
use crate::store::{Phase, Store, SwitchModes};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProjectRow {
    project: String,
    environment: String,
    url: String,
    active_slot: Option<Slot>,
    host: String,
    ports: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SlotRow {
    project: String,
    environment: String,
    slot: Slot,
    state: String,
    image: Option<String>,
    release: Option<String>,
    port: u16,
    container: String,
    preview_url: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HostRow {
    name: String,
    address: String,
    podman: String,
    caddy_admin: String,
    listen: String,
    tls: String,
    /// How promote and rollback move traffic on this host, as last observed: `kernel` (a NAT rule
    /// behind a stable service address; Caddy's config does not change) or `caddy-admin` (the
    /// hostname route changes: a Caddy reload). `-` before the first observation.
    switch: String,
    /// Why the host falls back to `caddy-admin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    switch_reason: Option<String>,
}

fn scheme(host: Option<&HostRef>) -> &'static str {
    match host.map(|h| h.tls) {
        Some(Tls::Off) => "http",
        _ => "https",
    }
}

fn project_rows(r: &Recorded) -> Vec<ProjectRow> {
    r.envs
        .values()
        .map(|e| ProjectRow {
            project: e.key.project.clone(),
            environment: e.key.env.clone(),
            url: format!("{}://{}", scheme(r.hosts.get(&e.host)), e.hostname),
            active_slot: e.active,
            host: e.host.clone(),
            ports: format!("{}/{}", e.base_port, e.base_port + 1),
        })
        .collect()
}

fn slot_rows(r: &Recorded) -> Vec<SlotRow> {
    let mut out = Vec::new();
    for e in r.envs.values() {
        for slot in Slot::ALL {
            let s = e.slot(slot);
            out.push(SlotRow {
                project: e.key.project.clone(),
                environment: e.key.env.clone(),
                slot,
                state: s.state.to_string(),
                image: s.release.as_ref().map(|r| r.image.clone()),
                release: s.hash().map(str::to_string),
                port: slot.port(e.base_port),
                container: e.key.container_name(slot),
                preview_url: format!(
                    "{}://{}",
                    scheme(r.hosts.get(&e.host)),
                    preview_hostname(&e.hostname, slot)
                ),
            });
        }
    }
    out
}

fn host_rows(r: &Recorded, modes: &SwitchModes) -> Vec<HostRow> {
    r.hosts
        .values()
        .map(|h| HostRow {
            name: h.name.clone(),
            address: h.address.clone(),
            podman: h.podman.clone(),
            caddy_admin: h.caddy_admin.clone(),
            listen: h.listen.join(","),
            tls: format!("{:?}", h.tls).to_lowercase(),
            switch: modes
                .get(&h.name)
                .map_or("-".into(), |(m, _)| m.to_string()),
            switch_reason: modes.get(&h.name).and_then(|(_, r)| r.clone()),
        })
        .collect()
}

pub fn get(
    r: &Recorded,
    modes: &SwitchModes,
    what: GetWhat,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match what {
        GetWhat::Projects => emit(
            out,
            &project_rows(r),
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
        GetWhat::Slots => emit(
            out,
            &slot_rows(r),
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
        GetWhat::Hosts => emit(
            out,
            &host_rows(r, modes),
            format,
            &[
                "NAME", "ADDRESS", "PODMAN", "CADDY", "LISTEN", "TLS", "SWITCH",
            ],
            |h| {
                vec![
                    h.name.clone(),
                    h.address.clone(),
                    h.podman.clone(),
                    h.caddy_admin.clone(),
                    h.listen.clone(),
                    h.tls.clone(),
                    h.switch.clone(),
                ]
            },
        ),
    }
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

pub fn describe(store: &Store, project: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let r = store.load()?;
    let envs: Vec<&EnvRecord> = r
        .envs
        .values()
        .filter(|e| e.key.project == project)
        .collect();
    if envs.is_empty() {
        return Err(super::Failure::invalid(format!(
            "no recorded project named {project} (see `codeb get projects`)"
        ))
        .into());
    }
    writeln!(out, "Project: {project}")?;
    for e in envs {
        writeln!(out, "\nEnvironment: {}", e.key.env)?;
        writeln!(out, "  Host:      {}", e.host)?;
        writeln!(
            out,
            "  URL:       {}://{}",
            scheme(r.hosts.get(&e.host)),
            e.hostname
        )?;
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
        for slot in Slot::ALL {
            let s = e.slot(slot);
            writeln!(out, "  Slot {slot}:")?;
            writeln!(out, "    State:   {}", s.state)?;
            if let Some(rel) = &s.release {
                writeln!(out, "    Image:   {}", rel.image)?;
                writeln!(out, "    Release: {}", rel.hash())?;
                let mut keys: Vec<&String> = rel.env.keys().collect();
                keys.sort();
                if !keys.is_empty() {
                    let names: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
                    writeln!(out, "    Env:     {} (values hidden)", names.join(", "))?;
                }
            }
            if let Some(h) = &s.last_health {
                writeln!(out, "    Health:  {h}")?;
            }
            if !s.log_tail.is_empty() {
                writeln!(out, "    Log tail:")?;
                for l in &s.log_tail {
                    writeln!(out, "      {l}")?;
                }
            }
        }
    }
    writeln!(out, "\nHistory:")?;
    let entries = store.journal_entries(Some(project))?;
    for e in entries
        .iter()
        .filter(|e| e.phase != Phase::Intent)
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let at = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms),
        );
        let mark = if e.phase == Phase::Failed {
            "✗"
        } else {
            "✓"
        };
        write!(out, "  {at} {mark} {}", e.step)?;
        if let Some(m) = &e.message {
            write!(out, ": {m}")?;
        }
        writeln!(out)?;
    }
    for e in store
        .interrupted()?
        .iter()
        .filter(|e| e.key.as_ref().is_some_and(|k| k.project == project))
    {
        writeln!(out, "  interrupted: {}", e.step)?;
    }
    Ok(())
}
