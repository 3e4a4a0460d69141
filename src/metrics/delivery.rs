//! Metrics of the ways tokens leave the broker besides `GET /token`: file sinks, the
//! header-injecting proxies, watchers (long polls and event streams), and the emulated
//! SDK protocols.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Label;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkWrite {
    credential: Label,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyOutcome {
    proxy: Label,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyRetry {
    proxy: Label,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Emulated {
    credential: Label,
    protocol: &'static str,
    outcome: &'static str,
}

/// The families, registered once.
#[derive(Clone, Default)]
pub(super) struct Delivery {
    sink_writes: Family<SinkWrite, Counter>,
    proxy_requests: Family<ProxyOutcome, Counter>,
    proxy_retries: Family<ProxyRetry, Counter>,
    watchers: Gauge,
    emulated: Family<Emulated, Counter>,
}

impl Delivery {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "sink_writes",
            "Token files written by sinks, by credential and result (ok, error)",
            self.sink_writes.clone(),
        );
        registry.register(
            "proxy_requests",
            "Requests through header-injecting proxies, by proxy and outcome",
            self.proxy_requests.clone(),
        );
        registry.register(
            "proxy_retries",
            "Upstream 401s seen by proxies, by what the proxy did (retried: ok or rejected; not retried: body_not_kept, no_token, upstream_error)",
            self.proxy_retries.clone(),
        );
        registry.register(
            "watchers",
            "Long polls and event streams open now",
            self.watchers.clone(),
        );
        registry.register(
            "emulated_requests",
            "Token requests through an emulated protocol (gce, azure, git), by credential, protocol and outcome (served or the error code)",
            self.emulated.clone(),
        );
    }

    pub(super) fn forget(&self, credential: &Label) {
        for result in ["ok", "error"] {
            self.sink_writes.remove(&SinkWrite {
                credential: credential.clone(),
                result,
            });
        }
    }
}

impl super::Metrics {
    /// The sink counters of one credential.
    pub fn sink(&self, credential: &str) -> SinkMetrics {
        let credential = Label(Arc::from(credential));
        let family = &self.delivery.sink_writes;
        let counter = |result| {
            let label = SinkWrite {
                credential: credential.clone(),
                result,
            };
            family.get_or_create(&label).clone()
        };
        SinkMetrics {
            ok: counter("ok"),
            failed: counter("error"),
        }
    }

    /// The counters of one proxy.
    pub fn proxy(&self, name: &str) -> ProxyMetrics {
        ProxyMetrics {
            name: Label(Arc::from(name)),
            delivery: self.delivery.clone(),
        }
    }

    /// Counts a token request that came through an emulated protocol; not on the
    /// `/token` path, so a label allocation per request costs nothing there.
    pub fn emulated(&self, credential: &str, protocol: &'static str, outcome: &'static str) {
        let label = Emulated {
            credential: Label(Arc::from(credential)),
            protocol,
            outcome,
        };
        self.delivery.emulated.get_or_create(&label).inc();
    }

    /// The gauge of open long polls and event streams.
    pub fn watchers(&self) -> Gauge {
        self.delivery.watchers.clone()
    }
}

/// A sink's counters.
#[derive(Clone)]
pub struct SinkMetrics {
    ok: Counter,
    failed: Counter,
}

impl SinkMetrics {
    /// A file written.
    pub fn written(&self) {
        self.ok.inc();
    }

    /// A write that failed.
    pub fn failed(&self) {
        self.failed.inc();
    }
}

/// A proxy's counters.
#[derive(Clone)]
pub struct ProxyMetrics {
    name: Label,
    delivery: Delivery,
}

impl ProxyMetrics {
    /// Counts an answered request: `forwarded`, `unauthorized` (a 401 passed on),
    /// `no_token`, `upstream_unreachable`, `upstream_timeout`, `refused`, `bad_request`.
    pub fn request(&self, outcome: &'static str) {
        let label = ProxyOutcome {
            proxy: self.name.clone(),
            outcome,
        };
        self.delivery.proxy_requests.get_or_create(&label).inc();
    }

    /// Counts what followed an upstream 401.
    pub fn retry(&self, result: &'static str) {
        let label = ProxyRetry {
            proxy: self.name.clone(),
            result,
        };
        self.delivery.proxy_retries.get_or_create(&label).inc();
    }
}
