//! Turns a serde-saphyr error into an [`Error`] that names `file:line:column`, says what is wrong
//! and what is expected, and never echoes a secret.
//!
//! serde-saphyr's own `Display` renders a snippet of the source, which could show an `env` value
//! from a neighbouring line; it is never used. The message is built from the error's variant and
//! its location, and the location is traced back to a field path in the document's [`Tree`]
//! (when the document could be parsed) to phrase it for that field: `port`, durations, enums.
//! Values are echoed only for fields that cannot be secret; anything under an `env` key is
//! described by its type alone.

use serde_saphyr::{Error as YamlError, MessageFormatter, UserMessageFormatter};

use super::document::origin;
use super::error::{did_you_mean, one_of, quote, sanitize, Error};
use super::limits::{self, MAX_FILE_BYTES};
use super::tree::{Hit, Node, Path, Tree};

/// The error serde-saphyr raised, without its snippet and alias wrappers.
fn original(err: &YamlError) -> &YamlError {
    match err {
        YamlError::WithSnippet { error, .. } | YamlError::AliasError { error, .. } => {
            original(error)
        }
        other => other,
    }
}

/// Our error for a serde-saphyr error in `file`. `tree` is the document's node tree, when the
/// document is syntactically valid.
pub(crate) fn yaml_error(file: &str, err: &YamlError, tree: Option<&Tree>) -> Error {
    let inner = original(err);
    let hits = match (tree, err.location()) {
        (Some(tree), Some(l)) => tree.find(l.line(), l.column()),
        _ => Vec::new(),
    };
    let subject = subject(inner, &hits);
    let found = subject.map(|h| match h.node.value {
        Node::Scalar(_) => "a string",
        Node::Null => "nothing",
        Node::Seq(_) => "a list",
        Node::Map(_) => "a mapping",
    });
    let mut path = subject.map(|h| h.path.clone());
    let mut location = err.location();
    match (subject, tree) {
        // A value error reported at the value's key is moved to the value.
        (Some(hit), _) if hit.is_key && is_value_error(inner) => {
            location = Some(hit.node.referenced);
        }
        // A missing field is reported at the last key of its mapping: move it to the mapping.
        (Some(hit), Some(tree))
            if hit.is_key && matches!(inner, YamlError::SerdeMissingField { .. }) =>
        {
            let parent = hit.path.parent();
            let strings = parent.to_strings();
            let strs: Vec<&str> = strings.iter().map(String::as_str).collect();
            location = Some(tree.value_location(&strs));
            path = Some(parent);
        }
        _ => {}
    }
    let message = message(inner, tree, path.as_ref(), found);
    match location {
        Some(location) if location.line() > 0 => Error::new(origin(file, location), message),
        _ => Error::file(file, message),
    }
}

/// Which node an error is about, chosen among the nodes at its location by what the error
/// points at: a key (unknown or duplicate field), a mapping (missing field), or a value.
fn subject<'a>(err: &YamlError, hits: &'a [Hit<'a>]) -> Option<&'a Hit<'a>> {
    match err {
        YamlError::SerdeUnknownField { .. } | YamlError::DuplicateMappingKey { .. } => {
            hits.iter().rev().find(|h| h.is_key)
        }
        YamlError::SerdeMissingField { .. } => hits
            .iter()
            .find(|h| !h.is_key && matches!(h.node.value, Node::Map(_)))
            .or_else(|| hits.iter().rev().find(|h| h.is_key)),
        // Raised by a visitor through serde's `de::Error`: serde-saphyr places these at the key
        // of the value being read.
        YamlError::SerdeInvalidType { .. }
        | YamlError::SerdeInvalidValue { .. }
        | YamlError::SerdeInvalidLength { .. }
        | YamlError::Message { .. } => hits
            .iter()
            .rev()
            .find(|h| h.is_key)
            .or_else(|| hits.iter().find(|h| !h.is_key)),
        // Raised by serde-saphyr at the value itself.
        _ => hits
            .iter()
            .find(|h| !h.is_key)
            .or_else(|| hits.iter().rev().find(|h| h.is_key)),
    }
}

