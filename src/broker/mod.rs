//! The broker: every configured credential, its published token, its single flight and
//! its proactive timer.
//!
//! Layout: `credential` (state and the single-flight gate), `refresh` (one refresh and
//! the ordering that makes rotation safe), `restore` (where a chain starts after a
//! restart), `timer` (proactive refresh and bootstrap watching), `schedule` (the pure
//! timing policy), `token` (a published token version), `status` (what operators see).
//! Nothing here knows HTTP.

mod credential;
mod refresh;
mod restore;
mod schedule;
mod status;
mod timer;
mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use credential::{Credential, Outcome, Want};
pub use status::{CredentialStatus, STATES};
pub use token::{Token, rfc3339};

use crate::config::Config;
use crate::error::Error;
use crate::idp::IdpClient;
use crate::metrics::Metrics;
use crate::store::Store;

/// What every credential shares.
pub(crate) struct Shared {
    pub idp: IdpClient,
    pub store: Arc<Store>,
    pub metrics: Metrics,
    /// How long a request waits for a refresh.
    pub request_timeout: Duration,
    /// Requests waiting for a refresh now, across all credentials.
    pub waiting: AtomicUsize,
    /// Cap on `waiting`: past it, requests get 503 instead of piling up.
    pub max_waiting: usize,
    /// Cancelled at shutdown: timers stop, no new refresh starts.
    pub shutdown: CancellationToken,
}

/// All credentials.
pub struct Broker {
    credentials: HashMap<String, Arc<Credential>>,
    /// Sorted names, for listings and error messages.
    names: Vec<String>,
    default: Option<String>,
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
    ) -> Result<Broker, String> {
        let shared = Arc::new(Shared {
            idp: IdpClient::new(&config.idp)?,
            store: Arc::new(store),
            metrics,
            request_timeout: config.server.request_timeout,
            waiting: AtomicUsize::new(0),
            max_waiting: config.server.max_waiting_requests,
            shutdown,
        });
        let credentials: HashMap<_, _> = config
            .credentials
            .iter()
            .map(|spec| {
                let client_keys = spec
                    .access
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        k.read()
                            .map_err(|e| format!("credentials.{}.client_keys[{i}]: {e}", spec.name))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let credential = Credential {
                    spec: spec.clone(),
                    current: ArcSwapOption::empty(),
                    inner: Default::default(),
                    wake: Notify::new(),
                    metrics: shared.metrics.credential(&spec.name),
                    shared: shared.clone(),
                    client_keys,
                };
                Ok((spec.name.clone(), Arc::new(credential)))
            })
            .collect::<Result<_, String>>()?;
        let mut names: Vec<String> = credentials.keys().cloned().collect();
        names.sort();
        let default = match config.credentials.iter().find(|c| c.default) {
            Some(c) => Some(c.name.clone()),
            None if names.len() == 1 => names.first().cloned(),
            None => None,
        };
        Ok(Broker {
            credentials,
            names,
            default,
            shared,
        })
    }

    /// Starts every credential's timer (which also performs its first fetch).
    pub fn start(&self) {
        for credential in self.credentials.values() {
            tokio::spawn(timer::run(credential.clone()));
        }
    }

    /// A credential by name.
    pub fn credential(&self, name: &str) -> Result<&Arc<Credential>, Error> {
        self.credentials
            .get(name)
            .ok_or_else(|| Error::UnknownCredential(name.to_owned()))
    }

    /// The credential `GET /token` serves.
    pub fn default_credential(&self) -> Result<&Arc<Credential>, Error> {
        match &self.default {
            Some(name) => self.credential(name),
            None => Err(Error::NoDefaultCredential {
                choices: self.names.clone(),
            }),
        }
    }

    /// Every credential, sorted by name.
    pub fn credentials(&self) -> impl Iterator<Item = &Arc<Credential>> {
        self.names.iter().filter_map(|n| self.credentials.get(n))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Stops timers and waits (up to `grace`) for refreshes in flight to finish and persist.
    pub async fn drain(&self, grace: Duration) {
        self.shared.shutdown.cancel();
        let deadline = Instant::now() + grace;
        while self.credentials().any(|c| c.lock().flight.is_some()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
