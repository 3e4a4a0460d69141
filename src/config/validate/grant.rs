//! Validation of how a credential gets its token: the grant and the keys it owns, the
//! client authentication method, and the private key. Every impossible combination is
//! a problem naming the key to change (a key another grant owns, a public client asking
//! for `client_credentials`, `private_key_jwt` without a key, ...).

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::raw::{OneOrMany, RawCredential, RawExec};
use super::Check;
use crate::config::{
    ClientAuth, Exec, ExecFormat, Grant, JwtBearer, PrivateKey, SignedAssertion, SigningAlg,
    TOKEN_TYPE_JWT, TokenExchange,
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
        None | Some("refresh_token") => {
            if raw.refresh_token.is_none() {
                check.fail(
                    key("refresh_token"),
                    "is required for grant = \"refresh_token\"",
                );
            }
            Some(Grant::RefreshToken)
        }
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
    let resource = match &raw.resource {
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
    Some(JwtBearer::Signed(SignedAssertion {
        issuer,
        subject,
        audience,
        claims,
    }))
}

fn exec(check: &mut Check, key: &dyn Fn(&str) -> String, raw: Option<&RawExec>) -> Option<Exec> {
    let Some(raw) = raw else {
        check.fail(
            key("exec"),
            "is required for grant = \"exec\" (e.g. exec.command = [\"/usr/bin/gcloud\", \"auth\", \"print-access-token\"])",
        );
        return None;
    };
    let command = raw.command.clone().unwrap_or_default();
    if command.first().is_none_or(|program| program.is_empty()) {
        check.fail(
            key("exec.command"),
            "needs the program and its arguments, e.g. [\"/usr/local/bin/get-token\", \"--quiet\"]",
        );
    }
    if command.iter().any(|arg| arg.contains('\0')) {
        check.fail(key("exec.command"), "must not contain NUL characters");
    }
    let timeout = raw.timeout.unwrap_or(Duration::from_secs(30));
    if timeout.is_zero() {
        check.fail(key("exec.timeout"), "must be more than 0s");
    }
    let format = match raw.format.as_deref() {
        None | Some("auto") => ExecFormat::Auto,
        Some("raw") => ExecFormat::Raw,
        Some("json") => ExecFormat::Json,
        Some(other) => {
            check.fail(
                key("exec.format"),
                format!("unknown format `{other}`; expected auto, raw or json"),
            );
            ExecFormat::Auto
        }
    };
    let env = raw.env.clone().unwrap_or_default();
    for name in env.keys() {
        if name.is_empty() || name.contains(['=', '\0']) {
            check.fail(key("exec.env"), format!("`{name}` is not a variable name"));
        }
    }
    Some(Exec {
        command,
        env,
        timeout,
        format,
    })
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

fn private_key(
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

fn client_auth(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
    grant: &Grant,
    has_key: bool,
) -> ClientAuth {
    let has_secret = raw.client_secret.is_some();
    let method = match raw.client_auth.as_deref() {
        None if has_secret => ClientAuth::Basic,
        None => ClientAuth::None,
        Some("client_secret_basic") => ClientAuth::Basic,
        Some("client_secret_post") => ClientAuth::Post,
        Some("private_key_jwt") => ClientAuth::PrivateKeyJwt,
        Some("none") => ClientAuth::None,
        Some(other) => {
            check.fail(
                key("client_auth"),
                format!(
                    "unknown method `{other}`; expected client_secret_basic, client_secret_post, \
                     private_key_jwt or none"
                ),
            );
            return ClientAuth::None;
        }
    };
    if let Grant::Exec(_) = grant {
        return method;
    }
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

#[cfg(test)]
#[path = "grant_tests.rs"]
mod tests;
