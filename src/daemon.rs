//! `token-broker run`: open the store, bind the listeners, start the broker, serve, and
//! drain gracefully on SIGTERM. `dev` reuses this with an embedded config.

use std::sync::Arc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::broker::Broker;
use crate::config::{self, Config};

/// How often a watched config file is compared with what was loaded.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
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
/// With a config file, SIGHUP (and, with `server.watch_config`, a change of the file)
/// reloads its credentials.
pub async fn run(
    config: Config,
    listeners: Vec<Listener>,
    path: Option<PathBuf>,
) -> anyhow::Result<()> {
    let store = Store::open(&config.state)
        .await
        .map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    let broker = Arc::new(
        Broker::new(&config, store, Metrics::new(), shutdown.clone())
            .map_err(anyhow::Error::msg)?,
    );
    broker.start();
    broker.watch_store();
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
    if let Some(path) = path {
        tokio::spawn(reloader(broker.clone(), path, config.clone()));
    }
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

/// Reloads on SIGHUP, and on file changes when `server.watch_config` is set. A config
/// that does not validate is logged and ignored; the running one stays.
async fn reloader(broker: Arc<Broker>, path: PathBuf, mut running: Config) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; reload is off");
        return;
    };
    let mut seen = std::fs::read(&path).ok();
    let mut poll = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = hangups.recv() => info!(config = %path.display(), "SIGHUP: reloading"),
            _ = poll.tick(), if running.server.watch_config => {
                let now = std::fs::read(&path).ok();
                if now == seen {
                    continue;
                }
                seen = now;
                info!(config = %path.display(), "config file changed: reloading");
            }
        }
        let config = match config::load(&path) {
            Ok(config) => config,
            Err(problems) => {
                error!(config = %path.display(), problems = %problems, "the new config is invalid; keeping the running one");
                continue;
            }
        };
        if config.server != running.server
            || config.state != running.state
            || config.idp != running.idp
        {
            warn!("[server], [state] and [idp] changes take effect at the next restart");
        }
        match broker.reload(&config).await {
            Ok(_) => running.credentials = config.credentials,
            Err(e) => error!(error = %e, "reload failed; keeping the running credentials"),
        }
    }
}
