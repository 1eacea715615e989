//! The routes: each turns an HTTP request into a `service::Request` and its typed answer into
//! JSON. The route table ([`ROUTES`], [`TOOLS`]) names the permission each needs; the tests walk
//! it, and the OpenAPI document is generated from the handlers below.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::auth::{route, Authed};
use super::error::{ApiError, ErrorBody};
use super::{Api, HealthView, TargetHealth, BODY_LIMIT, BODY_TIMEOUT};
use crate::auth::{AuditEntry, KeyRecord, Permission};
use crate::model::Slot;
use crate::service::view::{
    ApplyView, BackupFailed, BackupMade, BackupRow, BackupRunView, CacheView, DatabaseView,
    EnvChangeView, EnvDiffView, EnvExportView, EnvHistoryRow, EnvListRow, EnvListView,
    EnvValueView, EnvView, FailureView, HostRow, LogsView, NoteView, OutcomeView, OverrideView,
    PlanView, ProjectRow, ProjectView, ReleaseRow, RestoreView, SlotRow, SlotView, TableCheck,
};
use crate::service::{self, Ctx, GetWhat, Request as Req, Response as Res, MAX_LOG_LINES};
use crate::spec::Source;

/// One route and the permission it needs (`None`: no key needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub permission: Option<Permission>,
}

const fn r(method: &'static str, path: &'static str, permission: Option<Permission>) -> Route {
    Route {
        method,
        path,
        permission,
    }
}

/// Every route, as the router serves it and the OpenAPI document lists it.
pub const ROUTES: &[Route] = &[
    r("GET", "/health", None),
    r("GET", "/metrics", Some(Permission::Read)),
    r("GET", "/api/v1/openapi.json", None),
    r("GET", "/api/v1/projects", Some(Permission::Read)),
    r("GET", "/api/v1/projects/{project}", Some(Permission::Read)),
    r(
        "DELETE",
        "/api/v1/projects/{project}",
        Some(Permission::Delete),
    ),
    r("GET", "/api/v1/slots", Some(Permission::Read)),
    r("GET", "/api/v1/hosts", Some(Permission::Read)),
    r(
        "POST",
        "/api/v1/projects/{project}/environments/{environment}/deploy",
        Some(Permission::Deploy),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/environments/{environment}/promote",
        Some(Permission::Promote),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/environments/{environment}/rollback",
        Some(Permission::Rollback),
    ),
    r(
        "GET",
        "/api/v1/projects/{project}/environments/{environment}/releases",
        Some(Permission::Read),
    ),
    r(
        "GET",
        "/api/v1/projects/{project}/environments/{environment}/logs",
        Some(Permission::Logs),
    ),
    r("POST", "/api/v1/plan", Some(Permission::Read)),
    r("POST", "/api/v1/apply", Some(Permission::Apply)),
    r("GET", "/api/v1/audit", Some(Permission::AuditRead)),
    r(
        "GET",
        "/api/v1/projects/{project}/environments/{environment}/env",
        Some(Permission::EnvList),
    ),
    r(
        "PUT",
        "/api/v1/projects/{project}/environments/{environment}/env",
        Some(Permission::EnvWrite),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/environments/{environment}/env/unset",
        Some(Permission::EnvWrite),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/environments/{environment}/env/import",
        Some(Permission::EnvWrite),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/environments/{environment}/env/restore",
        Some(Permission::EnvWrite),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/environments/{environment}/db/rotate",
        Some(Permission::EnvProtected),
    ),
    r(
        "GET",
        "/api/v1/projects/{project}/environments/{environment}/env/history",
        Some(Permission::EnvList),
    ),
    r(
        "GET",
        "/api/v1/projects/{project}/environments/{environment}/env/diff",
        Some(Permission::EnvList),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/environments/{environment}/env/get",
        Some(Permission::EnvRead),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/environments/{environment}/env/export",
        Some(Permission::EnvRead),
    ),
    r(
        "GET",
        "/api/v1/projects/{project}/backups",
        Some(Permission::Backup),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/backups",
        Some(Permission::Backup),
    ),
    r(
        "POST",
        "/api/v1/projects/{project}/restore",
        Some(Permission::Restore),
    ),
    r("POST", "/api/tool", None),
];

