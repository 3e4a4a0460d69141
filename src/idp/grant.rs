//! The form of one token request: the grant's parameters (RFC 6749, RFC 8693 token
//! exchange, RFC 7523 JWT bearer) and the client's authentication (HTTP Basic, secret in
//! the body, a signed client assertion, or a public client's bare `client_id`).
//!
//! `Inputs` holds the secrets of one request, read fresh from their sources just before
//! it (a rotated subject-token file or key is used at once); `form` turns the spec and
//! those inputs into the body and the `Authorization` header. Nothing here sends.

use secrecy::SecretString;

use super::assertion::{self, CLIENT_ASSERTION_TYPE, SigningKey};
use super::fingerprint::{Digest, Hasher};
use crate::config::{ClientAuth, CredentialSpec, Grant, JwtBearer, TokenExchange};
use crate::secret::{ExposeSecret, SecretError, SecretSource};

/// Why a request's inputs could not be read. Names the key and the source, never a
/// value.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The bootstrap refresh token cannot be read.
    #[error(transparent)]
    RefreshToken(SecretError),
    /// Another secret the request needs cannot be read.
    #[error("{key}: {source}")]
    Secret {
        key: &'static str,
        source: SecretError,
    },
    /// The private key does not parse.
    #[error("private_key: {0}")]
    Key(super::assertion::KeyError),
}

/// `grant_type` of RFC 8693.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `grant_type` of RFC 7523 section 2.1.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The secrets one token request needs, read from their sources.
pub struct Inputs {
    client_secret: Option<SecretString>,
    private_key: Option<SigningKey>,
    subject_token: Option<SecretString>,
    actor_token: Option<SecretString>,
    assertion: Option<SecretString>,
    /// A digest of every value above and of every setting that shapes the request, to
    /// notice that anything the IdP judges changed (kept in memory only).
    digest: Digest,
}

impl Inputs {
    /// Reads every secret `spec` needs. The error names the key and the source, never
    /// a value.
    pub fn read(spec: &CredentialSpec) -> Result<Inputs, InputError> {
        let mut digest = Hasher::new(spec);
        let mut read = |key: &'static str, source: Option<&SecretSource>| {
            let Some(source) = source else {
                return Ok(None);
            };
            let value = source
                .read()
                .map_err(|source| InputError::Secret { key, source })?;
            digest.part(key, value.expose_secret());
            Ok::<_, InputError>(Some(value))
        };
        let (subject, actor, assertion) = spec.grant_sources();
        let client_secret = read("client_secret", spec.client_secret.as_ref())?;
        let pem = read("private_key", spec.private_key.as_ref().map(|k| &k.source))?;
        let subject_token = read("subject_token", subject)?;
        let actor_token = read("actor_token", actor)?;
        let assertion = read("assertion", assertion)?;
        let private_key = match (pem, &spec.private_key) {
            (Some(pem), Some(key)) => Some(
                SigningKey::from_pem(&pem, key.alg, key.key_id.clone()).map_err(InputError::Key)?,
            ),
            _ => None,
        };
        Ok(Inputs {
            client_secret,
            private_key,
            subject_token,
            actor_token,
            assertion,
            digest: digest.finish(),
        })
    }

    /// Changes whenever any secret's value or any request-shaping setting changes.
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

/// A token request ready to send.
pub(super) struct Form {
    pub body: String,
    /// The `Authorization` header of `client_secret_basic`.
    pub authorization: Option<String>,
}

/// Builds the form for `spec`. `token_url` is the audience of signed assertions: the
/// token endpoint exactly as written.
pub(super) fn form(
    spec: &CredentialSpec,
    inputs: &Inputs,
    refresh_token: Option<&SecretString>,
    token_url: &str,
) -> Result<Form, String> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    grant_params(&mut form, spec, inputs, refresh_token, token_url)?;
    if let Some(scope) = &spec.scope {
        form.append_pair("scope", scope);
    }
    if let Some(audience) = &spec.audience {
        form.append_pair("audience", audience);
    }
    let authorization = client_params(&mut form, spec, inputs, token_url)?;
    Ok(Form {
        body: form.finish(),
        authorization,
    })
}

