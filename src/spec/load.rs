//! Loading manifests from files, directories and stdin into a validated [`Manifests`].
//!
//! Each input is a multi-document YAML stream, read in two passes: the first deserializes every
//! document into its typed spec (exact error locations), the second into a located node
//! [`Tree`](super::tree::Tree) kept as the side table of origins for validation and error
//! messages. The second is made only when an origin is asked for (see [`Trees`]). A mistake in one
//! document does not stop the others; a syntax error ends its file. Inputs are bounded by
//! [`limits`] before and while they are read: each file's size, all inputs' bytes, the number of
//! files, of directory entries examined and of documents. The only I/O is reading the inputs.
//!
//! What is opened, so that a load can neither hang nor roam outside what it was given:
//! - Only regular files. A FIFO, socket or device is refused by its type before it is opened (a
//!   FIFO without a writer would block `open` forever), and files are opened with `O_NONBLOCK`
//!   and their type checked again on the open file, so one swapped in meanwhile cannot block
//!   either. A stream is read through `-` (stdin), bounded like a file.
//! - A path named on the command line is followed if it is a symlink (`-f current.yaml`).
//! - Inside a directory given, a symlink is followed only when it resolves inside that directory
//!   (a Kubernetes ConfigMap volume's `x.yaml -> ..data/x.yaml` works); one that leads outside is
//!   an error if it is named `*.yaml`/`*.yml` or points at a directory, and ignored otherwise, as
//!   any other file that is not a manifest. A link to `/` is therefore refused, not walked.
//!   Files found in a directory are opened with `O_NOFOLLOW` (a symlink followed is opened at its
//!   resolved path), so an entry replaced by a symlink after the walk is not followed either.
//!   This guards against mistakes and hostile manifest sets, not against someone who can write
//!   the directory while it is read (they could write the manifests).

use std::collections::{HashMap, HashSet};
use std::fs::FileType;
use std::io::{Cursor, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::diagnose::yaml_error;
use super::document::{origin, Document, Kind, RawDocument, Spec, SpecOf};
use super::error::{quote, Error, Errors};
use super::limits::{
    self, MAX_DIRECTORY_ENTRIES, MAX_DOCUMENTS, MAX_DOCUMENTS_PER_FILE, MAX_ERRORS, MAX_FILES,
    MAX_FILE_BYTES, MAX_TOTAL_BYTES,
};
use super::tree::{DocTree, Trees};
use super::types::{Manifests, Origin};
use super::validate::validate;

/// The label of standard input in messages, and the path that means it.
pub const STDIN_LABEL: &str = "<stdin>";

/// Loads and validates every manifest in `paths`: a file, a directory (every `*.yaml` and `*.yml`
/// below it, recursively, in sorted order, skipping names starting with `.`, following symlinks
/// only inside it) or `-` for stdin. Only regular files are read (see the module's doc).
///
/// # Errors
/// Every mistake found, in input order: unreadable or oversized inputs, YAML and type errors (one
/// per document: serde stops at the first in a document), and validation errors. References
/// between documents are only checked when every document loaded.
pub fn load_paths(paths: &[PathBuf]) -> Result<Manifests, Errors> {
    load_paths_with_stdin(paths, None)
}

/// As [`load_paths`], with `-` read from `stdin` when given instead of the process's standard
/// input (`codeb watch` answers for a client whose standard input it cannot read).
///
/// # Errors
/// As [`load_paths`].
pub fn load_paths_with_stdin(paths: &[PathBuf], stdin: Option<&str>) -> Result<Manifests, Errors> {
    let mut loader = Loader::default();
    loader.add_inputs(paths, stdin);
    loader.finish()
}

/// One manifest input as read: its label in messages (a path, `<stdin>`) and its text. A client
/// reads its files into sources and sends them (to `codeb watch`/`serve`, over the socket or
/// HTTP), so that the daemon never opens a path a client names; the daemon loads them with
/// [`load_sources`], under the same limits, and its errors name the client's files.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Source {
    /// The file's path as the client named it, or `<stdin>`; used in error messages only.
    pub name: String,
    pub text: String,
}