/// The tools of `POST /api/tool` and the permission each needs.
pub const TOOLS: &[(&str, Permission)] = &[
    ("health_check", Permission::Read),
    ("status", Permission::Read),
    ("slots", Permission::Read),
    ("deploy", Permission::Deploy),
    ("promote", Permission::Promote),
    ("rollback", Permission::Rollback),
    ("logs", Permission::Logs),
];

/// The router, with the body limit, the body timeout and request metrics.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/projects", get(projects))
        .route(
            "/api/v1/projects/{project}",
            get(project).delete(delete_project),
        )
        .route("/api/v1/slots", get(slots))
        .route(
            "/api/v1/projects/{project}/backups",
            get(backup_list).post(backup_run),
        )
        .route("/api/v1/projects/{project}/restore", post(restore))
        .route("/api/v1/hosts", get(hosts))
        .route(
            "/api/v1/projects/{project}/environments/{environment}/deploy",
            post(deploy),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/promote",
            post(promote),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/rollback",
            post(rollback),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/releases",
            get(releases),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/logs",
            get(logs),
        )
        .route("/api/v1/plan", post(plan))
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/audit", get(audit))
        .route(
            "/api/v1/projects/{project}/environments/{environment}/env",
            get(env_list).put(env_set),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/env/unset",
            post(env_unset),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/env/import",
            post(env_import),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/env/restore",
            post(env_restore),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/db/rotate",
            post(db_rotate),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/env/history",
            get(env_history),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/env/diff",
            get(env_diff),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/env/get",
            post(env_get),
        )
        .route(
            "/api/v1/projects/{project}/environments/{environment}/env/export",
            post(env_export),
        )
        .route("/api/tool", post(tool))
        .route("/mcp", axum::routing::any(crate::mcp::http::handle))
        .route_layer(axum::middleware::from_fn(count))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_TIMEOUT,
        ))
        .with_state(api)
}

/// Counts every answered request by route pattern and status.
async fn count(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let route = route(&parts);
    let start = Instant::now();
    let response = next.run(Request::from_parts(parts, body)).await;
    let m = crate::metrics::metrics();
    m.api_requests
        .get_or_create(&crate::metrics::ApiLabels {
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    m.api_seconds
        .get_or_create(&crate::metrics::RouteLabels { route })
        .observe(start.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not-found", "no such route (see /api/v1/openapi.json)")
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        405,
        "method-not-allowed",
        format!("{method} is not a method of this route (see /api/v1/openapi.json)"),
    )
}

impl Api {
    fn ctx(&self, caller: crate::auth::Caller) -> Ctx {
        Ctx {
            caller,
            ..self.ctx.clone()
        }
    }

    /// Runs a request as `caller`.
    async fn call(&self, caller: crate::auth::Caller, req: Req) -> Result<Res, ApiError> {
        Ok(service::call(&self.ctx(caller), req).await?)
    }

    /// Refuses `caller` a request it may not make, before its body is read (see
    /// `service::authorize`).
    fn authorize(&self, caller: &crate::auth::Caller, req: &Req) -> Result<(), ApiError> {
        Ok(service::authorize(&self.ctx(caller.clone()), req)?)
    }
}

/// A result as JSON: a not converged outcome is still 200 (the request ran); its `converged`
/// says how it ended.
fn answer(res: Res) -> Response {
    match res {
        Res::Apply(v) => Json(v).into_response(),
        Res::Diff(v) => Json(v).into_response(),
        Res::Projects(v) => Json(v).into_response(),
        Res::Slots(v) => Json(v).into_response(),
        Res::Hosts(v) => Json(v).into_response(),
        Res::Project(v) => Json(v).into_response(),
        Res::Outcome(v) => Json(v).into_response(),
        Res::Releases(v) => Json(v).into_response(),
        Res::Logs(v) => Json(v).into_response(),
        Res::Audit(v) => Json(v).into_response(),
        Res::Keys(v) => Json(v).into_response(),
        Res::Version(v) => Json(v).into_response(),
        Res::KeyRevoked(v) => Json(v).into_response(),
        Res::Planned(v) => Json(v).into_response(),
        Res::EnvChanged(v) => Json(v).into_response(),
        Res::EnvList(v) => Json(v).into_response(),
        Res::EnvValue(v) => Json(v).into_response(),
        Res::EnvExport(v) => Json(v).into_response(),
        Res::EnvHistory(v) => Json(v).into_response(),
        Res::EnvDiff(v) => Json(v).into_response(),
        Res::BackupRun(v) => Json(v).into_response(),
        Res::Backups(v) => Json(v).into_response(),
        Res::Restored(v) => Json(v).into_response(),
        // Keys are made with the CLI only, and backups are written by it; never over HTTP.
        Res::KeyCreated { .. } | Res::EnvBackup(_) => {
            ApiError::new(500, "failed", "unexpected result").into_response()
        }
    }
}

/// A JSON body, with every failure a JSON error: 413 over the limit, 408 too slow, 400 malformed.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("the body is not valid JSON for this request: {e}"))
    })
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            413,
            "too-large",
            format!("the body is larger than {} MiB", BODY_LIMIT >> 20),
        ),
        StatusCode::REQUEST_TIMEOUT => {
            ApiError::new(408, "timeout", "the body was not sent in time")
        }
        _ => {
            // A body read that timed out surfaces as a failed read.
            let text = e.body_text();
            if text.contains("timed out") || text.contains("timeout") {
                ApiError::new(408, "timeout", "the body was not sent in time")
            } else {
                ApiError::bad_request(format!("cannot read the body: {text}"))
            }
        }
    })
}

