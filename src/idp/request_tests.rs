//! A whole token request through `IdpClient`, against a real local HTTP server that
//! records what it receives: where signed assertions get their audience, and when they
//! are signed.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;
use crate::config::load_str;
use crate::test_keys::{Kind, generate};

/// Serves `{"access_token"}` on every path and keeps each form body it got.
async fn recording_idp() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        seen.lock().unwrap().push(body);
        async { axum::Json(serde_json::json!({"access_token": "a", "expires_in": 60})) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, bodies)
}

fn claims_of(body: &str, field: &str) -> serde_json::Value {
    let jwt = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == field)
        .unwrap()
        .1
        .into_owned();
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn assertions_name_the_endpoint_as_written_and_are_signed_after_the_permit() {
    let (addr, bodies) = recording_idp().await;
    let keys = generate(Kind::EcPkcs8);
    // A bare host in mixed case: a parsed URL would gain a `/` and lose the case.
    let token_url = format!("http://LocalHost:{}", addr.port());
    let config = load_str(&format!(
        "[state]\ndir = \"/nonexistent\"\n[idp]\nmax_concurrent = 1\n\
         [credentials.x]\ngrant = \"jwt_bearer\"\ntoken_url = \"{token_url}\"\n\
         client_id = \"svc\"\nclient_auth = \"private_key_jwt\"\n\
         private_key = {{ file = \"{}\" }}\n",
        keys.private.display()
    ))
    .unwrap();
    let spec = &config.credentials[0];
    let client = IdpClient::new(&config.idp).unwrap();
    let inputs = Inputs::read(spec).unwrap();

    // Another request holds the only permit for a while.
    let held = client.permits.clone().acquire_owned().await.unwrap();
    let request = {
        let client = client.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let request = TokenRequest {
                spec: &spec,
                inputs: &inputs,
                refresh_token: None,
                before_send: None,
                dpop: None,
            };
            client.request_token(&request).await
        })
    };
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let released = unix_now();
    drop(held);
    request.await.unwrap().unwrap();

    let body = bodies.lock().unwrap().pop().unwrap();
    let client_assertion = claims_of(&body, "client_assertion");
    let grant_assertion = claims_of(&body, "assertion");
    for claims in [&client_assertion, &grant_assertion] {
        assert_eq!(claims["aud"], token_url.as_str(), "{claims}");
        let iat = claims["iat"].as_u64().unwrap();
        assert!(
            iat >= released,
            "signed at {iat}, before the permit ({released})"
        );
    }
}

/// Always answers `use_dpop_nonce` with a new nonce, keeping each request's proof.
async fn nonce_demanding_idp() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let proofs = Arc::new(Mutex::new(Vec::new()));
    let seen = proofs.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let proof = headers.get("dpop").map(|v| v.to_str().unwrap().to_owned());
        let mut seen = seen.lock().unwrap();
        seen.push(proof.unwrap_or_default());
        let nonce = format!("n{}", seen.len());
        async move {
            let mut response = axum::response::IntoResponse::into_response((
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({"error": "use_dpop_nonce"})),
            ));
            response
                .headers_mut()
                .insert("dpop-nonce", nonce.parse().unwrap());
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, proofs)
}

#[tokio::test]
async fn a_nonce_challenge_is_answered_once_and_one_left_unmet_is_no_refusal() {
    let (addr, proofs) = nonce_demanding_idp().await;
    let config = load_str(&format!(
        "[state]\ndir = \"/nonexistent\"\n[credentials.x]\n\
         token_url = \"http://127.0.0.1:{}/token?tenant=a\"\nclient_id = \"c\"\n\
         refresh_token = \"r\"\ndpop = true\n",
        addr.port()
    ))
    .unwrap();
    let spec = &config.credentials[0];
    let client = IdpClient::new(&config.idp).unwrap();
    let inputs = Inputs::read(spec).unwrap();
    let key = crate::dpop::Key::generate().unwrap();
    let nonce = dpop::Nonce::default();
    let refresh_token = SecretString::from("r".to_owned());
    let request = TokenRequest {
        spec,
        inputs: &inputs,
        refresh_token: Some(&refresh_token),
        before_send: None,
        dpop: Some(dpop::Dpop {
            key: &key,
            nonce: &nonce,
        }),
    };
    let error = client.request_token(&request).await.unwrap_err();
    assert!(
        matches!(&error, IdpError::Unavailable { reason, .. } if reason.contains("use_dpop_nonce")),
        "{error:?}"
    );
    let proofs = proofs.lock().unwrap().clone();
    assert_eq!(proofs.len(), 2, "the first request and one more, no more");
    let claims: Vec<serde_json::Value> = proofs
        .iter()
        .map(|p| {
            let payload = p.split('.').nth(1).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(claims[0]["nonce"], serde_json::Value::Null);
    assert_eq!(claims[1]["nonce"], "n1", "the nonce of the challenge");
    for c in &claims {
        assert_eq!(c["htm"], "POST");
        // The proof names the endpoint without its query (RFC 9449 section 4.2).
        assert_eq!(c["htu"], format!("http://127.0.0.1:{}/token", addr.port()));
    }
    assert_ne!(claims[0]["jti"], claims[1]["jti"]);
    assert_eq!(
        nonce.get().as_deref(),
        Some("n2"),
        "the latest nonce is kept"
    );
}
