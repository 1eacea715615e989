//! One manifest document (`apiVersion`, `kind`, `metadata`, `spec`), its keys in any order.
//!
//! An internally tagged enum would make serde buffer the document and lose every error location.
//! Instead a map visitor reads the keys in order and, on reaching `spec`, when it already knows
//! the kind, deserializes the spec straight into `HostSpec`, `ZoneSpec` or `ProjectSpec`, so
//! serde-saphyr's locations of unknown fields and wrong values stay exact. A YAML mapping has no
//! order, so `kind` may also come after `spec`: the visitor then skips the spec and marks the
//! document [`RawDocument::deferred_kind`], and the loader reads that document a second time as
//! [`SpecOf`] its kind, whose visitor reads `spec` straight into the kind's type. The locations
//! stay exact either way (the second read is of the same text); only a document whose `kind`
//! comes last costs a second read, of its file's documents up to it, per kind.
//!
//! Mistakes this visitor finds itself (wrong apiVersion, unknown kind, unknown top-level key)
//! are not raised with `de::Error::custom`, which serde-saphyr reports without a location; they
//! are kept as [`Problem`]s with the `Spanned` location of the offending key or value, and the
//! rest of the document is still read. No I/O, no cross-document checks.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::error::{did_you_mean, one_of, quote};
use super::limits::MAX_PROBLEMS_PER_DOCUMENT;
use super::tree::{DocTree, Path, Seg};
use super::types::{HostSpec, Origin, ProjectSpec, ZoneSpec, API_VERSION};

/// The kinds of document codeb reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Host,
    Zone,
    Project,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Host, Kind::Zone, Kind::Project];

    /// The `kind:` value, e.g. `Host`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Host => "Host",
            Kind::Zone => "Zone",
            Kind::Project => "Project",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn names() -> [&'static str; 3] {
        Kind::ALL.map(Kind::as_str)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec of a document, typed by its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec {
    Host(HostSpec),
    Zone(ZoneSpec),
    Project(ProjectSpec),
}

/// A mistake the document visitor found, with the location of the offending key or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub location: Location,
    pub message: String,
}

/// What the visitor read from one document. [`RawDocument::finish`] turns it into a
/// [`Document`] or the list of its problems.
#[derive(Debug, Default)]
pub(crate) struct RawDocument {
    api_version_seen: bool,
    kind_seen: bool,
    kind: Option<Kind>,
    name: Option<Spanned<String>>,
    labels: BTreeMap<String, String>,
    spec: Option<Spec>,
    spec_seen: bool,
    /// `spec` came before `kind` and was skipped: the loader reads it again as the kind
    /// (see [`RawDocument::deferred_kind`]).
    spec_deferred: bool,
    /// A wrong `apiVersion` or an unknown `kind` was found: the spec is not read.
    unreadable: bool,
    problems: Vec<Problem>,
}

/// A document that was read completely: its kind, name and typed spec, with its located node
/// tree for the origins of its fields (parsed when one is first asked for).
#[derive(Debug, Clone)]
pub(crate) struct Document {
    pub kind: Kind,
    pub name: String,
    /// Where `metadata.name`'s value is.
    pub name_origin: Origin,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
    pub file: String,
    pub tree: DocTree,
}

impl Document {
    /// Where the value at `path` (e.g. `["spec", "host"]`) is, or its nearest ancestor.
    pub(crate) fn value_origin(&self, path: &[&str]) -> Origin {
        origin(&self.file, self.tree.get().value_location(path))
    }

    /// Where the key at the end of `path` is.
    pub(crate) fn key_origin(&self, path: &[&str]) -> Origin {
        origin(&self.file, self.tree.get().key_location(path))
    }

    /// The text written at `path`, quoted for a message (`timeout: 100y` shows `` `100y` ``), or
    /// `fallback` quoted when it is not a scalar there; a placeholder when it may be a secret.
    pub(crate) fn show_written(&self, path: &[&str], fallback: &str) -> String {
        let tree_path = Path(path.iter().map(|s| Seg::Key(s.to_string())).collect());
        let written = self
            .tree
            .get()
            .scalar(&tree_path)
            .unwrap_or(fallback)
            .to_string();
        self.show(path, &written)
    }

