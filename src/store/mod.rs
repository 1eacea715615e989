//! The embedded store (redb): environment records and their release histories ([`releases`]),
//! recorded hosts, how each host was last seen to switch traffic, the journal, and the env
//! versions, sealed ([`secrets`]).
//!
//! One process owns a store at a time (an exclusive lock file beside the database). Every record
//! write is guarded by the generation the caller last read, so that a plan computed from an older
//! state cannot move the system backwards. The journal records each step's intent before it runs
//! and its outcome after, so a process killed at any point leaves a trail of what was in flight.
//!
//! No backend calls and no planning here.

mod audit;
mod data;
mod declared;
pub mod dir;
mod journal;
mod keys;
mod releases;
pub mod secrets;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use redb::{ConcurrencyMode, Database, ReadOnlyDatabase, ReadableTable, TableDefinition};

pub use crate::model::Override;
pub use audit::AuditFilter;
pub use journal::{JournalEntry, Phase};
pub use keys::{KeyError, LAST_USED_RESOLUTION_MS};
pub use releases::ActorGuard;

use crate::model::dns::ZoneRef;
use crate::model::{EnvKey, EnvRecord, HostRef, Recorded, SwitchMode};

const ENVS: TableDefinition<&str, &[u8]> = TableDefinition::new("envs");
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// Zones by domain. Holds the name of the API key's environment variable, never the key.
const ZONES: TableDefinition<&str, &[u8]> = TableDefinition::new("zones");
/// Per host: the switch mode of its last observation, and why it fell back to Caddy.
const SWITCH_MODES: TableDefinition<&str, &[u8]> = TableDefinition::new("switch_modes");
/// API keys by id: their record and HMAC tag, never the key.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// The HMAC secret keys are tagged with (created with the first key; never shown).
const AUTH_SECRET: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_secret");
/// The audit log by sequence number.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Facts about the store itself: [`OWNER_ID`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The store's random id, created with it: what its host owner marks carry (see
/// `reconcile::connect::owner`).
const OWNER_ID: &str = "owner-id";

/// The last declared spec of each environment, by store key (see `declared`).
const DECLARED: TableDefinition<&str, &[u8]> = TableDefinition::new("declared");
/// Release overrides set by `deploy`, by store key.
const OVERRIDES: TableDefinition<&str, &[u8]> = TableDefinition::new("overrides");
/// What codeb created in each environment's data services (see [`crate::model::data::DataRecord`]).
const DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("data");

/// A host's switch mode as recorded, with the reason for a fallback.
pub type SwitchModes = BTreeMap<String, (SwitchMode, Option<String>)>;

