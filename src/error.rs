//! The one error type that crosses module boundaries.
//!
//! It is `Clone` because a single refresh result is handed to every request that waited
//! for it. Variants describe what went wrong in the broker's terms; which HTTP status each
//! one means is decided in one `match` in `server::error`, so `broker` and `idp` stay free
//! of HTTP. Messages never contain a token or a secret.

use std::time::Duration;

/// Everything a broker operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No credential has that name.
    #[error("no credential named `{0}`")]
    UnknownCredential(String),

    /// `GET /token` without a name, but several credentials and none marked `default`.
    #[error("no default credential: name one of {}", .choices.join(", "))]
    NoDefaultCredential {
        /// The configured names, so the caller can pick one.
        choices: Vec<String>,
    },

    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),

    /// The IdP refused the refresh token or the client; retrying cannot help until an
    /// operator supplies a new bootstrap token (or, for grants without a refresh token,
    /// fixes the client secret, key, subject token, assertion or settings; those are
    /// also asked again after a long backoff).
    #[error(
        "the identity provider refused the credential ({reason}); supply a new bootstrap refresh token (or fix the secret, key, subject token, assertion or settings)"
    )]
    ReauthRequired {
        /// The IdP's error code and description, as far as it gave them.
        reason: String,
    },

    /// There is no usable token and the IdP cannot give one right now.
    #[error("no valid token and the identity provider is unavailable: {reason}")]
    UpstreamUnavailable {
        /// What failed, e.g. "connection refused" or "HTTP 503".
        reason: String,
        /// When it is worth asking again.
        retry_after: Duration,
    },

    /// The state store could not be read or written (the state directory, or the shared
    /// Redis); a new token is held back until it is durable, because serving it before
    /// the refresh token is stored could lose the token family.
    #[error("the state store is unavailable: {0}")]
    Store(String),

    /// The broker is shutting down and no longer starts refreshes.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl Error {
    /// The value of a `Retry-After` header, where one applies.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::UpstreamUnavailable { retry_after, .. } => Some(*retry_after),
            Error::Store(_) | Error::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}