/// `found` is the YAML type of the value the error is about, when known.
fn message(
    err: &YamlError,
    tree: Option<&Tree>,
    path: Option<&Path>,
    found: Option<&str>,
) -> String {
    let path = path.cloned();
    let text = match (tree, &path) {
        (Some(tree), Some(path)) => tree.scalar(path),
        _ => None,
    };
    // Unknown trees (a syntax error in the document) are not echoed from either.
    let secret = match (tree, &path) {
        (Some(tree), Some(path)) => tree.is_secret(path),
        _ => true,
    };
    match err {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let within = path.map(|p| p.parent()).filter(|p| !p.0.is_empty());
            let within = within.map(|p| format!(" in `{p}`")).unwrap_or_default();
            if expected.is_empty() {
                format!(
                    "unknown field `{}`{within}; no field is expected here",
                    quote(field)
                )
            } else {
                format!(
                    "unknown field `{}`{within}; expected one of {}{}",
                    quote(field),
                    one_of(expected),
                    did_you_mean(field, expected)
                )
            }
        }
        YamlError::SerdeMissingField { field, .. } => match path.filter(|p| !p.0.is_empty()) {
            Some(p) => format!("missing field `{field}` in `{p}`"),
            None => format!("missing field `{field}`"),
        },
        YamlError::DuplicateMappingKey { key, .. } => match key {
            Some(key) => format!("duplicate key `{}`; each key may appear once", quote(key)),
            None => "duplicate key; each key may appear once".to_string(),
        },
        YamlError::Budget { breach, .. } => limits::describe_breach(breach),
        YamlError::AliasReplayLimitExceeded { .. }
        | YamlError::AliasExpansionLimitExceeded { .. }
        | YamlError::AliasReplayStackDepthExceeded { .. }
        | YamlError::AliasReplayCounterOverflow { .. } => format!(
            "input refused: aliases expand to more than {} YAML events (an alias bomb?)",
            limits::MAX_REPLAYED_EVENTS
        ),
        YamlError::IOError { cause } if cause.kind() == std::io::ErrorKind::FileTooLarge => {
            format!("input refused: larger than {} MiB", MAX_FILE_BYTES >> 20)
        }
        YamlError::InvalidUtf8Input => "not valid UTF-8 text".to_string(),
        // The parser's own nesting limit (flow collections).
        YamlError::ExternalMessage { msg, .. } if msg.contains("recursion limit exceeded") => {
            limits::describe_breach(&serde_saphyr::budget::BudgetBreach::Depth {
                depth: limits::MAX_DEPTH + 1,
            })
        }
        YamlError::ExternalMessage { msg, .. } => format!("invalid YAML: {}", sanitize(msg)),
        _ if is_value_error(err) => value_message(err, path.as_ref(), text, found, secret),
        _ => plain(err),
    }
}

/// Errors about a value of the wrong type or content.
fn is_value_error(err: &YamlError) -> bool {
    matches!(
        err,
        YamlError::SerdeInvalidType { .. }
            | YamlError::SerdeInvalidValue { .. }
            | YamlError::SerdeInvalidLength { .. }
            | YamlError::SerdeUnknownVariant { .. }
            | YamlError::InvalidScalar { .. }
            | YamlError::Unexpected { .. }
            | YamlError::NullIntoString { .. }
            | YamlError::TaggedScalarCannotDeserializeIntoString { .. }
            | YamlError::BinaryNotUtf8 { .. }
            | YamlError::InvalidBinaryBase64 { .. }
            | YamlError::InvalidBooleanStrict { .. }
            | YamlError::Message { .. }
    )
}

fn value_message(
    err: &YamlError,
    path: Option<&Path>,
    text: Option<&str>,
    found: Option<&str>,
    secret: bool,
) -> String {
    let Some(path) = path.filter(|p| !p.0.is_empty()) else {
        if matches!(
            err,
            YamlError::Unexpected {
                expected: "mapping start",
                ..
            }
        ) {
            return "a manifest must be a mapping with `apiVersion`, `kind`, `metadata` and `spec`"
                .to_string();
        }
        return match err {
            // A custom message may quote the value, and without a path it may be an env value.
            YamlError::Message { .. } if secret => "invalid value (not shown)".to_string(),
            _ => format!("invalid value: {}", expectation(err, found)),
        };
    };
    let keys = path.keys();
    if path.is_under_env() {
        let variable = keys
            .iter()
            .position(|k| *k == Some("env"))
            .and_then(|i| keys[i + 1]);
        return format!(
            "invalid value of env variable `{}` in `{}`: expected a string (the value is not shown)",
            quote(variable.unwrap_or("?")),
            path.parent()
        );
    }
    let field = path.last_key().unwrap_or_default();
    // `environments.<name>.port`, in a document or in a bare ProjectSpec.
    let in_environment = keys.len() >= 3 && keys[keys.len() - 3] == Some("environments");
    match (field, text) {
        ("port", text) if in_environment => match text {
            Some(t) if t.parse::<i64>().is_ok() => {
                format!("invalid port {t}: expected an integer 1-65535")
            }
            Some(t) => format!("invalid port `{}`: expected an integer 1-65535", quote(t)),
            None => format!(
                "invalid port: expected an integer 1-65535, found {}",
                found.unwrap_or("another type")
            ),
        },
        ("gracePeriod" | "migrationGrace" | "timeout", Some(t)) => {
            let reason = match humantime::parse_duration(t) {
                Err(e) => format!(" ({e})"),
                Ok(_) => String::new(),
            };
            format!(
                "invalid duration `{}` for `{path}`{reason}; expected a number with a unit, like `30s`, `5m` or `1h`",
                quote(t)
            )
        }
        _ if secret => match err {
            YamlError::Message { .. } => format!("invalid `{path}` (the value is not shown)"),
            _ => format!(
                "invalid `{path}`: {} (the value is not shown)",
                expectation(err, found)
            ),
        },
        _ => match err {
            YamlError::SerdeUnknownVariant {
                variant, expected, ..
            } => format!(
                "invalid `{path}` value `{}`; expected one of {}{}",
                quote(variant),
                one_of(expected),
                did_you_mean(variant, expected)
            ),
            _ => format!("invalid `{path}`: {}", expectation(err, found)),
        },
    }
}

