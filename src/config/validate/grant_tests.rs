//! Every grant and client authentication combination: the good ones build the expected
//! spec, the impossible ones are refused naming the key to change.

#![allow(clippy::unwrap_used)]

use crate::config::*;

const IDP: &str = "token_url = \"https://idp.test/token\"\n";

fn load(credential: &str) -> Result<CredentialSpec, String> {
    let toml = format!("[state]\ndir = \"/nonexistent\"\n[credentials.x]\n{credential}");
    load_str(&toml)
        .map(|mut c| c.credentials.remove(0))
        .map_err(|p| p.to_string())
}

#[test]
fn good_combinations_build_the_expected_spec() {
    let x = load(&format!("{IDP}grant = \"token_exchange\"\nclient_id = \"c\"\nclient_auth = \"none\"\nsubject_token = {{ file = \"/t\" }}\nresource = \"https://api.test\"\n")).unwrap();
    assert_eq!(x.client_auth, ClientAuth::None);
    let Grant::TokenExchange(exchange) = &x.grant else {
        panic!("{:?}", x.grant)
    };
    assert_eq!(exchange.subject_token_type, TOKEN_TYPE_JWT);
    assert_eq!(exchange.resource, ["https://api.test"]);
    assert_eq!(exchange.actor_token_type, None);

    let x = load(&format!("{IDP}grant = \"token_exchange\"\nclient_id = \"c\"\nclient_secret = \"s\"\nsubject_token = \"t\"\nsubject_token_type = \"id_token\"\nactor_token = \"a\"\n")).unwrap();
    assert_eq!(
        x.client_auth,
        ClientAuth::Basic,
        "a secret means Basic by default"
    );
    let Grant::TokenExchange(exchange) = &x.grant else {
        panic!()
    };
    assert_eq!(
        exchange.subject_token_type,
        "urn:ietf:params:oauth:token-type:id_token"
    );
    assert_eq!(exchange.actor_token_type.as_deref(), Some(TOKEN_TYPE_JWT));

    let x = load(&format!("{IDP}grant = \"jwt_bearer\"\nclient_id = \"svc\"\nprivate_key = {{ file = \"/k\" }}\nsigning_alg = \"ES256\"\nkey_id = \"k1\"\n")).unwrap();
    let Grant::JwtBearer(JwtBearer::Signed(signed)) = &x.grant else {
        panic!()
    };
    assert_eq!(
        (
            signed.issuer.as_str(),
            signed.subject.as_str(),
            signed.audience.as_deref()
        ),
        ("svc", "svc", None)
    );
    let key = x.private_key.unwrap();
    assert_eq!(
        (key.alg, key.key_id.as_deref(), key.lifetime.as_secs()),
        (Some(SigningAlg::Es256), Some("k1"), 300)
    );

    let x = load(&format!("{IDP}grant = \"client_credentials\"\nclient_id = \"c\"\nclient_auth = \"private_key_jwt\"\nprivate_key = {{ env = \"KEY\" }}\n")).unwrap();
    assert_eq!(x.client_auth, ClientAuth::PrivateKeyJwt);

    let x = load("grant = \"exec\"\nexec.command = [\"/bin/echo\", \"tok\"]\nexec.env = { HOME = { env = \"HOME\" } }\n").unwrap();
    assert_eq!(x.endpoint, None);
    let Grant::Exec(exec) = &x.grant else {
        panic!()
    };
    assert_eq!(
        (exec.timeout.as_secs(), exec.format),
        (30, ExecFormat::Auto)
    );
    assert!(exec.env.contains_key("HOME"), "names keep their case");
}

