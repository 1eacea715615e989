//! The daemon of `codeb watch` and `codeb serve`: it owns the store, the reconcile loop, the
//! triggers that feed it and the listeners that answer requests.
//!
//! ```text
//!  files (notify, debounced) ─┐
//!  resync timer ──────────────┼─ manifests: reload; keep the last valid ─┐
//!  Podman events (per host) ──┼──────────────────────────────────────────┼─> controller queue
//!  unix socket (the CLI) ─────┼─ service requests: claims ───────────────┘     (reconcile::controller)
//!  MCP socket (codeb mcp) ────┤
//!  HTTP (codeb serve) ────────┘
//! ```
//!
//! Everything that decides lives in `reconcile::controller` (and the planner); every request is
//! answered by `service`. This module only turns the outside world into messages for them: a valid
//! manifest set, a container event, a resync, a request. SIGTERM or SIGINT stops it: no new work,
//! the steps and requests in flight finish and are journaled, exit 0.

mod events;
mod files;
pub mod publish;
mod ruleset;
pub mod schedule;
pub mod socket;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Caller;
use crate::backend::caddy::Caddy;
use crate::backend::netfilter::HostKernel;
use crate::backend::podman::Podman;
use crate::backend::powerdns::PowerDns;
use crate::reconcile::controller::{Connectors, Controller};
use crate::reconcile::HttpProber;
use crate::service::{self, Ctx, Daemon, Error};
use crate::store::Store;

/// The shortest resync accepted: each one reads every manifest and sweeps every host.
const MIN_RESYNC: Duration = Duration::from_millis(500);

