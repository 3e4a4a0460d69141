//! Validation of client authentication and the private key: which method, whether it
//! has what it needs (a secret, a key), and whether a key or secret is set that nothing
//! would use.

use std::time::Duration;

use super::super::raw::RawCredential;
use super::Check;
use crate::config::{ClientAuth, Grant, JwtBearer, PrivateKey, SigningAlg};

/// The signing key, if `private_key` is set.
pub(super) fn private_key(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
) -> Option<PrivateKey> {
    let Some(source) = raw.private_key.clone() else {
        for (field, set) in [
            ("signing_alg", raw.signing_alg.is_some()),
            ("key_id", raw.key_id.is_some()),
            ("assertion_lifetime", raw.assertion_lifetime.is_some()),
        ] {
            if set {
                check.fail(key(field), "is only used with private_key");
            }
        }
        return None;
    };
    let alg = match raw.signing_alg.as_deref() {
        None => None,
        Some("RS256") => Some(SigningAlg::Rs256),
        Some("ES256") => Some(SigningAlg::Es256),
        Some(other) => {
            check.fail(
                key("signing_alg"),
                format!("unsupported algorithm `{other}`; expected RS256 or ES256"),
            );
            None
        }
    };
    if raw.key_id.as_deref() == Some("") {
        check.fail(key("key_id"), "must not be empty");
    }
    let lifetime = raw.assertion_lifetime.unwrap_or(Duration::from_secs(300));
    if !(Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&lifetime) {
        check.fail(key("assertion_lifetime"), "must be between 10s and 1h");
    }
    Some(PrivateKey {
        source,
        alg,
        key_id: raw.key_id.clone(),
        lifetime,
    })
}

/// The client authentication method, checked against the grant and the key.
pub(super) fn client_auth(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
    grant: &Grant,
    has_key: bool,
) -> ClientAuth {
    let Some(method) = method(check, key, raw) else {
        return ClientAuth::None;
    };
    if let Grant::Exec(_) = grant {
        return method;
    }
    needs(check, key, raw, method, has_key);
    if method == ClientAuth::None && *grant == Grant::ClientCredentials {
        if raw.client_auth.is_none() {
            check.fail(
                key("client_secret"),
                "is required for grant = \"client_credentials\" (or client_auth = \"private_key_jwt\" with a private_key)",
            );
        } else {
            check.fail(
                key("client_auth"),
                "\"none\" is a public client, and public clients cannot use grant = \"client_credentials\" (RFC 6749 section 4.4)",
            );
        }
    }
    let signs_assertion = matches!(grant, Grant::JwtBearer(JwtBearer::Signed(_)));
    if has_key && method != ClientAuth::PrivateKeyJwt && !signs_assertion {
        check.fail(
            key("private_key"),
            "is not used: set client_auth = \"private_key_jwt\", or grant = \"jwt_bearer\" without `assertion`",
        );
    }
    method
}

/// The method as written, or the default: Basic with a secret, a public client without.
fn method(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
) -> Option<ClientAuth> {
    match raw.client_auth.as_deref() {
        None if raw.client_secret.is_some() => Some(ClientAuth::Basic),
        None | Some("none") => Some(ClientAuth::None),
        Some("client_secret_basic") => Some(ClientAuth::Basic),
        Some("client_secret_post") => Some(ClientAuth::Post),
        Some("private_key_jwt") => Some(ClientAuth::PrivateKeyJwt),
        Some(other) => {
            check.fail(
                key("client_auth"),
                format!(
                    "unknown method `{other}`; expected client_secret_basic, client_secret_post, \
                     private_key_jwt or none"
                ),
            );
            None
        }
    }
}

/// What the method needs (a secret, a key) and what it would leave unused (a secret).
fn needs(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
    method: ClientAuth,
    has_key: bool,
) {
    let has_secret = raw.client_secret.is_some();
    let name = method.as_str();
    match method {
        ClientAuth::Basic | ClientAuth::Post if !has_secret => check.fail(
            key("client_secret"),
            format!(
                "is required for client_auth = \"{name}\" (a public client sets client_auth = \"none\")"
            ),
        ),
        ClientAuth::PrivateKeyJwt if !has_key => check.fail(
            key("private_key"),
            "is required for client_auth = \"private_key_jwt\" (a PEM RSA or EC P-256 key)",
        ),
        ClientAuth::PrivateKeyJwt | ClientAuth::None if has_secret => check.fail(
            key("client_secret"),
            format!("is not used with client_auth = \"{name}\"; remove it"),
        ),
        _ => {}
    }
}