/// Store errors. Only `Conflict` is worth a retry (re-plan from the fresh state); the others need a
/// person.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the state directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An existing state directory or file whose owner is not this process's user.
    #[error("{path} belongs to uid {owner}, not to this process's user (uid {uid}): codeb keeps secrets there and uses only its own; run codeb as uid {owner}, or, if it is meant to be this user's, `chown -R {uid} {path}`")]
    Foreign { path: PathBuf, owner: u32, uid: u32 },
    /// An existing state directory or file that group or others may write.
    #[error("{path} is writable by group or others (mode {mode:04o}): whoever can write there can replace codeb's store, so codeb does not use it; check its content, then run `chmod {private:o} {path}`")]
    Writable {
        path: PathBuf,
        mode: u32,
        private: u32,
    },
    /// An existing state directory readable by others that holds other files than codeb's.
    #[error("{path} is readable by group or others (mode {mode:04o}) and holds other files than codeb's: codeb keeps secrets in its state directory and closes it to its owner, which it will not do to a shared directory; give codeb a directory of its own (--state-dir or CODEB_STATE_DIR), or `chmod 700 {path}`")]
    Shared { path: PathBuf, mode: u32 },
    #[error("the store in {path} is in use by {holder}")]
    Locked {
        path: PathBuf,
        holder: HolderOrUnknown,
    },
    /// A read-only request on a state directory without a store (a mistyped `CODEB_STATE_DIR`).
    #[error("there is no codeb store in {path}: nothing was ever applied with this state directory (is --state-dir or CODEB_STATE_DIR right?)")]
    NoStore { path: PathBuf },
    #[error("cannot open the store {path}")]
    Open {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    #[error("store I/O failed")]
    Storage(#[from] Box<redb::Error>),
    #[error("record {key} changed since it was planned (generation {expected:?}, now {found:?}); plan again")]
    Conflict {
        key: String,
        expected: Option<u64>,
        found: Option<u64>,
    },
    #[error("record {key} is unreadable")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when the state directory itself is refused (`Foreign`, `Writable`, `Shared`): a person must fix
    /// it, as they must fix invalid input (the CLI's exit 2).
    pub fn is_refused_dir(&self) -> bool {
        matches!(
            self,
            Error::Foreign { .. } | Error::Writable { .. } | Error::Shared { .. }
        )
    }
}

/// Whether every table of this version of codeb exists (a store written by an older version may
/// lack some: a writer creates them, a reader cannot).
fn tables_exist(txn: &redb::ReadTransaction) -> bool {
    txn.open_table(ENVS).is_ok()
        && txn.open_table(HOSTS).is_ok()
        && txn.open_table(JOURNAL).is_ok()
        && txn.open_table(ZONES).is_ok()
        && txn.open_table(SWITCH_MODES).is_ok()
        && txn.open_table(DECLARED).is_ok()
        && txn.open_table(OVERRIDES).is_ok()
        && txn.open_table(DATA).is_ok()
        && txn.open_table(KEYS).is_ok()
        && txn.open_table(AUTH_SECRET).is_ok()
        && txn.open_table(AUDIT).is_ok()
        && txn
            .open_table(META)
            .is_ok_and(|t| t.get(OWNER_ID).is_ok_and(|v| v.is_some()))
        && txn.open_table(secrets::ENV_VERSIONS).is_ok()
        && txn.open_table(secrets::ENV_INLINE).is_ok()
        && txn.open_table(secrets::ENV_META).is_ok()
        && txn.open_table(releases::RELEASES).is_ok()
}

/// Creates every table, and the store's owner id, in one commit.
fn create_tables(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(storage)?;
    txn.open_table(ENVS).map_err(storage)?;
    txn.open_table(HOSTS).map_err(storage)?;
    txn.open_table(JOURNAL).map_err(storage)?;
    txn.open_table(ZONES).map_err(storage)?;
    txn.open_table(SWITCH_MODES).map_err(storage)?;
    txn.open_table(DECLARED).map_err(storage)?;
    txn.open_table(OVERRIDES).map_err(storage)?;
    txn.open_table(DATA).map_err(storage)?;
    txn.open_table(KEYS).map_err(storage)?;
    txn.open_table(AUTH_SECRET).map_err(storage)?;
    txn.open_table(AUDIT).map_err(storage)?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        if meta.get(OWNER_ID).map_err(storage)?.is_none() {
            let mut id = [0u8; 16];
            getrandom::fill(&mut id).expect("the OS gives random bytes");
            let hex = crate::auth::hex(&id);
            meta.insert(OWNER_ID, hex.as_bytes()).map_err(storage)?;
        }
    }
    txn.open_table(secrets::ENV_VERSIONS).map_err(storage)?;
    txn.open_table(secrets::ENV_INLINE).map_err(storage)?;
    txn.open_table(secrets::ENV_META).map_err(storage)?;
    txn.open_table(releases::RELEASES).map_err(storage)?;
    txn.commit().map_err(storage)?;
    Ok(())
}

fn storage(e: impl Into<redb::Error>) -> Error {
    Error::Storage(Box::new(e.into()))
}

/// The database of a store: written by the one process that holds the store's lock, read by any
/// other (redb's `SingleWriter` mode: readers in other processes share the file with the writer and
/// see its commits, so a `get` is answered while an `apply` waits on a health check).
enum Db {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
}

/// A write attempted on a store opened read-only: a request that was judged to write nothing
/// did write (a bug), told apart from a storage failure.
#[derive(Debug)]
enum BeginWrite {
    Txn(redb::TransactionError),
    ReadOnly,
}

