//! Admin endpoints that tests use to steer the IdP: faults, latency, revocation,
//! forgetting access tokens, minting new credentials and resetting the counters.
//!
//! They are unauthenticated by design (the IdP is for loopback use in development and
//! tests only) and answer JSON. Bodies are parsed strictly so a typo in a test fails
//! with a 400 instead of silently doing nothing.

use super::DevIdp;
use super::faults;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// The admin routes, merged into the main router.
pub fn routes() -> Router<DevIdp> {
    Router::new()
        .route("/admin/faults", post(set_faults))
        .route("/admin/latency", post(set_latency))
        .route("/admin/revoke", post(revoke))
        .route("/admin/forget-access-tokens", post(forget_access_tokens))
        .route("/admin/refresh-tokens", post(mint_refresh_token))
        .route("/admin/stats/reset", post(reset_stats))
}

fn bad_request(description: &str) -> Response {
    let body = json!({"error": "invalid_request", "error_description": description});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// `POST /admin/faults`: arms a fault for the next token requests (or clears it with
/// `count: 0`) and answers with what is now armed.
async fn set_faults(State(idp): State<DevIdp>, body: Bytes) -> Response {
    match faults::parse_request(&body) {
        Ok(pending) => {
            let described = idp.with_state(|state| {
                state.set_fault(pending);
                faults::describe(state.fault())
            });
            tracing::info!(fault = %described, "dev-idp fault armed");
            axum::Json(described).into_response()
        }
        Err(message) => bad_request(&message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyRequest {
    #[serde(default, deserialize_with = "crate::duration::serde_opt::deserialize")]
    latency: Option<Duration>,
}

/// `POST /admin/latency`: changes the delay of later token requests; requests already
/// sleeping keep the delay they started with.
async fn set_latency(State(idp): State<DevIdp>, body: Bytes) -> Response {
    let latency = match serde_json::from_slice::<LatencyRequest>(&body) {
        Ok(LatencyRequest {
            latency: Some(latency),
        }) => latency,
        Ok(_) => return bad_request("latency is required, e.g. {\"latency\": \"100ms\"}"),
        Err(err) => return bad_request(&err.to_string()),
    };
    idp.with_state(|state| state.set_latency(latency));
    let latency = crate::duration::format(latency);
    tracing::info!(%latency, "dev-idp latency changed");
    axum::Json(json!({"latency": latency})).into_response()
}

/// `POST /admin/revoke`: revokes every family, killing their refresh and access tokens.
async fn revoke(State(idp): State<DevIdp>) -> Response {
    let revoked = idp.with_state(|state| state.revoke_all());
    tracing::info!(revoked, "dev-idp families revoked");
    axum::Json(json!({"revoked": revoked})).into_response()
}

/// `POST /admin/forget-access-tokens`: every access token issued so far gets 401 from
/// `/api/whoami`, while refresh tokens keep working, so a client sees a stale token it
/// can recover from with one refresh.
async fn forget_access_tokens(State(idp): State<DevIdp>) -> Response {
    let forgotten = idp.with_state(|state| state.forget_access_tokens());
    tracing::info!(forgotten, "dev-idp access tokens forgotten");
    axum::Json(json!({"forgotten": forgotten})).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    scope: Option<String>,
}

/// `POST /admin/refresh-tokens`: mints a new family, so a test can bootstrap a
/// credential again after revocation. The body is optional.
async fn mint_refresh_token(State(idp): State<DevIdp>, body: Bytes) -> Response {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        MintRequest::default()
    } else {
        match serde_json::from_slice::<MintRequest>(&body) {
            Ok(request) => request,
            Err(err) => return bad_request(&err.to_string()),
        }
    };
    let scope = request.scope.filter(|s| !s.trim().is_empty());
    let refresh_token = idp.with_state(|state| state.mint_family(scope, None));
    tracing::info!("dev-idp family minted");
    axum::Json(json!({"refresh_token": refresh_token})).into_response()
}

/// `POST /admin/stats/reset`: zeroes the counters and answers with the fresh snapshot.
async fn reset_stats(State(idp): State<DevIdp>) -> Response {
    let stats = idp.with_state(|state| {
        state.reset_stats();
        state.stats()
    });
    axum::Json(json!(stats)).into_response()
}
