//! The command line: a client of the `service` layer and a renderer of its views. It parses argv
//! into a typed `service::Request`, runs it on the store in this process or, when `codeb watch` or
//! `codeb serve` holds the store, sends it over the daemon's socket; then it renders the typed
//! answer and maps it to an exit code.
//!
//! Exit codes (also in `--help` and the README): 0 converged (for `diff`: no changes); 1 could not
//! converge (a failed health check, a backend unreachable, a DNS name held by a record codeb does not
//! own; for `diff`: there are changes or problems; for `apply --dry-run`: the plan carries a
//! problem); 2 invalid input or usage (including a Zone's unset API key
//! variable, a key variable or endpoint codeb's configuration does not allow, an unconfirmed prune,
//! a refused or missing state directory), nothing applied; 3 (`diff` only) a host or zone could not be observed;
//! 4 `apply --timeout` was reached (stopped between steps; the next apply resumes).

mod commands;
mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "Exit codes:
  0  converged (diff: nothing to change and no problem)
  1  could not converge: a failed health check, a backend unreachable, a DNS name held by a
     record codeb does not own (diff: there are changes or problems; apply --dry-run: the plan
     carries a problem)
  2  invalid input or usage (an unconfirmed prune, a refused state directory, a key variable or
     endpoint codeb's configuration does not allow); nothing was applied
  3  diff only: a host or a zone could not be observed
  4  apply --timeout was reached: codeb stopped between steps (or cut a health wait short,
     leaving the slot deploying) with work left; the next apply resumes it
While `codeb watch` runs, other commands are answered by it, with the same exit codes.
`codeb watch` exits 0 after SIGTERM or SIGINT, 2 when the manifests are invalid at start.";

/// Deploys web apps blue/green to Podman hosts behind Caddy, from declarative manifests.
#[derive(Debug, Parser)]
#[command(name = "codeb", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Where codeb keeps its store (records and journal).
    #[arg(long, global = true, env = "CODEB_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// codeb's own configuration: the key variables and endpoints manifests may name (default:
    /// config.yaml in the state directory if it exists, else PDNS_*/CODEB_*/PG_*/REDIS_* and loopback only).
    #[arg(long, global = true, env = crate::config::ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More logging (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Live progress of apply, deploy, promote, rollback and delete, on stderr: a spinner on a
    /// terminal, else one line per step start, wait state change and step end.
    #[arg(long, global = true, value_enum, env = "CODEB_PROGRESS", default_value_t = progress::Choice::Auto)]
    pub progress: progress::Choice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate manifests, then converge the hosts to them.
    #[command(
        after_help = "Examples:\n  codeb apply -f manifests/\n  codeb apply -f manifests/ --dry-run -o json\n  codeb apply -f manifests/ --prune --prune-project old-shop"
    )]
    Apply {
        #[command(flatten)]
        files: Files,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove recorded project environments the manifests no longer contain.
        #[arg(long)]
        prune: bool,
        /// With --prune, allow removing every project.
        #[arg(long, requires = "prune")]
        allow_empty: bool,
        /// With --prune: the number of environments it removes, needed when they belong to more
        /// than one project (the refusal and --dry-run show it).
        #[arg(long, value_name = "N", requires = "prune")]
        confirm: Option<usize>,
        /// With --prune: only this project's environments may be removed (repeat for several).
        #[arg(long = "prune-project", value_name = "NAME", requires = "prune")]
        prune_projects: Vec<String>,
        /// Bound the whole run (e.g. 5m): past it no step starts and a health wait stops, the
        /// slot left deploying; exit 4. The next apply resumes. A step still acting 10 s later
        /// (or a host that does not answer) is abandoned as a crash would leave it.
        #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Option<Duration>,
        #[command(flatten)]
        output: Output,
    },
    /// Show what apply would change (exit 0: in sync, 1: changes or problems, 2+: error).
    #[command(
        after_help = "Examples:\n  codeb diff -f manifests/\n  codeb diff -f manifests/ -o json     # the field changes and steps as data\n  git show HEAD:app.yaml | codeb diff -f -   # in CI on a pull request: exit 1 fails the job"
    )]
    Diff {
        #[command(flatten)]
        files: Files,
        #[command(flatten)]
        output: Output,
    },
    /// List projects, slots or hosts from the store (singular or plural), or one by name.
    #[command(
        after_help = "Examples:\n  codeb get projects\n  codeb get project shop -o json   # one project's environments\n  codeb get slots shop             # the slots of project shop\n  codeb get host local -o yaml\n\nWith a NAME that matches nothing: exit 2."
    )]
    Get {
        #[arg(value_enum)]
        what: GetWhat,
        /// Only this project (projects, slots) or host (hosts).
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show a project's slots, history, health results and failed log tails.
    #[command(
        after_help = "Examples:\n  codeb describe shop\n  codeb describe project shop -o yaml"
    )]
    Describe {
        /// `[project] NAME`: the word `project` may be left out.
        #[arg(num_args = 1..=2, required = true, value_name = "[project] NAME")]
        args: Vec<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Switch an environment's hostname to its deployed slot.
    #[command(
        after_help = "Examples:\n  codeb promote shop\n  codeb promote shop --env staging -o json"
    )]
    Promote {
        project: String,
        #[arg(long, default_value = "production")]
        env: String,
        #[command(flatten)]
        output: Output,
    },
    /// Switch an environment's hostname back to its grace slot, starting nothing; with --to N,
    /// back to release N of `codeb releases` (rolled out again blue/green, with its env version,
    /// when it is in no slot any more).
    #[command(
        after_help = "Examples:\n  codeb rollback shop                 # the grace slot serves again, at once\n  codeb releases shop                 # numbered releases, newest first\n  codeb rollback shop --to 12         # release 12 serves again (a new release, marked rollback of 12)\n  codeb rollback shop --env staging -o json\n\nExit 2 when release N is not in the history (or never passed its health check); 1 when its\nrollout fails its health check (the serving release stays)."
    )]
    Rollback {
        project: String,
        #[arg(long, default_value = "production")]
        env: String,
        /// The release number to roll back to (see `codeb releases`).
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        #[command(flatten)]
        output: Output,
    },
    /// List an environment's releases, newest first: number, image, env version, state (or how
    /// it ended), who deployed it and when. The last 100 per environment are kept.
    #[command(
        after_help = "Examples:\n  codeb releases shop\n  codeb releases shop --env staging -o json"
    )]
    Releases {
        project: String,
        #[arg(long, default_value = "production")]
        env: String,
        #[command(flatten)]
        output: Output,
    },
    /// Keep the hosts converged to a directory of manifests until SIGTERM: apply at start, then
    /// on every saved change, container event and resync.
    #[command(
        after_help = "Examples:\n  codeb watch -f /etc/codeb/manifests\n  codeb watch -f manifests/ --resync 30s --prune"
    )]
    Watch(WatchArgs),
    /// `codeb watch` plus the HTTP API (API keys, roles, audit) on a loopback address.
    #[command(
        after_help = "Examples:\n  codeb serve -f /etc/codeb/manifests\n  codeb serve -f manifests/ --listen 127.0.0.1:9100 --rate-limit 100\n\nThen: codeb key create --role developer --name ci\n  curl -H 'X-API-Key: codeb_developer_…' http://127.0.0.1:9100/api/v1/projects"
    )]
    Serve(ServeArgs),
    /// Roll an image out to one environment through the blue/green path (a release override:
    /// recorded with who set it; a manifest naming another image supersedes it).
    #[command(
        after_help = "Example:\n  codeb deploy myapp --env staging --image ghcr.io/acme/myapp:sha-abc"
    )]
    Deploy {
        project: String,
        #[arg(long, default_value = "production")]
        env: String,
        #[arg(long)]
        image: String,
        #[command(flatten)]
        output: Output,
    },
    /// Serve MCP on stdin/stdout for an AI agent (Claude Code: `claude mcp add codeb -- codeb mcp`),
    /// through the running codeb serve or watch: its socket, or --server URL.
    #[command(
        after_help = "Examples:\n  codeb mcp                                   # through the local daemon's socket (as this user)\n  CODEB_API_KEY=codeb_developer_… codeb mcp --server https://api.example.com\n\nThe key for --server is read from CODEB_API_KEY, never from the command line.\nExit 0 when stdin ends; 1 when no daemon answers on the state directory's socket; 2 for --server without CODEB_API_KEY."
    )]
    Mcp {
        /// A codeb serve to talk to (its base URL, or its /mcp), with the key in CODEB_API_KEY.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
    /// Create, list and revoke API keys for `codeb serve`.
    #[command(
        subcommand,
        after_help = "Examples:\n  codeb key create --role developer --name ci --project shop\n  codeb key list -o json\n  codeb key revoke 3f9a0c1d2e4b"
    )]
    Key(KeyCommand),
    /// Manage hosts: take one over from another codeb.
    #[command(
        subcommand,
        after_help = "Examples:\n  codeb host adopt local\n  codeb delete host old-box"
    )]
    Host(HostCommand),
    /// A project environment's stored env: versioned, encrypted at rest; every change is a new
    /// release rolled out blue/green, and a rollback restores the env with the image.
    #[command(
        subcommand,
        after_help = "Examples:\n  codeb env set shop API_TOKEN=…   # a new version, rolled out blue/green\n  codeb env list shop --env staging\n  codeb env history shop"
    )]
    Env(EnvCommand),
    /// Back up a project's databases and caches now, or list its backups (see docs/backups.md).
    #[command(
        subcommand,
        after_help = "Examples:\n  codeb backup run shop\n  codeb backup list shop -o json"
    )]
    Backup(BackupCommand),
    /// Restore a backup: a database into a new database (never the live one), its row counts
    /// checked against the backup's; a cache's keys back under the environment's prefix, only
    /// with --replace-keys (admin; audited).
    #[command(
        after_help = "Examples:\n  codeb restore myapp --from 20261207T121500Z-database\n  codeb restore myapp --env staging --from 20261207T121500Z-database --to-database myapp_staging_copy\n  codeb restore myapp --from 20261207T120000Z-cache --replace-keys"
    )]
    Restore {
        project: String,
        /// The environment (by default: the one that has a backup of this id).
        #[arg(long)]
        env: Option<String>,
        /// The backup's id, as `codeb backup list` shows it.
        #[arg(long, value_name = "ID")]
        from: String,
        /// The new database's name (default: DATABASE_restore_TIME); never an existing one.
        #[arg(long, value_name = "NAME")]
        to_database: Option<String>,
        /// For a cache backup: write its keys over the live ones under the environment's prefix.
        #[arg(long)]
        replace_keys: bool,
        #[command(flatten)]
        output: Output,
    },
    /// A project environment's database and cache (`database: postgres`, `cache: redis`).
    #[command(
        subcommand,
        after_help = "Example:\n  codeb db rotate shop --env staging"
    )]
    Db(DbCommand),
    /// Show the audit log: every change and every refused request, newest last.
    #[command(
        after_help = "Examples:\n  codeb audit --since 1h\n  codeb audit --project myapp -o json"
    )]
    Audit {
        #[arg(long)]
        project: Option<String>,
        /// Only entries newer than this (e.g. 1h, 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// At most this many entries (the newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        output: Output,
    },
    /// Print a slot's recent log lines (the active slot's by default); with -f, then follow it.
    #[command(
        after_help = "Examples:\n  codeb logs myapp\n  codeb logs myapp -f --tail 0\n  codeb logs myapp --env staging --slot green --tail 20 -o json\n\nControl characters in the app's output are replaced (U+FFFD). -f ends quietly (exit 0) on\nCtrl-C or a closed pipe, and when the container's log ends (it stopped or was replaced)."
    )]
    Logs {
        project: String,
        #[arg(long, default_value = "production")]
        env: String,
        /// blue, green, or active (the default).
        #[arg(long, value_enum)]
        slot: Option<SlotArg>,
        /// How many past lines (at most 1000; with -f, 0 prints only new ones).
        #[arg(
            long = "tail",
            visible_alias = "lines",
            value_name = "N",
            default_value_t = 100
        )]
        tail: usize,
        /// Keep printing the lines the container writes, until interrupted.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Print codeb's version, the git commit it is built from and that commit's date.
    #[command(after_help = "Examples:\n  codeb version\n  codeb version -o json")]
    Version {
        #[command(flatten)]
        output: Output,
    },
    /// The far end of codeb's SSH transport to a remote host (docs/multi-host.md): JSON lines on
    /// stdin/stdout, forwarding only allow-listed requests to this host's Podman and Caddy admin.
    /// Not for people: codeb runs it as `ssh HOST codeb agent --stdio`. Hidden until remote Hosts
    /// use it.
    #[command(
        hide = true,
        after_help = "Examples:\n  ssh root@host codeb agent --stdio    # what codeb runs on a remote host"
    )]
    Agent {
        /// Speak the protocol on stdin/stdout (the only mode).
        #[arg(long, required = true)]
        stdio: bool,
        /// This host's Podman API socket.
        #[arg(long, value_name = "PATH", default_value = "/run/podman/podman.sock")]
        podman_socket: PathBuf,
        /// This host's Caddy admin API (loopback).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:2019")]
        caddy_admin: String,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  source <(codeb completion bash)\n  codeb completion zsh > \"${fpath[1]}/_codeb\"\n  codeb completion fish > ~/.config/fish/completions/codeb.fish"
    )]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Remove a project's containers, routes and records, or forget a host no project runs on.
    #[command(
        after_help = "Examples:\n  codeb delete project shop\n  codeb delete -f manifests/\n  codeb delete host old-box     # no project left on it; releases its owner mark"
    )]
    Delete {
        /// `project` or `host`, followed by its name; or use -f.
        #[arg(value_enum)]
        what: Option<DeleteWhat>,
        name: Option<String>,
        /// Delete the projects these manifests declare.
        #[arg(short = 'f', long = "filename", value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Mark a Host as owned by this codeb, replacing another codeb's mark (that codeb is then
    /// refused the host). Needs the hosts-write permission; audited.
    #[command(
        after_help = "Examples:\n  codeb get hosts            # a host owned by another codeb says so\n  codeb host adopt local"
    )]
    Adopt {
        /// The Host's name (recorded, or declared in the daemon's manifests).
        host: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key and print it, once: `codeb_{role}_{token}`.
    #[command(
        after_help = "Examples:\n  codeb key create --role developer --name ci --project myapp --expires 90d\n  codeb key create --role admin --name ops"
    )]
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long)]
        name: Option<String>,
        /// Limit a developer or viewer key to this project (repeat for several).
        #[arg(long = "project")]
        projects: Vec<String>,
        /// Expire the key after this long (e.g. 90d).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        #[command(flatten)]
        output: Output,
    },
    /// List keys (never their text).
    #[command(after_help = "Examples:\n  codeb key list\n  codeb key list -o json")]
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Revoke a key by its id (see `codeb key list`).
    #[command(after_help = "Example:\n  codeb key revoke 3f9a0c1d2e4b")]
    Revoke {
        id: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Args)]
