//! The form of each grant and client authentication method, built from real config
//! text and real secret files.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::{CredentialSpec, load_str};
use crate::test_keys::{Kind, generate};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

fn spec(credential: &str) -> CredentialSpec {
    let toml = format!(
        "[state]\ndir = \"/nonexistent\"\n[credentials.x]\ntoken_url = \"https://idp.test/oauth/token\"\n{credential}"
    );
    load_str(&toml).unwrap().credentials.remove(0)
}

fn build(
    spec: &CredentialSpec,
    refresh_token: Option<&str>,
) -> (Vec<(String, String)>, Option<String>) {
    let inputs = Inputs::read(spec).unwrap();
    let refresh_token = refresh_token.map(|t| SecretString::from(t.to_owned()));
    let url = "https://idp.test/oauth/token";
    let form = form(spec, &inputs, refresh_token.as_ref(), url).unwrap();
    let pairs = url::form_urlencoded::parse(form.body.as_bytes())
        .into_owned()
        .collect();
    (pairs, form.authorization)
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn secret_methods_put_the_client_where_they_say() {
    let post = spec(
        "client_id = \"c\"\nclient_secret = \"s\"\nclient_auth = \"client_secret_post\"\nrefresh_token = \"r\"\nscope = \"a b\"\n",
    );
    let inputs = Inputs::read(&post).unwrap();
    let url = "https://idp.test/oauth/token";
    let rt = SecretString::from("r t".to_owned());
    let body = form(&post, &inputs, Some(&rt), url).unwrap().body;
    assert_eq!(
        body,
        "grant_type=refresh_token&refresh_token=r+t&scope=a+b&client_id=c&client_secret=s"
    );
    let basic = spec("client_id = \"c\"\nclient_secret = \"s\"\nrefresh_token = \"r\"\n");
    let (pairs, authorization) = build(&basic, Some("r"));
    assert!(param(&pairs, "client_secret").is_empty() && param(&pairs, "client_id").is_empty());
    assert!(authorization.unwrap().starts_with("Basic "));
}

#[test]
fn a_public_client_only_names_itself() {
    let public = spec("client_id = \"app\"\nclient_auth = \"none\"\nrefresh_token = \"r\"\n");
    let (pairs, authorization) = build(&public, Some("rt"));
    assert_eq!(authorization, None);
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["grant_type", "refresh_token", "client_id"]);
    assert_eq!(param(&pairs, "client_id"), ["app"]);
}

#[test]
fn token_exchange_reads_the_subject_token_fresh_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("token");
    std::fs::write(&subject, "subject-one\n").unwrap();
    let exchange = spec(&format!(
        "grant = \"token_exchange\"\nclient_id = \"c\"\nclient_auth = \"none\"\n\
         subject_token = {{ file = \"{}\" }}\nactor_token = \"actor\"\nactor_token_type = \"access_token\"\n\
         requested_token_type = \"urn:example:type\"\nresource = [\"https://a.test\", \"https://b.test\"]\naudience = \"api\"\n",
        subject.display()
    ));
    let (pairs, _) = build(&exchange, None);
    assert_eq!(param(&pairs, "grant_type"), [TOKEN_EXCHANGE]);
    assert_eq!(param(&pairs, "subject_token"), ["subject-one"]);
    assert_eq!(
        param(&pairs, "subject_token_type"),
        ["urn:ietf:params:oauth:token-type:jwt"]
    );
    assert_eq!(param(&pairs, "actor_token"), ["actor"]);
    assert_eq!(
        param(&pairs, "actor_token_type"),
        ["urn:ietf:params:oauth:token-type:access_token"]
    );
    assert_eq!(param(&pairs, "requested_token_type"), ["urn:example:type"]);
    assert_eq!(
        param(&pairs, "resource"),
        ["https://a.test", "https://b.test"]
    );
    assert_eq!(param(&pairs, "audience"), ["api"]);
    let before = Inputs::read(&exchange).unwrap().digest();
    std::fs::write(&subject, "subject-two").unwrap();
    let (pairs, _) = build(&exchange, None);
    assert_eq!(param(&pairs, "subject_token"), ["subject-two"]);
    assert_ne!(Inputs::read(&exchange).unwrap().digest(), before);
}

#[test]
fn private_key_jwt_signs_a_fresh_assertion_per_request() {
    let keys = generate(Kind::EcPkcs8);
    let signed = spec(&format!(
        "grant = \"client_credentials\"\nclient_id = \"svc\"\nclient_auth = \"private_key_jwt\"\n\
         private_key = {{ file = \"{}\" }}\nassertion_lifetime = \"90s\"\n",
        keys.private.display()
    ));
    let (first, authorization) = build(&signed, None);
    let (second, _) = build(&signed, None);
    assert_eq!(authorization, None);
    assert_eq!(
        param(&first, "client_assertion_type"),
        [CLIENT_ASSERTION_TYPE]
    );
    assert!(param(&first, "client_secret").is_empty());
    let a = claims(param(&first, "client_assertion")[0]);
    let b = claims(param(&second, "client_assertion")[0]);
    assert_eq!(
        (a["iss"].as_str(), a["sub"].as_str()),
        (Some("svc"), Some("svc"))
    );
    assert_eq!(a["aud"], "https://idp.test/oauth/token");
    assert_eq!(a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap(), 90);
    assert_ne!(a["jti"], b["jti"]);
}

