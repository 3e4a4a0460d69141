//! The client side of OAuth2: one token request to an identity provider, and nothing else.
//!
//! This module knows RFC 6749 (grants, client authentication, success and error bodies)
//! and OIDC discovery. It knows nothing of caching, scheduling or single flight (that is
//! `broker`), and nothing of HTTP status codes served to our own clients (`server`).
//! Every failure is classified so the broker can decide whether a retry is safe:
//! `Rejected` (the IdP said no; retrying the same refresh token is pointless or harmful),
//! `Unavailable` (the request did not take effect; retry later), and `LostAnswer` (the
//! request may have rotated the refresh token, but its answer never arrived).
//!
//! Layout: `grant` builds the form of each grant and client authentication method,
//! `assertion` signs the JWTs some of them need, `response` reads the answer,
//! `fingerprint` recognises the inputs of a refused request again, `login` sends the
//! requests of a person's login (for `token-broker login`).

mod assertion;
pub mod dpop;
pub mod fingerprint;
mod grant;
mod login;
mod response;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use reqwest::Url;
use secrecy::SecretString;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::config::{CredentialSpec, Endpoint, EndpointUrl, IdpConfig, PrivateKey};
use crate::secret::ExposeSecret;

pub use assertion::{
    CLIENT_ASSERTION_TYPE, KeyError, SignError, SigningKey, claims as assertion_claims,
};
pub use grant::{DEVICE_CODE, InputError, Inputs, JWT_BEARER, LoginRequest, TOKEN_EXCHANGE};
pub use login::{DEFAULT_DEVICE_INTERVAL, DeviceAuthorization, Discovery, LoginTokens};
pub use response::{
    NotTokenResponse, TokenResponse, jwt_exp, parse_retry_after, success as parse_token_response,
};

/// Largest answer read from an IdP; a token response is a few KiB at most.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    /// The IdP refused: `invalid_grant`, `invalid_client` and the like.
    #[error("{code}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Rejected {
        /// The RFC 6749 error code, or `http_NNN` when the body carried none.
        code: String,
        description: Option<String>,
    },
    /// The request did not take effect (connect failure, 5xx, 429, discovery failure).
    #[error("{reason}")]
    Unavailable {
        reason: String,
        /// The IdP's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// The request was sent but no usable answer came back; the IdP may have rotated
    /// the refresh token anyway.
    #[error("request sent but no usable answer: {reason}")]
    LostAnswer { reason: String },
}

/// What to ask the token endpoint for.
pub struct TokenRequest<'a> {
    /// The credential: endpoint, grant, client and its authentication method.
    pub spec: &'a CredentialSpec,
    /// The secrets of this request, read just before it.
    pub inputs: &'a Inputs,
    /// The refresh token to send (`refresh_token` grant only).
    pub refresh_token: Option<&'a SecretString>,
    /// Asked right before the request goes out (after waiting for a permit): `false`
    /// sends nothing and answers `Unavailable` (the broker lost its right to send).
    pub before_send: Option<&'a (dyn Fn() -> bool + Sync)>,
    /// For a `dpop = true` credential: the key and the IdP's nonce.
    pub dpop: Option<dpop::Dpop<'a>>,
}

/// A shared HTTP client for every credential, with a global cap on calls in flight.
#[derive(Clone)]
pub struct IdpClient {
    http: reqwest::Client,
    /// Bounds concurrent IdP calls across all credentials.
    permits: Arc<Semaphore>,
    /// Discovered token endpoints by issuer; fetched once, kept for the process' life.
    discovered: Arc<Mutex<HashMap<Url, EndpointUrl>>>,
}

