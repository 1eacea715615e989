//! The human-readable form of a plan, as `codeb diff` and `apply --dry-run` print it.
//!
//! Never prints an environment variable's value: releases are shown by image and hash.

use std::fmt;

use super::{Action, DnsChange, Note, Plan, Step, SERVER_NAME};
use crate::model::dns::OWNER_PREFIX;
use crate::model::writes::{Rrset, RrsetChange, TlsMode};

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(zone) = self.action.zone() {
            return fmt_zone_step(zone, &self.action, f);
        }
        match &self.key {
            Some(k) => write!(f, "{k}: ")?,
            None => write!(f, "host {}: ", self.host)?,
        }
        match &self.action {
            Action::MarkHost => write!(f, "mark the host as owned by this codeb"),
            Action::EnsureNetwork { name } => write!(
                f,
                "create the Podman network {name} (kernel mode: its gateway holds the service \
                 addresses; the environments are planned once it exists)"
            ),
            Action::EnsureServer(s) => {
                let tls = match s.tls {
                    TlsMode::Auto => "auto",
                    TlsMode::Internal => "internal",
                    TlsMode::Off => "off",
                };
                write!(
                    f,
                    "ensure Caddy server `{}` listening on {} (tls {tls})",
                    s.name,
                    s.listen.join(", ")
                )
            }
            Action::EnsureAccessLog(Some(log)) => write!(
                f,
                "write Caddy's access log of server `{SERVER_NAME}` to {} (JSON, rolled at {} MB, {} kept)",
                log.file, log.roll_size_mb, log.roll_keep
            ),
            Action::EnsureAccessLog(None) => {
                write!(f, "remove codeb's Caddy access log")
            }
            Action::Register(r) => write!(
                f,
                "register (hostname {}, ports {}/{})",
                r.hostname,
                r.base_port,
                r.base_port + 1
            ),
            Action::Adopt(a) => {
                let r = &a.record;
                write!(f, "adopt what the host holds by codeb's marks:")?;
                let mut any = false;
                for slot in crate::model::Slot::ALL {
                    let sr = r.slot(slot);
                    if let Some(release) = &sr.release {
                        let sep = if any { "," } else { "" };
                        write!(
                            f,
                            "{sep} {slot} {} {} (release {})",
                            sr.state,
                            release.image,
                            release.hash()
                        )?;
                        any = true;
                    }
                }
                if !any {
                    write!(f, " no container")?;
                }
                let n = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
                write!(
                    f,
                    "; ports {}/{}, hostname {}; {}, {}, {}",
                    r.base_port,
                    r.base_port + 1,
                    r.hostname,
                    n(a.routes, "route"),
                    n(a.rules, "kernel rule"),
                    n(a.records, "DNS record"),
                )
            }
            Action::Deploy {
                slot,
                release,
                container,
                replace,
                aside,
                ..
            } => {
                write!(
                    f,
                    "deploy {} into {slot} (release {}) on port {}",
                    release.image,
                    release.hash(),
                    container.host_port
                )?;
                match (replace, aside) {
                    (Some(_), Some(name)) => {
                        write!(f, ", beside its container (renamed {name}, removed after)")?
                    }
                    (Some(_), None) => write!(f, ", replacing its container")?,
                    _ => {}
                }
                Ok(())
            }
            Action::Recreate {
                slot, container, ..
            } => write!(
                f,
                "recreate {slot}'s missing or drifted container {}",
                container.name
            ),
            Action::Start { slot, .. } => write!(f, "start {slot}'s stopped container"),
            Action::Stop { slot, .. } => {
                write!(f, "stop failed {slot}'s container (kept for inspection)")
            }
            Action::AwaitHealthy {
                slot,
                url,
                timeout_ms,
                direct,
                ..
            } => {
                let timeout =
                    humantime::format_duration(std::time::Duration::from_millis(*timeout_ms));
                match direct {
                    None => write!(f, "wait until {slot} is healthy (GET {url}, timeout {timeout})"),
                    Some(d) => write!(
                        f,
                        "wait until {slot} is healthy (GET its container's address, port {}{}, timeout {timeout})",
                        d.port, d.path
                    ),
                }
            }
            Action::Switch { to, from, hold, .. } => {
                let verb = if hold.is_some() {
                    "roll back"
                } else {
                    "promote"
                };
                write!(f, "{verb}: switch traffic to {to}")?;
                if let Some(from) = from {
                    write!(f, " ({from} goes to grace)")?;
                }
                Ok(())
            }
            Action::HookServices(h) => write!(
                f,
                "hook codeb's addresses on {} into the kernel's nat output",
                h.gateway
            ),
            Action::Isolate => write!(
                f,
                "isolate codeb's containers from each other (nf_tables table bridge codeb)"
            ),
            Action::PinMac { bridge } => write!(
                f,
                "pin {bridge}'s MAC address (a container joining or leaving would change the gateway's MAC under the others' ARP caches)"
            ),
            Action::LoopbackOff { bridge } => write!(
                f,
                "turn route_localnet off on {bridge} (no slot port is published on loopback)"
            ),
            Action::Loopback(w) => write!(
                f,
                "let loopback connections reach containers on {} (masquerade, guard, route_localnet, pinned bridge MAC)",
                w.bridge
            ),
            Action::SetService(w) => {
                // A loopback address is a slot's published port; any other a service address.
                let what = if w.gateway.is_loopback() {
                    "published port"
                } else {
                    "service address"
                };
                match &w.target {
                    Some(t) => write!(f, "{what} {}:{} → {}", w.gateway, w.port, t.to),
                    None => write!(f, "remove {what} {}:{}", w.gateway, w.port),
                }
            }
            Action::AddRoute(r) => write!(
                f,
                "add route {} {} → {}",
                r.id,
                r.hosts.join(","),
                r.upstream
            ),
            Action::ReplaceRoute(r) => write!(
                f,
                "update route {} {} → {}",
                r.id,
                r.hosts.join(","),
                r.upstream
            ),
            Action::DeleteRoute { id } => write!(f, "delete route {id}"),
            Action::Retire { slot, drain, .. } => {
                write!(f, "retire {slot} (remove its container")?;
                if drain.is_some() {
                    write!(f, " once its requests in flight finish")?;
                }
                write!(f, ")")
            }
            Action::RemoveContainer { name, .. } => write!(f, "remove container {name}"),
            Action::Forget => write!(f, "forget its record"),
            Action::MigrateBegin { record, forward } => fmt_migration(record, forward, f),
            Action::MigrateForward { route, .. } => write!(
                f,
                "migration: forward {} on this host to {} (the target's Caddy)",
                route.hosts.join(", "),
                route.upstream
            ),
            Action::MigratePhase(phase) => write!(f, "migration: record phase {phase}"),
            Action::MigrateGrace { container } => {
                write!(f, "migration: begin the grace period on this host")?;
                if container.is_some() {
                    write!(f, " (stop the serving container, kept for a rollback)")?;
                }
                Ok(())
            }
            Action::MigrateFinish => write!(f, "migration: done, forget the source's record"),
            Action::MigrateRollback(r) => write!(
                f,
                "migration: roll back to host {} (its kept slot started and health-gated, then \
                 its route serves locally; host {} forwards to it until its DNS moves back and \
                 its grace period ends)",
                r.host,
                r.migration.as_ref().map_or("?", |m| m.source.host.as_str())
            ),
            Action::ClearRolledBack => write!(
                f,
                "forget the rollback mark (the manifests name another host now)"
            ),
            Action::MigrateAbort(r) => write!(
                f,
                "migration: abort, the environment stays on host {} (ports {}/{})",
                r.host,
                r.base_port,
                r.base_port + 1
            ),
            Action::EnsureZone { .. } | Action::DnsPatch { .. } => {
                unreachable!("zone steps are written by fmt_zone_step")
            }
        }
    }
}

