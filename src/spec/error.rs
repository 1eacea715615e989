//! The errors of loading and validating manifests: each names `file:line:column`, says what is
//! wrong and what is expected.
//!
//! An [`Error`] is a user's mistake in a manifest (or an unreadable input), never a bug or a
//! transient failure: none is worth a retry until the files change. Messages never contain the
//! value of an `env` entry; values that are echoed (names, kinds, ports, durations) are quoted,
//! stripped of control characters and shortened by `quote`.

use std::fmt;

use super::types::Origin;

/// One mistake in the manifests, where it was written and what is expected instead.
///
/// Displayed as `file:line:column: message`. An error about a whole file (unreadable, too large)
/// has line and column 0 and is displayed as `file: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    origin: Origin,
    message: String,
}

impl Error {
    pub(crate) fn new(origin: Origin, message: impl Into<String>) -> Self {
        Self {
            origin,
            message: message.into(),
        }
    }

    /// An error about a whole file or input, not about a place in it.
    pub(crate) fn file(file: &str, message: impl Into<String>) -> Self {
        Self::new(
            Origin {
                file: file.to_string(),
                line: 0,
                column: 0,
            },
            message,
        )
    }

    /// Where the mistake is. `line` and `column` are 1-based, or both 0 for a whole file.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// What is wrong and what is expected, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.origin.line == 0 {
            write!(f, "{}: {}", self.origin.file, self.message)
        } else {
            write!(f, "{}: {}", self.origin, self.message)
        }
    }
}

/// Every mistake found in a set of manifests: never empty, one per line when displayed, in the
/// order of the files and then of the lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(Vec<Error>);

impl Errors {
    /// `None` when there is no error.
    pub(crate) fn from_vec(errors: Vec<Error>) -> Option<Self> {
        (!errors.is_empty()).then_some(Self(errors))
    }

    /// The errors, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Error> {
        self.0.iter()
    }

    /// How many errors (at least 1).
    #[allow(clippy::len_without_is_empty)] // never empty
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_vec(self) -> Vec<Error> {
        self.0
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl std::error::Error for Errors {}

impl IntoIterator for Errors {
    type Item = Error;
    type IntoIter = std::vec::IntoIter<Error>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Errors {
    type Item = &'a Error;
    type IntoIter = std::slice::Iter<'a, Error>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The candidate closest to `input`, when it is close enough to be a likely typo: a small
/// Damerau-Levenshtein distance (a swap of two letters counts 1), ignoring case.
pub(crate) fn suggest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    let max = match input.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        6..=9 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&input, &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// ` (did you mean `x`?)` when there is a close candidate, else nothing.
pub(crate) fn did_you_mean(input: &str, candidates: &[&str]) -> String {
    suggest(input, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// `` `a`, `b`, `c` ``.
pub(crate) fn one_of(candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A user-written value made safe to echo inside backquotes: control characters escaped and at
/// most 64 characters kept. Never call it on an `env` value.
pub(crate) fn quote(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", sanitize(&value[..cut])),
        None => sanitize(value),
    }
}

/// `text` with control characters (line breaks, terminal escapes) escaped.
pub(crate) fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(line: usize, column: usize) -> Origin {
        Origin {
            file: "a.yaml".into(),
            line,
            column,
        }
    }

    #[test]
    fn an_error_displays_as_file_line_column_message() {
        let e = Error::new(origin(3, 7), "bad");
        assert_eq!(e.to_string(), "a.yaml:3:7: bad");
    }

    #[test]
    fn an_error_about_a_whole_file_has_no_line_and_column() {
        assert_eq!(
            Error::file("a.yaml", "too large").to_string(),
            "a.yaml: too large"
        );
    }

    #[test]
    fn errors_display_one_per_line() {
        let errors = Errors::from_vec(vec![
            Error::new(origin(1, 1), "x"),
            Error::new(origin(2, 3), "y"),
        ])
        .unwrap();
        assert_eq!(errors.to_string(), "a.yaml:1:1: x\na.yaml:2:3: y");
    }

    #[test]
    fn errors_are_never_empty() {
        assert!(Errors::from_vec(vec![]).is_none());
    }

    #[test]
    fn typos_get_a_suggestion() {
        let fields = [
            "image",
            "port",
            "command",
            "env",
            "healthCheck",
            "gracePeriod",
        ];
        assert_eq!(suggest("prot", &fields), Some("port"));
        assert_eq!(suggest("helthCheck", &fields), Some("healthCheck"));
        assert_eq!(suggest("healthcheck", &fields), Some("healthCheck"));
        assert_eq!(
            suggest("Projet", &["Host", "Zone", "Project"]),
            Some("Project")
        );
        assert_eq!(suggest("replicas", &fields), None);
        assert_eq!(did_you_mean("xyz", &fields), "");
    }

    #[test]
    fn quoted_values_are_short_and_free_of_control_characters() {
        assert_eq!(quote("a\nb"), "a\\nb");
        assert_eq!(quote(&"x".repeat(100)).chars().count(), 65);
    }
}
