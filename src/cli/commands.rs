//! From a parsed command line to a `service` request, its answer and its rendering.
//!
//! The CLI reads the manifest files a command names (they travel as texts, so the daemon never
//! opens a path a client names) and validates them here first, so that a typo is reported with
//! file:line:column before any store or daemon is involved. It then runs the request on the store
//! in this process, or, when `codeb watch`/`serve` holds the store, sends it over the daemon's
//! socket. Either way the same service answers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{default_state_dir, output, progress, Cli, Command, Failure, Format, NO_STATE_DIR};
use crate::auth::Caller;
use crate::daemon::{self, socket};
use crate::reconcile;
use crate::service::{self, Ctx, GetWhat, Request};
use crate::spec::Source;
use crate::store::Store;

/// Runs the command line: here, or, when a daemon holds the store, in the daemon.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    // Commands about codeb itself need no store.
    match &cli.command {
        Command::Version { output } => {
            let state_dir = cli.state_dir.clone().or_else(default_state_dir);
            return version(state_dir.as_deref(), output.output).await;
        }
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "codeb", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Agent {
            podman_socket,
            caddy_admin,
            ..
        } => {
            let endpoints = crate::agent::Endpoints {
                podman_socket: podman_socket.clone(),
                caddy_admin: caddy_admin.clone(),
            };
            // Blocking stdin/stdout I/O, one request at a time: off the runtime's workers.
            return Ok(
                tokio::task::spawn_blocking(move || crate::agent::run_stdio(&endpoints)).await?,
            );
        }
        _ => {}
    }
    if let Command::Mcp {
        server: Some(url), ..
    } = &cli.command
    {
        let key = std::env::var(API_KEY_VAR).map_err(|_| {
            Failure::invalid(format!(
                "codeb mcp --server needs an API key in {API_KEY_VAR} (see codeb key create)"
            ))
        })?;
        crate::mcp::socket::stdio_to_http(url, key.trim()).await?;
        return Ok(0);
    }
    let state_dir = cli
        .state_dir
        .clone()
        .or_else(default_state_dir)
        .ok_or_else(|| Failure::invalid(NO_STATE_DIR))?;
    if let Command::Mcp { server: None } = &cli.command {
        return match crate::mcp::socket::stdio_to_socket(&state_dir).await {
            Ok(()) => Ok(0),
            Err(e @ crate::mcp::socket::Error::NoDaemon { .. }) => {
                Err(Failure::unconverged(e.to_string()).into())
            }
            Err(e) => Err(e.into()),
        };
    }
    let (args, listen, rate, publish) = match cli.command {
        Command::Watch(args) => (args, None, crate::api::RateLimit::default(), None),
        Command::Serve(s) => (
            s.watch,
            Some(s.listen),
            crate::api::RateLimit {
                per_second: s.rate_limit,
                burst: s.rate_burst,
            },
            s.publish.map(|hostname| daemon::publish::Publish {
                hostname,
                host: s.publish_on,
            }),
        ),
        command => {
            let shown = progress::Style {
                choice: cli.progress,
                json: matches!(cli.log_format, super::LogFormat::Json),
            };
            return client(&state_dir, cli.config.as_deref(), command, shown).await;
        }
    };
    let operator = operator_config(cli.config.as_deref(), &state_dir)?;
    daemon::run(daemon::Config {
        operator,
        state_dir,
        paths: args.paths,
        resync: args.resync,
        prune: args.prune,
        allow_empty: args.allow_empty,
        concurrency: args.concurrency.into(),
        listen,
        rate,
        publish,
    })
    .await
    .map_err(Failure::from)?;
    Ok(0)
}

/// Where `codeb mcp --server` finds its API key (never on the command line, where `ps` shows it).
const API_KEY_VAR: &str = "CODEB_API_KEY";

/// This build of codeb, and the daemon's when one answers on the state directory's socket.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionsView {
    #[serde(flatten)]
    client: service::view::VersionView,
    #[serde(skip_serializing_if = "Option::is_none")]
    daemon: Option<service::view::VersionView>,
}