impl From<BeginWrite> for redb::Error {
    fn from(e: BeginWrite) -> Self {
        match e {
            BeginWrite::Txn(e) => e.into(),
            BeginWrite::ReadOnly => redb::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ReadOnlyFilesystem,
                "this codeb process opened the store read-only (it answers a read while another process holds the store) and cannot change it",
            )),
        }
    }
}

impl Db {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        use redb::ReadableDatabase;
        match self {
            Db::Writable(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        }
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, BeginWrite> {
        match self {
            Db::Writable(db) => db.begin_write().map_err(BeginWrite::Txn),
            Db::ReadOnly(_) => Err(BeginWrite::ReadOnly),
        }
    }
}

/// The process that holds a store, as it wrote itself into the lock file: named in the refusal
/// another process gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// What it runs: `codeb apply`, `codeb serve`, ... (never its arguments: `env set` carries values).
    pub what: String,
    pub pid: u32,
    /// Since when (Unix ms).
    pub since_ms: u64,
}

impl Holder {
    /// The holder recorded in `dir`'s lock file, if it is readable.
    fn read(dir: &Path) -> Option<Holder> {
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).ok()?;
        serde_json::from_str(text.trim()).ok()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.since_ms);
        write!(
            f,
            "`{}` (pid {}, since {})",
            self.what,
            self.pid,
            humantime::format_rfc3339_seconds(since)
        )
    }
}

/// How a refusal names a holder that wrote nothing readable (a codeb before holders were recorded).
impl std::fmt::Display for HolderOrUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(h) => h.fmt(f),
            None => f.write_str("another codeb process (is `codeb watch` running?)"),
        }
    }
}

/// [`Holder`], when the lock file named one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderOrUnknown(pub Option<Holder>);

const LOCK_FILE: &str = "codeb.lock";
const DB_FILE: &str = "codeb.redb";

/// The store of one state directory.
pub struct Store {
    db: Db,
    /// The lock held while the store is open for writing (none for a read-only one).
    _lock: Option<File>,
    recorded: Cache,
    /// The state directory (where the env key file is looked for).
    dir: PathBuf,
    /// The env keyring, once read (see [`secrets`]).
    keyring: std::sync::OnceLock<std::sync::Arc<secrets::Keyring>>,
    /// Who starts the releases of each environment now (see [`releases`]).
    actors: std::sync::Mutex<releases::Actors>,
}

/// The last [`Recorded`] read, decoded, with the write version it was read at. The daemon answers
/// every API read from the records (`GET /api/v1/projects` decoded 100 records per request: half
/// its CPU under load); one process owns the store (the lock), so a version bumped after each
/// commit that changes records is all that invalidation needs.
#[derive(Default)]
struct Cache {
    /// Bumped after every commit that changes envs, hosts or zones.
    version: std::sync::atomic::AtomicU64,
    value: std::sync::Mutex<Option<(u64, std::sync::Arc<Recorded>)>>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Guarantees
    /// `dir` is 0700 and its files 0600, owned by this process's user: created so, or tightened
    /// from a wider mode that only let others read (see [`dir`]).
    ///
    /// # Errors
    /// `Locked` when another process holds the store; `Foreign` or `Writable` when `dir` or a
    /// file in it belongs to another user or may be written by others; `Shared` when `dir` is
    /// readable by others and holds more than codeb's files (it is not tightened).
    pub fn open(dir: &Path) -> Result<Store> {
        Self::open_as(dir, "codeb")
    }

    /// Opens the store for writing as [`open`](Self::open) does, recording `what` (`codeb apply`)
    /// in its lock file so that another process is told who holds it.
    ///
    /// # Errors
    /// As [`open`](Self::open); `Locked` names the holder.
    pub fn open_as(dir: &Path, what: &str) -> Result<Store> {
        Self::open_with(dir, what, ConcurrencyMode::SingleWriter)
    }

