//! The HTTP layer: routes, request guards, listeners, and the watchers (conditional reads,
//! long polls, event streams).
//!
//! `Api::new(app, beside)` is the whole API as a value (token reads answered directly,
//! everything else by `router(app, beside)`), so tests can call it without a socket;
//! `serve(listeners, ops, app, beside, ...)` is the one seam `main` and the integration
//! tests share. Handlers parse and answer; the broker decides. `beside` is the routes of
//! the emulated SDK protocols (`emulate`), handed in by the daemon: they use this module,
//! so this module does not use them.

mod api;
mod connections;
mod error;
mod guard;
mod listen;
mod login;
mod ops;
mod parse_errors;
mod proof;
mod token;
mod unix_socket;
mod watch;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

pub use api::Api;
pub use connections::Connections;
pub use error::{ApiError, ProxyFailure};
pub use guard::{check_local, host_allowed, host_name};
pub use listen::{Handler, Listener, Peer, bind};
pub use login::Admins;
pub use watch::Watchers;

use crate::broker::Broker;

/// Largest request body accepted (a refresh report is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub broker: Arc<Broker>,
    /// Demand `Token-Broker: 1` on token endpoints.
    pub require_header: bool,
    /// Longest any request may take, body included (slow clients cannot pin a task).
    pub request_deadline: Duration,
    /// Time a client has to send request headers (and longest idle keep-alive).
    pub header_timeout: Duration,
    /// Names a request may carry in `Host`.
    pub allowed_hosts: Arc<HashSet<String>>,
    /// Long polls and event streams open now, and their cap.
    pub watchers: Arc<Watchers>,
    /// The SDK protocols answered besides the broker's own API (`[emulate]`).
    pub emulate: Arc<crate::config::EmulateConfig>,
    /// Who may use the admin endpoints (a login).
    pub admins: Arc<Admins>,
}

impl App {
    /// The allowed `Host` names: loopback, the listen addresses, and configured names.
    pub fn hosts(
        config: &crate::config::ServerConfig,
        listeners: &[Listener],
    ) -> Arc<HashSet<String>> {
        let mut hosts: HashSet<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
        hosts.extend(config.allowed_hosts.iter().cloned());
        for addr in listeners.iter().filter_map(Listener::local_addr) {
            if !addr.ip().is_unspecified() {
                hosts.insert(addr.ip().to_string());
            }
        }
        Arc::new(hosts)
    }
}

/// The whole API: its own routes, and `beside` (the emulated protocols) next to them.
pub fn router(app: App, beside: Option<Router<App>>) -> Router {
    let tokens = Router::new()
        .route("/token", get(token::get_default))
        .route("/token/refresh", post(token::refresh_default))
        .route("/token/{name}", get(token::get_named))
        .route("/token/{name}/refresh", post(token::refresh_named))
        .route("/token/{name}/proof", post(proof::proof_named))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            guard::local_only,
        ));
    let private = Router::new()
        .merge(tokens)
        .route("/v1/credentials", get(ops::credentials))
        .route("/v1/credentials/{name}/login", post(login::login))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            guard::known_host,
        ));
    let own = Router::new()
        .merge(private)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), guard::deadline))
        .layer(middleware::from_fn(guard::json_errors))
        .layer(middleware::from_fn(guard::catch_panic));
    // Emulated protocols answer errors their own way, so they skip `json_errors`.
    let all = match beside {
        None => own,
        Some(emulated) => own.merge(
            emulated
                .route_layer(middleware::from_fn_with_state(
                    app.clone(),
                    guard::known_host,
                ))
                .layer(DefaultBodyLimit::max(MAX_BODY))
                .layer(middleware::from_fn_with_state(app.clone(), guard::deadline))
                .layer(middleware::from_fn(guard::catch_panic)),
        ),
    };
    all.with_state(app)
}

/// Serves `app` on every listener, and its ops routes alone on every `ops` listener,
/// until `shutdown` resolves, then lets open requests finish.
pub async fn serve(
    listeners: Vec<Listener>,
    ops: Vec<Listener>,
    app: App,
    beside: Option<Router<App>>,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = app.header_timeout;
    let ops_handler = ops::Ops(ops::router(app.clone()));
    let api = Api::new(app, beside);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let connections = connections.clone();
        tasks.spawn(listener.serve(api.clone(), header_timeout, connections, 1, stop.clone()));
    }
    for listener in ops {
        let (handler, connections) = (ops_handler.clone(), connections.clone());
        tasks.spawn(listener.serve(handler, header_timeout, connections, 1, stop.clone()));
    }
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            result = Err(e);
        }
    }
    result
}

/// A JSON answer that no cache may keep (it names tokens or credential states).
pub(crate) fn json_no_store(
    status: axum::http::StatusCode,
    body: serde_json::Value,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let no_store = [(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    )];
    (status, no_store, axum::Json(body)).into_response()
}
