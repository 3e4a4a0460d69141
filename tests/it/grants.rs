//! The grants beyond refresh tokens, end to end: token exchange and JWT bearer, the real
//! broker against the real dev IdP, keys made by openssl, secrets in files. Also the
//! helpers `client_auth` and `exec` share.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::failures::eventually;
use crate::harness::*;
use crate::test_keys::{Kind, generate, openssl};

/// A key pair made by openssl (`test_keys`, shared with the unit tests), copied to
/// `dir` as `NAME.key` and `NAME.pub`: `rsa` (PKCS#8), `rsa-pkcs1`, `ec` (PKCS#8) or
/// `ec-sec1`. Returns the private and public PEM paths.
pub fn keypair(dir: &Path, name: &str, kind: &str) -> (PathBuf, PathBuf) {
    let kind = match kind {
        "rsa" => Kind::RsaPkcs8,
        "rsa-pkcs1" => Kind::RsaPkcs1,
        "ec" => Kind::EcPkcs8,
        "ec-sec1" => Kind::EcSec1,
        other => panic!("unknown key kind {other}"),
    };
    let keys = generate(kind);
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::copy(&keys.private, &private).unwrap();
    std::fs::copy(&keys.public, &public).unwrap();
    (private, public)
}

/// An RS256 JWT signed by openssl itself: an assertion made by "another system".
pub fn openssl_jwt(key: &Path, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string());
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let dir = tempdir();
    let (data, sig) = (dir.path().join("data"), dir.path().join("sig"));
    std::fs::write(&data, &input).unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
        data.to_str().unwrap(),
    ]);
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(std::fs::read(sig).unwrap())
    )
}

