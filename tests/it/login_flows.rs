//! The dev IdP's login flows over real HTTP, with reqwest playing both the browser (no
//! redirect following: each redirect is read, as a browser would follow it) and the
//! client: the authorization code with PKCE (RFC 7636) and loopback redirects
//! (RFC 8252), the consent page, and the device authorization grant (RFC 8628).

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::harness::*;

/// Registered without a port: loopback redirects may use any (RFC 8252 7.3).
const REGISTERED: &str = "http://127.0.0.1/callback";
/// What a login listening on a random loopback port sends.
const REDIRECT: &str = "http://127.0.0.1:53117/callback";

fn start(extra: &[&str]) -> Idp {
    let mut args = vec![
        "--redirect-uri",
        REGISTERED,
        "--redirect-uri",
        "https://app.example/cb",
    ];
    args.extend_from_slice(extra);
    Idp::start(&args)
}

/// A browser that shows each redirect instead of following it.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A fresh PKCE pair: the verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&verifier);
    (verifier, URL_SAFE_NO_PAD.encode(digest))
}

/// `GET /authorize` with the usual parameters, `overrides` replacing or (with "")
/// removing some.
async fn authorize(idp: &Idp, challenge: &str, overrides: &[(&str, &str)]) -> reqwest::Response {
    let mut query: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", "dev-client"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid offline_access"),
        ("state", "st-1 &=?"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    for (key, value) in overrides {
        query.retain(|(k, _)| k != key);
        if !value.is_empty() {
            query.push((key, value));
        }
    }
    browser()
        .get(format!("{}/authorize", idp.url))
        .query(&query)
        .send()
        .await
        .unwrap()
}

/// The `Location` of a redirect, split into the URI before `?` and its parameters.
fn redirected(response: &reqwest::Response) -> (String, HashMap<String, String>) {
    let location = response
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("no redirect: {}", response.status()))
        .to_str()
        .unwrap();
    let url = url::Url::parse(location).unwrap();
    let params = url.query_pairs().into_owned().collect();
    let base = location.split('?').next().unwrap().to_owned();
    (base, params)
}

/// A code from an auto-approving IdP.
async fn code(idp: &Idp, challenge: &str) -> String {
    let response = authorize(idp, challenge, &[]).await;
    assert_eq!(response.status(), 302);
    redirected(&response).1["code"].clone()
}

/// `POST /token` as the confidential client.
async fn token(idp: &Idp, form: &[(&str, &str)]) -> (u16, Value) {
    post_form(idp, "token", form).await
}

async fn post_form(idp: &Idp, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = client()
        .post(format!("{}/{path}", idp.url))
        .basic_auth("dev-client", Some("dev-secret"))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn redeem(idp: &Idp, code: &str, redirect_uri: &str, verifier: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ];
    token(idp, &form).await
}

fn assert_error(answer: &(u16, Value), code: &str) {
    assert_eq!(answer.0, 400, "{}", answer.1);
    assert_eq!(answer.1["error"], code, "{}", answer.1);
}

#[tokio::test]
async fn pkce_login_on_any_loopback_port_passes_state_back_and_issues_a_working_chain() {
    let idp = start(&["--auto-approve"]);
    let (verifier, challenge) = pkce();
    let response = authorize(&idp, &challenge, &[]).await;
    assert_eq!(response.status(), 302);
    let (base, params) = redirected(&response);
    assert_eq!(
        base, REDIRECT,
        "the port the client chose, not the registered one"
    );
    assert_eq!(params["state"], "st-1 &=?");
    let (status, body) = redeem(&idp, &params["code"], REDIRECT, &verifier).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "openid offline_access");
    assert_eq!(
        idp.whoami(body["access_token"].as_str().unwrap()).await,
        200
    );
    let refresh = body["refresh_token"].as_str().unwrap();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
    assert_eq!(token(&idp, &form).await.0, 200, "the chain refreshes");
    assert_eq!(idp.stat("authorization_code_grants").await, 1);

    let discovery = get_json(&format!("{}/.well-known/openid-configuration", idp.url)).await;
    assert_eq!(
        discovery["authorization_endpoint"],
        format!("{}/authorize", idp.url)
    );
    assert_eq!(
        discovery["device_authorization_endpoint"],
        format!("{}/device_authorization", idp.url)
    );
    assert_eq!(discovery["code_challenge_methods_supported"][0], "S256");
    let grants = discovery["grant_types_supported"].to_string();
    assert!(grants.contains("\"authorization_code\""), "{grants}");
    assert!(grants.contains("grant-type:device_code"), "{grants}");
}

