//! The user-facing endpoints of the login flows: `/authorize` with its consent page,
//! `POST /device_authorization`, and the device verification page at `/device`.
//!
//! Handlers translate between HTTP and the state, as in `http`. Pages are minimal HTML
//! with every echoed value escaped, never cached, never framed. There is no user login:
//! whoever reaches a page answers for the one dev user, which is what a dev IdP on
//! loopback is for.

use super::DevIdp;
use super::authorize::{self, AuthError, AuthRequest};
use super::clients;
use super::http::{form_params, issuer, no_store_json, token_endpoints, token_error_response};
use super::protocol::Params;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::time::SystemTime;

/// The routes of the login flows, merged into the main router.
pub fn routes() -> Router<DevIdp> {
    Router::new()
        .route("/authorize", get(authorize_get).post(authorize_post))
        .route("/device_authorization", post(device_authorization))
        .route("/device", get(device_page).post(device_decide))
}

/// `GET /authorize`: checks the request, then redirects at once with a code
/// (`--auto-approve`) or shows the consent page.
async fn authorize_get(State(idp): State<DevIdp>, uri: Uri) -> Response {
    let request = match query_params(&uri).and_then(|p| check(&idp, &p)) {
        Ok(request) => request,
        Err(err) => return refuse(&err, StatusCode::FOUND),
    };
    if idp.with_state(|state| state.auto_approve()) {
        return approve(&idp, request, StatusCode::FOUND);
    }
    tracing::info!(result = "consent_page", "authorization request");
    consent_page(&request)
}

/// `POST /authorize`: the consent form's answer, `action=approve` or `action=deny`,
/// with the authorization request repeated in hidden fields and checked again.
async fn authorize_post(State(idp): State<DevIdp>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match form_params(&headers, Some(&body)) {
        Ok(params) => params,
        Err(_) => return refuse(&malformed(), StatusCode::SEE_OTHER),
    };
    let request = match check(&idp, &params) {
        Ok(request) => request,
        Err(err) => return refuse(&err, StatusCode::SEE_OTHER),
    };
    let deny = |error, description| AuthError::Redirect {
        redirect_uri: request.redirect_uri.clone(),
        state: request.state.clone(),
        error,
        description,
    };
    match params.get("action") {
        Some("approve") => approve(&idp, request, StatusCode::SEE_OTHER),
        Some("deny") => {
            let err = deny("access_denied", "the user denied the request");
            refuse(&err, StatusCode::SEE_OTHER)
        }
        _ => {
            let err = deny("invalid_request", "action must be approve or deny");
            refuse(&err, StatusCode::SEE_OTHER)
        }
    }
}

fn query_params(uri: &Uri) -> Result<Params, AuthError> {
    Params::parse(uri.query().unwrap_or("").as_bytes()).map_err(|_| malformed())
}

fn malformed() -> AuthError {
    AuthError::Page {
        error: "invalid_request",
        description: "the request is malformed or repeats a parameter",
    }
}

fn check(idp: &DevIdp, params: &Params) -> Result<AuthRequest, AuthError> {
    idp.with_state(|state| state.check_authorization(params))
}

/// Issues a code and sends it, with `state`, to the redirect URI.
fn approve(idp: &DevIdp, request: AuthRequest, status: StatusCode) -> Response {
    let (redirect_uri, state) = (request.redirect_uri.clone(), request.state.clone());
    let code = idp.with_state(|s| s.issue_code(SystemTime::now(), request));
    tracing::info!(result = "code_issued", "authorization request");
    let pairs = [("code", Some(code.as_str())), ("state", state.as_deref())];
    redirect(&redirect_uri, &pairs, status)
}

/// A refused authorization request: on a page if the client or redirect URI is in
/// doubt, else back to the client.
fn refuse(err: &AuthError, status: StatusCode) -> Response {
    match err {
        AuthError::Page { error, description } => {
            tracing::info!(
                result = error,
                reason = description,
                "authorization request"
            );
            let body = format!("<p><b>{error}</b>: {}</p>", escape(description));
            page(StatusCode::BAD_REQUEST, "Authorization refused", &body)
        }
        AuthError::Redirect {
            redirect_uri,
            state,
            error,
            description,
        } => {
            tracing::info!(
                result = error,
                reason = description,
                "authorization request"
            );
            let pairs = [
                ("error", Some(*error)),
                ("error_description", Some(*description)),
                ("state", state.as_deref()),
            ];
            redirect(redirect_uri, &pairs, status)
        }
    }
}

