//! HTTP tests of DPoP at the dev IdP, driven through `router()` with `oneshot`: bound
//! tokens from the token endpoint, bound refresh tokens, nonces, and `/api/whoami`.

#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::http_tests::{Answer, basic, send};
use super::{DevIdp, DevIdpOptions};
use crate::dpop::{Key, ath};

/// The `Host` every request carries, so the endpoint's URLs are known.
const HOST: &str = "localhost:9";
const TOKEN_URL: &str = "http://localhost:9/token";
const WHOAMI_URL: &str = "http://localhost:9/api/whoami";

fn idp(edit: impl FnOnce(&mut DevIdpOptions)) -> DevIdp {
    let mut options = DevIdpOptions {
        initial_refresh_token: Some("first".to_owned()),
        ..DevIdpOptions::default()
    };
    edit(&mut options);
    DevIdp::new(options)
}

async fn token(idp: &DevIdp, body: &str, proofs: &[&str]) -> Answer {
    let mut request = Request::post("/token")
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, basic("dev-client", "dev-secret"))
        .body(Body::from(body.to_owned()))
        .unwrap();
    for proof in proofs {
        let value = proof.parse().unwrap();
        request.headers_mut().append("dpop", value);
    }
    send(idp, request).await
}

async fn client_credentials(idp: &DevIdp, key: Option<&Key>) -> Answer {
    let proof = key.map(|k| k.proof("POST", TOKEN_URL, None, None).unwrap());
    let proofs: Vec<&str> = proof.iter().map(String::as_str).collect();
    token(idp, "grant_type=client_credentials", &proofs).await
}

async fn refresh(idp: &DevIdp, refresh_token: &str, key: Option<&Key>) -> Answer {
    let body = format!("grant_type=refresh_token&refresh_token={refresh_token}");
    let proof = key.map(|k| k.proof("POST", TOKEN_URL, None, None).unwrap());
    let proofs: Vec<&str> = proof.iter().map(String::as_str).collect();
    token(idp, &body, &proofs).await
}

async fn whoami(idp: &DevIdp, authorization: &str, proof: Option<&str>) -> Answer {
    let mut request = Request::get("/api/whoami")
        .header(header::HOST, HOST)
        .header(header::AUTHORIZATION, authorization)
        .body(Body::empty())
        .unwrap();
    if let Some(proof) = proof {
        request.headers_mut().insert("dpop", proof.parse().unwrap());
    }
    send(idp, request).await
}

fn claims(access_token: &str) -> Value {
    let payload = access_token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn error(answer: &Answer) -> String {
    answer.json()["error"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn a_proof_gets_a_dpop_token_bound_to_its_key() {
    let idp = idp(|_| {});
    let key = Key::generate().unwrap();
    let bound = client_credentials(&idp, Some(&key)).await;
    assert_eq!(bound.status, StatusCode::OK, "{:?}", bound.json());
    assert_eq!(bound.json()["token_type"], "DPoP");
    let access = bound.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&access)["cnf"]["jkt"], key.thumbprint().as_str());
    let bearer = client_credentials(&idp, None).await;
    assert_eq!(bearer.json()["token_type"], "Bearer");
    let access = bearer.json()["access_token"].as_str().unwrap().to_owned();
    assert!(claims(&access).get("cnf").is_none());
    let stats = idp.stats();
    assert_eq!(stats.dpop_token_requests, 1);
    assert_eq!(stats.dpop_proof_rejections, 0);
}

#[tokio::test]
async fn a_bad_or_replayed_proof_is_refused_before_anything_is_issued() {
    let idp = idp(|_| {});
    let key = Key::generate().unwrap();
    let elsewhere = key
        .proof("POST", "http://localhost:9/other", None, None)
        .unwrap();
    let answer = token(
        &idp,
        "grant_type=refresh_token&refresh_token=first",
        &[&elsewhere],
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&answer), "invalid_dpop_proof");
    assert!(
        answer.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("htu")
    );
    // The refresh token was not used up by the refused request.
    let proof = key.proof("POST", TOKEN_URL, None, None).unwrap();
    let body = "grant_type=refresh_token&refresh_token=first";
    assert_eq!(token(&idp, body, &[&proof]).await.status, StatusCode::OK);
    let body = "grant_type=client_credentials";
    assert_eq!(
        error(&token(&idp, body, &[&proof]).await),
        "invalid_dpop_proof"
    );
    let two = [proof.as_str(), proof.as_str()];
    assert_eq!(error(&token(&idp, body, &two).await), "invalid_dpop_proof");
    assert_eq!(
        error(&token(&idp, body, &["not.a.proof"]).await),
        "invalid_dpop_proof"
    );
    let stats = idp.stats();
    assert_eq!(
        (stats.dpop_proof_rejections, stats.dpop_token_requests),
        (4, 1)
    );
    assert_eq!(stats.refresh_grants, 1);
}