#[tokio::test]
async fn a_wrong_verifier_or_redirect_uri_is_invalid_grant_and_spends_the_code() {
    let idp = start(&["--auto-approve"]);
    let (verifier, challenge) = pkce();
    let (other_verifier, _) = pkce();
    let first = code(&idp, &challenge).await;
    assert_error(
        &redeem(&idp, &first, REDIRECT, &other_verifier).await,
        "invalid_grant",
    );
    let retried = redeem(&idp, &first, REDIRECT, &verifier).await;
    assert_error(&retried, "invalid_grant");

    let second = code(&idp, &challenge).await;
    let other_port = "http://127.0.0.1:53118/callback";
    assert_error(
        &redeem(&idp, &second, other_port, &verifier).await,
        "invalid_grant",
    );
    let short = redeem(&idp, &code(&idp, &challenge).await, REDIRECT, "too-short").await;
    assert_error(&short, "invalid_request");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", first.as_str()),
    ];
    assert_error(&token(&idp, &form).await, "invalid_request");
    assert_eq!(idp.stat("authorization_code_grants").await, 0);
}

#[tokio::test]
async fn redirect_uris_match_exactly_but_for_the_loopback_port_and_bad_ones_are_never_followed() {
    let idp = start(&["--auto-approve"]);
    let (_, challenge) = pkce();
    for good in [
        "http://127.0.0.1/callback",
        "http://127.0.0.1:1/callback",
        "https://app.example/cb",
    ] {
        let response = authorize(&idp, &challenge, &[("redirect_uri", good)]).await;
        assert_eq!(response.status(), 302, "{good}");
        assert_eq!(redirected(&response).0, good);
    }
    for bad in [
        "http://127.0.0.1:1/other",
        "http://localhost:1/callback",
        "https://127.0.0.1:1/callback",
        "https://app.example:8443/cb",
        "https://app.example/cb/",
        "https://evil.example/cb",
        "",
    ] {
        let response = authorize(&idp, &challenge, &[("redirect_uri", bad)]).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert!(response.headers().get("location").is_none(), "{bad}");
        let page = response.text().await.unwrap();
        assert!(page.contains("redirect_uri"), "{page}");
    }
    let unknown = authorize(&idp, &challenge, &[("client_id", "stranger")]).await;
    assert_eq!(unknown.status(), 400);
    assert!(unknown.headers().get("location").is_none());
}

#[tokio::test]
async fn other_authorization_errors_go_back_with_the_rfc_code_and_the_state() {
    let idp = start(&["--auto-approve"]);
    let (_, challenge) = pkce();
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("code_challenge_method", "plain")], "invalid_request"),
        (&[("code_challenge_method", "")], "invalid_request"),
        (&[("code_challenge", "")], "invalid_request"),
        (&[("code_challenge", "short")], "invalid_request"),
        (&[("response_type", "token")], "unsupported_response_type"),
        (&[("scope", "a\"b")], "invalid_scope"),
    ];
    for (overrides, error) in cases {
        let response = authorize(&idp, &challenge, overrides).await;
        assert_eq!(response.status(), 302, "{overrides:?}");
        let (base, params) = redirected(&response);
        assert_eq!(base, REDIRECT);
        assert_eq!(params["error"], error, "{overrides:?}");
        assert_eq!(params["state"], "st-1 &=?");
        assert!(!params.contains_key("code"));
    }
}

#[tokio::test]
async fn a_reused_code_revokes_the_tokens_it_issued() {
    let idp = start(&["--auto-approve"]);
    let (verifier, challenge) = pkce();
    let code = code(&idp, &challenge).await;
    let (status, body) = redeem(&idp, &code, REDIRECT, &verifier).await;
    assert_eq!(status, 200, "{body}");
    let replay = redeem(&idp, &code, REDIRECT, &verifier).await;
    assert_error(&replay, "invalid_grant");
    assert_eq!(
        idp.whoami(body["access_token"].as_str().unwrap()).await,
        401
    );
    let refresh = body["refresh_token"].as_str().unwrap();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
    assert_error(&token(&idp, &form).await, "invalid_grant");
    assert_eq!(idp.stat("code_reuses").await, 1);
    assert_eq!(idp.stat("families_revoked").await, 1);
}