async fn version(state_dir: Option<&Path>, format: Format) -> anyhow::Result<u8> {
    let client = service::view::VersionView::this_build();
    // A daemon that answers at once names its build; none, or one that does not know the
    // request (an older codeb), is left out.
    let daemon = match state_dir {
        Some(dir) => tokio::time::timeout(
            std::time::Duration::from_secs(2),
            socket::forward(dir, &Request::Version),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(Result::ok)
        .and_then(|r| match r {
            service::Response::Version(v) => Some(v),
            _ => None,
        }),
        None => None,
    };
    let v = VersionsView { client, daemon };
    let text = match format {
        Format::Table => {
            let line = |who: &str, v: &service::view::VersionView| {
                format!(
                    "{who}codeb {} (commit {}, {})\n",
                    v.version, v.commit, v.commit_date
                )
            };
            let mut text = line("", &v.client);
            if let Some(d) = &v.daemon {
                text.push_str(&line("daemon: ", d));
            }
            text
        }
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&v)?),
        Format::Yaml => serde_saphyr::to_string(&v)?,
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(0)
}

/// The operator's configuration (`--config`, `CODEB_CONFIG`, or the state directory's); one
/// that cannot be used is invalid input (exit 2).
fn operator_config(
    explicit: Option<&Path>,
    state_dir: &Path,
) -> anyhow::Result<Arc<crate::config::Config>> {
    crate::config::Config::load(explicit, state_dir)
        .map(Arc::new)
        .map_err(|e| Failure::invalid(crate::backend::error_chain(&e)).into())
}