/// A JWT-shaped subject token naming `sub`, like a service-account token.
pub fn subject_token(sub: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"cluster"}"#);
    let claims = json!({"sub": sub, "iss": "https://kubernetes.default.svc", "jti": rand_suffix()});
    let sig = URL_SAFE_NO_PAD.encode(rand_suffix());
    format!(
        "{header}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Replaces a file the way the kubelet and Secret volumes do: write aside, rename.
pub fn replace(path: &Path, content: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(aside, path).unwrap();
}

/// `GET /api/whoami` at the IdP with `token`.
pub async fn whoami(idp: &Idp, token: &str) -> Value {
    let response = client()
        .get(format!("{}/api/whoami", idp.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the IdP refused the token");
    response.json().await.unwrap()
}

/// `GET /token/NAME?min_ttl=1h`: always a new token, as lifetimes here are shorter.
pub async fn fresh(broker: &Broker, name: &str) -> reqwest::Response {
    broker.get(&format!("/token/{name}?min_ttl=1h")).await
}

/// Asserts that verbose logging was on (the broker at `RUST_LOG=trace`) and that no
/// secret reached the broker's logs, `other_logs`, its status, metrics or `/readyz`.
pub async fn assert_no_leak(broker: &Broker, other_logs: &str, secrets: &[&str]) {
    let logs = broker.proc.logs() + other_logs;
    let verbose = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"DEBUG\"") || l.contains("\"level\":\"TRACE\""))
        .count();
    assert!(
        verbose >= 5,
        "verbose logging was on: {verbose} debug and trace lines"
    );
    let readyz = client()
        .get(format!("{}/readyz", broker.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let surfaces = [
        ("the logs", logs),
        ("status", broker.status().await.to_string()),
        ("metrics", broker.metrics_text().await),
        ("/readyz", readyz),
    ];
    for secret in secrets {
        for (surface, text) in &surfaces {
            assert!(
                !text.contains(secret),
                "a secret leaked into {surface}: {}...",
                &secret[..12.min(secret.len())]
            );
        }
    }
}

pub async fn state_of(broker: &Broker, name: &str) -> Value {
    let status = broker.status().await;
    status["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_follows_the_rotated_subject_token_file() {
    let (pod_a, pod_b) = (subject_token("pod-a"), subject_token("pod-b"));
    let idp = Idp::start(&[
        "--access-ttl",
        "600s",
        "--subject-token",
        &pod_a,
        "--subject-token",
        &pod_b,
    ]);
    let dir = tempdir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{pod_a}\n")).unwrap();
    let config = base_config(dir.path())
        + &format!(
            r#"
[credentials.x]
grant = "token_exchange"
token_url = "{url}/token"
client_id = "dev-client"
client_secret = "dev-secret"
subject_token = {{ file = "{file}" }}
resource = ["https://api.example/a", "https://api.example/b"]
audience = "api"
bootstrap_poll = "200ms"
min_refresh_interval = "0s"
"#,
            url = idp.url,
            file = token_file.display()
        );
    let broker = Broker::start_with_env(dir.path(), &config, &[("RUST_LOG", "trace")]);
    let first = broker.access_token("x").await;
    assert_eq!(whoami(&idp, &first).await["sub"], "pod-a");

    // The kubelet rotates the projected token: the next exchange presents the new one.
    replace(&token_file, &pod_b);
    let second: Value = fresh(&broker, "x").await.json().await.unwrap();
    let second = second["access_token"].as_str().unwrap().to_owned();
    assert_eq!(whoami(&idp, &second).await["sub"], "pod-b");
    assert_eq!(idp.stat("token_exchange_grants").await, 2);

    // A subject token the IdP does not accept: refused, reported, the valid token kept.
    replace(&token_file, &subject_token("stranger"));
    let kept: Value = fresh(&broker, "x").await.json().await.unwrap();
    assert_eq!(kept["access_token"], second.as_str());
    let state = state_of(&broker, "x").await;
    assert_eq!(state["state"], "reauth_required", "{state}");
    let message = state["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("invalid_request"), "{message}");
    assert_eq!(idp.stat("invalid_request").await, 1);

    // The next rotation brings a good token again: the credential resumes by itself.
    replace(&token_file, &pod_a);
    eventually("the credential to resume", || async {
        state_of(&broker, "x").await["state"] != "reauth_required"
    })
    .await;
    let third: Value = fresh(&broker, "x").await.json().await.unwrap();
    assert_eq!(
        whoami(&idp, third["access_token"].as_str().unwrap()).await["sub"],
        "pod-a"
    );
    assert_eq!(idp.stat("token_exchange_grants").await, 3);

    assert_no_leak(
        &broker,
        &idp.proc.logs(),
        &[&pod_a, &pod_b, &first, &second],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_signed_by_the_broker_or_read_from_a_file() {
    let dir = tempdir();
    let (signer, public) = keypair(dir.path(), "bearer", "rsa-pkcs1");
    let idp = Idp::start(&[
        "--jwt-bearer-key",
        public.to_str().unwrap(),
        "--jwt-bearer-issuer",
        "batch-system",
        "--public-client-id",
        "spa",
    ]);
    let assertion_file = dir.path().join("assertion");
    let claims = |sub: &str| {
        json!({"iss": "batch-system", "sub": sub, "aud": format!("{}/token", idp.url),
               "exp": now_secs() + 600, "iat": now_secs(), "jti": rand_suffix()})
    };
    let first_assertion = openssl_jwt(&signer, &claims("nightly-job"));
    std::fs::write(&assertion_file, &first_assertion).unwrap();
    let key = signer.display();
    let url = &idp.url;
    let config = base_config(dir.path())
        + &format!(
            r#"
[credentials.signed]
grant = "jwt_bearer"
token_url = "{url}/token"
client_id = "spa"
client_auth = "none"
private_key = {{ file = "{key}" }}
assertion_issuer = "batch-system"
assertion_subject = "alice"

[credentials.file]
grant = "jwt_bearer"
token_url = "{url}/token"
client_id = "dev-client"
client_secret = "dev-secret"
assertion = {{ file = "{file}" }}
bootstrap_poll = "200ms"
required = false

[credentials.elsewhere]
grant = "jwt_bearer"
token_url = "{url}/token"
client_id = "spa"
client_auth = "none"
private_key = {{ file = "{key}" }}
assertion_issuer = "batch-system"
assertion_audience = "https://elsewhere.example/token"
required = false
"#,
            file = assertion_file.display()
        );
    let broker = Broker::start_with_env(dir.path(), &config, &[("RUST_LOG", "trace")]);
    let signed = broker.access_token("signed").await;
    let who = whoami(&idp, &signed).await;
    assert_eq!(
        (who["sub"].as_str(), who["client_id"].as_str()),
        (Some("alice"), Some("spa"))
    );
    let again: Value = fresh(&broker, "signed").await.json().await.unwrap();
    assert_ne!(
        again["access_token"],
        signed.as_str(),
        "a new assertion, a new token"
    );

    let from_file = broker.access_token("file").await;
    assert_eq!(whoami(&idp, &from_file).await["sub"], "nightly-job");
    // Asking again presents the same assertion: the IdP refuses the replay.
    let kept: Value = fresh(&broker, "file").await.json().await.unwrap();
    assert_eq!(
        kept["access_token"],
        from_file.as_str(),
        "the valid token is kept"
    );
    assert_eq!(state_of(&broker, "file").await["state"], "reauth_required");
    assert_eq!(idp.stat("assertion_replays").await, 1);
    // The other system writes a new assertion: the broker resumes with it.
    replace(
        &assertion_file,
        &openssl_jwt(&signer, &claims("nightly-job-2")),
    );
    eventually("the credential to resume", || async {
        state_of(&broker, "file").await["state"] != "reauth_required"
    })
    .await;
    let renewed: Value = fresh(&broker, "file").await.json().await.unwrap();
    let renewed = renewed["access_token"].as_str().unwrap();
    assert_eq!(whoami(&idp, renewed).await["sub"], "nightly-job-2");

    let response = broker.get("/token/elsewhere").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "reauth_required");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("invalid_grant") && message.contains("aud"),
        "{message}"
    );
    assert_eq!(idp.stat("jwt_bearer_grants").await, 4);

    let pem = std::fs::read_to_string(&signer).unwrap();
    let mut secrets = vec![first_assertion.as_str(), &signed, &from_file, renewed];
    secrets.extend(pem.lines().filter(|l| !l.starts_with("-----")));
    assert_no_leak(&broker, &idp.proc.logs(), &secrets).await;
}