/// "expected X, found Y" for a value error, naming types only, never the value. `found` is the
/// YAML type of the value, for errors that do not say it.
fn expectation(err: &YamlError, found: Option<&str>) -> String {
    let found = found.map(|f| format!(", found {f}")).unwrap_or_default();
    match err {
        YamlError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | YamlError::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => {
            format!("expected {expected}, found {}", category(unexpected))
        }
        YamlError::SerdeInvalidLength { expected, .. } => format!("expected {expected}"),
        YamlError::SerdeUnknownVariant { expected, .. } => {
            format!("expected one of {}", one_of(expected))
        }
        YamlError::InvalidScalar { ty, .. } => format!("expected {}{found}", scalar_type(ty)),
        YamlError::Unexpected { expected, .. } => {
            format!("expected {}{found}", event_type(expected))
        }
        YamlError::NullIntoString { .. } => "expected a string, found nothing".to_string(),
        YamlError::TaggedScalarCannotDeserializeIntoString { .. } => {
            "expected a string, found a tagged value".to_string()
        }
        YamlError::InvalidBooleanStrict { .. } => "expected `true` or `false`".to_string(),
        other => plain(other),
    }
}

/// serde's `Unexpected` (`string "abc"`, `integer `5``, `sequence`) without the value.
fn category(unexpected: &str) -> String {
    let kind = unexpected
        .split(['`', '"', '\''])
        .next()
        .unwrap_or_default()
        .trim();
    match kind {
        "map" => "a mapping".to_string(),
        "sequence" => "a list".to_string(),
        "unit value" => "nothing".to_string(),
        k => format!(
            "{} {k}",
            if k.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            }
        ),
    }
}

fn scalar_type(ty: &str) -> String {
    match ty {
        "bool" => "`true` or `false`".to_string(),
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".to_string(),
        "f32" | "f64" => "a number".to_string(),
        other => format!("a {other}"),
    }
}

fn event_type(expected: &str) -> &str {
    match expected {
        "string scalar" => "a string",
        "sequence start" => "a list",
        "mapping start" => "a mapping",
        other => other,
    }
}

/// serde-saphyr's user-facing message, without location or snippet, control characters escaped.
fn plain(err: &YamlError) -> String {
    sanitize(&UserMessageFormatter.format_message(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::types::ProjectSpec;

    /// Reads `yaml` as a ProjectSpec (it must fail) and phrases the error.
    fn error(yaml: &str) -> String {
        let err = serde_saphyr::from_str::<ProjectSpec>(yaml).unwrap_err();
        let tree: Option<Tree> = serde_saphyr::from_str(yaml).ok();
        yaml_error("p.yaml", &err, tree.as_ref()).to_string()
    }

    const HEAD: &str = "host: h\nzone: z\nenvironments:\n  production:\n    image: a\n";

    #[test]
    fn serde_values_are_reduced_to_their_type() {
        assert_eq!(category("string \"hunter2\""), "a string");
        assert_eq!(category("integer `5`"), "an integer");
        assert_eq!(category("sequence"), "a list");
        assert_eq!(category("map"), "a mapping");
    }

    #[test]
    fn a_port_error_names_the_range() {
        assert_eq!(
            error(&format!("{HEAD}    port: 70000\n")),
            "p.yaml:6:11: invalid port 70000: expected an integer 1-65535"
        );
        assert_eq!(
            error(&format!("{HEAD}    port: [1]\n")),
            "p.yaml:6:11: invalid port: expected an integer 1-65535, found a list"
        );
    }

    #[test]
    fn an_env_value_of_the_wrong_type_is_described_by_its_type_only() {
        let message = error(&format!(
            "{HEAD}    port: 1\n    env:\n      KEY: {{s: hunter2}}\n"
        ));
        assert!(message.starts_with("p.yaml:8:12: invalid value of env variable `KEY`"));
        assert!(!message.contains("hunter2"));
    }

    #[test]
    fn an_unknown_enum_value_gets_a_suggestion() {
        assert_eq!(
            error(&format!("{HEAD}    port: 1\n    promotion: atuo\n")),
            "p.yaml:7:16: invalid `environments.production.promotion` value `atuo`; expected one \
             of `manual`, `auto` (did you mean `auto`?)"
        );
    }

    #[test]
    fn a_missing_field_names_the_mapping_it_is_missing_from() {
        assert_eq!(
            error(&format!("{HEAD}    command: [a]\n")),
            "p.yaml:5:5: missing field `port` in `environments.production`"
        );
    }
}