/// Runs a one-shot command: a request, its answer, its rendering; its progress events rendered
/// while it runs (`cli::progress`).
async fn client(
    state_dir: &Path,
    config: Option<&Path>,
    command: Command,
    shown: progress::Style,
) -> anyhow::Result<u8> {
    let backup_to = match &command {
        Command::Env(super::EnvCommand::Backup { to, .. }) => Some(to.clone()),
        _ => None,
    };
    let named = match &command {
        Command::Get {
            name: Some(name), ..
        } => Some(name.clone()),
        _ => None,
    };
    let mut loaded = None;
    let (request, format) = request(command, &mut loaded)?;
    let follow = matches!(request, Request::Logs { follow: true, .. });
    let (sink, events) = reconcile::Progress::channel();
    let renderer = tokio::spawn(progress::render(events, shown, format));
    let answer = call(state_dir, config, request, sink, loaded);
    let answer = if follow {
        // Ctrl-C ends a follow quietly; it is not an error.
        tokio::select! {
            answer = answer => answer,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    } else {
        answer.await
    };
    // Every sender is gone with the request: the renderer ends once it printed the last event.
    let end = renderer.await.unwrap_or(progress::End::Drained);
    if follow {
        // The lines went out as they came. A closed pipe ends a follow quietly, as does the end
        // of the container's log.
        if end == progress::End::StdoutClosed {
            return Ok(0);
        }
        return match answer {
            Ok(Ok(service::Response::Logs(l))) => {
                progress::note(
                    shown,
                    &format!(
                        "the log of {} ended (the container stopped or was removed)",
                        l.container
                    ),
                );
                Ok(0)
            }
            Ok(Ok(_)) => Ok(0),
            Ok(Err(e)) => Err(Failure::from(e).into()),
            Err(e) if matches!(e.downcast_ref(), Some(socket::Error::ReaderGone)) => Ok(0),
            Err(e) => Err(e),
        };
    }
    let mut response = answer?.map_err(Failure::from)?;
    if let Some(name) = named {
        only_named(&mut response, &name)?;
    }
    if let (Some(dir), service::Response::EnvBackup(b)) = (&backup_to, &response) {
        write_backup(dir, &b.backup.0)?;
    }
    let mut out = Vec::new();
    output::render(&response, format, &mut out)?;
    std::io::stdout().write_all(&out)?;
    Ok(response.exit_code())
}

/// Keeps the rows of a `get` answer that `name` names (a project's, or a host); none is an error,
/// exit 2, as for a project `describe` does not know.
fn only_named(response: &mut service::Response, name: &str) -> Result<(), Failure> {
    let (kind, left) = match response {
        service::Response::Projects(rows) => {
            rows.retain(|r| r.project == name);
            ("project", rows.len())
        }
        service::Response::Slots(rows) => {
            rows.retain(|r| r.project == name);
            ("project", rows.len())
        }
        service::Response::Hosts(rows) => {
            rows.retain(|r| r.name == name);
            ("host", rows.len())
        }
        _ => return Ok(()),
    };
    if left == 0 {
        return Err(Failure::invalid(format!("no {kind} `{name}` is recorded")));
    }
    Ok(())
}

/// Runs `request` on the store of `state_dir` under the operator's configuration, or in the
/// daemon that holds it (under the daemon's configuration: it is the one that connects).
async fn call(
    state_dir: &Path,
    config: Option<&Path>,
    request: Request,
    progress: reconcile::Progress,
    loaded: Option<service::Loaded>,
) -> anyhow::Result<socket::Answer> {
    if request.reads_only() {
        return read(state_dir, config, request, progress, loaded).await;
    }
    match Store::open_as(state_dir, &format!("codeb {}", request.op())) {
        Ok(store) => {
            local(
                Arc::new(store),
                state_dir,
                config,
                request,
                progress,
                loaded,
            )
            .await
        }
        Err(held @ crate::store::Error::Locked { .. }) => {
            match socket::forward_with(state_dir, &request, &progress).await {
                Ok(answer) => Ok(answer),
                // Held by a one-shot command (an apply waiting on a health check), not a daemon:
                // no queue to wait in, so the change is refused, naming who holds the store.
                Err(socket::Error::NoDaemon { .. }) => Err(Failure::unconverged(format!(
                    "{held}; nothing was done: run it again when that ends (codeb watch or serve queue changes instead of refusing them)"
                ))
                .into()),
                Err(other) => Err(other.into()),
            }
        }
        Err(e) => Err(open_failure(state_dir, e)),
    }
}

/// Runs a request that only reads: in the daemon when one holds the store (its view, its kept
/// clients), else on a read-only open of the store, beside whatever holds it and writing nothing.
async fn read(
    state_dir: &Path,
    config: Option<&Path>,
    request: Request,
    progress: reconcile::Progress,
    loaded: Option<service::Loaded>,
) -> anyhow::Result<socket::Answer> {
    match socket::forward_with(state_dir, &request, &progress).await {
        Err(socket::Error::NoDaemon { .. }) => {}
        answered => return answered.map_err(Into::into),
    }
    let store = match Store::open_read_only(state_dir) {
        Ok(store) => store,
        // Before the first apply a plan is made against nothing recorded, creating nothing.
        Err(crate::store::Error::NoStore { .. }) if request.plans_only() => {
            tracing::info!(
                state_dir = %state_dir.display(),
                "no codeb store here yet: planning as if nothing were recorded"
            );
            Store::empty(state_dir).map_err(|e| open_failure(state_dir, e))?
        }
        Err(e @ crate::store::Error::NoStore { .. }) => {
            return Err(Failure::invalid(e.to_string()).into())
        }
        // A store that needs a writer first (a repair after a crash, tables of a newer codeb):
        // opened for writing when nothing holds it, then, repaired, read beside any writer like
        // every read (a followed log would otherwise hold the store for as long as it follows).
        Err(crate::store::Error::Open { .. }) => {
            let writer = Store::open_as(state_dir, &format!("codeb {}", request.op()))
                .map_err(|e| open_failure(state_dir, e))?;
            match Store::open_read_only(state_dir) {
                Ok(reader) => {
                    drop(writer);
                    reader
                }
                Err(_) => writer,
            }
        }
        Err(e) => return Err(open_failure(state_dir, e)),
    };
    local(
        Arc::new(store),
        state_dir,
        config,
        request,
        progress,
        loaded,
    )
    .await
}

/// Runs `request` in this process on `store`, with the manifests loaded from its sources.
async fn local(
    store: Arc<Store>,
    state_dir: &Path,
    config: Option<&Path>,
    request: Request,
    progress: reconcile::Progress,
    loaded: Option<service::Loaded>,
) -> anyhow::Result<socket::Answer> {
    let config = operator_config(config, state_dir)?;
    let ctx = Ctx::local(store, Caller::cli(uid()), config)
        .with_progress(progress)
        .with_loaded(loaded);
    Ok(service::call(&ctx, request).await)
}

/// The error of a store that cannot be opened: a refused state directory is invalid input.
fn open_failure(state_dir: &Path, e: crate::store::Error) -> anyhow::Error {
    match e {
        held @ crate::store::Error::Locked { .. } => Failure::unconverged(held.to_string()).into(),
        e if e.is_refused_dir() => {
            Failure::invalid(format!("opening the store in {}: {e}", state_dir.display())).into()
        }
        e => anyhow::Error::new(e).context(format!("opening the store in {}", state_dir.display())),
    }
}

/// This process's user id, for the audit: `cli (uid N)`.
fn uid() -> u32 {
    crate::store::dir::process_uid().unwrap_or(u32::MAX)
}

/// The request a command makes, and how its answer is printed.
///
/// `loaded`: the manifests the request's sources hold, when it carries some (see [`manifests`]).
fn request(
    command: Command,
    loaded: &mut Option<service::Loaded>,
) -> anyhow::Result<(Request, Format)> {
    Ok(match command {
        Command::Watch(_) | Command::Serve(_) => unreachable!("the daemon is run, not requested"),
        Command::Version { .. }
        | Command::Completion { .. }
        | Command::Mcp { .. }
        | Command::Agent { .. } => {
            unreachable!("answered by `run` without a request")
        }
        Command::Apply {
            files,
            dry_run,
            prune,
            allow_empty,
            confirm,
            prune_projects,
            timeout,
            output,
        } => (
            Request::Apply {
                manifests: manifests(&files.paths, loaded)?,
                dry_run,
                prune,
                allow_empty,
                confirm,
                prune_projects,
                timeout_ms: timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            output.output,
        ),
        Command::Diff { files, output } => (
            Request::Diff {
                manifests: manifests(&files.paths, loaded)?,
            },
            output.output,
        ),
        Command::Get { what, output, .. } => (
            Request::Get {
                what: match what {
                    super::GetWhat::Projects => GetWhat::Projects,
                    super::GetWhat::Slots => GetWhat::Slots,
                    super::GetWhat::Hosts => GetWhat::Hosts,
                },
            },
            output,
        ),
        Command::Describe { args, output } => {
            let project = match args.as_slice() {
                [name] => name.clone(),
                [kind, name] if kind == "project" || kind == "projects" => name.clone(),
                [kind, _] => {
                    return Err(Failure::invalid(format!(
                        "codeb describes projects only, not `{kind}`: codeb describe [project] NAME"
                    ))
                    .into())
                }
                _ => unreachable!("clap takes one or two"),
            };
            (Request::Describe { project }, output.output)
        }
        Command::Promote {
            project,
            env,
            output,
        } => (
            Request::Promote {
                project,
                environment: env,
            },
            output.output,
        ),
        Command::Rollback {
            project,
            env,
            to,
            output,
        } => (
            Request::Rollback {
                project,
                environment: env,
                to,
            },
            output.output,
        ),
        Command::Releases {
            project,
            env,
            output,
        } => (
            Request::Releases {
                project,
                environment: env,
            },
            output.output,
        ),
        Command::Delete {
            what,
            name,
            paths,
            output,
        } => {
            let request = match (what, name, paths.is_empty()) {
                (Some(super::DeleteWhat::Project), Some(name), true) => Request::Delete {
                    projects: vec![name],
                    manifests: vec![],
                },
                (Some(super::DeleteWhat::Host), Some(host), true) => Request::HostDelete { host },
                (None, None, false) => Request::Delete {
                    projects: vec![],
                    manifests: manifests(&paths, loaded)?,
                },
                _ => {
                    return Err(Failure::invalid(
                        "use `codeb delete project NAME`, `codeb delete host NAME` or `codeb delete -f PATH…`",
                    )
                    .into())
                }
            };
            (request, output.output)
        }
        Command::Deploy {
            project,
            env,
            image,
            output,
        } => (
            Request::Deploy {
                project,
                environment: env,
                image,
            },
            output.output,
        ),
        Command::Key(super::KeyCommand::Create {
            role,
            name,
            projects,
            expires,
            output,
        }) => (
            Request::KeyCreate {
                role: match role {
                    super::RoleArg::Admin => crate::auth::Role::Admin,
                    super::RoleArg::Developer => crate::auth::Role::Developer,
                    super::RoleArg::Viewer => crate::auth::Role::Viewer,
                },
                name,
                projects,
                expires_in_ms: expires.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            output.output,
        ),
        Command::Key(super::KeyCommand::List { output }) => (Request::KeyList, output.output),
        Command::Host(super::HostCommand::Adopt { host, output }) => {
            (Request::HostAdopt { host }, output.output)
        }
        Command::Key(super::KeyCommand::Revoke { id, output }) => {
            (Request::KeyRevoke { id }, output.output)
        }
        Command::Audit {
            project,
            since,
            limit,
            output,
        } => (
            Request::Audit {
                project,
                since_ms: since.map(|d| {
                    crate::reconcile::now_ms()
                        .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                }),
                limit: Some(limit),
            },
            output.output,
        ),
        Command::Env(e) => env_request(e)?,
        Command::Backup(super::BackupCommand::Run {
            project,
            env,
            database,
            cache,
            output,
        }) => (
            Request::BackupRun {
                project,
                environment: env,
                kind: match (database, cache) {
                    (true, _) => Some(crate::backup::Kind::Database),
                    (_, true) => Some(crate::backup::Kind::Cache),
                    _ => None,
                },
            },
            output.output,
        ),
        Command::Backup(super::BackupCommand::List {
            project,
            env,
            verify,
            output,
        }) => (
            Request::BackupList {
                project,
                environment: env,
                verify,
            },
            output.output,
        ),
        Command::Restore {
            project,
            env,
            from,
            to_database,
            replace_keys,
            output,
        } => (
            Request::Restore {
                project,
                environment: env,
                from,
                to_database,
                replace_keys,
            },
            output.output,
        ),
        Command::Db(super::DbCommand::Rotate { target, output }) => (
            Request::DbRotate {
                project: target.project,
                environment: target.env,
            },
            output.output,
        ),
        Command::Logs {
            project,
            env,
            slot,
            tail,
            follow,
            output,
        } => (
            Request::Logs {
                project,
                environment: env,
                slot: slot.and_then(|s| match s {
                    super::SlotArg::Blue => Some(crate::model::Slot::Blue),
                    super::SlotArg::Green => Some(crate::model::Slot::Green),
                    super::SlotArg::Active => None,
                }),
                lines: tail,
                follow,
            },
            output.output,
        ),
    })
}

/// The file `codeb env backup` writes in its directory.
pub const BACKUP_FILE: &str = "codeb-env-backup.json";
/// The largest dotenv file read (values are at most 64 KiB each; the service names that limit).
const MAX_DOTENV_BYTES: u64 = 16 << 20;

/// Writes a backup into `dir` (created 0700), as a 0600 file replaced atomically.
fn write_backup(dir: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure::unconverged(format!("creating {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".{BACKUP_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(BACKUP_FILE))
    };
    write().map_err(|e| {
        Failure::unconverged(format!("writing {}: {e}", dir.join(BACKUP_FILE).display())).into()
    })
}

/// Reads a text file a command names (`-`: standard input), at most `max` bytes.
fn read_text(path: &Path, max: u64, what: &str) -> anyhow::Result<(String, String)> {
    use std::io::Read;
    let (name, mut reader): (String, Box<dyn Read>) = if path.as_os_str() == "-" {
        ("<stdin>".into(), Box::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?;
        (path.display().to_string(), Box::new(f))
    };
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::invalid(format!("{name}: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(Failure::invalid(format!(
            "{name}: larger than {} MiB, too large for {what}",
            max >> 20
        ))
        .into());
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::invalid(format!("{name}: not UTF-8 text")))?;
    Ok((name, text))
}

/// The request of an `env` command.
fn env_request(command: super::EnvCommand) -> anyhow::Result<(Request, Format)> {
    use super::EnvCommand as E;
    Ok(match command {
        E::Set {
            target,
            vars,
            protected,
            output,
        } => (
            Request::EnvSet {
                project: target.project,
                environment: target.env,
                vars: service::env::parse_assignments(&vars).map_err(Failure::from)?,
                protected,
            },
            output.output,
        ),
        E::Unset {
            target,
            keys,
            protected,
            output,
        } => (
            Request::EnvUnset {
                project: target.project,
                environment: target.env,
                keys,
                protected,
            },
            output.output,
        ),
        E::Import {
            target,
            file,
            protected,
            output,
        } => {
            let (name, text) = read_text(&file, MAX_DOTENV_BYTES, "a dotenv file")?;
            (
                Request::EnvImport {
                    project: target.project,
                    environment: target.env,
                    file: service::EnvFile {
                        name,
                        text: crate::model::vars::SecretText(text),
                    },
                    protected,
                },
                output.output,
            )
        }
        E::List { target, output } => (
            Request::EnvList {
                project: target.project,
                environment: target.env,
            },
            output.output,
        ),
        E::Get {
            target,
            key,
            output,
        } => (
            Request::EnvGet {
                project: target.project,
                environment: target.env,
                key,
            },
            output.output,
        ),
        E::Export { target, output } => (
            Request::EnvExport {
                project: target.project,
                environment: target.env,
            },
            output.output,
        ),
        E::History { target, output } => (
            Request::EnvHistory {
                project: target.project,
                environment: target.env,
            },
            output.output,
        ),
        E::Diff {
            target,
            from,
            to,
            output,
        } => (
            Request::EnvDiff {
                project: target.project,
                environment: target.env,
                from,
                to,
            },
            output.output,
        ),
        E::Restore {
            target,
            version,
            protected,
            output,
        } => (
            Request::EnvRestore {
                project: target.project,
                environment: target.env,
                version,
                protected,
            },
            output.output,
        ),
        E::Backup { output, .. } => (Request::EnvBackup, output.output),
        E::RestoreBackup { from, output } => {
            let (_, text) = read_text(&from.join(BACKUP_FILE), 1 << 30, "an env backup")?;
            (
                Request::EnvRestoreBackup {
                    backup: crate::model::vars::SecretText(text),
                },
                output.output,
            )
        }
    })
}

/// Reads the manifests `paths` name (`-`: standard input) and validates them here, so that a
/// mistake is exit 2 with file:line:column before anything else happens.
/// The sources of `paths`, loaded here first: a mistake is refused before the store is opened or
/// a daemon asked. What loaded is kept in `loaded`, for the request when it runs in this process.
fn manifests(
    paths: &[PathBuf],
    loaded: &mut Option<service::Loaded>,
) -> anyhow::Result<Vec<Source>> {
    let sources =
        crate::spec::read_sources(paths, None).map_err(|e| Failure::invalid(e.to_string()))?;
    let manifests =
        crate::spec::load_sources(&sources).map_err(|e| Failure::invalid(e.to_string()))?;
    *loaded = Some(service::Loaded {
        sources: sources.clone(),
        manifests,
    });
    Ok(sources)
}
