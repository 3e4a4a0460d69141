//! A login's new chain: the IdP's token response that `token-broker login` obtained,
//! adopted the way a new bootstrap is (stored durably first, then served).
//!
//! With a running broker the response arrives over the admin endpoint and is adopted
//! in the credential's single flight (`Want::Login`), so it never races a refresh; with
//! the shared store the flight holds the fleet's lease and the other brokers take the
//! record from Redis as they take any refresh. Without a running broker,
//! `adopt_offline` writes the same record straight into the configured store. Either
//! way the response's refresh token becomes the chain and its access token is served
//! at once. What may call the endpoint (the admin rule) is the server's business.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::credential::{Credential, Outcome, Want};
use super::fleet::next_version;
use crate::config::{Config, CredentialSpec, Grant};
use crate::error::Error;
use crate::idp::TokenResponse;
use crate::secret::{ExposeSecret, fingerprint};
use crate::store::{Fence, ReadError, Saved, Store, WriteKind};
use crate::token::Token;

/// Tries at the shared store's lease for one login, each after another broker's
/// result settled the attempt first.
const SHARED_ATTEMPTS: usize = 3;

/// What a login did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub credential: String,
    /// Seconds the adopted access token has left.
    pub expires_in: u64,
}

/// A login handed to its flight, and whether the flight adopted it (stored its chain):
/// the login's caller and the flight's end both read it.
pub(crate) struct Pending {
    pub response: TokenResponse,
    pub adopted: Arc<AtomicBool>,
}

/// What a running broker did with a login.
#[derive(Debug)]
pub enum Login {
    /// The chain is stored and its access token served.
    Served(Arc<Token>),
    /// The chain is stored and is the credential's, but the refresh that was to make
    /// its first servable token failed (a DPoP credential's, whose login token is not
    /// bound): the credential goes on as after any failed refresh. The login must not
    /// be handed in again: its refresh token may be spent.
    Adopted(Error),
}

/// Why a login was not adopted. Messages never carry a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The body is not a token response with both tokens.
    #[error("{0}")]
    BadBody(String),
    #[error("no credential named `{0}`")]
    UnknownCredential(String),
    #[error(
        "credential `{credential}` uses grant `{grant}`; only a `refresh_token` credential takes a login"
    )]
    NotRefreshGrant {
        credential: String,
        grant: &'static str,
    },
    /// The store cannot be opened or written; nothing was changed.
    #[error("{0}")]
    Store(String),
}

/// Reads a login body: an RFC 6749 section 5.1 token response, exactly as the IdP sent
/// it, which must carry a refresh token (without one there is no chain to keep).
pub fn parse(body: &[u8]) -> Result<TokenResponse, String> {
    let response = crate::idp::parse_token_response(body).map_err(|why| {
        format!("the login body is not an OAuth token response (RFC 6749 section 5.1): {why}")
    })?;
    if response.refresh_token.is_none() {
        return Err(
            "the login body has no refresh_token: ask the IdP for one (scope offline_access, or its \
             equivalent)"
                .to_owned(),
        );
    }
    Ok(response)
}

/// When a token lives until, bounded like every token the broker keeps.
fn expiry(response: &TokenResponse, spec: &CredentialSpec, now: SystemTime) -> SystemTime {
    let latest = crate::duration::latest();
    response
        .expires_at
        .or_else(|| now.checked_add(spec.default_lifetime))
        .map_or(latest, |at| at.min(latest))
}

/// The fingerprint of the configured bootstrap token, stored with the login's chain:
/// a restart then sees the bootstrap it already knows and keeps the login's chain.
fn bootstrap_of(spec: &CredentialSpec) -> Option<String> {
    let token = spec.refresh_token.as_ref()?.read().ok()?;
    Some(fingerprint(&token))
}

/// The record a login writes: its chain, its access token, no refusal, nothing out.
fn record(response: &TokenResponse, spec: &CredentialSpec, now: SystemTime) -> Saved {
    Saved {
        refresh_token: response.refresh_token.clone(),
        access_token: Some(response.access_token.clone()),
        token_type: response.token_type.clone(),
        scope: response.scope.clone().or_else(|| spec.scope.clone()),
        issued_at: now,
        expires_at: expiry(response, spec, now),
        bootstrap: bootstrap_of(spec),
        reauth_reason: None,
        in_flight_since: None,
    }
}

