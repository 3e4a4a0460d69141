//! How errors look on the wire: `{"error": CODE, "message": "...", "credential": NAME?,
//! "proxy": NAME?}` with the contract's status codes. The one place that maps an error to
//! HTTP and the one place that writes an error body: the router and its guards, the fast
//! path, the HTTP parser's refusals (`parse_errors`), the proxies and the git endpoints
//! all answer through `ApiError`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

/// An error answer, optionally about one credential.
#[derive(Debug)]
pub enum ApiError {
    Broker {
        error: Error,
        credential: Option<String>,
    },
    MissingHeader,
    ForwardedRequest,
    /// `Host` names none of the allowed hosts (DNS rebinding).
    BadHost,
    /// The client may not fetch this credential.
    Forbidden(String),
    /// An admin action (a login) from a client that is not an admin; the message
    /// says how to allow one.
    NotAdmin(&'static str),
    NotFound,
    /// `server.max_watchers` long polls and event streams are open already.
    TooManyWatchers,
    /// The request, body included, outlasted its deadline.
    RequestTimeout,
    /// A handler panicked; the process keeps serving.
    Internal,
    /// A refusal the framework wrote as plain text (405, 413, a malformed path): its
    /// status and text, in the contract's shape.
    Rejected {
        status: StatusCode,
        text: String,
    },
    /// A request hyper could not parse, which hyper answers by itself.
    Unparsable(Unparsable),
    /// No credential is configured for this git host (`emulate.git.hosts`).
    UnknownGitHost(String),
    /// A DPoP proof was asked of a credential without `dpop = true`.
    NotDpop(String),
    /// A header-injecting proxy's own answer, when it has no upstream answer to relay.
    Proxy {
        proxy: String,
        failure: ProxyFailure,
    },
}

/// Why hyper refused a request before any handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsable {
    /// A malformed request line or header: 400.
    BadRequest,
    /// 414.
    UriTooLong,
    /// 431.
    HeadersTooLarge,
}

/// Why a proxy answers by itself.
#[derive(Debug)]
pub enum ProxyFailure {
    /// A browser sent the request for a web page.
    BrowserRequest,
    /// No connection to the upstream, or it broke.
    Unreachable { upstream: String, reason: String },
    /// The upstream did not answer within the proxy's `response_timeout`.
    Timeout(Duration),
    /// The request cannot be forwarded as it is.
    BadRequest(String),
    /// No DPoP proof could be made for the request (the credential's key is unusable).
    Proof(String),
}