pub struct EnvTarget {
    pub project: String,
    #[arg(long, default_value = "production")]
    pub env: String,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up the databases and caches of a project's environments now (retention then deletes
    /// the oldest beyond the Host's keep).
    #[command(
        after_help = "Examples:\n  codeb backup run myapp\n  codeb backup run myapp --env staging --database"
    )]
    Run {
        project: String,
        #[arg(long)]
        env: Option<String>,
        /// Only the database.
        #[arg(long, conflicts_with = "cache")]
        database: bool,
        /// Only the cache.
        #[arg(long)]
        cache: bool,
        #[command(flatten)]
        output: Output,
    },
    /// A project's backups: id, kind, time, size, rows or keys, and whether its files are intact.
    #[command(
        after_help = "Examples:\n  codeb backup list myapp\n  codeb backup list myapp --env staging --verify -o json"
    )]
    List {
        project: String,
        #[arg(long)]
        env: Option<String>,
        /// Read every file again and check its SHA-256 (otherwise only sizes are checked).
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// New credentials for the environment's database and cache (admin): the other login role
    /// with a new password and a new Redis password, as a new env version rolled out blue/green.
    /// The old ones keep working until no slot runs them (the grace slot retired).
    #[command(
        after_help = "Examples:\n  codeb db rotate myapp\n  codeb db rotate myapp --env staging"
    )]
    Rotate {
        #[command(flatten)]
        target: EnvTarget,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Set variables: a new env version, rolled out as a new release.
    #[command(
        after_help = "Examples:\n  codeb env set myapp API_TOKEN=abc123 FEATURE_X=on\n  codeb env set myapp --env staging LOG_LEVEL=debug\n  codeb env set myapp --protected DATABASE_URL=postgres://…   # admin only\n\nProtected keys (DATABASE_URL, POSTGRES_USER, POSTGRES_PASSWORD, REDIS_URL by default) are kept\nas stored unless an admin passes --protected; the answer names the keys kept."
    )]
    Set {
        #[command(flatten)]
        target: EnvTarget,
        /// `KEY=VALUE` (the value may be empty).
        #[arg(required = true, value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// Change protected keys too (admin).
        #[arg(long)]
        protected: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Remove variables: a new env version, rolled out.
    #[command(after_help = "Example:\n  codeb env unset myapp FEATURE_X")]
    Unset {
        #[command(flatten)]
        target: EnvTarget,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        #[arg(long)]
        protected: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Replace the env with a dotenv file's (KEY=VALUE lines, `export`, quotes, # comments);
    /// protected keys are kept unless an admin passes --protected.
    #[command(
        after_help = "Examples:\n  codeb env import myapp production.env\n  codeb env import myapp --env staging - < staging.env"
    )]
    Import {
        #[command(flatten)]
        target: EnvTarget,
        /// The dotenv file, or `-` for standard input.
        file: PathBuf,
        #[arg(long)]
        protected: bool,
        #[command(flatten)]
        output: Output,
    },
    /// List the latest version's names and keyed digests (never values).
    #[command(
        after_help = "Examples:\n  codeb env list myapp\n  codeb env list myapp --env staging -o json"
    )]
    List {
        #[command(flatten)]
        target: EnvTarget,
        #[command(flatten)]
        output: Output,
    },
    /// Print one value (admin; audited).
    #[command(after_help = "Example:\n  codeb env get myapp API_TOKEN")]
    Get {
        #[command(flatten)]
        target: EnvTarget,
        key: String,
        #[command(flatten)]
        output: Output,
    },
    /// Print the latest version as dotenv text (admin; audited).
    #[command(after_help = "Example:\n  codeb env export myapp > myapp.env")]
    Export {
        #[command(flatten)]
        target: EnvTarget,
        #[command(flatten)]
        output: Output,
    },
    /// Every version: when, who, which names were added, changed or removed.
    #[command(after_help = "Example:\n  codeb env history myapp -o json")]
    History {
        #[command(flatten)]
        target: EnvTarget,
        #[command(flatten)]
        output: Output,
    },
    /// Which names differ between two versions (names only).
    #[command(after_help = "Example:\n  codeb env diff myapp 3 5")]
    Diff {
        #[command(flatten)]
        target: EnvTarget,
        from: u64,
        to: u64,
        #[command(flatten)]
        output: Output,
    },
    /// Write a new version equal to version N (history is never rewritten), rolled out.
    #[command(after_help = "Example:\n  codeb env restore myapp --version 3")]
    Restore {
        #[command(flatten)]
        target: EnvTarget,
        #[arg(long)]
        version: u64,
        #[arg(long)]
        protected: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Write every project's env versions, still encrypted, to DIR/codeb-env-backup.json (the
    /// key is not in it: keep env.key's own backup elsewhere).
    #[command(after_help = "Example:\n  codeb env backup --to /mnt/backup/codeb")]
    Backup {
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Bring env versions back from DIR/codeb-env-backup.json into a store that has none (with
    /// the same env key in place).
    #[command(after_help = "Example:\n  codeb env restore-backup --from /mnt/backup/codeb")]
    RestoreBackup {
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Admin,
    Developer,
    Viewer,
}

/// How a result is printed.
#[derive(Debug, Args)]
pub struct Output {
    /// text (or a table) for people; json or yaml: the result's data.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SlotArg {
    Blue,
    Green,
    /// The slot serving the hostname.
    Active,
}

/// `--timeout`: a humantime duration, not zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than 0 s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Manifest directories (watched recursively, *.yaml/*.yml) or files.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// How often every host is swept and the manifests read again, for drift that no event
    /// reports (Caddy restarted, a route edited by hand).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// Remove recorded project environments that the manifests no longer declare.
    #[arg(long)]
    pub prune: bool,
    /// With --prune, allow manifests that declare no environment at all to remove every project.
    #[arg(long, requires = "prune")]
    pub allow_empty: bool,
    /// Reconciles at once, all hosts together.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub watch: WatchArgs,
    /// Where the HTTP API listens: a loopback address (publish it through Caddy for TLS).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: std::net::SocketAddr,
    /// Requests a second per API key (0: no limit).
    #[arg(long, default_value_t = 50)]
    pub rate_limit: u32,
    /// Requests a key may make at once beyond the rate.
    #[arg(long, default_value_t = 100)]
    pub rate_burst: u32,
    /// Publish the API through a Host's Caddy on this hostname (Caddy's TLS, the Host's settings).
    #[arg(long, value_name = "HOSTNAME")]
    pub publish: Option<String>,
    /// The Host whose Caddy publishes the API (default: the manifests' only Host).
    #[arg(long, value_name = "HOST", requires = "publish")]
    pub publish_on: Option<String>,
}

#[derive(Debug, Args)]
pub struct Files {
    /// Manifest files, directories (recursively, *.yaml/*.yml) or `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GetWhat {
    #[value(alias = "project")]
    Projects,
    #[value(alias = "slot")]
    Slots,
    #[value(alias = "host")]
    Hosts,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DeleteWhat {
    Project,
    /// A recorded Host no project runs on (its owner mark is released).
    Host,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

impl From<crate::service::Error> for Failure {
    fn from(e: crate::service::Error) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.message,
        }
    }
}

/// An error with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
    pub fn unconverged(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

/// The exit code an error maps to: a [`Failure`]'s own, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Failure>().map_or(1, |f| f.code)
}

/// The whole program: parse, run, print the error chain, exit.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors (exit 2) as JSON too when JSON logs were asked for; help and version
        // output, and text logs, as clap prints them.
        Err(e) if e.use_stderr() && json_logs_asked(std::env::args_os()) => {
            let code = u8::try_from(e.exit_code()).unwrap_or(2);
            eprintln!("{}", json_error(&e.render().to_string(), code));
            return ExitCode::from(code);
        }
        Err(e) => e.exit(),
    };
    let log_format = cli.log_format;
    // A daemon's log is its only output: one line per reconcile at the default level.
    let verbose = match cli.command {
        Command::Watch(_) | Command::Serve(_) => cli.verbose.max(1),
        _ => cli.verbose,
    };
    init_logging(verbose, cli.log_format);
    // One-shot commands wait on I/O, one thing after another: one thread, no workers to start
    // (a promote's whole path is ~9 ms here). The daemon serves commands while it reconciles.
    let runtime = match cli.command {
        Command::Watch(_) | Command::Serve(_) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code(&e);
            match log_format {
                // A name echoed from the command line or a backend may hold terminal escapes:
                // each line is printed with its control characters replaced.
                LogFormat::Text => eprintln!("error: {}", printable(&format!("{e:#}"))),
                LogFormat::Json => eprintln!("{}", json_error(&format!("{e:#}"), code)),
            }
            ExitCode::from(code)
        }
    }
}

