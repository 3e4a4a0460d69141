//! Prometheus metrics, all prefixed `token_broker_`.
//!
//! Per-credential handles are created once when a credential is added and kept in the
//! credential, so counting a served request is one atomic add, not a map lookup. The
//! one-hot state of every credential is not stored at all: it is read from the broker
//! when a scrape encodes it (`StateSource`).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod delivery;

pub use delivery::{ProxyMetrics, SinkMetrics};

// Label sets share the credential's name (one allocation per credential, however many
// series it has) and use static strings for the rest: with thousands of credentials,
// a String per label per series costs megabytes.

/// A credential's name as a label value.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Label(Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    credential: Label,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refresh {
    credential: Label,
    trigger: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Name {
    credential: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Adopted {
    credential: Label,
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

/// Where the state metric is read from at scrape time: the broker.
pub trait StateSource: Send + Sync + 'static {
    /// Calls `each` with every credential's name and current state.
    fn for_each_state(&self, each: &mut dyn FnMut(&str, &'static str));
}

/// The source, once the broker exists (the metrics are made before it).
type Source = Arc<OnceLock<Weak<dyn StateSource>>>;

/// The registry and every metric family, shared: a clone is one reference count, and
/// every credential holds one.
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

impl std::ops::Deref for Metrics {
    type Target = Families;

    fn deref(&self) -> &Families {
        &self.0
    }
}

/// What `Metrics` shares.
pub struct Families {
    /// Set once, when every family is registered (the families exist first: the
    /// registry holds clones of them).
    registry: OnceLock<Registry>,
    requests: Family<Outcome, Counter>,
    refreshes: Family<Refresh, Counter>,
    joined: Family<Name, Counter>,
    in_flight: Family<Name, Gauge>,
    expiry: Family<Name, Gauge>,
    states: Source,
    idp_latency: Histogram,
    store_latency: Histogram,
    /// Size of the last exposition, to size the next one's buffer.
    last_size: AtomicUsize,
    lease_acquired: Family<Name, Counter>,
    lease_waits: Family<Name, Counter>,
    lease_lost: Family<Name, Counter>,
    adopted: Family<Adopted, Counter>,
    store_errors: Family<Operation, Counter>,
    /// Sinks, proxies and watchers.
    delivery: delivery::Delivery,
}

/// Handles for one credential's hot counters.
#[derive(Clone)]
pub struct CredentialMetrics {
    name: Label,
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

impl Metrics {
    /// The metrics; `states` lists every state the state metric reports.
    pub fn new(states: &'static [&'static str]) -> Metrics {
        let mut registry = Registry::with_prefix("token_broker");
        let m = Metrics(Arc::new(Families {
            registry: OnceLock::new(),
            requests: Family::default(),
            refreshes: Family::default(),
            joined: Family::default(),
            in_flight: Family::default(),
            expiry: Family::default(),
            states: Source::default(),
            idp_latency: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            store_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            last_size: AtomicUsize::new(0),
            lease_acquired: Family::default(),
            lease_waits: Family::default(),
            lease_lost: Family::default(),
            adopted: Family::default(),
            store_errors: Family::default(),
            delivery: delivery::Delivery::default(),
        }));
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
        registry.register_collector(Box::new(StateCollector {
            source: m.states.clone(),
            all: states,
        }));
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
        m.delivery.register(&mut registry);
        let _ = m.registry.set(registry);
        m
    }

    /// Where the state metric comes from; set once, when the broker exists.
    pub fn set_state_source(&self, source: Weak<dyn StateSource>) {
        let _ = self.states.set(source);
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
    pub fn store_error(&self, operation: &'static str) {
        let label = Operation { operation };
        self.store_errors.get_or_create(&label).inc();
    }

    /// The handles for one credential.
    pub fn credential(&self, name: &str) -> CredentialMetrics {
        let name = Label(Arc::from(name));
        let label = Name {
            credential: name.clone(),
        };
        CredentialMetrics {
            served: self.requests.get_or_create(&outcome(&name, "ok")).clone(),
            joined: self.joined.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            expiry: self.expiry.get_or_create(&label).clone(),
            metrics: self.clone(),
            name,
        }
    }

    pub fn observe_idp(&self, seconds: f64) {
        self.idp_latency.observe(seconds);
    }

    pub fn observe_store(&self, seconds: f64) {
        self.store_latency.observe(seconds);
    }

    /// Drops every series of a credential that was removed.
    pub fn forget(&self, credential: &str) {
        let name = Name {
            credential: Label(Arc::from(credential)),
        };
        self.joined.remove(&name);
        self.in_flight.remove(&name);
        self.expiry.remove(&name);
        self.lease_acquired.remove(&name);
        self.lease_waits.remove(&name);
        self.lease_lost.remove(&name);
        for via in ["flight", "notice", "poll"] {
            self.adopted.remove(&Adopted {
                credential: name.credential.clone(),
                via,
            });
        }
        self.delivery.forget(&name.credential);
    }

    /// The text exposition. With thousands of credentials it runs to megabytes: the
    /// buffer is sized from the last scrape, so it is one allocation that the allocator
    /// hands back to the system when it is freed, not a chain of doublings.
    pub fn encode(&self) -> String {
        let expected = self.last_size.load(Ordering::Relaxed);
        let mut out = String::with_capacity(expected + expected / 8 + 4096);
        if let Some(registry) = self.registry.get() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        }
        self.last_size.store(out.len(), Ordering::Relaxed);
        out
    }
}

/// Encodes the one-hot `credential_state` from the broker at scrape time, so thousands
/// of credentials do not keep six stored series each.
struct StateCollector {
    source: Source,
    all: &'static [&'static str],
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(source) = self.source.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let mut metric = encoder.encode_descriptor(
            "credential_state",
            "1 for the state each credential is in",
            None,
            MetricType::Gauge,
        )?;
        let mut result = Ok(());
        source.for_each_state(&mut |name, current| {
            for state in self.all {
                if result.is_ok() {
                    let labels = [("credential", name), ("state", *state)];
                    result = metric
                        .encode_family(&labels)
                        .and_then(|mut m| m.encode_gauge(&i64::from(*state == current)));
                }
            }
        });
        result
    }
}

fn outcome(credential: &Label, outcome: &'static str) -> Outcome {
    Outcome {
        credential: credential.clone(),
        outcome,
    }
}

impl CredentialMetrics {
    /// A request answered with a token.
    pub fn served(&self) {
        self.served.inc();
    }

    /// A request answered with an error code.
    pub fn failed(&self, code: &'static str) {
        self.metrics
            .requests
            .get_or_create(&outcome(&self.name, code))
            .inc();
    }

    /// A finished call to the IdP.
    pub fn refreshed(&self, trigger: &'static str, result: &'static str) {
        let labels = Refresh {
            credential: self.name.clone(),
            trigger,
            result,
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
    pub fn adopted(&self, via: &'static str) {
        let labels = Adopted {
            credential: self.name.clone(),
            via,
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