    /// `value`, the value at `path`, quoted for a message; or a placeholder when it may be a
    /// secret (an alias of an `env` value).
    pub(crate) fn show(&self, path: &[&str], value: &str) -> String {
        let path = Path(path.iter().map(|s| Seg::Key(s.to_string())).collect());
        if self.tree.get().is_secret(&path) {
            "(value not shown)".to_string()
        } else {
            format!("`{}`", quote(value))
        }
    }
}

/// A value of the visitor quoted for a message, unless it is an alias: an alias could repeat a
/// secret defined earlier.
fn show_scalar(v: &Spanned<String>) -> String {
    if v.referenced == v.defined {
        format!("`{}`", quote(&v.value))
    } else {
        "(an alias, not shown)".to_string()
    }
}

/// An [`Origin`] in `file` at a serde-saphyr location.
pub(crate) fn origin(file: &str, location: Location) -> Origin {
    Origin {
        file: file.to_string(),
        line: location.line() as usize,
        column: location.column() as usize,
    }
}

const TOP_LEVEL_KEYS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

impl RawDocument {
    /// The kind to read this document's spec as in a second read ([`SpecOf`]): `spec` came
    /// before `kind`, and the kind is one codeb reads with an `apiVersion` it reads. `None`
    /// otherwise (the spec was read, or is not to be).
    pub(crate) fn deferred_kind(&self) -> Option<Kind> {
        self.kind.filter(|_| self.spec_deferred && !self.unreadable)
    }

    /// Sets the spec a second read found (see [`RawDocument::deferred_kind`]).
    pub(crate) fn set_deferred_spec(&mut self, spec: Spec) {
        self.spec = Some(spec);
        self.spec_deferred = false;
    }

    /// Records a problem; past [`MAX_PROBLEMS_PER_DOCUMENT`] they are dropped, so a document of
    /// 100,000 unknown keys costs no more than one of 20.
    fn problem(&mut self, location: Location, message: impl FnOnce() -> String) {
        if self.problems.len() < MAX_PROBLEMS_PER_DOCUMENT {
            self.problems.push(Problem {
                location,
                message: message(),
            });
        }
    }

    /// Checks that every required key was there. `start` is where the document's mapping starts.
    ///
    /// # Errors
    /// Every problem of the document, in the order they were found.
    pub(crate) fn finish(
        doc: Spanned<RawDocument>,
        file: &str,
        tree: DocTree,
    ) -> Result<Document, Vec<Problem>> {
        let start = doc.referenced;
        let mut raw = doc.value;
        if !raw.api_version_seen {
            raw.problem(start, || {
                format!("missing `apiVersion`; expected `apiVersion: {API_VERSION}`")
            });
        }
        if !raw.kind_seen {
            raw.problem(start, || {
                format!(
                    "missing `kind`; expected one of {}",
                    Kind::names().join(", ")
                )
            });
        }
        if raw.name.is_none() {
            raw.problem(start, || {
                "missing `metadata`; expected `metadata: {name: ...}`".to_string()
            });
        }
        if let (Some(kind), None, false) = (raw.kind, &raw.spec, raw.spec_seen) {
            match kind {
                Kind::Zone => raw.spec = Some(Spec::Zone(ZoneSpec::default())),
                _ => raw.problem(start, || format!("missing `spec` of the {kind}")),
            }
        }
        // The loader fills a deferred spec or reports the second read's error instead of this
        // document; never silently drop a document whose spec was not read.
        if raw.deferred_kind().is_some() {
            raw.problem(start, || {
                "internal error: the spec before `kind` was not read again".to_string()
            });
        }
        match raw {
            RawDocument {
                problems,
                kind: Some(kind),
                name: Some(name),
                spec: Some(spec),
                labels,
                ..
            } if problems.is_empty() => Ok(Document {
                kind,
                name_origin: origin(file, name.referenced),
                name: name.value,
                labels,
                spec,
                file: file.to_string(),
                tree,
            }),
            raw => Err(raw.problems),
        }
    }
}