fn redirect(redirect_uri: &str, pairs: &[(&str, Option<&str>)], status: StatusCode) -> Response {
    let location = authorize::location(redirect_uri, pairs)
        .and_then(|location| HeaderValue::from_str(&location).ok());
    let Some(location) = location else {
        // Unreachable for a checked redirect URI; a page is the safe answer anyway.
        let body = "<p>the redirect URI cannot carry the answer</p>";
        return page(StatusCode::BAD_REQUEST, "Authorization refused", body);
    };
    let mut response = status.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The consent page: approve or deny, posting the request back in hidden fields.
fn consent_page(request: &AuthRequest) -> Response {
    let fields = [
        ("response_type", Some("code")),
        ("client_id", Some(request.client_id.as_str())),
        ("redirect_uri", Some(request.redirect_uri.as_str())),
        ("scope", request.scope.as_deref()),
        ("state", request.state.as_deref()),
        ("code_challenge", Some(request.code_challenge.as_str())),
        ("code_challenge_method", Some("S256")),
    ];
    let hidden: String = fields
        .iter()
        .filter_map(|(name, value)| {
            let value = escape((*value)?);
            Some(format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{value}\">"
            ))
        })
        .collect();
    let scope = request.scope.as_deref().unwrap_or("(none)");
    let body = format!(
        "<p>Client <b>{client}</b> asks to act as <b>dev-user</b> with scope <b>{scope}</b>.</p>\
         <form method=\"post\" action=\"/authorize\">{hidden}\
         <button name=\"action\" value=\"approve\">Approve</button> \
         <button name=\"action\" value=\"deny\">Deny</button></form>",
        client = escape(&request.client_id),
        scope = escape(scope),
    );
    page(StatusCode::OK, "Authorize", &body)
}

/// `POST /device_authorization` (RFC 8628 3.1): client authentication as at the token
/// endpoint; answers the device code, the user code and where to enter it.
async fn device_authorization(
    State(idp): State<DevIdp>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = form_params(&headers, Some(&body)).and_then(|params| {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let client = clients::presented(authorization, &params);
        idp.with_state(|state| match client {
            Ok(client) => {
                let audiences = token_endpoints(&headers, state.listen_addr());
                state.device_authorization(SystemTime::now(), &client, &params, &audiences)
            }
            Err(err) => {
                state.count_error(&err);
                Err(err)
            }
        })
    });
    match result {
        Ok(grant) => {
            tracing::info!(result = "ok", "device authorization request");
            let verification_uri = format!("{}/device", issuer(&idp, &headers));
            let complete = authorize::location(
                &verification_uri,
                &[("user_code", Some(grant.user_code.as_str()))],
            );
            let body = json!({
                "device_code": grant.device_code,
                "user_code": grant.user_code,
                "verification_uri": verification_uri,
                "verification_uri_complete": complete,
                "expires_in": grant.expires_in,
                "interval": grant.interval,
            });
            no_store_json(StatusCode::OK, &body)
        }
        Err(err) => {
            tracing::info!(result = err.code(), reason = %err, "device authorization request");
            token_error_response(&err)
        }
    }
}

/// `GET /device`: the verification page, its user code prefilled from the query.
async fn device_page(uri: Uri) -> Response {
    let Ok(params) = Params::parse(uri.query().unwrap_or("").as_bytes()) else {
        let body = "<p>the query is malformed or repeats a parameter</p>";
        return page(StatusCode::BAD_REQUEST, "Device login", body);
    };
    let user_code = escape(params.get("user_code").unwrap_or(""));
    let body = format!(
        "<form method=\"post\" action=\"/device\">\
         <label>Code shown on your device: <input name=\"user_code\" value=\"{user_code}\" \
         autocomplete=\"off\" autofocus></label> \
         <button name=\"action\" value=\"approve\">Approve</button> \
         <button name=\"action\" value=\"deny\">Deny</button></form>"
    );
    page(StatusCode::OK, "Device login", &body)
}

/// `POST /device`: `user_code` and `action=approve|deny`.
async fn device_decide(State(idp): State<DevIdp>, headers: HeaderMap, body: Bytes) -> Response {
    let refused = |why: &str| {
        let body = format!(
            "<p>{}</p><p><a href=\"/device\">Try again</a></p>",
            escape(why)
        );
        page(StatusCode::BAD_REQUEST, "Device login", &body)
    };
    let Ok(params) = form_params(&headers, Some(&body)) else {
        return refused("the form is malformed or repeats a field");
    };
    let approve = match params.get("action") {
        Some("approve") => true,
        Some("deny") => false,
        _ => return refused("action must be approve or deny"),
    };
    let Some(user_code) = params.get("user_code") else {
        return refused("user_code is required");
    };
    let decided = idp.with_state(|s| s.decide_device(SystemTime::now(), user_code, approve));
    match decided {
        Ok(()) => {
            tracing::info!(
                result = if approve { "approved" } else { "denied" },
                "device code"
            );
            let said = if approve { "approved" } else { "denied" };
            let body = format!("<p>Request {said}. You can close this page.</p>");
            page(StatusCode::OK, "Device login", &body)
        }
        Err(why) => {
            tracing::info!(result = "refused", reason = why, "device code");
            refused(why)
        }
    }
}

/// A small HTML page that no cache keeps and no other site frames.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title} - dev IdP</title>\
         </head><body><h1>{title}</h1>{body}<p><small>dev IdP: development only</small></p>\
         </body></html>"
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
