//! The OAuth2 token request as RFC 6749 defines it: form parameters, client
//! authentication (section 2.3.1), grant selection, and the error codes of section 5.2.
//!
//! Pure parsing, no state and no HTTP types: the handler hands in the raw body and the
//! `Authorization` header value, and the state decides whether the parsed request is
//! allowed. Everything here is strict on purpose, since the dev IdP exists to catch
//! clients that are sloppy.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::collections::HashMap;
use std::fmt;

use super::proofs::ProofRefusal;

/// A token endpoint error, carrying the RFC 6749 5.2 code and a fixed description.
///
/// Descriptions are static strings so an error can never echo a token or a secret back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The request is malformed (bad body, repeated or missing parameters).
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// Client authentication failed or was missing.
    #[error("{0}")]
    InvalidClient(&'static str),
    /// The refresh token is unknown, used up, or of a revoked family.
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// The requested scope exceeds the one originally granted.
    #[error("{0}")]
    InvalidScope(&'static str),
    /// A `grant_type` this IdP does not implement.
    #[error(
        "grant_type is not supported; use authorization_code, refresh_token, client_credentials, device_code, token exchange or jwt-bearer"
    )]
    UnsupportedGrantType,
    /// RFC 8628 3.5: the user has not yet approved or denied the device code.
    #[error("the user has not yet approved or denied this device code")]
    AuthorizationPending,
    /// RFC 8628 3.5: polled faster than the interval, which grows by 5 seconds.
    #[error("polling too fast; the interval for this device code grew by 5 seconds")]
    SlowDown,
    /// RFC 8628 3.5: the user denied the device code.
    #[error("the user denied this device code")]
    AccessDenied,
    /// RFC 8628 3.5: the device code outlived its `expires_in`.
    #[error("the device code has expired; start again")]
    ExpiredToken,
    /// RFC 9449 section 5: the DPoP proof is refused, or must carry a nonce.
    #[error("{0}")]
    Dpop(ProofRefusal),
}

impl TokenError {
    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::InvalidRequest(_) => "invalid_request",
            TokenError::InvalidClient(_) => "invalid_client",
            TokenError::InvalidGrant(_) => "invalid_grant",
            TokenError::InvalidScope(_) => "invalid_scope",
            TokenError::UnsupportedGrantType => "unsupported_grant_type",
            TokenError::AuthorizationPending => "authorization_pending",
            TokenError::SlowDown => "slow_down",
            TokenError::AccessDenied => "access_denied",
            TokenError::ExpiredToken => "expired_token",
            TokenError::Dpop(ProofRefusal::UseNonce) => "use_dpop_nonce",
            TokenError::Dpop(_) => "invalid_dpop_proof",
        }
    }

    /// The HTTP status: 401 for client authentication failures, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::InvalidClient(_) => 401,
            _ => 400,
        }
    }
}

/// Parameters RFC 8693 section 2.1 lets a token-exchange request repeat.
const REPEATABLE: &[&str] = &["resource", "audience"];

/// The form parameters of a token request, with empty values dropped as RFC 6749 3.1
/// requires ("parameters sent without a value MUST be treated as if they were omitted").
#[derive(Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses an `application/x-www-form-urlencoded` body. Repeated parameters are an
    /// `invalid_request` (RFC 6749 3.2), except `resource` and `audience` (RFC 8693),
    /// as is a body that is not UTF-8.
    pub fn parse(body: &[u8]) -> Result<Params, TokenError> {
        let malformed = TokenError::InvalidRequest("the body is not a valid form");
        std::str::from_utf8(body).map_err(|_| malformed.clone())?;
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|_| malformed)?;
        let mut map: HashMap<String, String> = HashMap::new();
        for (key, value) in pairs {
            if value.is_empty() {
                continue;
            }
            if map.contains_key(&key) {
                if REPEATABLE.contains(&key.as_str()) {
                    // Only the first is read.
                    continue;
                }
                return Err(TokenError::InvalidRequest("a parameter is repeated"));
            }
            map.insert(key, value);
        }
        Ok(Params(map))
    }

    /// The value of one parameter, if present and non-empty (the first, if repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// Client credentials as presented, whichever way they came.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The client id.
    pub id: String,
    /// The client secret; kept out of `Debug` so it cannot reach a log.
    pub secret: String,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Extracts the client credentials from the `Authorization` header or the body.
///
/// `Ok(None)` means none were presented; the state turns that into `invalid_client`
/// so it is counted like any other authentication failure. Presenting credentials in
/// both places is an `invalid_request`: RFC 6749 2.3 allows one method per request.
pub fn client_credentials(
    authorization: Option<&str>,
    params: &Params,
) -> Result<Option<ClientCredentials>, TokenError> {
    let body_id = params.get("client_id");
    let body_secret = params.get("client_secret");
    match authorization {
        Some(_) if body_id.is_some() || body_secret.is_some() => Err(TokenError::InvalidRequest(
            "use one client authentication method, not both",
        )),
        Some(header) => parse_basic(header).map(Some),
        None => Ok(body_id
            .zip(body_secret)
            .map(|(id, secret)| ClientCredentials {
                id: id.to_owned(),
                secret: secret.to_owned(),
            })),
    }
}

