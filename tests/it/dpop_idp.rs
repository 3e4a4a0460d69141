//! The dev IdP as a DPoP server (RFC 9449), driven over real sockets with proofs made
//! by the crate's own `dpop::Key`: bound tokens from client_credentials and
//! refresh_token, the nonce challenge, refresh tokens bound to their key, and
//! `/api/whoami` refusing replays and a bound token sent as bearer.

use reqwest::StatusCode;
use serde_json::Value;
use token_broker::dpop::{Key, ath};

use crate::harness::{Idp, client};

/// One answer of the IdP.
struct Answer {
    status: StatusCode,
    nonce: Option<String>,
    challenge: String,
    body: Value,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Answer {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (nonce, challenge) = (header("dpop-nonce"), header("www-authenticate"));
        Answer {
            status: response.status(),
            nonce,
            challenge: challenge.unwrap_or_default(),
            body: response.json().await.unwrap_or(Value::Null),
        }
    }

    fn text(&self, name: &str) -> String {
        self.body[name].as_str().unwrap_or_default().to_owned()
    }
}

/// `POST /token` with a proof of `key` (and `nonce`) for the URL as addressed.
async fn token(idp: &Idp, form: &str, key: Option<&Key>, nonce: Option<&str>) -> Answer {
    let url = format!("{}/token", idp.url);
    let mut request = client()
        .post(&url)
        .basic_auth("dev-client", Some("dev-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some(key) = key {
        request = request.header("dpop", key.proof("POST", &url, None, nonce).unwrap());
    }
    Answer::read(request.send().await.unwrap()).await
}

/// `GET /api/whoami` with `authorization` and an optional proof.
async fn whoami(idp: &Idp, authorization: &str, proof: Option<&str>) -> Answer {
    let mut request = client()
        .get(format!("{}/api/whoami", idp.url))
        .header("authorization", authorization);
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    Answer::read(request.send().await.unwrap()).await
}

/// The JWT claims of an access token.
fn claims(access_token: &str) -> Value {
    use base64::Engine as _;
    let payload = access_token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn client_credentials_with_a_proof_gives_a_token_whoami_takes_only_with_proofs() {
    let idp = Idp::start(&[]);
    let key = Key::generate().unwrap();
    let issued = token(&idp, "grant_type=client_credentials", Some(&key), None).await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.body);
    assert_eq!(issued.text("token_type"), "DPoP");
    let access = issued.text("access_token");
    assert_eq!(claims(&access)["cnf"]["jkt"], key.thumbprint().as_str());

    let whoami_url = format!("{}/api/whoami", idp.url);
    let proof = key
        .proof("GET", &whoami_url, Some(&ath(&access)), None)
        .unwrap();
    let auth = format!("DPoP {access}");
    let ok = whoami(&idp, &auth, Some(&proof)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.text("client_id"), "dev-client");

    let replayed = whoami(&idp, &auth, Some(&proof)).await;
    assert_eq!(replayed.status, StatusCode::UNAUTHORIZED);
    assert!(
        replayed
            .challenge
            .starts_with("DPoP error=\"invalid_dpop_proof\"")
    );

    let as_bearer = whoami(&idp, &format!("Bearer {access}"), None).await;
    assert_eq!(as_bearer.status, StatusCode::UNAUTHORIZED);
    assert!(
        as_bearer
            .challenge
            .starts_with("DPoP error=\"invalid_token\""),
        "{}",
        as_bearer.challenge
    );
    assert_eq!(idp.whoami(&access).await, 401);
    let stats = idp.stats().await;
    assert_eq!(stats["dpop_token_requests"], 1, "{stats}");
    assert_eq!(stats["dpop_proof_rejections"], 1, "{stats}");
}

#[tokio::test]
async fn a_refresh_token_issued_with_a_proof_refreshes_only_with_that_key() {
    let idp = Idp::start(&[]);
    let (key, other) = (Key::generate().unwrap(), Key::generate().unwrap());
    let form = |token: &str| format!("grant_type=refresh_token&refresh_token={token}");
    let first = token(&idp, &form(&idp.refresh_token), Some(&key), None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.text("token_type"), "DPoP");
    let successor = first.text("refresh_token");

    let stolen = token(&idp, &form(&successor), Some(&other), None).await;
    assert_eq!(stolen.status, StatusCode::BAD_REQUEST);
    assert_eq!(stolen.text("error"), "invalid_grant");
    let bare = token(&idp, &form(&successor), None, None).await;
    assert_eq!(bare.text("error"), "invalid_grant");

    let owner = token(&idp, &form(&successor), Some(&key), None).await;
    assert_eq!(owner.status, StatusCode::OK, "{}", owner.body);
    let access = owner.text("access_token");
    assert_eq!(claims(&access)["cnf"]["jkt"], key.thumbprint().as_str());
    let stats = idp.stats().await;
    assert_eq!(stats["refresh_grants"], 2, "{stats}");
    assert_eq!(stats["reuse_detected"], 0, "{stats}");
}

#[tokio::test]
async fn with_dpop_nonce_the_token_endpoint_and_whoami_challenge_once() {
    let idp = Idp::start(&["--dpop-nonce"]);
    let key = Key::generate().unwrap();
    let form = format!(
        "grant_type=refresh_token&refresh_token={}",
        idp.refresh_token
    );
    let challenged = token(&idp, &form, Some(&key), None).await;
    assert_eq!(challenged.status, StatusCode::BAD_REQUEST);
    assert_eq!(challenged.text("error"), "use_dpop_nonce");
    let nonce = challenged.nonce.expect("a DPoP-Nonce header");
    // The challenge used nothing up: the same refresh token works with the nonce.
    let issued = token(&idp, &form, Some(&key), Some(&nonce)).await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.body);
    assert_eq!(issued.text("token_type"), "DPoP");
    let access = issued.text("access_token");

    let url = format!("{}/api/whoami", idp.url);
    let hash = ath(&access);
    let auth = format!("DPoP {access}");
    let bare = key.proof("GET", &url, Some(&hash), None).unwrap();
    let refused = whoami(&idp, &auth, Some(&bare)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        refused
            .challenge
            .starts_with("DPoP error=\"use_dpop_nonce\"")
    );
    let nonce = refused.nonce.expect("a DPoP-Nonce header");
    let proof = key.proof("GET", &url, Some(&hash), Some(&nonce)).unwrap();
    let ok = whoami(&idp, &auth, Some(&proof)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let stats = idp.stats().await;
    assert_eq!(stats["dpop_nonce_challenges"], 2, "{stats}");
    assert_eq!(stats["refresh_grants"], 1, "{stats}");
}
