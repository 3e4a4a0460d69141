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
//! bootstrap token; their "bootstrap" is everything their request is made of (secrets,
//! subject token, key, assertion, and the settings that shape the request: endpoint,
//! client, scope, audience, claims). A refusal stops them until any of that changes: a
//! rotated subject-token file, a new key, or a fixed scope (reloaded or restarted) lets
//! them resume; a restart with the same inputs does not repeat a refused call. The
//! refusal is stored with a slow, salted fingerprint of those inputs
//! (`idp::fingerprint`), compared off the async threads.

use std::sync::Arc;
use std::time::SystemTime;

use secrecy::SecretString;
use tracing::{error, info, warn};

use super::credential::{Credential, Inner};
use crate::config::Grant;
use crate::error::Error;
use crate::idp::fingerprint::{self, Digest};
use crate::idp::{InputError, Inputs};
use crate::secret::{ExposeSecret, fingerprint};
use crate::store::{Loaded, Saved};
use crate::token::Token;

impl Credential {
    /// Loads the stored state into `inner` and publishes a still-valid stored token.
    /// A store that cannot be read leaves the credential unrestored: nothing is decided
    /// on state that could not be seen.
    pub(super) async fn restore(&self) -> Result<(), Error> {
        let loaded = self.coordinator.load(self.name()).await;
        if let Loaded::Unavailable(reason) = loaded {
            self.shared.metrics.store_error("load");
            return Err(Error::Store(reason));
        }
        let bootstrap = self.read_bootstrap();
        let refused_inputs_changed = self.refused_inputs_changed(&loaded, &bootstrap).await;
        let shared = self.coordinator.is_shared();
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
                self.coordinator.restored(version, stamp);
                for file in skipped {
                    warn!(
                        credential = self.name(),
                        file, "skipped an unreadable state generation"
                    );
                }
                let stopped = saved.reauth_reason.is_some() || saved.refresh_token.is_none();
                let new_bootstrap = match &bootstrap {
                    Some(Ok(Bootstrap::Token { fingerprint, .. })) => {
                        saved.bootstrap.as_ref() != Some(fingerprint) && (!shared || stopped)
                    }
                    Some(Ok(Bootstrap::Inputs(_))) => refused_inputs_changed,
                    _ => false,
                };
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
                    } else if let Some(Ok(Bootstrap::Inputs(digest))) = bootstrap {
                        // Any refusal adopted is of these very inputs.
                        inner.inputs_sent = Some(digest);
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
                inner.bootstrap = match bootstrap {
                    Some(Ok(Bootstrap::Token { fingerprint, .. })) => Some(fingerprint),
                    _ => None,
                };
                inner.reauth = Some(
                    "the stored state is unreadable, and the bootstrap refresh token may be spent already"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The bootstrap and its fingerprint, or the digest of a chainless grant's inputs;
    /// `None` when the grant has neither (exec).
    pub(super) fn read_bootstrap(&self) -> Option<Result<Bootstrap, InputError>> {
        match &self.spec.grant {
            Grant::RefreshToken => {
                let source = self.spec.refresh_token.as_ref()?;
                let read = source.read().map_err(InputError::RefreshToken);
                Some(read.map(|value| Bootstrap::Token {
                    fingerprint: fingerprint(&value),
                    refresh_token: value,
                }))
            }
            Grant::Exec(_) => None,
            _ => Some(Inputs::read(&self.spec).map(|inputs| Bootstrap::Inputs(inputs.digest()))),
        }
    }

    /// Whether a grant without a chain asks the IdP: not exec, not a refresh token.
    pub(super) fn chainless(&self) -> bool {
        !matches!(self.spec.grant, Grant::RefreshToken | Grant::Exec(_))
    }

    /// Whether `loaded` is a stored refusal of a chainless grant whose inputs differ
    /// from `bootstrap` now. A refusal stored without a fingerprint this broker can
    /// read (an older broker's) counts as changed: one call tells.
    async fn refused_inputs_changed(
        &self,
        loaded: &Loaded,
        bootstrap: &Option<Result<Bootstrap, InputError>>,
    ) -> bool {
        let (Loaded::Found { saved, .. }, Some(Ok(Bootstrap::Inputs(digest)))) =
            (loaded, bootstrap)
        else {
            return false;
        };
        if saved.reauth_reason.is_none() {
            return false;
        }
        let Some(stored) = saved.bootstrap.clone() else {
            return true;
        };
        let digest = *digest;
        tokio::task::spawn_blocking(move || !fingerprint::matches(&stored, &digest))
            .await
            .unwrap_or(true)
    }

    /// After the IdP refused a chainless grant: the fingerprint of what it refused, to
    /// store with the refusal.
    pub(super) async fn fingerprint_refused_inputs(&self) {
        let digest = self.lock().inputs_sent;
        let sealed = match digest {
            Some(digest) => tokio::task::spawn_blocking(move || fingerprint::seal(&digest))
                .await
                .ok(),
            None => None,
        };
        self.lock().bootstrap = sealed;
    }

    /// Starts a fresh chain from the bootstrap (for grants without a chain: clears an
    /// earlier refusal).
    pub(super) fn start_chain(
        &self,
        inner: &mut Inner,
        bootstrap: Option<Result<Bootstrap, InputError>>,
    ) {
        match bootstrap {
            None => {}
            Some(Ok(bootstrap)) => {
                match bootstrap {
                    Bootstrap::Token {
                        refresh_token,
                        fingerprint,
                    } => {
                        inner.refresh_token = Some(refresh_token);
                        inner.bootstrap = Some(fingerprint);
                        // A new chain: nothing of the old one is served.
                        self.withdraw();
                    }
                    Bootstrap::Inputs(_) => {
                        inner.bootstrap = None;
                        inner.inputs_sent = None;
                    }
                }
                inner.unanswered_since = None;
                inner.reauth = None;
                inner.stop_unsaved = false;
                inner.failures = 0;
                inner.retry_at = None;
                inner.last_error = None;
            }
            Some(Err(reason)) if self.spec.grant != Grant::RefreshToken => {
                // Read again before the next request, which reports it if it persists.
                warn!(
                    credential = self.name(),
                    reason = %reason,
                    "cannot read the credential's inputs"
                );
            }
            Some(Err(reason)) => {
                error!(
                    credential = self.name(),
                    reason = %reason,
                    "cannot read the bootstrap refresh token"
                );
                inner.reauth = Some(format!("bootstrap refresh token unreadable: {reason}"));
            }
        }
    }

    /// Makes stored state this credential's: its chain, its marks, and its access
    /// token if still usable.
    pub(super) fn adopt(&self, inner: &mut Inner, saved: Saved) {
        if let Some(since) = saved.in_flight_since {
            warn!(credential = self.name(), since = %crate::token::rfc3339(since), "a refresh was sent and never answered (its broker stopped, or is still waiting); treating its answer as lost");
        }
        inner.unanswered_since = saved.in_flight_since;
        inner.refresh_token = saved.refresh_token;
        if inner.bootstrap != saved.bootstrap {
            // Another broker's refusal: which inputs it refused is not known here yet.
            inner.inputs_sent = None;
        }
        inner.bootstrap = saved.bootstrap;
        inner.reauth = saved.reauth_reason;
        if self.spec.grant == Grant::RefreshToken
            && inner.refresh_token.is_none()
            && inner.reauth.is_none()
        {
            inner.reauth = Some("no refresh token stored".into());
        }
        let now = SystemTime::now();
        // A refused chain's token was withdrawn before its stop was stored; the stop
        // may be another broker's, whose token this one still serves.
        if inner.reauth.is_some() && saved.access_token.is_none() {
            self.withdraw();
        }
        let usable = saved.expires_at > now
            && !inner.discard_stored_token
            && self.stored_type_fits(&saved.token_type);
        if let Some(access) = saved.access_token.filter(|_| usable) {
            let refresh_at = self.shared.spread.refresh_at(
                saved.issued_at,
                saved.expires_at,
                self.spec.refresh_ratio,
                self.spec.refresh_jitter,
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
        self.schedule_refusal_retry(inner);
    }

    /// In `reauth_required`: resume if the bootstrap source now holds a new token, or
    /// a chainless grant's inputs changed.
    pub(super) fn check_bootstrap(&self) -> bool {
        let Some(Ok(bootstrap)) = self.read_bootstrap() else {
            return false;
        };
        let changed = match &bootstrap {
            Bootstrap::Token { fingerprint, .. } => {
                let inner = self.lock();
                inner.reauth.is_some() && inner.bootstrap.as_ref() != Some(fingerprint)
            }
            Bootstrap::Inputs(digest) => self.inputs_changed(digest),
        };
        let mut inner = self.lock();
        if !changed || inner.reauth.is_none() {
            return false;
        }
        let new_token = matches!(bootstrap, Bootstrap::Token { .. });
        self.start_chain(&mut inner, Some(Ok(bootstrap)));
        // Logged once the new chain is in place, so whoever reads it finds it there.
        if new_token {
            info!(
                credential = self.name(),
                "a new bootstrap token appeared; resuming"
            );
        } else {
            info!(
                credential = self.name(),
                "the credential's inputs or settings changed; resuming"
            );
        }
        true
    }

    /// Whether a refused chainless grant's inputs differ from the refused ones. Known
    /// in memory unless the refusal came from another broker: then its fingerprint is
    /// checked once (slow, so outside the lock; once per adopted refusal).
    fn inputs_changed(&self, digest: &Digest) -> bool {
        let (known, stored) = {
            let inner = self.lock();
            if inner.reauth.is_none() {
                return false;
            }
            (inner.inputs_sent, inner.bootstrap.clone())
        };
        if let Some(known) = known {
            return known != *digest;
        }
        let same = stored.is_some_and(|stored| fingerprint::matches(&stored, digest));
        if same {
            self.lock().inputs_sent = Some(*digest);
        }
        !same
    }
}

/// Where a chain starts.
pub(super) enum Bootstrap {
    /// The bootstrap refresh token and its fingerprint.
    Token {
        refresh_token: SecretString,
        fingerprint: String,
    },
    /// A grant without a chain: the digest of everything its request is made of.
    Inputs(Digest),
}
