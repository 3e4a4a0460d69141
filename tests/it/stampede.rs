//! The correctness half of the stampede benchmark (`bench/run.sh`), at its full size:
//! 10,000 requests over 1,000 connections, all needing a refresh at once, make exactly
//! one call to an IdP that takes 100 ms, and every request gets the one new token.
//! Timing is the benchmark's business; this checks the count.

use std::collections::HashSet;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::harness::*;

const CONNECTIONS: usize = 1_000;
const PER_CONNECTION: usize = 10;

/// Opens a connection and proves it is accepted with one cached read.
async fn open(addr: &str) -> BufReader<TcpStream> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let (status, _) = exchange(&mut stream, "/token/x", 1).await.remove(0);
    assert_eq!(status, 200);
    stream
}

/// Sends `count` pipelined `GET path` requests and reads every answer (status, body).
async fn exchange(
    stream: &mut BufReader<TcpStream>,
    path: &str,
    count: usize,
) -> Vec<(u16, String)> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nToken-Broker: 1\r\n\r\n").repeat(count);
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            stream.read_line(&mut line).await.unwrap();
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        answers.push((status, String::from_utf8(body).unwrap()));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_requests_over_a_thousand_connections_make_one_refresh() {
    let idp = Idp::start(&["--access-ttl", "100s", "--latency", "100ms"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    // Idle connections are closed after header_timeout; these wait 10 s below.
    let config = base_config(dir.path())
        .replace("[server]\n", "[server]\nheader_timeout = \"60s\"\n")
        + &refresh_credential("x", &idp, &bootstrap, "");
    let broker = Broker::start(dir.path(), &config);
    let first = broker.access_token("x").await;
    let addr = broker.url.trim_start_matches("http://").to_owned();
    // Connections open in batches: a burst of a thousand SYNs could overflow the
    // listen backlog and stall on retransmits, which is not what this tests.
    let mut streams = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS / 100 {
        let batch = (0..100).map(|_| open(&addr));
        streams.extend(futures_util::future::join_all(batch).await);
    }
    // The cached token now has under 90 s left; a fresh one has about 100 s, which
    // leaves 10 s to answer everything before the new token would need a refresh too
    // (a debug build on a busy machine needs a few of them).
    tokio::time::sleep(Duration::from_millis(10_100)).await;
    let before = idp.stat("refresh_grants").await;

    let all = streams.into_iter().map(|mut stream| {
        tokio::spawn(
            async move { exchange(&mut stream, "/token/x?min_ttl=90s", PER_CONNECTION).await },
        )
    });
    let answers: Vec<(u16, String)> = futures_util::future::join_all(all)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();

    assert_eq!(answers.len(), CONNECTIONS * PER_CONNECTION);
    assert_eq!(idp.stat("refresh_grants").await - before, 1, "one refresh");
    assert_eq!(idp.stat("max_in_flight").await, 1);
    let mut tokens = HashSet::new();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(body["expires_in"].as_u64().unwrap() >= 90, "{body}");
        tokens.insert(body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1, "every request got the same token");
    assert!(!tokens.contains(&first), "and it is the new one");
}
