//! The broker's half of `token-broker git-credential`: git asks its credential helper
//! for a host, the helper asks here, and the answer is the host's credential's token
//! as the password (with `emulate.git.username`). An `erase` of the current token is
//! git saying the server refused it: a rejected-token report, so one refresh follows
//! however many clones failed with it.
//!
//! These are the broker's own endpoints, called only by its own helper, so they keep
//! `/token`'s rules and error shape: `Token-Broker: 1`, no forwarded requests, JSON
//! errors, and the client key of `TOKEN_BROKER_KEY` when the helper has one.

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Refused, token};
use crate::broker::Want;
use crate::server::{ApiError, App, Peer, check_local};

/// What git says about the remote (the attributes the helper passes on).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    protocol: Option<String>,
    host: Option<String>,
    /// `erase` only: the token git used and the server refused.
    #[serde(default)]
    password: Option<String>,
}

/// `GET /git/credential?protocol=https&host=HOST`: `{"username", "password"}`.
pub async fn get(
    State(app): State<App>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    query: Result<Query<Remote>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let remote = match query {
        Ok(Query(remote)) => remote,
        Err(e) => return ApiError::bad_request(format!("bad query string: {e}")).into_response(),
    };
    let peer = peer.map(|Extension(p)| p);
    let credential = match credential_for(&app, &headers, &remote) {
        Ok(name) => name,
        Err(refused) => return refused.into_response(),
    };
    let want = Want::Fresh(Duration::ZERO);
    let Some(git) = app.emulate.git.as_ref() else {
        return ApiError::NotFound.into_response();
    };
    match token(
        &app,
        "git",
        &credential,
        peer.as_ref(),
        client_key(&headers),
        want,
    )
    .await
    {
        Ok(token) => {
            let body = json!({ "username": git.username, "password": token.secret() });
            let mut response = axum::Json(body).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(refused) => refusal(refused, &credential),
    }
}

/// `POST /git/credential/erase` with `{"protocol", "host", "password"}`: reports the
/// password as a rejected token; 204 once any refresh it started is done.
pub async fn erase(
    State(app): State<App>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let remote: Remote = match serde_json::from_slice(&body) {
        Ok(remote) => remote,
        Err(e) => {
            return ApiError::bad_request(format!(
                "bad JSON body ({e}); send {{\"protocol\", \"host\", \"password\"}}"
            ))
            .into_response();
        }
    };
    let Some(password) = remote.password.clone().filter(|p| !p.trim().is_empty()) else {
        return ApiError::bad_request("password is required").into_response();
    };
    let credential = match credential_for(&app, &headers, &remote) {
        Ok(name) => name,
        Err(refused) => return refused.into_response(),
    };
    let peer = peer.map(|Extension(p)| p);
    let key = client_key(&headers);
    match token(
        &app,
        "git",
        &credential,
        peer.as_ref(),
        key,
        Want::Rejected(password),
    )
    .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(refused) => refusal(refused, &credential),
    }
}

/// The guards, then the host's credential: 404 `unknown_host` when none is configured
/// (the helper then answers git nothing, so git asks its next helper).
fn credential_for(app: &App, headers: &HeaderMap, remote: &Remote) -> Result<String, ApiError> {
    check_local(app, headers)?;
    let git = app.emulate.git.as_ref().ok_or(ApiError::NotFound)?;
    let host = remote
        .host
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(ApiError::bad_request("host is required"));
    }
    let Some(credential) = git.hosts.get(&host) else {
        return Err(ApiError::UnknownGitHost(host));
    };
    match remote.protocol.as_deref() {
        Some("https") => {}
        Some("http") if loopback(&host) => {}
        other => {
            let message = format!(
                "protocol `{}`: a token is sent over https only (plain http only to a loopback host)",
                other.unwrap_or_default()
            );
            return Err(ApiError::bad_request(message));
        }
    }
    Ok(credential.clone())
}

/// Whether git's `host` names this machine; a malformed one does not.
fn loopback(host: &str) -> bool {
    crate::server::host_name(host).is_some_and(|name| {
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn client_key(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get("token-broker-key").map(|v| v.as_bytes())
}

fn refusal(refused: Refused, credential: &str) -> Response {
    match refused {
        Refused::Forbidden => ApiError::Forbidden(credential.to_owned()).into_response(),
        Refused::Broker(error) => ApiError::about(error, credential).into_response(),
    }
}