/// The start of a migration, with every phase it goes through.
fn fmt_migration(
    record: &crate::model::EnvRecord,
    forward: &str,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    let Some(m) = record.migration.as_deref() else {
        return write!(f, "migrate (no migration recorded)");
    };
    let (from, to) = (&m.source.host, &record.host);
    let release = match m.release() {
        Some(r) => format!("release {} ({}, serving on {from})", r.hash(), r.image),
        None => "the manifests' release".to_string(),
    };
    let grace = super::fields::duration(std::time::Duration::from_millis(m.grace_ms));
    write!(
        f,
        "migrate from host {from} to host {to}, in phases (each recorded before it acts):"
    )?;
    write!(
        f,
        "\n      1. deploy {release} on {to} (ports {}/{}) and health-check it there",
        record.base_port,
        record.base_port + 1
    )?;
    write!(
        f,
        "\n      2. {from}'s route for {} forwards to {to}'s Caddy at {forward}",
        record.hostname
    )?;
    write!(
        f,
        "\n      3. DNS records of {} name {to}'s address (managed zones: TTL at most {} s from \
         the start until the grace period)",
        record.hostname,
        super::migrate::MIGRATION_TTL
    )?;
    write!(
        f,
        "\n      4. grace on {from} for {grace}: it keeps the forwarding route and its serving \
         container, stopped"
    )?;
    write!(
        f,
        "\n      5. then {from}'s routes, kernel rules and containers of it are removed"
    )
}

/// A zone's step: `zone codeb.kr: change 3 rrsets in one PATCH`, then one line per change.
fn fmt_zone_step(zone: &str, action: &Action, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "zone {zone}: ")?;
    match action {
        Action::EnsureZone { api, .. } => {
            write!(
                f,
                "create the zone (Native, default SOA) in PowerDNS at {api}"
            )
        }
        Action::DnsPatch { changes, .. } => {
            let n = changes.len();
            let s = if n == 1 { "" } else { "s" };
            write!(f, "change {n} rrset{s} in one PATCH")?;
            for c in changes {
                write!(f, "\n      {}", DnsLine(c))?;
            }
            Ok(())
        }
        _ => unreachable!("not a zone step"),
    }
}