/// Reads `paths` as [`load_paths_with_stdin`] does (directories recursively, `-` from `stdin`
/// or standard input), under the same limits, without parsing.
///
/// # Errors
/// Unreadable or oversized inputs, an empty directory.
pub fn read_sources(paths: &[PathBuf], stdin: Option<&str>) -> Result<Vec<Source>, Errors> {
    let mut loader = Loader {
        collect: Some(Vec::new()),
        ..Loader::default()
    };
    loader.add_inputs(paths, stdin);
    if loader.errors.is_empty() {
        return Ok(loader.collect.unwrap_or_default());
    }
    Err(loader.finish().expect_err("a loader with errors fails"))
}

/// Loads and validates sources a client read (see [`Source`]), under the loader's limits: each
/// is bounded like a file, all of them together like the files of one load.
///
/// # Errors
/// As [`load_paths`].
pub fn load_sources(sources: &[Source]) -> Result<Manifests, Errors> {
    let mut loader = Loader::default();
    for s in sources {
        if loader.stopped() || !loader.admit(&s.name) {
            break;
        }
        let len = s.text.len() as u64;
        loader.add_reader(&s.name, Cursor::new(s.text.as_bytes()), Some(len));
    }
    if sources.is_empty() {
        loader.push(Error::file("<request>", "no manifest was sent"));
    }
    loader.finish()
}

/// Loads and validates the manifests in `text`, naming it `file_label` in errors.
///
/// # Errors
/// As [`load_paths`].
pub fn load_str(file_label: &str, text: &str) -> Result<Manifests, Errors> {
    let mut loader = Loader::default();
    if text.len() as u64 > MAX_FILE_BYTES {
        loader.push(Error::file(file_label, too_large(text.len() as u64)));
    } else {
        loader.total_bytes = text.len() as u64;
        loader.add_text(file_label, text);
    }
    loader.finish()
}

fn all_too_large() -> String {
    format!(
        "input refused: all inputs together are larger than {} MiB",
        MAX_TOTAL_BYTES >> 20
    )
}

/// Why a file of this type is not read.
fn not_regular(file_type: FileType) -> String {
    let what = if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    format!(
        "not read: {what}; manifests are read from regular files only (a FIFO, socket or device \
         can block or never end); pipe a stream to `-f -`"
    )
}

fn too_large(len: u64) -> String {
    format!(
        "input refused: {:.1} MiB is larger than the limit of {} MiB per file",
        len as f64 / (1024.0 * 1024.0),
        MAX_FILE_BYTES >> 20
    )
}

#[derive(Default)]
struct Loader {
    documents: Vec<Document>,
    errors: Vec<Error>,
    truncated: bool,
    total_bytes: u64,
    /// Input order of each file label, to sort errors.
    ranks: HashMap<String, usize>,
    /// Files already read (canonical paths), so a file named twice is read once.
    seen: HashSet<PathBuf>,
    /// When set, texts are collected here instead of parsed ([`read_sources`]).
    collect: Option<Vec<Source>>,
    /// Inputs admitted so far (files, stdin, sources), against [`MAX_FILES`].
    inputs: usize,
    /// Documents read so far, against [`MAX_DOCUMENTS`].
    document_count: usize,
    /// A limit on all inputs together was reached: nothing more is read.
    refused: bool,
}

impl Loader {
    fn full(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }

    /// Whether reading stops: too many errors, or a limit on all inputs together was reached.
    fn stopped(&self) -> bool {
        self.full() || self.refused
    }

    /// Counts one more input; past [`MAX_FILES`] it is refused, and so is everything after it.
    fn admit(&mut self, label: &str) -> bool {
        self.inputs += 1;
        if self.inputs > MAX_FILES {
            self.refuse(
                label,
                format!("input refused: more than {MAX_FILES} files in one load"),
            );
        }
        !self.refused
    }

    /// Reports a limit on all inputs together and stops reading.
    fn refuse(&mut self, label: &str, message: String) {
        self.push(Error::file(label, message));
        self.refused = true;
    }

    fn push(&mut self, error: Error) {
        let rank = self.ranks.len();
        self.ranks
            .entry(error.origin().file.clone())
            .or_insert(rank);
        if self.full() {
            self.truncated = true;
        } else {
            self.errors.push(error);
        }
    }

