//! The committed JSON Schemas in `crds-schema/` are the ones the types generate.
//!
//! `CODEB_UPDATE_SCHEMA=1 cargo test --test spec_schema` rewrites them.

use std::path::PathBuf;

use codeb::spec::schema;

#[test]
fn committed_schemas_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds-schema");
    let update = std::env::var_os("CODEB_UPDATE_SCHEMA").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (file, expected) in schema::files() {
        let path = dir.join(&file);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &expected).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(expected.as_str()) {
            stale.push(format!("crds-schema/{file}"));
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from src/spec/types.rs; regenerate with:\n    CODEB_UPDATE_SCHEMA=1 cargo test --test spec_schema",
        stale.join(", ")
    );
}
