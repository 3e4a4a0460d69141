//! The broker: every configured credential, its published token, its single flight and
//! its proactive timer.
//!
//! Layout: `credential` (state and the single-flight gate), `state` (the situation as
//! one type and the pure decision every want goes through), `flight` (one flight from
//! start to end: its task, its outcome, its waiters), `refresh` (the work of one
//! refresh and the ordering that makes rotation safe), `refused` (when to ask again about a refused
//! credential without a chain), `restore` (where a chain starts after a restart), `login`
//! (a login's new chain, adopted by a running broker or written offline),
//! `coordinate` (the seam between a flight and whoever else may hold the chain: `Local`
//! for the file store, `fleet::Member` for a redis store), `fleet/` (the single flight
//! across brokers sharing a redis store: `lease`, `reconcile`, `write` and `notices`;
//! with the file store none of it runs and a credential has no fleet state), `timer`
//! (proactive refresh and bootstrap watching), `schedule` (the pure timing policy),
//! `watch` (published versions as a channel that watchers and sinks subscribe to),
//! `status` (what operators see), `dpop` (the key, nonces and proofs of a `dpop = true`
//! credential). The published
//! token version (`crate::token`) lives below the broker, so what serves it need not
//! reach into the broker for it.
//! Nothing here knows HTTP.

mod coordinate;
mod credential;
mod dpop;
mod fleet;
mod flight;
pub mod login;
mod refresh;
mod refused;
mod reload;
#[cfg(all(test, feature = "dev-idp"))]
mod restart_tests;
mod restore;
mod schedule;
mod state;
mod status;
mod timer;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

pub use crate::token::{Token, rfc3339};
pub use credential::{Credential, Outcome, Want};
pub use reload::Reloaded;
pub use status::{CredentialStatus, STATES};
pub use watch::Published;

use crate::config::Config;
use crate::error::Error;
use crate::idp::IdpClient;
use crate::metrics::Metrics;
use crate::secret::KeyRingError;
use crate::store::Store;

/// Why the broker could not be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The IdP client cannot be made (its CA, client certificate or key).
    #[error(transparent)]
    Idp(#[from] crate::idp::ClientError),
    /// A credential's client key cannot be read.
    #[error(transparent)]
    ClientKeys(#[from] KeyRingError),
}

/// What every credential shares.
pub(crate) struct Shared {
    pub idp: IdpClient,
    pub store: Store,
    pub metrics: Metrics,
    /// How long a request waits for a refresh.
    pub request_timeout: Duration,
    /// Requests waiting for a refresh now, across all credentials.
    pub waiting: AtomicUsize,
    /// Cap on `waiting`: past it, requests get 503 instead of piling up.
    pub max_waiting: usize,
    /// Cancelled at shutdown: timers stop, no new refresh starts.
    pub shutdown: CancellationToken,
    /// Every credential's next proactive wake-up.
    pub timers: timer::Timers<Credential>,
    /// Where the proactive refresh points already fall, so new ones avoid busy seconds.
    pub spread: schedule::Spread,
    /// `idp.timeout`: with the shared store, how long another broker's refresh may still
    /// be out.
    pub idp_timeout: Duration,
}

/// The credentials in force; replaced whole by a reload, read lock-free by requests.
#[derive(Default)]
pub(crate) struct Set {
    pub map: HashMap<String, Arc<Credential>>,
    /// Sorted names, for listings and error messages.
    pub names: Vec<String>,
    pub default: Option<String>,
}

impl Set {
    fn new(map: HashMap<String, Arc<Credential>>) -> Set {
        let mut names: Vec<String> = map.keys().cloned().collect();
        names.sort();
        let default = match map.values().find(|c| c.spec.default) {
            Some(c) => Some(c.spec.name.clone()),
            None if names.len() == 1 => names.first().cloned(),
            None => None,
        };
        Set {
            map,
            names,
            default,
        }
    }
}

/// All credentials.
pub struct Broker {
    set: ArcSwap<Set>,
    /// Counts the sets put in force, so what follows each credential (file sinks)
    /// finds the ones a reload started.
    sets: tokio::sync::watch::Sender<u64>,
    shared: Arc<Shared>,
}

impl Broker {
    /// Builds the broker. Nothing is read from disk or the network yet: each
    /// credential's first flight restores its stored state, so start-up is instant.
    pub fn new(
        config: &Config,
        store: Store,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<Broker, BuildError> {
        let shared = Arc::new(Shared {
            idp: IdpClient::new(&config.idp)?,
            store,
            metrics,
            request_timeout: config.server.request_timeout,
            waiting: AtomicUsize::new(0),
            max_waiting: config.server.max_waiting_requests,
            shutdown,
            timers: timer::Timers::new(config.idp.max_concurrent),
            spread: schedule::Spread::default(),
            idp_timeout: config.idp.timeout,
        });
        let map = config
            .credentials
            .iter()
            .map(|spec| Ok((spec.name.clone(), Credential::build(&shared, spec)?)))
            .collect::<Result<_, KeyRingError>>()?;
        Ok(Broker {
            set: ArcSwap::from_pointee(Set::new(map)),
            sets: tokio::sync::watch::Sender::new(0),
            shared,
        })
    }

    /// Starts the proactive timer; every credential is due at once (its first fetch).
    pub fn start(&self) {
        for credential in self.set.load().map.values() {
            self.shared.timers.schedule(credential);
        }
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.timers.run(shared.shutdown.clone()).await });
    }

    /// A credential by name.
    pub fn credential(&self, name: &str) -> Result<Arc<Credential>, Error> {
        self.set
            .load()
            .map
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownCredential(name.to_owned()))
    }

    /// Changes whenever a reload puts a new set of credentials in force; closes when
    /// the broker is dropped.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sets.subscribe()
    }

    /// The credential `GET /token` serves.
    pub fn default_credential(&self) -> Result<Arc<Credential>, Error> {
        let set = self.set.load();
        match &set.default {
            Some(name) => self.credential(name),
            None => Err(Error::NoDefaultCredential {
                choices: set.names.clone(),
            }),
        }
    }

    /// Every credential, sorted by name.
    pub fn credentials(&self) -> Vec<Arc<Credential>> {
        let set = self.set.load();
        set.names
            .iter()
            .filter_map(|n| set.map.get(n).cloned())
            .collect()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Stops timers and waits (up to `grace`) for refreshes in flight to finish and persist.
    pub async fn drain(&self, grace: Duration) {
        self.shared.shutdown.cancel();
        let deadline = Instant::now() + grace;
        while self.credentials().iter().any(|c| c.lock().flight.is_some())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
