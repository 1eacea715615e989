//! The human-readable form of a plan, as `codeb diff` and `apply --dry-run` print it.
//!
//! Never prints an environment variable's value: releases are shown by image and hash.

use std::fmt;

use super::{Action, Note, Plan, Step};
use crate::backend::TlsMode;

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{k}: ")?,
            None => write!(f, "host {}: ", self.host)?,
        }
        match &self.action {
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
            Action::Register(r) => write!(
                f,
                "register (hostname {}, ports {}/{})",
                r.hostname,
                r.base_port,
                r.base_port + 1
            ),
            Action::Deploy {
                slot,
                release,
                container,
                replace,
                ..
            } => {
                write!(
                    f,
                    "deploy {} into {slot} (release {}) on port {}",
                    release.image,
                    release.hash(),
                    container.host_port
                )?;
                if replace.is_some() {
                    write!(f, ", replacing its container")?;
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
                ..
            } => {
                write!(
                    f,
                    "wait until {slot} is healthy (GET {url}, timeout {})",
                    humantime::format_duration(std::time::Duration::from_millis(*timeout_ms))
                )
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
                "hook codeb's service addresses on {} into the kernel's nat OUTPUT",
                h.gateway
            ),
            Action::SetService(w) => match &w.target {
                Some(t) => write!(f, "service address {}:{} → {}", w.gateway, w.port, t.to),
                None => write!(f, "remove service address {}:{}", w.gateway, w.port),
            },
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
            Note::HostMoved { key, from, to } => write!(f, "{key}: recorded on host {from}, manifests say {to}; moving is not supported (delete the project first)"),
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
