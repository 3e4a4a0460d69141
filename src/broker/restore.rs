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

use std::sync::Arc;
use std::time::SystemTime;

use secrecy::SecretString;
use tracing::{error, info, warn};

use super::credential::{Credential, Inner};
use super::token::Token;
use crate::config::Grant;
use crate::error::Error;
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
            } => {
                inner.fleet.version = version;
                for file in skipped {
                    warn!(
                        credential = self.name(),
                        file, "skipped an unreadable state generation"
                    );
                }
                let stopped = saved.reauth_reason.is_some() || saved.refresh_token.is_none();
                let new_bootstrap = matches!(&bootstrap, Some(Ok((_, fp))) if saved.bootstrap.as_ref() != Some(fp))
                    && (!shared || stopped);
                if new_bootstrap && self.spec.grant == Grant::RefreshToken {
                    info!(
                        credential = self.name(),
                        "the bootstrap token changed since the stored chain began; starting from it"
                    );
                    self.start_chain(&mut inner, bootstrap);
                } else {
                    self.adopt(&mut inner, saved);
                }
            }
            Loaded::Corrupt(problems) => {
                error!(
                    credential = self.name(),
                    ?problems,
                    "no readable state; waiting for a new bootstrap token rather than reusing a spent one"
                );
                inner.bootstrap = bootstrap.and_then(|b| b.ok()).map(|(_, fp)| fp);
                inner.reauth =
                    Some("stored state unreadable; supply a new bootstrap refresh token".into());
            }
        }
        Ok(())
    }

    /// The bootstrap value and its fingerprint; `None` when the grant has none.
    pub(super) fn read_bootstrap(&self) -> Option<Result<(SecretString, String), String>> {
        let source = self.spec.refresh_token.as_ref()?;
        Some(source.read().map(|value| {
            let fp = fingerprint(&value);
            (value, fp)
        }))
    }

    /// Starts a fresh chain from the bootstrap token.
    pub(super) fn start_chain(
        &self,
        inner: &mut Inner,
        bootstrap: Option<Result<(SecretString, String), String>>,
    ) {
        match bootstrap {
            None => {}
            Some(Ok((value, fp))) => {
                inner.refresh_token = Some(value);
                inner.unanswered_since = None;
                inner.bootstrap = Some(fp);
                inner.reauth = None;
                inner.failures = 0;
                inner.retry_at = None;
                inner.last_error = None;
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
        let Some(Ok((value, fp))) = self.read_bootstrap() else {
            return false;
        };
        let mut inner = self.lock();
        if inner.reauth.is_none() || inner.bootstrap.as_deref() == Some(fp.as_str()) {
            return false;
        }
        info!(
            credential = self.name(),
            "a new bootstrap token appeared; resuming"
        );
        self.start_chain(&mut inner, Some(Ok((value, fp))));
        true
    }
}
