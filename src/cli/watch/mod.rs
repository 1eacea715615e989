//! `codeb watch`: the daemon. It wires the triggers to the reconcile loop and answers the CLI.
//!
//! ```text
//!  files (notify, debounced) ─┐
//!  resync timer ──────────────┼─ manifests: reload; keep the last valid ─┐
//!  Podman events (per host) ──┼──────────────────────────────────────────┼─> controller queue
//!  unix socket (CLI commands) ┴─ claims ─────────────────────────────────┘     (reconcile::controller)
//! ```
//!
//! Everything that decides lives in `reconcile::controller` (and the planner); this module only
//! turns the outside world into messages for it: a valid manifest set, a container event, a resync,
//! a command's claim. SIGTERM or SIGINT stops it: no new work, the steps in flight finish and are
//! journaled, exit 0.

mod events;
mod files;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::commands::{self, Ctx, Input};
use super::remote::{self, Request, Response};
use super::{Cli, Command, Failure, WatchArgs};
use crate::backend::caddy::Caddy;
use crate::backend::netfilter::Netfilter;
use crate::backend::podman::Podman;
use crate::backend::powerdns::PowerDns;
use crate::model::{Desired, EnvKey};
use crate::reconcile::controller::{Config, Connectors, Controller, Handle};
use crate::reconcile::HttpProber;
use crate::store::Store;

/// The shortest resync accepted: each one reads every manifest and sweeps every host.
const MIN_RESYNC: Duration = Duration::from_millis(500);

/// How long the daemon waits for CLI commands in flight after the loop stopped, within the 10 s a
/// stop may take (the loop itself gets 8 s).
const SOCKET_GRACE: Duration = Duration::from_millis(1500);

/// What the command functions see of the daemon when they answer a client.
pub struct Daemon {
    pub store: Arc<Store>,
    pub controller: Handle,
    /// The manifests in force (the last valid ones).
    pub watched: watch::Receiver<Arc<Desired>>,
    pub paths: Vec<PathBuf>,
    pub prune: bool,
}

impl Daemon {
    fn dir(&self) -> String {
        let names: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        names.join(", ")
    }

    /// What a person applying `d` through the daemon should know: the watched manifests stay in
    /// force, so what they declare differently is set back at the next resync.
    pub fn apply_notes(&self, d: &Desired) -> Vec<String> {
        let watched = self.watched.borrow().clone();
        let mut differ = Vec::new();
        let mut extra = Vec::new();
        for (key, env) in &d.envs {
            match watched.envs.get(key) {
                Some(w) if w == env => {}
                Some(_) => differ.push(key.to_string()),
                None => extra.push(key.to_string()),
            }
        }
        let mut notes = Vec::new();
        if !differ.is_empty() {
            notes.push(format!(
                "codeb watch keeps {} in force: {} will be set back to it at the next resync",
                self.dir(),
                differ.join(", ")
            ));
        }
        if !extra.is_empty() {
            let fate = if self.prune {
                "codeb watch --prune removes them at the next resync"
            } else {
                "codeb watch leaves them as applied"
            };
            notes.push(format!(
                "{} {} not in {}: {fate}",
                extra.join(", "),
                if extra.len() == 1 { "is" } else { "are" },
                self.dir()
            ));
        }
        notes
    }

