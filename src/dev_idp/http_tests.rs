//! HTTP tests of the token endpoint, driven through `router()` with `oneshot`.

#![allow(clippy::unwrap_used)]

use super::{DevIdp, DevIdpOptions};
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

/// A status, the headers and the raw body of one answer.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }
}

pub(super) async fn send(idp: &DevIdp, request: Request<Body>) -> Answer {
    let response = idp.router().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

pub(super) fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

pub(super) fn token_request(body: &str, authorization: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .unwrap();
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, value.parse().unwrap());
    }
    request
}

pub(super) async fn refresh(idp: &DevIdp, token: &str) -> Answer {
    let body = format!("grant_type=refresh_token&refresh_token={token}");
    send(
        idp,
        token_request(&body, Some(&basic("dev-client", "dev-secret"))),
    )
    .await
}

fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(
        answer.status.as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["error"], code);
    assert!(answer.json()["error_description"].is_string());
    assert_eq!(answer.header(header::CACHE_CONTROL), "no-store");
}

#[tokio::test]
async fn basic_auth_decodes_form_encoded_credentials_and_rotates() {
    let idp = DevIdp::new(DevIdpOptions {
        client_id: "my client:1".to_owned(),
        client_secret: "s&c+r%t".to_owned(),
        ..DevIdpOptions::default()
    });
    let first = idp.initial_refresh_token();
    let auth = basic("my+client%3A1", "s%26c%2Br%25t");
    let body = format!("grant_type=refresh_token&refresh_token={first}");
    let answer = send(&idp, token_request(&body, Some(&auth))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header(header::CACHE_CONTROL), "no-store");
    assert!(
        answer
            .header(header::CONTENT_TYPE)
            .starts_with("application/json")
    );
    let json = answer.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 300);
    assert_eq!(json["access_token"].as_str().unwrap().split('.').count(), 3);
    let second = json["refresh_token"].as_str().unwrap();
    assert_ne!(second, first);
    assert!(json.get("scope").is_none());
    assert_eq!(idp.stats().refresh_grants, 1);
}

#[tokio::test]
async fn post_auth_works_and_both_at_once_is_refused() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let first = idp.initial_refresh_token();
    let creds = "client_id=dev-client&client_secret=dev-secret";
    let body = format!("grant_type=refresh_token&refresh_token={first}&{creds}");
    let both = send(
        &idp,
        token_request(&body, Some(&basic("dev-client", "dev-secret"))),
    )
    .await;
    assert_error(&both, 400, "invalid_request");
    let post = send(&idp, token_request(&body, None)).await;
    assert_eq!(post.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_client_is_401_and_does_not_consume_the_token() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let first = idp.initial_refresh_token();
    let body = format!("grant_type=refresh_token&refresh_token={first}");
    for auth in [
        None,
        Some(basic("dev-client", "wrong")),
        Some(basic("other", "dev-secret")),
        Some("Basic ***".to_owned()),
    ] {
        let answer = send(&idp, token_request(&body, auth.as_deref())).await;
        assert_error(&answer, 401, "invalid_client");
        assert_eq!(
            answer.header(header::WWW_AUTHENTICATE),
            "Basic realm=\"dev-idp\""
        );
    }
    assert_eq!(idp.stats().invalid_client, 4);
    assert_eq!(refresh(&idp, &first).await.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_requests_are_invalid_request() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let auth = basic("dev-client", "dev-secret");
    let mut json_body = token_request("grant_type=client_credentials", Some(&auth));
    json_body
        .headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    assert_error(&send(&idp, json_body).await, 400, "invalid_request");
    let repeated = "grant_type=client_credentials&grant_type=client_credentials";
    let answer = send(&idp, token_request(repeated, Some(&auth))).await;
    assert_error(&answer, 400, "invalid_request");
    let missing = send(&idp, token_request("grant_type=refresh_token", Some(&auth))).await;
    assert_error(&missing, 400, "invalid_request");
    let unknown = send(&idp, token_request("grant_type=password", Some(&auth))).await;
    assert_error(&unknown, 400, "unsupported_grant_type");
    let get = send(&idp, Request::get("/token").body(Body::empty()).unwrap()).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.json()["error"], "invalid_request");
    assert_eq!(idp.stats().token_requests, 4, "only POSTs count");
}

#[tokio::test]
async fn reuse_revokes_the_family_over_http() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let first = idp.initial_refresh_token();
    let rotated = refresh(&idp, &first).await.json();
    let second = rotated["refresh_token"].as_str().unwrap();
    assert_error(&refresh(&idp, &first).await, 400, "invalid_grant");
    assert_error(&refresh(&idp, second).await, 400, "invalid_grant");
    assert_error(&refresh(&idp, "never-issued").await, 400, "invalid_grant");
    let stats = idp.stats();
    assert_eq!(stats.reuse_detected, 1);
    assert_eq!(stats.families_revoked, 1);
    assert_eq!(stats.invalid_grant, 3);
    assert_eq!(stats.active_families, 0);
}