#[tokio::test]
async fn a_refresh_token_issued_with_a_proof_needs_that_key() {
    let idp = idp(|_| {});
    let (key, other) = (Key::generate().unwrap(), Key::generate().unwrap());
    let first = refresh(&idp, "first", Some(&key)).await;
    assert_eq!(first.json()["token_type"], "DPoP");
    let successor = first.json()["refresh_token"].as_str().unwrap().to_owned();
    for attempt in [None, Some(&other)] {
        let refused = refresh(&idp, &successor, attempt).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(error(&refused), "invalid_grant");
        assert!(
            refused.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("DPoP")
        );
    }
    // Neither refusal used the token up or revoked its family.
    let again = refresh(&idp, &successor, Some(&key)).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.json());
    assert_eq!(idp.stats().reuse_detected, 0);
}

#[tokio::test]
async fn a_family_refreshed_without_proofs_stays_bearer() {
    let idp = idp(|_| {});
    let first = refresh(&idp, "first", None).await;
    assert_eq!(first.json()["token_type"], "Bearer");
    let successor = first.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(refresh(&idp, &successor, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn with_dpop_nonce_a_proof_without_the_nonce_is_challenged() {
    let idp = idp(|o| o.dpop_nonce = true);
    let key = Key::generate().unwrap();
    let challenged = refresh(&idp, "first", Some(&key)).await;
    assert_eq!(challenged.status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&challenged), "use_dpop_nonce");
    let nonce = challenged.header("dpop-nonce".parse().unwrap()).to_owned();
    assert!(nonce.len() >= 16, "{nonce:?}");
    let proof = key.proof("POST", TOKEN_URL, None, Some(&nonce)).unwrap();
    let body = "grant_type=refresh_token&refresh_token=first";
    let answer = token(&idp, body, &[&proof]).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
    assert_eq!(answer.header("dpop-nonce".parse().unwrap()), nonce);
    let stats = idp.stats();
    assert_eq!((stats.dpop_nonce_challenges, stats.refresh_grants), (1, 1));
    assert_eq!(stats.dpop_proof_rejections, 0);
}

#[tokio::test]
async fn with_dpop_required_a_request_without_a_proof_is_refused() {
    let idp = idp(|o| o.dpop_required = true);
    let answer = client_credentials(&idp, None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&answer), "invalid_dpop_proof");
    let key = Key::generate().unwrap();
    assert_eq!(
        client_credentials(&idp, Some(&key)).await.status,
        StatusCode::OK
    );
}

/// A DPoP-bound access token of `key`.
async fn bound_token(idp: &DevIdp, key: &Key) -> String {
    let answer = client_credentials(idp, Some(key)).await;
    answer.json()["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn whoami_takes_a_bound_token_with_a_fresh_proof_of_its_key() {
    let idp = idp(|_| {});
    let (key, other) = (Key::generate().unwrap(), Key::generate().unwrap());
    let access = bound_token(&idp, &key).await;
    let auth = format!("DPoP {access}");
    let proof = key
        .proof("GET", WHOAMI_URL, Some(&ath(&access)), None)
        .unwrap();
    let ok = whoami(&idp, &auth, Some(&proof)).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.json());
    assert_eq!(ok.json()["client_id"], "dev-client");
    let challenge = |a: &Answer| a.header(header::WWW_AUTHENTICATE).to_owned();
    let replayed = whoami(&idp, &auth, Some(&proof)).await;
    assert_eq!(replayed.status, StatusCode::UNAUTHORIZED);
    assert!(challenge(&replayed).starts_with("DPoP error=\"invalid_dpop_proof\""));
    let no_ath = key.proof("GET", WHOAMI_URL, None, None).unwrap();
    assert_eq!(
        error(&whoami(&idp, &auth, Some(&no_ath)).await),
        "invalid_dpop_proof"
    );
    let wrong_key = other
        .proof("GET", WHOAMI_URL, Some(&ath(&access)), None)
        .unwrap();
    let answer = whoami(&idp, &auth, Some(&wrong_key)).await;
    assert!(challenge(&answer).starts_with("DPoP error=\"invalid_token\""));
    assert_eq!(
        error(&whoami(&idp, &auth, None).await),
        "invalid_dpop_proof"
    );
    assert_eq!(idp.stats().dpop_proof_rejections, 3);
}

#[tokio::test]
async fn a_bound_token_is_refused_as_bearer_and_bearer_tokens_still_work() {
    let idp = idp(|_| {});
    let key = Key::generate().unwrap();
    let access = bound_token(&idp, &key).await;
    let refused = whoami(&idp, &format!("Bearer {access}"), None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let challenge = refused.header(header::WWW_AUTHENTICATE);
    assert!(
        challenge.starts_with("DPoP error=\"invalid_token\""),
        "{challenge}"
    );
    let bearer = client_credentials(&idp, None).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ok = whoami(&idp, &format!("Bearer {bearer}"), None).await;
    assert_eq!(ok.status, StatusCode::OK);
    // An unbound token under the DPoP scheme is no bound token.
    let proof = key
        .proof("GET", WHOAMI_URL, Some(&ath(&bearer)), None)
        .unwrap();
    let answer = whoami(&idp, &format!("DPoP {bearer}"), Some(&proof)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error(&answer), "invalid_token");
}

#[tokio::test]
async fn whoami_demands_the_nonce_too() {
    let idp = idp(|o| o.dpop_nonce = true);
    let key = Key::generate().unwrap();
    let challenged = refresh(&idp, "first", Some(&key)).await;
    let nonce = challenged.header("dpop-nonce".parse().unwrap()).to_owned();
    let proof = key.proof("POST", TOKEN_URL, None, Some(&nonce)).unwrap();
    let body = "grant_type=client_credentials";
    let access = token(&idp, body, &[&proof]).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = format!("DPoP {access}");
    let hash = ath(&access);
    let bare = key.proof("GET", WHOAMI_URL, Some(&hash), None).unwrap();
    let answer = whoami(&idp, &auth, Some(&bare)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let challenge = answer.header(header::WWW_AUTHENTICATE);
    assert!(
        challenge.starts_with("DPoP error=\"use_dpop_nonce\""),
        "{challenge}"
    );
    let nonce = answer.header("dpop-nonce".parse().unwrap()).to_owned();
    let proof = key
        .proof("GET", WHOAMI_URL, Some(&hash), Some(&nonce))
        .unwrap();
    assert_eq!(
        whoami(&idp, &auth, Some(&proof)).await.status,
        StatusCode::OK
    );
    assert_eq!(idp.stats().dpop_nonce_challenges, 2);
}

#[tokio::test]
async fn discovery_lists_the_dpop_algorithms() {
    let idp = idp(|_| {});
    let request = Request::get("/.well-known/openid-configuration")
        .body(Body::empty())
        .unwrap();
    let algs = send(&idp, request).await.json()["dpop_signing_alg_values_supported"].clone();
    assert_eq!(algs, serde_json::json!(["ES256", "RS256"]));
}