    /// A delete through the daemon of an environment that the watched manifests declare would be
    /// undone at once; refused with what to do instead.
    pub fn check_delete(&self, keys: &[EnvKey]) -> anyhow::Result<()> {
        let watched = self.watched.borrow().clone();
        let declared: Vec<String> = keys
            .iter()
            .filter(|k| watched.envs.contains_key(*k))
            .map(|k| k.to_string())
            .collect();
        if declared.is_empty() {
            return Ok(());
        }
        Err(Failure::invalid(format!(
            "{} {} declared in {}, which codeb watch keeps in force: remove it from there (with `codeb watch --prune` the removal follows), or stop codeb watch first",
            declared.join(", "),
            if declared.len() == 1 { "is" } else { "are" },
            self.dir()
        ))
        .into())
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// # Errors
/// Exit 2 when the manifests are invalid at start (nothing is applied: there is no last valid state
/// to keep), 1 when the store is held or the socket cannot be bound.
pub async fn run(state_dir: PathBuf, args: WatchArgs) -> anyhow::Result<u8> {
    if args.paths.iter().any(|p| p.as_os_str() == "-") {
        return Err(Failure::invalid(
            "codeb watch reads files and directories, not standard input",
        )
        .into());
    }
    if args.resync < MIN_RESYNC {
        return Err(Failure::invalid(format!(
            "--resync must be at least {}",
            humantime::format_duration(MIN_RESYNC)
        ))
        .into());
    }
    let store = Arc::new(
        Store::open(&state_dir)
            .with_context(|| format!("opening the store in {}", state_dir.display()))?,
    );
    let guard = files::Guard {
        store: store.clone(),
        prune: args.prune,
        allow_empty: args.allow_empty,
    };
    let desired = match files::load(&args.paths, &guard).await {
        Ok(d) => Arc::new(d),
        Err(e) => return Err(Failure::invalid(e).into()),
    };
    // The journal keeps every interruption ever; the latest tell what was in flight at the stop.
    let interrupted = store.interrupted()?;
    for step in interrupted.iter().rev().take(5) {
        warn!(step = %step.step, at_ms = step.at_ms, "a step was in flight when codeb stopped; the reconciles resume from the records");
    }
    // A Zone whose key variable is unset is invalid input, as for apply: exit 2, nothing applied.
    // A Zone added later without its key fails its own work only (logged, retried).
    super::connect::connect_zones(desired.zones.values())?;
    let connect: Connectors<Podman, Caddy, Netfilter, PowerDns> = Connectors {
        host: Box::new(|host| {
            let mut backends = super::connect::connect([host]).map_err(|e| format!("{e:#}"))?;
            backends
                .hosts
                .remove(&host.name)
                .ok_or_else(|| "no backends".to_string())
        }),
        zone: Box::new(|zone| {
            let mut zones = super::connect::connect_zones([zone]).map_err(|e| format!("{e:#}"))?;
            zones
                .remove(&zone.name)
                .ok_or_else(|| "not managed".to_string())
        }),
    };
    let config = Config::new(args.concurrency.into(), args.prune);
    let controller = Controller::new(
        desired.clone(),
        store.clone(),
        HttpProber::new(),
        connect,
        config,
    )?;
    let handle = controller.handle();
    let shutdown = CancellationToken::new();
    let (watched_tx, watched) = watch::channel(desired.clone());

    let listener = remote::bind(&state_dir)
        .with_context(|| format!("binding {}", state_dir.join(remote::SOCKET).display()))?;
    let daemon = Arc::new(Daemon {
        store: store.clone(),
        controller: handle.clone(),
        watched: watched.clone(),
        paths: args.paths.clone(),
        prune: args.prune,
    });
    let server = tokio::spawn(remote::serve(
        listener,
        move |req| answer(daemon.clone(), req),
        shutdown.clone(),
    ));
    let manifests = tokio::spawn(files::watch(
        files::Watch {
            paths: args.paths.clone(),
            resync: args.resync,
            guard,
        },
        handle.clone(),
        watched_tx,
        shutdown.clone(),
    ));
    let pumps = tokio::spawn(events::run(handle.clone(), watched, shutdown.clone()));
    tokio::spawn(signals(shutdown.clone()));
    info!(
        paths = %args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
        resync_s = args.resync.as_secs_f64(),
        prune = args.prune,
        environments = desired.envs.len(),
        hosts = desired.hosts.len(),
        "codeb watch started"
    );

    controller.run(shutdown.clone()).await;
    let _ = tokio::time::timeout(SOCKET_GRACE, server).await;
    manifests.abort();
    pumps.abort();
    let _ = std::fs::remove_file(state_dir.join(remote::SOCKET));
    info!("codeb watch stopped");
    Ok(0)
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

/// Answers one client: the same command function as without the daemon, on the daemon's store.
async fn answer(daemon: Arc<Daemon>, req: Request) -> Response {
    use clap::Parser;
    let argv = std::iter::once("codeb".to_string()).chain(req.argv);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            return Response {
                stdout: String::new(),
                stderr: e.to_string(),
                code: 2,
            }
        }
    };
    let command = absolute(cli.command, &req.cwd);
    let input = Input { stdin: req.stdin };
    let mut out = Vec::new();
    let mut ctx = Ctx::Daemon(&daemon);
    let result = commands::execute(command, &mut ctx, &input, &mut out).await;
    let (stderr, code) = match result {
        Ok(code) => (String::new(), code),
        Err(e) => (format!("error: {e:#}\n"), super::exit_code(&e)),
    };
    Response {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr,
        code,
    }
}

/// Resolves the client's relative paths against its working directory.
fn absolute(mut command: Command, cwd: &Path) -> Command {
    let fix = |paths: &mut Vec<PathBuf>| {
        for p in paths.iter_mut() {
            if p.as_os_str() != "-" && p.is_relative() {
                *p = cwd.join(&*p);
            }
        }
    };
    match &mut command {
        Command::Apply { files, .. } | Command::Diff { files } => fix(&mut files.paths),
        Command::Delete { paths, .. } => fix(paths),
        _ => {}
    }
    command
}