    fn add_inputs(&mut self, paths: &[PathBuf], stdin: Option<&str>) {
        for path in paths {
            if self.stopped() {
                break;
            }
            if path.as_os_str() == "-" {
                if !self.admit(STDIN_LABEL) {
                    break;
                }
                // At most MAX_FILE_BYTES + 1 bytes are read: stdin is bounded like a file.
                match stdin {
                    Some(text) => self.add_reader(STDIN_LABEL, Cursor::new(text.as_bytes()), None),
                    None => self.add_reader(STDIN_LABEL, std::io::stdin().lock(), None),
                }
            } else {
                self.add_path(path);
            }
        }
    }

    /// A path named on the command line: followed if it is a symlink.
    fn add_path(&mut self, path: &Path) {
        let label = path.display().to_string();
        match std::fs::metadata(path) {
            Err(e) => self.push(Error::file(&label, format!("cannot read: {e}"))),
            Ok(meta) if meta.is_dir() => self.add_dir(path),
            Ok(meta) if meta.is_file() => self.add_file(path, &label, false),
            Ok(meta) => self.push(Error::file(&label, not_regular(meta.file_type()))),
        }
    }

    fn add_dir(&mut self, dir: &Path) {
        let walk = Walk::run(dir);
        let found_none = walk.files.is_empty() && walk.errors.is_empty();
        // Past a limit, nothing more is read: the load fails anyway.
        self.refused |= walk.over_a_limit();
        for e in walk.errors {
            self.push(e);
        }
        if found_none {
            self.push(Error::file(
                &dir.display().to_string(),
                "no `*.yaml` or `*.yml` file in this directory",
            ));
        }
        for found in walk.files {
            if self.stopped() {
                break;
            }
            self.add_file(&found.open, &found.path.display().to_string(), true);
        }
    }

    /// Opens `path` (never blocking, and without following a final symlink when `nofollow`)
    /// and reads it if it is a regular file. `label` names it in messages.
    fn add_file(&mut self, path: &Path, label: &str, nofollow: bool) {
        if let Ok(canonical) = path.canonicalize() {
            if !self.seen.insert(canonical) {
                return;
            }
        }
        if !self.admit(label) {
            return;
        }
        let mut flags = libc::O_NONBLOCK;
        if nofollow {
            flags |= libc::O_NOFOLLOW;
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path);
        match opened.and_then(|f| f.metadata().map(|m| (f, m))) {
            Err(e) => self.push(Error::file(label, format!("cannot read: {e}"))),
            // Checked again on the open file: the path may have been replaced since.
            Ok((_, meta)) if !meta.is_file() => {
                self.push(Error::file(label, not_regular(meta.file_type())))
            }
            // Refused by size before reading.
            Ok((file, meta)) => self.add_reader(label, file, Some(meta.len())),
        }
    }