#[tokio::test]
async fn grace_replay_returns_the_same_successor() {
    let idp = DevIdp::new(DevIdpOptions {
        reuse_grace: std::time::Duration::from_secs(60),
        ..DevIdpOptions::default()
    });
    let first = idp.initial_refresh_token();
    let a = refresh(&idp, &first).await.json();
    let b = refresh(&idp, &first).await.json();
    assert_eq!(a["refresh_token"], b["refresh_token"]);
    assert_ne!(a["access_token"], b["access_token"]);
    assert_eq!(idp.stats().reuse_grace_hits, 1);
}

#[tokio::test]
async fn client_credentials_no_rotation_and_omitted_expiry() {
    let idp = DevIdp::new(DevIdpOptions {
        no_rotation: true,
        omit_expires_in: true,
        initial_refresh_token: Some("fixed".to_owned()),
        ..DevIdpOptions::default()
    });
    for _ in 0..2 {
        let json = refresh(&idp, "fixed").await.json();
        assert!(json.get("refresh_token").is_none());
        assert!(json.get("expires_in").is_none());
    }
    let body = "grant_type=client_credentials&scope=read+write";
    let answer = send(
        &idp,
        token_request(body, Some(&basic("dev-client", "dev-secret"))),
    )
    .await;
    let json = answer.json();
    assert_eq!(json["scope"], "read write");
    assert!(json.get("refresh_token").is_none());
    let stats = idp.stats();
    assert_eq!(
        (stats.refresh_grants, stats.client_credentials_grants),
        (2, 1)
    );
}

#[tokio::test]
async fn a_client_assertion_must_name_the_endpoint_the_request_reached() {
    let keys = crate::test_keys::generate(crate::test_keys::Kind::RsaPkcs8);
    let idp = DevIdp::new(DevIdpOptions {
        client_public_key: Some(super::PublicKey::from_pem(&keys.public_pem()).unwrap()),
        ..DevIdpOptions::default()
    });
    let signer = crate::idp::SigningKey::from_pem(
        &secrecy::SecretString::from(keys.private_pem()),
        None,
        None,
    )
    .unwrap();
    let request = |aud: &str| {
        let claims = crate::idp::assertion_claims(
            "dev-client",
            "dev-client",
            aud,
            std::time::Duration::from_secs(60),
        );
        let jwt = signer.sign(&claims).unwrap();
        let body = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={}",
            crate::dev_idp::clients::CLIENT_ASSERTION_TYPE,
            secrecy::ExposeSecret::expose_secret(&jwt)
        );
        let mut request = token_request(&body, None);
        request
            .headers_mut()
            .insert(header::HOST, "idp.test:8657".parse().unwrap());
        request
    };
    let answer = send(&idp, request("http://idp.test:8657/token")).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let answer = send(&idp, request("http://other.test:8657/token")).await;
    assert_error(&answer, 401, "invalid_client");
    assert_eq!(
        answer.json()["error_description"],
        "the assertion's aud is not this token endpoint"
    );
    assert_eq!(idp.stats().client_assertions, 1);
}

#[tokio::test]
async fn the_login_pages_escape_what_they_echo_and_refuse_framing() {
    let idp = DevIdp::new(DevIdpOptions {
        redirect_uri: vec!["http://127.0.0.1/cb".to_owned()],
        ..DevIdpOptions::default()
    });
    let challenge = crate::dev_idp::authorize::s256("v".repeat(43).as_str());
    let uri = format!(
        "/authorize?response_type=code&client_id=dev-client&redirect_uri=http%3A%2F%2F127.0.0.1%3A80%2Fcb\
         &state=%22%3E%3Cscript%3E&scope=a%3Cb&code_challenge={challenge}&code_challenge_method=S256"
    );
    let consent = send(&idp, Request::get(uri).body(Body::empty()).unwrap()).await;
    assert_eq!(consent.status, StatusCode::OK);
    let page = String::from_utf8(consent.body.clone()).unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("a<b"),
        "{page}"
    );
    assert!(page.contains("&quot;&gt;&lt;script&gt;"), "{page}");
    assert_eq!(consent.header(header::CACHE_CONTROL), "no-store");
    let csp = consent.header(header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");

    let device = send(
        &idp,
        Request::get("/device?user_code=%22%3E%3Cb%3E")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let page = String::from_utf8(device.body).unwrap();
    assert!(page.contains("value=\"&quot;&gt;&lt;b&gt;\""), "{page}");
}
