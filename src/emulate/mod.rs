//! Zero-code adoption: the local token protocols that SDKs and tools already speak,
//! answered with the broker's credentials, so an app adopts the broker by setting an
//! environment variable instead of changing code.
//!
//! Layout: `gce` (the GCE metadata server, for Google SDKs), `azure` (managed
//! identity as App Service serves it, for Azure SDKs), `git` (the broker's half of
//! `token-broker git-credential`). The kubectl credential plugin needs no server
//! side: it is `token-broker get --format exec-credential` (see `client`).
//!
//! Boundaries: every emulated answer goes through the broker's one gate
//! (`Credential::get`) after its access check (`Credential::allows`), so emulated
//! clients share the single flight, the refresh timer and the access rules. These
//! routes sit beside the router's own, outside its JSON error layer (each protocol
//! answers errors the way its SDKs expect) and away from the `/token` fast path.

mod azure;
mod gce;
mod git;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};

use crate::broker::{Credential, Token, Want};
use crate::config::EmulateConfig;
use crate::error::Error;
use crate::server::{App, Peer};

/// The routes of every configured protocol (`None` when `[emulate]` configures none);
/// the handlers read their settings from `App::emulate`.
pub fn router(config: &EmulateConfig) -> Option<Router<App>> {
    if !config.any() {
        return None;
    }
    let mut router = Router::new();
    if config.gce.is_some() {
        router = router
            .route("/", get(gce::answer))
            .route("/computeMetadata/v1", get(gce::answer))
            .route("/computeMetadata/v1/", get(gce::answer))
            .route("/computeMetadata/v1/{*path}", get(gce::answer));
    }
    if config.azure.is_some() {
        router = router.route("/msi/token", get(azure::answer));
    }
    if config.git.is_some() {
        router = router
            .route("/git/credential", get(git::get))
            .route("/git/credential/erase", post(git::erase));
    }
    Some(router)
}

/// Why an emulated request got no token.
enum Refused {
    /// The credential's access rules do not admit this client.
    Forbidden,
    /// The broker's answer (no token and why), as `/token` would have said it.
    Broker(Error),
}

/// The named credential's token for this client: the access check, then the gate.
/// `key` is a client key, for the protocols that can carry one; `protocol` labels the
/// count in `token_broker_emulated_requests_total`.
async fn token(
    app: &App,
    protocol: &'static str,
    name: &str,
    peer: Option<&Peer>,
    key: Option<&[u8]>,
    want: Want,
) -> Result<Arc<Token>, Refused> {
    let credential = app.broker.credential(name).map_err(Refused::Broker)?;
    let metrics = app.broker.metrics();
    if !admitted(&credential, peer, key) {
        credential.count_failed("forbidden");
        metrics.emulated(name, protocol, "forbidden");
        return Err(Refused::Forbidden);
    }
    match credential.get(want).await {
        Ok(token) => {
            credential.count_served();
            metrics.emulated(name, protocol, "served");
            Ok(token)
        }
        Err(error) => {
            let code = crate::server::ApiError::about(error.clone(), name).code();
            credential.count_failed(code);
            metrics.emulated(name, protocol, code);
            Err(Refused::Broker(error))
        }
    }
}

fn admitted(credential: &Credential, peer: Option<&Peer>, key: Option<&[u8]>) -> bool {
    let unix = match peer {
        Some(Peer::Unix { uid, gid }) => Some((*uid, *gid)),
        _ => None,
    };
    let admitted = credential.allows(unix, key);
    if !admitted {
        tracing::warn!(
            credential = credential.name(),
            ?peer,
            key_sent = key.is_some(),
            "client refused"
        );
    }
    admitted
}

/// Forwarded requests came through a proxy: refused, as on `/token`.
/// The status an emulated server answers a broker error with (the protocols know only
/// plain HTTP statuses), and its `Retry-After` where one applies.
fn broker_status(error: &Error) -> (StatusCode, Option<HeaderValue>) {
    let status = match error {
        Error::UnknownCredential(_) => StatusCode::NOT_FOUND,
        Error::BadRequest(_) | Error::NoDefaultCredential { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let retry_after = error
        .retry_after()
        .map(|after| HeaderValue::from(after.as_secs_f64().ceil().max(1.0) as u64));
    (status, retry_after)
}

/// `response` with the `Retry-After` of `broker_status`, if any.
fn with_retry_after(mut response: Response, retry_after: Option<HeaderValue>) -> Response {
    if let Some(after) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, after);
    }
    response
}

fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key("forwarded") || headers.contains_key("x-forwarded-for")
}
