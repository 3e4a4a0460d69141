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

    /// The credential cannot get a token until someone acts: the IdP refused it, or its
    /// chain cannot safely go on (a lost answer past the reuse grace, unreadable state).
    /// `reason` says what happened, `remedy` what resumes it; both are true for the
    /// credential's grant.
    #[error("{reason}; {remedy}")]
    ReauthRequired {
        /// What happened, e.g. the IdP's error code and description.
        reason: String,
        /// What resumes the credential.
        remedy: Remedy,
    },

    /// A `refresh_token` credential with no chain yet (no bootstrap configured, none
    /// stored): it waits for `token-broker login`, and calls no IdP meanwhile.
    #[error(
        "credential `{credential}` has no refresh token yet; run `token-broker login {credential}` to supply one"
    )]
    LoginRequired { credential: String },

    /// A login offered a chain to a credential whose grant has none.
    #[error(
        "credential `{credential}` uses grant `{grant}`; only a `refresh_token` credential takes a login"
    )]
    NotRefreshGrant {
        credential: String,
        grant: &'static str,
    },

    /// A rejected-token report of the current token, within `min_refresh_interval` of
    /// the last refresh: another refresh now could loop (an API that refuses every
    /// token) or storm the IdP (one that hands out the same token again).
    #[error(
        "the credential was refreshed less than min_refresh_interval ago and the token reported rejected is still its newest; ask again after Retry-After (if every new token is rejected, check the audience, scope and clocks)"
    )]
    RefreshTooSoon {
        /// When the next refresh may start.
        retry_after: Duration,
    },

    /// No new token could be had right now (the IdP or the token source failed, or
    /// the refresh did not finish in time, or too many requests wait). Whether an older
    /// token is still valid is not this error's to say: reads get it instead.
    #[error("could not get a new token: {reason}")]
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

    /// With the shared store: refreshes are held back until a known time (Redis lost
    /// writes, and a refresh that was out then is answered and written first).
    #[error("the state store is unavailable: {reason}")]
    HeldBack {
        reason: String,
        /// Until the hold ends.
        retry_after: Duration,
    },

    /// The broker is shutting down and no longer starts refreshes.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl Error {
    /// The value of a `Retry-After` header, where one applies.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::UpstreamUnavailable { retry_after, .. }
            | Error::RefreshTooSoon { retry_after }
            | Error::HeldBack { retry_after, .. } => Some(*retry_after),
            Error::Store(_) | Error::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// What resumes a credential in `reauth_required`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// A refresh-token chain with no bootstrap source configured: a login resumes it.
    Login(String),
    /// A refresh-token chain: only a new chain resumes it, from a new bootstrap token
    /// or a login (fixing a secret does not: the refused refresh token may be spent).
    NewBootstrap(String),
    /// A grant without a chain: a change of what the IdP judged, or the timer's own
    /// retry.
    FixInputs,
}

impl std::fmt::Display for Remedy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remedy::Login(name) => write!(f, "log in again with `token-broker login {name}`"),
            Remedy::NewBootstrap(name) => write!(
                f,
                "log in again with `token-broker login {name}`, or supply a new bootstrap refresh token (the credential's refresh_token source); the broker resumes as soon as either arrives"
            ),
            Remedy::FixInputs => f.write_str(
                "fix what the identity provider refused (client secret, key, subject token, assertion or a setting it sees); the broker resumes as soon as one changes, and also asks again by itself at growing intervals",
            ),
        }
    }
}
