//! Backups and restores of each project environment's database and cache (see `docs/backups.md`).
//!
//! - [`manifest`]: what a backup is (its id, its manifest, the files' digests), which backups a
//!   retention policy deletes and when one is due. Plain data and pure functions.
//! - [`dest`]: the destination directory, `{dir}/{project}/{env}/{id}/`: a backup is written into
//!   a temporary directory and renamed into place, so a crash never leaves one that looks complete;
//!   listing, verifying (SHA-256 and size of every file) and deleting what retention says.
//! - [`postgres`]: `pg_dump` (custom format) of one environment's database with the row count of
//!   every table taken in the same snapshot, and the restore into a fresh database that counts the
//!   rows again and compares.
//! - [`cache`]: one environment's Redis keys (`SCAN` + `DUMP` + `PTTL`) in a length-prefixed file,
//!   and their restore (`RESTORE … REPLACE`) into the environment's own prefix.
//!
//! - [`env_store`]: the env store's sealed versions (`codeb env backup`'s file) into the same
//!   destination, under `_codeb/env/`.
//!
//! Must not: decide when to back up (the daemon's schedule and `codeb backup run` do, through
//! [`manifest::due`]), read a password from anywhere but what the caller hands over, or put a
//! password into an argument vector, a file or a message (`pg_dump` and `pg_restore` get it in
//! their own `PGPASSWORD` only).

pub mod cache;
pub mod dest;
pub mod manifest;
pub mod postgres;

use std::time::{Instant, SystemTime};

use std::path::PathBuf;

pub use dest::Dest;
pub use manifest::{Kind, Manifest};

/// What failed in a backup or a restore.
///
/// Worth a retry: [`Error::Io`], [`Error::Postgres`], [`Error::Redis`] and [`Error::Tool`] (a
/// server or a disk that may come back). The others say what is wrong with a backup or a
/// request and fail the same way again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file's SHA-256 is not the one its manifest records: the backup is refused.
    #[error("backup {id}: {file} is corrupted: its SHA-256 is {actual}, the manifest says {expected}; nothing was restored")]
    Checksum {
        id: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "backup {id}: {file} is {actual} bytes, the manifest says {expected}; nothing was restored"
    )]
    Size {
        id: String,
        file: String,
        expected: u64,
        actual: u64,
    },
    /// A manifest that cannot be read as one (too big, not JSON, a file name that is not plain).
    #[error("{}: not a codeb backup manifest: {reason}", path.display())]
    BadManifest { path: PathBuf, reason: String },
    /// A cache dump file that does not follow the format.
    #[error("{file}: {reason}")]
    BadFormat { file: String, reason: String },
    #[error("no backup {id} of {project}/{env} in {dir}")]
    NotFound {
        project: String,
        env: String,
        id: String,
        dir: String,
    },
    #[error("{tool} is not installed (it comes with the Debian package postgresql-client-15): codeb runs it for database backups and restores")]
    ToolMissing { tool: &'static str },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("PostgreSQL at {endpoint}: {message}")]
    Postgres { endpoint: String, message: String },
    #[error("Redis at {endpoint}: {message}")]
    Redis { endpoint: String, message: String },
    /// The request cannot be carried out as asked (a database that exists, a live database named
    /// as the target, a cache restore not asked for explicitly, a backup of another kind).
    #[error("{0}")]
    Refused(String),
    /// A restore whose row counts differ from the backup's.
    #[error("restored into {database}, but the row counts differ from backup {id}: {differ} (the database is kept for inspection)")]
    Mismatch {
        id: String,
        database: String,
        differ: String,
    },
}

impl Error {
    /// Whether the same call may succeed later unchanged.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Postgres { .. } | Error::Redis { .. } | Error::Tool { .. }
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a finished backup reports: its manifest, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Done {
    pub manifest: Manifest,
    /// Milliseconds from the start to the verified backup in place.
    pub elapsed_ms: u64,
    /// The ids retention deleted after it.
    pub deleted: Vec<String>,
}

/// Writes the env store's versions, still sealed (never the key), as `codeb env backup` does,
/// into `dest` under [`manifest::ENV_STORE`]; verifies it; keeps the newest `keep`. Restored with
/// `codeb env restore-backup --from {that backup's directory}`.
///
/// # Errors
/// [`Error::Io`], or the store's error as [`Error::Refused`].
pub async fn env_store(
    store: &crate::store::Store,
    dest: &Dest,
    keep: u32,
    now: SystemTime,
) -> Result<Done> {
    let start = Instant::now();
    let b = store
        .env_backup()
        .map_err(|e| Error::Refused(format!("reading the env store: {e}")))?;
    let versions = b.versions.len() as u64;
    let text = serde_json::to_vec_pretty(&b).expect("backups serialize");
    let (project, env) = manifest::ENV_STORE;
    let staging = dest.stage(project, env, Kind::Env, now)?;
    let path = staging.file(Kind::Env.file());
    std::fs::write(&path, &text).map_err(Error::io(&path))?;
    let m = Manifest {
        format: manifest::FORMAT,
        id: staging.id.clone(),
        kind: Kind::Env,
        project: project.into(),
        env: env.into(),
        source: "env store".into(),
        created: manifest::rfc3339(now),
        codeb_version: env!("CARGO_PKG_VERSION").to_string(),
        server_version: None,
        files: Vec::new(),
        tables: None,
        keys: Some(versions),
    };
    let key = crate::model::EnvKey::new(project, env);
    postgres::finish(dest, &key, staging, m, &[Kind::Env.file()], keep, start).await
}
