//! The authorization code flow with PKCE (RFC 7636, S256) and a loopback redirect
//! (RFC 8252): build the authorization request, send the user's browser there, wait
//! for the redirect, redeem the code. `state` binds the redirect to this login; for
//! OpenID Connect a `nonce` binds the ID token to it too.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;

use crate::config::{CredentialSpec, EndpointUrl};
use crate::idp::{IdpClient, Inputs, LoginRequest, LoginTokens};

use super::discovery::{Endpoints, is_oidc};
use super::loopback::{Loopback, Reply};
use super::pkce::{self, Pkce};
use super::{LoginError, browser};

/// What the authorization request carries besides the endpoint.
pub struct Request<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scope: Option<&'a str>,
    pub state: &'a str,
    pub challenge: &'a str,
    pub nonce: Option<&'a str>,
    /// Some IdPs pick the API by an `audience` parameter.
    pub audience: Option<&'a str>,
}

/// The authorization URL: the endpoint (its own query kept) plus RFC 6749 4.1.1 and
/// RFC 7636 4.3 parameters.
pub fn authorization_url(endpoint: &EndpointUrl, request: &Request<'_>) -> Url {
    let mut url = endpoint.url.clone();
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", request.client_id)
            .append_pair("redirect_uri", request.redirect_uri);
        if let Some(scope) = request.scope {
            query.append_pair("scope", scope);
        }
        query
            .append_pair("state", request.state)
            .append_pair("code_challenge", request.challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(nonce) = request.nonce {
            query.append_pair("nonce", nonce);
        }
        if let Some(audience) = request.audience {
            query.append_pair("audience", audience);
        }
    }
    url
}

/// How the user reaches the authorization URL.
pub struct Options {
    pub open_browser: bool,
    /// The whole wait for the redirect.
    pub timeout: Duration,
}

/// Runs the flow up to the redeemed code. The browser's page waits in `Reply` until the
/// caller knows whether the chain was delivered; on any error here it is answered.
pub async fn login(
    idp: &IdpClient,
    spec: &CredentialSpec,
    inputs: &Inputs,
    endpoints: &Endpoints,
    options: &Options,
) -> Result<(LoginTokens, Reply), LoginError> {
    let endpoint = endpoints.authorization(&spec.name)?;
    let loopback = Loopback::bind(spec.login.redirect_port, &spec.login.redirect_path).await?;
    let redirect_uri = loopback.redirect_uri.clone();
    let pkce = Pkce::new();
    let state = pkce::random_value();
    let scope = endpoints.scope.as_deref();
    let nonce = is_oidc(scope).then(pkce::random_value);
    let request = Request {
        client_id: &spec.client_id,
        redirect_uri: &redirect_uri,
        scope,
        state: &state,
        challenge: &pkce.challenge,
        nonce: nonce.as_deref(),
        audience: spec.audience.as_deref(),
    };
    let url = authorization_url(endpoint, &request);
    show(url.as_str(), &redirect_uri, options.open_browser).await;
    let (code, reply) = loopback.wait(&state, options.timeout).await?;
    let redeem = LoginRequest::AuthorizationCode {
        code: &code,
        redirect_uri: &redirect_uri,
        code_verifier: &pkce.verifier,
    };
    let redeemed = redeem_checked(idp, spec, inputs, &endpoints.token, &redeem, nonce).await;
    match redeemed {
        Ok(tokens) => Ok((tokens, reply)),
        Err(e) => {
            reply.finish(Err(&e)).await;
            Err(e)
        }
    }
}

/// Redeems the code; with a `nonce`, an ID token in the answer must carry it.
async fn redeem_checked(
    idp: &IdpClient,
    spec: &CredentialSpec,
    inputs: &Inputs,
    token_url: &EndpointUrl,
    request: &LoginRequest<'_>,
    nonce: Option<String>,
) -> Result<LoginTokens, LoginError> {
    let tokens = idp
        .login_token(spec, inputs, token_url, request)
        .await
        .map_err(|e| LoginError::Idp(format!("redeeming the authorization code failed: {e}")))?;
    if let Some(nonce) = nonce {
        check_nonce(&tokens.body, &nonce)?;
    }
    Ok(tokens)
}