#[utoipa::path(get, path = "/health", tag = "daemon",
    responses((status = 200, body = HealthView), (status = 503, body = HealthView)))]
async fn health(State(api): State<Api>) -> Response {
    let view = (api.health)();
    let status = if view.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(view)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "daemon", security(("key" = []), ("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
              (status = 401, body = ApiError)))]
async fn metrics(Authed(caller): Authed) -> Result<Response, ApiError> {
    crate::auth::authorize(&caller, Permission::Read, None)
        .map_err(|d| ApiError::new(403, "forbidden", d.to_string()))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::metrics().encode(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "daemon",
    responses((status = 200, description = "This document (OpenAPI 3.1)")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", security(("key" = []), ("bearer" = [])),
    responses((status = 200, body = Vec<ProjectRow>), (status = 401, body = ApiError)))]
async fn projects(State(api): State<Api>, Authed(c): Authed) -> Result<Response, ApiError> {
    Ok(answer(
        api.call(
            c,
            Req::Get {
                what: GetWhat::Projects,
            },
        )
        .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}", tag = "projects", security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path)),
    responses((status = 200, body = ProjectView), (status = 404, body = ApiError)))]
async fn project(
    State(api): State<Api>,
    Authed(c): Authed,
    Path(project): Path<String>,
) -> Result<Response, ApiError> {
    Ok(answer(api.call(c, Req::Describe { project }).await?))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}", tag = "projects", security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path)),
    responses((status = 200, body = OutcomeView), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn delete_project(
    State(api): State<Api>,
    Authed(c): Authed,
    Path(project): Path<String>,
) -> Result<Response, ApiError> {
    let req = Req::Delete {
        projects: vec![project],
        manifests: vec![],
    };
    Ok(answer(api.call(c, req).await?))
}

#[utoipa::path(get, path = "/api/v1/slots", tag = "projects", security(("key" = []), ("bearer" = [])),
    responses((status = 200, body = Vec<SlotRow>), (status = 401, body = ApiError)))]
