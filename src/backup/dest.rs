//! The backup destination: a directory (the backup host's mount) laid out as
//! `{dir}/{project}/{env}/{id}/`, each backup's files beside its `manifest.json`.
//!
//! # Guarantees
//! - A backup directory with a valid id as its name is complete: it is written as
//!   `.tmp-{id}-{pid}`, its manifest last, every file synced, then renamed into place (and the
//!   parent synced). A crash leaves at most a `.tmp-` directory, which listing ignores and a later
//!   backup of that environment removes once it is a day old.
//! - Paths are built only from names checked here ([`manifest::plain_name`], [`manifest::parse_id`]),
//!   never from a manifest's content.
//! - Directories are created `0700`: a backup holds the project's data.
//!
//! Blocking file I/O: async callers run these in `spawn_blocking`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::manifest::{self, FileEntry, Kind, Manifest, MAX_MANIFEST_BYTES};
use super::{Error, Result};

/// How old a `.tmp-` directory must be before a backup removes it (a backup of a large database
/// may run for hours; none runs for a day).
const STALE_TMP: Duration = Duration::from_secs(86_400);

/// A backup destination directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub root: PathBuf,
}

/// One backup as listing found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub env: String,
    pub id: String,
    /// `None` when the manifest could not be read (the problem says why).
    pub manifest: Option<Manifest>,
    pub check: Check,
}

/// How far a listed backup was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Every file is there with the size its manifest records (the cheap check of a listing).
    Sizes,
    /// Every file's SHA-256 was read again and matches (`--verify`).
    Verified,
    Problem(String),
}

/// A backup being written; removed on drop unless [`Staging::finish`]ed.
#[derive(Debug)]
pub struct Staging {
    pub id: String,
    pub dir: PathBuf,
    target: PathBuf,
    done: bool,
}

impl Staging {
    /// The path of one of its files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Hashes `names` (already written into the staging directory), for the manifest.
    pub fn entries(&self, names: &[&str]) -> Result<Vec<FileEntry>> {
        names
            .iter()
            .map(|name| {
                let (sha256, size) = hash_file(&self.file(name))?;
                Ok(FileEntry {
                    name: name.to_string(),
                    sha256,
                    size,
                })
            })
            .collect()
    }

