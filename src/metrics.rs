//! The daemon's Prometheus metrics (prometheus-client), served at `GET /metrics`.
//!
//! One process-wide set, created on first use: the reconcile loop, the executor and the API count
//! into it without being handed a registry. Labels are kinds, results, backends, routes and status
//! codes: never a project's env value, a key or a request body (nor a project name: their number
//! is the operator's, and a label per project would grow without bound).

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `env`, `host` or `zone`.
    pub kind: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackupLabels {
    /// `database` or `cache`.
    pub kind: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// `podman`, `caddy`, `kernel` or `powerdns`.
    pub backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObservationLabels {
    /// `warm` (reused, only the kernel's rules read) or `fresh`.
    pub observation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The route's pattern (`/api/v1/projects/{project}`), never the request's path.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric codeb exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_seconds: Histograms<KindLabels>,
    pub queue_depth: Gauge,
    pub backend_seconds: Histograms<BackendLabels>,
    pub backend_errors: Family<BackendLabels, Counter>,
    pub switches: Counter,
    pub switch_observations: Family<ObservationLabels, Counter>,
    pub deploys: Counter,
    pub health_check_failures: Counter,
    pub api_requests: Family<ApiLabels, Counter>,
    pub api_seconds: Histograms<RouteLabels>,
    /// Scheduled backups, by kind and result.
    pub backups: Family<BackupLabels, Counter>,
    pub backup_seconds: Histograms<KindLabels>,
}

/// Reconciles take from 1 ms (converged) to minutes (a health check waiting): 1 ms × 4ⁿ.
fn slow() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

/// Backend calls and API requests: 0.1 ms × 3ⁿ up to ~2 s.
fn fast() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 3.0, 10))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("codeb");
        let m = Metrics {
            registry: Registry::default(),
            reconciles: Family::default(),
            reconcile_seconds: Family::new_with_constructor(slow),
            queue_depth: Gauge::default(),
            backend_seconds: Family::new_with_constructor(fast),
            backend_errors: Family::default(),
            switches: Counter::default(),
            switch_observations: Family::default(),
            deploys: Counter::default(),
            health_check_failures: Counter::default(),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(fast),
            backups: Family::default(),
            backup_seconds: Family::new_with_constructor(slow),
        };
        registry.register(
            "build",
            "The running codeb's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "reconciles",
            "Reconciles run by the loop, by kind and result",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile took, by kind",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Work waiting in the loop's queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "backend_call_duration_seconds",
            "How long one executed step's backend call took, by backend",
            m.backend_seconds.clone(),
        );
        registry.register(
            "backend_errors",
            "Backend calls that failed, by backend",
            m.backend_errors.clone(),
        );
        registry.register("switches", "Traffic switches made", m.switches.clone());
        registry.register(
            "switch_observations",
            "How promotes and rollbacks observed their host: warm (kept from the last switch, only the kernel's rules read) or fresh",
            m.switch_observations.clone(),
        );
        registry.register("deploys", "Releases deployed", m.deploys.clone());
        registry.register(
            "health_check_failures",
            "Releases or switches refused because a health check failed",
            m.health_check_failures.clone(),
        );
        registry.register(
            "api_requests",
            "HTTP API requests, by route and status",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "HTTP API request time, by route",
            m.api_seconds.clone(),
        );
        registry.register(
            "backups",
            "Scheduled backups made or failed, by kind and result",
            m.backups.clone(),
        );
        registry.register(
            "backup_duration_seconds",
            "How long a scheduled backup took, by kind",
            m.backup_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text format of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