    /// Reads at most [`MAX_FILE_BYTES`] from `reader`; `len` is its size when known in advance.
    fn add_reader(&mut self, label: &str, reader: impl Read, len: Option<u64>) {
        if let Some(len) = len.filter(|&l| l > MAX_FILE_BYTES) {
            return self.push(Error::file(label, too_large(len)));
        }
        if self.total_bytes + len.unwrap_or(0) > MAX_TOTAL_BYTES {
            return self.refuse(label, all_too_large());
        }
        let mut bytes = Vec::new();
        if let Err(e) = reader.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
            return self.push(Error::file(label, format!("cannot read: {e}")));
        }
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return self.push(Error::file(
                label,
                format!("input refused: larger than {} MiB", MAX_FILE_BYTES >> 20),
            ));
        }
        self.total_bytes += bytes.len() as u64;
        // An input of unknown size (stdin, a file that grew) is counted once read.
        if self.total_bytes > MAX_TOTAL_BYTES {
            return self.refuse(label, all_too_large());
        }
        match String::from_utf8(bytes) {
            Ok(text) => self.add_text(label, &text),
            Err(e) => {
                let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
                let last_line = valid.rsplit(|&b| b == b'\n').next().unwrap_or_default();
                let column = String::from_utf8_lossy(last_line).chars().count() + 1;
                let origin = Origin {
                    file: label.to_string(),
                    line,
                    column,
                };
                self.push(Error::new(
                    origin,
                    "not valid UTF-8 text; manifests are UTF-8 YAML",
                ));
            }
        }
    }

    /// Parses one multi-document YAML stream.
    fn add_text(&mut self, label: &str, text: &str) {
        let rank = self.ranks.len();
        self.ranks.entry(label.to_string()).or_insert(rank);
        if let Some(sources) = &mut self.collect {
            sources.push(Source {
                name: label.to_string(),
                text: text.to_string(),
            });
            return;
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let room = MAX_DOCUMENTS.saturating_sub(self.document_count);
        let mut docs =
            documents::<Spanned<RawDocument>>(text, room.min(MAX_DOCUMENTS_PER_FILE) + 1);
        if docs.len() > MAX_DOCUMENTS_PER_FILE {
            docs.truncate(MAX_DOCUMENTS_PER_FILE);
            self.push(Error::file(
                label,
                format!("input refused: more than {MAX_DOCUMENTS_PER_FILE} documents in one file"),
            ));
        } else if docs.len() > room {
            docs.truncate(room);
            self.refuse(
                label,
                format!(
                    "input refused: more than {MAX_DOCUMENTS} documents in all inputs together"
                ),
            );
        }
        self.document_count += docs.len();
        read_deferred_specs(text, &mut docs);
        // The second pass, for the origins of fields, is made when an origin is first asked for:
        // an error here, or a mistake validation finds (see `Trees`).
        let trees = Trees::new(text, docs.len());
        for (i, doc) in docs.into_iter().enumerate() {
            match doc {
                Err(e) => self.push(yaml_error(label, &e, trees.get(i))),
                Ok(doc) => {
                    let tree = DocTree::new(trees.clone(), i, doc.referenced);
                    match RawDocument::finish(doc, label, tree) {
                        Ok(document) => self.documents.push(document),
                        Err(problems) => {
                            for p in problems {
                                self.push(Error::new(origin(label, p.location), p.message));
                            }
                        }
                    }
                }
            }
            if self.full() {
                break;
            }
        }
    }

    fn finish(mut self) -> Result<Manifests, Errors> {
        let loaded = self.errors.is_empty() && !self.truncated;
        match validate(std::mem::take(&mut self.documents), loaded) {
            Ok(manifests) if loaded => return Ok(manifests),
            Ok(_) => {}
            Err(errors) => errors.into_iter().for_each(|e| self.push(e)),
        }
        let ranks = &self.ranks;
        self.errors.sort_by_key(|e| {
            let o = e.origin();
            (
                ranks.get(&o.file).copied().unwrap_or(usize::MAX),
                o.line,
                o.column,
            )
        });
        if self.truncated {
            let last = self
                .errors
                .last()
                .map(|e| e.origin().file.clone())
                .unwrap_or_default();
            self.errors.push(Error::file(
                &last,
                format!("stopped after {MAX_ERRORS} errors"),
            ));
        }
        Err(Errors::from_vec(self.errors).expect("a load that is not Ok has errors"))
    }
}

/// The first `max` documents of a YAML stream, each deserialized as `T` under the [`limits`].
/// serde-saphyr's `read_with_options` recovers after an error in a document and goes on with
/// the next (a syntax error or a breached limit ends the stream).
///
/// A stream whose documents all read well (the usual case) is read from the string at once, which
/// costs about half of the reader's buffered decoding; any error reads it again through the
/// reader, whose per-document recovery then says what the error is and where, as it would have.
pub(super) fn documents<T: serde::de::DeserializeOwned>(
    text: &str,
    max: usize,
) -> Vec<Result<T, serde_saphyr::Error>> {
    if let Ok(mut all) = serde_saphyr::from_multiple_with_options::<T>(text, limits::options()) {
        all.truncate(max);
        return all.into_iter().map(Ok).collect();
    }
    let mut reader = Cursor::new(text.as_bytes());
    serde_saphyr::read_with_options::<_, T>(&mut reader, limits::options())
        .take(max)
        .collect()
}

