//! End-to-end tests over a real socket: `serve()` on an ephemeral loopback port, with
//! concurrent clients, proving that overlap is real and measured.

#![allow(clippy::unwrap_used)]

use super::{DevIdp, DevIdpOptions, serve};
use serde_json::Value;
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_millis(300);

/// A served IdP, its base URL, and the switch that stops it.
async fn start(options: DevIdpOptions) -> (DevIdp, String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let idp = DevIdp::new(options);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = idp.clone();
    tokio::spawn(async move {
        serve(listener, served, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (idp, base, stop)
}

async fn post_token(client: &reqwest::Client, base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = client
        .post(format!("{base}/token"))
        .basic_auth("dev-client", Some("dev-secret"))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap(),
    )
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    let response = client.get(url).send().await.unwrap();
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_overlap_and_are_measured() {
    let (idp, base, stop) = start(DevIdpOptions {
        latency: LATENCY,
        ..DevIdpOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let requests = (0..4).map(|_| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            post_token(&client, &base, &[("grant_type", "client_credentials")]).await
        })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap().0, 200);
    }
    // Four sleeps of LATENCY in well under four times LATENCY: they ran side by side.
    assert!(started.elapsed() < LATENCY * 3, "{:?}", started.elapsed());
    let stats = get_json(&client, format!("{base}/stats")).await;
    assert!(stats["max_in_flight"].as_u64().unwrap() > 1, "{stats}");
    assert_eq!(stats["token_requests"], 4);
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(idp.stats().client_credentials_grants, 4);
    let discovery = get_json(&client, format!("{base}/.well-known/openid-configuration")).await;
    assert_eq!(discovery["token_endpoint"], format!("{base}/token"));
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_stampede_is_caught() {
    let (idp, base, stop) = start(DevIdpOptions {
        latency: LATENCY,
        ..DevIdpOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let token = idp.initial_refresh_token();
    let requests = (0..3).map(|_| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            let form = [("grant_type", "refresh_token"), ("refresh_token", &token)];
            post_token(&client, &base, &form).await
        })
    });
    let mut statuses = Vec::new();
    for request in requests.collect::<Vec<_>>() {
        statuses.push(request.await.unwrap().0);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400, 400]);
    let stats = idp.stats();
    assert_eq!((stats.refresh_grants, stats.reuse_detected), (1, 1));
    assert_eq!(stats.families_revoked, 1);
    assert!(stats.max_in_flight > 1, "{stats:?}");
    stop.send(()).unwrap();
}