/// Decodes `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 2.3.1).
fn parse_basic(header: &str) -> Result<ClientCredentials, TokenError> {
    let bad = TokenError::InvalidClient("malformed Basic credentials");
    let (scheme, encoded) = header.trim().split_once(' ').ok_or(bad.clone())?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(TokenError::InvalidClient(
            "unsupported authentication scheme; use Basic",
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad.clone())?;
    let text = String::from_utf8(decoded).map_err(|_| bad.clone())?;
    let (id, secret) = text.split_once(':').ok_or(bad.clone())?;
    Ok(ClientCredentials {
        id: form_decode(id).ok_or(bad.clone())?,
        secret: form_decode(secret).ok_or(bad)?,
    })
}

/// Reverses `application/x-www-form-urlencoded` encoding of one value: `+` is a space
/// and `%XX` a byte. A truncated or non-hex escape, or non-UTF-8 bytes, give `None`.
fn form_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

/// The grants this IdP implements, with the parameters each needs.
#[derive(Clone, PartialEq, Eq)]
pub enum Grant {
    /// `grant_type=refresh_token` (RFC 6749 6).
    Refresh {
        /// The presented refresh token.
        refresh_token: String,
        /// A narrower scope, if the client asked for one.
        scope: Option<String>,
    },
    /// `grant_type=client_credentials` (RFC 6749 4.4).
    ClientCredentials {
        /// The requested scope, echoed back.
        scope: Option<String>,
    },
    /// RFC 8693 token exchange.
    TokenExchange(Exchange),
    /// RFC 7523 section 2.1: a signed JWT as the grant.
    JwtBearer {
        /// The presented assertion.
        assertion: String,
        /// The requested scope, echoed back.
        scope: Option<String>,
    },
    /// RFC 6749 4.1.3 with RFC 7636 4.5: an authorization code and its PKCE verifier.
    AuthorizationCode {
        /// The presented code.
        code: String,
        /// Must equal the `redirect_uri` of the authorization request.
        redirect_uri: String,
        /// The PKCE verifier whose S256 hash must equal the code's challenge.
        code_verifier: String,
    },
    /// RFC 8628 3.4: polling with a device code.
    DeviceCode {
        /// The presented device code.
        device_code: String,
    },
}

/// The parameters of an RFC 8693 token-exchange request.
#[derive(Clone, PartialEq, Eq)]
pub struct Exchange {
    pub subject_token: String,
    pub subject_token_type: String,
    pub actor_token: Option<(String, String)>,
    pub requested_token_type: Option<String>,
    pub scope: Option<String>,
}

/// `grant_type` of RFC 8693.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `grant_type` of RFC 7523 section 2.1.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `grant_type` of RFC 8628 section 3.4.
pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The refresh token stays out of Debug output so it cannot reach a log.
        f.write_str(self.label())
    }
}

impl Grant {
    /// Reads the grant from the parameters.
    pub fn parse(params: &Params) -> Result<Grant, TokenError> {
        let scope = params.get("scope").map(str::to_owned);
        match params.get("grant_type") {
            None => Err(TokenError::InvalidRequest("grant_type is required")),
            Some("refresh_token") => match params.get("refresh_token") {
                Some(token) => Ok(Grant::Refresh {
                    refresh_token: token.to_owned(),
                    scope,
                }),
                None => Err(TokenError::InvalidRequest("refresh_token is required")),
            },
            Some("client_credentials") => Ok(Grant::ClientCredentials { scope }),
            Some(TOKEN_EXCHANGE) => exchange(params, scope).map(Grant::TokenExchange),
            Some(JWT_BEARER) => match params.get("assertion") {
                Some(assertion) => Ok(Grant::JwtBearer {
                    assertion: assertion.to_owned(),
                    scope,
                }),
                None => Err(TokenError::InvalidRequest("assertion is required")),
            },
            Some("authorization_code") => authorization_code(params),
            Some(DEVICE_CODE) => match params.get("device_code") {
                Some(code) => Ok(Grant::DeviceCode {
                    device_code: code.to_owned(),
                }),
                None => Err(TokenError::InvalidRequest("device_code is required")),
            },
            Some(_) => Err(TokenError::UnsupportedGrantType),
        }
    }

    /// A fixed name for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Grant::Refresh { .. } => "refresh_token",
            Grant::ClientCredentials { .. } => "client_credentials",
            Grant::TokenExchange(_) => "token_exchange",
            Grant::JwtBearer { .. } => "jwt_bearer",
            Grant::AuthorizationCode { .. } => "authorization_code",
            Grant::DeviceCode { .. } => "device_code",
        }
    }
}