/// Reads again, as their kind, the specs of the documents whose `spec` came before `kind` (see
/// [`RawDocument::deferred_kind`]): one more read of the stream, up to the last such document,
/// per kind that has one. A document whose second read fails becomes that error, located as any
/// error of a first read.
fn read_deferred_specs(text: &str, docs: &mut [Result<Spanned<RawDocument>, serde_saphyr::Error>]) {
    for kind in Kind::ALL {
        let wanted: Vec<usize> = docs
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d, Ok(d) if d.value.deferred_kind() == Some(kind)))
            .map(|(i, _)| i)
            .collect();
        let Some(&last) = wanted.last() else {
            continue;
        };
        // Both reads skip the same empty documents and recover from the same errors, so the
        // documents align, as the tree pass's do.
        let mut specs = specs_of(kind, text, last + 1);
        for i in wanted {
            let read = specs.get_mut(i).map(|r| std::mem::replace(r, Ok(None)));
            match read {
                Some(Ok(Some(spec))) => {
                    if let Ok(doc) = &mut docs[i] {
                        doc.value.set_deferred_spec(spec);
                    }
                }
                Some(Err(e)) => docs[i] = Err(e),
                // The second read disagrees with the first; `finish` reports the document.
                Some(Ok(None)) | None => {}
            }
        }
    }
}

/// The first `max` documents of a YAML stream, each read as [`SpecOf`] `kind`.
fn specs_of(kind: Kind, text: &str, max: usize) -> Vec<Result<Option<Spec>, serde_saphyr::Error>> {
    fn read<const K: usize>(
        text: &str,
        max: usize,
    ) -> Vec<Result<Option<Spec>, serde_saphyr::Error>> {
        documents::<SpecOf<K>>(text, max)
            .into_iter()
            .map(|r| r.map(|SpecOf(spec)| spec))
            .collect()
    }
    match kind {
        Kind::Host => read::<0>(text, max),
        Kind::Zone => read::<1>(text, max),
        Kind::Project => read::<2>(text, max),
    }
}

/// A manifest file found below a directory.
struct Found {
    /// Its path below the directory given, as messages name it.
    path: PathBuf,
    /// What is opened: the path, or, for a symlink, the file it resolves to inside the directory.
    open: PathBuf,
}

/// The walk of one directory given on the command line: its `*.yaml` and `*.yml` files, depth
/// first in name order, under [`MAX_DIRECTORY_ENTRIES`] and [`MAX_FILES`], following symlinks only
/// inside it (see the module's doc). Iterative, so a deep tree cannot exhaust the stack.
struct Walk {
    /// The directory given, resolved: symlinks must resolve below it.
    root: PathBuf,
    /// Its path as given, for messages.
    shown: String,
    files: Vec<Found>,
    errors: Vec<Error>,
    /// Directories read (resolved), so a directory reached twice (a symlink loop) is read once.
    seen: HashSet<PathBuf>,
    entries: usize,
}

/// An entry waiting to be looked at: its path below the directory given, and, for a symlink
/// followed to a directory, the directory it resolves to.
enum Pending {
    Entry(std::fs::DirEntry),
    Dir { path: PathBuf, resolved: PathBuf },
}

impl Walk {
    fn run(dir: &Path) -> Walk {
        let mut walk = Walk {
            root: PathBuf::new(),
            shown: dir.display().to_string(),
            files: Vec::new(),
            errors: Vec::new(),
            seen: HashSet::new(),
            entries: 0,
        };
        match dir.canonicalize() {
            Err(e) => walk.fail(dir, format!("cannot read directory: {e}")),
            Ok(root) => {
                walk.root = root.clone();
                let mut stack = vec![Pending::Dir {
                    path: dir.to_path_buf(),
                    resolved: root,
                }];
                while let Some(next) = stack.pop() {
                    if walk.over_a_limit() {
                        break;
                    }
                    match next {
                        Pending::Dir { path, resolved } => walk.read(&path, resolved, &mut stack),
                        Pending::Entry(entry) => walk.look_at(&entry, &mut stack),
                    }
                }
            }
        }
        walk
    }

    fn over_a_limit(&self) -> bool {
        self.entries > MAX_DIRECTORY_ENTRIES || self.files.len() > MAX_FILES
    }

    fn fail(&mut self, path: &Path, message: String) {
        self.errors
            .push(Error::file(&path.display().to_string(), message));
    }

