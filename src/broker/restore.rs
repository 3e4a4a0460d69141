//! Where a credential's chain starts after a (re)start: the stored state, or the
//! bootstrap token, decided by which bootstrap the stored chain came from.
//!
//! The rule that keeps rotation safe across restarts (also after `kill -9`): if the
//! bootstrap source still holds the token the stored chain started from, the stored
//! (rotated) refresh token wins, because the bootstrap one is already spent. Only a
//! bootstrap with different content — an operator supplying a new token — restarts
//! the chain from the bootstrap. With the shared store, a live shared chain always
//! wins: a broker restarted with an older bootstrap file must not spend it, so a new
//! bootstrap is taken only when the shared chain has stopped (`reauth_required`).
//!
//! Grants without a chain (client credentials, token exchange, JWT bearer) have no
//! bootstrap token; their "bootstrap" is the fingerprint of their inputs (secrets,
//! subject token, key, assertion). A refusal stops them until that fingerprint changes:
//! a rotated subject-token file or a new key lets them resume, a restart with the same
//! inputs does not repeat a refused call.

use std::sync::Arc;
use std::time::SystemTime;

use secrecy::SecretString;
use tracing::{error, info, warn};

use super::credential::{Credential, Inner};
use super::token::Token;
use crate::config::Grant;
use crate::error::Error;
use crate::idp::Inputs;
use crate::secret::{ExposeSecret, fingerprint};
use crate::store::{Loaded, Saved};

impl Credential {
    /// Loads the stored state into `inner` and publishes a still-valid stored token.
    /// A store that cannot be read leaves the credential unrestored: nothing is decided
    /// on state that could not be seen.
    pub(super) async fn restore(&self) -> Result<(), Error> {
        let loaded = self.shared.store.load(self.name()).await;
        if let Loaded::Unavailable(reason) = loaded {
            self.shared.metrics.store_error("load");
            return Err(Error::Store(reason));
        }
        let bootstrap = self.read_bootstrap();
        let shared = self.shared.store.shared().is_some();
        let mut inner = self.lock();
        inner.restored = true;
        match loaded {
            Loaded::Empty | Loaded::Unavailable(_) => self.start_chain(&mut inner, bootstrap),
            Loaded::Found {
                saved,
                skipped,
                version,
                stamp,
            } => {
                inner.fleet.restored(version, stamp);
                for file in skipped {
                    warn!(
                        credential = self.name(),
                        file, "skipped an unreadable state generation"
                    );
                }
                let stopped = saved.reauth_reason.is_some() || saved.refresh_token.is_none();
                let new_bootstrap = matches!(&bootstrap, Some(Ok(b)) if saved.bootstrap.as_ref() != Some(&b.fingerprint))
                    && (!shared || stopped);
                if new_bootstrap && self.spec.grant == Grant::RefreshToken {
                    info!(
                        credential = self.name(),
                        "the bootstrap token changed since the stored chain began; starting from it"
                    );
                    self.start_chain(&mut inner, bootstrap);
                } else {
                    self.adopt(&mut inner, saved);
                    if new_bootstrap {
                        // No chain to lose: new inputs only lift an earlier refusal.
                        self.start_chain(&mut inner, bootstrap);
                    }
                }
            }
            Loaded::Corrupt(problems) if self.spec.grant != Grant::RefreshToken => {
                warn!(
                    credential = self.name(),
                    ?problems,
                    "no readable state; fetching a new token"
                );
                self.start_chain(&mut inner, bootstrap);
            }
            Loaded::Corrupt(problems) => {
                error!(
                    credential = self.name(),
                    ?problems,
                    "no readable state; waiting for a new bootstrap token rather than reusing a spent one"
                );
                inner.bootstrap = bootstrap.and_then(|b| b.ok()).map(|b| b.fingerprint);
                inner.reauth =
                    Some("stored state unreadable; supply a new bootstrap refresh token".into());
            }
        }
        Ok(())
    }