/// The hidden fields of the consent page's form, as a browser would post them.
fn hidden_fields(page: &str) -> Vec<(String, String)> {
    page.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|input| {
            let name = input.split("name=\"").nth(1).unwrap().split('"').next();
            let value = input.split("value=\"").nth(1).unwrap().split('"').next();
            let unescape = |v: &str| v.replace("&amp;", "&").replace("&quot;", "\"");
            (name.unwrap().to_owned(), unescape(value.unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn the_consent_page_posts_back_an_approval_or_a_denial() {
    let idp = start(&[]);
    let (verifier, challenge) = pkce();
    let response = authorize(&idp, &challenge, &[]).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.unwrap();
    assert!(page.contains("value=\"approve\"") && page.contains("value=\"deny\""));
    let fields = hidden_fields(&page);
    assert!(
        fields.contains(&("state".to_owned(), "st-1 &=?".to_owned())),
        "{page}"
    );

    let answer = |action: &'static str| {
        let mut form = fields.clone();
        form.push(("action".to_owned(), action.to_owned()));
        let url = format!("{}/authorize", idp.url);
        async move { browser().post(url).form(&form).send().await.unwrap() }
    };
    let denied = answer("deny").await;
    assert_eq!(denied.status(), 303);
    let (base, params) = redirected(&denied);
    assert_eq!(base, REDIRECT);
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "st-1 &=?");
    assert!(!params.contains_key("code"));

    let approved = answer("approve").await;
    assert_eq!(approved.status(), 303);
    let params = redirected(&approved).1;
    assert_eq!(params["state"], "st-1 &=?");
    assert_eq!(
        redeem(&idp, &params["code"], REDIRECT, &verifier).await.0,
        200
    );
    assert_error(
        &redeem(&idp, "made-up", REDIRECT, &verifier).await,
        "invalid_grant",
    );
}

/// `POST /device_authorization` as the confidential client.
async fn device_authorization(idp: &Idp) -> Value {
    let (status, body) = post_form(idp, "device_authorization", &[("scope", "openid")]).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn poll(idp: &Idp, device_code: &str) -> (u16, Value) {
    let grant = "urn:ietf:params:oauth:grant-type:device_code";
    token(idp, &[("grant_type", grant), ("device_code", device_code)]).await
}

/// The verification page's answer for `user_code`.
async fn decide(idp: &Idp, user_code: &str, action: &str) -> (u16, String) {
    let form = [("user_code", user_code), ("action", action)];
    let url = format!("{}/device", idp.url);
    let response = browser().post(url).form(&form).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn device_flow_is_pending_until_approved_then_issues_tokens_once() {
    let idp = start(&[]);
    let grant = device_authorization(&idp).await;
    let (device_code, user_code) = (
        grant["device_code"].as_str().unwrap(),
        grant["user_code"].as_str().unwrap(),
    );
    assert_eq!(user_code.len(), 9, "ABCD-EFGH: {user_code}");
    assert_eq!(grant["verification_uri"], format!("{}/device", idp.url));
    assert_eq!(
        (grant["expires_in"].as_u64(), grant["interval"].as_u64()),
        (Some(600), Some(5))
    );
    assert_error(&poll(&idp, device_code).await, "authorization_pending");

    let complete = grant["verification_uri_complete"].as_str().unwrap();
    let page = browser()
        .get(complete)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!("value=\"{user_code}\"")), "{page}");
    let (status, page) = decide(&idp, &user_code.to_lowercase(), "approve").await;
    assert_eq!(status, 200, "{page}");

    let (status, body) = poll(&idp, device_code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        idp.whoami(body["access_token"].as_str().unwrap()).await,
        200
    );
    assert!(body["refresh_token"].is_string());
    assert_error(&poll(&idp, device_code).await, "invalid_grant");
    assert_eq!(idp.stat("device_code_grants").await, 1);
}

#[tokio::test]
async fn polling_faster_than_the_interval_is_slow_down() {
    let idp = start(&["--device-interval", "3s"]);
    let grant = device_authorization(&idp).await;
    let device_code = grant["device_code"].as_str().unwrap();
    assert_eq!(grant["interval"], 3);
    assert_error(&poll(&idp, device_code).await, "authorization_pending");
    assert_error(&poll(&idp, device_code).await, "slow_down");
    assert_error(&poll(&idp, device_code).await, "slow_down");
    assert_eq!(idp.stat("slow_downs").await, 2);
}

#[tokio::test]
async fn an_expired_device_code_is_expired_token_and_cannot_be_approved() {
    let idp = start(&["--device-code-ttl", "1s"]);
    let grant = device_authorization(&idp).await;
    assert_eq!(grant["expires_in"], 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let device_code = grant["device_code"].as_str().unwrap();
    assert_error(&poll(&idp, device_code).await, "expired_token");
    let (status, page) = decide(&idp, grant["user_code"].as_str().unwrap(), "approve").await;
    assert_eq!(status, 400);
    assert!(page.contains("expired"), "{page}");
}

#[tokio::test]
async fn a_denied_device_code_is_access_denied_and_strangers_get_no_device_code() {
    let idp = start(&[]);
    let grant = device_authorization(&idp).await;
    let user_code = grant["user_code"].as_str().unwrap();
    assert_eq!(decide(&idp, user_code, "deny").await.0, 200);
    assert_eq!(
        decide(&idp, user_code, "approve").await.0,
        400,
        "decided once"
    );
    assert_error(
        &poll(&idp, grant["device_code"].as_str().unwrap()).await,
        "access_denied",
    );
    assert_eq!(decide(&idp, "BCDF-GHJK", "maybe").await.0, 400);

    let response = client()
        .post(format!("{}/device_authorization", idp.url))
        .basic_auth("dev-client", Some("wrong"))
        .form(&[("scope", "openid")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
}

#[tokio::test]
async fn auto_approve_approves_device_codes_at_once() {
    let idp = start(&["--auto-approve"]);
    let grant = device_authorization(&idp).await;
    let (status, body) = poll(&idp, grant["device_code"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
}
