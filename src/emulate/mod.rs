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
use axum::http::HeaderMap;
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
fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key("forwarded") || headers.contains_key("x-forwarded-for")
}
