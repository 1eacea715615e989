//! codeb: a reconciling operator that deploys web apps blue/green to plain Podman hosts behind Caddy.
//!
//! The flow is one direction: `spec` (manifests) → `backend` observes the hosts → `plan` (pure) →
//! `reconcile` executes the plan and journals it in the `store`. `service` holds the use cases
//! every front end shares; `daemon` owns the store, the loop and the listeners; `cli` is a client
//! and a renderer of the service's views.

pub mod agent;
pub mod api;
pub mod auth;
pub mod backend;
pub mod backup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod service;
pub mod spec;
pub mod store;