/// How long the daemon waits for requests in flight (the socket's and the API's) after the loop
/// stopped, within the 10 s a stop may take: a request's own steps are not the loop's, so a deploy
/// waiting on a health check gets this long to finish and answer.
const REQUEST_GRACE: Duration = Duration::from_secs(9);

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The operator's configuration: the endpoints and key variables manifests may name.
    pub operator: Arc<crate::config::Config>,
    pub state_dir: PathBuf,
    /// Manifest directories or files, watched.
    pub paths: Vec<PathBuf>,
    pub resync: Duration,
    pub prune: bool,
    pub allow_empty: bool,
    /// Reconciles at once.
    pub concurrency: usize,
    /// Where `codeb serve` answers HTTP (loopback only); `None` for `codeb watch`.
    pub listen: Option<std::net::SocketAddr>,
    pub rate: crate::api::RateLimit,
    /// Publish the API through a Host's Caddy on this hostname (`codeb serve --publish`).
    pub publish: Option<publish::Publish>,
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// # Errors
/// `Invalid` (exit 2) when the manifests are invalid at start (nothing is applied: there is no last
/// valid state to keep), `Failed` (exit 1) when the store is held or the socket cannot be bound.
pub async fn run(args: Config) -> Result<(), Error> {
    let state_dir = args.state_dir.clone();
    if args.paths.iter().any(|p| p.as_os_str() == "-") {
        return Err(Error::invalid(
            "codeb watch reads files and directories, not standard input",
        ));
    }
    if args.resync < MIN_RESYNC {
        return Err(Error::invalid(format!(
            "--resync must be at least {}",
            humantime::format_duration(MIN_RESYNC)
        )));
    }
    let http = match args.listen {
        None => None,
        Some(addr) => {
            crate::api::check_listen(addr).map_err(Error::invalid)?;
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| Error::failed(format!("cannot listen on {addr}: {e}")))?,
            )
        }
    };
    let what = if args.listen.is_some() {
        "codeb serve"
    } else {
        "codeb watch"
    };
    let store = Arc::new(Store::open_daemon(&state_dir, what).map_err(|e| {
        let message = format!(
            "opening the store in {}: {}",
            state_dir.display(),
            crate::backend::error_chain(&e)
        );
        if e.is_refused_dir() {
            Error::invalid(message)
        } else {
            Error::failed(message)
        }
    })?);
    // What the loop rolls out from the watched manifests is the daemon's in the release history;
    // a request's rollout is its caller's.
    store.set_default_actor(if args.listen.is_some() {
        "codeb serve"
    } else {
        "codeb watch"
    });
    // The guard is the one gate of the daemon's manifests: the Hosts that the event pumps and
    // `--publish` connect to come from manifests it passed, so the operator's configuration
    // allowed their endpoints (the loop's connectors and the service check again).
    let guard = files::Guard {
        store: store.clone(),
        prune: args.prune,
        allow_empty: args.allow_empty,
        operator: args.operator.clone(),
    };
    let loaded = match files::load(&args.paths, &guard).await {
        Ok(d) => Arc::new(d),
        Err(e) => return Err(Error::invalid(e)),
    };
    let published_on = match (&args.publish, args.listen) {
        (Some(p), Some(_)) => Some(publish::check(p, &loaded)?),
        (Some(_), None) => {
            return Err(Error::invalid("--publish needs the HTTP API (codeb serve)"))
        }
        _ => None,
    };
    store.put_declared(loaded.envs.values())?;
    let desired = Arc::new(service::effective(&store, &loaded, false)?);
    // The journal keeps every interruption ever; the latest tell what was in flight at the stop.
    let interrupted = store.interrupted()?;
    for step in interrupted.iter().rev().take(5) {
        warn!(step = %step.step, at_ms = step.at_ms, "a step was in flight when codeb stopped; the reconciles resume from the records");
    }
    // A Zone whose key variable is unset, or a Zone or Host the operator's configuration does not
    // allow, is invalid input, as for apply: exit 2, nothing applied. One added later fails its
    // own work only (logged, retried), and is never connected to.
    let operator = args.operator.clone();
    crate::reconcile::connect::connect_zones(desired.zones.values(), &operator)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let (for_hosts, for_zones) = (operator.clone(), operator.clone());
    let owner =
        crate::reconcile::connect::owner(&store).map_err(|e| Error::invalid(e.to_string()))?;
    let relay_dir = store.dir().to_path_buf();
    let connect: Connectors<Podman, Caddy, HostKernel, PowerDns> = Connectors {
        host: Box::new(move |host| {
            let mut backends =
                crate::reconcile::connect::connect([host], &for_hosts, &owner, &relay_dir)
                    .map_err(|e| e.to_string())?;
            backends
                .hosts
                .remove(&host.name)
                .and_then(std::sync::Arc::into_inner)
                .ok_or_else(|| "no backends".to_string())
        }),
        zone: Box::new(move |zone| {
            let mut zones = crate::reconcile::connect::connect_zones([zone], &for_zones)
                .map_err(|e| e.to_string())?;
            zones
                .remove(&zone.name)
                .ok_or_else(|| "not managed".to_string())
        }),
    };
    let config = crate::reconcile::controller::Config::new(args.concurrency, args.prune);
    let controller = Controller::new(
        desired.clone(),
        store.clone(),
        HttpProber::new(),
        connect,
        config,
    )
    .map_err(|e| Error::failed(crate::backend::error_chain(&e)))?;
    let handle = controller.handle();
    let shutdown = CancellationToken::new();
    let (watched_tx, watched) = watch::channel(loaded.clone());

    let listener = socket::bind(&state_dir).map_err(|e| {
        Error::failed(format!(
            "binding {}: {e}",
            state_dir.join(socket::SOCKET).display()
        ))
    })?;
    let daemon = Arc::new(Daemon {
        controller: handle.clone(),
        watched: watched.clone(),
        paths: args.paths.clone(),
        prune: args.prune,
        clients: Default::default(),
        warm: Default::default(),
    });
    let ctx = Ctx {
        daemon: Some(daemon.clone()),
        ..Ctx::local(store.clone(), Caller::internal(), operator.clone())
    };
    let health = health_source(handle.clone(), watched.clone(), args.resync);
    let mcp_listener = crate::mcp::socket::bind(&state_dir).map_err(|e| {
        Error::failed(format!(
            "binding {}: {e}",
            state_dir.join(crate::mcp::socket::SOCKET).display()
        ))
    })?;
    let mcp = tokio::spawn(crate::mcp::socket::serve(
        mcp_listener,
        ctx.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let api = http.map(|listener| {
        let published = args.publish.as_ref().map(|p| p.hostname.as_str());
        let api = crate::api::Api::new(ctx.clone(), args.rate, health.clone(), published);
        tokio::spawn(forget_quiet_clients(api.limits.clone(), shutdown.clone()));
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "codeb serve answers HTTP");
            if let (Some(p), Some(host)) = (args.publish.clone(), published_on.clone()) {
                tokio::spawn(publish::keep(
                    p,
                    host,
                    addr,
                    handle.clone(),
                    watched.clone(),
                    args.resync,
                    shutdown.clone(),
                ));
            }
        }
        tokio::spawn(crate::api::serve(
            listener,
            crate::api::router(api),
            shutdown.clone(),
        ))
    });
    if published_on.is_none() {
        tokio::spawn(publish::unpublish(handle.clone(), loaded.clone()));
    }
    let server = tokio::spawn(socket::serve_streaming(
        listener,
        move |req, uid, progress| {
            let ctx = Ctx {
                caller: Caller::cli(uid),
                progress,
                ..ctx.clone()
            };
            async move { service::call(&ctx, req).await }
        },
        shutdown.clone(),
    ));
    let manifests = tokio::spawn(files::watch(
        files::Watch {
            paths: args.paths.clone(),
            resync: args.resync,
            guard,
        },
        daemon.clone(),
        watched_tx,
        shutdown.clone(),
    ));
    tokio::spawn(ruleset::run(
        handle.clone(),
        watched.clone(),
        shutdown.clone(),
    ));
    let pumps = tokio::spawn(events::run(
        handle.clone(),
        watched,
        state_dir.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(schedule::run(
        store.clone(),
        args.operator.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(signals(shutdown.clone()));
    info!(
        paths = %args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
        resync_s = args.resync.as_secs_f64(),
        prune = args.prune,
        environments = desired.envs.len(),
        hosts = desired.hosts.len(),
        "codeb watch started"
    );

    let stopped = tokio::time::Instant::now();
    controller.run(shutdown.clone()).await;
    let deadline = stopped + REQUEST_GRACE;
    let _ = tokio::time::timeout_at(deadline, server).await;
    if let Some(api) = api {
        let _ = tokio::time::timeout_at(deadline, api).await;
    }
    let _ = tokio::time::timeout_at(deadline, mcp).await;
    manifests.abort();
    pumps.abort();
    let _ = std::fs::remove_file(state_dir.join(socket::SOCKET));
    let _ = std::fs::remove_file(state_dir.join(crate::mcp::socket::SOCKET));
    info!("codeb watch stopped");
    Ok(())
}

/// Drops the rate limiters' memory of clients that have been quiet, once a minute.
async fn forget_quiet_clients(limits: crate::api::auth::SharedLimits, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => limits.forget_quiet(),
        }
    }
}

/// What `GET /health` reports: per host and zone of the manifests in force, whether the loop
/// observed it within the last resync; not ok once one has failed for longer than two resyncs.
fn health_source(
    handle: crate::reconcile::controller::Handle,
    watched: watch::Receiver<Arc<crate::model::Desired>>,
    resync: Duration,
) -> crate::api::HealthSource {
    let health = handle.health();
    let resync_ms = u64::try_from(resync.as_millis()).unwrap_or(u64::MAX);
    Arc::new(move || {
        let now = crate::reconcile::now_ms();
        let snapshot = health.snapshot();
        let desired = watched.borrow().clone();
        let target = |kind: &str, name: &str, seen: Option<&crate::reconcile::health::Seen>| {
            crate::api::TargetHealth {
                kind: kind.to_string(),
                name: name.to_string(),
                // A resync's sweep may finish a little after the resync itself: one extra second.
                observed: seen
                    .and_then(|s| s.last_ok_ms)
                    .is_some_and(|t| now.saturating_sub(t) <= resync_ms + 1000),
                last_ok_ms: seen.and_then(|s| s.last_ok_ms),
                failing_since_ms: seen.and_then(|s| s.failing_since_ms),
                error: seen.and_then(|s| s.last_error.clone()),
            }
        };
        let hosts = desired
            .hosts
            .keys()
            .map(|h| target("host", h, snapshot.hosts.get(h)));
        let zones = desired
            .zones
            .values()
            .filter(|z| z.is_managed())
            .map(|z| target("zone", &z.name, snapshot.zones.get(&z.name)));
        crate::api::HealthView {
            ok: !snapshot.any_failing_longer_than(now, resync_ms.saturating_mul(2)),
            version: env!("CARGO_PKG_VERSION").to_string(),
            targets: hosts.chain(zones).collect(),
        }
    })
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop codeb watch with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
    shutdown.cancel();
    // A second signal means "now": the journal covers a stop at any point.
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    warn!("second signal: exiting at once");
    std::process::exit(1);
}