impl Credential {
    /// Adopts a login's token response (see `parse`): waits for a flight in progress
    /// to end, then runs one that stores the new chain and serves its access token.
    pub async fn login(self: &Arc<Self>, response: TokenResponse) -> Result<Login, Error> {
        if self.spec.grant != Grant::RefreshToken {
            return Err(Error::NotRefreshGrant {
                credential: self.name().to_owned(),
                grant: self.spec.grant.as_str(),
            });
        }
        let adopted = Arc::new(AtomicBool::new(false));
        let mut response = Some(response);
        loop {
            // (mine, flight): the flight to wait for, and whether it is the login's own.
            let (mine, flight) = {
                let mut inner = self.lock();
                if self.stop.is_cancelled() {
                    return Err(Error::ShuttingDown);
                }
                match inner.flight.clone() {
                    Some(running) => (false, running),
                    None => {
                        inner.login = response.take().map(|response| Pending {
                            response,
                            adopted: adopted.clone(),
                        });
                        (true, self.start_flight(&mut inner, &Want::Login, None))
                    }
                }
            };
            let outcome = super::flight::wait(flight).await;
            if mine {
                return match outcome {
                    Ok(token) => Ok(Login::Served(token)),
                    Err(error) if adopted.load(Ordering::Acquire) => Ok(Login::Adopted(error)),
                    Err(error) => Err(error),
                };
            }
            // Whatever that flight did, the login replaces it afterwards.
        }
    }

    /// The flight of a login: restored already, it adopts `Inner::login`; with the
    /// shared store, under the fleet's lease.
    pub(super) async fn adopt_login(self: &Arc<Self>) -> Outcome {
        let coordinator = self.coordinator.clone();
        let Some(member) = coordinator.fleet() else {
            return self.fetch().await;
        };
        let mut outcome = Err(Error::ShuttingDown);
        for _ in 0..SHARED_ATTEMPTS {
            outcome = self.refresh_shared(member).await;
            if self.lock().login.is_none() {
                return outcome;
            }
            // Another broker's record settled the attempt before the login was
            // written: it is this broker's state now, and the login goes over it.
            member.position().adopted = false;
        }
        self.lock().login = None;
        Err(match outcome {
            Err(error) => error,
            Ok(_) => Error::Store("the shared store's lease could not be had for the login".into()),
        })
    }

    /// Ends a login's flight that adopted nothing: the credential is as it was, so
    /// only the login's caller hears of it.
    pub(super) fn login_failed(
        &self,
        error: Error,
        tx: tokio::sync::watch::Sender<Option<Outcome>>,
    ) {
        warn!(credential = self.name(), error = %error, "a login could not be adopted; nothing changed");
        let mut inner = self.lock();
        inner.login = None;
        inner.flight = None;
        self.metrics.in_flight.set(0);
        drop(inner);
        let _ = tx.send(Some(Err(error)));
        self.schedule_changed();
    }

    /// Stores a login's chain, then makes it this credential's (called by `fetch`,
    /// inside the flight and, with the shared store, under the lease). Nothing changes
    /// if the write fails.
    pub(super) async fn accept_login(&self, response: TokenResponse) -> Outcome {
        let member = self.coordinator.fleet();
        if member.is_some_and(|m| m.position().local) {
            return Err(Error::Store(
                "the shared store cannot be reached, and a login is stored there before it is used"
                    .into(),
            ));
        }
        let now = SystemTime::now();
        let saved = record(&response, &self.spec, now);
        // With the shared store the login is written as a new token: newer than every
        // state before it, whichever broker wrote that.
        let rotated = member.map(|m| std::mem::replace(&mut m.position().rotated, true));
        if let Err(error) = self.write(saved.clone()).await {
            if let (Some(was), Some(m)) = (rotated, member) {
                m.position().rotated = was;
            }
            return Err(error);
        }
        let token = self.login_token(&response, &saved, now);
        {
            let mut inner = self.lock();
            inner.refresh_token = saved.refresh_token;
            inner.bootstrap = saved.bootstrap;
            inner.reauth = None;
            inner.stop_unsaved = false;
            inner.unanswered_since = None;
            inner.unsaved = None;
            inner.discard_stored_token = false;
        }
        info!(
            credential = self.name(),
            "adopted the chain a login handed in"
        );
        Ok(token)
    }

