//! The authorization endpoint's rules: RFC 6749 4.1.1 requests, PKCE with S256 only
//! (RFC 7636), and redirect URIs matched exactly, with RFC 8252 7.3's any-port rule for
//! loopback IP literals. Pure: no state and no HTTP.
//!
//! RFC 6749 4.1.2.1 sorts the errors in two. A request whose client or redirect URI is
//! wrong must not be redirected (the URI could be an attacker's), so it is shown to the
//! user on a page; any other error goes back to the client's redirect URI with `error`
//! and `state`.

use super::clients::Clients;
use super::protocol::Params;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use url::Url;

/// A valid authorization request, waiting for the user's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The client that asked; the code is bound to it.
    pub client_id: String,
    /// Where the answer goes; the token request must repeat it exactly.
    pub redirect_uri: String,
    /// The requested scope, granted as asked.
    pub scope: Option<String>,
    /// The client's opaque value, passed back untouched.
    pub state: Option<String>,
    /// `BASE64URL(SHA256(code_verifier))`.
    pub code_challenge: String,
}

/// Why an authorization request is refused, and where the refusal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Shown to the user on a page, never redirected: the client or the redirect URI
    /// cannot be trusted.
    Page {
        error: &'static str,
        description: &'static str,
    },
    /// Sent back to the (registered) redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: &'static str,
    },
}

