//! HTTP tests of fault injection, the admin endpoints, discovery and `/api/whoami`.

#![allow(clippy::unwrap_used)]

use super::http_tests::{Answer, basic, refresh, send, token_request};
use super::{DevIdp, DevIdpOptions};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use std::time::Duration;

async fn admin(idp: &DevIdp, path: &str, body: &str) -> Answer {
    let request = Request::post(path)
        .body(Body::from(body.to_owned()))
        .unwrap();
    send(idp, request).await
}

async fn client_credentials(idp: &DevIdp) -> Answer {
    let auth = basic("dev-client", "dev-secret");
    send(
        idp,
        token_request("grant_type=client_credentials", Some(&auth)),
    )
    .await
}

async fn arm(idp: &DevIdp, fault: Value) -> Value {
    let answer = admin(idp, "/admin/faults", &fault.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()
}

#[tokio::test]
async fn every_fault_shape() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let shapes = [
        "json",
        "json_no_description",
        "empty",
        "html",
        "garbage",
        "huge",
    ];
    for shape in shapes {
        arm(
            &idp,
            json!({"status": 503, "count": 1, "shape": shape, "retry_after": 7}),
        )
        .await;
        let answer = client_credentials(&idp).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{shape}");
        assert_eq!(answer.header(header::RETRY_AFTER), "7", "{shape}");
        assert_eq!(answer.header(header::CACHE_CONTROL), "no-store", "{shape}");
        let content_type = answer.header(header::CONTENT_TYPE).to_owned();
        let parsed = serde_json::from_slice::<Value>(&answer.body);
        match shape {
            "json" => assert_eq!(answer.json()["error_description"], "injected fault"),
            "json_no_description" => {
                assert_eq!(answer.json(), json!({"error": "temporarily_unavailable"}));
            }
            "empty" => assert!(answer.body.is_empty() && content_type.is_empty()),
            "html" => assert!(content_type.starts_with("text/html") && parsed.is_err()),
            "garbage" => assert!(content_type == "application/json" && parsed.is_err()),
            _ => assert_eq!(answer.body.len(), 10 * 1024 * 1024),
        }
    }
    assert_eq!(idp.stats().errors_injected, 6);
    assert_eq!(idp.stats().client_credentials_grants, 0);
}

#[tokio::test]
async fn fault_codes_counts_and_clearing() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let armed = arm(&idp, json!({"status": 400, "count": 2})).await;
    assert_eq!(armed["count"], 2);
    assert_eq!(armed["error"], "invalid_request");
    assert_eq!(
        client_credentials(&idp).await.json()["error"],
        "invalid_request"
    );
    arm(
        &idp,
        json!({"status": 400, "error": "invalid_grant", "count": 3}),
    )
    .await;
    let answer = client_credentials(&idp).await;
    assert_eq!(
        (answer.status.as_u16(), answer.json()["error"].clone()),
        (400, json!("invalid_grant"))
    );
    assert_eq!(arm(&idp, json!({"count": 0})).await, json!({"count": 0}));
    assert_eq!(client_credentials(&idp).await.status, StatusCode::OK);
    arm(&idp, json!({"status": 429})).await;
    assert_eq!(
        client_credentials(&idp).await.json()["error"],
        "temporarily_unavailable"
    );
    assert_eq!(
        client_credentials(&idp).await.status,
        StatusCode::OK,
        "count defaults to 1"
    );
    let stats = idp.stats();
    assert_eq!((stats.errors_injected, stats.token_requests), (3, 5));
    for bad in ["{", "{\"status\": 503, \"typo\": 1}", "{\"count\": 2}"] {
        assert_eq!(
            admin(&idp, "/admin/faults", bad).await.status,
            StatusCode::BAD_REQUEST
        );
    }
}

#[tokio::test]
async fn hang_delays_then_processes_even_if_the_client_gave_up() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let first = idp.initial_refresh_token();
    let armed = arm(&idp, json!({"hang": "300ms", "count": 1})).await;
    assert_eq!(armed, json!({"hang": "300ms", "count": 1}));
    let gave_up = tokio::time::timeout(Duration::from_millis(50), refresh(&idp, &first)).await;
    assert!(gave_up.is_err(), "the answer must still be pending");
    assert_eq!(idp.stats().in_flight, 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = idp.stats();
    assert_eq!(
        (stats.refresh_grants, stats.errors_injected, stats.in_flight),
        (1, 1, 0)
    );
    // The rotation happened although nobody received it: the token is used up.
    let answer = refresh(&idp, &first).await;
    assert_eq!(answer.json()["error"], "invalid_grant");
    assert_eq!(idp.stats().reuse_detected, 1);
}

