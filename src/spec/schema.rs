//! JSON Schemas of the manifest documents, generated from `types` with schemars.
//!
//! One schema per kind describes a whole document: `apiVersion` and `kind` as constants,
//! `metadata`, and the kind's `spec` (optional for a Zone). The files in `crds-schema/` are these
//! schemas, committed so editors can use them; `tests/spec_schema.rs` fails when they differ from
//! the types and rewrites them with `CODEB_UPDATE_SCHEMA=1`. No I/O here.

use schemars::generate::SchemaSettings;
use serde_json::{json, Value};

use super::document::Kind;
use super::types::{HostSpec, Metadata, ProjectSpec, ZoneSpec, API_VERSION};

/// The JSON Schema (draft 2020-12) of a document of `kind`.
pub fn document_schema(kind: Kind) -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let metadata = generator.subschema_for::<Metadata>();
    let (spec, description) = match kind {
        Kind::Host => (
            generator.subschema_for::<HostSpec>(),
            "a server codeb manages.",
        ),
        Kind::Zone => (generator.subschema_for::<ZoneSpec>(), "a DNS domain."),
        Kind::Project => (
            generator.subschema_for::<ProjectSpec>(),
            "an app deployed blue/green to one Host.",
        ),
    };
    let mut required = vec!["apiVersion", "kind", "metadata"];
    if kind != Kind::Zone {
        required.push("spec");
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": kind.as_str(),
        "description": format!("`kind: {kind}`: {description}"),
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": {
            "apiVersion": { "const": API_VERSION },
            "kind": { "const": kind.as_str() },
            "metadata": metadata,
            "spec": spec,
        },
        "$defs": generator.take_definitions(true),
    })
}

/// The file name of `kind`'s schema in `crds-schema/`, e.g. `host.json`.
pub fn file_name(kind: Kind) -> String {
    format!("{}.json", kind.as_str().to_ascii_lowercase())
}

/// The schema as committed: pretty JSON with a final newline.
pub fn render(kind: Kind) -> String {
    let mut text = serde_json::to_string_pretty(&document_schema(kind)).expect("a JSON value");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_schema_fixes_api_version_and_kind() {
        let schema = document_schema(Kind::Project);
        assert_eq!(schema["properties"]["apiVersion"]["const"], API_VERSION);
        assert_eq!(schema["properties"]["kind"]["const"], "Project");
        assert!(schema["$defs"]["EnvironmentSpec"].is_object());
    }

    #[test]
    fn only_a_zone_may_omit_its_spec() {
        let required = |k| document_schema(k)["required"].as_array().unwrap().len();
        assert_eq!(required(Kind::Zone), 3);
        assert_eq!(required(Kind::Host), 4);
    }
}
