//! The HTTP layer: routes, request guards, listeners.
//!
//! `router(app)` is the whole API as a value, so most tests call it with `oneshot` and no
//! socket; `serve(listeners, app, shutdown)` is the one seam `main` and the integration
//! tests share. Handlers parse and answer; the broker decides.

mod error;
mod listen;
mod ops;
mod token;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use error::ApiError;
pub use listen::{Listener, bind};

use crate::broker::Broker;

/// Largest request body accepted (a refresh report is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub broker: Arc<Broker>,
    /// Demand `Token-Broker: 1` on token endpoints.
    pub require_header: bool,
}

/// The whole API.
pub fn router(app: App) -> Router {
    let tokens = Router::new()
        .route("/token", get(token::get_default))
        .route("/token/refresh", post(token::refresh_default))
        .route("/token/{name}", get(token::get_named))
        .route("/token/{name}/refresh", post(token::refresh_named))
        .route_layer(middleware::from_fn_with_state(app.clone(), guard));
    Router::new()
        .merge(tokens)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/credentials", get(ops::credentials))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Token endpoints answer only local, deliberate requests (the metadata-server rule):
/// a forwarded request came through a proxy, and a request without the header may be
/// a forged one from a browser or an SSRF.
async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if headers.contains_key("forwarded") || headers.contains_key("x-forwarded-for") {
        return ApiError::ForwardedRequest.into_response();
    }
    if app.require_header
        && headers
            .get("token-broker")
            .is_none_or(|v| v.as_bytes() != b"1")
    {
        return ApiError::MissingHeader.into_response();
    }
    next.run(request).await
}

/// Serves `app` on every listener until `shutdown` resolves.
pub async fn serve(
    listeners: Vec<Listener>,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(app);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let router = router.clone();
        let stop = stop.clone();
        tasks.spawn(async move { listener.serve(router, stop.cancelled_owned()).await });
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