/// One rrset change on a line: `+ A hello.codeb.kr 127.0.0.1 ttl 300 (hello/production)`.
struct DnsLine<'a>(&'a DnsChange);

impl fmt::Display for DnsLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = |r: &Rrset| {
            r.mark
                .as_deref()
                .and_then(|m| m.strip_prefix(OWNER_PREFIX))
                .unwrap_or("unmarked")
                .to_string()
        };
        let shown = |r: &Rrset| format!("{} ttl {}", r.records.join(" "), r.ttl);
        match (&self.0.change, &self.0.was) {
            (RrsetChange::Replace(r), None) => write!(
                f,
                "+ {} {} {} ({})",
                r.rtype,
                r.name.trim_end_matches('.'),
                shown(r),
                owner(r)
            ),
            (RrsetChange::Replace(r), Some(was)) => write!(
                f,
                "~ {} {} {} ({}), was {} ({})",
                r.rtype,
                r.name.trim_end_matches('.'),
                shown(r),
                owner(r),
                shown(was),
                owner(was)
            ),
            (RrsetChange::Delete { name, rtype }, was) => {
                write!(f, "- {rtype} {}", name.trim_end_matches('.'))?;
                if let Some(was) = was {
                    write!(f, " {} ({})", shown(was), owner(was))?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::AwaitingPromotion { key, slot, preview } => {
                write!(f, "{key}: {slot} is deployed on {preview}; run `codeb promote {} --env {}` to switch", key.project, key.env)
            }
            Note::Failed { key, slot, hash } => {
                write!(f, "{key}: release {hash} failed its health check in {slot}; change the release to retry (`codeb describe project {}`)", key.project)
            }
            Note::Held { key, hash } => write!(f, "{key}: release {hash} was rolled back; it is not promoted again until the manifests name another release"),
            Note::Unreachable { host, error } => write!(f, "host {host}: {error}"),
            Note::NoPorts { key } => write!(f, "{key}: no free port pair left in its range"),
            Note::ZoneUnreachable { zone, error } => write!(f, "zone {zone}: {error}; its DNS records were not planned"),
            Note::DnsConflict { key, zone, name, holder } => write!(f, "{key}: {name} already holds {holder} in Zone {zone}; codeb leaves it as it is and writes none of {key}'s DNS records (choose another hostname, or remove that record)"),
            Note::NoZone { key, hostname } => write!(f, "{key}: {hostname} is in no declared Zone; codeb writes no DNS record for it"),
            Note::Unrecorded { keys } => {
                let names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
                write!(f, "{} {} not recorded in this state directory: removed as found on the hosts by codeb's marks (their DNS records, if any, are left)", names.join(", "), if keys.len() == 1 { "was" } else { "were" })
            }
            Note::Undeclared { host, keys } => {
                let names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
                let projects: std::collections::BTreeSet<&str> = keys.iter().map(|k| k.project.as_str()).collect();
                let projects: Vec<&str> = projects.into_iter().collect();
                write!(f, "{} {} held on host {host} by codeb's marks, in no manifest and not recorded in this state directory: left as {}; `codeb delete project {}` or `codeb apply --prune --prune-project {}` removes {}", names.join(", "), if keys.len() == 1 { "is" } else { "are" }, if keys.len() == 1 { "it is" } else { "they are" }, projects.join("`, `codeb delete project "), projects.join(" --prune-project "), if keys.len() == 1 { "it" } else { "them" })
            }
            Note::HostMoved { key, from, to, reason } => write!(f, "{key}: recorded on host {from}, manifests say {to}; not moved: {reason}"),
            Note::RolledBack {
                key,
                to,
                from,
                by,
                at_ms,
            } => {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(*at_ms);
                write!(f, "{key}: rolled back to host {to} from host {from} by {by} at {}; the manifests' `host: {from}` is not acted on: change `host:` in the manifests ({to} to keep it there, then another host to migrate again)", humantime::format_rfc3339_seconds(at))
            }
            Note::MigrationGrace { key, from, until_ms } => {
                let until = std::time::UNIX_EPOCH + std::time::Duration::from_millis(*until_ms);
                write!(f, "{key}: migrated from host {from}, which keeps a forwarding route and a stopped slot until {} (then it is cleaned up)", humantime::format_rfc3339_seconds(until))
            }
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            writeln!(f, "  {step}")?;
        }
        for note in &self.notes {
            let mark = if note.is_problem() { "!" } else { "·" };
            writeln!(f, "{mark} {note}")?;
        }
        Ok(())
    }
}
