//! `token-broker run`: open the store, bind the listeners, start the broker, serve, and
//! drain gracefully on SIGTERM. `dev` reuses this with an embedded config.

use std::sync::{Arc, Weak};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::broker::{Broker, STATES};
use crate::config::{self, Config, Listen};

/// How often a watched config file is compared with what was loaded.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
use crate::metrics::{Metrics, StateSource};
use crate::server::{self, App, Listener};
use crate::store::{RedisStore, Store};

/// TCP listeners bound from the head of a config file before the rest is parsed and
/// checked, with the addresses they were bound for.
pub struct EarlyListeners(Vec<Listen>, Vec<Listener>);

/// Binds the TCP addresses the head of a config file names (`Source::head`) before the
/// rest is parsed and checked: with thousands of credentials that takes a while, and a
/// sidecar's port should accept connections at once (they wait in the backlog until the
/// server runs). `None` when the head names no listen address, a unix socket or
/// something odd, or a bind fails: `bind_config` then binds (and reports) after the
/// check, as usual.
pub async fn bind_early(source: &config::Source) -> Option<EarlyListeners> {
    let addresses = config::listen_hint(&source.head()?)?;
    let mut listeners = Vec::new();
    for listen in &addresses {
        if !matches!(listen, Listen::Tcp(_)) {
            return None;
        }
        listeners.push(server::bind(listen, 0o600).await.ok()?);
    }
    Some(EarlyListeners(addresses, listeners))
}

/// The listeners for a checked config: the early ones if they were bound for exactly
/// these addresses, otherwise freshly bound.
pub async fn bind_config(
    config: &Config,
    early: Option<EarlyListeners>,
) -> anyhow::Result<Vec<Listener>> {
    match early {
        Some(EarlyListeners(addresses, listeners)) if addresses == config.server.listen => {
            Ok(listeners)
        }
        other => {
            // Close the early ones first: the config may name the same port differently.
            drop(other);
            bind_all(config).await
        }
    }
}

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

/// `server.max_connections`, or the default for the descriptor limit; logged, with a
/// warning when a configured cap leaves less than the reserve.
fn max_connections(config: &Config) -> usize {
    let nofile = crate::limits::nofile();
    let idp = config.idp.max_concurrent;
    let cap = config
        .server
        .max_connections
        .unwrap_or_else(|| crate::limits::default_max_connections(nofile, idp));
    let reserve = crate::limits::reserve(idp);
    if let Some(limit) = nofile
        && (cap as u64).saturating_add(reserve) > limit
        && config.server.max_connections.is_some()
    {
        warn!(
            max_connections = cap,
            descriptor_limit = limit,
            reserve,
            "server.max_connections leaves fewer descriptors than the reserve for state writes and IdP calls"
        );
    }
    info!(
        max_connections = cap,
        descriptor_limit = nofile,
        "connection cap"
    );
    cap
}

