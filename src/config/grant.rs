//! How a credential gets its token, validated: the grant (with the inputs each one
//! needs), the client authentication method, and the private key the broker signs with.
//!
//! These are plain data; `config::validate` builds them and checks every combination,
//! `idp` turns them into a token request, and `exec` runs the command of `Grant::Exec`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::secret::SecretSource;

/// `urn:ietf:params:oauth:token-type:jwt`, the default `subject_token_type`: a
/// Kubernetes service-account token and most workload identities are JWTs.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The grant a credential uses, or the command that prints its token.
#[derive(Debug, Clone, PartialEq)]
pub enum Grant {
    /// RFC 6749 section 6: a rotating chain of refresh tokens.
    RefreshToken,
    /// RFC 6749 section 4.4: the client's own authentication is the grant.
    ClientCredentials,
    /// RFC 8693: trade a token the workload already has for one the API accepts.
    TokenExchange(TokenExchange),
    /// RFC 7523 section 2.1: a signed JWT is the grant.
    JwtBearer(JwtBearer),
    /// Not OAuth: a local command prints the token (cloud CLIs, custom scripts).
    Exec(Exec),
}

impl Grant {
    /// The config name, also shown in status.
    pub fn as_str(&self) -> &'static str {
        match self {
            Grant::RefreshToken => "refresh_token",
            Grant::ClientCredentials => "client_credentials",
            Grant::TokenExchange(_) => "token_exchange",
            Grant::JwtBearer(_) => "jwt_bearer",
            Grant::Exec(_) => "exec",
        }
    }
}

/// RFC 8693 parameters. The tokens are read from their sources at every exchange, so a
/// rotated file (a projected service-account token) is used as soon as it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenExchange {
    pub subject_token: SecretSource,
    /// A token type URI (short names in the config are expanded).
    pub subject_token_type: String,
    pub actor_token: Option<SecretSource>,
    pub actor_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    /// Zero or more `resource` parameters (RFC 8707 URIs of the target services).
    pub resource: Vec<String>,
}

/// Where a `jwt_bearer` assertion comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtBearer {
    /// A ready-made assertion, read at every request (another system writes it).
    Assertion(SecretSource),
    /// The broker signs a fresh assertion with `private_key` at every request.
    Signed(SignedAssertion),
}

/// The claims of an assertion the broker signs for the `jwt_bearer` grant.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedAssertion {
    pub issuer: String,
    pub subject: String,
    /// `None`: the token endpoint URL.
    pub audience: Option<String>,
    /// Extra string claims, e.g. Google's `scope`.
    pub claims: BTreeMap<String, String>,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic (RFC 6749 2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
    /// A fresh JWT signed with `private_key` (RFC 7523 2.2, OIDC Core 9).
    PrivateKeyJwt,
    /// A public client: only `client_id` in the body.
    None,
}

impl ClientAuth {
    /// The config name (OIDC's `token_endpoint_auth_method` values).
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
            ClientAuth::PrivateKeyJwt => "private_key_jwt",
            ClientAuth::None => "none",
        }
    }
}

/// JWS algorithms the broker signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA keys of 2048 bits or more.
    Rs256,
    /// ECDSA with P-256 and SHA-256.
    Es256,
}

impl SigningAlg {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Rs256 => "RS256",
            SigningAlg::Es256 => "ES256",
        }
    }
}

/// The key the broker signs client assertions and `jwt_bearer` assertions with.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateKey {
    /// PEM (PKCS#8, or PKCS#1 for RSA, or SEC1 for EC), read at every signature so a
    /// replaced key file is used at once.
    pub source: SecretSource,
    /// `None`: inferred from the key.
    pub alg: Option<SigningAlg>,
    /// The JWS `kid` header, when the IdP holds several keys for the client.
    pub key_id: Option<String>,
    /// `exp - iat` of every JWT signed with it.
    pub lifetime: Duration,
}

/// What the command's standard output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecFormat {
    /// JSON if it starts with `{`, else a raw token.
    Auto,
    /// The token itself, surrounding whitespace trimmed.
    Raw,
    /// A Kubernetes `ExecCredential` or an `{"access_token", "expires_in"}` object.
    Json,
}

/// A command that prints a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    /// Program and arguments, run without a shell.
    pub command: Vec<String>,
    /// The child's whole environment besides `PATH` (values are secret sources).
    pub env: BTreeMap<String, SecretSource>,
    /// The command and every process it started are killed when this passes.
    pub timeout: Duration,
    pub format: ExecFormat,
}

impl super::CredentialSpec {
    /// The grant's own secret sources: subject token, actor token, assertion.
    pub fn grant_sources(
        &self,
    ) -> (
        Option<&SecretSource>,
        Option<&SecretSource>,
        Option<&SecretSource>,
    ) {
        match &self.grant {
            Grant::TokenExchange(x) => (Some(&x.subject_token), x.actor_token.as_ref(), None),
            Grant::JwtBearer(JwtBearer::Assertion(source)) => (None, None, Some(source)),
            _ => (None, None, None),
        }
    }

    /// Every secret source of the credential with its key (below `credentials.NAME`),
    /// for `check-config --check-secrets` and the check of inline values; the private key is read (and parsed) by
    /// `idp::check_key` instead.
    pub fn secret_sources(&self) -> Vec<(String, &SecretSource)> {
        let mut sources: Vec<(String, &SecretSource)> = Vec::new();
        let optional = [
            ("client_secret", self.client_secret.as_ref()),
            ("refresh_token", self.refresh_token.as_ref()),
        ];
        let (subject, actor, assertion) = self.grant_sources();
        let by_grant = [
            ("subject_token", subject),
            ("actor_token", actor),
            ("assertion", assertion),
        ];
        for (key, source) in optional.into_iter().chain(by_grant) {
            if let Some(source) = source {
                sources.push((key.to_owned(), source));
            }
        }
        if let Grant::Exec(exec) = &self.grant {
            for (name, source) in &exec.env {
                sources.push((format!("exec.env.{name}"), source));
            }
        }
        for (i, source) in self.access.keys.iter().enumerate() {
            sources.push((format!("client_keys[{i}]"), source));
        }
        sources
    }
}
