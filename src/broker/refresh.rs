//! The work of one refresh, run inside the single flight: call the IdP, make the rotated
//! refresh token durable, and only then publish the new access token.
//!
//! Ordering is the whole point. The moment the IdP answers, the old refresh token is dead,
//! so the new one replaces it in memory at once (a later attempt must never resend the
//! old one). The new access token is published only after the store confirms the write;
//! if the write fails, the token waits in `unsaved` and the next attempt saves it before
//! it would ever call the IdP again. With the shared store, `fleet` wraps these steps in
//! the credential's lease.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use secrecy::SecretString;
use tracing::{info, warn};

use super::credential::{Credential, Inner, Outcome, Want};
use crate::config::{Grant, LostAnswer};
use crate::error::Error;
use crate::idp::{IdpError, Inputs, TokenRequest, TokenResponse};
use crate::secret::ExposeSecret;
use crate::store::Saved;
use crate::token::{Token, rfc3339};

impl Credential {
    /// One refresh attempt for `want`. Runs in its own task, inside the flight.
    pub(super) async fn refresh(self: &Arc<Self>, want: &Want) -> Outcome {
        if !self.lock().restored {
            self.restore().await?;
            let now = SystemTime::now();
            // A refresh that was out when the broker stopped is settled first.
            let settled = self.lock().unanswered_since.is_none();
            // The restored token answers only a want it satisfies: never a report
            // that rejected it, nor a forced refresh.
            if let Some(token) = self.current().filter(|t| {
                settled && t.is_valid(now) && now < t.refresh_at && want.satisfied_by(t, now)
            }) {
                return Ok(token);
            }
            let inner = self.lock();
            if inner.reauth.is_some() && *want != Want::Login {
                return Err(self.refusal(&inner));
            }
        }
        if *want == Want::Login {
            return self.adopt_login().await;
        }
        if self.awaits_login(&self.lock()) {
            return Err(self.login_required());
        }
        self.coordinator.refresh(self).await
    }

    /// The refresh itself: save a held-back token, or call the IdP and keep its answer.
    pub(super) async fn fetch(self: &Arc<Self>) -> Outcome {
        // A login waiting in this flight replaces the chain; nothing of the old one
        // (a held-back token included) matters any more.
        let login = self.lock().login.take();
        if let Some(login) = login {
            let token = self.accept_login(login.response).await?;
            // From here the login is adopted, whatever its first refresh does.
            login.adopted.store(true, Ordering::Release);
            if self.stored_type_fits(&token.token_type) {
                return Ok(token);
            }
            // A DPoP credential's login made its own token request, without the
            // broker's key: its chain is kept, and refreshed now with a proof.
        }
        let (unsaved, refresh_token) = {
            let inner = self.lock();
            (inner.unsaved.clone(), inner.refresh_token.clone())
        };
        if let Some(token) = unsaved {
            self.persist(&token).await?;
            self.lock().unsaved = None;
            return Ok(token);
        }
        if self.spec.grant == Grant::RefreshToken && refresh_token.is_none() {
            return Err(self.login_required());
        }
        self.save_chain().await?;
        let answer = match &self.spec.grant {
            // Not an IdP: its failures are all retryable (`Unavailable`), never a
            // refusal; the backoff paces them whatever the cause.
            Grant::Exec(exec) => crate::exec::run(exec)
                .await
                .map_err(|e| IdpError::Unavailable {
                    reason: e.to_string(),
                    retry_after: None,
                }),
            _ => self.call_idp(refresh_token.as_ref()).await?,
        };
        match answer {
            Ok(response) => self.accept(response, refresh_token).await,
            Err(error) => Err(self.refused(error).await),
        }
    }

    /// Reads the request's secrets and asks the IdP. The outer error means nothing was
    /// sent.
    async fn call_idp(
        &self,
        refresh_token: Option<&SecretString>,
    ) -> Result<Result<TokenResponse, IdpError>, Error> {
        // A secret file that cannot be read now may be mid-rotation: asked again soon.
        let inputs = Inputs::read(&self.spec).map_err(|e| Error::UpstreamUnavailable {
            reason: e.to_string(),
            retry_after: Duration::from_secs(1),
        })?;
        // Before the refresh token is marked as sent: without a key nothing goes out.
        let dpop_key = self.dpop_key().await?;
        if self.spec.grant == Grant::RefreshToken {
            self.mark_sending().await?;
        } else {
            // What the IdP judges this time: after a refusal, the credential resumes
            // once anything differs from these (see `restore::check_bootstrap`).
            self.lock().inputs_sent = Some(inputs.digest());
        }
        // With the shared store: the lease may be lost while the request waits for a
        // permit to go out; then it must not go out at all.
        let still_ours = self.coordinator.may_send();
        let request = TokenRequest {
            spec: &self.spec,
            inputs: &inputs,
            refresh_token,
            before_send: Some(&still_ours),
            dpop: dpop_key.as_deref().zip(self.dpop.as_ref()).map(|(key, d)| {
                crate::idp::dpop::Dpop {
                    key,
                    nonce: &d.idp_nonce,
                }
            }),
        };
        let started = Instant::now();
        let answer = self.shared.idp.request_token(&request).await;
        self.shared
            .metrics
            .observe_idp(started.elapsed().as_secs_f64());
        Ok(answer)
    }

