//! JSON Schemas of the manifest documents, generated from `types` with schemars.
//!
//! One schema per kind describes a whole document: `apiVersion` and `kind` as constants,
//! `metadata` (a DNS label, or a DNS name for a Zone), and the kind's `spec` (optional, or
//! `null`, for a Zone). A fourth, [`combined_schema`] (`codeb.json`), dispatches on `kind` to the
//! three, so one editor setting covers a file of several documents. Every single-document rule
//! of `validate` is in them (see `patterns`); the cross-document ones (references, duplicates,
//! hostnames shared across documents, a Host's limits on a Project) are codeb's alone, as
//! `tests/spec_schema_agrees.rs` lists. The files in `crds-schema/` are these schemas, committed
//! so editors can use them; `tests/spec_schema.rs` fails when they differ from the types and
//! rewrites them with `CODEB_UPDATE_SCHEMA=1`. No I/O here.

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::document::Kind;
use super::patterns;
use super::types::{HostSpec, Metadata, ProjectSpec, ZoneSpec, API_VERSION};

/// Where the schemas are published: each `$id` is this and its [`file_name`].
pub const ID_BASE: &str = "https://codeb.kr/schema/v1/";

/// The file name of the schema that covers every kind.
pub const COMBINED_FILE: &str = "codeb.json";

/// The JSON Schema (draft 2020-12) of a document of `kind`.
pub fn document_schema(kind: Kind) -> Value {
    let (mut body, defs) = document_body(kind);
    let body = body.as_object_mut().expect("an object");
    let mut schema = Map::new();
    schema.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    schema.insert("$id".into(), json!(format!("{ID_BASE}{}", file_name(kind))));
    schema.append(body);
    schema.insert("$defs".into(), Value::Object(defs));
    Value::Object(schema)
}

/// A document of `kind` without `$schema`, `$id` and `$defs`, and its `$defs` (which refer to
/// each other as `#/$defs/NAME`).
fn document_body(kind: Kind) -> (Value, Map<String, Value>) {
    let mut generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
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
    let mut spec = spec.to_value();
    let mut required = vec!["apiVersion", "kind", "metadata"];
    if kind == Kind::Zone {
        // `spec:` left out or `spec: null` is a Zone of defaults.
        spec = json!({ "anyOf": [spec, { "type": "null" }] });
    } else {
        required.push("spec");
    }
    let body = json!({
        "title": kind.as_str(),
        "description": format!("`kind: {kind}`: {description}"),
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": {
            "apiVersion": { "const": API_VERSION },
            "kind": { "const": kind.as_str() },
            "metadata": metadata_schema(kind),
            "spec": spec,
        },
    });
    let defs = generator.take_definitions(true).into_iter().collect();
    (body, defs)
}

/// `metadata` of `kind`: its `name` is a DNS-1123 label, or a DNS name for a Zone.
fn metadata_schema(kind: Kind) -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let mut metadata = generator.root_schema_for::<Metadata>().to_value();
    let object = metadata.as_object_mut().expect("an object");
    object.remove("$schema");
    object.remove("title");
    let name = &mut object["properties"]["name"];
    match kind {
        Kind::Zone => {
            name["pattern"] = json!(patterns::dns_name());
            name["maxLength"] = json!(253);
        }
        Kind::Host | Kind::Project => name["pattern"] = json!(patterns::DNS_LABEL),
    }
    metadata
}

/// The schema of any document codeb reads: `kind` picks [`document_schema`]'s of that kind
/// (each under `$defs`), so one editor modeline or glob covers a multi-document file.
pub fn combined_schema() -> Value {
    let mut defs = Map::new();
    let mut dispatch = Vec::new();
    for kind in Kind::ALL {
        let (body, kind_defs) = document_body(kind);
        for (name, def) in kind_defs {
            // The kinds share types (`Resources`, ...): one definition each, the same for all.
            if let Some(existing) = defs.get(&name) {
                assert_eq!(existing, &def, "two kinds define `{name}` differently");
            }
            defs.insert(name, def);
        }
        let name = format!("{kind}Document");
        dispatch.push(json!({
            "if": { "properties": { "kind": { "const": kind.as_str() } }, "required": ["kind"] },
            "then": { "$ref": format!("#/$defs/{name}") },
        }));
        defs.insert(name, body);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{ID_BASE}{COMBINED_FILE}"),
        "title": "codeb manifest",
        "description": "Any codeb document (`apiVersion: codeb.kr/v1`): a Host, a Zone or a Project, chosen by its `kind`.",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "kind": { "enum": Kind::ALL.map(Kind::as_str) },
        },
        "allOf": dispatch,
        "$defs": defs,
    })
}

/// The file name of `kind`'s schema in `crds-schema/`, e.g. `host.json`.
pub fn file_name(kind: Kind) -> String {
    format!("{}.json", kind.as_str().to_ascii_lowercase())
}

/// Every schema file of `crds-schema/` and its text as committed: pretty JSON with a final
/// newline.
pub fn files() -> Vec<(String, String)> {
    let render = |schema: Value| {
        let mut text = serde_json::to_string_pretty(&schema).expect("a JSON value");
        text.push('\n');
        text
    };
    let mut files: Vec<(String, String)> = Kind::ALL
        .into_iter()
        .map(|kind| (file_name(kind), render(document_schema(kind))))
        .collect();
    files.push((COMBINED_FILE.to_string(), render(combined_schema())));
    files
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
    fn every_schema_has_an_id_under_the_same_base() {
        for (file, text) in files() {
            let schema: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(schema["$id"], format!("{ID_BASE}{file}"));
        }
    }

    #[test]
    fn the_combined_schema_dispatches_on_every_kind() {
        let schema = combined_schema();
        assert_eq!(schema["allOf"].as_array().unwrap().len(), Kind::ALL.len());
        for kind in Kind::ALL {
            let def = &schema["$defs"][format!("{kind}Document")];
            assert_eq!(def["properties"]["kind"]["const"], kind.as_str());
        }
    }

    #[test]
    fn only_a_zone_may_omit_its_spec() {
        let required = |k| document_schema(k)["required"].as_array().unwrap().len();
        assert_eq!(required(Kind::Zone), 3);
        assert_eq!(required(Kind::Host), 4);
    }
}