impl ApiError {
    pub fn about(error: Error, credential: &str) -> ApiError {
        ApiError::Broker {
            error,
            credential: Some(credential.to_owned()),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::Broker {
            error: Error::BadRequest(message.into()),
            credential: None,
        }
    }

    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingHeader => "missing_header",
            ApiError::ForwardedRequest => "forwarded_request",
            ApiError::BadHost => "bad_host",
            ApiError::Forbidden(_) | ApiError::NotAdmin(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::TooManyWatchers => "too_many_watchers",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::Internal => "internal",
            ApiError::Rejected { status, .. } => match *status {
                StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
                StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                StatusCode::NOT_FOUND => "not_found",
                s if s.is_server_error() => "internal",
                _ => "bad_request",
            },
            ApiError::Unparsable(why) => match why {
                Unparsable::BadRequest => "bad_request",
                Unparsable::UriTooLong => "uri_too_long",
                Unparsable::HeadersTooLarge => "headers_too_large",
            },
            ApiError::UnknownGitHost(_) => "unknown_host",
            ApiError::NotDpop(_) => "dpop_not_enabled",
            ApiError::Proxy { failure, .. } => match failure {
                ProxyFailure::BrowserRequest => "browser_request",
                ProxyFailure::Unreachable { .. } => "upstream_unreachable",
                ProxyFailure::Timeout(_) => "upstream_timeout",
                ProxyFailure::BadRequest(_) => "bad_request",
                ProxyFailure::Proof(_) => "dpop_unavailable",
            },
            ApiError::Broker { error, .. } => match error {
                Error::UnknownCredential(_) => "unknown_credential",
                Error::NoDefaultCredential { .. } | Error::BadRequest(_) => "bad_request",
                Error::ReauthRequired { .. } => "reauth_required",
                Error::LoginRequired { .. } => "login_required",
                Error::NotRefreshGrant { .. } => "not_a_refresh_token_grant",
                Error::RefreshTooSoon { .. } => "refresh_too_soon",
                Error::UpstreamUnavailable { .. } => "upstream_unavailable",
                Error::Store(_) | Error::HeldBack { .. } => "store_unavailable",
                Error::ShuttingDown => "shutting_down",
            },
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingHeader
            | ApiError::ForwardedRequest
            | ApiError::BadHost
            | ApiError::Forbidden(_)
            | ApiError::NotAdmin(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::UnknownGitHost(_) => StatusCode::NOT_FOUND,
            ApiError::NotDpop(_) => StatusCode::CONFLICT,
            ApiError::TooManyWatchers => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Unparsable(why) => match why {
                Unparsable::BadRequest => StatusCode::BAD_REQUEST,
                Unparsable::UriTooLong => StatusCode::URI_TOO_LONG,
                Unparsable::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            },
            ApiError::Proxy { failure, .. } => match failure {
                ProxyFailure::BrowserRequest => StatusCode::FORBIDDEN,
                ProxyFailure::Unreachable { .. } => StatusCode::BAD_GATEWAY,
                ProxyFailure::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                ProxyFailure::BadRequest(_) => StatusCode::BAD_REQUEST,
                ProxyFailure::Proof(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::Broker { error, .. } => match error {
                Error::UnknownCredential(_) => StatusCode::NOT_FOUND,
                Error::NoDefaultCredential { .. } | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
                Error::RefreshTooSoon { .. } => StatusCode::TOO_MANY_REQUESTS,
                Error::NotRefreshGrant { .. } => StatusCode::CONFLICT,
                Error::LoginRequired { .. }
                | Error::ReauthRequired { .. }
                | Error::UpstreamUnavailable { .. }
                | Error::Store(_)
                | Error::HeldBack { .. }
                | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::MissingHeader => {
                "token endpoints need the header `Token-Broker: 1` (protection against request forgery)".into()
            }
            ApiError::ForwardedRequest => {
                "forwarded requests (Forwarded or X-Forwarded-For) are refused: tokens are for local clients".into()
            }
            ApiError::BadHost => {
                "the Host header names a host this broker does not serve (add it to server.allowed_hosts)".into()
            }
            ApiError::Forbidden(_) => "this client may not fetch this credential".into(),
            ApiError::NotAdmin(why) => (*why).into(),
            ApiError::NotFound => "no such endpoint".into(),
            ApiError::TooManyWatchers => {
                "too many long polls and event streams are open (server.max_watchers); retry later".into()
            }
            ApiError::RequestTimeout => "the request took too long".into(),
            ApiError::Internal => "internal error".into(),
            ApiError::Rejected { status, text } if text.is_empty() => status.to_string(),
            ApiError::Rejected { text, .. } => text.clone(),
            ApiError::Unparsable(why) => match why {
                Unparsable::BadRequest => "the request is not valid HTTP/1.1",
                Unparsable::UriTooLong => "the request target is too long",
                Unparsable::HeadersTooLarge => {
                    "the request head is over 32 KiB or has over 100 headers"
                }
            }
            .into(),
            ApiError::UnknownGitHost(host) => {
                format!("no credential is configured for git host `{host}` (emulate.git.hosts)")
            }
            ApiError::NotDpop(name) => format!(
                "credential `{name}` does not use DPoP: proofs are made only for credentials \
                 with dpop = true (its tokens are bearer tokens)"
            ),
            ApiError::Proxy { failure, .. } => match failure {
                ProxyFailure::BrowserRequest => "a browser sent this request for a web page (Origin or Sec-Fetch-Site): the proxy does not lend its token to web pages".into(),
                ProxyFailure::Unreachable { upstream, reason } => {
                    format!("cannot reach the upstream {upstream}: {reason}")
                }
                ProxyFailure::Timeout(after) => format!(
                    "the upstream did not answer within response_timeout ({})",
                    crate::duration::format(*after)
                ),
                ProxyFailure::BadRequest(message) => message.clone(),
                ProxyFailure::Proof(reason) => format!("no DPoP proof could be made: {reason}"),
            },
            ApiError::Broker { error, .. } => error.to_string(),
        }
    }

    /// The answer's body, as it goes on the wire.
    fn body(&self) -> Body<'_> {
        let credential = match self {
            ApiError::Broker { credential, .. } => credential.as_deref(),
            ApiError::Forbidden(name) | ApiError::NotDpop(name) => Some(name.as_str()),
            _ => None,
        };
        let proxy = match self {
            ApiError::Proxy { proxy, .. } => Some(proxy.as_str()),
            _ => None,
        };
        Body {
            error: self.code(),
            message: self.message(),
            credential,
            proxy,
        }
    }

    /// The body's bytes, for answers written below the router (`parse_errors`).
    pub fn body_bytes(&self) -> Vec<u8> {
        // Cannot fail: the body is strings only.
        serde_json::to_vec(&self.body()).unwrap_or_default()
    }

    /// Whether the answer says `Cache-Control: no-store`. The last-resort answers
    /// (timeout, panic, the framework's and the parser's refusals) and the git
    /// endpoints' unknown host never said it; they stay as they were on the wire.
    fn no_store(&self) -> bool {
        !matches!(
            self,
            ApiError::RequestTimeout
                | ApiError::Internal
                | ApiError::Rejected { .. }
                | ApiError::Unparsable(_)
                | ApiError::UnknownGitHost(_)
        )
    }
}

/// Every error body; fields in this order on the wire.
#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if self.no_store() {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if let ApiError::Broker { error, .. } = &self
            && let Some(after) = error.retry_after()
        {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ApiError::TooManyWatchers = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The status and `Retry-After` of the answer to `error`.
    fn retry_after(error: Error) -> (u16, Option<String>) {
        let response = ApiError::about(error, "x").into_response();
        let header = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), header)
    }

    #[test]
    fn a_hold_and_a_report_too_soon_say_how_long_to_wait() {
        let held = Error::HeldBack {
            reason: "redis lost writes".into(),
            retry_after: Duration::from_millis(36_200),
        };
        assert_eq!(
            ApiError::about(held.clone(), "x").code(),
            "store_unavailable"
        );
        let (status, header) = retry_after(held);
        assert_eq!((status, header.as_deref()), (503, Some("37")));
        let soon = Error::RefreshTooSoon {
            retry_after: Duration::from_secs(4),
        };
        assert_eq!(
            ApiError::about(soon.clone(), "x").code(),
            "refresh_too_soon"
        );
        let (status, header) = retry_after(soon);
        assert_eq!((status, header.as_deref()), (429, Some("4")));
    }

    /// The bodies and headers these answers had when each place wrote its own.
    #[test]
    fn every_body_keeps_its_shape_and_headers() {
        let timeout = ProxyFailure::Timeout(Duration::from_secs(30));
        let cases = [
            (
                ApiError::Forbidden("gh".into()),
                403,
                r#"{"error":"forbidden","message":"this client may not fetch this credential","credential":"gh"}"#,
                true,
            ),
            (
                ApiError::Proxy {
                    proxy: "api".into(),
                    failure: timeout,
                },
                504,
                r#"{"error":"upstream_timeout","message":"the upstream did not answer within response_timeout (30s)","proxy":"api"}"#,
                true,
            ),
            (
                ApiError::RequestTimeout,
                408,
                r#"{"error":"request_timeout","message":"the request took too long"}"#,
                false,
            ),
            (
                ApiError::Rejected {
                    status: StatusCode::METHOD_NOT_ALLOWED,
                    text: String::new(),
                },
                405,
                r#"{"error":"method_not_allowed","message":"405 Method Not Allowed"}"#,
                false,
            ),
            (
                ApiError::Unparsable(Unparsable::HeadersTooLarge),
                431,
                r#"{"error":"headers_too_large","message":"the request head is over 32 KiB or has over 100 headers"}"#,
                false,
            ),
        ];
        for (error, status, body, no_store) in cases {
            assert_eq!(String::from_utf8(error.body_bytes()).unwrap(), body);
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status, "{body}");
            let cache = response.headers().get(header::CACHE_CONTROL);
            assert_eq!(cache.is_some(), no_store, "{body}");
        }
    }
}
