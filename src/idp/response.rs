//! Reading what an IdP answers: RFC 6749 success and error bodies, and every other shape
//! real IdPs produce (empty 400s, HTML 500s, 200s that are not JSON, oversized bodies).

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use reqwest::{StatusCode, Url};
use secrecy::SecretString;
use serde::Deserialize;

use super::{IdpError, MAX_RESPONSE_BYTES};
use crate::config::EndpointUrl;

/// A successful token response.
pub struct TokenResponse {
    pub access_token: SecretString,
    pub token_type: String,
    /// From `expires_in`, else from the access token's JWT `exp`; `None` if neither.
    pub expires_at: Option<SystemTime>,
    /// A rotated refresh token; `None` from IdPs that do not rotate.
    pub refresh_token: Option<SecretString>,
    pub scope: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("rotated", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    error_description: Option<String>,
}

/// An IdP answer read whole, not yet classified.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    /// The body, or why it could not be read.
    pub body: Result<Vec<u8>, String>,
}

impl Answer {
    /// Reads status, `Retry-After` and the body (capped).
    pub async fn take(response: reqwest::Response) -> Answer {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = read_capped(response).await;
        Answer {
            status,
            retry_after,
            body,
        }
    }

    /// The OAuth error code of a failure answer, if its body carries one.
    pub fn error_code(&self) -> Option<String> {
        let body = self.body.as_ref().ok()?;
        serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|e| e.error)
    }

    /// Classifies and parses the answer.
    pub fn classify(self) -> Result<TokenResponse, IdpError> {
        if self.status.is_success() {
            // A 2xx means the IdP acted, so a body we cannot use is a lost answer.
            let body = self
                .body
                .map_err(|reason| IdpError::LostAnswer { reason })?;
            return success(&body).map_err(|why| IdpError::LostAnswer {
                reason: why.to_string(),
            });
        }
        let body = self.body.unwrap_or_default();
        Err(failure(self.status, &body, self.retry_after))
    }

    /// The body of a 2xx answer, wiped when dropped (it holds tokens), or the classified
    /// failure: for a login, whose body the broker adopts as received.
    pub fn success_body(self) -> Result<zeroize::Zeroizing<Vec<u8>>, IdpError> {
        if self.status.is_success() {
            return self
                .body
                .map(zeroize::Zeroizing::new)
                .map_err(|reason| IdpError::LostAnswer { reason });
        }
        let body = self.body.unwrap_or_default();
        Err(failure(self.status, &body, self.retry_after))
    }
}

/// Parses a 2xx token response body (from `Answer::success_body`).
pub(super) fn parse_success(body: &[u8]) -> Result<TokenResponse, IdpError> {
    success(body).map_err(|why| IdpError::LostAnswer {
        reason: why.to_string(),
    })
}

fn failure(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> IdpError {
    let oauth = serde_json::from_slice::<ErrorBody>(body).ok();
    let unavailable = |reason: String| IdpError::Unavailable {
        reason,
        retry_after,
    };
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let detail = oauth.map(|e| format!(" ({})", e.error)).unwrap_or_default();
        return unavailable(format!(
            "identity provider answered HTTP {}{detail}",
            status.as_u16()
        ));
    }
    match oauth {
        Some(e) if matches!(e.error.as_str(), "temporarily_unavailable" | "server_error") => {
            unavailable(format!("identity provider answered {}", e.error))
        }
        Some(e) => IdpError::Rejected {
            code: clip(&e.error, 64),
            description: e.error_description.map(|d| clip(&d, 200)),
        },
        None if status.is_client_error() => IdpError::Rejected {
            code: format!("http_{}", status.as_u16()),
            description: Some("the answer carried no OAuth error body".to_owned()),
        },
        None => unavailable(format!(
            "identity provider answered HTTP {}",
            status.as_u16()
        )),
    }
}

/// Why a 2xx body is no token response. Never quotes the body: it may hold a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotTokenResponse {
    /// Not JSON of the RFC 6749 section 5.1 shape.
    #[error("the identity provider's 2xx answer is not a JSON token response")]
    NotJson,
    /// JSON, but without an access token.
    #[error("the identity provider's answer has no access_token")]
    NoAccessToken,
}

/// Parses a successful token response's body (RFC 6749 section 5.1).
pub fn success(body: &[u8]) -> Result<TokenResponse, NotTokenResponse> {
    let parsed: SuccessBody =
        serde_json::from_slice(body).map_err(|_| NotTokenResponse::NotJson)?;
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(NotTokenResponse::NoAccessToken)?;
    let expires_in = match parsed.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        // Some IdPs send the number as a string.
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    let expires_at = match expires_in {
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            Some(SystemTime::now() + Duration::from_secs_f64(secs.min(1e9)))
        }
        _ => jwt_exp(&access_token),
    };
    Ok(TokenResponse {
        expires_at,
        token_type: parsed.token_type.unwrap_or_else(|| "Bearer".to_owned()),
        refresh_token: parsed
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from),
        scope: parsed.scope,
        access_token: SecretString::from(access_token),
    })
}

