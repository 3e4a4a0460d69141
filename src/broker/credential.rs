//! One credential: its published token, and the single-flight gate in front of its IdP.
//!
//! A credential is always in exactly one of three situations: a token is cached (and
//! served from `current` without any lock), a refresh is in flight (and everyone who
//! needs a new token waits on that one flight's result), or neither. Every path that
//! wants a new token — the proactive timer, `min_ttl`, a rejected-token report, a
//! forced refresh — goes through `get`, which decides under the `inner` lock whether to
//! serve, join or start (the rules are `state::decide`, a pure function), so no two calls
//! to the IdP for one credential can overlap. The flight itself is `flight`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use secrecy::SecretString;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::coordinate::Coordinator;
use super::state::{self, Snapshot, Step, Why};
use super::watch::Published;
use crate::config::{CredentialSpec, Grant};
use crate::error::{Error, Remedy};
use crate::metrics::CredentialMetrics;
use crate::token::Token;

/// The one result of a refresh, handed to every waiter.
pub type Outcome = Result<Arc<Token>, Error>;

/// What a caller needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A token with more than this much lifetime left (zero: any valid token).
    Fresh(Duration),
    /// The caller's API rejected this token: refresh only if it is still the current one.
    Rejected(String),
    /// A refresh regardless of the current token (rate-limited per credential).
    Forced,
    /// The proactive timer fired.
    Timer,
    /// A login handed in a new chain (`Inner::login`): the flight adopts it.
    Login,
}

impl Want {
    /// Whether `token`, valid at `now`, answers this want without a refresh.
    pub(super) fn satisfied_by(&self, token: &Token, now: SystemTime) -> bool {
        match self {
            Want::Fresh(min_ttl) => token.ttl(now) > *min_ttl,
            Want::Rejected(rejected) => !token.is(rejected),
            Want::Forced | Want::Login => false,
            Want::Timer => now < token.refresh_at,
        }
    }

    /// Whether a client asks for more than the timer would do: its refresh counts
    /// against `min_refresh_interval` (see `state`).
    pub(super) fn demands_refresh(&self) -> bool {
        match self {
            Want::Fresh(min_ttl) => !min_ttl.is_zero(),
            Want::Rejected(_) | Want::Forced => true,
            Want::Timer | Want::Login => false,
        }
    }

    /// The metric label of what started a refresh.
    pub fn trigger(&self) -> &'static str {
        match self {
            Want::Fresh(ttl) if ttl.is_zero() => "request",
            Want::Fresh(_) => "min_ttl",
            Want::Rejected(_) => "rejected",
            Want::Forced => "forced",
            Want::Timer => "timer",
            Want::Login => "login",
        }
    }
}

/// One credential.
pub struct Credential {
    pub spec: CredentialSpec,
    /// The published token: read lock-free by every request.
    pub(super) current: ArcSwapOption<Token>,
    /// Everything a refresh decision reads or writes. A std mutex, held only for short
    /// bookkeeping and never across an `.await`, so it cannot stall the runtime.
    pub(super) inner: Mutex<Inner>,
    /// Which of the scheduler's entries for this credential is live (see `timer`).
    pub(super) timer_generation: AtomicU64,
    /// This credential's own `Arc`, so `&self` methods can (re)schedule it.
    pub(super) me: Weak<Credential>,
    /// Wakes a flight waiting for another broker's lease (shared store) when a change
    /// notice about this credential arrives.
    pub(super) remote: tokio::sync::Notify,
    pub(super) shared: Arc<Shared>,
    /// Who else may hold this credential's chain: nobody (the file store) or a fleet
    /// sharing a redis store (see `coordinate`).
    pub(super) coordinator: Arc<dyn Coordinator>,
    pub(super) metrics: CredentialMetrics,
    /// The client keys of `spec.access`, kept current with their files.
    pub(super) client_keys: crate::secret::KeyRing,
    /// Cancelled when this credential is retired (shutdown, or removed or replaced by a
    /// reload): its timer stops and it starts no new refresh.
    pub(super) stop: CancellationToken,
    /// Every published version and withdrawal, for subscribers (long polls, event
    /// streams, file sinks: see `watch`). With nobody subscribed, a publish costs an
    /// uncontended lock.
    pub(super) versions: watch::Sender<Published>,
    /// With `dpop = true`: the key, and the nonces of the IdP and resource servers.
    pub(super) dpop: Option<super::dpop::Dpop>,
}