async fn slots(State(api): State<Api>, Authed(c): Authed) -> Result<Response, ApiError> {
    Ok(answer(
        api.call(
            c,
            Req::Get {
                what: GetWhat::Slots,
            },
        )
        .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts", security(("key" = []), ("bearer" = [])),
    responses((status = 200, body = Vec<HostRow>), (status = 401, body = ApiError)))]
async fn hosts(State(api): State<Api>, Authed(c): Authed) -> Result<Response, ApiError> {
    Ok(answer(
        api.call(
            c,
            Req::Get {
                what: GetWhat::Hosts,
            },
        )
        .await?,
    ))
}

/// `POST .../deploy`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    /// The image to roll out, e.g. `ghcr.io/acme/app:sha-abc`.
    pub image: String,
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/deploy", tag = "environments",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)), request_body = DeployBody,
    responses((status = 200, body = OutcomeView), (status = 400, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn deploy(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req = Req::Deploy {
        project,
        environment,
        image: String::new(),
    };
    api.authorize(&c, &req)?;
    let DeployBody { image: new } = json_body(body)?;
    if let Req::Deploy { image, .. } = &mut req {
        *image = new;
    }
    Ok(answer(api.call(c, req).await?))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/promote", tag = "environments",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)),
    responses((status = 200, body = OutcomeView), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn promote(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = Req::Promote {
        project,
        environment,
    };
    Ok(answer(api.call(c, req).await?))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/db/rotate", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)),
    responses((status = 200, body = EnvChangeView), (status = 400, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError)))]
async fn db_rotate(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = Req::DbRotate {
        project,
        environment,
    };
    Ok(answer(api.call(c, req).await?))
}

/// `POST .../rollback`: no body (or `{}`) switches back to the grace slot at once; `to` rolls
/// back to that release of `GET .../releases`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The release number to roll back to: rolled out again blue/green (with its env version)
    /// when it is in no slot any more, the plain rollback when it is the grace slot's.
    pub to: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/rollback", tag = "environments",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)), request_body = Option<RollbackBody>,
    responses((status = 200, body = OutcomeView), (status = 400, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn rollback(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req = Req::Rollback {
        project,
        environment,
        to: None,
    };
    api.authorize(&c, &req)?;
    // No body is the plain rollback, as before the body existed.
    let bytes = body_bytes(body)?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let RollbackBody { to: n } = json_body(Ok(bytes))?;
        if let Req::Rollback { to, .. } = &mut req {
            *to = n;
        }
    }
    Ok(answer(api.call(c, req).await?))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/releases", tag = "environments",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)),
    responses((status = 200, body = Vec<ReleaseRow>, description = "Newest first; the last 100 are kept"),
              (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn releases(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = Req::Releases {
        project,
        environment,
    };
    Ok(answer(api.call(c, req).await?))
}

/// `GET .../logs` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// `blue` or `green`; the active slot when absent.
    #[param(value_type = Option<String>)]
    pub slot: Option<Slot>,
    /// How many lines, 1 to 1000 (default 100).
    pub lines: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/logs", tag = "environments",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path), LogsQuery),
    responses((status = 200, body = LogsView), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn logs(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let req = Req::Logs {
        project,
        environment,
        slot: q.slot,
        lines: q.lines.unwrap_or(100),
        follow: false,
    };
    Ok(answer(api.call(c, req).await?))
}

/// Posted manifests: `application/json` `{"manifests": [{"name", "text"}]}`, or the YAML text
/// itself (any other content type), named `<request>` in errors.
fn posted(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<Source>, ApiError> {
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Posted {
            manifests: Vec<Source>,
        }
        return Ok(json_body::<Posted>(body)?.manifests);
    }
    let bytes = body_bytes(body)?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("the manifests are not UTF-8 text"))?;
    Ok(vec![Source {
        name: "<request>".into(),
        text,
    }])
}

/// `POST /api/v1/apply` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyQuery {
    /// Plan only; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Remove recorded environments the manifests no longer contain (needs `prune`).
    #[serde(default)]
    pub prune: bool,
    /// With `prune`, allow removing every environment.
    #[serde(default)]
    pub allow_empty: bool,
    /// With `prune`, the number of environments it removes: needed when they belong to more than
    /// one project (a refusal names it).
    pub confirm: Option<usize>,
    /// With `prune`, the only projects whose environments may be removed, comma-separated.
    pub prune_projects: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/plan", tag = "manifests", security(("key" = []), ("bearer" = [])),
    request_body(content = String, description = "YAML manifests, or JSON {\"manifests\": [{\"name\", \"text\"}]}", content_type = "application/yaml"),
    responses((status = 200, body = PlanView), (status = 400, body = ApiError), (status = 413, body = ApiError)))]
async fn plan(
    State(api): State<Api>,
    Authed(c): Authed,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    api.authorize(&c, &Req::Diff { manifests: vec![] })?;
    let manifests = posted(&headers, body)?;
    Ok(answer(api.call(c, Req::Diff { manifests }).await?))
}

#[utoipa::path(post, path = "/api/v1/apply", tag = "manifests", security(("key" = []), ("bearer" = [])),
    params(ApplyQuery),
    request_body(content = String, description = "YAML manifests, or JSON {\"manifests\": [{\"name\", \"text\"}]}", content_type = "application/yaml"),
    responses((status = 200, body = ApplyView), (status = 400, body = ApiError), (status = 403, body = ApiError),
              (status = 409, body = ApiError), (status = 413, body = ApiError)))]
async fn apply(
    State(api): State<Api>,
    Authed(c): Authed,
    headers: HeaderMap,
    query: Result<Query<ApplyQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut req = Req::Apply {
        manifests: vec![],
        dry_run: q.dry_run,
        prune: q.prune,
        allow_empty: q.allow_empty,
        confirm: q.confirm,
        prune_projects: q
            .prune_projects
            .iter()
            .flat_map(|p| p.split(','))
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        timeout_ms: None,
    };
    api.authorize(&c, &req)?;
    if let Req::Apply { manifests, .. } = &mut req {
        *manifests = posted(&headers, body)?;
    }
    Ok(answer(api.call(c, req).await?))
}

/// `GET /api/v1/audit` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditQuery {
    pub project: Option<String>,
    /// Only entries at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// At most this many, the newest (default 100).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("key" = []), ("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 403, body = ApiError)))]
async fn audit(
    State(api): State<Api>,
    Authed(c): Authed,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let req = Req::Audit {
        project: q.project,
        since_ms: q.since_ms,
        limit: q.limit,
    };
    Ok(answer(api.call(c, req).await?))
}

/// `POST /api/tool`: the original platform's interface.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolBody {
    /// `health_check`, `status`, `slots`, `deploy`, `promote`, `rollback` or `logs`.
    pub tool: String,
    pub project: Option<String>,
    /// Default `production`.
    pub environment: Option<String>,
    /// For `deploy`.
    pub image: Option<String>,
    /// For `rollback`: the release number to roll back to (see `GET .../releases`).
    pub to: Option<u64>,
    /// For `logs`: `blue` or `green` (default: the active slot).
    #[schema(value_type = Option<String>)]
    pub slot: Option<Slot>,
    /// For `logs`: 1 to 1000 (default 100).
    pub lines: Option<usize>,
}

/// `POST /api/tool`'s answer: `ok`, then the tool's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolAnswer {
    pub ok: bool,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub result: Value,
}

#[utoipa::path(post, path = "/api/tool", tag = "tool", security(("key" = []), ("bearer" = [])),
    request_body = ToolBody,
    responses((status = 200, body = ToolAnswer), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn tool(
    State(api): State<Api>,
    Authed(c): Authed,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: ToolBody = json_body(body)?;
    let known = || TOOLS.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ");
    let environment = body
        .environment
        .clone()
        .unwrap_or_else(|| "production".into());
    let project = || {
        body.project.clone().ok_or_else(|| {
            ApiError::bad_request(format!("tool {}: `project` is required", body.tool))
        })
    };
    let (ok, result) = match body.tool.as_str() {
        "health_check" => {
            crate::auth::authorize(&c, Permission::Read, None)
                .map_err(|d| ApiError::new(403, "forbidden", d.to_string()))?;
            let h = (api.health)();
            (h.ok, serde_json::to_value(&h).expect("views serialize"))
        }
        "status" => {
            let Res::Projects(mut projects) = api
                .call(
                    c,
                    Req::Get {
                        what: GetWhat::Projects,
                    },
                )
                .await?
            else {
                unreachable!("get projects answers projects")
            };
            if let Some(p) = &body.project {
                projects.retain(|r| &r.project == p);
            }
            // Typed all the way: the most frequent tool, polled by CI and dashboards.
            return Ok(Json(StatusAnswer { ok: true, projects }).into_response());
        }
        "slots" => {
            let Res::Slots(mut slots) = api
                .call(
                    c,
                    Req::Get {
                        what: GetWhat::Slots,
                    },
                )
                .await?
            else {
                unreachable!("get slots answers slots")
            };
            if let Some(p) = &body.project {
                slots.retain(|r| &r.project == p);
            }
            return Ok(Json(SlotsAnswer { ok: true, slots }).into_response());
        }
        "deploy" => {
            let image = body
                .image
                .clone()
                .ok_or_else(|| ApiError::bad_request("tool deploy: `image` is required"))?;
            let req = Req::Deploy {
                project: project()?,
                environment,
                image,
            };
            outcome(api.call(c, req).await?)
        }
        "promote" => outcome(
            api.call(
                c,
                Req::Promote {
                    project: project()?,
                    environment,
                },
            )
            .await?,
        ),
        "rollback" => outcome(
            api.call(
                c,
                Req::Rollback {
                    project: project()?,
                    environment,
                    to: body.to,
                },
            )
            .await?,
        ),
        "logs" => {
            let req = Req::Logs {
                project: project()?,
                environment,
                slot: body.slot,
                lines: body.lines.unwrap_or(100).min(MAX_LOG_LINES),
                follow: false,
            };
            match api.call(c, req).await? {
                Res::Logs(l) => (true, serde_json::to_value(l).expect("views serialize")),
                _ => unreachable!("logs answers logs"),
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown tool {:?}; the tools are: {}",
                other.chars().take(64).collect::<String>(),
                known()
            )))
        }
    };
    Ok(Json(ToolAnswer { ok, result }).into_response())
}

/// `status`'s answer.
#[derive(Serialize)]
struct StatusAnswer {
    ok: bool,
    projects: Vec<ProjectRow>,
}

/// `slots`' answer.
#[derive(Serialize)]
struct SlotsAnswer {
    ok: bool,
    slots: Vec<SlotRow>,
}

fn outcome(res: Res) -> (bool, Value) {
    let ok = res.ok();
    match res {
        Res::Outcome(o) => (ok, serde_json::to_value(o).expect("views serialize")),
        _ => unreachable!("a switch or deploy answers an outcome"),
    }
}

/// `PUT .../env`: set variables (merged into the latest version).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvSetBody {
    /// Names and values, e.g. `{"API_TOKEN": "..."}`.
    pub vars: BTreeMap<String, String>,
    /// Change protected keys too (needs `env-protected`, an admin's).
    #[serde(default)]
    pub protected: bool,
}