/// The `exp` claim of a JWT, without verifying it: the broker only needs to know when
/// to refresh, and the resource server does the verifying. An `exp` past year 9999 is
/// no time in seconds (most often milliseconds by mistake) and counts as absent, so
/// the configured `default_lifetime` applies rather than a token "valid" for millennia.
pub fn jwt_exp(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64().filter(|exp| *exp > 0.0)?;
    crate::duration::unix_time(exp)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Reads at most `MAX_RESPONSE_BYTES`; a larger answer is an error, not a truncation.
pub(super) async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(format!(
                        "the identity provider's answer is larger than {MAX_RESPONSE_BYTES} bytes"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(format!(
                    "reading the answer failed: {}",
                    super::describe(&e)
                ));
            }
        }
    }
}

#[derive(Deserialize)]
struct Discovery {
    token_endpoint: String,
}

/// OIDC discovery: the issuer's token endpoint.
pub async fn discover(http: &reqwest::Client, issuer: &Url) -> Result<EndpointUrl, IdpError> {
    let base = issuer.as_str().trim_end_matches('/');
    let url = format!("{base}/.well-known/openid-configuration");
    let unavailable = |reason: String| IdpError::Unavailable {
        reason: format!("OIDC discovery at {url}: {reason}"),
        retry_after: None,
    };
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| unavailable(super::describe(&e)))?;
    if !response.status().is_success() {
        return Err(unavailable(format!("HTTP {}", response.status().as_u16())));
    }
    let body = read_capped(response).await.map_err(unavailable)?;
    let doc: Discovery = serde_json::from_slice(&body)
        .map_err(|_| unavailable("no token_endpoint in the discovery document".to_owned()))?;
    let url = crate::config::checked_url(&doc.token_endpoint).map_err(unavailable)?;
    Ok(EndpointUrl {
        url,
        text: doc.token_endpoint.trim().to_owned(),
    })
}

fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rejected_code(e: IdpError) -> String {
        match e {
            IdpError::Rejected { code, .. } => code,
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[test]
    fn every_error_shape_is_classified() {
        let s = |n| StatusCode::from_u16(n).unwrap();
        let json = br#"{"error":"invalid_grant","error_description":"used"}"#;
        assert_eq!(rejected_code(failure(s(400), json, None)), "invalid_grant");
        assert_eq!(
            rejected_code(failure(s(400), br#"{"error":"invalid_client"}"#, None)),
            "invalid_client"
        );
        assert_eq!(rejected_code(failure(s(400), b"", None)), "http_400");
        assert_eq!(
            rejected_code(failure(s(401), b"<html>no</html>", None)),
            "http_401"
        );
        assert_eq!(rejected_code(failure(s(403), b"", None)), "http_403");
        for (status, body) in [(500, &b"<html>oops</html>"[..]), (503, b""), (429, b"{}")] {
            assert!(matches!(
                failure(s(status), body, None),
                IdpError::Unavailable { .. }
            ));
        }
        let tu = br#"{"error":"temporarily_unavailable"}"#;
        assert!(matches!(
            failure(s(400), tu, None),
            IdpError::Unavailable { .. }
        ));
        let with_retry = failure(s(429), b"", Some(Duration::from_secs(7)));
        assert_eq!(
            with_retry,
            IdpError::Unavailable {
                reason: "identity provider answered HTTP 429".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn success_bodies_parse_with_fallbacks() {
        let ok = success(br#"{"access_token":"a","expires_in":"60","refresh_token":"r"}"#).unwrap();
        assert_eq!(ok.token_type, "Bearer");
        assert!(ok.refresh_token.is_some());
        let left = ok
            .expires_at
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
        assert!(success(b"<html>").is_err());
        assert!(success(br#"{"token_type":"Bearer"}"#).is_err());
        let no_rotation = success(br#"{"access_token":"a","expires_in":5}"#).unwrap();
        assert!(no_rotation.refresh_token.is_none());
    }

    #[test]
    fn jwt_exp_is_the_fallback_lifetime() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":2000000000}"#);
        let token = format!("e30.{payload}.sig");
        let body = format!(r#"{{"access_token":"{token}"}}"#);
        let parsed = success(body.as_bytes()).unwrap();
        assert_eq!(
            parsed.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_exp("opaque-token"), None);
    }

    #[test]
    fn an_implausible_exp_or_expires_in_never_panics_and_is_bounded() {
        let jwt = |exp: &str| {
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!(r#"{{"exp":{exp}}}"#));
            format!("e30.{payload}.sig")
        };
        // Milliseconds by mistake, and numbers past what a clock can hold: no `exp`.
        for exp in ["1700000000000", "1e20", "1e300", "18446744073709551615"] {
            assert_eq!(jwt_exp(&jwt(exp)), None, "{exp}");
            let body = format!(r#"{{"access_token":"{}","refresh_token":"r2"}}"#, jwt(exp));
            let parsed = success(body.as_bytes()).unwrap();
            assert_eq!(parsed.expires_at, None, "{exp}");
            assert!(parsed.refresh_token.is_some());
        }
        // The last second RFC 3339 can write is still a time.
        assert_eq!(
            jwt_exp(&jwt("253402300799")),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799))
        );
        let ceiling = SystemTime::now() + Duration::from_secs(1_000_000_001);
        for expires_in in ["1e300", "\"1e300\"", "18446744073709551615"] {
            let body = format!(r#"{{"access_token":"a","expires_in":{expires_in}}}"#);
            let at = success(body.as_bytes()).unwrap().expires_at.unwrap();
            assert!(at < ceiling, "{expires_in}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let parsed = parse_retry_after(&later).unwrap();
        assert!(parsed <= Duration::from_secs(30) && parsed >= Duration::from_secs(28));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