    /// Reads the directory at `path` and queues its entries, first name on top.
    fn read(&mut self, path: &Path, resolved: PathBuf, stack: &mut Vec<Pending>) {
        if !self.seen.insert(resolved) {
            return;
        }
        let reader = match std::fs::read_dir(path) {
            Ok(reader) => reader,
            Err(e) => return self.fail(path, format!("cannot read directory: {e}")),
        };
        let mut entries = Vec::new();
        for entry in reader {
            self.entries += 1;
            if self.entries > MAX_DIRECTORY_ENTRIES {
                let message = format!(
                    "input refused: more than {MAX_DIRECTORY_ENTRIES} entries in this directory \
                     and those below it; expected a directory of manifests"
                );
                self.errors.push(Error::file(&self.shown, message));
                return;
            }
            match entry {
                Ok(entry) => entries.push(entry),
                Err(e) => return self.fail(path, format!("cannot read directory: {e}")),
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        stack.extend(entries.into_iter().map(Pending::Entry));
    }

    fn look_at(&mut self, entry: &std::fs::DirEntry, stack: &mut Vec<Pending>) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            return;
        }
        let path = entry.path();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) => return self.fail(&path, format!("cannot read: {e}")),
        };
        if file_type.is_symlink() {
            self.follow(path, yaml, stack);
        } else if file_type.is_dir() {
            match path.canonicalize() {
                Ok(resolved) => stack.push(Pending::Dir { path, resolved }),
                Err(e) => self.fail(&path, format!("cannot read directory: {e}")),
            }
        } else if yaml && file_type.is_file() {
            self.found(path.clone(), path);
        } else if yaml {
            self.fail(&path, not_regular(file_type));
        }
    }

    /// A symlink below the directory: followed when it resolves inside it.
    fn follow(&mut self, path: PathBuf, yaml: bool, stack: &mut Vec<Pending>) {
        let resolved = path
            .canonicalize()
            .and_then(|r| std::fs::metadata(&r).map(|m| (r, m)));
        let (resolved, meta) = match resolved {
            Ok(found) => found,
            // A broken link is only a mistake where a manifest was meant.
            Err(e) => {
                if yaml {
                    self.fail(&path, format!("cannot read: {e}"));
                }
                return;
            }
        };
        if !meta.is_dir() && !yaml {
            return;
        }
        if !resolved.starts_with(&self.root) {
            let message = format!(
                "not read: a symlink to `{}`, outside `{}`; symlinks in a manifest directory are \
                 followed only inside it (name a file outside on the command line)",
                quote(&resolved.display().to_string()),
                quote(&self.shown)
            );
            return self.fail(&path, message);
        }
        if meta.is_dir() {
            stack.push(Pending::Dir { path, resolved });
        } else if meta.is_file() {
            self.found(path, resolved);
        } else {
            self.fail(&path, not_regular(meta.file_type()));
        }
    }

    fn found(&mut self, path: PathBuf, open: PathBuf) {
        self.files.push(Found { path, open });
        if self.files.len() > MAX_FILES {
            let message = format!(
                "input refused: more than {MAX_FILES} manifest files in this directory and those \
                 below it"
            );
            self.errors.push(Error::file(&self.shown, message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = "apiVersion: codeb.kr/v1\nkind: Host\nmetadata: {name: h}\nspec:\n  address: 127.0.0.1\n  podman: unix:///run/podman.sock\n  caddy: {admin: \"http://127.0.0.1:2019\", listen: [\":80\"]}\n---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {name: z.test}\n---\napiVersion: codeb.kr/v1\nkind: Project\nmetadata: {name: p}\nspec:\n  host: h\n  zone: z.test\n  environments:\n    production:\n      image: localhost/app:v1\n      port: 8080\n      env: {A: x}\n";

    #[test]
    fn a_set_without_mistakes_is_parsed_once_and_its_origins_found_when_asked() {
        let m = load_str("m.yaml", SET).unwrap();
        let origins = &m.env_origins[&("p".to_string(), "production".to_string())];
        assert!(!origins.tree.trees().parsed());
        assert_eq!(origins.name().to_string(), "m.yaml:20:5");
        assert_eq!(origins.hostname().to_string(), "m.yaml:20:5");
        assert_eq!(origins.env_key("A").to_string(), "m.yaml:23:13");
        assert!(origins.tree.trees().parsed());
    }
}
