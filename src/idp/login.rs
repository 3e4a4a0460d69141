//! The IdP requests of a person's login, sent by `token-broker login` and never by the
//! broker: the discovery document's login endpoints, the device authorization request
//! (RFC 8628 3.1), and the token requests that redeem an authorization code
//! (RFC 6749 4.1.3 with PKCE) or poll for a device code (RFC 8628 3.4). They share the
//! broker's client, client authentication and answer classification: a device poll's
//! `authorization_pending` is an `IdpError::Rejected` like any OAuth error.

use std::fmt;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::grant::{LoginRequest, login_form};
use super::response::{Answer, parse_success, read_capped};
use super::{IdpClient, IdpError, Inputs, TokenResponse};
use crate::config::{CredentialSpec, EndpointUrl, checked_url};

/// RFC 8628 3.2: the polling interval when the IdP names none.
pub const DEFAULT_DEVICE_INTERVAL: Duration = Duration::from_secs(5);

/// What an issuer's metadata says about logging in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub token_endpoint: EndpointUrl,
    pub authorization_endpoint: Option<EndpointUrl>,
    pub device_authorization_endpoint: Option<EndpointUrl>,
    pub scopes_supported: Vec<String>,
}

/// A token response of a login: parsed, and its body exactly as received, which is
/// what the broker adopts (it may carry fields this client does not read).
pub struct LoginTokens {
    pub response: TokenResponse,
    pub body: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for LoginTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginTokens")
            .field("response", &self.response)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// The device authorization response (RFC 8628 3.2).
pub struct DeviceAuthorization {
    /// Secret: whoever holds it may redeem the approval.
    pub device_code: SecretString,
    /// Shown to the user, who types it at `verification_uri`.
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct DeviceBody {
    device_code: String,
    user_code: String,
    // Some IdPs still use the draft's name.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: serde_json::Value,
    interval: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Metadata {
    token_endpoint: String,
    authorization_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    scopes_supported: Option<Vec<String>>,
}

impl IdpClient {
    /// The issuer's metadata: OIDC discovery, else the RFC 8414 path.
    pub async fn discover_login(&self, issuer: &Url) -> Result<Discovery, IdpError> {
        let base = issuer.as_str().trim_end_matches('/');
        let oidc = format!("{base}/.well-known/openid-configuration");
        let found = match self.metadata(&oidc).await? {
            Some(found) => found,
            None => {
                let rfc8414 = rfc8414_url(issuer);
                self.metadata(&rfc8414)
                    .await?
                    .ok_or_else(|| unavailable(format!("no metadata at {oidc} nor {rfc8414}")))?
            }
        };
        let endpoint = |text: Option<String>| -> Result<Option<EndpointUrl>, IdpError> {
            let Some(text) = text else { return Ok(None) };
            let url = checked_url(&text).map_err(|e| unavailable(format!("discovery: {e}")))?;
            Ok(Some(EndpointUrl {
                url,
                text: text.trim().to_owned(),
            }))
        };
        Ok(Discovery {
            token_endpoint: endpoint(Some(found.token_endpoint))?
                .ok_or_else(|| unavailable("no token_endpoint".into()))?,
            authorization_endpoint: endpoint(found.authorization_endpoint)?,
            device_authorization_endpoint: endpoint(found.device_authorization_endpoint)?,
            scopes_supported: found.scopes_supported.unwrap_or_default(),
        })
    }

    /// One metadata document; `None` when there is none at `url` (404).
    async fn metadata(&self, url: &str) -> Result<Option<Metadata>, IdpError> {
        let fail = |reason: String| unavailable(format!("discovery at {url}: {reason}"));
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fail(super::describe(&e)))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status().as_u16())));
        }
        let body = read_capped(response).await.map_err(fail)?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|_| fail("not a metadata document with a token_endpoint".into()))
    }

    /// Asks for a device code and user code (RFC 8628 3.1).
    pub async fn device_authorization(
        &self,
        spec: &CredentialSpec,
        inputs: &Inputs,
        endpoint: &EndpointUrl,
        token_url: &EndpointUrl,
        scope: Option<&str>,
    ) -> Result<DeviceAuthorization, IdpError> {
        let request = LoginRequest::DeviceAuthorization { scope };
        let body = self
            .send_login(spec, inputs, endpoint, token_url, &request)
            .await?;
        let lost = |reason: &str| IdpError::LostAnswer {
            reason: format!("the device authorization answer {reason}"),
        };
        let parsed: DeviceBody =
            serde_json::from_slice(&body).map_err(|_| lost("is not the JSON of RFC 8628 3.2"))?;
        let seconds = |value: &serde_json::Value| match value {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        let expires_in = seconds(&parsed.expires_in).ok_or_else(|| lost("has no expires_in"))?;
        let interval = match &parsed.interval {
            None => DEFAULT_DEVICE_INTERVAL,
            Some(value) => {
                Duration::from_secs(seconds(value).ok_or_else(|| lost("has a bad interval"))?)
            }
        };
        Ok(DeviceAuthorization {
            device_code: SecretString::from(parsed.device_code),
            user_code: parsed.user_code,
            verification_uri: parsed.verification_uri,
            verification_uri_complete: parsed.verification_uri_complete,
            expires_in: Duration::from_secs(expires_in.min(86_400)),
            interval,
        })
    }

    /// Redeems an authorization code or polls for a device code: one token request.
    pub async fn login_token(
        &self,
        spec: &CredentialSpec,
        inputs: &Inputs,
        token_url: &EndpointUrl,
        request: &LoginRequest<'_>,
    ) -> Result<LoginTokens, IdpError> {
        let body = self
            .send_login(spec, inputs, token_url, token_url, request)
            .await?;
        let response = parse_success(&body)?;
        Ok(LoginTokens { response, body })
    }

    /// POSTs a login form to `url`; signed client assertions name `token_url` as
    /// their audience, as at every token request.
    async fn send_login(
        &self,
        spec: &CredentialSpec,
        inputs: &Inputs,
        url: &EndpointUrl,
        token_url: &EndpointUrl,
        request: &LoginRequest<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, IdpError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| unavailable("shutting down".into()))?;
        let form = login_form(spec, inputs, request, &token_url.text).map_err(unavailable)?;
        let response = self
            .form_post(&url.url, form.authorization)
            .body(form.body)
            .send()
            .await
            .map_err(super::send_error)?;
        Answer::take(response).await.success_body()
    }
}

fn unavailable(reason: String) -> IdpError {
    IdpError::Unavailable {
        reason,
        retry_after: None,
    }
}

/// RFC 8414 section 3: the well-known segment goes between the host and the issuer's
/// path (`https://h/t1` -> `https://h/.well-known/oauth-authorization-server/t1`).
fn rfc8414_url(issuer: &Url) -> String {
    let mut url = issuer.clone();
    let path = issuer.path().trim_end_matches('/');
    url.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    url.set_query(None);
    url.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc8414_path_puts_the_well_known_segment_before_the_issuer_path() {
        let url = |text| rfc8414_url(&Url::parse(text).unwrap());
        assert_eq!(
            url("https://idp.example"),
            "https://idp.example/.well-known/oauth-authorization-server"
        );
        assert_eq!(
            url("https://idp.example/tenant/1/"),
            "https://idp.example/.well-known/oauth-authorization-server/tenant/1"
        );
    }
}