/// What a person's login sends (RFC 6749 4.1.3, RFC 8628 3.1 and 3.4); the broker never
/// sends these on its own. Client authentication is that of the credential's refreshes.
pub enum LoginRequest<'a> {
    /// Redeems the code the loopback redirect brought, with the PKCE verifier.
    AuthorizationCode {
        code: &'a SecretString,
        redirect_uri: &'a str,
        code_verifier: &'a SecretString,
    },
    /// Asks the device authorization endpoint for a user code.
    DeviceAuthorization { scope: Option<&'a str> },
    /// One poll of the token endpoint for an approved device code.
    DeviceCode { device_code: &'a SecretString },
}

/// RFC 8628 section 3.4.
pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Builds the form of a login request. The scope travels with the authorization (and
/// device authorization) request, not with the redemption (RFC 6749 4.1.3).
pub(super) fn login_form(
    spec: &CredentialSpec,
    inputs: &Inputs,
    request: &LoginRequest<'_>,
    token_url: &str,
) -> Result<Form, String> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    match request {
        LoginRequest::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => {
            form.append_pair("grant_type", "authorization_code");
            form.append_pair("code", code.expose_secret());
            form.append_pair("redirect_uri", redirect_uri);
            form.append_pair("code_verifier", code_verifier.expose_secret());
        }
        LoginRequest::DeviceAuthorization { scope } => {
            if let Some(scope) = scope {
                form.append_pair("scope", scope);
            }
            if let Some(audience) = &spec.audience {
                form.append_pair("audience", audience);
            }
        }
        LoginRequest::DeviceCode { device_code } => {
            form.append_pair("grant_type", DEVICE_CODE);
            form.append_pair("device_code", device_code.expose_secret());
        }
    }
    let authorization = client_params(&mut form, spec, inputs, token_url)?;
    Ok(Form {
        body: form.finish(),
        authorization,
    })
}

/// The client's authentication: added to the form, or returned as a Basic header.
fn client_params(
    form: &mut url::form_urlencoded::Serializer<'_, String>,
    spec: &CredentialSpec,
    inputs: &Inputs,
    token_url: &str,
) -> Result<Option<String>, String> {
    match (spec.client_auth, &inputs.client_secret) {
        (ClientAuth::Basic, Some(secret)) => {
            return Ok(Some(super::basic_auth(&spec.client_id, secret)));
        }
        (ClientAuth::Post, Some(secret)) => {
            form.append_pair("client_id", &spec.client_id);
            form.append_pair("client_secret", secret.expose_secret());
        }
        (ClientAuth::PrivateKeyJwt, _) => {
            let id = &spec.client_id;
            let claims = assertion::claims(id, id, token_url, lifetime(spec));
            form.append_pair("client_id", id);
            form.append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE);
            form.append_pair("client_assertion", sign(inputs, &claims)?.expose_secret());
        }
        // A public client (or one whose secret is missing) names itself.
        _ => {
            form.append_pair("client_id", &spec.client_id);
        }
    }
    Ok(None)
}

fn grant_params(
    form: &mut url::form_urlencoded::Serializer<'_, String>,
    spec: &CredentialSpec,
    inputs: &Inputs,
    refresh_token: Option<&SecretString>,
    token_url: &str,
) -> Result<(), String> {
    match &spec.grant {
        Grant::RefreshToken => {
            form.append_pair("grant_type", "refresh_token");
            let token = refresh_token.ok_or("no refresh token")?;
            form.append_pair("refresh_token", token.expose_secret());
        }
        Grant::ClientCredentials => {
            form.append_pair("grant_type", "client_credentials");
        }
        Grant::TokenExchange(exchange) => exchange_params(form, exchange, inputs)?,
        Grant::JwtBearer(bearer) => {
            form.append_pair("grant_type", JWT_BEARER);
            let assertion = match bearer {
                JwtBearer::Assertion(_) => inputs.assertion.clone().ok_or("no assertion")?,
                JwtBearer::Signed(signed) => {
                    let audience = signed.audience.as_deref().unwrap_or(token_url);
                    let mut claims = assertion::claims(
                        &signed.issuer,
                        &signed.subject,
                        audience,
                        lifetime(spec),
                    );
                    for (name, value) in &signed.claims {
                        claims.insert(name.clone(), serde_json::json!(value));
                    }
                    sign(inputs, &claims)?
                }
            };
            form.append_pair("assertion", assertion.expose_secret());
        }
        Grant::Exec(_) => return Err("an exec credential makes no token request".into()),
    }
    Ok(())
}

/// RFC 8693 section 2.1.
fn exchange_params(
    form: &mut url::form_urlencoded::Serializer<'_, String>,
    exchange: &TokenExchange,
    inputs: &Inputs,
) -> Result<(), String> {
    form.append_pair("grant_type", TOKEN_EXCHANGE);
    let subject = inputs.subject_token.as_ref().ok_or("no subject_token")?;
    form.append_pair("subject_token", subject.expose_secret());
    form.append_pair("subject_token_type", &exchange.subject_token_type);
    if let (Some(actor), Some(kind)) = (&inputs.actor_token, &exchange.actor_token_type) {
        form.append_pair("actor_token", actor.expose_secret());
        form.append_pair("actor_token_type", kind);
    }
    if let Some(kind) = &exchange.requested_token_type {
        form.append_pair("requested_token_type", kind);
    }
    for resource in &exchange.resource {
        form.append_pair("resource", resource);
    }
    Ok(())
}

fn sign(
    inputs: &Inputs,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<SecretString, String> {
    let key = inputs.private_key.as_ref().ok_or("no private_key")?;
    key.sign(claims).map_err(|e| e.to_string())
}

/// The lifetime of JWTs signed for `spec`.
fn lifetime(spec: &CredentialSpec) -> std::time::Duration {
    spec.private_key
        .as_ref()
        .map(|k| k.lifetime)
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "grant_tests.rs"]
mod tests;
