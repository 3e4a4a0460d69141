//! The token endpoints: `GET /token[/{name}]` and `POST /token[/{name}]/refresh`.
//! Parsing and answering only; every decision about refreshing is the broker's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use tracing::{debug, warn};

use super::App;
use super::error::ApiError;
use super::listen::Peer;
use crate::broker::{Credential, Token, Want};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenQuery {
    min_ttl: Option<String>,
    format: Option<String>,
    wait: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    rejected_token: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    Raw,
}

pub(super) type NamePath = Result<Path<String>, PathRejection>;
pub(super) type PeerInfo = Option<Extension<Peer>>;

/// `GET /token/{name}` through the router (the connection service answers most of
/// these itself, through `read`).
pub async fn get_named(
    State(app): State<App>,
    path: NamePath,
    peer: PeerInfo,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let name = match &path {
        Ok(Path(name)) => Ok(name.as_str()),
        Err(_) => Err(bad_name()),
    };
    let peer = peer.map(|Extension(p)| p);
    read(&app, Some(name), peer.as_ref(), query.as_deref(), &headers).await
}

/// `GET /token`: the default credential.
pub async fn get_default(
    State(app): State<App>,
    peer: PeerInfo,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let peer = peer.map(|Extension(p)| p);
    read(&app, None, peer.as_ref(), query.as_deref(), &headers).await
}

/// `POST /token/{name}/refresh`.
pub async fn refresh_named(
    State(app): State<App>,
    path: NamePath,
    peer: PeerInfo,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = match &path {
        Ok(Path(name)) => Ok(name.as_str()),
        Err(_) => Err(bad_name()),
    };
    let peer = peer.map(|Extension(p)| p);
    match resolve(&app, Some(name), peer.as_ref(), &headers) {
        Ok(credential) => refresh(credential, &headers, &body).await,
        Err(error) => error.into_response(),
    }
}

/// `POST /token/refresh`: the default credential.
pub async fn refresh_default(
    State(app): State<App>,
    peer: PeerInfo,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer.map(|Extension(p)| p);
    match resolve(&app, None, peer.as_ref(), &headers) {
        Ok(credential) => refresh(credential, &headers, &body).await,
        Err(error) => error.into_response(),
    }
}

fn bad_name() -> ApiError {
    ApiError::bad_request("the credential name is not valid UTF-8")
}

/// A token read: the named credential (`None`: the default one), after the guards.
/// Borrows everything, so the connection service's fast path copies nothing.
pub async fn read(
    app: &App,
    name: Option<Result<&str, ApiError>>,
    peer: Option<&Peer>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    match resolve(app, name, peer, headers) {
        Ok(credential) => get(app, credential, query, headers).await,
        Err(error) => error.into_response(),
    }
}

/// The named (or default) credential, if it exists and this client may fetch it.
pub(super) fn resolve(
    app: &App,
    name: Option<Result<&str, ApiError>>,
    peer: Option<&Peer>,
    headers: &HeaderMap,
) -> Result<Arc<Credential>, ApiError> {
    let found = match name {
        Some(Ok(name)) => app
            .broker
            .credential(name)
            .map_err(|e| ApiError::about(e, name)),
        Some(Err(bad)) => Err(bad),
        None => app
            .broker
            .default_credential()
            .map_err(|error| ApiError::Broker {
                error,
                credential: None,
            }),
    };
    let credential = found?;
    let unix = match peer {
        Some(Peer::Unix { uid, gid }) => Some((*uid, *gid)),
        _ => None,
    };
    let key = headers.get("token-broker-key").map(|v| v.as_bytes());
    if credential.allows(unix, key) {
        return Ok(credential);
    }
    // The key itself is never logged, only whether one was sent.
    warn!(
        credential = credential.name(),
        ?peer,
        key_sent = key.is_some(),
        "client refused"
    );
    credential.count_failed("forbidden");
    Err(ApiError::Forbidden(credential.name().to_owned()))
}

