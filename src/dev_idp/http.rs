//! The public HTTP surface: `POST /token`, discovery and `/stats`, plus the routing
//! table (admin routes live in `admin`, the login flows' pages and device
//! authorization in `pages`, the protected resource `/api/whoami` in `resource`).
//!
//! Handlers translate between HTTP and the state; they hold the state lock only inside
//! `DevIdp::with_state` and do all their waiting outside it.

use super::DevIdp;
use super::admin;
use super::clients;
use super::faults::{self, Fault};
use super::pages;
use super::protocol::{self, Params, TokenError};
use super::resource;
use super::state::{Arrival, Issued};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

/// Largest token request body read; a real one is a few hundred bytes.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The whole routing table.
pub fn router(idp: DevIdp) -> Router {
    Router::new()
        .route("/token", post(token).fallback(token_wrong_method))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/api/whoami", get(resource::whoami))
        .route("/stats", get(stats))
        .merge(admin::routes())
        .merge(pages::routes())
        .fallback(not_found)
        .with_state(idp)
}

/// Counts a token request as in flight for as long as it lives, including when its
/// client hangs up and the work is dropped halfway.
struct InFlight {
    idp: DevIdp,
}

impl InFlight {
    fn arrive(idp: &DevIdp) -> (InFlight, Arrival) {
        let arrival = idp.with_state(|state| state.arrive());
        (InFlight { idp: idp.clone() }, arrival)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.idp.with_state(|state| state.leave());
    }
}

/// `POST /token`.
async fn token(State(idp): State<DevIdp>, headers: HeaderMap, body: Body) -> Response {
    let (in_flight, arrival) = InFlight::arrive(&idp);
    let body = axum::body::to_bytes(body, MAX_FORM_BYTES).await.ok();
    // The answer is computed in its own task: once a request has been read it runs to
    // the end even if the client hangs up, as on a real IdP. A client that times out
    // during a hang therefore loses the answer of a rotation that really happened.
    let task = tokio::spawn(answer_token(idp, in_flight, arrival, headers, body));
    task.await.unwrap_or_else(|_| {
        let body = json!({"error": "server_error", "error_description": "internal error"});
        no_store_json(StatusCode::INTERNAL_SERVER_ERROR, &body)
    })
}

/// Waits out latency and any hang, then answers with the armed fault or for real.
async fn answer_token(
    idp: DevIdp,
    in_flight: InFlight,
    arrival: Arrival,
    headers: HeaderMap,
    body: Option<Bytes>,
) -> Response {
    let hang = match &arrival.fault {
        Some(Fault::Hang(hang)) => *hang,
        _ => Duration::ZERO,
    };
    let delay = arrival.latency.saturating_add(hang);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = match arrival.fault {
        Some(Fault::Status {
            status,
            error,
            retry_after,
            shape,
        }) => {
            let grant = body
                .as_deref()
                .and_then(|b| Params::parse(b).ok())
                .map_or("unknown", |p| protocol::grant_label(&p));
            tracing::info!(grant, result = "injected_fault", status, "token request");
            faults::response(status, &error, retry_after, shape)
        }
        _ => process_token(&idp, &headers, body.as_deref()),
    };
    drop(in_flight);
    response
}

/// Runs a token request through the protocol and the state, logs it, renders it.
fn process_token(idp: &DevIdp, headers: &HeaderMap, body: Option<&[u8]>) -> Response {
    let (grant, result) = handle_token(idp, headers, body);
    let response = match &result {
        Ok(issued) => {
            tracing::info!(grant, result = "ok", outcome = ?issued.outcome, "token request");
            token_success_response(issued)
        }
        Err(err) => {
            tracing::info!(grant, result = err.code(), reason = %err, "token request");
            token_error_response(err)
        }
    };
    with_dpop_nonce(idp, response)
}

/// Returns the grant label for logs and the outcome.
fn handle_token(
    idp: &DevIdp,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> (&'static str, Result<Issued, TokenError>) {
    let params = match form_params(headers, body) {
        Ok(params) => params,
        Err(err) => return ("unknown", Err(err)),
    };
    let grant = protocol::grant_label(&params);
    let authorization = match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => Some(""), // not visible ASCII: fails as malformed Basic
    };
    let client = clients::presented(authorization, &params);
    let proofs = dpop_headers(headers);
    let result = idp.with_state(|state| {
        let now = SystemTime::now();
        let audiences = token_endpoints(headers, state.listen_addr());
        // The proof first: a refused or challenged request must use nothing up.
        let jkt = state.token_proof(now, &proofs, &audiences)?;
        match client {
            Ok(client) => state.token_bound(now, &client, &params, &audiences, jkt),
            Err(err) => {
                // Malformed credentials fail before the state sees them; count them alike.
                state.count_error(&err);
                Err(err)
            }
        }
    });
    (grant, result)
}

