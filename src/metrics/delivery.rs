//! Metrics of the ways tokens leave the broker besides `GET /token`: file sinks and
//! watchers (long polls and event streams).

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

/// The families, registered once.
#[derive(Clone, Default)]
pub(super) struct Delivery {
    sink_writes: Family<SinkWrite, Counter>,
    watchers: Gauge,
}

impl Delivery {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "sink_writes",
            "Token files written by sinks, by credential and result (ok, error)",
            self.sink_writes.clone(),
        );
        registry.register(
            "watchers",
            "Long polls and event streams open now",
            self.watchers.clone(),
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
    pub fn written(&self) {
        self.ok.inc();
    }

    pub fn failed(&self) {
        self.failed.inc();
    }
}