/// `metadata`, with the location of the name.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    name: Spanned<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for RawDocument {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = RawDocument;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a manifest: a mapping with apiVersion, kind, metadata and spec")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDocument, A::Error> {
        let mut doc = RawDocument::default();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            match key.value.as_str() {
                "apiVersion" => {
                    doc.api_version_seen = true;
                    let v: Spanned<String> = map.next_value()?;
                    if v.value != API_VERSION {
                        doc.unreadable = true;
                        doc.problem(v.referenced, || {
                            format!(
                                "unsupported apiVersion {}; expected `{API_VERSION}`",
                                show_scalar(&v)
                            )
                        });
                    }
                }
                "kind" => {
                    doc.kind_seen = true;
                    let v: Spanned<String> = map.next_value()?;
                    doc.kind = Kind::parse(&v.value);
                    if doc.kind.is_none() {
                        doc.unreadable = true;
                        doc.problem(v.referenced, || {
                            format!(
                                "unknown kind {}; expected one of {}{}",
                                show_scalar(&v),
                                Kind::names().join(", "),
                                did_you_mean(&v.value, &Kind::names())
                            )
                        });
                    }
                }
                "metadata" => {
                    let m: RawMetadata = map.next_value()?;
                    doc.name = Some(m.name);
                    doc.labels = m.labels;
                }
                "spec" => {
                    doc.spec_seen = true;
                    match (doc.kind, doc.unreadable) {
                        (Some(kind), false) => doc.spec = Some(next_spec(&mut map, kind)?),
                        // `kind` comes later (or never): read again once it is known.
                        (None, false) => {
                            map.next_value::<IgnoredAny>()?;
                            doc.spec_deferred = true;
                        }
                        (_, true) => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                other => {
                    map.next_value::<IgnoredAny>()?;
                    doc.problem(key.referenced, || {
                        format!(
                            "unknown field `{}`; expected one of {}{}",
                            quote(other),
                            one_of(&TOP_LEVEL_KEYS),
                            did_you_mean(other, &TOP_LEVEL_KEYS)
                        )
                    });
                }
            }
        }
        Ok(doc)
    }
}

/// The next value of `map`, read as the spec of `kind`. A Zone's spec may be `null`.
fn next_spec<'de, A: MapAccess<'de>>(map: &mut A, kind: Kind) -> Result<Spec, A::Error> {
    Ok(match kind {
        Kind::Host => Spec::Host(map.next_value()?),
        Kind::Zone => Spec::Zone(map.next_value::<Option<ZoneSpec>>()?.unwrap_or_default()),
        Kind::Project => Spec::Project(map.next_value()?),
    })
}

/// The second read of a document whose `spec` came before its `kind` (see
/// [`RawDocument::deferred_kind`]): its `spec` read as the kind at `Kind::ALL[KIND]`, every other
/// key skipped (the first read checked them). `None` when there is no `spec`.
///
/// A type per kind, rather than a kind passed in: serde-saphyr reads a stream's documents into
/// a `DeserializeOwned` type, so the kind is in the type. Its errors carry serde-saphyr's
/// locations, as the first read's do.
pub(crate) struct SpecOf<const KIND: usize>(pub Option<Spec>);

impl<'de, const KIND: usize> Deserialize<'de> for SpecOf<KIND> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SpecOfVisitor::<KIND>)
    }
}

struct SpecOfVisitor<const KIND: usize>;

impl<'de, const KIND: usize> Visitor<'de> for SpecOfVisitor<KIND> {
    type Value = SpecOf<KIND>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a manifest: a mapping with apiVersion, kind, metadata and spec")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpecOf<KIND>, A::Error> {
        let mut spec = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "spec" && spec.is_none() {
                spec = Some(next_spec(&mut map, Kind::ALL[KIND])?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(SpecOf(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Result<Document, Vec<String>> {
        let doc: Spanned<RawDocument> = serde_saphyr::from_str(yaml).unwrap();
        let tree: super::super::tree::Tree = serde_saphyr::from_str(yaml).unwrap();
        RawDocument::finish(doc, "f.yaml", DocTree::of(tree)).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| {
                    format!(
                        "{}:{}: {}",
                        p.location.line(),
                        p.location.column(),
                        p.message
                    )
                })
                .collect()
        })
    }

    /// Why [`Problem`]s exist: an error a visitor raises itself has no location.
    #[test]
    fn serde_saphyr_gives_errors_raised_by_a_visitor_no_location() {
        struct Refuses;
        impl<'de> Deserialize<'de> for Refuses {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let _ = IgnoredAny::deserialize(d)?;
                Err(serde::de::Error::custom("no"))
            }
        }
        let err = serde_saphyr::from_str::<Refuses>("a: 1\nb: 2\n")
            .err()
            .unwrap();
        assert_eq!(err.location(), None);
    }