async fn get(
    app: &App,
    credential: Arc<Credential>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let query = match parse_query(query, headers) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    debug!(
        credential = credential.name(),
        min_ttl_ms = query.min_ttl.as_millis() as u64,
        "token request"
    );
    let outcome = credential.get(Want::Fresh(query.min_ttl)).await;
    match headers.get(header::IF_NONE_MATCH) {
        None => answer(&credential, outcome, query.format),
        Some(tags) => super::watch::conditional(app, credential, outcome, tags, &query).await,
    }
}

async fn refresh(credential: Arc<Credential>, headers: &HeaderMap, body: &[u8]) -> Response {
    let want = match parse_refresh_body(headers, body) {
        Ok(Some(rejected)) => Want::Rejected(rejected),
        Ok(None) => Want::Forced,
        Err(e) => return e.into_response(),
    };
    let format = default_format(headers);
    debug!(
        credential = credential.name(),
        kind = want.trigger(),
        "refresh request"
    );
    answer(&credential, credential.get(want).await, format)
}

pub(super) fn answer(
    credential: &Credential,
    outcome: crate::broker::Outcome,
    format: Format,
) -> Response {
    match outcome {
        Ok(token) => {
            credential.count_served();
            token_response(&token, format)
        }
        Err(error) => {
            let e = ApiError::about(error, credential.name());
            credential.count_failed(e.code());
            e.into_response()
        }
    }
}

pub(super) fn token_response(token: &Token, format: Format) -> Response {
    let (body, content_type) = match format {
        Format::Json => (token.json_body(SystemTime::now()), "application/json"),
        Format::Raw => (token.raw(), "text/plain; charset=utf-8"),
    };
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    insert_etag(headers, token);
    *response.status_mut() = StatusCode::OK;
    response
}

/// The version's entity tag; shares the bytes encoded with the version.
pub(super) fn insert_etag(headers: &mut HeaderMap, token: &Token) {
    if let Ok(etag) = HeaderValue::from_maybe_shared(token.etag()) {
        headers.insert(header::ETAG, etag);
    }
}

/// A token read's query.
pub(super) struct Query {
    pub min_ttl: Duration,
    pub format: Format,
    /// How long a conditional read may wait for a new version (`?wait=`).
    pub wait: Duration,
}

fn parse_query(query: Option<&str>, headers: &HeaderMap) -> Result<Query, ApiError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(Query {
            min_ttl: Duration::ZERO,
            format: default_format(headers),
            wait: Duration::ZERO,
        });
    };
    let parsed: TokenQuery = serde_urlencoded::from_str(query).map_err(|e| {
        ApiError::bad_request(format!(
            "bad query string: {e}; known parameters: min_ttl, format, wait"
        ))
    })?;
    let duration = |key: &str, text: Option<&str>| match text {
        None => Ok(Duration::ZERO),
        Some(text) => {
            crate::duration::parse(text).map_err(|e| ApiError::bad_request(format!("{key}: {e}")))
        }
    };
    Ok(Query {
        min_ttl: duration("min_ttl", parsed.min_ttl.as_deref())?,
        format: parse_format(parsed.format.as_deref(), headers)?,
        wait: duration("wait", parsed.wait.as_deref())?,
    })
}

/// `format=json|raw`; without it, `Accept` decides.
pub(super) fn parse_format(format: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
    match format {
        None => Ok(default_format(headers)),
        Some("json") => Ok(Format::Json),
        Some("raw") => Ok(Format::Raw),
        Some(other) => Err(ApiError::bad_request(format!(
            "format: `{other}` is not json or raw"
        ))),
    }
}

fn default_format(headers: &HeaderMap) -> Format {
    if wants_text(headers) {
        Format::Raw
    } else {
        Format::Json
    }
}

/// `Accept: text/plain` (as the first choice) asks for the bare token.
fn wants_text(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| first.trim().starts_with("text/plain"))
}

/// The optional `rejected_token`, from JSON or a form; an empty body is a forced refresh.
fn parse_refresh_body(headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed: RefreshBody = if content_type.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::bad_request(format!("bad form body: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "bad JSON body ({e}); send {{\"rejected_token\": \"...\"}} or nothing"
            ))
        })?
    };
    match parsed.rejected_token {
        Some(token) if token.trim().is_empty() => {
            Err(ApiError::bad_request("rejected_token is empty"))
        }
        other => Ok(other),
    }
}
