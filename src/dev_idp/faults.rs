//! Fault injection for the token endpoint: what `POST /admin/faults` accepts, and the
//! broken answers it makes the next token requests give.
//!
//! A fault is armed for a count of requests and consumed in arrival order by the state.
//! Status faults replace the answer; hang faults only delay it, and the request is then
//! processed for real, which models an answer lost on the way back to a client that gave
//! up. The shapes cover the ways real IdPs and proxies answer badly.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// Size of the `huge` body: large enough to trip any sane client-side body limit.
const HUGE_BODY_BYTES: usize = 10 * 1024 * 1024;

/// How an injected error answer is shaped.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A proper RFC 6749 5.2 body.
    #[default]
    Json,
    /// A JSON body with `error` only, since `error_description` is optional.
    JsonNoDescription,
    /// No body at all.
    Empty,
    /// An HTML error page, as a proxy in front of an IdP would send.
    Html,
    /// Text that is not JSON although the content type says it is.
    Garbage,
    /// A valid JSON error padded to 10 MiB.
    Huge,
}

/// What an armed fault does to one token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and body instead of processing the request.
    Status {
        /// The HTTP status, 200 to 599.
        status: u16,
        /// The RFC 6749 error code put in the body.
        error: String,
        /// Seconds for a `Retry-After` header, if any.
        retry_after: Option<u64>,
        /// How the body is shaped.
        shape: Shape,
    },
    /// Sleep this long, then process the request normally.
    Hang(Duration),
}

/// A fault armed for the next `remaining` token requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFault {
    /// The fault each of those requests gets.
    pub fault: Fault,
    /// How many more token requests it applies to; never zero while armed.
    pub remaining: u32,
}

/// The JSON accepted by `POST /admin/faults`. Unknown fields are refused so a typo in
/// a test fails loudly instead of arming nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    status: Option<u16>,
    #[serde(default, deserialize_with = "crate::duration::serde_opt::deserialize")]
    hang: Option<Duration>,
    count: Option<u32>,
    error: Option<String>,
    retry_after: Option<u64>,
    shape: Option<Shape>,
}

/// Parses an admin fault request; `Ok(None)` means "clear" (`count: 0`).
pub fn parse_request(body: &[u8]) -> Result<Option<PendingFault>, String> {
    let req: FaultRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let remaining = req.count.unwrap_or(1);
    if remaining == 0 {
        return Ok(None);
    }
    let fault = match (req.status, req.hang) {
        (Some(status), None) => status_fault(status, req.error, req.retry_after, req.shape)?,
        (None, Some(hang)) if req.error.is_none() && req.retry_after.is_none() => {
            if req.shape.is_some() {
                return Err("a hang takes no shape".to_owned());
            }
            Fault::Hang(hang)
        }
        (None, Some(_)) => return Err("a hang takes no error or retry_after".to_owned()),
        _ => return Err("give exactly one of `status` or `hang`".to_owned()),
    };
    Ok(Some(PendingFault { fault, remaining }))
}

fn status_fault(
    status: u16,
    error: Option<String>,
    retry_after: Option<u64>,
    shape: Option<Shape>,
) -> Result<Fault, String> {
    if !(200..=599).contains(&status) {
        return Err("status must be between 200 and 599".to_owned());
    }
    let default = if status >= 500 || status == 429 {
        "temporarily_unavailable"
    } else {
        "invalid_request"
    };
    let error = error.unwrap_or_else(|| default.to_owned());
    // A narrow alphabet keeps the code safe to put in JSON, HTML and logs unescaped.
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if error.is_empty() || !error.chars().all(valid) {
        return Err("error must be a non-empty code of letters, digits, _ - .".to_owned());
    }
    Ok(Fault::Status {
        status,
        error,
        retry_after,
        shape: shape.unwrap_or_default(),
    })
}

/// The armed fault as JSON, the answer to `POST /admin/faults`.
pub fn describe(pending: Option<&PendingFault>) -> serde_json::Value {
    match pending {
        None => json!({"count": 0}),
        Some(PendingFault {
            fault: Fault::Hang(hang),
            remaining,
        }) => json!({"hang": crate::duration::format(*hang), "count": remaining}),
        Some(PendingFault {
            fault:
                Fault::Status {
                    status,
                    error,
                    retry_after,
                    shape,
                },
            remaining,
        }) => json!({
            "status": status,
            "error": error,
            "retry_after": retry_after,
            "shape": shape,
            "count": remaining,
        }),
    }
}

/// The answer a status fault gives instead of processing the token request.
pub fn response(status: u16, error: &str, retry_after: Option<u64>, shape: Shape) -> Response {
    let (content_type, body) = match shape {
        Shape::Json => (
            Some("application/json"),
            json!({"error": error, "error_description": "injected fault"}).to_string(),
        ),
        Shape::JsonNoDescription => (
            Some("application/json"),
            json!({"error": error}).to_string(),
        ),
        Shape::Empty => (None, String::new()),
        Shape::Html => (
            Some("text/html; charset=utf-8"),
            format!(
                "<html><head><title>{status}</title></head><body><h1>{status} {error}</h1></body></html>\n"
            ),
        ),
        Shape::Garbage => (
            Some("application/json"),
            "<<not json>> {\"error\": ".to_owned(),
        ),
        Shape::Huge => (Some("application/json"), huge_body(error)),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// A valid RFC 6749 error body of exactly `HUGE_BODY_BYTES`, padded in the description,
/// so a client that reads it all still sees well-formed JSON and must rely on its limit.
fn huge_body(error: &str) -> String {
    let head = format!("{{\"error\":\"{error}\",\"error_description\":\"");
    let tail = "\"}";
    let pad = HUGE_BODY_BYTES.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(HUGE_BODY_BYTES);
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(tail);
    body
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_status() {
        let parsed = parse_request(br#"{"status": 503}"#).unwrap().unwrap();
        assert_eq!(parsed.remaining, 1);
        assert!(
            matches!(parsed.fault, Fault::Status { ref error, .. } if error == "temporarily_unavailable")
        );
        let parsed = parse_request(br#"{"status": 400, "count": 2}"#)
            .unwrap()
            .unwrap();
        assert!(
            matches!(parsed.fault, Fault::Status { ref error, .. } if error == "invalid_request")
        );
        let parsed = parse_request(br#"{"status": 429}"#).unwrap().unwrap();
        assert!(
            matches!(parsed.fault, Fault::Status { ref error, .. } if error == "temporarily_unavailable")
        );
    }

    #[test]
    fn hang_and_clear() {
        let parsed = parse_request(br#"{"hang": "30s", "count": 3}"#)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.fault, Fault::Hang(Duration::from_secs(30)));
        assert_eq!(describe(Some(&parsed))["hang"], "30s");
        assert_eq!(parse_request(br#"{"count": 0}"#).unwrap(), None);
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            &b"not json"[..],
            br#"{"status": 503, "hang": "1s"}"#,
            br#"{"count": 2}"#,
            br#"{"status": 99}"#,
            br#"{"status": 503, "error": "<script>"}"#,
            br#"{"status": 503, "shape": "xml"}"#,
            br#"{"status": 503, "colour": "red"}"#,
            br#"{"hang": "1s", "shape": "html"}"#,
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn huge_body_is_exactly_ten_mib_of_json() {
        let body = huge_body("temporarily_unavailable");
        assert_eq!(body.len(), HUGE_BODY_BYTES);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["error"], "temporarily_unavailable");
    }
}