/// `POST .../env/unset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvUnsetBody {
    pub keys: Vec<String>,
    #[serde(default)]
    pub protected: bool,
}

/// `POST .../env/import`: a dotenv file's text replaces the env (protected keys aside).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvImportBody {
    /// The file's name, for errors (`file:line`); default `<request>`.
    #[serde(default)]
    pub name: Option<String>,
    pub text: String,
    #[serde(default)]
    pub protected: bool,
}

/// `POST .../env/restore`: a new version equal to `version`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvRestoreBody {
    pub version: u64,
    #[serde(default)]
    pub protected: bool,
}

/// `POST .../env/get`: one value (a POST, so that no value is ever a cached GET's).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvGetBody {
    pub key: String,
}

/// `GET .../env/diff` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EnvDiffQuery {
    pub from: u64,
    pub to: u64,
}

/// `GET .../backups`: one environment's, or all; `verify` re-reads every file's SHA-256.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BackupListQuery {
    pub environment: Option<String>,
    #[serde(default)]
    pub verify: bool,
}

/// `POST .../backups`: back up now (one environment's, or all; one kind, or both).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRunBody {
    #[serde(default)]
    pub environment: Option<String>,
    /// `database` or `cache`; none: both.
    #[serde(default)]
    pub kind: Option<String>,
}