    /// Writes the manifest, syncs everything and renames the directory into place; then reads
    /// every file again and checks it against the manifest.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Checksum`] or [`Error::Size`] when what is in place is not what was
    /// hashed (a failing disk): the backup is then removed again.
    pub fn finish(mut self, m: &Manifest) -> Result<PathBuf> {
        let path = self.file("manifest.json");
        let json = serde_json::to_vec_pretty(m).expect("a manifest serializes");
        write_synced(&path, &json)?;
        for f in &m.files {
            let p = self.file(&f.name);
            fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(Error::io(&p))?;
        }
        sync_dir(&self.dir)?;
        fs::rename(&self.dir, &self.target).map_err(Error::io(&self.target))?;
        self.done = true;
        if let Some(parent) = self.target.parent() {
            sync_dir(parent)?;
        }
        if let Err(e) = verify(&self.target, m) {
            let _ = fs::remove_dir_all(&self.target);
            return Err(e);
        }
        Ok(self.target.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Dest {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Dest { root: root.into() }
    }

    /// `{dir}/{project}/{env}`, for checked names.
    pub fn env_dir(&self, project: &str, env: &str) -> Result<PathBuf> {
        for name in [project, env] {
            if !manifest::plain_name(name) {
                return Err(Error::Refused(format!(
                    "{name:?} cannot name a backup directory"
                )));
            }
        }
        Ok(self.root.join(project).join(env))
    }

    /// A new backup of `kind` for `project/env` made at `now`: its id (with `-2`, `-3`, … when
    /// one of that second exists) and its staging directory. Removes the environment's stale
    /// `.tmp-` directories.
    pub fn stage(&self, project: &str, env: &str, kind: Kind, now: SystemTime) -> Result<Staging> {
        let env_dir = self.env_dir(project, env)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&env_dir)
            .map_err(Error::io(&env_dir))?;
        remove_stale(&env_dir, now);
        let base = manifest::id(now, kind);
        let mut id = base.clone();
        let mut n = 1;
        while env_dir.join(&id).exists() {
            n += 1;
            id = format!("{base}-{n}");
        }
        let dir = env_dir.join(format!(".tmp-{id}-{}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io(&dir))?;
        Ok(Staging {
            target: env_dir.join(&id),
            id,
            dir,
            done: false,
        })
    }

    /// One backup, its manifest checked to be this environment's and this id's (not its files:
    /// see [`verify`]).
    pub fn open(&self, project: &str, env: &str, id: &str) -> Result<(PathBuf, Manifest)> {
        let not_found = || Error::NotFound {
            project: project.into(),
            env: env.into(),
            id: id.into(),
            dir: self.root.display().to_string(),
        };
        if manifest::parse_id(id).is_none() {
            return Err(not_found());
        }
        let dir = self.env_dir(project, env)?.join(id);
        let path = dir.join("manifest.json");
        if !path.exists() {
            return Err(not_found());
        }
        let m = read_manifest(&path)?;
        if m.project != project || m.env != env || m.id != id {
            return Err(Error::BadManifest {
                path,
                reason: format!(
                    "it is backup {} of {}/{}, found as {id} of {project}/{env}",
                    m.id, m.project, m.env
                ),
            });
        }
        Ok((dir, m))
    }

    /// The complete backups of one environment's `kind`, oldest first.
    pub fn ids(&self, project: &str, env: &str, kind: Kind) -> Result<Vec<String>> {
        let dir = self.env_dir(project, env)?;
        let mut ids = Vec::new();
        for name in names(&dir)? {
            if manifest::parse_id(&name).is_some_and(|(_, k)| k == kind)
                && dir.join(&name).join("manifest.json").is_file()
            {
                ids.push(name);
            }
        }
        manifest::sort_ids(&mut ids);
        Ok(ids)
    }

    /// When the newest complete backup of one environment's `kind` was made (from its id: no
    /// manifest is read).
    pub fn newest(&self, project: &str, env: &str, kind: Kind) -> Result<Option<SystemTime>> {
        Ok(self
            .ids(project, env, kind)?
            .last()
            .and_then(|id| manifest::id_time(id)))
    }

    /// Deletes one environment's backups of `kind` beyond the newest `keep`; returns their ids.
    pub fn prune(&self, project: &str, env: &str, kind: Kind, keep: u32) -> Result<Vec<String>> {
        let dir = self.env_dir(project, env)?;
        let gone = manifest::beyond_keep(&self.ids(project, env, kind)?, keep);
        for id in &gone {
            let p = dir.join(id);
            fs::remove_dir_all(&p).map_err(Error::io(&p))?;
        }
        Ok(gone)
    }

    /// The backups of a project (one environment's, or all), each checked by size, or re-hashed
    /// with `verify`. Oldest first within each environment.
    pub fn list(&self, project: &str, env: Option<&str>, verify_all: bool) -> Result<Vec<Listed>> {
        let pdir = self.env_dir(project, "x")?;
        let pdir = pdir.parent().expect("a project directory");
        let envs = match env {
            Some(e) => vec![e.to_string()],
            None => names(pdir)?
                .into_iter()
                .filter(|n| manifest::plain_name(n))
                .collect(),
        };
        let mut out = Vec::new();
        for env in envs {
            let edir = self.env_dir(project, &env)?;
            let mut ids: Vec<String> = names(&edir)?
                .into_iter()
                .filter(|n| manifest::parse_id(n).is_some())
                .collect();
            manifest::sort_ids(&mut ids);
            for id in ids {
                let (manifest, check) = match self.open(project, &env, &id) {
                    Ok((dir, m)) => {
                        let check = if verify_all {
                            verify(&dir, &m).map(|()| Check::Verified)
                        } else {
                            sizes(&dir, &m).map(|()| Check::Sizes)
                        };
                        let check = check.unwrap_or_else(|e| Check::Problem(e.to_string()));
                        (Some(m), check)
                    }
                    Err(e) => (None, Check::Problem(e.to_string())),
                };
                out.push(Listed {
                    env: env.clone(),
                    id,
                    manifest,
                    check,
                });
            }
        }
        Ok(out)
    }
}

/// Reads a manifest: at most [`MAX_MANIFEST_BYTES`], JSON, [`Manifest::check`]ed.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let bad = |reason: String| Error::BadManifest {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = fs::File::open(path).map_err(Error::io(path))?;
    let mut text = Vec::new();
    (&mut f)
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(Error::io(path))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "it is over {MAX_MANIFEST_BYTES} bytes, the most a manifest may be"
        )));
    }
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    m.check().map_err(bad)?;
    Ok(m)
}

/// Every file of a backup is there with its recorded size.
fn sizes(dir: &Path, m: &Manifest) -> Result<()> {
    for f in &m.files {
        let p = dir.join(&f.name);
        let actual = fs::metadata(&p).map_err(Error::io(&p))?.len();
        if actual != f.size {
            return Err(Error::Size {
                id: m.id.clone(),
                file: p.display().to_string(),
                expected: f.size,
                actual,
            });
        }
    }
    Ok(())
}

