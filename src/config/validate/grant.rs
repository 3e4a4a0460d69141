//! Validation of how a credential gets its token: the grant and the keys it owns (the
//! `exec` table in `exec`), then the client authentication and private key (`client`).
//! Every impossible combination is a problem naming the key to change (a key another
//! grant owns, a public client asking for `client_credentials`, `private_key_jwt`
//! without a key, ...).

use std::collections::BTreeMap;

use super::super::raw::{OneOrMany, RawCredential};
use super::Check;
use super::client::{client_auth, private_key};
use super::exec::exec;
use crate::config::{
    ClientAuth, Grant, JwtBearer, PrivateKey, SignedAssertion, TOKEN_TYPE_JWT, TokenExchange,
};

/// The validated grant, client authentication and signing key of one credential.
pub(super) struct Parts {
    pub grant: Grant,
    pub client_auth: ClientAuth,
    pub private_key: Option<PrivateKey>,
}

/// RFC 8693 section 3 token types, accepted by their short names.
const SHORT_TOKEN_TYPES: &[&str] = &[
    "jwt",
    "access_token",
    "refresh_token",
    "id_token",
    "saml1",
    "saml2",
];

/// Claims the broker sets itself on a signed assertion.
const RESERVED_CLAIMS: &[&str] = &["iss", "sub", "aud", "exp", "iat", "nbf", "jti"];

/// Checks the grant-related keys of `raw`; `None` when a problem was recorded.
pub(super) fn parts(check: &mut Check, name: &str, raw: &RawCredential) -> Option<Parts> {
    let before = check.problems.len();
    let key = |field: &str| format!("credentials.{name}.{field}");
    let private_key = private_key(check, &key, raw);
    let grant = grant(check, &key, raw, private_key.is_some())?;
    unused_keys(check, &key, raw, &grant);
    let client_auth = client_auth(check, &key, raw, &grant, private_key.is_some());
    (check.problems.len() == before).then_some(Parts {
        grant,
        client_auth,
        private_key,
    })
}

fn grant(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
    has_key: bool,
) -> Option<Grant> {
    match raw.grant.as_deref() {
        // Without a bootstrap token the credential waits in `login_required` until
        // `token-broker login` supplies a chain.
        None | Some("refresh_token") => Some(Grant::RefreshToken),
        Some("client_credentials") => Some(Grant::ClientCredentials),
        Some("token_exchange") => Some(Grant::TokenExchange(token_exchange(check, key, raw)?)),
        Some("jwt_bearer") => Some(Grant::JwtBearer(jwt_bearer(check, key, raw, has_key)?)),
        Some("exec") => Some(Grant::Exec(exec(check, key, raw.exec.as_ref())?)),
        Some(other) => {
            check.fail(
                key("grant"),
                format!(
                    "unknown grant `{other}`; expected refresh_token, client_credentials, \
                     token_exchange, jwt_bearer or exec"
                ),
            );
            None
        }
    }
}

fn token_exchange(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
) -> Option<TokenExchange> {
    let Some(subject_token) = raw.subject_token.clone() else {
        check.fail(
            key("subject_token"),
            "is required for grant = \"token_exchange\" (e.g. { file = \"/var/run/secrets/tokens/token\" })",
        );
        return None;
    };
    let mut token_type = |field: &str, value: Option<&String>| {
        value.map(|text| token_type_uri(check, &key(field), text))
    };
    let subject_token_type = token_type("subject_token_type", raw.subject_token_type.as_ref())
        .unwrap_or_else(|| TOKEN_TYPE_JWT.to_owned());
    let actor_token_type = token_type("actor_token_type", raw.actor_token_type.as_ref());
    let requested_token_type =
        token_type("requested_token_type", raw.requested_token_type.as_ref());
    if raw.actor_token.is_none() && actor_token_type.is_some() {
        check.fail(key("actor_token_type"), "is only used with actor_token");
    }
    let resource = resources(check, key, raw.resource.as_ref());
    Some(TokenExchange {
        subject_token,
        subject_token_type,
        actor_token_type: raw
            .actor_token
            .as_ref()
            .map(|_| actor_token_type.unwrap_or_else(|| TOKEN_TYPE_JWT.to_owned())),
        actor_token: raw.actor_token.clone(),
        requested_token_type,
        resource,
    })
}

/// The `resource` URIs, one or a list.
fn resources(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: Option<&OneOrMany>,
) -> Vec<String> {
    let resource = match raw {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one.clone()],
        Some(OneOrMany::Many(many)) => many.clone(),
    };
    for uri in &resource {
        if url::Url::parse(uri).is_err() {
            check.fail(
                key("resource"),
                format!("`{uri}` is not an absolute URI (RFC 8693 section 2.1)"),
            );
        }
    }
    resource
}