#[test]
fn impossible_combinations_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "grant = \"client_credentials\"\nclient_id = \"c\"\nclient_auth = \"none\"\n",
            "client_auth",
            "public clients cannot use",
        ),
        (
            "grant = \"client_credentials\"\nclient_id = \"c\"\n",
            "client_secret",
            "is required",
        ),
        (
            "grant = \"client_credentials\"\nclient_id = \"c\"\nclient_auth = \"private_key_jwt\"\n",
            "private_key",
            "is required for client_auth = \"private_key_jwt\"",
        ),
        (
            "client_id = \"c\"\nrefresh_token = \"r\"\nclient_auth = \"client_secret_basic\"\n",
            "client_secret",
            "client_auth = \"none\"",
        ),
        (
            "client_id = \"c\"\nrefresh_token = \"r\"\nclient_secret = \"s\"\nclient_auth = \"none\"\n",
            "client_secret",
            "is not used with client_auth = \"none\"",
        ),
        (
            "client_id = \"c\"\nrefresh_token = \"r\"\nclient_secret = \"s\"\nprivate_key = \"k\"\n",
            "private_key",
            "is not used",
        ),
        (
            "client_id = \"c\"\nrefresh_token = \"r\"\nsigning_alg = \"RS256\"\n",
            "signing_alg",
            "only used with private_key",
        ),
        (
            "client_id = \"c\"\nrefresh_token = \"r\"\nclient_auth = \"private_key_jwt\"\nprivate_key = \"k\"\nsigning_alg = \"HS256\"\n",
            "signing_alg",
            "RS256 or ES256",
        ),
        (
            "client_id = \"c\"\nrefresh_token = \"r\"\nclient_auth = \"private_key_jwt\"\nprivate_key = \"k\"\nassertion_lifetime = \"2h\"\n",
            "assertion_lifetime",
            "between 10s and 1h",
        ),
        (
            "grant = \"token_exchange\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
            "subject_token",
            "is required",
        ),
        (
            "grant = \"token_exchange\"\nclient_id = \"c\"\nclient_secret = \"s\"\nsubject_token = \"t\"\nsubject_token_type = \"kubernetes\"\n",
            "subject_token_type",
            "neither a token type URI",
        ),
        (
            "grant = \"token_exchange\"\nclient_id = \"c\"\nclient_secret = \"s\"\nsubject_token = \"t\"\nactor_token_type = \"jwt\"\n",
            "actor_token_type",
            "only used with actor_token",
        ),
        (
            "grant = \"token_exchange\"\nclient_id = \"c\"\nclient_secret = \"s\"\nsubject_token = \"t\"\nresource = \"not a uri\"\n",
            "resource",
            "absolute URI",
        ),
        (
            "grant = \"token_exchange\"\nclient_id = \"c\"\nclient_secret = \"s\"\nsubject_token = \"t\"\nrefresh_token = \"r\"\n",
            "refresh_token",
            "is not used by grant = \"token_exchange\"",
        ),
        (
            "client_id = \"c\"\nclient_secret = \"s\"\nrefresh_token = \"r\"\nsubject_token = \"t\"\n",
            "subject_token",
            "is not used by grant = \"refresh_token\"",
        ),
        (
            "grant = \"jwt_bearer\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
            "assertion",
            "needs `assertion`",
        ),
        (
            "grant = \"jwt_bearer\"\nclient_id = \"c\"\nclient_secret = \"s\"\nassertion = \"a\"\nassertion_subject = \"u\"\n",
            "assertion_subject",
            "only used when the broker signs",
        ),
        (
            "grant = \"jwt_bearer\"\nclient_id = \"c\"\nclient_auth = \"none\"\nprivate_key = \"k\"\nassertion_claims = { exp = \"1\" }\n",
            "assertion_claims",
            "set by the broker",
        ),
        (
            "grant = \"exec\"\n",
            "exec",
            "is required for grant = \"exec\"",
        ),
        (
            "grant = \"exec\"\nexec.command = []\n",
            "exec.command",
            "needs the program",
        ),
        (
            "grant = \"exec\"\nexec.command = [\"/bin/true\"]\nexec.format = \"yaml\"\n",
            "exec.format",
            "auto, raw or json",
        ),
        (
            "grant = \"exec\"\nexec.command = [\"/bin/true\"]\nexec.timeout = \"0s\"\n",
            "exec.timeout",
            "more than 0s",
        ),
        (
            "grant = \"exec\"\nexec.command = [\"/bin/true\"]\nexec.env = { \"A=B\" = \"x\" }\n",
            "exec.env",
            "not a variable name",
        ),
        (
            "grant = \"exec\"\nexec.command = [\"/bin/true\"]\nclient_id = \"c\"\n",
            "client_id",
            "asks no identity provider",
        ),
        (
            "grant = \"exec\"\nexec.command = [\"/bin/true\"]\nexec.shell = true\n",
            "shell",
            "unknown field",
        ),
        (
            "client_id = \"c\"\nclient_secret = \"s\"\nrefresh_token = \"r\"\nexec.command = [\"/bin/true\"]\n",
            "exec",
            "is not used by grant = \"refresh_token\"",
        ),
        (
            "client_id = \"c\"\nrefresh_token = \"r\"\nclient_auth = \"tls_client_auth\"\n",
            "client_auth",
            "private_key_jwt or none",
        ),
    ];
    for (credential, key, message) in cases {
        let needs_idp = !credential.contains("grant = \"exec\"");
        let text = if needs_idp {
            format!("{IDP}{credential}")
        } else {
            (*credential).to_owned()
        };
        let err = load(&text)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"));
        let wanted = format!("credentials.x.{key}");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&wanted) && l.contains(message))
                || (*message == "unknown field" && err.contains(key)),
            "for\n{text}\nexpected `{wanted}: ...{message}...` in:\n{err}"
        );
    }
}
