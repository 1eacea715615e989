//! The state directory and its files are private to the user codeb runs as: the directory 0700,
//! `codeb.redb` and `codeb.lock` 0600 (the daemon's socket is 0600 too, bound in `daemon::socket`).
//! The store holds env values, API key tags and the HMAC secret, so no other local user may read
//! it, and none may write where it lives.
//!
//! Each is created with its mode (no window in which it exists with a wider one). What exists
//! already is judged by [`verdict`]:
//! - owned by another user, or writable by group or others: refused, with the `chown`/`chmod`
//!   that fixes it. Whoever could write there could have replaced the store or planted a file,
//!   so codeb does not trust its content, and does not silently take the directory over.
//! - readable or searchable by group or others (0755 and 0644 are what codeb created before):
//!   tightened to 0700/0600, with a warning. The owner is this user and nobody else can have
//!   written, so nothing is lost by closing it, and refusing would break every upgrade. A
//!   directory is tightened only while it holds nothing but codeb's files: `--state-dir /` or
//!   `--state-dir ~` run as their owner must not close a shared directory, so such a one is
//!   refused with the advice to give codeb a directory of its own.
//!
//! No records here: only the file system.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{Error, Result};

/// The state directory's mode.
pub const DIR_MODE: u32 = 0o700;
/// The mode of each file in it.
pub const FILE_MODE: u32 = 0o600;
/// What codeb keeps in a state directory: a directory holding only these may be tightened.
const OWN_FILES: [&str; 5] = [
    "env.key",
    "codeb.redb",
    "codeb.lock",
    "codeb.sock",
    crate::config::FILE_NAME,
];

/// What to do with an existing directory or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Owned by this user, private already.
    Keep,
    /// Owned by this user and written by nobody else, but readable by others: set to `private`.
    Tighten,
    /// Writable by group or others: someone else could have changed it.
    Writable,
    /// Owned by another user.
    Foreign,
}

/// Judges an existing directory or file of `mode` owned by `owner`, for the process's `uid`, where
/// `private` is the mode it should have (see the module's doc for why each answer).
pub fn verdict(mode: u32, owner: u32, uid: u32, private: u32) -> Verdict {
    if owner != uid {
        Verdict::Foreign
    } else if mode & 0o022 != 0 {
        Verdict::Writable
    } else if mode & 0o777 & !private != 0 {
        Verdict::Tighten
    } else {
        Verdict::Keep
    }
}

/// The user id this process acts as on files (the owner of `/proc/self`: its effective uid).
pub fn process_uid() -> std::io::Result<u32> {
    std::fs::metadata("/proc/self").map(|m| m.uid())
}

/// Creates `dir` 0700 (its missing parents with the usual modes), or checks an existing one.
///
/// # Errors
/// `Foreign` or `WritableDir` for an existing directory codeb must not use (see [`verdict`]);
/// `CreateDir` when it cannot be created or tightened.
pub fn prepare(dir: &Path) -> Result<()> {
    let create = |source| Error::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(create)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(dir).map_err(create)?;
            if !meta.is_dir() {
                return Err(create(e));
            }
            match judge(dir, &meta, DIR_MODE)? {
                Verdict::Tighten if !holds_only_codeb_files(dir).map_err(create)? => {
                    Err(Error::Shared {
                        path: dir.to_path_buf(),
                        mode: meta.mode() & 0o7777,
                    })
                }
                Verdict::Tighten => {
                    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
                        .map_err(create)?;
                    warn_tightened(dir, meta.mode(), DIR_MODE);
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        Err(e) => Err(create(e)),
    }
}

/// Opens (creating it 0600 if needed) a file of the state directory for reading and writing, and
/// checks an existing one as [`prepare`] checks the directory.
pub fn open_private(path: &Path) -> Result<File> {
    let io = |source| Error::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if judge(path, &meta, FILE_MODE)? == Verdict::Tighten {
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(io)?;
        warn_tightened(path, meta.mode(), FILE_MODE);
    }
    Ok(file)
}

/// Whether `dir` holds nothing but what codeb puts in a state directory.
fn holds_only_codeb_files(dir: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        if !OWN_FILES
            .iter()
            .any(|own| entry.as_ref().is_ok_and(|e| e.file_name() == *own))
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The verdict on `path`, its refusals as errors.
fn judge(path: &Path, meta: &std::fs::Metadata, private: u32) -> Result<Verdict> {
    let uid = process_uid().map_err(|source| Error::CreateDir {
        path: path.to_path_buf(),
        source,
    })?;
    match verdict(meta.mode(), meta.uid(), uid, private) {
        Verdict::Foreign => Err(Error::Foreign {
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        }),
        Verdict::Writable => Err(Error::Writable {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
            private,
        }),
        v => Ok(v),
    }
}

fn warn_tightened(path: &Path, was: u32, now: u32) {
    tracing::warn!(
        path = %path.display(),
        "{} was mode {:04o}: set to {now:04o}, so that only its owner reads codeb's store",
        path.display(),
        was & 0o7777
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_and_private_is_kept_readable_is_tightened_writable_or_foreign_is_refused() {
        use Verdict::*;
        // (mode, owner, process uid, the mode it should have, verdict)
        let cases = [
            (0o40700, 1000, 1000, DIR_MODE, Keep),
            (0o100600, 1000, 1000, FILE_MODE, Keep),
            (0o100400, 1000, 1000, FILE_MODE, Keep),
            // What codeb created before: readable by all, written by nobody else.
            (0o40755, 0, 0, DIR_MODE, Tighten),
            (0o40750, 0, 0, DIR_MODE, Tighten),
            (0o100644, 0, 0, FILE_MODE, Tighten),
            (0o100700, 0, 0, FILE_MODE, Tighten),
            // Writable by others, even when ours, sticky bit or not.
            (0o40777, 0, 0, DIR_MODE, Writable),
            (0o41777, 0, 0, DIR_MODE, Writable),
            (0o40770, 0, 0, DIR_MODE, Writable),
            (0o100602, 0, 0, FILE_MODE, Writable),
            // Another user's, whatever its mode.
            (0o40700, 1000, 0, DIR_MODE, Foreign),
            (0o40700, 0, 1000, DIR_MODE, Foreign),
        ];
        for (mode, owner, uid, private, expected) in cases {
            assert_eq!(
                verdict(mode, owner, uid, private),
                expected,
                "mode {mode:o}, owner {owner}, uid {uid}"
            );
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_state_dir_and_its_files_are_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        let file = dir.join("codeb.redb");
        open_private(&file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
    }

    #[test]
    fn an_existing_readable_dir_and_file_are_tightened_and_a_writable_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("codeb.lock");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        prepare(&dir).unwrap();
        open_private(&file).unwrap();
        assert_eq!((mode(&dir), mode(&file)), (DIR_MODE, FILE_MODE));

        std::fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&dir).unwrap_err();
        assert!(matches!(e, Error::Writable { .. }), "{e}");
        assert!(e.to_string().contains("chmod 700"), "{e}");
        assert_eq!(mode(&dir), 0o777, "a refused directory is left as it is");
    }

    #[test]
    fn a_readable_dir_holding_other_files_is_refused_not_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("home");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(".profile"), "").unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let e = prepare(&dir).unwrap_err();
        assert!(matches!(e, Error::Shared { .. }), "{e}");
        assert!(e.to_string().contains("--state-dir"), "{e}");
        assert_eq!(mode(&dir), 0o755);
    }
}
