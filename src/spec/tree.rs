//! Where every key and value of a document was written: a tree of located YAML nodes.
//!
//! The typed manifests carry no positions, so a document's origins come from a second parse of
//! its input into a [`Tree`], a side table: validation asks it for the origin of a field by its
//! path (`spec.environments.production.port`), and error reporting asks it which field a serde
//! error's location belongs to, to phrase the message for that field. The tree holds scalar
//! text, including `env` values: it is never printed, and [`Tree::scalar`] is only used for
//! fields that are not secret.
//!
//! The second parse is made only when an origin is asked for ([`Trees`]): a set of manifests
//! without a mistake is parsed once (the second parse was about 40% of a 30-project no-op
//! apply's loading), and the first origin asked for parses the whole input, as the loader did
//! before, so every location is the one it was.

use std::sync::{Arc, OnceLock};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// One YAML node: scalars keep their text, collections their located children.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Scalar(String),
    Null,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root, displayed as `spec.environments.production.command[1]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Path(pub Vec<Seg>);

impl Path {
    /// The last key, if the path ends with one.
    pub(crate) fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The path without its last step.
    pub(crate) fn parent(&self) -> Path {
        Path(self.0[..self.0.len().saturating_sub(1)].to_vec())
    }

    /// Whether the path is inside an `env` mapping, where values are secrets.
    pub(crate) fn is_under_env(&self) -> bool {
        let keys = self.keys();
        keys.iter()
            .position(|k| *k == Some("env"))
            .is_some_and(|i| i + 1 < keys.len())
    }

    /// The path as the strings [`Tree::value_location`] takes.
    pub(crate) fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|s| match s {
                Seg::Key(k) => k.clone(),
                Seg::Index(i) => i.to_string(),
            })
            .collect()
    }

    /// The keys of the path, `None` for indexes.
    pub(crate) fn keys(&self) -> Vec<Option<&str>> {
        self.0
            .iter()
            .map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            })
            .collect()
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{}", super::error::quote(k))?,
                Seg::Key(k) => write!(f, ".{}", super::error::quote(k))?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A node found at a location: the path to it, and whether the location is its key's.
#[derive(Debug)]
pub(crate) struct Hit<'a> {
    pub path: Path,
    pub is_key: bool,
    pub node: &'a Spanned<Node>,
}

/// A document's located node tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tree {
    pub root: Spanned<Node>,
}

impl Tree {
    fn get(&self, path: &[&str]) -> Option<(Option<&Spanned<String>>, &Spanned<Node>)> {
        let mut key = None;
        let mut node = &self.root;
        for step in path {
            match &node.value {
                Node::Map(entries) => {
                    let (k, v) = entries.iter().find(|(k, _)| k.value == *step)?;
                    key = Some(k);
                    node = v;
                }
                Node::Seq(items) => {
                    key = None;
                    node = items.get(step.parse::<usize>().ok()?)?;
                }
                _ => return None,
            }
        }
        Some((key, node))
    }

    /// Where the value at `path` is; for a path that is not there, where its nearest present
    /// ancestor is (so a missing field is reported at the mapping it is missing from).
    pub(crate) fn value_location(&self, path: &[&str]) -> Location {
        (0..=path.len())
            .rev()
            .find_map(|n| self.get(&path[..n]))
            .map(|(_, v)| v.referenced)
            .unwrap_or(self.root.referenced)
    }

    /// Where the key at the end of `path` is (the value's location when it has no key).
    pub(crate) fn key_location(&self, path: &[&str]) -> Location {
        match self.get(path) {
            Some((Some(k), _)) => k.referenced,
            _ => self.value_location(path),
        }
    }

    /// Whether the value at `path` may be secret: it is inside an `env` mapping, or it is an
    /// alias (or merged value) of a value defined inside one.
    pub(crate) fn is_secret(&self, path: &Path) -> bool {
        if path.is_under_env() {
            return true;
        }
        let strings = path.to_strings();
        let strs: Vec<&str> = strings.iter().map(String::as_str).collect();
        match self.get(&strs) {
            Some((_, node)) if node.defined != node.referenced => self
                .find(node.defined.line(), node.defined.column())
                .iter()
                .any(|hit| hit.path.is_under_env()),
            _ => false,
        }
    }

    /// The text of the scalar at `path`, unless it [may be secret](Tree::is_secret).
    pub(crate) fn scalar(&self, path: &Path) -> Option<&str> {
        if self.is_secret(path) {
            return None;
        }
        let strings = path.to_strings();
        let strs: Vec<&str> = strings.iter().map(String::as_str).collect();
        match self.get(&strs) {
            Some((
                _,
                Spanned {
                    value: Node::Scalar(s),
                    ..
                },
            )) => Some(s),
            _ => None,
        }
    }

    /// Every key and value written at `(line, column)`, outermost first. A mapping starts where
    /// its first key does, so one location can be both.
    pub(crate) fn find(&self, line: u64, column: u64) -> Vec<Hit<'_>> {
        let at = |l: &Location| l.line() == line && l.column() == column;
        let mut hits = Vec::new();
        let mut stack = vec![(Path::default(), &self.root)];
        while let Some((path, node)) = stack.pop() {
            if at(&node.referenced) {
                hits.push(Hit {
                    path: path.clone(),
                    is_key: false,
                    node,
                });
            }
            match &node.value {
                Node::Map(entries) => {
                    for (k, v) in entries.iter().rev() {
                        let mut p = path.clone();
                        p.0.push(Seg::Key(k.value.clone()));
                        if at(&k.referenced) {
                            hits.push(Hit {
                                path: p.clone(),
                                is_key: true,
                                node: v,
                            });
                        }
                        stack.push((p, v));
                    }
                }
                Node::Seq(items) => {
                    for (i, v) in items.iter().enumerate().rev() {
                        let mut p = path.clone();
                        p.0.push(Seg::Index(i));
                        stack.push((p, v));
                    }
                }
                Node::Scalar(_) | Node::Null => {}
            }
        }
        hits.sort_by_key(|h| h.path.0.len());
        hits
    }
}

/// The located trees of one input's documents, parsed on first use: the input's text (its byte
/// order mark removed) and how many documents the first pass kept.
pub(crate) struct Trees {
    text: Box<str>,
    count: usize,
    parsed: OnceLock<Vec<Option<Tree>>>,
}

impl Trees {
    pub(crate) fn new(text: &str, count: usize) -> Arc<Trees> {
        Arc::new(Trees {
            text: text.into(),
            count,
            parsed: OnceLock::new(),
        })
    }

    /// The tree of document `index`, parsing the input on the first call; `None` when that
    /// document did not parse as a tree. Documents align with the first pass's, as both skip
    /// the same empty documents and recover from the same errors.
    pub(crate) fn get(&self, index: usize) -> Option<&Tree> {
        self.parsed
            .get_or_init(|| {
                super::load::documents::<Tree>(&self.text, self.count)
                    .into_iter()
                    .map(Result::ok)
                    .collect()
            })
            .get(index)?
            .as_ref()
    }

    /// Whether the input was parsed as trees (an origin was asked for).
    #[cfg(test)]
    pub(crate) fn parsed(&self) -> bool {
        self.parsed.get().is_some()
    }
}

impl std::fmt::Debug for Trees {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trees")
            .field("count", &self.count)
            .field("parsed", &self.parsed.get().is_some())
            .finish()
    }
}

/// One document's tree, parsed when first asked for (see [`Trees`]).
#[derive(Debug, Clone)]
pub(crate) struct DocTree {
    trees: Arc<Trees>,
    index: usize,
    /// Where the document starts: the tree is a null node there when the document did not
    /// parse as one.
    start: Location,
    fallback: OnceLock<Tree>,
}

impl DocTree {
    pub(crate) fn new(trees: Arc<Trees>, index: usize, start: Location) -> DocTree {
        DocTree {
            trees,
            index,
            start,
            fallback: OnceLock::new(),
        }
    }

    /// A document's tree given as such (tests).
    #[cfg(test)]
    pub(crate) fn of(tree: Tree) -> DocTree {
        let start = tree.root.referenced;
        let doc = DocTree::new(Trees::new("", 0), 0, start);
        let _ = doc.fallback.set(tree);
        doc
    }

    pub(crate) fn get(&self) -> &Tree {
        match self.trees.get(self.index) {
            Some(tree) => tree,
            None => self.fallback.get_or_init(|| Tree {
                root: Spanned::new(Node::Null, self.start, self.start),
            }),
        }
    }

    /// The input's trees, shared by its documents.
    #[cfg(test)]
    pub(crate) fn trees(&self) -> &Trees {
        &self.trees
    }
}

/// Two handles are equal when they are of the same document of the same input.
impl PartialEq for DocTree {
    fn eq(&self, other: &DocTree) -> bool {
        self.index == other.index
            && (Arc::ptr_eq(&self.trees, &other.trees) || self.trees.text == other.trees.text)
    }
}

impl Eq for DocTree {}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Tree {
            root: Spanned::deserialize(d)?,
        })
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Spanned<KeyText>, Spanned<Node>>()? {
            let (k, v) = entry;
            entries.push((Spanned::new(k.value.0, k.referenced, k.defined), v));
        }
        Ok(Node::Map(entries))
    }
}

/// A mapping key as text, whatever its YAML type (`1: x` has the key `1`).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(KeyText(match Node::deserialize(d)? {
            Node::Scalar(s) => s,
            Node::Null => "~".to_string(),
            Node::Seq(_) | Node::Map(_) => "<complex key>".to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> Tree {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn pos(l: Location) -> (usize, usize) {
        (l.line() as usize, l.column() as usize)
    }

    #[test]
    fn values_and_keys_are_found_by_path() {
        let t = tree(
            "spec:\n  environments:\n    production:\n      port: 80\n      command: [a, b]\n",
        );
        assert_eq!(
            pos(t.value_location(&["spec", "environments", "production", "port"])),
            (4, 13)
        );
        assert_eq!(
            pos(t.key_location(&["spec", "environments", "production"])),
            (3, 5)
        );
        assert_eq!(
            pos(t.value_location(&["spec", "environments", "production", "command", "1"])),
            (5, 20)
        );
    }

    #[test]
    fn a_missing_path_falls_back_to_its_nearest_ancestor() {
        let t = tree("spec:\n  host: a\n");
        assert_eq!(pos(t.value_location(&["spec", "zone"])), (2, 3));
    }

    #[test]
    fn a_location_is_traced_back_to_its_path() {
        let t = tree("spec:\n  env:\n    A: x\n");
        let hits = t.find(3, 5);
        assert_eq!(hits.last().unwrap().path.to_string(), "spec.env.A");
        assert!(hits.last().unwrap().is_key);
        assert_eq!(t.find(3, 8)[0].path.to_string(), "spec.env.A");
    }
}
