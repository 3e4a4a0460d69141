//! The HTTP API as the contract writes it: endpoints, formats, header rules, error codes.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["cache-control"], "no-store");
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_formats_headers_and_the_default_credential() {
    let idp = Idp::start(&["--access-ttl", "120s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "scope = \"read write\"");

    let response = broker.get("/token/x").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "read write");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((100..=120).contains(&expires_in), "{body}");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(idp.whoami(token).await, 200);

    let raw = broker.get("/token/x?format=raw").await;
    assert_eq!(raw.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(raw.text().await.unwrap(), token);
    let accept = client()
        .get(format!("{}/token/x", broker.url))
        .header("Token-Broker", "1")
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(accept.text().await.unwrap(), token);

    // One credential: it is the default.
    let default = broker.get("/token").await.json::<Value>().await.unwrap();
    assert_eq!(default["access_token"], token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_of_the_contract() {
    let idp = Idp::start(&["--access-ttl", "120s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "min_refresh_interval = \"0s\"");
    broker.ready().await;

    let (status, body) = error_of(broker.get("/token/nope").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_credential"))
    );
    assert_eq!(body["credential"], "nope");

    let bare = client()
        .get(format!("{}/token/x", broker.url))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(bare).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("missing_header"))
    );
    let wrong = client()
        .get(format!("{}/token/x", broker.url))
        .header("Token-Broker", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(wrong).await.0, 403);

    for header in ["Forwarded", "X-Forwarded-For"] {
        let forwarded = client()
            .get(format!("{}/token/x", broker.url))
            .header("Token-Broker", "1")
            .header(header, "for=10.0.0.1")
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(forwarded).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forwarded_request")),
            "{header}"
        );
    }

    for bad in [
        "/token/x?min_ttl=soon",
        "/token/x?format=xml",
        "/token/x?min-ttl=5s",
    ] {
        let (status, body) = error_of(broker.get(bad).await).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {body}"
        );
    }
    let bad_body = client()
        .post(format!("{}/token/x/refresh", broker.url))
        .header("Token-Broker", "1")
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(bad_body).await.1["error"], "bad_request");

    // The IdP revokes the family: the next refresh is refused.
    idp.admin("revoke", serde_json::json!({})).await;
    let (status, body) = error_of(broker.refresh("x", None).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("reauth_required")),
        "{body}"
    );
    let readyz = client()
        .get(format!("{}/readyz", broker.url))
        .send()
        .await
        .unwrap();
    // The refused chain's access token is withdrawn with it: nothing left to serve.
    assert_eq!(readyz.status(), 503);
    let status = broker.status().await;
    assert_eq!(status["credentials"][0]["state"], "reauth_required");

    // Unknown routes answer JSON too.
    let (status, body) = error_of(broker.get("/nothing/here").await).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_idp_gives_503_with_retry_after_and_readyz_says_why() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, "some-token").unwrap();
    let config = base_config(dir.path())
        + &format!(
            "[credentials.x]\ntoken_url = \"http://127.0.0.1:{port}/token\"\nclient_id = \"c\"\nrefresh_token = {{ file = \"{}\" }}\n",
            bootstrap.display()
        );
    let broker = Broker::start(dir.path(), &config);
    let response = broker.get("/token/x").await;
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable");
    let readyz = client()
        .get(format!("{}/readyz", broker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    let body: Value = readyz.json().await.unwrap();
    assert_eq!(body["credentials"][0]["name"], "x");
    assert!(
        body["credentials"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("connection"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_credentials_default_client_credentials_and_discovery() {
    let idp = Idp::start(&["--access-ttl", "120s"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path())
        + &refresh_credential("user", &idp, &bootstrap, "")
        + &format!(
            "[credentials.service]\ngrant = \"client_credentials\"\nissuer = \"{}\"\nclient_id = \"dev-client\"\nclient_secret = {{ env = \"TB_TEST_SECRET\" }}\nclient_auth = \"client_secret_post\"\n",
            idp.url
        );
    let broker = Broker::start_with_env(dir.path(), &config, &[("TB_TEST_SECRET", "dev-secret")]);
    broker.ready().await;

    let (status, body) = error_of(broker.get("/token").await).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("service") && message.contains("user"),
        "{message}"
    );

    let service = broker.token("service").await;
    assert_eq!(
        idp.whoami(service["access_token"].as_str().unwrap()).await,
        200
    );
    assert_eq!(idp.stat("client_credentials_grants").await, 1);
    let user = broker.token("user").await;
    assert_eq!(
        idp.whoami(user["access_token"].as_str().unwrap()).await,
        200
    );

    // Metrics and status show both, and no token.
    let metrics = broker.metrics_text().await;
    assert!(
        metrics.contains("token_broker_requests_total{credential=\"service\",outcome=\"ok\"}"),
        "{metrics}"
    );
    let status = broker.status().await.to_string();
    for secret in [
        service["access_token"].as_str().unwrap(),
        user["access_token"].as_str().unwrap(),
        "dev-secret",
    ] {
        assert!(!metrics.contains(secret) && !status.contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marked_default_credential_is_served_by_get_token() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path())
        + &refresh_credential("a", &idp, &bootstrap, "default = true")
        + "[credentials.b]\ngrant = \"client_credentials\"\ntoken_url = \""
        + &idp.url
        + "/token\"\nclient_id = \"dev-client\"\nclient_secret = \"dev-secret\"\n";
    let broker = Broker::start(dir.path(), &config);
    broker.ready().await;
    let via_default = broker.get("/token").await.json::<Value>().await.unwrap();
    assert_eq!(
        via_default["access_token"],
        broker.token("a").await["access_token"]
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_exp_stands_in_for_a_missing_expires_in_and_non_rotating_idps_work() {
    let idp = Idp::start(&["--access-ttl", "200s", "--omit-expires-in", "--no-rotation"]);
    let dir = tempdir();
    // default_lifetime would say 1h: the JWT's exp must win.
    let broker = broker_for(&idp, dir.path(), "min_refresh_interval = \"0s\"");
    let body = broker.token("x").await;
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((190..=200).contains(&expires_in), "{body}");
    // No rotated token comes back: the same refresh token keeps working.
    for _ in 0..3 {
        assert_eq!(broker.refresh("x", None).await.status(), 200);
    }
    assert_eq!(idp.stat("refresh_grants").await, 4);
    assert_eq!(idp.stat("invalid_grant").await, 0);
}

/// Plain names are answered by the connection service's fast path, percent-encoded ones
/// by the router: both must apply the same guards and give the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reads_answer_the_same_through_the_fast_path_and_the_router() {
    let idp = Idp::start(&["--access-ttl", "120s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "");
    broker.ready().await;
    let ask = |path: &str, headers: &[(&str, &str)]| {
        let mut request = client().get(format!("{}{path}", broker.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    let header = [("Token-Broker", "1")];
    for (fast, routed) in [("/token/x", "/token/%78"), ("/token/nope", "/token/n%6Fpe")] {
        let cases: [&[(&str, &str)]; 4] = [
            &header,
            &[],
            &[("Token-Broker", "1"), ("X-Forwarded-For", "10.0.0.1")],
            &[("Token-Broker", "1"), ("Host", "evil.example")],
        ];
        for headers in cases {
            let (a, b) = (ask(fast, headers).await, ask(routed, headers).await);
            assert_eq!(a.0, b.0, "{fast} vs {routed} with {headers:?}");
            assert_eq!(
                a.1["error"], b.1["error"],
                "{fast} vs {routed} with {headers:?}"
            );
            assert_eq!(a.1["access_token"], b.1["access_token"]);
        }
    }
    let (status, body) = ask("/token/%78", &header).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
}