    /// Opens the store for `codeb watch`/`serve`: as [`open_as`](Self::open_as), but with no
    /// other process reading the file beside it. Every other command reaches a running daemon
    /// through its socket, reads included, so nothing needs to share the file; and a commit that
    /// no other process may follow is redb's one-phase commit, one `fdatasync` instead of two
    /// (with the file locks around each): a switch waits for one commit before its kernel
    /// write. A command that opened the file read-only before the daemon started (it found no
    /// daemon) is waited for, up to 5 s.
    ///
    /// # Errors
    /// As [`open_as`](Self::open_as); `Open` when a reader still holds the file after 5 s.
    pub fn open_daemon(dir: &Path, what: &str) -> Result<Store> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Self::open_with(dir, what, ConcurrencyMode::ExclusiveWriter) {
                Err(Error::Open { source, .. })
                    if matches!(*source, redb::DatabaseError::DatabaseAlreadyOpen)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_with(dir: &Path, what: &str, mode: ConcurrencyMode) -> Result<Store> {
        use std::io::{Seek, Write};
        dir::prepare(dir)?;
        let mut lock = dir::open_private(&dir.join(LOCK_FILE))?;
        if lock.try_lock().is_err() {
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                holder: HolderOrUnknown(Holder::read(dir)),
            });
        }
        let holder = Holder {
            what: what.to_string(),
            pid: std::process::id(),
            since_ms: crate::reconcile::now_ms(),
        };
        let text = serde_json::to_string(&holder).expect("a holder serializes");
        // Best effort: the lock is what excludes; the text only names the holder.
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(format!("{text}\n").as_bytes()));
        let path = dir.join(DB_FILE);
        let open_error = |source| Error::Open {
            path: path.clone(),
            source: Box::new(source),
        };
        // redb would create the file with the umask's mode: it gets the file opened 0600 instead.
        let file = dir::open_private(&path)?;
        let db = redb::backends::FileBackend::new(file)
            .and_then(|backend| {
                Database::builder()
                    .set_concurrency_mode(mode)
                    .create_with_backend(backend)
            })
            .map_err(open_error)?;
        // Tables are created once; every later open only reads (a write would cost a commit, and
        // its fsync, on every command).
        let exist = {
            use redb::ReadableDatabase;
            db.begin_read().is_ok_and(|txn| tables_exist(&txn))
        };
        if !exist {
            create_tables(&db)?;
        }
        Ok(Store {
            db: Db::Writable(db),
            _lock: Some(lock),
            recorded: Cache::default(),
            dir: dir.to_path_buf(),
            keyring: std::sync::OnceLock::new(),
            actors: Default::default(),
        })
    }

    /// Opens the store of `dir` to read it, taking no lock and writing nothing into it (the file
    /// stays byte-identical; a directory or file readable by others is still made private, as by
    /// [`open`](Self::open)), beside the process that may hold it for writing.
    ///
    /// # Errors
    /// `NoStore` when `dir` holds no store; `Foreign` or `Writable` as [`open`](Self::open);
    /// `Open` when the file cannot be read as it is (it needs a repair after a crash, or tables of
    /// this version of codeb that only a writer creates: [`open`](Self::open) it instead).
    pub fn open_read_only(dir: &Path) -> Result<Store> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Err(Error::NoStore {
                path: dir.to_path_buf(),
            });
        }
        // As a writer would: an unsafe directory or file is refused, and one only others may
        // read is closed to them (its modes change; the store's content does not).
        dir::prepare(dir)?;
        drop(dir::open_private(&path)?);
        let open_error = |source| Error::Open {
            path: path.clone(),
            source: Box::new(source),
        };
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only(&path)
            .map_err(open_error)?;
        let complete = {
            use redb::ReadableDatabase;
            db.begin_read().is_ok_and(|txn| tables_exist(&txn))
        };
        if !complete {
            return Err(open_error(redb::DatabaseError::UpgradeRequired(0)));
        }
        Ok(Store {
            db: Db::ReadOnly(db),
            _lock: None,
            recorded: Cache::default(),
            dir: dir.to_path_buf(),
            keyring: std::sync::OnceLock::new(),
            actors: Default::default(),
        })
    }

    /// A store that records nothing, in memory, for `dir` (where no store exists yet): what a
    /// `diff` plans against before the first apply, creating nothing on disk.
    ///
    /// # Errors
    /// `Storage` when memory cannot be had.
    pub fn empty(dir: &Path) -> Result<Store> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|source| Error::Open {
                path: dir.to_path_buf(),
                source: Box::new(source),
            })?;
        create_tables(&db)?;
        Ok(Store {
            db: Db::Writable(db),
            _lock: None,
            recorded: Cache::default(),
            dir: dir.to_path_buf(),
            keyring: std::sync::OnceLock::new(),
            actors: Default::default(),
        })
    }

    /// Whether this store was opened read-only ([`open_read_only`](Self::open_read_only)).
    pub fn is_read_only(&self) -> bool {
        matches!(self.db, Db::ReadOnly(_))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store's random id (see [`OWNER_ID`]).
    pub fn owner_id(&self) -> Result<String> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let id = meta
            .get(OWNER_ID)
            .map_err(storage)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        Ok(id.unwrap_or_default())
    }

    /// Everything recorded, as the planner reads it.
    pub fn load(&self) -> Result<Recorded> {
        Ok((*self.recorded()?).clone())
    }

    /// Everything recorded, shared: decoded once per change of the records.
    ///
    /// # Guarantees
    /// Never older than the last commit this process made before the call: a commit that
    /// changes records bumps the version before it returns, and a read is kept only when no
    /// commit ran while it was read.
    pub fn recorded(&self) -> Result<std::sync::Arc<Recorded>> {
        use std::sync::atomic::Ordering;
        let version = self.recorded.version.load(Ordering::Acquire);
        let cached = self.cache().clone();
        if let Some((v, r)) = cached {
            if v == version {
                return Ok(r);
            }
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let envs: BTreeMap<String, EnvRecord> = read_all(&txn, ENVS)?;
        let read = std::sync::Arc::new(Recorded {
            envs: envs.into_values().map(|r| (r.key.clone(), r)).collect(),
            hosts: read_all(&txn, HOSTS)?,
            zones: read_all(&txn, ZONES)?,
        });
        if self.recorded.version.load(Ordering::Acquire) == version {
            *self.cache() = Some((version, read.clone()));
        }
        Ok(read)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Option<(u64, std::sync::Arc<Recorded>)>> {
        self.recorded
            .value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits a transaction that changes records, then invalidates [`Store::recorded`].
    fn commit_records(&self, txn: redb::WriteTransaction) -> Result<()> {
        let result = txn.commit().map_err(storage);
        // Bumped whatever the outcome: a failed commit may have changed nothing, and a spare
        // re-read costs less than a doubt.
        self.recorded
            .version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        result
    }

    /// The recorded hosts only (a reconcile of one environment needs them, not every record).
    pub fn hosts(&self) -> Result<BTreeMap<String, HostRef>> {
        read_all(&self.db.begin_read().map_err(storage)?, HOSTS)
    }

    pub fn env(&self, key: &EnvKey) -> Result<Option<EnvRecord>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ENVS).map_err(storage)?;
        let sk = key.store_key();
        let v = table.get(sk.as_str()).map_err(storage)?;
        v.map(|v| decode(&sk, v.value())).transpose()
    }

    /// Writes `rec` if the stored generation is `expected` (`None`: no record yet), and returns it
    /// with its new generation.
    ///
    /// # Errors
    /// `Conflict` when the record moved since `expected` was read.
    pub fn put_env(&self, rec: EnvRecord, expected: Option<u64>) -> Result<EnvRecord> {
        let mut w = self.write()?;
        let rec = w.put_env(rec, expected)?;
        w.commit()?;
        Ok(rec)
    }

    /// Deletes a record if its generation is `expected`.
    pub fn delete_env(&self, key: &EnvKey, expected: Option<u64>) -> Result<()> {
        let mut w = self.write()?;
        w.delete_env(key, expected)?;
        w.commit()
    }

    /// A transaction of record writes and journal entries that commits (one fsync) when
    /// [`Writer::commit`] is called, and changes nothing when dropped without it.
    pub fn write(&self) -> Result<Writer<'_>> {
        Ok(Writer {
            store: self,
            txn: self.db.begin_write().map_err(storage)?,
            records: false,
        })
    }

    /// Forgets a recorded host (and how it was last seen to switch traffic).
    pub fn delete_host(&self, name: &str) -> Result<()> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(HOSTS)
            .map_err(storage)?
            .remove(name)
            .map_err(storage)?;
        txn.open_table(SWITCH_MODES)
            .map_err(storage)?
            .remove(name)
            .map_err(storage)?;
        self.commit_records(txn)
    }

    /// Records the hosts the manifests name (so that `delete` works without manifests). Writes only
    /// what changed.
    pub fn put_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a HostRef>) -> Result<()> {
        self.put_changed(HOSTS, hosts.into_iter().map(|h| (h.name.as_str(), h)))
    }

    /// Records the Zones the manifests declare (so that `delete` removes DNS records without
    /// manifests). Writes only what changed; a Zone no longer declared stays recorded, as hosts do.
    pub fn put_zones<'a>(&self, zones: impl IntoIterator<Item = &'a ZoneRef>) -> Result<()> {
        self.put_changed(ZONES, zones.into_iter().map(|z| (z.name.as_str(), z)))
    }

    /// How each host was last seen to switch traffic (an observation, not an intent: `get hosts`
    /// shows it without connecting to the hosts).
    pub fn switch_modes(&self) -> Result<SwitchModes> {
        read_all(&self.db.begin_read().map_err(storage)?, SWITCH_MODES)
    }

    /// Records the switch modes that changed; writes nothing when none did.
    pub fn put_switch_modes(&self, modes: &SwitchModes) -> Result<()> {
        self.put_changed(SWITCH_MODES, modes.iter().map(|(n, m)| (n.as_str(), m)))
    }

    /// Writes the `(name, value)` pairs whose stored value differs, in one transaction; none when
    /// nothing changed (no commit, no fsync).
    ///
    /// Each value is encoded and compared with the stored bytes first: equal bytes are an equal
    /// value, and only a stored value whose bytes differ is decoded to compare (an older
    /// encoding of the same value is not rewritten). Rows of other names are not read.
    fn put_changed<'a, T>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        items: impl IntoIterator<Item = (&'a str, &'a T)>,
    ) -> Result<()>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + 'a,
    {
        let mut changed: Vec<(&str, Vec<u8>)> = Vec::new();
        {
            let txn = self.db.begin_read().map_err(storage)?;
            let table = txn.open_table(def).map_err(storage)?;
            for (name, v) in items {
                let bytes = serde_json::to_vec(v).expect("records serialize");
                let same = match table.get(name).map_err(storage)? {
                    None => false,
                    Some(s) if s.value() == bytes.as_slice() => true,
                    Some(s) => decode::<T>(name, s.value())? == *v,
                };
                if !same {
                    changed.push((name, bytes));
                }
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(def).map_err(storage)?;
            for (name, bytes) in changed {
                table.insert(name, bytes.as_slice()).map_err(storage)?;
            }
        }
        self.commit_records(txn)
    }

    /// Appends to the journal; returns the entry's sequence number.
    pub fn journal(&self, entry: JournalEntry) -> Result<u64> {
        let mut w = self.write()?;
        let seq = w.journal(entry)?;
        w.commit()?;
        Ok(seq)
    }

    /// The sequence number of the journal's last entry (0 when empty): what a later
    /// [`Store::journaled_since`] compares against.
    pub fn journal_seq(&self) -> Result<u64> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(JOURNAL).map_err(storage)?;
        let last = table.last().map_err(storage)?.map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    /// The journal entries after `seq`, oldest first.
    pub fn journaled_since(&self, seq: u64) -> Result<Vec<JournalEntry>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(JOURNAL).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.range(seq.saturating_add(1)..).map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            out.push(decode(&k.value().to_string(), v.value())?);
        }
        Ok(out)
    }

    /// The journal, oldest first, optionally only one project's entries.
    pub fn journal_entries(&self, project: Option<&str>) -> Result<Vec<JournalEntry>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(JOURNAL).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            let e: JournalEntry = decode(&k.value().to_string(), v.value())?;
            if project.is_none_or(|p| e.key.as_ref().is_some_and(|k| k.project == p)) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Intents with no outcome: steps that were in flight when a process stopped.
    pub fn interrupted(&self) -> Result<Vec<JournalEntry>> {
        let all = self.journal_entries(None)?;
        let done: std::collections::BTreeSet<u64> = all.iter().filter_map(|e| e.intent).collect();
        Ok(all
            .into_iter()
            .filter(|e| e.phase == Phase::Intent && !done.contains(&e.seq))
            .collect())
    }
}

