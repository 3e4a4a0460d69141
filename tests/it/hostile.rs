//! The server under bad input: random paths, queries, headers and bodies, raw garbage
//! on the socket, and clients too slow to finish their headers.

use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

fn random_text(rng: &mut impl Rng, max: usize) -> String {
    let alphabet: &[char] = &[
        'a',
        'x',
        '/',
        '%',
        '?',
        '&',
        '=',
        '.',
        '~',
        '{',
        '}',
        '"',
        ' ',
        '\u{e9}',
        '\u{1F600}',
        '0',
        '-',
        '_',
    ];
    let len = rng.random_range(0..max);
    (0..len).map(|_| *alphabet.choose(rng).unwrap()).collect()
}

fn random_request(
    rng: &mut impl Rng,
    client: &reqwest::Client,
    base: &str,
) -> reqwest::RequestBuilder {
    let paths = [
        "/token",
        "/token/x",
        "/token/x/refresh",
        "/token/refresh",
        "/token/nope",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/credentials",
        "/",
        "/token/x/y/z",
        "/token/%ff",
        "/token/..%2f..",
        "/token/x%00",
    ];
    let mut path = (*paths.choose(rng).unwrap()).to_owned();
    if rng.random_bool(0.3) {
        path.push_str(&urlencode(&random_text(rng, 20)));
    }
    let queries = [
        "",
        "?min_ttl=5s",
        "?min_ttl=-1",
        "?min_ttl=99999999999999h",
        "?format=raw",
        "?format=",
        "?a=b&a=c",
        "?min_ttl=1s&min_ttl=2s",
        "?%zz",
        "?min_ttl=%ff",
    ];
    let url = format!("{base}{path}{}", queries.choose(rng).unwrap());
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::OPTIONS,
    ];
    let mut request = client.request(methods.choose(rng).unwrap().clone(), url);
    if rng.random_bool(0.7) {
        request = request.header("Token-Broker", "1");
    }
    let content_types = [
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/json; charset=utf-8",
    ];
    request = request.header("Content-Type", *content_types.choose(rng).unwrap());
    if rng.random_bool(0.2) {
        request = request.header("Accept", "text/plain, application/json");
    }
    let bodies = [
        String::new(),
        "{}".into(),
        r#"{"rejected_token": "abc"}"#.into(),
        r#"{"rejected_token": 5}"#.into(),
        r#"{"rejected_token": ""}"#.into(),
        r#"{"other": 1}"#.into(),
        "rejected_token=abc".into(),
        "rejected_token=%ff%fe".into(),
        "[1,2,3]".into(),
        "{".repeat(1000),
        "x".repeat(200_000),
    ];
    let mut body = bodies.choose(rng).unwrap().clone();
    if rng.random_bool(0.2) {
        body = random_text(rng, 300);
    }
    request.body(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_requests_get_no_5xx_but_the_contracts_503_and_the_process_survives() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "");
    broker.ready().await;
    let client = client();
    let mut rng = rand::rng();
    let requests: Vec<_> = (0..1500)
        .map(|_| random_request(&mut rng, &client, &broker.url))
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for chunk in requests.into_iter().collect::<Vec<_>>().chunks_mut(50) {
        let sent = chunk.iter_mut().map(|r| r.try_clone().unwrap().send());
        for result in futures_util::future::join_all(sent).await {
            // An oversized body is refused (413) before it is read, so the client may see
            // its upload cut off instead of the answer.
            let Ok(response) = result else {
                *statuses.entry(0).or_insert(0) += 1;
                continue;
            };
            let status = response.status().as_u16();
            *statuses.entry(status).or_insert(0) += 1;
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            assert!(status < 500 || status == 503, "status {status}");
            if status >= 400 {
                let text = response.text().await.unwrap();
                let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                    panic!("error {status} is not JSON ({content_type:?}): {text}")
                });
                assert!(body["error"].is_string(), "{text}");
            }
        }
    }
    assert!(
        statuses.contains_key(&200) && statuses.contains_key(&400),
        "{statuses:?}"
    );
    assert!(
        statuses.get(&0).copied().unwrap_or(0) < 300,
        "too many failed uploads: {statuses:?}"
    );
    assert_eq!(
        client
            .get(format!("{}/healthz", broker.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(idp.stat("reuse_detected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket_and_slow_clients_cannot_hurt_it() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path())
        .replace("[server]\n", "[server]\nheader_timeout = \"1s\"\n")
        + &refresh_credential("x", &idp, &bootstrap, "");
    let broker = Broker::start(dir.path(), &config);
    broker.ready().await;
    let addr = broker.url.trim_start_matches("http://").to_owned();

    let mut rng = rand::rng();
    for _ in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let garbage: Vec<u8> = (0..rng.random_range(1..4000))
            .map(|_| rng.random())
            .collect();
        let _ = stream.write_all(&garbage).await;
        let _ = stream.write_all(b"\r\n\r\n").await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    }
    // Headers over the size cap.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "oversized headers accepted"
    );

    // A client that never finishes its headers is cut off after header_timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "the slow connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(4));

    assert_eq!(broker.token("x").await["token_type"], "Bearer");
}