    /// Takes a successful answer: rotate in memory, persist, then hand back for publishing.
    async fn accept(&self, response: TokenResponse, old: Option<SecretString>) -> Outcome {
        {
            let mut inner = self.lock();
            // First, before anything else: the IdP has spent the old refresh token, and
            // the new one must survive whatever goes wrong with the rest of the answer.
            // A non-rotating IdP sends no new refresh token: the old one stays live.
            // Other grants get a new token by repeating the grant, so a refresh token
            // they are handed is neither kept nor sent.
            if self.spec.grant == Grant::RefreshToken {
                inner.refresh_token = response.refresh_token.or(old);
            }
            inner.unanswered_since = None;
            self.coordinator.new_token();
        }
        // A token the IdP did not bind is not served; the rotated chain is kept.
        let token_type = match self.dpop_token_type(response.token_type) {
            Ok(token_type) => token_type,
            Err(error) => return Err(self.unbound(error).await),
        };
        let now = SystemTime::now();
        // Bounded, so every expiry can be served as RFC 3339 and stored.
        let latest = crate::duration::latest();
        let expires_at = response
            .expires_at
            .or_else(|| now.checked_add(self.spec.default_lifetime))
            .map_or(latest, |at| at.min(latest));
        let refresh_at = self.shared.spread.refresh_at(
            now,
            expires_at,
            self.spec.refresh_ratio,
            self.spec.refresh_jitter,
        );
        let token = Arc::new(Token::new(
            response.access_token.expose_secret(),
            token_type,
            response.scope.or_else(|| self.spec.scope.clone()),
            now,
            expires_at,
            refresh_at,
        ));
        {
            let mut inner = self.lock();
            // This token matches the current settings: tokens stored from now on do too.
            inner.discard_stored_token = false;
            inner.unsaved = Some(token.clone());
            if self.spec.grant != Grant::RefreshToken {
                // Only a refusal is stored with a fingerprint of the inputs.
                inner.bootstrap = None;
            }
        }
        if let Err(error) = self.persist(&token).await {
            // Only a rotated refresh token is worth holding a token back for: a grant
            // without a chain loses nothing if its record is not written.
            if self.spec.grant == Grant::RefreshToken {
                return Err(error);
            }
            warn!(credential = self.name(), error = %error, "could not store the new token; serving it anyway (this grant has no refresh token to lose)");
        }
        self.lock().unsaved = None;
        Ok(token)
    }

    /// Before sending a refresh token: record that it is out (so a crash cannot hide a
    /// possibly spent token), or refuse to resend one whose answer was lost once the
    /// IdP's reuse grace has passed.
    async fn mark_sending(&self) -> Result<(), Error> {
        let resend = {
            let mut inner = self.lock();
            if inner.unanswered_since.is_some() {
                Err(self
                    .lost_answer_verdict(&inner)
                    .map(|reason| self.stop_chain(&mut inner, reason)))
            } else {
                inner.unanswered_since = Some(SystemTime::now());
                Ok(self.saved(&inner, None))
            }
        };
        let saved = match resend {
            Ok(saved) => saved,
            Err(Some(stop)) => return Err(self.record_stop(stop).await),
            Err(None) => return Ok(()),
        };
        self.write_as(saved, true).await.inspect_err(|_| {
            self.lock().unanswered_since = None;
        })
    }

    /// `Some(reason)` when resending the unanswered refresh token is no longer safe.
    fn lost_answer_verdict(&self, inner: &Inner) -> Option<String> {
        let since = inner.unanswered_since?;
        let grace = self.spec.idp_reuse_grace;
        let expired = SystemTime::now() >= since + grace;
        (self.spec.lost_answer == LostAnswer::RetryWithinGrace && expired).then(|| {
            format!(
                "a refresh sent at {} got no answer, and resending that refresh token after the \
                 IdP's reuse grace ({}) could trigger reuse detection",
                rfc3339(since),
                crate::duration::format(grace)
            )
        })
    }

    /// Ends the chain: no refresh token, no IdP calls until a new bootstrap appears.
    /// Returns the error and the state to record with `record_stop`.
    fn stop_chain(&self, inner: &mut Inner, reason: String) -> (Error, Saved) {
        inner.refresh_token = None;
        inner.unanswered_since = None;
        inner.reauth = Some(reason);
        (self.refusal(inner), self.saved(inner, None))
    }