    /// The bootstrap and its fingerprint; `None` when the grant has neither (exec).
    pub(super) fn read_bootstrap(&self) -> Option<Result<Bootstrap, String>> {
        match &self.spec.grant {
            Grant::RefreshToken => {
                let source = self.spec.refresh_token.as_ref()?;
                Some(source.read().map(|value| Bootstrap {
                    fingerprint: fingerprint(&value),
                    refresh_token: Some(value),
                }))
            }
            Grant::Exec(_) => None,
            _ => Some(Inputs::read(&self.spec).map(|inputs| Bootstrap {
                refresh_token: None,
                fingerprint: inputs.fingerprint().to_owned(),
            })),
        }
    }

    /// Starts a fresh chain from the bootstrap (for grants without a chain: clears an
    /// earlier refusal).
    pub(super) fn start_chain(
        &self,
        inner: &mut Inner,
        bootstrap: Option<Result<Bootstrap, String>>,
    ) {
        match bootstrap {
            None => {}
            Some(Ok(bootstrap)) => {
                inner.refresh_token = bootstrap.refresh_token;
                inner.unanswered_since = None;
                inner.bootstrap = Some(bootstrap.fingerprint);
                inner.reauth = None;
                inner.failures = 0;
                inner.retry_at = None;
                inner.last_error = None;
            }
            Some(Err(reason)) if self.spec.grant != Grant::RefreshToken => {
                // Read again before the next request, which reports it if it persists.
                warn!(
                    credential = self.name(),
                    reason, "cannot read the credential's inputs"
                );
            }
            Some(Err(reason)) => {
                error!(
                    credential = self.name(),
                    reason, "cannot read the bootstrap refresh token"
                );
                inner.reauth = Some(format!("bootstrap refresh token unreadable: {reason}"));
            }
        }
    }

    /// Makes stored state this credential's: its chain, its marks, and its access
    /// token if still usable.
    pub(super) fn adopt(&self, inner: &mut Inner, saved: Saved) {
        if let Some(since) = saved.in_flight_since {
            warn!(credential = self.name(), since = %super::token::rfc3339(since), "a refresh was sent and never answered (its broker stopped, or is still waiting); treating its answer as lost");
        }
        inner.unanswered_since = saved.in_flight_since;
        inner.refresh_token = saved.refresh_token;
        inner.bootstrap = saved.bootstrap;
        inner.reauth = saved.reauth_reason;
        if self.spec.grant == Grant::RefreshToken
            && inner.refresh_token.is_none()
            && inner.reauth.is_none()
        {
            inner.reauth = Some("no refresh token stored".into());
        }
        let now = SystemTime::now();
        let usable = saved.expires_at > now && !inner.discard_stored_token;
        if let Some(access) = saved.access_token.filter(|_| usable) {
            let refresh_at = super::schedule::refresh_at(
                saved.issued_at,
                saved.expires_at,
                self.spec.refresh_ratio,
                self.spec.refresh_jitter,
                rand::random::<f64>(),
            );
            let token = Token::new(
                access.expose_secret(),
                saved.token_type,
                saved.scope,
                saved.issued_at,
                saved.expires_at,
                refresh_at,
            );
            self.publish(Arc::new(token));
        }
    }

    /// In `reauth_required`: resume if the bootstrap source now holds a new token.
    pub(super) fn check_bootstrap(&self) -> bool {
        let Some(Ok(bootstrap)) = self.read_bootstrap() else {
            return false;
        };
        let mut inner = self.lock();
        if inner.reauth.is_none() || inner.bootstrap.as_deref() == Some(&bootstrap.fingerprint) {
            return false;
        }
        if bootstrap.refresh_token.is_some() {
            info!(
                credential = self.name(),
                "a new bootstrap token appeared; resuming"
            );
        } else {
            info!(
                credential = self.name(),
                "the credential's inputs changed; resuming"
            );
        }
        self.start_chain(&mut inner, Some(Ok(bootstrap)));
        true
    }
}

/// Where a chain starts.
pub(super) struct Bootstrap {
    /// The bootstrap refresh token; `None` for grants without a chain.
    refresh_token: Option<SecretString>,
    /// Its fingerprint, or that of the grant's inputs.
    fingerprint: String,
}