impl IdpClient {
    /// Builds the client. Redirects are not followed: a token request carries secrets.
    /// A form POST to one of the IdP's endpoints, with the client authentication header
    /// the form carries (if any); the caller adds the body and what else it needs.
    fn form_post(&self, url: &Url, authorization: Option<String>) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        match authorization {
            Some(authorization) => builder.header(reqwest::header::AUTHORIZATION, authorization),
            None => builder,
        }
    }

    pub fn new(config: &IdpConfig) -> Result<IdpClient, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("token-broker/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = read(path, "idp.ca_file")?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
            let mut pem = zeroize::Zeroizing::new(read(cert, "idp.client_cert")?);
            pem.extend_from_slice(b"\n");
            pem.extend_from_slice(&zeroize::Zeroizing::new(read(key, "idp.client_key")?));
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| ClientError::Identity(e.to_string()))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(IdpClient {
            http,
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            discovered: Arc::default(),
        })
    }

    /// Performs one token request: one HTTP request, or with DPoP two when the IdP
    /// answers the first with a nonce challenge.
    pub async fn request_token(&self, req: &TokenRequest<'_>) -> Result<TokenResponse, IdpError> {
        let endpoint = req.spec.endpoint.as_ref().ok_or(IdpError::Unavailable {
            reason: "this credential has no token endpoint".into(),
            retry_after: None,
        })?;
        let token_url = self.token_url(endpoint).await?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| IdpError::Unavailable {
                reason: "shutting down".into(),
                retry_after: None,
            })?;
        let htu = req
            .dpop
            .as_ref()
            .map(|_| dpop::htu(&token_url.url))
            .transpose()?;
        let first = self.send(req, &token_url, htu.as_deref()).await?;
        let Some(dpop) = &req.dpop else {
            return first.classify();
        };
        // RFC 9449 section 8: the IdP wants its nonce in the proof; the refused request
        // took no effect, so it goes once more, at once, with the nonce it just sent.
        if !(first.nonce_sent && first.wants_nonce()) {
            return first.classify_dpop();
        }
        debug!(
            nonce_known = dpop.nonce.get().is_some(),
            "the identity provider asked for a DPoP nonce; sending again with it"
        );
        self.send(req, &token_url, htu.as_deref())
            .await?
            .classify_dpop()
    }

    /// One HTTP request of a token request: form and proof made now (after the
    /// permit), so their `iat` do not age in a queue.
    async fn send(
        &self,
        req: &TokenRequest<'_>,
        token_url: &EndpointUrl,
        htu: Option<&str>,
    ) -> Result<Sent, IdpError> {
        if req.before_send.is_some_and(|still| !still()) {
            return Err(IdpError::Unavailable {
                reason: "the refresh lease was lost before the request went out; nothing was sent"
                    .into(),
                retry_after: None,
            });
        }
        // Built after discovery (signed assertions name the token endpoint as audience).
        let form = grant::form(req.spec, req.inputs, req.refresh_token, &token_url.text).map_err(
            |reason| IdpError::Unavailable {
                reason,
                retry_after: None,
            },
        )?;
        let mut builder = self.form_post(&token_url.url, form.authorization);
        if let (Some(dpop), Some(htu)) = (&req.dpop, htu) {
            builder = builder.header("DPoP", dpop.proof(htu)?);
        }
        let response = builder.body(form.body).send().await.map_err(send_error)?;
        let nonce_sent = req
            .dpop
            .as_ref()
            .is_some_and(|d| d.nonce.remember(response.headers()));
        Ok(Sent {
            answer: response::Answer::take(response).await,
            nonce_sent,
        })
    }

    async fn token_url(&self, endpoint: &Endpoint) -> Result<EndpointUrl, IdpError> {
        let issuer = match endpoint {
            Endpoint::TokenUrl(url) => return Ok(url.clone()),
            Endpoint::Issuer(issuer) => issuer,
        };
        if let Some(url) = self.lock_discovered().get(issuer) {
            return Ok(url.clone());
        }
        let url = response::discover(&self.http, issuer).await?;
        self.lock_discovered().insert(issuer.clone(), url.clone());
        Ok(url)
    }

    fn lock_discovered(&self) -> std::sync::MutexGuard<'_, HashMap<Url, EndpointUrl>> {
        // A panic elsewhere cannot leave this map inconsistent: inserts are single calls.
        self.discovered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One HTTP request's answer, and whether it carried a `DPoP-Nonce`.
struct Sent {
    answer: response::Answer,
    nonce_sent: bool,
}

impl Sent {
    fn classify(self) -> Result<TokenResponse, IdpError> {
        self.answer.classify()
    }

    /// A `use_dpop_nonce` refusal (RFC 9449 section 8).
    fn wants_nonce(&self) -> bool {
        self.answer.status == reqwest::StatusCode::BAD_REQUEST
            && self.answer.error_code().as_deref() == Some("use_dpop_nonce")
    }

    /// `classify`, except that a nonce demand left unmet (again, or without a nonce to
    /// use) is no refusal of the grant: nothing was spent, so it is retried later.
    fn classify_dpop(self) -> Result<TokenResponse, IdpError> {
        if !self.wants_nonce() {
            return self.classify();
        }
        Err(IdpError::Unavailable {
            reason: "the identity provider still asks for a DPoP nonce (use_dpop_nonce); \
                     nothing was spent, the request is sent again later"
                .into(),
            retry_after: self.answer.retry_after,
        })
    }
}

fn read(path: &std::path::Path, key: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Why the IdP client could not be made: its CA or client certificate files.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A configured file cannot be read.
    #[error("{key} {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The CA file holds no usable certificates.
    #[error("idp.ca_file {}: {reason}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        reason: String,
    },
    /// The client certificate and key do not make an identity.
    #[error("idp.client_cert / idp.client_key: not a PEM certificate and key ({0})")]
    Identity(String),
    /// The HTTP client itself cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Reads and parses a configured private key (for `check-config --check-secrets`).
pub fn check_key(key: &PrivateKey) -> Result<(), CheckKeyError> {
    let pem = key.source.read()?;
    SigningKey::from_pem(&pem, key.alg, key.key_id.clone())?;
    Ok(())
}

/// Why a configured private key did not check out: unreadable, or not a key.
#[derive(Debug, thiserror::Error)]
pub enum CheckKeyError {
    /// Its source cannot be read.
    #[error(transparent)]
    Read(#[from] crate::secret::SecretError),
    /// It does not parse as a key that can sign.
    #[error(transparent)]
    Key(#[from] assertion::KeyError),
}

/// RFC 6749 2.3.1: id and secret are form-encoded before they are joined and base64'd.
fn basic_auth(client_id: &str, secret: &SecretString) -> String {
    let pair = format!(
        "{}:{}",
        form_encode(client_id),
        form_encode(secret.expose_secret())
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A failure before any answer. A connect failure means the IdP never saw the request;
/// anything later (timeout, reset) may have reached it.
fn send_error(error: reqwest::Error) -> IdpError {
    let reason = describe(&error);
    if error.is_connect() || error.is_builder() {
        IdpError::Unavailable {
            reason,
            retry_after: None,
        }
    } else {
        IdpError::LostAnswer { reason }
    }
}

/// A short description of a transport error without URLs' query strings or bodies.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod request_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        let header = basic_auth("my client", &SecretString::from("p@ss:word".to_owned()));
        let encoded = header.strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "my+client:p%40ss%3Aword"
        );
    }
}
