//! Manifests: their types, loading them from files with exact locations, and validating them.
//!
//! Nothing here talks to a host. A set of manifests either loads completely and validly, or yields
//! errors that name file, line and column; never a partial set.
//!
//! `load` reads the inputs under `limits`; `document` reads each YAML document into its typed
//! spec and `tree` into located nodes; `diagnose` phrases YAML and type errors; `validate` checks
//! the set; `resources` says what a Host's `containers` and an environment's `resources` mean
//! (for validation and the model alike); `schema` derives the JSON Schemas in `crds-schema/`
//! from `types`, whose single-document rules are written as `patterns` beside the types.

mod diagnose;
mod document;
pub mod error;
pub mod limits;
mod load;
mod patterns;
pub mod resources;
pub mod schema;
mod tree;
pub mod types;
mod validate;

pub use document::Kind;
pub use error::{Error, Errors};
pub use load::{
    load_paths, load_paths_with_stdin, load_sources, load_str, read_sources, Source, STDIN_LABEL,
};
pub use types::*;
pub use validate::{check_protected, check_recorded, RecordedEnv};
pub(crate) use validate::{is_dns_label, is_dns_name};
