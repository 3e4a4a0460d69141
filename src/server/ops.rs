//! Endpoints for operators and orchestrators: health, readiness, metrics, status.
//! None of them needs the `Token-Broker` header, and none shows a token.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::App;
use crate::broker::STATES;

/// `GET /healthz`: the process serves.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: every required credential can serve a token now. Credentials that
/// serve but are in trouble (refresh failing, refresh token refused) are listed too, so
/// an operator sees them before their tokens expire.
pub async fn readyz(State(app): State<App>) -> Response {
    let statuses: Vec<_> = app
        .broker
        .credentials()
        .iter()
        .map(|c| c.status())
        .collect();
    let row = |s: &crate::broker::CredentialStatus| {
        let reason = s
            .last_error
            .as_ref()
            .map_or_else(|| "no token yet".to_owned(), |e| e.message.clone());
        json!({"name": s.name, "state": s.state, "reason": reason})
    };
    let not_ready: Vec<_> = statuses
        .iter()
        .filter(|s| s.required && !s.ready)
        .map(row)
        .collect();
    let degraded: Vec<_> = statuses
        .iter()
        .filter(|s| s.ready && matches!(s.state, "stale" | "reauth_required"))
        .map(row)
        .collect();
    if not_ready.is_empty() {
        Json(json!({"status": "ready", "degraded": degraded})).into_response()
    } else {
        let body = json!({"status": "not_ready", "credentials": not_ready, "degraded": degraded});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `GET /v1/credentials`: status of every credential.
pub async fn credentials(State(app): State<App>) -> Response {
    let all: Vec<_> = app
        .broker
        .credentials()
        .iter()
        .map(|c| c.status())
        .collect();
    let mut response = Json(json!({ "credentials": all })).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(app): State<App>) -> Response {
    let metrics = app.broker.metrics();
    for credential in app.broker.credentials() {
        metrics.set_state(credential.name(), credential.state(), STATES);
    }
    let mut response = metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
