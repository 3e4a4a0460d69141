//! When to ask the IdP again about a credential without a refresh-token chain
//! (`client_credentials`, `token_exchange`, `jwt_bearer`) that it refused.
//!
//! A refused refresh token is never sent again: the IdP may have spent it, and a resend
//! could revoke the whole family. A grant without a chain loses nothing by asking
//! again, and some refusals pass by themselves (clock skew on a signed assertion, a new
//! key the IdP has not picked up yet, a client being set up). So it stays in
//! `reauth_required`, where requests never reach the IdP, and the proactive timer asks
//! again after `backoff_max`, then at growing, jittered intervals up to an hour. A
//! refusal is a 4xx answer, which carries no `Retry-After` the broker reads (that is
//! for 429 and 5xx, retried as failures). A change of its inputs or settings still
//! resumes it at once (`restore::check_bootstrap`).

use std::time::{Duration, SystemTime};

use tracing::info;

use super::credential::{Credential, Inner};
use super::schedule;

/// The longest wait between two requests for a refused credential (unless
/// `backoff_max` is longer).
pub const REFUSED_RETRY_MAX: Duration = Duration::from_secs(3600);

impl Credential {
    /// The delay before asking again after refusal number `failures`.
    pub(super) fn refused_delay(&self, failures: u32) -> Duration {
        let max = self.spec.backoff_max;
        schedule::backoff(
            failures,
            max,
            REFUSED_RETRY_MAX.max(max),
            None,
            rand::random::<f64>(),
        )
    }

    /// When a refused credential is asked again; `None` for any other.
    pub(super) fn refusal_retry_at(&self, inner: &Inner) -> Option<SystemTime> {
        inner
            .retry_at
            .filter(|_| inner.reauth.is_some() && self.chainless())
    }

    /// After adopting a stored refusal (at start-up, or from another broker): the next
    /// request is a whole delay away, so restarts do not hammer a refusing IdP.
    pub(super) fn schedule_refusal_retry(&self, inner: &mut Inner) {
        if inner.reauth.is_some() && self.chainless() {
            let delay = self.refused_delay(inner.failures.max(1));
            let now = SystemTime::now();
            inner.retry_at = Some(now.checked_add(delay).unwrap_or(now));
        }
    }

    /// When its time has come: lifts the refusal so the timer may ask again. The
    /// failures and the last error stay, for the next delay and for status.
    pub(super) fn lift_refusal(&self) -> bool {
        let now = SystemTime::now();
        let mut inner = self.lock();
        if self.refusal_retry_at(&inner).is_none_or(|at| at > now) {
            return false;
        }
        inner.reauth = None;
        inner.retry_at = None;
        info!(
            credential = self.name(),
            failures = inner.failures,
            "asking the identity provider again about the credential it refused"
        );
        true
    }
}