/// Binds `server.ops_listen`.
async fn bind_ops(config: &Config) -> anyhow::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for listen in &config.server.ops_listen {
        let listener = server::bind(listen, config.server.socket_mode)
            .await
            .with_context(|| format!("server.ops_listen: cannot listen on {listen}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Runs the broker until `terminate` resolves (`main` passes SIGTERM/SIGINT, tests
/// their own trigger), then drains within the configured grace. With a config file,
/// SIGHUP (and, with `server.watch_config`, a change of the file) reloads its
/// credentials.
pub async fn run(
    config: Config,
    listeners: Vec<Listener>,
    path: Option<PathBuf>,
    terminate: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let store = Store::open(&config.state)
        .await
        .map_err(anyhow::Error::msg)?;
    let shared_store = store.shared().cloned();
    let shutdown = CancellationToken::new();
    let broker = Arc::new(
        Broker::new(&config, store, Metrics::new(STATES), shutdown.clone())
            .map_err(anyhow::Error::msg)?,
    );
    let ops = bind_ops(&config).await?;
    let bound_proxies = crate::proxy::bind(&config).await?;
    let states: Weak<dyn StateSource> = Arc::downgrade(&broker) as Weak<Broker>;
    broker.metrics().set_state_source(states);
    broker.start();
    broker.watch_store();
    crate::sink::start(&broker);
    let addresses: Vec<String> = listeners.iter().map(Listener::describe).collect();
    let ops_addresses: Vec<String> = ops.iter().map(Listener::describe).collect();
    info!(listen = %addresses.join(","), ops_listen = %ops_addresses.join(","), credentials = config.credentials.len(), "token-broker serving");
    // The broker holds each credential's settings; keeping a second copy of thousands
    // of them here would only cost memory.
    let mut config = config;
    config.credentials = Vec::new();
    let app = App {
        broker: broker.clone(),
        require_header: config.server.require_header,
        request_deadline: config.server.request_timeout + std::time::Duration::from_secs(5),
        header_timeout: config.server.header_timeout,
        allowed_hosts: App::hosts(&config.server, &listeners),
        watchers: server::Watchers::new(config.server.max_watchers, broker.metrics().watchers()),
        emulate: Arc::new(config.emulate.clone()),
        admins: Arc::new(server::Admins {
            uids: config.server.admin_uids.clone(),
            keys: crate::secret::KeyRing::load_as("server.admin_keys", &config.server.admin_keys)
                .map_err(anyhow::Error::msg)?,
        }),
    };
    let connections = server::Connections::new(max_connections(&config));
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listeners,
        ops,
        app,
        crate::emulate::router(&config.emulate),
        connections.clone(),
        stop.clone().cancelled_owned(),
    ));
    let mut proxy_tasks =
        crate::proxy::start(bound_proxies, &broker, &config, &connections, stop.clone())?;
    if let Some(path) = path {
        tokio::spawn(reloader(broker.clone(), path, config.clone()));
    }
    if let Err(why) = stopped(shared_store.as_deref(), terminate).await {
        error!(error = %why, "this broker cannot use the shared store; stopping");
        stop.cancel();
        return Err(anyhow::Error::msg(why));
    }
    let grace = config.server.shutdown_grace;
    info!(grace = %crate::duration::format(grace), "shutting down: no new connections, finishing refreshes in flight");
    stop.cancel();
    let drained = tokio::time::timeout(grace, async {
        broker.drain(grace).await;
        let _ = server.await;
        while proxy_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("shutdown grace elapsed; exiting with work still open");
    }
    Ok(())
}

/// Waits for `terminate` (`Ok`), or for the shared store to find that this
/// broker's encryption key does not fit the fleet's (`Err`): Redis lost the key check
/// and a broker with another key stored its own, or this broker started while Redis was
/// down. Such a broker must not run.
async fn stopped(
    redis: Option<&RedisStore>,
    terminate: impl Future<Output = ()>,
) -> Result<(), String> {
    let wrong_key = async {
        match redis {
            Some(redis) => redis.wrong_key().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = terminate => Ok(()),
        why = wrong_key => Err(why),
    }
}

/// Reloads on SIGHUP, and on file changes when `server.watch_config` is set. A config
/// that does not validate is logged and ignored; the running one stays. `running`'s
/// sections other than `[credentials]` are what a restart would change.
async fn reloader(broker: Arc<Broker>, path: PathBuf, running: Config) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; reload is off");
        return;
    };
    // A digest, not the text: the file may hold thousands of credentials.
    let digest = |path: &PathBuf| std::fs::read(path).ok().map(Sha256::digest);
    let mut seen = digest(&path);
    let mut poll = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = hangups.recv() => info!(config = %path.display(), "SIGHUP: reloading"),
            _ = poll.tick(), if running.server.watch_config => {
                let now = digest(&path);
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
            || config.proxies != running.proxies
            || config.emulate != running.emulate
        {
            warn!(
                "[server], [state], [idp], [proxies] and [emulate] changes take effect at the next restart"
            );
        }
        if let Err(e) = broker.reload(&config).await {
            error!(error = %e, "reload failed; keeping the running credentials");
        }
    }
}
