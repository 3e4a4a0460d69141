//! How errors look on the wire: `{"error": CODE, "message": "...", "credential": NAME?}`
//! with the contract's status codes. The one place that maps an error to HTTP.

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
    NotFound,
    /// `server.max_watchers` long polls and event streams are open already.
    TooManyWatchers,
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
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::TooManyWatchers => "too_many_watchers",
            ApiError::Broker { error, .. } => match error {
                Error::UnknownCredential(_) => "unknown_credential",
                Error::NoDefaultCredential { .. } | Error::BadRequest(_) => "bad_request",
                Error::ReauthRequired { .. } => "reauth_required",
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
            | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TooManyWatchers => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Broker { error, .. } => match error {
                Error::UnknownCredential(_) => StatusCode::NOT_FOUND,
                Error::NoDefaultCredential { .. } | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
                Error::RefreshTooSoon { .. } => StatusCode::TOO_MANY_REQUESTS,
                Error::ReauthRequired { .. }
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
            ApiError::NotFound => "no such endpoint".into(),
            ApiError::TooManyWatchers => {
                "too many long polls and event streams are open (server.max_watchers); retry later".into()
            }
            ApiError::Broker { error, .. } => error.to_string(),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let credential = match &self {
            ApiError::Broker { credential, .. } => credential.as_deref(),
            ApiError::Forbidden(name) => Some(name.as_str()),
            _ => None,
        };
        let body = Body {
            error: self.code(),
            message: self.message(),
            credential,
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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
}