/// Checks an authorization request from the query (or the consent form) against the
/// known clients and the registered redirect URIs.
pub fn check(
    params: &Params,
    clients: &Clients,
    registered: &[String],
) -> Result<AuthRequest, AuthError> {
    let page = |description| AuthError::Page {
        error: "invalid_request",
        description,
    };
    let client_id = params
        .get("client_id")
        .ok_or(page("client_id is required"))?;
    let known = client_id == clients.id || clients.public_id.as_deref() == Some(client_id);
    if !known {
        return Err(page("unknown client_id"));
    }
    let redirect_uri = params
        .get("redirect_uri")
        .ok_or(page("redirect_uri is required"))?;
    if !redirect_allowed(registered, redirect_uri) {
        return Err(page(
            "redirect_uri is not registered (exact match; loopback IP literals on any port)",
        ));
    }
    let state = params.get("state").map(str::to_owned);
    let back = |error, description| AuthError::Redirect {
        redirect_uri: redirect_uri.to_owned(),
        state: state.clone(),
        error,
        description,
    };
    match params.get("response_type") {
        Some("code") => {}
        None => return Err(back("invalid_request", "response_type is required")),
        Some(_) => {
            return Err(back(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
    }
    let challenge = params.get("code_challenge").ok_or(back(
        "invalid_request",
        "code_challenge is required (PKCE with S256)",
    ))?;
    if params.get("code_challenge_method") != Some("S256") {
        // RFC 7636 4.3: a missing method means plain, which this IdP refuses.
        return Err(back(
            "invalid_request",
            "code_challenge_method must be S256; plain is refused",
        ));
    }
    if !is_s256_challenge(challenge) {
        return Err(back(
            "invalid_request",
            "code_challenge must be a 43-character base64url SHA-256 hash",
        ));
    }
    let scope = params.get("scope");
    if scope.is_some_and(|scope| !valid_scope(scope)) {
        return Err(back("invalid_scope", "scope is malformed"));
    }
    Ok(AuthRequest {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        scope: scope.map(str::to_owned),
        state,
        code_challenge: challenge.to_owned(),
    })
}

/// RFC 6749 3.3: space-separated tokens of printable ASCII other than `"` and `\`.
pub fn valid_scope(scope: &str) -> bool {
    let token_char = |c: char| c.is_ascii_graphic() && c != '"' && c != '\\';
    scope
        .split(' ')
        .all(|t| !t.is_empty() && t.chars().all(token_char))
}

/// An S256 challenge is the unpadded base64url of 32 bytes: 43 characters.
fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && URL_SAFE_NO_PAD
            .decode(challenge)
            .is_ok_and(|bytes| bytes.len() == 32)
}

/// `BASE64URL(SHA256(verifier))`, RFC 7636 4.2.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(verifier))
}

/// Whether `requested` may receive codes: equal to a registered URI, or both loopback
/// `http` URIs that differ only in the port (RFC 8252 7.3: a native app's port is
/// chosen at run time).
pub fn redirect_allowed(registered: &[String], requested: &str) -> bool {
    registered
        .iter()
        .any(|r| r == requested || same_loopback_but_port(r, requested))
}

fn same_loopback_but_port(registered: &str, requested: &str) -> bool {
    match (
        without_loopback_port(registered),
        without_loopback_port(requested),
    ) {
        (Some(registered), Some(requested)) => registered == requested,
        _ => false,
    }
}

/// A loopback `http` URI (127.0.0.1 or [::1]; `localhost` does not count, RFC 8252 8.3)
/// with its port taken out; `None` for any other URI. Compared as strings rather than
/// parsed URLs, so that nothing but the port may differ (no dot segments, no escapes).
fn without_loopback_port(uri: &str) -> Option<String> {
    let host = ["http://127.0.0.1", "http://[::1]"]
        .into_iter()
        .find(|host| uri.starts_with(host))?;
    let mut rest = &uri[host.len()..];
    if let Some(port_and_path) = rest.strip_prefix(':') {
        let digits = port_and_path
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(port_and_path.len());
        port_and_path[..digits].parse::<u16>().ok()?;
        rest = &port_and_path[digits..];
    }
    // The authority must end here: `http://127.0.0.1.example/` or `...@host` are not
    // loopback.
    let ends = rest.is_empty() || rest.starts_with(['/', '?']);
    ends.then(|| format!("{host}{rest}"))
}

/// The redirect URI with `pairs` added to its query (RFC 6749 4.1.2 keeps the query it
/// already has); `None` if it is not a URL, which `check` has already ruled out.
pub fn location(redirect_uri: &str, pairs: &[(&str, Option<&str>)]) -> Option<String> {
    let mut url = Url::parse(redirect_uri).ok()?;
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in pairs {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
    }
    Some(url.into())
}

/// A `--redirect-uri` value: an absolute URI without a fragment (RFC 6749 3.1.2).
pub fn parse_registered(text: &str) -> Result<String, String> {
    let url = Url::parse(text).map_err(|err| format!("not an absolute URI: {err}"))?;
    if url.fragment().is_some() {
        return Err("a redirect URI must not have a fragment".to_owned());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn registered() -> Vec<String> {
        vec![
            "http://127.0.0.1/callback".to_owned(),
            "http://[::1]:9000/cb".to_owned(),
            "https://app.example/cb".to_owned(),
        ]
    }

    #[test]
    fn loopback_redirects_match_on_any_port_others_exactly() {
        let allowed = |uri| redirect_allowed(&registered(), uri);
        assert!(allowed("http://127.0.0.1/callback"));
        assert!(allowed("http://127.0.0.1:53117/callback"));
        assert!(allowed("http://[::1]:1/cb"));
        assert!(allowed("http://127.0.0.1:80/callback"));
        assert!(!allowed("http://127.0.0.1:99999/callback"));
        assert!(!allowed("http://127.0.0.1.example:5/callback"));
        assert!(!allowed("http://127.0.0.1:5@evil.example/callback"));
        assert!(allowed("https://app.example/cb"));
        assert!(!allowed("https://app.example:8443/cb"), "not loopback");
        assert!(!allowed("https://app.example/cb/"));
        assert!(!allowed("http://127.0.0.1:5/callback/../callback"));
        assert!(!allowed("http://127.0.0.1:5/other"));
        assert!(!allowed("http://127.0.0.1:5/callback?x=1"));
        assert!(
            !allowed("http://localhost:5/callback"),
            "names do not count"
        );
        assert!(!allowed("https://127.0.0.1:5/callback"), "http only");
        assert!(!allowed("http://127.0.0.2:5/callback"));
        assert!(!allowed("not a uri"));
    }

    #[test]
    fn s256_is_the_rfc_7636_example() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            s256(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(is_s256_challenge(&s256(verifier)));
        for bad in [
            &verifier[..42],
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM",
            "plain",
        ] {
            assert!(!is_s256_challenge(bad), "{bad}");
        }
    }

    #[test]
    fn scopes_and_registered_uris() {
        assert!(valid_scope("openid offline_access"));
        assert!(!valid_scope("a  b") && !valid_scope("a\"b") && !valid_scope(""));
        assert!(parse_registered("http://127.0.0.1/cb").is_ok());
        assert!(parse_registered("http://127.0.0.1/cb#x").is_err());
        assert!(parse_registered("/cb").is_err());
        let at = location("https://app.example/cb?keep=1", &[("code", Some("a b"))]);
        assert_eq!(at.unwrap(), "https://app.example/cb?keep=1&code=a+b");
    }
}
