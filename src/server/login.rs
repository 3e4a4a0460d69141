//! `POST /v1/credentials/{name}/login`: a login hands the broker a new chain (the IdP's
//! token response as received). An admin action, because whoever may log in can put
//! their own identity behind the credential: allowed only to a unix-socket peer whose
//! uid is in `server.admin_uids`, or with a key of `server.admin_keys`; never to a
//! forwarded request, and (like every private route) never for a foreign `Host`.
//! Parsing and answering only: adopting the chain is the broker's.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::warn;

use super::error::ApiError;
use super::listen::Peer;
use super::token::{NamePath, PeerInfo};
use super::{App, guard};
use crate::broker::login::Login;
use crate::secret::KeyRing;

/// Who may use the admin endpoints.
pub struct Admins {
    /// Unix-socket peers allowed by uid.
    pub uids: Vec<u32>,
    /// Admin keys (`server.admin_keys`), kept current with their files.
    pub keys: KeyRing,
}

impl Admins {
    /// Whether `peer`, sending `key`, is an admin.
    fn admits(&self, peer: Option<&Peer>, key: Option<&HeaderValue>) -> bool {
        let by_uid = matches!(peer, Some(Peer::Unix { uid, .. }) if self.uids.contains(uid));
        let by_key = key.is_some_and(|k| self.keys.admits(k.as_bytes()));
        by_uid || by_key
    }
}

const NOT_ADMIN: &str = "a login is an admin action: send it over a unix socket listener \
    (server.listen = \"unix:/path\") as a user whose uid is in server.admin_uids (default: the \
    broker's own), or with a key of server.admin_keys in Token-Broker-Key";

/// `POST /v1/credentials/{name}/login`.
pub async fn login(
    State(app): State<App>,
    path: NamePath,
    peer: PeerInfo,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer.map(|axum::Extension(p)| p);
    if let Err(refused) = guard::check_local(&app, &headers) {
        return refused.into_response();
    }
    if !app
        .admins
        .admits(peer.as_ref(), headers.get("token-broker-key"))
    {
        warn!("refused a login from a client that is not an admin");
        return ApiError::NotAdmin(NOT_ADMIN).into_response();
    }
    let Ok(Path(name)) = path else {
        return ApiError::bad_request("the credential name in the path is not valid")
            .into_response();
    };
    let credential = match app.broker.credential(&name) {
        Ok(credential) => credential,
        Err(error) => return ApiError::about(error, &name).into_response(),
    };
    let response = match crate::broker::login::parse(&body) {
        Ok(response) => response,
        Err(why) => {
            return ApiError::about(crate::error::Error::BadRequest(why), &name).into_response();
        }
    };
    let (status, answer) = match credential.login(response).await {
        Ok(Login::Served(token)) => (
            StatusCode::OK,
            json!({
                "credential": name,
                "state": credential.state(),
                "expires_in": token.ttl(std::time::SystemTime::now()).as_secs(),
            }),
        ),
        // Not an error answer: the chain was taken, and handing the same login in again
        // would send a refresh token that may be spent.
        Ok(Login::Adopted(error)) => (
            StatusCode::ACCEPTED,
            json!({
                "credential": name,
                "state": credential.state(),
                "refresh_error": format!(
                    "the new chain is stored and is the credential's, but its first refresh \
                     failed ({error}); the broker retries it like any failed refresh, so do \
                     not hand this login in again"
                ),
            }),
        ),
        Err(error) => return ApiError::about(error, &name).into_response(),
    };
    super::json_no_store(status, answer)
}
