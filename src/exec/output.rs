//! What an `exec` command may print: a raw token, a Kubernetes `ExecCredential`
//! (`status.token`, `status.expirationTimestamp`), or an OAuth-shaped object
//! (`access_token`, `expires_in` or `expires_at`, `token_type`; the Azure CLI's
//! `accessToken` / `expires_on` spelling too).
//!
//! The output is the token, so no error here quotes any of it: messages say which
//! field is missing or malformed, never what it held.

use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::config::ExecFormat;
use crate::idp::{TokenResponse, jwt_exp};

/// Parses the command's standard output.
pub(super) fn parse(stdout: &[u8], format: ExecFormat) -> Result<TokenResponse, String> {
    let text = std::str::from_utf8(stdout)
        .map_err(|_| "its output is not UTF-8".to_owned())?
        .trim();
    if text.is_empty() {
        return Err("it printed nothing".into());
    }
    let json = match format {
        ExecFormat::Json => true,
        ExecFormat::Raw => false,
        ExecFormat::Auto => text.starts_with('{'),
    };
    let response = if json { from_json(text)? } else { raw(text)? };
    if response
        .expires_at
        .is_some_and(|at| at <= SystemTime::now())
    {
        return Err("it printed a token that has already expired".into());
    }
    Ok(response)
}

fn raw(text: &str) -> Result<TokenResponse, String> {
    check_token(text, "its output")?;
    Ok(response(text, None, None, None))
}

fn from_json(text: &str) -> Result<TokenResponse, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| "its output is not valid JSON (format = \"json\")".to_owned())?;
    let Value::Object(object) = value else {
        return Err("its JSON output is not an object".into());
    };
    match object.get("status") {
        Some(Value::Object(status)) => exec_credential(&object, status),
        _ => oauth_shaped(&object),
    }
}

/// `client.authentication.k8s.io` `ExecCredential` (v1 and v1beta1 alike).
fn exec_credential(
    object: &Map<String, Value>,
    status: &Map<String, Value>,
) -> Result<TokenResponse, String> {
    if let Some(kind) = object.get("kind")
        && kind != "ExecCredential"
    {
        return Err("its JSON output has a `kind` other than ExecCredential".into());
    }
    let token = string(status, "token")
        .ok_or("the ExecCredential has no status.token (client certificates are not supported)")?;
    check_token(token, "status.token")?;
    let expires_at = match status.get("expirationTimestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            Some(rfc3339(text).ok_or("status.expirationTimestamp is not an RFC 3339 time")?)
        }
        Some(_) => return Err("status.expirationTimestamp is not a string".into()),
    };
    Ok(response(token, expires_at, None, None))
}

/// `{"access_token", "expires_in"|"expires_at", "token_type"?, "scope"?}`, or the
/// Azure CLI's `{"accessToken", "expires_on", "tokenType"}`.
fn oauth_shaped(object: &Map<String, Value>) -> Result<TokenResponse, String> {
    let token = string(object, "access_token")
        .or_else(|| string(object, "accessToken"))
        .ok_or("its JSON output has neither status.token nor access_token")?;
    check_token(token, "access_token")?;
    let now = SystemTime::now();
    let expires_at = if let Some(value) = object.get("expires_in") {
        let secs = seconds(value).ok_or("expires_in is not a number of seconds")?;
        Some(now + Duration::from_secs_f64(secs.min(1e9)))
    } else if let Some(value) = object
        .get("expires_at")
        .or_else(|| object.get("expires_on"))
    {
        Some(instant(value).ok_or("expires_at is neither an RFC 3339 time nor unix seconds")?)
    } else {
        None
    };
    let token_type = string(object, "token_type").or_else(|| string(object, "tokenType"));
    let scope = string(object, "scope");
    Ok(response(token, expires_at, token_type, scope))
}

fn response(
    token: &str,
    expires_at: Option<SystemTime>,
    token_type: Option<&str>,
    scope: Option<&str>,
) -> TokenResponse {
    TokenResponse {
        // No lifetime given: the JWT's `exp`, else the broker's `default_lifetime`.
        expires_at: expires_at.or_else(|| jwt_exp(token)),
        token_type: token_type.unwrap_or("Bearer").to_owned(),
        refresh_token: None,
        scope: scope.map(str::to_owned),
        access_token: SecretString::from(token.to_owned()),
    }
}

/// A token goes into HTTP headers: visible ASCII, no spaces.
fn check_token(token: &str, what: &str) -> Result<(), String> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} is not one token: it must be visible ASCII without spaces or line breaks (format = \"raw\" expects the token alone)"
        ));
    }
    Ok(())
}

fn string<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object.get(key)?.as_str().filter(|s| !s.is_empty())
}

/// Non-negative seconds, as a number or a numeric string.
fn seconds(value: &Value) -> Option<f64> {
    let secs = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

/// An RFC 3339 time or unix seconds (not milliseconds: see `duration::unix_time`).
fn instant(value: &Value) -> Option<SystemTime> {
    match value {
        Value::String(s) if s.contains('-') => rfc3339(s),
        other => crate::duration::unix_time(seconds(other)?),
    }
}

/// RFC 3339 with `Z` or a numeric offset (`+02:00`), as Go and Kubernetes write it.
pub(super) fn rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if !text.is_ascii() {
        return None;
    }
    if let Some(base) = text.strip_suffix(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(base).ok();
    }
    let (base, offset) = text.split_at(text.len().checked_sub(6)?);
    let sign = offset.as_bytes()[0];
    let (hours, minutes) = offset[1..].split_once(':')?;
    let shift =
        Duration::from_secs(hours.parse::<u64>().ok()? * 3600 + minutes.parse::<u64>().ok()? * 60);
    let local = humantime::parse_rfc3339_weak(base).ok()?;
    match sign {
        b'+' => local.checked_sub(shift),
        b'-' => local.checked_add(shift),
        _ => None,
    }
}

#[cfg(test)]
#[path = "output_tests.rs"]
mod tests;
