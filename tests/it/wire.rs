//! What arrives on the wire before any handler runs: the `Host` rules (on the API and on
//! a proxy listener) and the answers to requests the HTTP parser itself refuses.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::proxy::{proxy, proxy_addr};

/// Sends `head` as raw bytes on a new connection; returns the status and the body.
async fn raw(addr: &str, head: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status_line = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    (status, answer[split + 4..].to_vec())
}

/// A request for `target` with the token header and the given header lines.
fn request(target: &str, lines: &[&[u8]]) -> Vec<u8> {
    let mut head =
        format!("GET {target} HTTP/1.1\r\nToken-Broker: 1\r\nConnection: close\r\n").into_bytes();
    for line in lines {
        head.extend_from_slice(line);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_doubled_malformed_or_overridden_host_is_refused_everywhere() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let mut broker = crate::proxy::start(&idp, dir.path(), &proxy("api", &idp.url, ""), &[]);
    broker.ready().await;
    let api = broker.url.trim_start_matches("http://").to_owned();
    let proxied = proxy_addr(&mut broker, "api");
    let bad: [(&str, &[&[u8]], &str); 5] = [
        ("no Host", &[], ""),
        (
            "two Hosts",
            &[b"Host: 127.0.0.1", b"Host: evil.example"],
            "",
        ),
        ("text after brackets", &[b"Host: [::1]evil.example"], ""),
        ("non-ASCII", &[b"Host: 127.0.0.1\xc3\xa9"], ""),
        (
            "absolute-form target",
            &[b"Host: 127.0.0.1"],
            "http://evil.example",
        ),
    ];
    for (addr, paths) in [
        (&api, &["/token/x", "/v1/credentials"][..]),
        (&proxied, &["/api/whoami"][..]),
    ] {
        for path in paths {
            let (status, _) = raw(addr, &request(path, &[b"Host: 127.0.0.1"])).await;
            assert_eq!(status, 200, "{addr}{path} with a plain Host");
            for (what, lines, authority) in &bad {
                let (status, body) =
                    raw(addr, &request(&format!("{authority}{path}"), lines)).await;
                let body: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                    panic!("{what} {path}: {}", String::from_utf8_lossy(&body))
                });
                assert_eq!(
                    (status, &body["error"]),
                    (403, &"bad_host".into()),
                    "{what} {addr}{path}"
                );
            }
        }
    }
    // An absolute-form target naming an allowed host is a request like any other.
    let (status, _) = raw(
        &api,
        &request(&format!("http://{api}/token/x"), &[b"Host: 127.0.0.1"]),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_refuses_get_the_json_error_body_too() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let mut broker = crate::proxy::start(&idp, dir.path(), &proxy("api", &idp.url, ""), &[]);
    broker.ready().await;
    let api = broker.url.trim_start_matches("http://").to_owned();
    let proxied = proxy_addr(&mut broker, "api");
    // A good request then garbage on one connection: the answer, then the refusal.
    let pipelined = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGARBAGE\r\n\r\n").into_bytes()
    };
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    )
    .into_bytes();
    let refused: [(&str, &[u8], u16, &str); 3] = [
        ("a head over 32 KiB", &huge, 431, "headers_too_large"),
        (
            "a malformed request line",
            b"GARBAGE\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "a malformed header",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nNo colon\r\n\r\n",
            400,
            "bad_request",
        ),
    ];
    for (addr, good) in [(&api, "/healthz"), (&proxied, "/api/whoami")] {
        let garbage_after = pipelined(good);
        let cases = refused.iter().copied().chain([(
            "garbage after a good request",
            &garbage_after[..],
            200,
            "",
        )]);
        for (what, head, status, code) in cases {
            let (got, body) = raw(addr, head).await;
            assert_eq!(got, status, "{what} on {addr}");
            if status == 200 {
                // The good request's answer, then the refusal of the garbage, as JSON.
                let text = String::from_utf8_lossy(&body);
                let refusal = text.split("\r\n\r\n").nth(1).unwrap_or_default();
                let refusal: Value = serde_json::from_str(refusal)
                    .unwrap_or_else(|_| panic!("{what} on {addr}: {text}"));
                assert_eq!(refusal["error"], "bad_request", "{what} on {addr}: {text}");
                continue;
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                panic!(
                    "{what} on {addr}: not JSON: {}",
                    String::from_utf8_lossy(&body)
                )
            });
            assert_eq!(body["error"], code, "{what} on {addr}");
            assert!(body["message"].is_string(), "{what} on {addr}: {body}");
        }
    }
}
