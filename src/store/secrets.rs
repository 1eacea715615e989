//! The env store: versions of each project environment's variables, encrypted at rest, and the
//! key they are sealed under.
//!
//! - **Versions** are immutable and kept forever: a change writes version N+1 in one redb
//!   transaction (a process killed mid-write leaves N or N+1, never a torn one); a restore of N
//!   writes a new version equal to N. Each version's values are sealed with XChaCha20-Poly1305
//!   under a fresh random 192-bit nonce, with associated data binding the project, the
//!   environment and the version number (a sealed blob moved to another key or version does not
//!   open). What is in the clear: the names, a short keyed digest of each value (HMAC-SHA256:
//!   nobody holding the store alone can test a guess), the version, when and who.
//! - **Inline env** of releases (the manifests' `env:`) is sealed the same way, by its keyed
//!   digest, so that a slot can be recreated from its record without a value in any record.
//! - **The key**: 32 random bytes in `env.key` in the state directory (created 0600 on first
//!   use, never in `codeb.redb`, never in a backup), or the systemd credential
//!   `$CREDENTIALS_DIRECTORY/codeb-env-key`. Encryption and digest keys are derived from it with
//!   HMAC-SHA256 under distinct labels. A check value in the store (a keyed MAC of a constant)
//!   tells a wrong key from a missing one. Without the key, codeb says which file and what to do,
//!   and changes nothing.
//!
//! Sealing or opening a version of 50 keys costs a few microseconds (`benches/env.rs`,
//! docs/benchmarks.md): nothing next to the redb commit of each version.
//!
//! Must not: log, print or return a value except to the service that asked for it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{decode, storage, Store};
use crate::auth::hex;
use crate::model::vars::{EnvValues, InlineEnv};
use crate::model::EnvKey;

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "env.key";
/// The systemd credential codeb reads the key from when `$CREDENTIALS_DIRECTORY` holds it.
pub const CREDENTIAL: &str = "codeb-env-key";
/// The longest value: env is for configuration and secrets, not files (a certificate chain is a
/// few KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The most variables in one version.
pub const MAX_KEYS: usize = 1000;

/// Versions by `{project}/{env}/{version:020}` (so that one environment's are one range, in order).
pub(super) const ENV_VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("env_versions");
/// Sealed inline env of releases by `{project}/{env}/{digest}`.
pub(super) const ENV_INLINE: TableDefinition<&str, &[u8]> = TableDefinition::new("env_inline");
/// The key check value.
pub(super) const ENV_META: TableDefinition<&str, &[u8]> = TableDefinition::new("env_meta");
const KEY_CHECK: &str = "key-check";

