//! Endpoints for operators and orchestrators: health, readiness, metrics, status, served
//! by the API and, alone, by the ops port. None of them needs the `Token-Broker` header,
//! and none shows a token.

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::get;
use axum::{Json, Router, middleware};
use tower::Service;

use super::listen::{Handler, Peer};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::{App, guard};

/// The ops port's routes (`server.ops_listen`): health, readiness, metrics and status,
/// with the API's deadline, JSON errors and panic guard, and no token route at all, so
/// nothing sent there can reach one. No `Host` check: nothing here is secret, and
/// probes and scrapers name the pod's IP.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/credentials", get(credentials))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(super::MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), guard::deadline))
        .layer(middleware::from_fn(guard::json_errors))
        .layer(middleware::from_fn(guard::catch_panic))
        .with_state(app)
}

/// The ops port as a connection handler.
#[derive(Clone)]
pub struct Ops(pub Router);

impl Handler for Ops {
    async fn call(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
        _peer: &Peer,
    ) -> axum::response::Response {
        let request = request.map(axum::body::Body::new);
        // The router's error type is `Infallible`.
        match self.0.clone().call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// `GET /healthz`: the process serves.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: every required credential can serve a token now. Credentials that
/// serve but are in trouble (refresh failing, refresh token refused) are listed too, so
/// an operator sees them before their tokens expire.
pub async fn readyz(State(app): State<App>) -> Response {
    let mut not_ready = Vec::new();
    let mut degraded = Vec::new();
    for credential in app.broker.credentials() {
        let readiness = credential.readiness();
        let Some(reason) = readiness.reason else {
            continue;
        };
        let row = Row {
            name: credential.name().to_owned(),
            state: readiness.state,
            reason,
        };
        match (readiness.ready, credential.spec.required) {
            (true, _) => degraded.push(row),
            (false, true) => not_ready.push(row),
            (false, false) => {}
        }
    }
    let ready = not_ready.is_empty();
    let body = Readyz {
        status: if ready { "ready" } else { "not_ready" },
        credentials: (!ready).then_some(not_ready),
        degraded,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The `/readyz` body, serialized straight from these rows.
#[derive(Serialize)]
struct Readyz {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials: Option<Vec<Row>>,
    degraded: Vec<Row>,
}

/// One credential in `/readyz`.
#[derive(Serialize)]
struct Row {
    name: String,
    state: &'static str,
    reason: String,
}

/// `GET /v1/credentials`: status of every credential.
pub async fn credentials(State(app): State<App>) -> Response {
    let all: Vec<_> = app
        .broker
        .credentials()
        .iter()
        .map(|c| c.status())
        .collect();
    super::json_no_store(StatusCode::OK, json!({ "credentials": all }))
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(app): State<App>) -> Response {
    let metrics = app.broker.metrics();
    let mut response = metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