/// The values of the request's `DPoP` headers; one that is not visible ASCII stays in
/// as an empty value, which fails as a malformed proof.
pub(super) fn dpop_headers(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all("dpop")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect()
}

/// Adds the current `DPoP-Nonce` when nonces are demanded, so a client learns each
/// new nonce from any answer (RFC 9449 section 8.2).
pub(super) fn with_dpop_nonce(idp: &DevIdp, mut response: Response) -> Response {
    let nonce = idp.with_state(|state| state.dpop_nonce(SystemTime::now()));
    if let Some(value) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("dpop-nonce", value);
    }
    response
}

/// The URLs this token endpoint answers to, as the `aud` of signed assertions must
/// name it: through the request's `Host` and the listen address, over http or https.
pub(super) fn token_endpoints(headers: &HeaderMap, listen: Option<&str>) -> Vec<String> {
    endpoint_urls(headers, listen, "/token")
}

/// The URLs of the endpoint at `path`, as a client may address it: through the
/// request's `Host` or the listen address, over http or https (behind TLS or not).
pub(super) fn endpoint_urls(headers: &HeaderMap, listen: Option<&str>, path: &str) -> Vec<String> {
    let hosts = request_host(headers).into_iter().chain(listen);
    hosts
        .flat_map(|host| ["http", "https"].map(|scheme| format!("{scheme}://{host}{path}")))
        .collect()
}

/// The form body, insisting on the content type RFC 6749 mandates.
pub(super) fn form_params(headers: &HeaderMap, body: Option<&[u8]>) -> Result<Params, TokenError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(TokenError::InvalidRequest(
            "content type must be application/x-www-form-urlencoded",
        ));
    }
    let body = body.ok_or(TokenError::InvalidRequest("body unreadable or too large"))?;
    Params::parse(body)
}

/// A JSON answer that no cache may keep (RFC 6749 5.1).
pub(super) fn no_store_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn token_success_response(issued: &Issued) -> Response {
    let token_type = if issued.dpop { "DPoP" } else { "Bearer" };
    let mut body = json!({"access_token": issued.access_token, "token_type": token_type});
    if let Some(expires_in) = issued.expires_in {
        body["expires_in"] = json!(expires_in);
    }
    if let Some(refresh_token) = &issued.refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    if let Some(scope) = &issued.scope {
        body["scope"] = json!(scope);
    }
    if let Some(kind) = issued.issued_token_type {
        body["issued_token_type"] = json!(kind);
    }
    no_store_json(StatusCode::OK, &body)
}

/// An RFC 6749 5.2 error; `invalid_client` also gets the challenge RFC 6749 asks for.
pub(super) fn token_error_response(err: &TokenError) -> Response {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({"error": err.code(), "error_description": err.to_string()});
    let mut response = no_store_json(status, &body);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"dev-idp\""),
        );
    }
    response
}

/// Anything but POST on `/token`: still a JSON, non-cacheable answer.
async fn token_wrong_method() -> Response {
    let err = TokenError::InvalidRequest("the token endpoint only accepts POST");
    let mut response = token_error_response(&err);
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// `GET /.well-known/openid-configuration`: the endpoints and what each supports.
async fn discovery(State(idp): State<DevIdp>, headers: HeaderMap) -> Response {
    let issuer = issuer(&idp, &headers);
    axum::Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token"),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "device_authorization_endpoint": format!("{issuer}/device_authorization"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            "client_credentials",
            protocol::DEVICE_CODE,
            protocol::TOKEN_EXCHANGE,
            protocol::JWT_BEARER,
        ],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "dpop_signing_alg_values_supported": crate::dpop::SIGNING_ALGS,
    }))
    .into_response()
}

/// This IdP's base URL as the request reached it (or as it listens).
pub(super) fn issuer(idp: &DevIdp, headers: &HeaderMap) -> String {
    let host = request_host(headers)
        .map(str::to_owned)
        .or_else(|| idp.with_state(|state| state.listen_addr().map(str::to_owned)))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("http://{host}")
}

/// The `Host` header, if it looks like a host and port; anything else is ignored rather
/// than reflected into URLs.
fn request_host(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let plausible = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    (!host.is_empty() && host.len() <= 255 && host.chars().all(plausible)).then_some(host)
}

/// `GET /stats`.
async fn stats(State(idp): State<DevIdp>) -> Response {
    no_store_json(StatusCode::OK, &json!(idp.stats()))
}

async fn not_found() -> Response {
    let body = json!({"error": "not_found", "error_description": "no such endpoint"});
    no_store_json(StatusCode::NOT_FOUND, &body)
}