/// Env store errors. `Conflict` (via `Store`) is worth a retry; the key errors need a person.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("the env key file {path} is missing, but the store holds env sealed under it ({what}): restore that file from where its backup is kept (it is never in codeb.redb nor in `codeb env backup`), or provide it as the systemd credential {CREDENTIAL}; nothing was changed")]
    MissingKey { path: PathBuf, what: String },
    #[error("the env key {path} is not the key the store's env was sealed with: put back the right key file (or credential); nothing was changed")]
    WrongKey { path: PathBuf },
    #[error("the env key {path} holds {len} bytes: expected 32 random bytes, raw or as 64 hex digits; nothing was changed")]
    BadKey { path: PathBuf, len: usize },
    #[error("the env key {path} is readable or writable by group or others (mode {mode:04o}): whoever reads it can decrypt every secret; check who did, then `chmod 600 {path}`")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("the env key {path} belongs to uid {owner}, not to this process's user (uid {uid}): `chown {uid} {path}`")]
    KeyOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error("env key {path}")]
    KeyIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("version {version} of {key}'s env does not decrypt: the store or the key was altered; nothing was changed")]
    Tampered { key: EnvKey, version: u64 },
    #[error("{key} has no env version {version} (see `codeb env history {project} --env {env}`)", project = key.project, env = key.env)]
    NoVersion { key: EnvKey, version: u64 },
    #[error("the inline env of a release of {key} is not in the store: apply its manifests again")]
    NoInline { key: EnvKey },
    #[error("{key}'s env changed while this change was made (version {found:?}, expected {expected:?}); try again")]
    Moved {
        key: EnvKey,
        expected: Option<u64>,
        found: Option<u64>,
    },
    #[error("the env backup is unreadable: {0}")]
    BadBackup(String),
    #[error("the store already holds env versions ({0}): a backup is restored into an empty env store only")]
    NotEmpty(String),
    #[error("cannot draw random bytes")]
    Random(#[source] getrandom::Error),
    #[error(transparent)]
    Store(#[from] super::Error),
}

impl EnvError {
    /// A person must act on the key (exit 2 / HTTP 400 rather than a failure).
    pub fn is_key_problem(&self) -> bool {
        matches!(
            self,
            EnvError::MissingKey { .. }
                | EnvError::WrongKey { .. }
                | EnvError::BadKey { .. }
                | EnvError::KeyMode { .. }
                | EnvError::KeyOwner { .. }
        )
    }
}

type Result<T, E = EnvError> = std::result::Result<T, E>;

fn db(e: impl Into<redb::Error>) -> EnvError {
    EnvError::Store(storage(e))
}

/// The keys derived from the env key: one to seal, one for digests.
pub struct Keyring {
    cipher: XChaCha20Poly1305,
    digest_key: [u8; 32],
    /// Where it was read from (named in errors).
    pub source: PathBuf,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({})", self.source.display())
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        // Length-prefixed: `a`+`bc` and `ab`+`c` differ.
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A sealed blob: nonce and ciphertext (with its tag), hex in the store's JSON.
#[derive(Clone, Serialize, Deserialize)]
pub struct Sealed {
    nonce: String,
    sealed: String,
}

impl Keyring {
    /// The keyring of a 32-byte master key.
    pub fn from_master(master: &[u8; 32], source: PathBuf) -> Keyring {
        let enc = hmac(master, &[b"codeb env encryption v1"]);
        Keyring {
            cipher: XChaCha20Poly1305::new(&enc.into()),
            digest_key: hmac(master, &[b"codeb env digest v1"]),
            source,
        }
    }

    /// The value stored to recognise this key (a MAC of a constant: it reveals nothing).
    fn check(&self) -> String {
        hex(&hmac(&self.digest_key, &[b"codeb env key check"])[..16])
    }

    /// Seals `plain` under a fresh nonce, bound to `aad`.
    ///
    /// # Errors
    /// `Random` when the OS gives no random bytes.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Sealed> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(EnvError::Random)?;
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length codeb stores");
        Ok(Sealed {
            nonce: hex(&nonce),
            sealed: hex(&ct),
        })
    }

    /// Opens a blob sealed under `aad`; `None` when it does not authenticate.
    pub fn open(&self, aad: &str, s: &Sealed) -> Option<Vec<u8>> {
        let nonce = unhex(&s.nonce).filter(|n| n.len() == 24)?;
        let ct = unhex(&s.sealed)?;
        self.cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }

    /// The short digest of one value shown by `env list` (48 bits, keyed: it tells whether a
    /// value changed, and nobody without the key can test a guess against it).
    pub fn value_digest(&self, key: &EnvKey, name: &str, value: &str) -> String {
        let mac = hmac(
            &self.digest_key,
            &[
                b"value",
                key.project.as_bytes(),
                key.env.as_bytes(),
                name.as_bytes(),
                value.as_bytes(),
            ],
        );
        hex(&mac[..6])
    }

    /// The digest of a release's inline env (128 bits, keyed): what records and the release
    /// hash hold instead of the values.
    pub fn inline_digest(&self, values: &EnvValues) -> String {
        let mut parts: Vec<&[u8]> = vec![b"inline"];
        for (k, v) in &values.0 {
            parts.push(k.as_bytes());
            parts.push(v.as_bytes());
        }
        hex(&hmac(&self.digest_key, &parts)[..16])
    }

    /// Seals a set of values for `aad`.
    pub fn seal_values(&self, aad: &str, values: &EnvValues) -> Result<Sealed> {
        let plain = serde_json::to_vec(&values.0).expect("values serialize");
        self.seal(aad, &plain)
    }

    /// Opens a set of values sealed for `aad`; `None` when it does not authenticate.
    pub fn open_values(&self, aad: &str, s: &Sealed) -> Option<EnvValues> {
        let plain = self.open(aad, s)?;
        serde_json::from_slice(&plain).ok().map(EnvValues)
    }
}

/// One stored version: metadata in the clear, values sealed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredVersion {
    pub project: String,
    pub environment: String,
    pub version: u64,
    pub at_ms: u64,
    /// Who made it (`cli (uid 0)`, `key 3f9a… (ci)`).
    pub by: String,
    /// Each name and the keyed digest of its value.
    pub digests: BTreeMap<String, String>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// The version it restores, for `codeb env restore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
    values: Sealed,
}

