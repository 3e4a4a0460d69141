//! Metrics of the ways tokens leave the broker besides `GET /token`: watchers (long
//! polls and event streams).

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The families, registered once.
#[derive(Clone, Default)]
pub(super) struct Delivery {
    watchers: Gauge,
}

impl Delivery {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "watchers",
            "Long polls and event streams open now",
            self.watchers.clone(),
        );
    }
}

impl super::Metrics {
    /// The gauge of open long polls and event streams.
    pub fn watchers(&self) -> Gauge {
        self.delivery.watchers.clone()
    }
}
