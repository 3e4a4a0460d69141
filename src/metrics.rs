//! Prometheus metrics, all prefixed `token_broker_`.
//!
//! Per-credential handles are created once when a credential is added and kept in the
//! credential, so counting a served request is one atomic add, not a map lookup.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    credential: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refresh {
    credential: String,
    trigger: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Name {
    credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Adopted {
    credential: String,
    via: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    credential: String,
    state: String,
}

/// The registry and every metric family.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<Outcome, Counter>,
    refreshes: Family<Refresh, Counter>,
    joined: Family<Name, Counter>,
    in_flight: Family<Name, Gauge>,
    expiry: Family<Name, Gauge>,
    state: Family<State, Gauge>,
    idp_latency: Histogram,
    store_latency: Histogram,
    lease_acquired: Family<Name, Counter>,
    lease_waits: Family<Name, Counter>,
    lease_lost: Family<Name, Counter>,
    adopted: Family<Adopted, Counter>,
    store_errors: Family<Operation, Counter>,
}

/// Handles for one credential's hot counters.
#[derive(Clone)]
pub struct CredentialMetrics {
    name: String,
    metrics: Metrics,
    served: Counter,
    pub joined: Counter,
    pub in_flight: Gauge,
    pub expiry: Gauge,
}

/// What happened to a refresh lease in the shared store.
#[derive(Debug, Clone, Copy)]
pub enum LeaseEvent {
    Acquired,
    /// Another broker held it; this one waited for its result.
    Waited,
    /// It ran out before its refresh finished.
    Lost,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("token_broker");
        let m = Metrics {
            registry: Arc::default(),
            requests: Family::default(),
            refreshes: Family::default(),
            joined: Family::default(),
            in_flight: Family::default(),
            expiry: Family::default(),
            state: Family::default(),
            idp_latency: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            store_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            lease_acquired: Family::default(),
            lease_waits: Family::default(),
            lease_lost: Family::default(),
            adopted: Family::default(),
            store_errors: Family::default(),
        };
        registry.register(
            "requests",
            "Token requests answered, by credential and outcome",
            m.requests.clone(),
        );
        registry.register(
            "refreshes",
            "Refresh attempts by credential, trigger and result (trigger startup also counts restoring a stored token)",
            m.refreshes.clone(),
        );
        registry.register(
            "refresh_joined",
            "Requests that joined a refresh already in flight instead of starting one",
            m.joined.clone(),
        );
        registry.register(
            "refreshes_in_flight",
            "Refreshes in flight per credential",
            m.in_flight.clone(),
        );
        registry.register(
            "token_expiry_timestamp_seconds",
            "Unix time at which the current access token expires",
            m.expiry.clone(),
        );
        registry.register(
            "credential_state",
            "1 for the state each credential is in",
            m.state.clone(),
        );
        registry.register(
            "idp_request_duration_seconds",
            "Latency of token requests to IdPs",
            m.idp_latency.clone(),
        );
        registry.register(
            "store_write_duration_seconds",
            "Latency of durable state writes (write, fsync, rename)",
            m.store_latency.clone(),
        );
        m.register_shared(&mut registry);
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        m
    }

    /// The shared (redis) store's metrics; they stay empty with the file store.
    fn register_shared(&self, registry: &mut Registry) {
        registry.register(
            "lease_acquired",
            "Refresh leases this broker took in the shared store",
            self.lease_acquired.clone(),
        );
        registry.register(
            "lease_waits",
            "Refreshes that found another broker holding the lease and waited for its result",
            self.lease_waits.clone(),
        );
        registry.register(
            "lease_lost",
            "Leases that ran out before their refresh finished (its write was refused)",
            self.lease_lost.clone(),
        );
        registry.register(
            "adopted",
            "Token versions taken from the shared store instead of refreshing, by how this broker learnt of them",
            self.adopted.clone(),
        );
        registry.register(
            "store_errors",
            "Failed operations on the shared store, by operation",
            self.store_errors.clone(),
        );
    }

    /// Counts a failed shared-store operation (`load`, `save`, `lease`, `subscribe`, `poll`).
    pub fn store_error(&self, operation: &str) {
        let label = Operation {
            operation: operation.to_owned(),
        };
        self.store_errors.get_or_create(&label).inc();
    }

    /// The handles for one credential.
    pub fn credential(&self, name: &str) -> CredentialMetrics {
        let label = Name {
            credential: name.to_owned(),
        };
        CredentialMetrics {
            name: name.to_owned(),
            metrics: self.clone(),
            served: self.requests.get_or_create(&outcome(name, "ok")).clone(),
            joined: self.joined.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            expiry: self.expiry.get_or_create(&label).clone(),
        }
    }

    pub fn observe_idp(&self, seconds: f64) {
        self.idp_latency.observe(seconds);
    }

    pub fn observe_store(&self, seconds: f64) {
        self.store_latency.observe(seconds);
    }

    /// Sets the one-hot state gauge of a credential.
    pub fn set_state(&self, credential: &str, current: &str, all: &[&str]) {
        for state in all {
            let label = State {
                credential: credential.to_owned(),
                state: (*state).to_owned(),
            };
            self.state
                .get_or_create(&label)
                .set(i64::from(*state == current));
        }
    }

    /// Drops every series of a credential that was removed.
    pub fn forget(&self, credential: &str, states: &[&str]) {
        let name = Name {
            credential: credential.to_owned(),
        };
        self.joined.remove(&name);
        self.in_flight.remove(&name);
        self.expiry.remove(&name);
        self.lease_acquired.remove(&name);
        self.lease_waits.remove(&name);
        self.lease_lost.remove(&name);
        for via in ["flight", "notice", "poll"] {
            self.adopted.remove(&Adopted {
                credential: credential.to_owned(),
                via: via.to_owned(),
            });
        }
        for state in states {
            self.state.remove(&State {
                credential: credential.to_owned(),
                state: (*state).to_owned(),
            });
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

fn outcome(credential: &str, outcome: &str) -> Outcome {
    Outcome {
        credential: credential.to_owned(),
        outcome: outcome.to_owned(),
    }
}

impl CredentialMetrics {
    /// A request answered with a token.
    pub fn served(&self) {
        self.served.inc();
    }

    /// A request answered with an error code.
    pub fn failed(&self, code: &str) {
        self.metrics
            .requests
            .get_or_create(&outcome(&self.name, code))
            .inc();
    }

    /// A finished call to the IdP.
    pub fn refreshed(&self, trigger: &str, result: &str) {
        let labels = Refresh {
            credential: self.name.clone(),
            trigger: trigger.to_owned(),
            result: result.to_owned(),
        };
        self.metrics.refreshes.get_or_create(&labels).inc();
    }

    /// Counts a lease event. Created on first use, so the file store exports none of
    /// these series.
    pub fn lease(&self, event: LeaseEvent) {
        let family = match event {
            LeaseEvent::Acquired => &self.metrics.lease_acquired,
            LeaseEvent::Waited => &self.metrics.lease_waits,
            LeaseEvent::Lost => &self.metrics.lease_lost,
        };
        let label = Name {
            credential: self.name.clone(),
        };
        family.get_or_create(&label).inc();
    }

    /// A token version taken from the shared store (`via`: `flight`, `notice`, `poll`).
    pub fn adopted(&self, via: &str) {
        let labels = Adopted {
            credential: self.name.clone(),
            via: via.to_owned(),
        };
        self.metrics.adopted.get_or_create(&labels).inc();
    }

    /// Records when the current token expires.
    pub fn set_expiry(&self, expires_at: std::time::SystemTime) {
        let secs = expires_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.expiry.set(secs);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
