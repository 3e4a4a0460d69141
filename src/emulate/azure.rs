//! Azure managed identity as App Service serves it (api-version 2019-08-01), which
//! every Azure SDK's `ManagedIdentityCredential` uses when `IDENTITY_ENDPOINT` and
//! `IDENTITY_HEADER` are set: `GET /msi/token?resource=...&api-version=2019-08-01`
//! with the secret in `X-IDENTITY-HEADER`, answered with
//! `{"access_token", "expires_on", "resource", "token_type"}`.
//!
//! The secret header is what keeps a forged browser request or an SSRF (which cannot
//! add it) from getting a token; it is compared in constant time. Errors are shaped
//! as App Service's, `{"statusCode", "message"}`, which the SDKs quote in theirs.
//! User-assigned identities (`client_id`, `mi_res_id`, `object_id`, `principal_id`)
//! are refused: the resource alone picks the credential.

use std::time::{Duration, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::{Refused, forwarded, token};
use crate::broker::Want;
use crate::config::{AzureSpec, azure_resource};
use crate::error::Error;
use crate::secret::{ExposeSecret, constant_time_eq};
use crate::server::{App, Peer};

/// The protocol version this emulates.
const API_VERSION: &str = "2019-08-01";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    resource: Option<String>,
    #[serde(rename = "api-version")]
    api_version: Option<String>,
    client_id: Option<String>,
    mi_res_id: Option<String>,
    object_id: Option<String>,
    principal_id: Option<String>,
}

/// `GET /msi/token`.
pub async fn answer(
    State(app): State<App>,
    peer: Option<Extension<Peer>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(azure) = app.emulate.azure.as_ref() else {
        return error(StatusCode::NOT_FOUND, "managed identity is not emulated");
    };
    if forwarded(&headers) {
        return error(
            StatusCode::FORBIDDEN,
            "forwarded requests (Forwarded or X-Forwarded-For) are refused: managed identity is for local clients",
        );
    }
    if let Err((status, message)) = check_secret(azure, &headers) {
        return error(status, message);
    }
    let query: Query = match serde_urlencoded::from_str(uri.query().unwrap_or_default()) {
        Ok(query) => query,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("bad query string: {e}; known parameters: resource, api-version"),
            );
        }
    };
    let (resource, credential) = match pick(azure, &query) {
        Ok(found) => found,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let peer = peer.map(|Extension(p)| p);
    match token(
        &app,
        "azure",
        credential,
        peer.as_ref(),
        None,
        Want::Fresh(Duration::ZERO),
    )
    .await
    {
        Ok(token) => {
            let expires_on = token
                .expires_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let token_type = match token.token_type.is_empty() {
                true => "Bearer",
                false => token.token_type.as_str(),
            };
            let body = json!({
                "access_token": token.secret(),
                "expires_on": expires_on.to_string(),
                "resource": resource,
                "token_type": token_type,
            });
            reply(StatusCode::OK, body.to_string())
        }
        Err(Refused::Forbidden) => error(
            StatusCode::FORBIDDEN,
            &format!(
                "this client may not fetch credential `{credential}` (managed identity carries no client key; allowed_uids and allowed_gids admit unix-socket clients)"
            ),
        ),
        Err(Refused::Broker(e)) => broker_error(&e),
    }
}

/// The secret header, compared in constant time with the configured one.
fn check_secret(azure: &AzureSpec, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let expected = azure.secret.read().map_err(|why| {
        tracing::error!(error = %why, "emulate.azure.secret cannot be read; managed identity answers 500");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the broker cannot read its identity header secret (emulate.azure.secret)",
        )
    })?;
    let sent = headers.get("x-identity-header").map(HeaderValue::as_bytes);
    match sent.is_some_and(|sent| constant_time_eq(expected.expose_secret().as_bytes(), sent)) {
        true => Ok(()),
        false => Err((
            StatusCode::UNAUTHORIZED,
            "the X-IDENTITY-HEADER header is missing or wrong (give apps IDENTITY_HEADER from emulate.azure.secret)",
        )),
    }
}

/// The resource as asked and its credential, or why the request names none (a 400).
fn pick<'a>(azure: &'a AzureSpec, query: &'a Query) -> Result<(&'a str, &'a str), String> {
    if query.api_version.as_deref() != Some(API_VERSION) {
        return Err(format!(
            "api-version `{}` is not supported; this endpoint speaks {API_VERSION}",
            query.api_version.as_deref().unwrap_or_default()
        ));
    }
    let user_assigned = [
        ("client_id", &query.client_id),
        ("mi_res_id", &query.mi_res_id),
        ("object_id", &query.object_id),
        ("principal_id", &query.principal_id),
    ];
    if let Some((name, _)) = user_assigned.iter().find(|(_, v)| v.is_some()) {
        return Err(format!(
            "{name}: user-assigned identities are not emulated; the resource alone picks the credential (emulate.azure.resources)"
        ));
    }
    let Some(resource) = query.resource.as_deref().filter(|r| !r.trim().is_empty()) else {
        return Err("resource is required".to_owned());
    };
    match azure.resources.get(&azure_resource(resource)) {
        Some(credential) => Ok((resource, credential)),
        None => {
            let known: Vec<&str> = azure.resources.keys().map(String::as_str).collect();
            Err(format!(
                "no credential serves resource `{resource}`; this broker serves: {}",
                known.join(", ")
            ))
        }
    }
}

/// The broker's reason for having no token, with an App Service status.
fn broker_error(e: &Error) -> Response {
    let (status, retry_after) = super::broker_status(e);
    super::with_retry_after(error(status, &e.to_string()), retry_after)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "statusCode": status.as_u16(), "message": message });
    reply(status, body.to_string())
}

fn reply(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