/// `POST .../restore`: a backup into a new database, or a cache's keys back (`replaceKeys`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreBody {
    pub from: String,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub to_database: Option<String>,
    #[serde(default)]
    pub replace_keys: bool,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/backups", tag = "backups",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), BackupListQuery),
    responses((status = 200, body = Vec<BackupRow>), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn backup_list(
    State(api): State<Api>,
    Authed(c): Authed,
    Path(project): Path<String>,
    query: Result<Query<BackupListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let probe = Req::BackupList {
        project: project.clone(),
        environment: None,
        verify: false,
    };
    api.authorize(&c, &probe)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let req = Req::BackupList {
        project,
        environment: q.environment,
        verify: q.verify,
    };
    Ok(answer(api.call(c, req).await?))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/backups", tag = "backups",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path)), request_body = BackupRunBody,
    responses((status = 200, body = BackupRunView), (status = 400, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError)))]
async fn backup_run(
    State(api): State<Api>,
    Authed(c): Authed,
    Path(project): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let probe = Req::BackupRun {
        project: project.clone(),
        environment: None,
        kind: None,
    };
    api.authorize(&c, &probe)?;
    let b: BackupRunBody = json_body(body)?;
    let kind = b
        .kind
        .map(|k| k.parse::<crate::backup::Kind>())
        .transpose()
        .map_err(ApiError::bad_request)?;
    let req = Req::BackupRun {
        project,
        environment: b.environment,
        kind,
    };
    Ok(answer(api.call(c, req).await?))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/restore", tag = "backups",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path)), request_body = RestoreBody,
    responses((status = 200, body = RestoreView), (status = 400, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError)))]