/// Prints the URL (always: the browser may open elsewhere, or not at all) and opens it.
async fn show(url: &str, redirect_uri: &str, open_browser: bool) {
    if open_browser {
        println!("Opening a browser to log in. If none opens, open this URL:\n\n    {url}\n");
        if let Err(why) = browser::open(url).await {
            println!("(the browser could not be opened: {why})\n");
        }
    } else {
        let port = Url::parse(redirect_uri)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or_default();
        println!(
            "Open this URL in a browser on this machine (over SSH, forward the port first: \
             ssh -L {port}:127.0.0.1:{port} ...):\n\n    {url}\n"
        );
    }
    println!("Waiting for the browser to come back to {redirect_uri} ...");
}

/// OIDC Core 3.1.3.7: an ID token, when the token endpoint returns one, must carry the
/// nonce of this login. Its signature is not checked: it came straight from the token
/// endpoint over TLS (3.1.3.7 item 6), and the broker does not use it.
pub fn check_nonce(body: &[u8], nonce: &str) -> Result<(), LoginError> {
    let mismatch = || {
        LoginError::Idp(
            "the ID token does not carry this login's nonce: the answer belongs to another login"
                .to_owned(),
        )
    };
    let Ok(response) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(());
    };
    let Some(id_token) = response.get("id_token").and_then(|t| t.as_str()) else {
        return Ok(());
    };
    let claims = id_token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .ok_or_else(mismatch)?;
    match claims.get("nonce").and_then(|n| n.as_str()) {
        Some(got) if pkce::same(nonce, got) => Ok(()),
        _ => Err(mismatch()),
    }
}

/// Whether a value is in the URL's query: for tests and callers that show it.
#[cfg(test)]
fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn the_authorization_url_carries_every_parameter_and_keeps_the_endpoint_s_query() {
        let endpoint = EndpointUrl {
            url: "https://idp.example/authorize?tenant=a%20b"
                .parse()
                .unwrap(),
            text: String::new(),
        };
        let pkce = Pkce::new();
        let url = authorization_url(
            &endpoint,
            &Request {
                client_id: "my client",
                redirect_uri: "http://127.0.0.1:5000/callback",
                scope: Some("openid offline_access"),
                state: "s&t=1",
                challenge: &pkce.challenge,
                nonce: Some("n1"),
                audience: None,
            },
        );
        for (name, value) in [
            ("tenant", "a b"),
            ("response_type", "code"),
            ("client_id", "my client"),
            ("redirect_uri", "http://127.0.0.1:5000/callback"),
            ("scope", "openid offline_access"),
            ("state", "s&t=1"),
            ("code_challenge", pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("nonce", "n1"),
        ] {
            assert_eq!(param(&url, name).as_deref(), Some(value), "{name} in {url}");
        }
        assert_eq!(param(&url, "audience"), None);
        assert!(!url.as_str().contains(pkce.verifier.expose_secret()));
    }

    fn id_token(claims: &str) -> Vec<u8> {
        let payload = URL_SAFE_NO_PAD.encode(claims);
        format!(r#"{{"access_token":"a","id_token":"e30.{payload}.sig"}}"#).into_bytes()
    }

    #[test]
    fn an_id_token_must_carry_this_login_s_nonce() {
        assert!(check_nonce(&id_token(r#"{"nonce":"n1"}"#), "n1").is_ok());
        for claims in [r#"{"nonce":"n2"}"#, r#"{}"#, r#"{"nonce":1}"#] {
            let e = check_nonce(&id_token(claims), "n1").unwrap_err();
            assert!(matches!(e, LoginError::Idp(_)), "{claims}");
        }
        assert!(
            check_nonce(br#"{"access_token":"a"}"#, "n1").is_ok(),
            "no ID token"
        );
        let garbled = br#"{"access_token":"a","id_token":"not-a-jwt"}"#;
        assert!(check_nonce(garbled, "n1").is_err());
    }
}