#[tokio::test]
async fn latency_can_change_at_runtime() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let answer = admin(&idp, "/admin/latency", r#"{"latency": "150ms"}"#).await;
    assert_eq!(answer.json(), json!({"latency": "150ms"}));
    let started = std::time::Instant::now();
    assert_eq!(client_credentials(&idp).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    for bad in ["{}", "{\"latency\": \"soon\"}", "nope"] {
        assert_eq!(
            admin(&idp, "/admin/latency", bad).await.status,
            StatusCode::BAD_REQUEST
        );
    }
}

#[tokio::test]
async fn discovery_uses_the_host_header() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let request = Request::get("/.well-known/openid-configuration")
        .header(header::HOST, "idp.test:8657")
        .body(Body::empty())
        .unwrap();
    let json = send(&idp, request).await.json();
    assert_eq!(json["issuer"], "http://idp.test:8657");
    assert_eq!(json["token_endpoint"], "http://idp.test:8657/token");
    assert_eq!(
        json["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none"
        ])
    );
    let grants = json["grant_types_supported"].as_array().unwrap();
    for grant in [
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ] {
        assert!(grants.contains(&json!(grant)), "{grant}");
    }
    let request = Request::get("/.well-known/openid-configuration")
        .header(header::HOST, "evil\"/path")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&idp, request).await.json()["issuer"],
        "http://localhost"
    );
}

async fn whoami(idp: &DevIdp, authorization: Option<&str>) -> Answer {
    let mut request = Request::get("/api/whoami").body(Body::empty()).unwrap();
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, value.parse().unwrap());
    }
    send(idp, request).await
}

#[tokio::test]
async fn whoami_accepts_live_tokens_only() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let json = refresh(&idp, &idp.initial_refresh_token()).await.json();
    let bearer = format!("Bearer {}", json["access_token"].as_str().unwrap());
    let ok = whoami(&idp, Some(&bearer)).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["sub"], "dev-user");
    assert_eq!(ok.json()["client_id"], "dev-client");
    assert!(ok.json()["expires_in"].as_u64().unwrap() > 290);
    let revoked = admin(&idp, "/admin/revoke", "").await;
    assert_eq!(revoked.json(), json!({"revoked": 1}));
    for auth in [
        Some(bearer.as_str()),
        None,
        Some("Bearer nope"),
        Some("Basic abc"),
    ] {
        let denied = whoami(&idp, auth).await;
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            denied.header(header::WWW_AUTHENTICATE),
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(denied.json()["error"], "invalid_token");
    }
}

#[tokio::test]
async fn forgotten_access_tokens_are_refused_while_refresh_tokens_still_work() {
    let idp = DevIdp::new(DevIdpOptions::default());
    let json = refresh(&idp, &idp.initial_refresh_token()).await.json();
    let bearer = format!("Bearer {}", json["access_token"].as_str().unwrap());
    assert_eq!(whoami(&idp, Some(&bearer)).await.status, StatusCode::OK);
    let forgotten = admin(&idp, "/admin/forget-access-tokens", "").await;
    assert_eq!(forgotten.json(), json!({"forgotten": 1}));
    assert_eq!(
        whoami(&idp, Some(&bearer)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let next = refresh(&idp, json["refresh_token"].as_str().unwrap()).await;
    assert_eq!(next.status, StatusCode::OK);
    let bearer = format!("Bearer {}", next.json()["access_token"].as_str().unwrap());
    assert_eq!(whoami(&idp, Some(&bearer)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn mint_after_revoke_and_reset_stats() {
    let idp = DevIdp::new(DevIdpOptions::default());
    admin(&idp, "/admin/revoke", "").await;
    assert_eq!(
        refresh(&idp, &idp.initial_refresh_token()).await.status,
        StatusCode::BAD_REQUEST
    );
    let minted = admin(&idp, "/admin/refresh-tokens", r#"{"scope": "read write"}"#).await;
    let token = minted.json()["refresh_token"].as_str().unwrap().to_owned();
    let json = refresh(&idp, &token).await.json();
    assert_eq!(json["scope"], "read write");
    let bare = admin(&idp, "/admin/refresh-tokens", "").await;
    assert_eq!(bare.status, StatusCode::OK);
    let bad = admin(&idp, "/admin/refresh-tokens", "{\"scopes\": 1}").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let stats = send(&idp, Request::get("/stats").body(Body::empty()).unwrap())
        .await
        .json();
    assert_eq!(stats["token_requests"], 2);
    assert_eq!(stats["refresh_grants"], 1);
    assert_eq!(stats["invalid_grant"], 1);
    assert_eq!(stats["families_revoked"], 1);
    assert_eq!(stats["active_families"], 2);
    assert_eq!(stats["max_in_flight"], 1);
    let reset = admin(&idp, "/admin/stats/reset", "").await.json();
    assert_eq!(reset["token_requests"], 0);
    assert_eq!(reset["max_in_flight"], 0);
    assert_eq!(reset["active_families"], 2, "a gauge survives the reset");
    let missing = send(&idp, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}