async fn restore(
    State(api): State<Api>,
    Authed(c): Authed,
    Path(project): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let probe = Req::Restore {
        project: project.clone(),
        environment: None,
        from: String::new(),
        to_database: None,
        replace_keys: false,
    };
    env_change(&api, c, probe, body, |b: RestoreBody| Req::Restore {
        project,
        environment: b.environment,
        from: b.from,
        to_database: b.to_database,
        replace_keys: b.replace_keys,
    })
    .await
}

/// Authorizes `req` (its body not read yet), then builds it from the body.
async fn env_change<B: serde::de::DeserializeOwned>(
    api: &Api,
    c: crate::auth::Caller,
    probe: Req,
    body: Result<Bytes, BytesRejection>,
    make: impl FnOnce(B) -> Req,
) -> Result<Response, ApiError> {
    api.authorize(&c, &probe)?;
    let parsed: B = json_body(body)?;
    Ok(answer(api.call(c, make(parsed)).await?))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/env", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)),
    responses((status = 200, body = EnvListView), (status = 403, body = ApiError)))]
async fn env_list(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = Req::EnvList {
        project,
        environment,
    };
    Ok(answer(api.call(c, req).await?))
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/environments/{environment}/env", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)), request_body = EnvSetBody,
    responses((status = 200, body = EnvChangeView), (status = 400, body = ApiError), (status = 403, body = ApiError),
              (status = 409, body = ApiError)))]