    /// The token version a login's access token becomes, scheduled like any other.
    fn login_token(&self, response: &TokenResponse, saved: &Saved, now: SystemTime) -> Arc<Token> {
        let refresh_at = self.shared.spread.refresh_at(
            now,
            saved.expires_at,
            self.spec.refresh_ratio,
            self.spec.refresh_jitter,
        );
        Arc::new(Token::new(
            response.access_token.expose_secret(),
            saved.token_type.clone(),
            saved.scope.clone(),
            now,
            saved.expires_at,
            refresh_at,
        ))
    }
}

/// Writes a login's chain straight into the configured store, for `token-broker login
/// --config FILE` with no broker running: the same record a running broker writes, so
/// a broker started afterwards serves its access token and keeps its chain. The file
/// store is locked by a running broker: then this fails, and the login goes to it.
pub async fn adopt_offline(
    config: &Config,
    name: &str,
    response_json: &[u8],
) -> Result<Adopted, LoginError> {
    let spec = config
        .credentials
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| LoginError::UnknownCredential(name.to_owned()))?;
    if spec.grant != Grant::RefreshToken {
        return Err(LoginError::NotRefreshGrant {
            credential: name.to_owned(),
            grant: spec.grant.as_str(),
        });
    }
    let response = parse(response_json).map_err(LoginError::BadBody)?;
    let now = SystemTime::now();
    let saved = record(&response, spec, now);
    let expires_in = saved
        .expires_at
        .duration_since(now)
        .unwrap_or_default()
        .as_secs();
    let store = Store::open(&config.state)
        .await
        .map_err(|why| LoginError::Store(format!("cannot open the state store: {why}")))?;
    match &store {
        Store::File(file) => {
            let (file, name) = (file.clone(), name.to_owned());
            tokio::task::spawn_blocking(move || file.save(&name, &saved))
                .await
                .map_err(|e| LoginError::Store(format!("store task failed: {e}")))?
                .map_err(|e| LoginError::Store(e.to_string()))?
        }
        Store::Redis(redis) => save_shared(redis, name, &saved).await?,
    }
    Ok(Adopted {
        credential: name.to_owned(),
        expires_in,
    })
}

/// The shared store's write of an offline login: under the credential's lease, as the
/// newest state (a new token), so every broker of the fleet takes it.
async fn save_shared(
    redis: &crate::store::RedisStore,
    name: &str,
    saved: &Saved,
) -> Result<(), LoginError> {
    let unavailable = |why: String| LoginError::Store(format!("the shared store: {why}"));
    let lease = crate::secret::hex(&rand::random::<[u8; 16]>());
    let give_up = std::time::Instant::now() + redis.lease_duration * 2;
    while !redis
        .acquire(name, &lease)
        .await
        .map_err(|e| unavailable(e.to_string()))?
    {
        if std::time::Instant::now() >= give_up {
            return Err(LoginError::Store(
                "a running broker holds this credential's lease; log in through it (--url)".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let version = match redis.read(name).await {
        Ok(record) => record.map_or(0, |r| r.version),
        // An unreadable record is replaced by the login, as a broker would write over it.
        Err(ReadError::Corrupt { version, .. }) => version,
        Err(ReadError::Unavailable(why)) => {
            let _ = redis.release(name, &lease).await;
            return Err(unavailable(why));
        }
    };
    let fence = Fence {
        expected: version,
        next: next_version(version, true),
        lease: Some(lease.clone()),
        kind: WriteKind::Token,
        stamp: super::fleet::stamp(),
    };
    let written = redis.save(name, saved, &fence).await;
    let _ = redis.release(name, &lease).await;
    written.map(drop).map_err(|e| unavailable(e.to_string()))
}