/// `text` with the control characters of each line replaced (its line breaks kept).
fn printable(text: &str) -> String {
    text.split('\n')
        .map(crate::service::sanitize)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the command line asks for JSON logs (`--log-format json` or `--log-format=json`),
/// read from the raw arguments when clap could not parse them.
fn json_logs_asked(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.iter().any(|a| a == "--log-format=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--log-format" && w[1] == "json")
}

/// An error as one JSON object, shaped as the JSON log lines are (`timestamp`, `level`,
/// `fields.message`, `target`), with the exit code beside the message.
fn json_error(message: &str, code: u8) -> String {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    serde_json::json!({
        "timestamp": now,
        "level": "ERROR",
        "fields": { "message": message.trim_end(), "exit_code": code },
        "target": "codeb",
    })
    .to_string()
}

fn init_logging(verbose: u8, format: LogFormat) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CODEB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("codeb={level}")));
    // Colours only on a terminal: a daemon's log goes to a file or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The default state directory: `$XDG_STATE_HOME/codeb`, else `$HOME/.local/state/codeb`; `None`
/// when neither is set to an absolute path. Never the working directory: a store created there by
/// accident (a service with no `HOME`) would hold secrets wherever the process happened to run.
pub fn default_state_dir() -> Option<PathBuf> {
    state_dir_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

fn state_dir_from(
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    // The XDG spec: a relative path in these variables is invalid and is ignored.
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(xdg_state_home)
        .map(|x| x.join("codeb"))
        .or_else(|| absolute(home).map(|h| h.join(".local/state/codeb")))
}

/// The refusal when no state directory is named and none can be derived.
pub const NO_STATE_DIR: &str = "no state directory: set --state-dir or CODEB_STATE_DIR (the systemd units use /var/lib/codeb), or XDG_STATE_HOME or HOME (then $XDG_STATE_HOME/codeb or $HOME/.local/state/codeb); codeb never keeps its store in the working directory";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_reaches_the_terminal_without_its_escapes_and_with_its_lines() {
        assert_eq!(
            printable("no project `x\u{1b}[31mred` is recorded\n  caused by: \r!"),
            "no project `x\u{fffd}[31mred` is recorded\n  caused by: \u{fffd}!"
        );
    }

    /// kubectl habits: every command's help ends with examples.
    #[test]
    fn every_command_has_examples_in_its_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                let after = sub.get_after_help().map(|h| h.to_string());
                if !after.is_some_and(|h| h.contains("Example")) {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(
            &<Cli as clap::CommandFactory>::command(),
            "codeb",
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "no examples in the help of: {missing:?}"
        );
    }

    #[test]
    fn the_state_dir_is_xdg_state_home_then_home_and_never_the_working_directory() {
        let s =
            |x: Option<&str>, h: Option<&str>| state_dir_from(x.map(Into::into), h.map(Into::into));
        assert_eq!(s(Some("/x"), Some("/h")), Some(PathBuf::from("/x/codeb")));
        assert_eq!(
            s(None, Some("/h")),
            Some(PathBuf::from("/h/.local/state/codeb"))
        );
        assert_eq!(
            s(Some("rel"), Some("/h")),
            Some(PathBuf::from("/h/.local/state/codeb"))
        );
        assert_eq!(s(None, None), None);
        assert_eq!(s(Some(""), Some("")), None);
        assert_eq!(s(None, Some(".")), None);
    }
}