async fn env_set(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let probe = Req::EnvSet {
        project: project.clone(),
        environment: environment.clone(),
        vars: Default::default(),
        protected: false,
    };
    env_change(&api, c, probe, body, |b: EnvSetBody| Req::EnvSet {
        project,
        environment,
        vars: crate::model::vars::EnvValues(b.vars),
        protected: b.protected,
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/env/unset", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)), request_body = EnvUnsetBody,
    responses((status = 200, body = EnvChangeView), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn env_unset(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let probe = Req::EnvUnset {
        project: project.clone(),
        environment: environment.clone(),
        keys: vec![],
        protected: false,
    };
    env_change(&api, c, probe, body, |b: EnvUnsetBody| Req::EnvUnset {
        project,
        environment,
        keys: b.keys,
        protected: b.protected,
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/env/import", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)), request_body = EnvImportBody,
    responses((status = 200, body = EnvChangeView), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn env_import(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let probe = Req::EnvImport {
        project: project.clone(),
        environment: environment.clone(),
        file: service::EnvFile {
            name: String::new(),
            text: Default::default(),
        },
        protected: false,
    };
    env_change(&api, c, probe, body, |b: EnvImportBody| Req::EnvImport {
        project,
        environment,
        file: service::EnvFile {
            name: b.name.unwrap_or_else(|| "<request>".into()),
            text: crate::model::vars::SecretText(b.text),
        },
        protected: b.protected,
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/env/restore", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)), request_body = EnvRestoreBody,
    responses((status = 200, body = EnvChangeView), (status = 400, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError)))]
async fn env_restore(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let probe = Req::EnvRestore {
        project: project.clone(),
        environment: environment.clone(),
        version: 0,
        protected: false,
    };
    env_change(&api, c, probe, body, |b: EnvRestoreBody| Req::EnvRestore {
        project,
        environment,
        version: b.version,
        protected: b.protected,
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/env/history", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)),
    responses((status = 200, body = Vec<EnvHistoryRow>), (status = 403, body = ApiError)))]
async fn env_history(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = Req::EnvHistory {
        project,
        environment,
    };
    Ok(answer(api.call(c, req).await?))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/env/diff", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path), EnvDiffQuery),
    responses((status = 200, body = EnvDiffView), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn env_diff(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
    query: Result<Query<EnvDiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let mut req = Req::EnvDiff {
        project,
        environment,
        from: 0,
        to: 0,
    };
    api.authorize(&c, &req)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Req::EnvDiff { from, to, .. } = &mut req {
        (*from, *to) = (q.from, q.to);
    }
    Ok(answer(api.call(c, req).await?))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/env/get", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)), request_body = EnvGetBody,
    responses((status = 200, body = EnvValueView), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn env_get(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let probe = Req::EnvGet {
        project: project.clone(),
        environment: environment.clone(),
        key: String::new(),
    };
    env_change(&api, c, probe, body, |b: EnvGetBody| Req::EnvGet {
        project,
        environment,
        key: b.key,
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/env/export", tag = "env",
    security(("key" = []), ("bearer" = [])),
    params(("project" = String, Path), ("environment" = String, Path)),
    responses((status = 200, body = EnvExportView), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn env_export(
    State(api): State<Api>,
    Authed(c): Authed,
    Path((project, environment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = Req::EnvExport {
        project,
        environment,
    };
    Ok(answer(api.call(c, req).await?))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "codeb", description = "The control plane of codeb: deploy, promote and roll back web apps on Podman hosts."),
    paths(health, metrics, openapi_json, projects, project, delete_project, slots, hosts, deploy, promote,
          rollback, releases, logs, plan, apply, audit, env_list, env_set, env_unset, env_import, env_restore, db_rotate,
          env_history, env_diff, env_get, env_export, backup_list, backup_run, restore, tool),
    components(schemas(ApiError, ErrorBody, HealthView, TargetHealth, ProjectRow, SlotRow, HostRow, ProjectView,
                       EnvView, SlotView, OverrideView, DatabaseView, CacheView, OutcomeView, FailureView, NoteView, PlanView, ApplyView,
                       LogsView, AuditEntry, KeyRecord, DeployBody, ToolBody, ToolAnswer, EnvChangeView,
                       EnvListView, EnvListRow, EnvValueView, EnvExportView, EnvHistoryRow, EnvDiffView,
                       EnvSetBody, EnvUnsetBody, EnvImportBody, EnvRestoreBody, EnvGetBody,
                       BackupRow, BackupRunView, BackupMade, BackupFailed, RestoreView, TableCheck,
                       BackupRunBody, RestoreBody, RollbackBody, ReleaseRow)),
    modifiers(&Security),
)]
struct Doc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = Doc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}