    #[test]
    fn an_aliased_kind_is_not_echoed() {
        let problems =
            read("x: &k Secret\nkind: *k\napiVersion: codeb.kr/v1\nmetadata: {name: a}\n")
                .unwrap_err();
        assert!(problems
            .iter()
            .any(|p| p.starts_with("2:7: unknown kind (an alias, not shown)")));
        assert!(problems.iter().all(|p| !p.contains("Secret")));
    }

    #[test]
    fn a_zone_may_omit_its_spec() {
        let doc =
            read("apiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {name: codeb.test}\n").unwrap();
        assert_eq!(doc.spec, Spec::Zone(ZoneSpec::default()));
        assert_eq!((doc.name_origin.line, doc.name_origin.column), (3, 18));
    }

    #[test]
    fn a_spec_before_its_kind_is_deferred_to_a_read_as_that_kind() {
        let text = "apiVersion: codeb.kr/v1\nspec: {ttl: 60}\nkind: Zone\nmetadata: {name: z}\n";
        let doc: Spanned<RawDocument> = serde_saphyr::from_str(text).unwrap();
        assert_eq!(doc.value.deferred_kind(), Some(Kind::Zone));
        let SpecOf(spec) = serde_saphyr::from_str::<SpecOf<1>>(text).unwrap();
        assert!(matches!(spec, Some(Spec::Zone(z)) if z.ttl == 60));
    }

    #[test]
    fn a_spec_before_a_wrong_api_version_or_an_unknown_kind_is_not_read_again() {
        for text in [
            "spec: {x: 1}\napiVersion: v1\nkind: Zone\nmetadata: {name: z}\n",
            "spec: {x: 1}\napiVersion: codeb.kr/v1\nkind: Zome\nmetadata: {name: z}\n",
        ] {
            let doc: Spanned<RawDocument> = serde_saphyr::from_str(text).unwrap();
            assert_eq!(doc.value.deferred_kind(), None, "{text}");
            assert_eq!(read(text).unwrap_err().len(), 1, "{text}");
        }
    }

    #[test]
    fn a_spec_without_any_kind_is_reported_as_a_missing_kind_only() {
        let problems =
            read("apiVersion: codeb.kr/v1\nspec: {}\nmetadata: {name: z}\n").unwrap_err();
        assert_eq!(
            problems,
            ["1:1: missing `kind`; expected one of Host, Zone, Project"]
        );
    }

    #[test]
    fn wrong_api_version_and_unknown_kind_are_both_reported() {
        let problems =
            read("apiVersion: v1\nkind: Projet\nmetadata: {name: a}\nspec: {x: 1}\n").unwrap_err();
        assert_eq!(
            problems,
            [
                "1:13: unsupported apiVersion `v1`; expected `codeb.kr/v1`",
                "2:7: unknown kind `Projet`; expected one of Host, Zone, Project (did you mean `Project`?)",
            ]
        );
    }

    #[test]
    fn missing_keys_are_reported_at_the_start_of_the_document() {
        let problems = read("kind: Host\n").unwrap_err();
        assert_eq!(
            problems,
            [
                "1:1: missing `apiVersion`; expected `apiVersion: codeb.kr/v1`",
                "1:1: missing `metadata`; expected `metadata: {name: ...}`",
                "1:1: missing `spec` of the Host",
            ]
        );
    }

    #[test]
    fn an_unknown_top_level_key_gets_a_suggestion() {
        let problems =
            read("apiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {name: z}\nspecs: {}\n")
                .unwrap_err();
        assert_eq!(
            problems,
            ["4:1: unknown field `specs`; expected one of `apiVersion`, `kind`, `metadata`, `spec` (did you mean `spec`?)"]
        );
    }
}
