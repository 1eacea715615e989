//! codeb: a reconciling operator that deploys web apps blue/green to plain Podman hosts behind Caddy.
//!
//! The flow is one direction: `spec` (manifests) → `backend` observes the hosts → `plan` (pure) →
//! `reconcile` executes the plan and journals it in the `store` → `cli` reports.

pub mod auth;
pub mod backend;
pub mod cli;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod spec;
pub mod store;
