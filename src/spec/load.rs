//! Loading manifests from files, directories and stdin into a validated [`Manifests`].
//!
//! Each input is a multi-document YAML stream, read in two passes: the first deserializes every
//! document into its typed spec (exact error locations), the second into a located node
//! [`Tree`] kept as the side table of origins for validation and error messages. A mistake in one
//! document does not stop the others; a syntax error ends its file. Inputs are bounded by
//! [`limits`] before and while they are read. The only I/O is reading the inputs.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::diagnose::yaml_error;
use super::document::{origin, Document, RawDocument};
use super::error::{Error, Errors};
use super::limits::{self, MAX_DOCUMENTS_PER_FILE, MAX_ERRORS, MAX_FILE_BYTES, MAX_TOTAL_BYTES};
use super::tree::{Node, Tree};
use super::types::{Manifests, Origin};
use super::validate::validate;

/// The label of standard input in messages, and the path that means it.
pub const STDIN_LABEL: &str = "<stdin>";

/// Loads and validates every manifest in `paths`: a file, a directory (every `*.yaml` and `*.yml`
/// below it, recursively, in sorted order, skipping names starting with `.`) or `-` for stdin.
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
        if loader.full() {
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
}

impl Loader {
    fn full(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
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
            if self.full() {
                break;
            }
            if path.as_os_str() == "-" {
                match stdin {
                    Some(text) => self.add_reader(STDIN_LABEL, Cursor::new(text.as_bytes()), None),
                    None => self.add_reader(STDIN_LABEL, std::io::stdin().lock(), None),
                }
            } else {
                self.add_path(path);
            }
        }
    }

    fn add_path(&mut self, path: &Path) {
        let label = path.display().to_string();
        match std::fs::metadata(path) {
            Err(e) => self.push(Error::file(&label, format!("cannot read: {e}"))),
            Ok(meta) if meta.is_dir() => {
                let mut files = Vec::new();
                let mut dirs = HashSet::new();
                if let Err(e) = yaml_files(path, &mut files, &mut dirs) {
                    self.push(Error::file(&e.0, format!("cannot read directory: {}", e.1)));
                }
                if files.is_empty() {
                    self.push(Error::file(
                        &label,
                        "no `*.yaml` or `*.yml` file in this directory",
                    ));
                }
                for file in files {
                    if self.full() {
                        break;
                    }
                    self.add_file(&file);
                }
            }
            Ok(_) => self.add_file(path),
        }
    }

    fn add_file(&mut self, path: &Path) {
        let label = path.display().to_string();
        if let Ok(canonical) = path.canonicalize() {
            if !self.seen.insert(canonical) {
                return;
            }
        }
        match std::fs::File::open(path) {
            Err(e) => self.push(Error::file(&label, format!("cannot read: {e}"))),
            Ok(file) => {
                // Refuse by size before reading, when the file says its size.
                let len = file
                    .metadata()
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
                self.add_reader(&label, file, len);
            }
        }
    }

    /// Reads at most [`MAX_FILE_BYTES`] from `reader`; `len` is its size when known in advance.
    fn add_reader(&mut self, label: &str, reader: impl Read, len: Option<u64>) {
        if let Some(len) = len.filter(|&l| l > MAX_FILE_BYTES) {
            return self.push(Error::file(label, too_large(len)));
        }
        if self.total_bytes + len.unwrap_or(0) > MAX_TOTAL_BYTES {
            return self.push(Error::file(
                label,
                format!(
                    "input refused: all inputs together are larger than {} MiB",
                    MAX_TOTAL_BYTES >> 20
                ),
            ));
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
        let mut docs = documents::<Spanned<RawDocument>>(text, MAX_DOCUMENTS_PER_FILE + 1);
        if docs.len() > MAX_DOCUMENTS_PER_FILE {
            docs.truncate(MAX_DOCUMENTS_PER_FILE);
            self.push(Error::file(
                label,
                format!("input refused: more than {MAX_DOCUMENTS_PER_FILE} documents in one file"),
            ));
        }
        // The second pass, for the origins of fields; documents align with the first pass, as
        // both skip the same empty documents and recover from the same errors.
        let trees = documents::<Tree>(text, docs.len());
        for (i, doc) in docs.into_iter().enumerate() {
            let tree = trees.get(i).and_then(|t| t.as_ref().ok());
            match doc {
                Err(e) => self.push(yaml_error(label, &e, tree)),
                Ok(doc) => {
                    let start = doc.referenced;
                    let tree = tree.cloned().unwrap_or(Tree {
                        root: Spanned::new(Node::Null, start, start),
                    });
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
fn documents<T: serde::de::DeserializeOwned>(
    text: &str,
    max: usize,
) -> Vec<Result<T, serde_saphyr::Error>> {
    let mut reader = Cursor::new(text.as_bytes());
    serde_saphyr::read_with_options::<_, T>(&mut reader, limits::options())
        .take(max)
        .collect()
}

/// The `*.yaml` and `*.yml` files below `dir`, depth first in name order. Entries whose name
/// starts with `.` are skipped; a directory reached twice (a symlink loop) is read once.
fn yaml_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), (String, std::io::Error)> {
    let fail = |e| (dir.display().to_string(), e);
    if !seen.insert(dir.canonicalize().map_err(fail)?) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(fail)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out, seen)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    Ok(())
}