impl std::fmt::Debug for StoredVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredVersion({}/{} v{})",
            self.project, self.environment, self.version
        )
    }
}

impl StoredVersion {
    pub fn key(&self) -> EnvKey {
        EnvKey::new(self.project.clone(), self.environment.clone())
    }
}

/// The associated data of a version: the blob opens only as this version of this environment.
fn version_aad(key: &EnvKey, version: u64) -> String {
    format!("codeb-env-v1\0{}\0{}\0{version}", key.project, key.env)
}

fn inline_aad(key: &EnvKey, digest: &str) -> String {
    format!("codeb-inline-v1\0{}\0{}\0{digest}", key.project, key.env)
}

fn version_id(key: &EnvKey, version: u64) -> String {
    format!("{}/{}/{version:020}", key.project, key.env)
}

fn prefix(key: &EnvKey) -> String {
    format!("{}/{}/", key.project, key.env)
}

/// What `codeb env backup` writes: every version and sealed inline env, still encrypted, and the
/// key check (so that a restore under another key is refused). Never the key.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    pub format: String,
    pub key_check: Option<String>,
    pub versions: Vec<StoredVersion>,
    pub inline: BTreeMap<String, Sealed>,
}

/// The format name of a [`Backup`].
pub const BACKUP_FORMAT: &str = "codeb-env-backup-v1";

/// Where the env key comes from.
pub fn key_path(state_dir: &Path) -> (PathBuf, bool) {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = PathBuf::from(dir).join(CREDENTIAL);
        if p.exists() {
            return (p, true);
        }
    }
    (state_dir.join(KEY_FILE), false)
}

