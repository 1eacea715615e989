//! `get hosts`: per host, what the store records (its endpoints, its switch mode, its
//! environments) and what the host answers now: whether it is reachable (`Unknown` with since
//! when and the last error when not), the round trip of its connection, its Podman and Caddy
//! versions.
//!
//! Where it comes from. Inside `codeb watch`/`serve`, reachability is the loop's own (the health
//! registry its reconciles record into: since when a host fails and why); a host the loop sees
//! failing is not asked again here, so `get hosts` never waits on a partitioned host. A host it
//! sees answering, and every host outside a daemon (a one-shot `codeb get hosts`), is asked now,
//! all hosts at once, each bounded by [`PROBE_TIMEOUT`]: outside a daemon an unreachable host is
//! `Unknown` since this check (nothing is kept between one-shot commands, and nothing of it is
//! written to the store: a no-op must stay writeless).
//!
//! The round trip is measured on the connection codeb keeps: for a remote Host, the agent's own
//! `ping` over the kept ssh session (opened first when it was not: the key exchange is not
//! counted); for a local Host, Podman's `_ping` on its socket.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::view::HostRow;
use super::Ctx;
use crate::agent::Target;
use crate::backend::{Proxy, Runtime};
use crate::model::HostRef;
use crate::reconcile::health::Seen;

/// The longest `get hosts` waits for one host (they are asked at once): ssh's `ConnectTimeout`
/// (5 s) and a little.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// What a host answered now.
#[derive(Debug, Default)]
struct Answer {
    error: Option<String>,
    rtt_us: Option<u64>,
    podman: Option<String>,
    caddy: Option<String>,
}

/// Fills in each row's live columns.
pub async fn fill(ctx: &Ctx, hosts: &[&HostRef], rows: &mut [HostRow]) {
    let seen = ctx
        .daemon
        .as_ref()
        .map(|d| d.controller.health().snapshot().hosts);
    let now = crate::reconcile::now_ms();
    let answers = join_all(hosts.iter().map(|h| {
        let seen: Option<Seen> = seen.as_ref().and_then(|s| s.get(&h.name).cloned());
        async move {
            // The loop sees it failing: say so, without waiting on it again.
            if seen.as_ref().is_some_and(|s| s.failing_since_ms.is_some()) {
                return (seen.clone(), None);
            }
            let answer = tokio::time::timeout(PROBE_TIMEOUT, ask(ctx, h))
                .await
                .unwrap_or_else(|_| Answer {
                    error: Some(format!(
                        "host {}: no answer within {PROBE_TIMEOUT:?}",
                        h.name
                    )),
                    ..Answer::default()
                });
            (seen, Some(answer))
        }
    }))
    .await;
    for (row, (seen, answer)) in rows.iter_mut().zip(answers) {
        match (seen, answer) {
            (Some(s), None) => {
                row.reachable = "Unknown".into();
                row.unknown_since_ms = s.failing_since_ms;
                row.last_error = s.last_error;
            }
            (seen, Some(a)) => {
                row.rtt_us = a.rtt_us;
                row.podman_version = a.podman;
                row.caddy_version = a.caddy;
                match a.error {
                    None => row.reachable = "yes".into(),
                    Some(e) => {
                        row.reachable = "Unknown".into();
                        row.unknown_since_ms =
                            Some(seen.and_then(|s| s.failing_since_ms).unwrap_or(now));
                        row.last_error = Some(e);
                    }
                }
            }
            (None, None) => {}
        }
    }
}

/// Asks one host: its connection's round trip, Podman's version, a read of Caddy's config,
/// Caddy's version. Reachable when the first three answer (as an observation needs them).
async fn ask(ctx: &Ctx, h: &HostRef) -> Answer {
    let fail = |e: String| Answer {
        error: Some(e),
        ..Answer::default()
    };
    let clients = match ctx.host_clients(h) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let Some(b) = clients.hosts.get(&h.name) else {
        return fail(format!("host {}: not connected", h.name));
    };
    let mut answer = Answer::default();
    match crate::reconcile::connect::session(h, ctx.store.dir()) {
        Some(session) => {
            let ping = || session.request(Target::Agent, "GET", "/ping", None);
            if !session.connected().await {
                // Opens the session: the key exchange is no round trip of the kept connection.
                if let Err(e) = ping().await {
                    return fail(e.to_string());
                }
            }
            let t0 = Instant::now();
            if let Err(e) = ping().await {
                return fail(e.to_string());
            }
            answer.rtt_us = Some(t0.elapsed().as_micros().max(1) as u64);
            answer.caddy = session
                .request(Target::Agent, "GET", "/caddy-version", None)
                .await
                .ok()
                .map(|(_, v)| v);
        }
        None => {
            // The first ping builds the client; the second is the round trip.
            if let Err(e) = b.runtime.ping().await {
                return fail(format!("host {}: Podman: {e}", h.name));
            }
            let t0 = Instant::now();
            if let Err(e) = b.runtime.ping().await {
                return fail(format!("host {}: Podman: {e}", h.name));
            }
            answer.rtt_us = Some(t0.elapsed().as_micros().max(1) as u64);
            answer.caddy = tokio::task::spawn_blocking(crate::agent::caddy_version)
                .await
                .ok()
                .and_then(Result::ok);
        }
    }
    let (podman, caddy) = tokio::join!(
        b.runtime.version(),
        b.proxy.observe(crate::plan::SERVER_NAME)
    );
    match podman {
        Ok(v) => answer.podman = Some(v),
        Err(e) => answer.error = Some(format!("host {}: Podman: {e}", h.name)),
    }
    if let Err(e) = caddy {
        answer
            .error
            .get_or_insert(format!("host {}: Caddy: {e}", h.name));
    }
    answer
}

/// `1.2ms`, `-` when not measured.
pub fn rtt_text(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 10_000 => format!("{:.1}ms", us as f64 / 1000.0),
        Some(us) => format!("{}ms", us / 1000),
    }
}