/// The mutable part of a credential.
#[derive(Default)]
pub(super) struct Inner {
    /// The refresh in flight, if any; joining means cloning this receiver.
    pub flight: Option<watch::Receiver<Option<Outcome>>>,
    /// The refresh token to send next (rotated ones replace it as they arrive).
    pub refresh_token: Option<SecretString>,
    /// Fingerprint of the bootstrap token the current chain started from; for grants
    /// without a chain, of the inputs the IdP refused (only while refused; see
    /// `idp::fingerprint`).
    pub bootstrap: Option<String>,
    /// Grants without a chain: the digest of the inputs of the last request, or of the
    /// current inputs once they were found to match a stored refusal. Memory only.
    pub inputs_sent: Option<crate::idp::fingerprint::Digest>,
    /// A token the IdP issued that is not yet durable; it is saved before anything else.
    pub unsaved: Option<Arc<Token>>,
    /// Consecutive failed refreshes.
    pub failures: u32,
    /// The token a rejected-token report disputed, while the refresh it started or
    /// joined runs: should the IdP refuse that refresh, this token is withdrawn.
    pub disputed: Option<SecretString>,
    /// The last refresh error, kept for status and for requests during backoff.
    pub last_error: Option<(Error, SystemTime)>,
    /// No refresh starts before this after a failure (the timer retries then).
    pub retry_at: Option<SystemTime>,
    /// Set when the IdP refused the chain; no IdP calls until the bootstrap changes.
    pub reauth: Option<String>,
    /// The stop in `reauth` could not be written (file store): the timer writes it
    /// again, so a restart neither repeats the refused call nor serves a withdrawn token.
    pub stop_unsaved: bool,
    /// A rotated chain (an unbound token's answer) could not be written: the next
    /// refresh writes it before anything is sent.
    pub chain_unsaved: bool,
    pub last_refresh_at: Option<SystemTime>,
    /// When the last refresh a client asked for (`min_ttl`, report, forced) ended: the
    /// next such refresh waits `min_refresh_interval` (see `state`).
    pub last_demanded_at: Option<SystemTime>,
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
    /// Whether the stored state was loaded; the first flight does that before anything.
    pub restored: bool,
    /// When the current refresh token was sent in a request that got no answer (or
    /// was out when the broker stopped): it may be spent at the IdP already.
    pub unanswered_since: Option<SystemTime>,
    /// Set when a reload replaced this credential's settings: the stored access token
    /// may not match them (scope, audience, client), so the chain is kept but a new
    /// token is fetched.
    pub discard_stored_token: bool,
    /// A login's token response, waiting for its flight to adopt it (see `login`).
    pub login: Option<super::login::Pending>,
}

/// What `decide` concluded under the lock.
pub(super) enum Decision {
    Serve(Arc<Token>),
    Fail(Error),
    Wait(watch::Receiver<Option<Outcome>>),
}

