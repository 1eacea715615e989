//! The API's error answers: `{"error": {"code", "message"}}` with the status the code maps to.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::service::{Code, Error};

/// An error as the API answers it. Besides the service's own kinds, the HTTP layer adds its own:
/// a body over the limit (413), a request over the rate limit (429), a body that trickled in too
/// slowly (408).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub error: ErrorBody,
}

/// The error's machine-readable code and its message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `invalid`, `not-found`, `unauthorized`, `forbidden`, `busy`, `unavailable`, `failed`,
    /// `too-large`, `rate-limited`, `timeout`.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: ErrorBody {
                code: code.to_string(),
                message: message.into(),
            },
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(400, "invalid", message)
    }

    /// The one answer to every key that does not authenticate: it never says whether a key
    /// exists, expired or was revoked.
    pub fn unauthorized() -> ApiError {
        Self::new(
            401,
            "unauthorized",
            "a valid API key is required (X-API-Key or Authorization: Bearer)",
        )
    }

    pub fn rate_limited() -> ApiError {
        Self::new(
            429,
            "rate-limited",
            "too many requests; slow down and retry",
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let code = serde_json::to_value(e.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "failed".into());
        if e.code == Code::Unauthorized {
            // Never which of missing, unknown, expired or revoked.
            return ApiError::unauthorized();
        }
        ApiError::new(e.http_status(), &code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(&self)).into_response();
        let headers = response.headers_mut();
        if self.status == 429 {
            headers.insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        // The body was left unread: the connection cannot carry another request, and a client
        // that pools connections must be told.
        if matches!(self.status, 408 | 413) {
            headers.insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
