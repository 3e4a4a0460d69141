//! Request guards: who may ask for tokens, how long a request may take, and what a
//! panic in a handler turns into (a 500 JSON answer, with the process still serving).

use std::borrow::Cow;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tracing::error;

use super::App;
use super::error::ApiError;
use super::listen::Peer;

/// Token endpoints answer only local, deliberate requests (the metadata-server rule):
/// a forwarded request came through a proxy, and a request without the header may be
/// a forged one from a browser or an SSRF.
pub fn check_local(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key("forwarded") || headers.contains_key("x-forwarded-for") {
        return Err(ApiError::ForwardedRequest);
    }
    if app.require_header
        && headers
            .get("token-broker")
            .is_none_or(|v| v.as_bytes() != b"1")
    {
        return Err(ApiError::MissingHeader);
    }
    Ok(())
}

/// DNS-rebinding protection: a browser tricked into calling us by a hostile name still
/// sends that name in `Host`. Unix-socket requests cannot be reached that way.
pub fn check_host(
    app: &App,
    headers: &HeaderMap,
    uri: &Uri,
    peer: Option<&Peer>,
) -> Result<(), ApiError> {
    match host_allowed(&app.allowed_hosts, headers, uri, peer) {
        true => Ok(()),
        false => Err(ApiError::BadHost),
    }
}

/// Whether the request came over a unix socket, or names one of `hosts` in exactly one
/// well-formed `Host` header and, for an absolute-form target (`GET http://...`), in
/// its authority too (which HTTP says takes precedence over `Host`). A missing,
/// repeated or unparsable `Host` is refused rather than guessed at: whatever a
/// proxy in front or a rebinding browser meant by it, it is not a plain local request.
pub fn host_allowed(
    hosts: &HashSet<String>,
    headers: &HeaderMap,
    uri: &Uri,
    peer: Option<&Peer>,
) -> bool {
    if matches!(peer, Some(Peer::Unix { .. })) {
        return true;
    }
    let allowed = |value: &str| host_name(value).is_some_and(|name| hosts.contains(name.as_ref()));
    let mut values = headers.get_all(header::HOST).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    // `to_str` fails on bytes outside visible ASCII.
    value.to_str().is_ok_and(allowed) && uri.authority().is_none_or(|a| allowed(a.as_str()))
}

/// `check_local` as middleware, for the token routes the router serves.
pub async fn local_only(State(app): State<App>, request: Request, next: Next) -> Response {
    match check_local(&app, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// `check_host` as middleware.
pub async fn known_host(State(app): State<App>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>();
    match check_host(&app, request.headers(), request.uri(), peer) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// The host part of a `Host` header (`host[:port]`, `[v6]` or `[v6]:port`), lower-cased,
/// brackets and port removed; `None` when it is not that shape. Borrowed when it is lower
/// case already (the common case), so the check allocates nothing.
pub fn host_name(value: &str) -> Option<Cow<'_, str>> {
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            let v6 = host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            (v6 && host.contains(':')).then_some(())?;
            (
                host,
                if after.is_empty() {
                    None
                } else {
                    Some(after.strip_prefix(':')?)
                },
            )
        }
        None => match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        },
    };
    let name_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    let port_ok = port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if host.is_empty() || !name_ok || !port_ok {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// Bounds a whole request, body upload included.
pub async fn deadline(State(app): State<App>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(app.request_deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}

/// Rejections produced by the framework itself (405, 413, malformed paths) come as
/// plain text; every error leaves this server as the contract's JSON.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let mut rebuilt = ApiError::Rejected { status, text }.into_response();
    for (name, value) in parts
        .headers
        .iter()
        .filter(|(n, _)| *n != header::CONTENT_TYPE && *n != header::CONTENT_LENGTH)
    {
        rebuilt.headers_mut().insert(name.clone(), value.clone());
    }
    rebuilt
}

/// The last resort: a panicking handler answers 500 and the process keeps serving.
pub async fn catch_panic(request: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            error!("a request handler panicked; answered 500");
            ApiError::Internal.into_response()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn boom() -> &'static str {
        panic!("handler bug")
    }

    #[test]
    fn host_names_lose_ports_and_brackets() {
        let name = |value| host_name(value).map(|n| n.into_owned());
        assert_eq!(name("LocalHost:8656").unwrap(), "localhost");
        assert_eq!(name("[::1]:8656").unwrap(), "::1");
        assert_eq!(name("[::1]").unwrap(), "::1");
        assert_eq!(name("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(name("evil.example:80").unwrap(), "evil.example");
        assert_eq!(name("localhost:").unwrap(), "localhost");
    }

    #[test]
    fn malformed_hosts_have_no_name() {
        for bad in [
            "",
            "[::1]evil.example",
            "[::1]:80x",
            "[::1",
            "[evil.example]",
            "::1",
            "localhost:80:80",
            "localhost:8o",
            "local host",
            "user@localhost",
            "localhost/x",
            ":8656",
        ] {
            assert_eq!(host_name(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_json() {
        let router = Router::new()
            .route("/boom", get(boom))
            .layer(axum::middleware::from_fn(catch_panic));
        let request = Request::get("/boom").body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"], "internal");
    }
}
