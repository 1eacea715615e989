//! Manifests: their types, loading them from files with exact locations, and validating them.
//!
//! Nothing here talks to a host. A set of manifests either loads completely and validly, or yields
//! errors that name file, line and column; never a partial set.

pub mod types;

pub use types::*;
