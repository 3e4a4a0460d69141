//! Bodies through the header-injecting proxy: large uploads and downloads streamed
//! without being held, and the one retry after a 401, which needs the body again.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::proxy::{proxy, proxy_addr, stale, start, start_with};
use crate::upstream::{self, exchange, peak_rss};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_both_ways_without_being_held() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let upstream = upstream::start(idp.url.clone()).await;
    let dir = tempdir();
    let mut broker = start(
        &idp,
        dir.path(),
        &proxy("api", &format!("{upstream}/base"), ""),
        &[],
    );
    let addr = proxy_addr(&mut broker, "api");
    broker.ready().await;
    let pid = broker.proc.child.id();
    let before = peak_rss(pid);
    const MIB: u64 = 1024 * 1024;

    // A 96 MiB chunked upload, written chunk by chunk.
    let n = 96 * MIB;
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /digest HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for start in (0..n).step_by(MIB as usize) {
        let chunk: Vec<u8> = upstream::pattern_range(start, start + MIB);
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(&chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let (len, sha) = upstream::pattern_digest(n);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("\"len\":{len}")) && text.contains(&sha),
        "{text}"
    );

    // A 24 MiB upload with Content-Length, echoed back as it streams.
    let body: Vec<u8> = upstream::pattern_range(0, 24 * MIB);
    let response = client()
        .post(format!("http://{addr}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.unwrap() == body,
        "the echo is the upload"
    );

    // A 128 MiB download, read as it comes.
    let n = 128 * MIB;
    let mut response = client()
        .get(format!("http://{addr}/download/{n}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        got += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(
        (got, upstream::hex(&hasher.finalize())),
        upstream::pattern_digest(n)
    );

    // Holding any of these bodies whole would have grown the broker by 24 MiB or more.
    let grown = peak_rss(pid).saturating_sub(before);
    assert!(
        grown < 16 * MIB,
        "the broker's peak memory grew by {} MiB",
        grown / MIB
    );
    let metrics = broker.metrics_text().await;
    assert!(
        metrics.contains(r#"token_broker_proxy_requests_total{proxy="api",outcome="forwarded"} 3"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_401_a_kept_body_is_sent_again_and_a_streamed_one_is_not() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let upstream = upstream::start(idp.url.clone()).await;
    let dir = tempdir();
    // The API refuses every token several times within seconds here: each time is
    // one refresh, with no interval between them.
    let mut broker = start_with(
        &idp,
        dir.path(),
        "min_refresh_interval = \"0s\"",
        &proxy("api", &format!("{upstream}/base"), ""),
        &[],
    );
    let addr = proxy_addr(&mut broker, "api");
    broker.ready().await;
    let client = client();
    let guarded = format!("http://{addr}/guarded");

    // 10 KiB with Content-Length: read first, sent again with the new token.
    let small: Vec<u8> = upstream::pattern_range(0, 10_240);
    stale(&idp).await;
    let grants = idp.stat("refresh_grants").await;
    let response = client
        .post(&guarded)
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["len"], 10_240);
    assert_eq!(body["sha256"], upstream::pattern_digest(10_240).1.as_str());
    assert_eq!(idp.stat("refresh_grants").await, grants + 1);

    // 3 KiB chunked: streamed, kept while streaming, and whole: sent again.
    stale(&idp).await;
    let chunked: Vec<u8> = upstream::pattern_range(0, 3000);
    let mut body = format!("{:x}\r\n", 1000).into_bytes();
    body.extend_from_slice(&chunked[..1000]);
    body.extend_from_slice(format!("\r\n{:x}\r\n", 2000).as_bytes());
    body.extend_from_slice(&chunked[1000..]);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = format!(
        "POST /guarded HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let (status, _, answer) = exchange(&addr, &head, &body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["sha256"], upstream::pattern_digest(3000).1.as_str());

    // 1 MiB: streamed and not kept, so the 401 is passed on; the token is still
    // reported, and the next request finds the new one.
    stale(&idp).await;
    let grants = idp.stat("refresh_grants").await;
    let stale_token = broker.access_token("x").await;
    let large: Vec<u8> = upstream::pattern_range(0, 1024 * 1024);
    let response = client
        .post(&guarded)
        .body(large.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.text().await.unwrap(),
        "stale token",
        "the upstream's own answer"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while broker.access_token("x").await == stale_token {
        assert!(
            std::time::Instant::now() < deadline,
            "the rejected token was not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idp.stat("refresh_grants").await, grants + 1);
    let response = client.post(&guarded).body(large).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let metrics = broker.metrics_text().await;
    for expected in [
        r#"token_broker_proxy_retries_total{proxy="api",result="ok"} 2"#,
        r#"token_broker_proxy_retries_total{proxy="api",result="body_not_kept"} 1"#,
        r#"token_broker_proxy_requests_total{proxy="api",outcome="unauthorized"} 1"#,
    ] {
        assert!(metrics.contains(expected), "{expected} not in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_fresh_tokens_gets_one_refresh_then_its_401s_pass_on() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let upstream = upstream::start(idp.url.clone()).await;
    let dir = tempdir();
    let mut broker = start(
        &idp,
        dir.path(),
        &proxy("api", &format!("{upstream}/base"), ""),
        &[],
    );
    let addr = proxy_addr(&mut broker, "api");
    broker.ready().await;
    let grants = idp.stat("refresh_grants").await;
    let refuses = format!("http://{addr}/refuses");

    // The first 401 is reported and retried with a fresh token, which is refused too.
    let response = client().get(&refuses).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.text().await.unwrap(), "wrong audience");
    assert_eq!(idp.stat("refresh_grants").await, grants + 1);

    // A refresh cannot help, so the next 401s pass on without one.
    for _ in 0..5 {
        assert_eq!(client().get(&refuses).send().await.unwrap().status(), 401);
    }
    assert_eq!(
        idp.stat("refresh_grants").await,
        grants + 1,
        "no refresh per request"
    );
    let metrics = broker.metrics_text().await;
    for expected in [
        r#"token_broker_proxy_retries_total{proxy="api",result="rejected"} 1"#,
        r#"token_broker_proxy_retries_total{proxy="api",result="quiet"} 5"#,
        r#"token_broker_proxy_requests_total{proxy="api",outcome="unauthorized"} 6"#,
    ] {
        assert!(metrics.contains(expected), "{expected} not in {metrics}");
    }
    let warnings = broker
        .proc
        .logs()
        .matches("refused a freshly refreshed token")
        .count();
    assert_eq!(warnings, 1, "one warning per quiet spell");
}