/// Every file of a backup has its recorded size and SHA-256 (sizes first: a truncated file is
/// refused without reading it).
///
/// # Errors
/// [`Error::Size`] or [`Error::Checksum`] naming the file and both values; [`Error::Io`].
pub fn verify(dir: &Path, m: &Manifest) -> Result<()> {
    sizes(dir, m)?;
    for f in &m.files {
        let p = dir.join(&f.name);
        let (actual, _) = hash_file(&p)?;
        if actual != f.sha256 {
            return Err(Error::Checksum {
                id: m.id.clone(),
                file: p.display().to_string(),
                expected: f.sha256.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// SHA-256 (lowercase hex) and size of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = fs::File::open(path).map_err(Error::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((crate::auth::hex(&h.finalize()), size))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(Error::io(path))?;
    f.write_all(bytes).map_err(Error::io(path))?;
    f.sync_all().map_err(Error::io(path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// The entries of a directory (none when it does not exist).
fn names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(Error::io(dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// Removes `.tmp-` directories older than [`STALE_TMP`] (a crashed backup's); best effort.
fn remove_stale(env_dir: &Path, now: SystemTime) {
    for name in names(env_dir).unwrap_or_default() {
        if !name.starts_with(".tmp-") {
            continue;
        }
        let p = env_dir.join(&name);
        let old = fs::metadata(&p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE_TMP));
        if old {
            let _ = fs::remove_dir_all(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dest: &Dest, env: &str, kind: Kind, at: SystemTime, data: &[u8]) -> String {
        let s = dest.stage("shop", env, kind, at).unwrap();
        fs::write(s.file(kind.file()), data).unwrap();
        let files = s.entries(&[kind.file()]).unwrap();
        let m = Manifest {
            format: manifest::FORMAT,
            id: s.id.clone(),
            kind,
            project: "shop".into(),
            env: env.into(),
            source: "x".into(),
            created: manifest::rfc3339(at),
            codeb_version: "test".into(),
            server_version: None,
            files,
            tables: None,
            keys: Some(1),
        };
        let id = s.id.clone();
        s.finish(&m).unwrap();
        id
    }

    #[test]
    fn a_backup_appears_only_when_complete_and_a_dropped_one_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = Dest::new(tmp.path());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_645_700);
        let s = dest.stage("shop", "prod", Kind::Cache, t).unwrap();
        fs::write(s.file("cache.keys"), b"abc").unwrap();
        assert!(dest.list("shop", None, false).unwrap().is_empty());
        let staged = s.dir.clone();
        drop(s);
        assert!(!staged.exists());
        let a = write(&dest, "prod", Kind::Cache, t, b"abc");
        let b = write(&dest, "prod", Kind::Cache, t, b"abcd");
        assert_eq!(a, "20261207T121500Z-cache");
        assert_eq!(b, "20261207T121500Z-cache-2");
        let listed = dest.list("shop", None, true).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|l| l.check == Check::Verified));
        assert_eq!(dest.newest("shop", "prod", Kind::Cache).unwrap(), Some(t));
        assert_eq!(dest.newest("shop", "prod", Kind::Database).unwrap(), None);
    }

    #[test]
    fn a_changed_byte_is_refused_naming_the_file_and_both_digests() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = Dest::new(tmp.path());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_645_700);
        let id = write(&dest, "prod", Kind::Database, t, b"hello world");
        let (dir, m) = dest.open("shop", "prod", &id).unwrap();
        fs::write(dir.join("database.dump"), b"hello World").unwrap();
        let e = verify(&dir, &m).unwrap_err().to_string();
        assert!(e.contains("database.dump is corrupted"), "{e}");
        assert!(e.contains(&m.files[0].sha256), "{e}");
        let listed = dest.list("shop", Some("prod"), false).unwrap();
        assert_eq!(listed[0].check, Check::Sizes, "a listing does not re-hash");
        let listed = dest.list("shop", Some("prod"), true).unwrap();
        assert!(matches!(&listed[0].check, Check::Problem(p) if p.contains("corrupted")));
        fs::write(dir.join("database.dump"), b"hello").unwrap();
        let e = verify(&dir, &m).unwrap_err().to_string();
        assert!(e.contains("is 5 bytes, the manifest says 11"), "{e}");
        assert!(matches!(
            dest.open("shop", "prod", "../../x"),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn prune_keeps_the_newest_of_one_kind_and_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = Dest::new(tmp.path());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_645_700);
        let db: Vec<String> = (0..4)
            .map(|h| {
                write(
                    &dest,
                    "prod",
                    Kind::Database,
                    t0 + Duration::from_secs(h * 3600),
                    b"d",
                )
            })
            .collect();
        let cache = write(&dest, "prod", Kind::Cache, t0, b"c");
        let other = write(&dest, "staging", Kind::Database, t0, b"d");
        assert_eq!(
            dest.prune("shop", "prod", Kind::Database, 2).unwrap(),
            db[..2]
        );
        assert_eq!(dest.ids("shop", "prod", Kind::Database).unwrap(), db[2..]);
        assert_eq!(dest.ids("shop", "prod", Kind::Cache).unwrap(), [cache]);
        assert_eq!(
            dest.ids("shop", "staging", Kind::Database).unwrap(),
            [other]
        );
    }
}
