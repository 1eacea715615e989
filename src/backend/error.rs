//! The one error every backend trait returns, whichever adapter failed: which backend it was,
//! whether retrying can help, and the adapter's own error, whose text reaches the user unchanged.
//!
//! Each adapter keeps its own error enum (its variants name what failed on its wire) and converts
//! it into this one at its edge, with a `From` impl that answers [`Error::retryable`] from the
//! adapter's own knowledge. Callers (`reconcile`) decide on the neutral answer and never match an
//! adapter's variants.
//!
//! Must not: change an adapter error's wording, or lose its causes.

use std::fmt;

/// Which backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Podman,
    Caddy,
    /// The kernel's NAT rules (nf_tables).
    Kernel,
    PowerDns,
    /// A shared PostgreSQL server (project databases).
    Postgres,
    /// A shared Redis server (project caches).
    Redis,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Podman => "Podman",
            Backend::Caddy => "Caddy",
            Backend::Kernel => "kernel NAT rules",
            Backend::PowerDns => "PowerDNS",
            Backend::Postgres => "PostgreSQL",
            Backend::Redis => "Redis",
        })
    }
}

/// What a caller may do about a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The same call may succeed later with nothing else changed: a transport failure, a timeout,
    /// a 5xx, a conflict with a concurrent writer that a fresh observation resolves.
    Transient,
    /// Retrying cannot help until something changes (the manifests, the environment, the
    /// backend's configuration, or a foreign object in the way): a refused key, a 4xx, an invalid
    /// endpoint or name, an answer that cannot be read.
    Permanent,
    /// This backend cannot be managed from this process at all (the kernel's NAT rules without
    /// CAP_NET_ADMIN or nf_tables): not an outage, the caller takes another path.
    Unsupported { reason: String },
    /// A foreign object (one without codeb's mark, or with another owner's) holds a name codeb
    /// needs: like [`ErrorKind::Permanent`], retrying cannot help until someone removes or
    /// renames it, but it is a finding about the server's content, not an outage, so a caller can
    /// report it as a problem of the environment. `name` is the object's name.
    Conflict { name: String },
}

impl ErrorKind {
    /// [`ErrorKind::Transient`] or [`ErrorKind::Permanent`], from an adapter's own answer.
    pub fn from_retryable(retryable: bool) -> Self {
        if retryable {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        }
    }
}

/// A failed backend call.
///
/// Displays as the adapter's error and has its causes (so `error_chain` prints what it printed
/// before); [`Error::retryable`] is the answer the retry policy looks at.
#[derive(Debug)]
pub struct Error {
    backend: Backend,
    kind: ErrorKind,
    inner: Box<dyn std::error::Error + Send + Sync>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an adapter's error; used by the adapters' `From` impls.
    pub fn new(
        backend: Backend,
        kind: ErrorKind,
        inner: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            backend,
            kind,
            inner: Box::new(inner),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// True when the same call may succeed later with nothing else changed
    /// ([`ErrorKind::Transient`]).
    pub fn retryable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The adapter's own error, for its tests and its diagnostics (`None` when it is another
    /// adapter's). Decisions go through [`Error::kind`].
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.inner.downcast_ref()
    }
}

/// The adapter's text, as it was before this error wrapped it (the backend is named in it).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// The adapter error's causes, not the adapter error itself: its text is this error's, and a
/// cause is printed once.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the adapter's words")]
    struct Adapter(#[source] std::io::Error);

    #[test]
    fn the_adapters_text_and_causes_are_kept_and_only_transient_errors_are_retryable() {
        let cause = std::io::Error::other("connection refused");
        let e = Error::new(Backend::Caddy, ErrorKind::Transient, Adapter(cause));
        assert_eq!(
            crate::backend::error_chain(&e),
            "the adapter's words: connection refused"
        );
        assert!(e.retryable());
        assert!(e.downcast_ref::<Adapter>().is_some());
        let reason = "needs root".to_string();
        let unsupported = Error::new(
            Backend::Kernel,
            ErrorKind::Unsupported { reason },
            Adapter(std::io::Error::other("EPERM")),
        );
        assert!(!unsupported.retryable());
        let permanent = Error::new(
            Backend::PowerDns,
            ErrorKind::Permanent,
            Adapter(std::io::Error::other("401")),
        );
        assert!(!permanent.retryable());
    }
}