/// RFC 6749 4.1.3 and RFC 7636 4.5: the code, the redirect URI and the verifier are all
/// required (this IdP demands PKCE and a `redirect_uri` on every authorization request),
/// and the verifier must have RFC 7636 4.1's shape.
fn authorization_code(params: &Params) -> Result<Grant, TokenError> {
    let (Some(code), Some(redirect_uri), Some(code_verifier)) = (
        params.get("code"),
        params.get("redirect_uri"),
        params.get("code_verifier"),
    ) else {
        return Err(TokenError::InvalidRequest(
            "code, redirect_uri and code_verifier are required",
        ));
    };
    let unreserved = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
    if !(43..=128).contains(&code_verifier.len()) || !code_verifier.chars().all(unreserved) {
        return Err(TokenError::InvalidRequest(
            "code_verifier must be 43 to 128 unreserved characters (RFC 7636 4.1)",
        ));
    }
    Ok(Grant::AuthorizationCode {
        code: code.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        code_verifier: code_verifier.to_owned(),
    })
}

/// RFC 8693 section 2.1: the subject token and its type are required, an actor token
/// needs its type, and a type without its token is malformed too.
fn exchange(params: &Params, scope: Option<String>) -> Result<Exchange, TokenError> {
    let owned = |key: &str| params.get(key).map(str::to_owned);
    let (Some(subject_token), Some(subject_token_type)) =
        (owned("subject_token"), owned("subject_token_type"))
    else {
        return Err(TokenError::InvalidRequest(
            "subject_token and subject_token_type are required",
        ));
    };
    let actor_token = match (owned("actor_token"), owned("actor_token_type")) {
        (Some(token), Some(kind)) => Some((token, kind)),
        (None, None) => None,
        _ => {
            return Err(TokenError::InvalidRequest(
                "actor_token and actor_token_type go together",
            ));
        }
    };
    Ok(Exchange {
        subject_token,
        subject_token_type,
        actor_token,
        requested_token_type: owned("requested_token_type"),
        scope,
    })
}

/// A fixed name for the requested grant type, for logs: the raw parameter is client
/// input and is not echoed.
pub fn grant_label(params: &Params) -> &'static str {
    match params.get("grant_type") {
        Some("refresh_token") => "refresh_token",
        Some("client_credentials") => "client_credentials",
        Some(TOKEN_EXCHANGE) => "token_exchange",
        Some(JWT_BEARER) => "jwt_bearer",
        Some("authorization_code") => "authorization_code",
        Some(DEVICE_CODE) => "device_code",
        Some(_) => "other",
        None => "missing",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> String {
        format!("Basic {}", STANDARD.encode(raw))
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let params = Params::default();
        let creds = client_credentials(Some(&basic("my%3Aid:s+e%25c")), &params)
            .unwrap()
            .unwrap();
        assert_eq!(creds.id, "my:id");
        assert_eq!(creds.secret, "s e%c");
        assert!(!format!("{creds:?}").contains("s e%c"));
    }

    #[test]
    fn malformed_basic_is_invalid_client() {
        let params = Params::default();
        for header in [
            "Basic !!!",
            "Basic",
            "Bearer abc",
            &basic("nocolon"),
            &basic("a:%zz"),
        ] {
            let err = client_credentials(Some(header), &params).unwrap_err();
            assert_eq!(err.code(), "invalid_client", "{header}");
        }
    }

    #[test]
    fn both_methods_at_once_is_invalid_request() {
        let params = Params::parse(b"client_id=a&client_secret=b").unwrap();
        let err = client_credentials(Some(&basic("a:b")), &params).unwrap_err();
        assert_eq!(err.code(), "invalid_request");
    }

    #[test]
    fn body_credentials_need_both_halves() {
        let params = Params::parse(b"client_id=a").unwrap();
        assert_eq!(client_credentials(None, &params).unwrap(), None);
        let params = Params::parse(b"client_id=a&client_secret=b").unwrap();
        assert!(client_credentials(None, &params).unwrap().is_some());
    }

    #[test]
    fn form_rules() {
        assert!(Params::parse(b"a=1&a=2").is_err());
        assert!(Params::parse(b"a=\xff").is_err());
        let params = Params::parse(b"a=&b=2").unwrap();
        assert_eq!(params.get("a"), None);
        assert_eq!(params.get("b"), Some("2"));
    }

    #[test]
    fn grant_selection() {
        let parse = |body: &[u8]| Grant::parse(&Params::parse(body).unwrap());
        assert_eq!(parse(b"").unwrap_err().code(), "invalid_request");
        assert_eq!(
            parse(b"grant_type=refresh_token").unwrap_err().code(),
            "invalid_request"
        );
        assert_eq!(
            parse(b"grant_type=password").unwrap_err().code(),
            "unsupported_grant_type"
        );
        assert_eq!(
            parse(b"grant_type=client_credentials&scope=a+b").unwrap(),
            Grant::ClientCredentials {
                scope: Some("a b".to_owned())
            }
        );
    }
}