/// One write transaction of the store (see [`Store::write`]).
pub struct Writer<'s> {
    store: &'s Store,
    txn: redb::WriteTransaction,
    /// Whether a record changed, so that the commit invalidates [`Store::recorded`].
    records: bool,
}

impl Writer<'_> {
    /// As [`Store::env`], as this transaction sees it.
    pub fn env(&self, key: &EnvKey) -> Result<Option<EnvRecord>> {
        let table = self.txn.open_table(ENVS).map_err(storage)?;
        let sk = key.store_key();
        let v = table.get(sk.as_str()).map_err(storage)?;
        v.map(|v| decode(&sk, v.value())).transpose()
    }

    /// As [`Store::put_env`], inside this transaction; the environment's release history
    /// follows the write (see [`releases`]).
    pub fn put_env(&mut self, mut rec: EnvRecord, expected: Option<u64>) -> Result<EnvRecord> {
        let sk = rec.key.store_key();
        let mut table = self.txn.open_table(ENVS).map_err(storage)?;
        let before = stored(&table, &sk)?;
        let found = before.as_ref().map(|r| r.generation);
        if found != expected {
            return Err(Error::Conflict {
                key: sk,
                expected,
                found,
            });
        }
        rec.generation = found.map_or(1, |g| g + 1);
        let bytes = serde_json::to_vec(&rec).expect("records serialize");
        table
            .insert(sk.as_str(), bytes.as_slice())
            .map_err(storage)?;
        drop(table);
        releases::follow(self.store, &self.txn, &rec.key, before.as_ref(), Some(&rec))?;
        self.records = true;
        Ok(rec)
    }

    /// As [`Store::delete_env`], inside this transaction; the environment's release history goes
    /// with it.
    pub fn delete_env(&mut self, key: &EnvKey, expected: Option<u64>) -> Result<()> {
        let sk = key.store_key();
        let mut table = self.txn.open_table(ENVS).map_err(storage)?;
        let found = stored(&table, &sk)?.map(|r| r.generation);
        if found.is_some() && found != expected {
            return Err(Error::Conflict {
                key: sk,
                expected,
                found,
            });
        }
        table.remove(sk.as_str()).map_err(storage)?;
        drop(table);
        releases::follow(self.store, &self.txn, key, None, None)?;
        self.records = true;
        Ok(())
    }

    /// As [`Store::journal`], inside this transaction; returns the entry's sequence number.
    pub fn journal(&mut self, mut entry: JournalEntry) -> Result<u64> {
        audit::append(&mut self.txn.open_table(JOURNAL).map_err(storage)?, |seq| {
            entry.seq = seq;
            serde_json::to_vec(&entry).expect("journal entries serialize")
        })
    }

    /// Commits everything written, at once.
    pub fn commit(self) -> Result<()> {
        if self.records {
            self.store.commit_records(self.txn)
        } else {
            self.txn.commit().map_err(storage)
        }
    }
}

/// The record stored under `sk`, if any.
fn stored(table: &redb::Table<&str, &[u8]>, sk: &str) -> Result<Option<EnvRecord>> {
    match table.get(sk).map_err(storage)? {
        Some(v) => Ok(Some(decode::<EnvRecord>(sk, v.value())?)),
        None => Ok(None),
    }
}

/// Every entry of a table keyed by name, decoded.
fn read_all<T: serde::de::DeserializeOwned>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
) -> Result<BTreeMap<String, T>> {
    let mut out = BTreeMap::new();
    for item in txn
        .open_table(def)
        .map_err(storage)?
        .iter()
        .map_err(storage)?
    {
        let (k, v) = item.map_err(storage)?;
        out.insert(k.value().to_string(), decode(k.value(), v.value())?);
    }
    Ok(out)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests;
