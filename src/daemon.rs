//! `token-broker run`: open the store, bind the listeners, start the broker, serve, and
//! drain gracefully on SIGTERM. `dev` reuses this with an embedded config.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{self, App, Listener};
use crate::store::Store;

/// Binds every configured listener (so a busy port fails start-up, loudly).
pub async fn bind_all(config: &Config) -> anyhow::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for listen in &config.server.listen {
        let listener = server::bind(listen, config.server.socket_mode)
            .await
            .with_context(|| format!("server.listen: cannot listen on {listen}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Runs the broker until SIGTERM/SIGINT, then drains within the configured grace.
pub async fn run(config: Config, listeners: Vec<Listener>) -> anyhow::Result<()> {
    let store = Store::open(&config.state.dir).map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    let broker = Arc::new(
        Broker::new(&config, store, Metrics::new(), shutdown.clone())
            .map_err(anyhow::Error::msg)?,
    );
    broker.start();
    let addresses: Vec<String> = listeners.iter().map(Listener::describe).collect();
    info!(listen = %addresses.join(","), credentials = config.credentials.len(), "token-broker serving");
    let app = App {
        broker: broker.clone(),
        require_header: config.server.require_header,
        request_deadline: config.server.request_timeout + std::time::Duration::from_secs(5),
        header_timeout: config.server.header_timeout,
        allowed_hosts: App::hosts(&config.server, &listeners),
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listeners,
        app,
        stop.clone().cancelled_owned(),
    ));
    crate::signal::terminated().await;
    let grace = config.server.shutdown_grace;
    info!(grace = %crate::duration::format(grace), "shutting down: no new connections, finishing refreshes in flight");
    stop.cancel();
    let drained = tokio::time::timeout(grace, async {
        broker.drain(grace).await;
        let _ = server.await;
    })
    .await;
    if drained.is_err() {
        warn!("shutdown grace elapsed; exiting with work still open");
    }
    Ok(())
}
