//! Stub: replaced by the real adapter.

/// Errors of this adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not implemented")]
    NotImplemented,
}

impl Error {
    #[doc(hidden)]
    pub fn fake_unreachable() -> Self {
        Error::NotImplemented
    }
    #[doc(hidden)]
    pub fn fake_conflict(_name: &str) -> Self {
        Error::NotImplemented
    }
    #[doc(hidden)]
    pub fn fake_not_found(_id: &str) -> Self {
        Error::NotImplemented
    }
}