    /// Records a stop, best effort: it spares a doomed call after a restart and, with
    /// the shared store, tells the other brokers (so it is written before the lease goes).
    async fn record_stop(&self, (error, saved): (Error, Saved)) -> Error {
        let written = self.write(saved).await;
        if let Err(e) = &written {
            warn!(credential = self.name(), error = %e, "could not record the stop in the state store; trying again at the next poll");
        }
        self.lock().stop_unsaved = written.is_err();
        error
    }

    /// Writes a stop that could not be written when it happened (file store; with the
    /// shared store a later flight's reconcile settles the record).
    pub(super) async fn save_stop(&self) {
        let saved = {
            let inner = self.lock();
            let pending = inner.stop_unsaved && inner.reauth.is_some();
            if !pending || self.coordinator.is_shared() {
                return;
            }
            self.saved(&inner, None)
        };
        if self.write(saved).await.is_ok() {
            self.lock().stop_unsaved = false;
            info!(
                credential = self.name(),
                "recorded the stop in the state store"
            );
        }
    }

    /// Maps an IdP failure; a refusal ends the chain until a new bootstrap arrives.
    async fn refused(&self, error: IdpError) -> Error {
        if matches!(error, IdpError::Rejected { .. }) && self.chainless() {
            self.fingerprint_refused_inputs().await;
        }
        let (stop, saved) = {
            let mut inner = self.lock();
            match error {
                IdpError::Rejected { .. } => {
                    let what = if self.spec.grant == Grant::RefreshToken {
                        "the refresh token"
                    } else {
                        "the credential"
                    };
                    let reason = format!("the identity provider refused {what} ({error})");
                    // Nothing from a refused chain is served any more (the IdP may have
                    // revoked the family), nor a token a report disputed just before its
                    // refresh was refused. Withdrawn before the stop is stored, so a
                    // restart does not serve it either.
                    let disputed = self.current().is_some_and(|t| {
                        inner
                            .disputed
                            .as_ref()
                            .is_some_and(|d| t.is(d.expose_secret()))
                    });
                    if self.spec.grant == Grant::RefreshToken || disputed {
                        self.withdraw();
                    }
                    (Some(self.stop_chain(&mut inner, reason)), None)
                }
                IdpError::LostAnswer { .. } => match self.lost_answer_verdict(&inner) {
                    Some(reason) => (Some(self.stop_chain(&mut inner, reason)), None),
                    None => {
                        return Error::UpstreamUnavailable {
                            reason: error.to_string(),
                            retry_after: Duration::from_secs(1),
                        };
                    }
                },
                // The IdP answered, so the token was not spent: clear the mark.
                IdpError::Unavailable { .. } => (
                    None,
                    inner
                        .unanswered_since
                        .take()
                        .map(|_| self.saved(&inner, None)),
                ),
            }
        };
        if let Some(stop) = stop {
            return self.record_stop(stop).await;
        }
        if let Some(saved) = saved
            && let Err(e) = self.write(saved).await
        {
            warn!(credential = self.name(), error = %e, "could not clear the in-flight mark");
        }
        match error {
            IdpError::Unavailable {
                reason,
                retry_after,
            } => Error::UpstreamUnavailable {
                reason,
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            },
            other => Error::UpstreamUnavailable {
                reason: other.to_string(),
                retry_after: Duration::from_secs(1),
            },
        }
    }

    async fn persist(&self, token: &Arc<Token>) -> Result<(), Error> {
        let saved = self.saved(&self.lock(), Some(token));
        self.write(saved).await
    }

    /// The record to store: the chain's refresh token plus, if given, the new access token.
    pub(super) fn saved(&self, inner: &Inner, token: Option<&Arc<Token>>) -> Saved {
        let now = SystemTime::now();
        let current = self.current();
        let token = token.or(current.as_ref());
        Saved {
            refresh_token: inner.refresh_token.clone(),
            access_token: token.map(|t| SecretString::from(t.secret().to_owned())),
            token_type: token.map_or_else(|| "Bearer".to_owned(), |t| t.token_type.clone()),
            scope: token.and_then(|t| t.scope.clone()),
            issued_at: token.map_or(now, |t| t.issued_at),
            expires_at: token.map_or(now, |t| t.expires_at),
            bootstrap: inner.bootstrap.clone(),
            reauth_reason: inner.reauth.clone(),
            in_flight_since: inner.unanswered_since,
        }
    }

    /// Writes durably (with the shared store: fenced by this flight's lease).
    pub(super) async fn write(&self, saved: Saved) -> Result<(), Error> {
        self.write_as(saved, false).await
    }

    /// `write`; `mark`: the refresh token in `saved` is sent next. The shared store's
    /// writes are fenced by the flight's lease (`fleet::write`); the file store's are
    /// plain durable writes (`coordinate::Local`).
    pub(super) async fn write_as(&self, saved: Saved, mark: bool) -> Result<(), Error> {
        self.coordinator.write(self, saved, mark).await
    }
}