impl Credential {
    /// A credential with no state yet; its first flight restores what the store holds.
    pub(super) fn build(
        shared: &Arc<Shared>,
        spec: &CredentialSpec,
    ) -> Result<Arc<Credential>, crate::secret::KeyRingError> {
        let client_keys = crate::secret::KeyRing::load(&spec.name, &spec.access.keys)?;
        let stop = shared.shutdown.child_token();
        Ok(Arc::new_cyclic(|me| Credential {
            spec: spec.clone(),
            current: ArcSwapOption::empty(),
            inner: Mutex::default(),
            timer_generation: AtomicU64::new(0),
            me: me.clone(),
            remote: tokio::sync::Notify::new(),
            metrics: shared.metrics.credential(&spec.name),
            shared: shared.clone(),
            coordinator: super::coordinate::for_store(&shared.store),
            client_keys,
            stop,
            versions: watch::Sender::new(Published::Nothing),
            dpop: spec.dpop.as_ref().map(super::dpop::Dpop::new),
        }))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name from the config.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether a client may fetch this credential: no rules, an allowed unix peer
    /// (`uid`, `gid` from the kernel), or a matching client key.
    pub fn allows(&self, unix_peer: Option<(u32, u32)>, key: Option<&[u8]>) -> bool {
        let access = &self.spec.access;
        if !access.is_restricted() {
            return true;
        }
        let peer_ok = unix_peer
            .is_some_and(|(uid, gid)| access.uids.contains(&uid) || access.gids.contains(&gid));
        let key_ok = key.is_some_and(|key| self.client_keys.admits(key));
        peer_ok || key_ok
    }

    /// Counts a request answered with a token.
    pub fn count_served(&self) {
        self.metrics.served();
    }

    /// Counts a request answered with an error code.
    pub fn count_failed(&self, code: &'static str) {
        self.metrics.failed(code);
    }

    /// The published token, if any (valid or not).
    pub fn current(&self) -> Option<Arc<Token>> {
        self.current.load_full()
    }

    /// Makes `token` the one every request is served. The one place a token version
    /// becomes visible: the read path loads `current`, and whatever follows new
    /// versions (watchers, sinks) subscribes to `versions`, sent after it.
    pub(super) fn publish(&self, token: Arc<Token>) {
        self.metrics.set_expiry(token.expires_at);
        self.current.store(Some(token.clone()));
        self.versions.send_replace(Published::Token(token));
    }

    /// Tells the proactive timer that this credential's next due time may have moved.
    pub(super) fn schedule_changed(&self) {
        if let Some(me) = self.me.upgrade() {
            self.shared.timers.schedule(&me);
        }
    }

    /// A token satisfying `want`, joining or starting the single refresh if needed.
    pub async fn get(self: &Arc<Self>, want: Want) -> Outcome {
        let now = SystemTime::now();
        if let Want::Fresh(min_ttl) = want {
            // The hot path: one atomic load, no lock.
            if let Some(token) = self.current.load_full()
                && token.is_valid(now)
                && token.ttl(now) > min_ttl
            {
                return Ok(token);
            }
        }
        let outcome = self.wait_for(&want, now).await;
        // A report answered with the very token it rejected: if a refresh minted it after
        // the report arrived, the IdP handed the same token out again; otherwise the
        // report joined a flight that only restored the stored token, and decides once
        // more to start the refresh it asked for.
        match (&want, outcome) {
            // The refresh handed out the very token the report rejected (an IdP whose
            // tokens have no `jti`): asking again at once would get it again.
            (Want::Rejected(rejected), Ok(token))
                if token.is(rejected) && token.issued_at >= now =>
            {
                Err(Error::RefreshTooSoon {
                    retry_after: self.spec.min_refresh_interval.max(Duration::from_secs(1)),
                })
            }
            (Want::Rejected(rejected), Ok(token)) if token.is(rejected) => {
                self.wait_for(&want, SystemTime::now()).await
            }
            (_, outcome) => outcome,
        }
    }

    /// What `state::decide` reads, from `inner` and the published token.
    pub(super) fn snapshot<'a>(&self, inner: &Inner, token: Option<&'a Token>) -> Snapshot<'a> {
        Snapshot {
            token,
            restored: inner.restored,
            refreshing: inner.flight.is_some(),
            refused: inner.reauth.is_some(),
            stopping: self.stop.is_cancelled(),
            retry_at: inner.retry_at,
            failures: inner.failures,
            last_refresh_at: inner.last_refresh_at,
            last_demanded_at: inner.last_demanded_at,
            min_refresh_interval: self.spec.min_refresh_interval,
            settled: inner.unsaved.is_none() && inner.unanswered_since.is_none(),
            login_required: self.awaits_login(inner),
        }
    }

    /// Whether this credential waits for a login: a `refresh_token` credential, its
    /// state loaded, with no chain (none configured or stored) and no refusal to tell.
    pub(super) fn awaits_login(&self, inner: &Inner) -> bool {
        self.spec.grant == Grant::RefreshToken
            && inner.restored
            && inner.reauth.is_none()
            && inner.refresh_token.is_none()
            && inner.unsaved.is_none()
            && inner.login.is_none()
    }

    /// Serve, fail, join the flight in progress or start one, as `state::decide` says.
    /// `arrived`: when the request came in. `slot` is the timer's place among
    /// timer-started flights, held by the flight it starts.
    pub(super) fn decide(
        self: &Arc<Self>,
        want: &Want,
        arrived: SystemTime,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Decision {
        let now = SystemTime::now();
        let mut inner = self.lock();
        let current = self.current.load_full();
        let step = state::decide(
            &self.snapshot(&inner, current.as_deref()),
            want,
            arrived,
            now,
        );
        match step {
            Step::Serve => match current {
                Some(token) => Decision::Serve(token),
                None => Decision::Fail(Error::ShuttingDown),
            },
            Step::Join => match inner.flight.clone() {
                Some(flight) => {
                    self.metrics.joined.inc();
                    self.note_dispute(&mut inner, want, current.as_deref());
                    Decision::Wait(flight)
                }
                None => Decision::Fail(Error::ShuttingDown),
            },
            Step::Fail(Why::Refused) => Decision::Fail(self.refusal(&inner)),
            Step::Fail(Why::LoginRequired) => Decision::Fail(self.login_required()),
            Step::Fail(Why::ShuttingDown) => Decision::Fail(Error::ShuttingDown),
            Step::Fail(Why::BackingOff) => Decision::Fail(self.backoff_error(&inner, now)),
            Step::Fail(Why::TooSoon(wait)) => Decision::Fail(Error::RefreshTooSoon {
                retry_after: wait.max(Duration::from_secs(1)),
            }),
            Step::Start => {
                inner.disputed = None;
                self.note_dispute(&mut inner, want, current.as_deref());
                Decision::Wait(self.start_flight(&mut inner, want, slot))
            }
        }
    }

    /// A report of the current token (or, before the stored state is loaded, of any
    /// token) disputes it for the flight it starts or joins.
    fn note_dispute(&self, inner: &mut Inner, want: &Want, current: Option<&Token>) {
        if let Want::Rejected(rejected) = want
            && current.is_none_or(|token| token.is(rejected))
        {
            inner.disputed = Some(SecretString::from(rejected.clone()));
        }
    }

    /// The error for a credential in `reauth_required`.
    pub(super) fn refusal(&self, inner: &Inner) -> Error {
        Error::ReauthRequired {
            reason: inner.reauth.clone().unwrap_or_default(),
            remedy: self.remedy(),
        }
    }

    /// The error for a credential in `login_required`.
    pub(super) fn login_required(&self) -> Error {
        Error::LoginRequired {
            credential: self.name().to_owned(),
        }
    }

    /// What resumes this credential once refused: a new bootstrap where one is
    /// configured, else a login.
    pub(super) fn remedy(&self) -> Remedy {
        match (&self.spec.grant, &self.spec.refresh_token) {
            (Grant::RefreshToken, Some(_)) => Remedy::NewBootstrap(self.name().to_owned()),
            (Grant::RefreshToken, None) => Remedy::Login(self.name().to_owned()),
            _ => Remedy::FixInputs,
        }
    }

    /// The error a request gets while refreshes are backing off.
    fn backoff_error(&self, inner: &Inner, now: SystemTime) -> Error {
        let retry_after = inner
            .retry_at
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        match &inner.last_error {
            Some((Error::UpstreamUnavailable { reason, .. }, _)) => Error::UpstreamUnavailable {
                reason: reason.clone(),
                retry_after,
            },
            Some((Error::HeldBack { reason, .. }, _)) => Error::HeldBack {
                reason: reason.clone(),
                retry_after,
            },
            Some((other, _)) => other.clone(),
            None => Error::UpstreamUnavailable {
                reason: "retrying".into(),
                retry_after,
            },
        }
    }

    /// Stops serving the published token: the IdP refused its chain (or the report
    /// that disputed it), so it is likely revoked, and a new chain must not be mixed
    /// with the old one's token. Reads then get the refusal.
    pub(super) fn withdraw(&self) {
        if self.current.swap(None).is_some() {
            self.metrics.set_expiry(std::time::UNIX_EPOCH);
        }
        // Also when nothing was published in this process: a sink file may still hold
        // the token from before a restart. Subscribers hear of it once.
        self.versions.send_if_modified(|last| {
            let fresh = !matches!(last, Published::Withdrawn);
            *last = Published::Withdrawn;
            fresh
        });
    }
}
