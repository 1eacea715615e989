//! The one error every use case returns: a kind that front ends map to their own terms (an exit
//! code for the CLI, an HTTP status for the API), and a message for people.
//!
//! Messages never carry a secret: an env value, a key, a request body. Each front end prints the
//! message as it is.

use serde::{Deserialize, Serialize};

/// What went wrong, in terms every front end can map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// The request is malformed or invalid (a manifest error with file:line:column, a bad name):
    /// nothing was done. Exit 2, HTTP 400.
    Invalid,
    /// What the request names is not recorded (a project, an environment, a key). Exit 2, HTTP 404.
    NotFound,
    /// No valid key: missing, malformed, unknown, expired or revoked (never which). HTTP 401.
    Unauthorized,
    /// The caller's role or project scope lacks the permission the message names. HTTP 403.
    Forbidden,
    /// The environment is claimed by another request, or the loop is stopping. Exit 1, HTTP 409.
    Busy,
    /// A change confirmed with a plan's fingerprint found the state changed since that plan:
    /// nothing was done; plan again. Exit 1, HTTP 409.
    Conflict,
    /// A host or zone could not be reached. Exit 1, HTTP 503.
    Unavailable,
    /// Anything else that stopped the request (the store failed). Exit 1, HTTP 500.
    Failed,
    /// `apply --timeout` was reached and a step still acting well after it was abandoned, as a
    /// crash would leave it (the journal shows it interrupted). Exit 4, HTTP 504.
    TimedOut,
}

/// A use case's failure. Nothing was half-applied: a request fails before it acts, or its
/// executed steps are reported in its result, not here.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema,
)]
#[error("{message}")]
pub struct Error {
    pub code: Code,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::Invalid, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Code::Failed, message)
    }
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(Code::Busy, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Code::Conflict, message)
    }

    /// The CLI's exit code (see `cli`'s table): 2 for a mistake in the input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self.code {
            Code::Invalid | Code::NotFound | Code::Unauthorized | Code::Forbidden => 2,
            Code::Busy | Code::Conflict | Code::Unavailable | Code::Failed => 1,
            Code::TimedOut => super::TIMED_OUT,
        }
    }

    /// The HTTP status the API answers with.
    pub fn http_status(&self) -> u16 {
        match self.code {
            Code::Invalid => 400,
            Code::Unauthorized => 401,
            Code::Forbidden => 403,
            Code::NotFound => 404,
            Code::Busy | Code::Conflict => 409,
            Code::Failed => 500,
            Code::Unavailable => 503,
            Code::TimedOut => 504,
        }
    }
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Self {
        Error::failed(crate::backend::error_chain(&e))
    }
}

impl From<crate::reconcile::Error> for Error {
    fn from(e: crate::reconcile::Error) -> Self {
        Error::failed(crate::backend::error_chain(&e))
    }
}

impl From<crate::store::secrets::EnvError> for Error {
    fn from(e: crate::store::secrets::EnvError) -> Self {
        use crate::store::secrets::EnvError as E;
        let message = crate::backend::error_chain(&e);
        match &e {
            _ if e.is_key_problem() => Error::invalid(message),
            E::NoVersion { .. } => Error::not_found(message),
            E::BadBackup(_) | E::NotEmpty(_) => Error::invalid(message),
            E::Moved { .. } => Error::busy(message),
            _ => Error::failed(message),
        }
    }
}