#[test]
fn jwt_bearer_signs_or_forwards_the_assertion() {
    let keys = generate(Kind::RsaPkcs8);
    let signed = spec(&format!(
        "grant = \"jwt_bearer\"\nclient_id = \"svc@example\"\nclient_auth = \"none\"\n\
         private_key = {{ file = \"{}\" }}\nassertion_subject = \"user@example\"\n\
         assertion_claims = {{ scope = \"read\", Target = \"x\" }}\n",
        keys.private.display()
    ));
    let (pairs, _) = build(&signed, None);
    assert_eq!(param(&pairs, "grant_type"), [JWT_BEARER]);
    let c = claims(param(&pairs, "assertion")[0]);
    assert_eq!(
        (c["iss"].as_str(), c["sub"].as_str()),
        (Some("svc@example"), Some("user@example"))
    );
    assert_eq!(c["aud"], "https://idp.test/oauth/token");
    assert_eq!(
        (c["scope"].as_str(), c["Target"].as_str()),
        (Some("read"), Some("x"))
    );
    assert!(param(&pairs, "client_assertion").is_empty());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("assertion");
    std::fs::write(&file, "made.by.another-system\n").unwrap();
    let forwarded = spec(&format!(
        "grant = \"jwt_bearer\"\nclient_id = \"c\"\nclient_secret = \"s\"\nassertion = {{ file = \"{}\" }}\n",
        file.display()
    ));
    let (pairs, authorization) = build(&forwarded, None);
    assert_eq!(param(&pairs, "assertion"), ["made.by.another-system"]);
    assert!(authorization.is_some());
}

#[test]
fn unreadable_inputs_name_the_key_and_source_only() {
    let exchange = spec(
        "grant = \"token_exchange\"\nclient_id = \"c\"\nclient_auth = \"none\"\nsubject_token = { file = \"/nonexistent/token\" }\n",
    );
    let err = Inputs::read(&exchange).err().unwrap();
    assert!(
        matches!(
            err,
            InputError::Secret {
                key: "subject_token",
                source: crate::secret::SecretError::File { .. }
            }
        ),
        "{err}"
    );
    let err = err.to_string();
    assert!(
        err.starts_with("subject_token: ") && err.contains("/nonexistent/token"),
        "{err}"
    );
    let bad_key = spec(
        "grant = \"client_credentials\"\nclient_id = \"c\"\nclient_auth = \"private_key_jwt\"\nprivate_key = \"not-a-pem-secret\"\n",
    );
    let err = Inputs::read(&bad_key).err().unwrap();
    assert!(matches!(err, InputError::Key(_)), "{err}");
    let err = err.to_string();
    assert!(
        err.starts_with("private_key: ") && !err.contains("not-a-pem-secret"),
        "{err}"
    );
}

#[test]
fn the_digest_covers_every_setting_the_idp_sees_and_nothing_else() {
    let keys = generate(Kind::EcPkcs8);
    let base = format!(
        "grant = \"jwt_bearer\"\nclient_id = \"c\"\nclient_auth = \"private_key_jwt\"\n\
         private_key = {{ file = \"{}\" }}\nscope = \"a\"\n",
        keys.private.display()
    );
    let digest = |extra: &str| {
        Inputs::read(&spec(&format!("{base}{extra}")))
            .unwrap()
            .digest()
    };
    let plain = digest("");
    for changed in [
        "audience = \"api\"\n",
        "assertion_subject = \"someone\"\n",
        "assertion_audience = \"https://idp.test\"\n",
        "assertion_claims = { scope = \"x\" }\n",
        "key_id = \"k2\"\n",
        "signing_alg = \"ES256\"\n",
        "assertion_lifetime = \"2m\"\n",
    ] {
        assert_ne!(digest(changed), plain, "{changed}");
    }
    for unseen in [
        "required = false\n",
        "refresh_ratio = 0.5\n",
        "backoff_max = \"1m\"\n",
        "min_refresh_interval = \"9s\"\n",
    ] {
        assert_eq!(digest(unseen), plain, "{unseen}");
    }
    let scoped = spec(&base.replace("scope = \"a\"", "scope = \"b\""));
    assert_ne!(Inputs::read(&scoped).unwrap().digest(), plain);
    let client = spec(&base.replace("client_id = \"c\"", "client_id = \"d\""));
    assert_ne!(Inputs::read(&client).unwrap().digest(), plain);
    let mut elsewhere = spec(&base);
    if let Some(crate::config::Endpoint::TokenUrl(url)) = &mut elsewhere.endpoint {
        url.text = "https://IDP.test/oauth/token".into();
    }
    assert_ne!(Inputs::read(&elsewhere).unwrap().digest(), plain);
}
