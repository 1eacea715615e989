//! Stub: replaced by the real adapter.

/// Errors of this adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not implemented")]
    NotImplemented,
}