/// Reads a key file: 32 raw bytes, or 64 hex digits (a trailing newline allowed).
fn read_key(path: &Path, credential: bool) -> Result<Option<[u8; 32]>> {
    let io = |source| EnvError::KeyIo {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    // A systemd credential is systemd's to protect; the state directory's file is codeb's.
    if !credential {
        let uid = super::dir::process_uid().map_err(io)?;
        if meta.uid() != uid {
            return Err(EnvError::KeyOwner {
                path: path.to_path_buf(),
                owner: meta.uid(),
                uid,
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(EnvError::KeyMode {
                path: path.to_path_buf(),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 256), &mut bytes).map_err(io)?;
    let text = std::str::from_utf8(&bytes).ok().map(str::trim_end);
    let raw = match text.filter(|t| t.len() == 64).and_then(unhex) {
        Some(decoded) => decoded,
        None => bytes.clone(),
    };
    <[u8; 32]>::try_from(raw.as_slice())
        .map(Some)
        .map_err(|_| EnvError::BadKey {
            path: path.to_path_buf(),
            len: bytes.len(),
        })
}

/// Creates the key file 0600 with 32 random bytes (as hex), durably.
fn create_key(path: &Path) -> Result<[u8; 32]> {
    let io = |source| EnvError::KeyIo {
        path: path.to_path_buf(),
        source,
    };
    let mut master = [0u8; 32];
    getrandom::fill(&mut master).map_err(EnvError::Random)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{}\n", hex(&master)).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(master)
}

impl Store {
    /// What the store holds that is sealed under the env key, for the missing-key message
    /// (`None`: nothing, a key may be made).
    fn sealed_holdings(&self) -> Result<Option<String>> {
        let txn = self.db.begin_read().map_err(db)?;
        let versions = txn
            .open_table(ENV_VERSIONS)
            .map_err(db)?
            .len()
            .map_err(db)?;
        let inline = txn.open_table(ENV_INLINE).map_err(db)?.len().map_err(db)?;
        let check = txn
            .open_table(ENV_META)
            .map_err(db)?
            .get(KEY_CHECK)
            .map_err(db)?
            .is_some();
        Ok((versions > 0 || inline > 0 || check)
            .then(|| format!("{versions} env versions, {inline} sealed release env sets")))
    }

    /// The env keyring: read from the key file (or credential), or, with `create` and when the
    /// store holds nothing sealed, created. `None` without `create` when there is none yet.
    ///
    /// # Errors
    /// `MissingKey` when the store holds sealed env and the file is gone; `WrongKey` when the
    /// file is not the store's key; `BadKey`, `KeyMode`, `KeyOwner`, `KeyIo` for an unusable file.
    pub fn keyring(&self, create: bool) -> Result<Option<Arc<Keyring>>> {
        if let Some(k) = self.keyring.get() {
            return Ok(Some(k.clone()));
        }
        let (path, credential) = key_path(&self.dir);
        let master = match read_key(&path, credential)? {
            Some(m) => m,
            None => {
                if let Some(what) = self.sealed_holdings()? {
                    return Err(EnvError::MissingKey { path, what });
                }
                if !create {
                    return Ok(None);
                }
                create_key(&path)?
            }
        };
        let ring = Keyring::from_master(&master, path.clone());
        // Read first: a check that is there costs no write (a dry run writes nothing).
        let stored = {
            let txn = self.db.begin_read().map_err(db)?;
            let meta = txn.open_table(ENV_META).map_err(db)?;
            let v = meta.get(KEY_CHECK).map_err(db)?;
            v.map(|v| String::from_utf8_lossy(v.value()).into_owned())
        };
        match stored {
            Some(c) if c != ring.check() => return Err(EnvError::WrongKey { path }),
            Some(_) => {}
            None => {
                let txn = self.db.begin_write().map_err(db)?;
                txn.open_table(ENV_META)
                    .map_err(db)?
                    .insert(KEY_CHECK, ring.check().as_bytes())
                    .map_err(db)?;
                txn.commit().map_err(db)?;
            }
        }
        let ring = Arc::new(ring);
        Ok(Some(self.keyring.get_or_init(|| ring).clone()))
    }

    /// Every version of an environment's env, oldest first (metadata; values stay sealed).
    pub fn env_versions(&self, key: &EnvKey) -> Result<Vec<StoredVersion>> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(ENV_VERSIONS).map_err(db)?;
        let p = prefix(key);
        let mut out = Vec::new();
        for item in table.range(p.as_str()..).map_err(db)? {
            let (k, v) = item.map_err(db)?;
            if !k.value().starts_with(&p) {
                break;
            }
            out.push(decode::<StoredVersion>(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The latest version number of an environment's env (`None`: never set).
    pub fn latest_env_version(&self, key: &EnvKey) -> Result<Option<u64>> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(ENV_VERSIONS).map_err(db)?;
        latest(&table, key)
    }

    /// The latest env version of each of `keys`, as [`Store::latest_env_version`] answers, read in
    /// one transaction (an apply asks for every environment it declares; a read transaction per
    /// environment cost more than the reads).
    pub fn latest_env_versions<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a EnvKey>,
    ) -> Result<BTreeMap<EnvKey, Option<u64>>> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(ENV_VERSIONS).map_err(db)?;
        keys.into_iter()
            .map(|key| Ok((key.clone(), latest(&table, key)?)))
            .collect()
    }

    /// Every environment that has env versions.
    pub fn env_keys(&self) -> Result<Vec<EnvKey>> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(ENV_VERSIONS).map_err(db)?;
        let mut out: Vec<EnvKey> = Vec::new();
        for item in table.iter().map_err(db)? {
            let (k, _) = item.map_err(db)?;
            let mut parts = k.value().splitn(3, '/');
            if let (Some(p), Some(e)) = (parts.next(), parts.next()) {
                let key = EnvKey::new(p, e);
                if out.last() != Some(&key) {
                    out.push(key);
                }
            }
        }
        Ok(out)
    }

    /// The values of one version.
    ///
    /// # Errors
    /// `NoVersion`; a key error; `Tampered` when it does not authenticate.
    pub fn open_env(&self, key: &EnvKey, version: u64) -> Result<EnvValues> {
        let ring = self.keyring(false)?;
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(ENV_VERSIONS).map_err(db)?;
        let id = version_id(key, version);
        let v = table
            .get(id.as_str())
            .map_err(db)?
            .ok_or(EnvError::NoVersion {
                key: key.clone(),
                version,
            })?;
        let stored: StoredVersion = decode(&id, v.value())?;
        let ring = ring.ok_or_else(|| EnvError::MissingKey {
            path: key_path(&self.dir).0,
            what: "env versions".into(),
        })?;
        ring.open_values(&version_aad(key, version), &stored.values)
            .ok_or(EnvError::Tampered {
                key: key.clone(),
                version,
            })
    }

    /// Writes the next version of an environment's env, if its latest is still `expected`, in
    /// one transaction: the store holds the old version or the new one, never part of one.
    /// Names added, changed and removed are computed from the previous version's digests.
    ///
    /// # Errors
    /// `Moved` when another version was written since `expected` was read; key errors.
    pub fn put_env_version(
        &self,
        key: &EnvKey,
        expected: Option<u64>,
        values: &EnvValues,
        by: &str,
        at_ms: u64,
        restored_from: Option<u64>,
    ) -> Result<StoredVersion> {
        self.write_env_version(key, expected, values, by, at_ms, restored_from, None)
    }

    /// As [`Store::put_env_version`] restoring `restored_from`, and the environment's release
    /// override set to `over` (`None`: removed) in the same transaction: what `rollback --to N`
    /// writes before its rollout, so that a process killed in between leaves both or neither
    /// (never N's env under another image, or N's image under another env, for the next apply to
    /// roll out).
    ///
    /// # Errors
    /// As [`Store::put_env_version`].
    #[allow(clippy::too_many_arguments)]
    pub fn restore_env_version_with_override(
        &self,
        key: &EnvKey,
        expected: Option<u64>,
        values: &EnvValues,
        by: &str,
        at_ms: u64,
        restored_from: u64,
        over: Option<&crate::model::Override>,
    ) -> Result<StoredVersion> {
        self.write_env_version(
            key,
            expected,
            values,
            by,
            at_ms,
            Some(restored_from),
            Some(over),
        )
    }

    /// Writes the next version; with `over`, sets (or removes) the release override too.
    #[allow(clippy::too_many_arguments)]
    fn write_env_version(
        &self,
        key: &EnvKey,
        expected: Option<u64>,
        values: &EnvValues,
        by: &str,
        at_ms: u64,
        restored_from: Option<u64>,
        over: Option<Option<&crate::model::Override>>,
    ) -> Result<StoredVersion> {
        let ring = self
            .keyring(true)?
            .expect("keyring(true) creates a missing key");
        let txn = self.db.begin_write().map_err(db)?;
        let stored;
        {
            let mut table = txn.open_table(ENV_VERSIONS).map_err(db)?;
            let found = latest(&table, key)?;
            if found != expected {
                return Err(EnvError::Moved {
                    key: key.clone(),
                    expected,
                    found,
                });
            }
            let previous: BTreeMap<String, String> = match found {
                Some(v) => {
                    let id = version_id(key, v);
                    let raw = table.get(id.as_str()).map_err(db)?;
                    match raw {
                        Some(raw) => decode::<StoredVersion>(&id, raw.value())?.digests,
                        None => BTreeMap::new(),
                    }
                }
                None => BTreeMap::new(),
            };
            let version = found.map_or(1, |v| v + 1);
            let digests: BTreeMap<String, String> = values
                .0
                .iter()
                .map(|(n, v)| (n.clone(), ring.value_digest(key, n, v)))
                .collect();
            let added = digests
                .keys()
                .filter(|n| !previous.contains_key(*n))
                .cloned()
                .collect();
            let changed = digests
                .iter()
                .filter(|(n, d)| previous.get(*n).is_some_and(|p| p != *d))
                .map(|(n, _)| n.clone())
                .collect();
            let removed = previous
                .keys()
                .filter(|n| !digests.contains_key(*n))
                .cloned()
                .collect();
            stored = StoredVersion {
                project: key.project.clone(),
                environment: key.env.clone(),
                version,
                at_ms,
                by: by.to_string(),
                digests,
                added,
                changed,
                removed,
                restored_from,
                values: ring.seal_values(&version_aad(key, version), values)?,
            };
            let bytes = serde_json::to_vec(&stored).expect("versions serialize");
            table
                .insert(version_id(key, version).as_str(), bytes.as_slice())
                .map_err(db)?;
        }
        if let Some(over) = over {
            let mut table = txn.open_table(super::OVERRIDES).map_err(db)?;
            let sk = key.store_key();
            match over {
                Some(o) => {
                    let bytes = serde_json::to_vec(o).expect("overrides serialize");
                    table.insert(sk.as_str(), bytes.as_slice()).map_err(db)?;
                }
                None => {
                    table.remove(sk.as_str()).map_err(db)?;
                }
            };
        }
        crate::reconcile::fault::before_env_commit();
        txn.commit().map_err(db)?;
        crate::reconcile::fault::data_written();
        Ok(stored)
    }

    /// Binds a release's inline env: its keyed digest, the values kept in memory. Writes the
    /// sealed values to the store (once per digest) unless `dry`. An empty env needs no key and
    /// stays as it is; without a key and with `dry`, an ephemeral one digests (nothing was
    /// released under a key that does not exist, so the plan shows the redeploy it would make).
    ///
    /// # Errors
    /// A key error.
    pub fn bind_inline(&self, key: &EnvKey, inline: &InlineEnv, dry: bool) -> Result<InlineEnv> {
        let Some(values) = inline.values().filter(|_| !inline.is_empty()) else {
            return Ok(inline.clone());
        };
        let ring = match self.keyring(!dry)? {
            Some(r) => r,
            None => {
                let mut master = [0u8; 32];
                getrandom::fill(&mut master).map_err(EnvError::Random)?;
                Arc::new(Keyring::from_master(&master, PathBuf::new()))
            }
        };
        let digest = ring.inline_digest(values);
        let bound = inline.bind(digest.clone());
        if !dry {
            self.put_inline(key, &ring, &digest, values)?;
        }
        Ok(bound)
    }

    fn put_inline(
        &self,
        key: &EnvKey,
        ring: &Keyring,
        digest: &str,
        values: &EnvValues,
    ) -> Result<()> {
        let id = format!("{}{digest}", prefix(key));
        {
            let txn = self.db.begin_read().map_err(db)?;
            let table = txn.open_table(ENV_INLINE).map_err(db)?;
            if table.get(id.as_str()).map_err(db)?.is_some() {
                return Ok(());
            }
        }
        let sealed = ring.seal_values(&inline_aad(key, digest), values)?;
        let bytes = serde_json::to_vec(&sealed).expect("sealed blobs serialize");
        let txn = self.db.begin_write().map_err(db)?;
        txn.open_table(ENV_INLINE)
            .map_err(db)?
            .insert(id.as_str(), bytes.as_slice())
            .map_err(db)?;
        txn.commit().map_err(db)
    }

    /// A release's inline values: from memory, else opened from the store by digest; a legacy
    /// (unbound) release's own. Kept sealed in the store as a side effect when in memory.
    ///
    /// # Errors
    /// `NoInline` when they are nowhere; a key error; `Tampered`.
    pub fn inline_values(&self, key: &EnvKey, inline: &InlineEnv) -> Result<EnvValues> {
        if inline.is_empty() {
            return Ok(EnvValues::default());
        }
        let Some(digest) = inline.digest() else {
            return Ok(inline.values().cloned().unwrap_or_default());
        };
        let ring = self.keyring(true)?.expect("created when missing");
        if let Some(values) = inline.values() {
            self.put_inline(key, &ring, digest, values)?;
            return Ok(values.clone());
        }
        let id = format!("{}{digest}", prefix(key));
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(ENV_INLINE).map_err(db)?;
        let raw = table
            .get(id.as_str())
            .map_err(db)?
            .ok_or_else(|| EnvError::NoInline { key: key.clone() })?;
        let sealed: Sealed = decode(&id, raw.value())?;
        ring.open_values(&inline_aad(key, digest), &sealed)
            .ok_or(EnvError::Tampered {
                key: key.clone(),
                version: 0,
            })
    }

    /// A release's inline values without writing anything (for `diff`): from memory, else
    /// opened from the store by digest with the existing key. `None` when they are nowhere or
    /// do not open (no key, no sealed copy, tampered).
    pub fn peek_inline(&self, key: &EnvKey, inline: &InlineEnv) -> Option<EnvValues> {
        if inline.is_empty() {
            return Some(EnvValues::default());
        }
        if let Some(values) = inline.values() {
            return Some(values.clone());
        }
        let digest = inline.digest()?;
        let ring = self.keyring(false).ok().flatten()?;
        let id = format!("{}{digest}", prefix(key));
        let txn = self.db.begin_read().ok()?;
        let table = txn.open_table(ENV_INLINE).ok()?;
        let raw = table.get(id.as_str()).ok()??;
        let sealed: Sealed = decode(&id, raw.value()).ok()?;
        ring.open_values(&inline_aad(key, digest), &sealed)
    }

    /// Everything sealed, for `codeb env backup` (still encrypted; never the key).
    pub fn env_backup(&self) -> Result<Backup> {
        let txn = self.db.begin_read().map_err(db)?;
        let mut versions = Vec::new();
        for item in txn
            .open_table(ENV_VERSIONS)
            .map_err(db)?
            .iter()
            .map_err(db)?
        {
            let (k, v) = item.map_err(db)?;
            versions.push(decode::<StoredVersion>(k.value(), v.value())?);
        }
        let mut inline = BTreeMap::new();
        for item in txn.open_table(ENV_INLINE).map_err(db)?.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            inline.insert(
                k.value().to_string(),
                decode::<Sealed>(k.value(), v.value())?,
            );
        }
        let key_check = txn
            .open_table(ENV_META)
            .map_err(db)?
            .get(KEY_CHECK)
            .map_err(db)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        Ok(Backup {
            format: BACKUP_FORMAT.into(),
            key_check,
            versions,
            inline,
        })
    }

    /// Restores a backup into a store without env versions, under the same key (the key file
    /// must be in place first: it is not in the backup). Returns the number of versions.
    ///
    /// # Errors
    /// `NotEmpty`; `WrongKey` when the backup was sealed under another key; `MissingKey` when
    /// there is no key file; `BadBackup`.
    pub fn env_restore_backup(&self, backup: &Backup) -> Result<usize> {
        if backup.format != BACKUP_FORMAT {
            return Err(EnvError::BadBackup(format!(
                "format {:?}, expected {BACKUP_FORMAT}",
                backup.format
            )));
        }
        let present = self.env_keys()?;
        if !present.is_empty() {
            let names: Vec<String> = present.iter().map(ToString::to_string).collect();
            return Err(EnvError::NotEmpty(names.join(", ")));
        }
        let (path, _) = key_path(&self.dir);
        let ring = self.keyring(false)?.ok_or_else(|| EnvError::MissingKey {
            path: path.clone(),
            what: format!("the backup's {} env versions", backup.versions.len()),
        })?;
        if backup
            .key_check
            .as_deref()
            .is_some_and(|c| c != ring.check())
        {
            return Err(EnvError::WrongKey { path });
        }
        // Every version must open under this key before anything is written.
        for v in &backup.versions {
            ring.open_values(&version_aad(&v.key(), v.version), &v.values)
                .ok_or(EnvError::WrongKey { path: path.clone() })?;
        }
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut table = txn.open_table(ENV_VERSIONS).map_err(db)?;
            for v in &backup.versions {
                let bytes = serde_json::to_vec(v).expect("versions serialize");
                table
                    .insert(version_id(&v.key(), v.version).as_str(), bytes.as_slice())
                    .map_err(db)?;
            }
            let mut inline = txn.open_table(ENV_INLINE).map_err(db)?;
            for (id, s) in &backup.inline {
                let bytes = serde_json::to_vec(s).expect("sealed blobs serialize");
                inline.insert(id.as_str(), bytes.as_slice()).map_err(db)?;
            }
        }
        txn.commit().map_err(db)?;
        Ok(backup.versions.len())
    }
}

fn latest(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &EnvKey,
) -> Result<Option<u64>> {
    let p = prefix(key);
    let end = format!("{}/{}0", key.project, key.env); // '0' sorts right after '/'
    let last = table
        .range(p.as_str()..end.as_str())
        .map_err(db)?
        .next_back()
        .transpose()
        .map_err(db)?;
    Ok(last.and_then(|(k, _)| k.value()[p.len()..].parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        (dir, store)
    }

    fn values(pairs: &[(&str, &str)]) -> EnvValues {
        EnvValues(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_version_round_trips_sealed_and_its_value_is_nowhere_in_the_store_file() {
        let (dir, store) = store();
        let key = EnvKey::new("app", "production");
        let v1 = store
            .put_env_version(
                &key,
                None,
                &values(&[("TOKEN", "canary-5e1f")]),
                "t",
                1,
                None,
            )
            .unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.added, vec!["TOKEN"]);
        assert_eq!(store.open_env(&key, 1).unwrap().0["TOKEN"], "canary-5e1f");
        drop(store);
        let bytes = std::fs::read(dir.path().join("state/codeb.redb")).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"canary-5e1f"));
        let key_file = dir.path().join("state").join(KEY_FILE);
        let mode = std::fs::metadata(&key_file).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn history_names_what_changed_and_a_stale_writer_is_refused() {
        let (_dir, store) = store();
        let key = EnvKey::new("app", "production");
        store
            .put_env_version(&key, None, &values(&[("A", "1"), ("B", "2")]), "t", 1, None)
            .unwrap();
        let v2 = store
            .put_env_version(
                &key,
                Some(1),
                &values(&[("A", "1"), ("B", "3"), ("C", "4")]),
                "t",
                2,
                None,
            )
            .unwrap();
        assert_eq!(
            (v2.added.clone(), v2.changed.clone()),
            (vec!["C".to_string()], vec!["B".to_string()])
        );
        let v3 = store
            .put_env_version(&key, Some(2), &values(&[("A", "1")]), "t", 3, None)
            .unwrap();
        assert_eq!(v3.removed, vec!["B", "C"]);
        assert!(matches!(
            store.put_env_version(&key, Some(2), &values(&[]), "t", 4, None),
            Err(EnvError::Moved { .. })
        ));
        assert_eq!(store.latest_env_version(&key).unwrap(), Some(3));
        // Another environment's range is its own.
        let other = EnvKey::new("app", "productio");
        assert_eq!(store.latest_env_version(&other).unwrap(), None);
    }

    #[test]
    fn a_sealed_version_does_not_open_as_another_version() {
        let ring = Keyring::from_master(&[7; 32], PathBuf::new());
        let key = EnvKey::new("a", "b");
        let s = ring
            .seal_values(&version_aad(&key, 1), &values(&[("A", "1")]))
            .unwrap();
        assert!(ring.open_values(&version_aad(&key, 1), &s).is_some());
        assert!(ring.open_values(&version_aad(&key, 2), &s).is_none());
        let other = Keyring::from_master(&[8; 32], PathBuf::new());
        assert!(other.open_values(&version_aad(&key, 1), &s).is_none());
    }

    #[test]
    fn without_its_key_file_the_store_refuses_and_with_another_key_too() {
        let (dir, store) = store();
        let key = EnvKey::new("app", "production");
        store
            .put_env_version(&key, None, &values(&[("A", "1")]), "t", 1, None)
            .unwrap();
        drop(store);
        let state = dir.path().join("state");
        let key_file = state.join(KEY_FILE);
        let saved = std::fs::read(&key_file).unwrap();
        std::fs::remove_file(&key_file).unwrap();
        let store = Store::open(&state).unwrap();
        let e = store.open_env(&key, 1).unwrap_err();
        assert!(matches!(e, EnvError::MissingKey { .. }), "{e}");
        assert!(e.to_string().contains("env.key"), "{e}");
        let e = store
            .put_env_version(&key, Some(1), &values(&[("A", "2")]), "t", 2, None)
            .unwrap_err();
        assert!(matches!(e, EnvError::MissingKey { .. }), "{e}");
        assert!(!key_file.exists(), "no new key made over sealed env");
        drop(store);
        std::fs::write(&key_file, [1u8; 32]).unwrap();
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let store = Store::open(&state).unwrap();
        assert!(matches!(
            store.open_env(&key, 1),
            Err(EnvError::WrongKey { .. })
        ));
        drop(store);
        std::fs::write(&key_file, &saved).unwrap();
        let store = Store::open(&state).unwrap();
        assert_eq!(store.latest_env_version(&key).unwrap(), Some(1));
        assert_eq!(store.open_env(&key, 1).unwrap().0["A"], "1");
    }

    #[test]
    fn a_backup_restores_into_an_empty_store_under_the_same_key() {
        let (dir, store) = store();
        let key = EnvKey::new("app", "production");
        for i in 0..3 {
            store
                .put_env_version(
                    &key,
                    (i > 0).then_some(i),
                    &values(&[("A", &i.to_string())]),
                    "t",
                    i,
                    None,
                )
                .unwrap();
        }
        let backup = serde_json::to_string(&store.env_backup().unwrap()).unwrap();
        assert!(!backup.contains("\"A\":\"2\""));
        let key_bytes = std::fs::read(dir.path().join("state").join(KEY_FILE)).unwrap();
        let other = tempfile::tempdir().unwrap();
        let state = other.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let restored = Store::open(&state).unwrap();
        let parsed: Backup = serde_json::from_str(&backup).unwrap();
        assert!(matches!(
            restored.env_restore_backup(&parsed),
            Err(EnvError::MissingKey { .. })
        ));
        std::fs::write(state.join(KEY_FILE), &key_bytes).unwrap();
        std::fs::set_permissions(
            state.join(KEY_FILE),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(restored.env_restore_backup(&parsed).unwrap(), 3);
        assert_eq!(restored.open_env(&key, 3).unwrap().0["A"], "2");
        assert!(matches!(
            restored.env_restore_backup(&parsed),
            Err(EnvError::NotEmpty(_))
        ));
    }
}