/// A token type URI, or a short name of RFC 8693 section 3 expanded to one.
fn token_type_uri(check: &mut Check, key: &str, text: &str) -> String {
    if SHORT_TOKEN_TYPES.contains(&text) {
        return format!("urn:ietf:params:oauth:token-type:{text}");
    }
    if !text.contains(':') || text.chars().any(char::is_whitespace) {
        check.fail(
            key,
            format!(
                "`{text}` is neither a token type URI nor one of {}",
                SHORT_TOKEN_TYPES.join(", ")
            ),
        );
    }
    text.to_owned()
}

fn jwt_bearer(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
    has_key: bool,
) -> Option<JwtBearer> {
    let signing_keys = [
        ("assertion_issuer", raw.assertion_issuer.is_some()),
        ("assertion_subject", raw.assertion_subject.is_some()),
        ("assertion_audience", raw.assertion_audience.is_some()),
        ("assertion_claims", raw.assertion_claims.is_some()),
    ];
    if let Some(source) = &raw.assertion {
        for (field, _) in signing_keys.iter().filter(|(_, set)| *set) {
            check.fail(
                key(field),
                "is only used when the broker signs the assertion; remove it or `assertion`",
            );
        }
        return Some(JwtBearer::Assertion(source.clone()));
    }
    if !has_key {
        check.fail(
            key("assertion"),
            "grant = \"jwt_bearer\" needs `assertion` (a ready-made JWT) or `private_key` \
             (the broker signs one)",
        );
        return None;
    }
    Some(JwtBearer::Signed(signed_assertion(check, key, raw)))
}

/// The claims of an assertion the broker signs, defaults filled in.
fn signed_assertion(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
) -> SignedAssertion {
    let non_empty = |check: &mut Check, field: &str, value: &Option<String>| {
        if value.as_deref() == Some("") {
            check.fail(key(field), "must not be empty");
        }
        value.clone().filter(|v| !v.is_empty())
    };
    let client_id = raw.client_id.clone().unwrap_or_default();
    let issuer = non_empty(check, "assertion_issuer", &raw.assertion_issuer).unwrap_or(client_id);
    let subject = non_empty(check, "assertion_subject", &raw.assertion_subject)
        .unwrap_or_else(|| issuer.clone());
    let audience = non_empty(check, "assertion_audience", &raw.assertion_audience);
    let claims: BTreeMap<String, String> = raw.assertion_claims.clone().unwrap_or_default();
    for claim in claims
        .keys()
        .filter(|c| RESERVED_CLAIMS.contains(&c.as_str()))
    {
        check.fail(
            key("assertion_claims"),
            format!("`{claim}` is set by the broker (use assertion_issuer, assertion_subject, assertion_audience or assertion_lifetime)"),
        );
    }
    SignedAssertion {
        issuer,
        subject,
        audience,
        claims,
    }
}

/// Keys that belong to another grant than the one chosen.
fn unused_keys(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
    grant: &Grant,
) {
    let owned: &[(&str, bool, &str)] = &[
        (
            "refresh_token",
            raw.refresh_token.is_some(),
            "refresh_token",
        ),
        (
            "subject_token",
            raw.subject_token.is_some(),
            "token_exchange",
        ),
        (
            "subject_token_type",
            raw.subject_token_type.is_some(),
            "token_exchange",
        ),
        ("actor_token", raw.actor_token.is_some(), "token_exchange"),
        (
            "actor_token_type",
            raw.actor_token_type.is_some(),
            "token_exchange",
        ),
        (
            "requested_token_type",
            raw.requested_token_type.is_some(),
            "token_exchange",
        ),
        ("resource", raw.resource.is_some(), "token_exchange"),
        ("assertion", raw.assertion.is_some(), "jwt_bearer"),
        (
            "assertion_issuer",
            raw.assertion_issuer.is_some(),
            "jwt_bearer",
        ),
        (
            "assertion_subject",
            raw.assertion_subject.is_some(),
            "jwt_bearer",
        ),
        (
            "assertion_audience",
            raw.assertion_audience.is_some(),
            "jwt_bearer",
        ),
        (
            "assertion_claims",
            raw.assertion_claims.is_some(),
            "jwt_bearer",
        ),
        ("exec", raw.exec.is_some(), "exec"),
    ];
    let name = grant.as_str();
    for (field, set, owner) in owned {
        if *set && *owner != name {
            check.fail(
                key(field),
                format!("is not used by grant = \"{name}\"; remove it"),
            );
        }
    }
    if let Grant::Exec(_) = grant {
        let idp_keys = [
            ("token_url", raw.token_url.is_some()),
            ("issuer", raw.issuer.is_some()),
            ("client_id", raw.client_id.is_some()),
            ("client_secret", raw.client_secret.is_some()),
            ("client_auth", raw.client_auth.is_some()),
            ("private_key", raw.private_key.is_some()),
            ("scope", raw.scope.is_some()),
            ("audience", raw.audience.is_some()),
        ];
        for (field, _) in idp_keys.iter().filter(|(_, set)| *set) {
            check.fail(
                key(field),
                "is not used by grant = \"exec\" (the command asks no identity provider); remove it",
            );
        }
    }
}

#[cfg(test)]
#[path = "grant_tests.rs"]
mod tests;
