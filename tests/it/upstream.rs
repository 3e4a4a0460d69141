//! A small real HTTP server the proxy tests forward to, under `/base`: it reports the
//! headers it received, echoes and digests bodies as they stream, streams large
//! downloads, answers slowly or always 401 (also with a DPoP nonce challenge that never
//! takes), refuses one given token (then challenges others), and guards a route with the dev IdP's `/api/whoami`. Plus a raw HTTP/1.1 client, for requests no library would send.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The byte at `i` of every generated body: a pattern a truncation or reordering breaks.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Bytes `start..end` of the pattern. A byte depends only on the low 21 bits of its
/// index, so the pattern repeats every 2 MiB: copying from one period, made once, keeps
/// the hundreds of MiB the body tests send from costing seconds of unoptimised loops.
pub fn pattern_range(start: u64, end: u64) -> Vec<u8> {
    const PERIOD: u64 = 1 << 21;
    static ONE_PERIOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let period = ONE_PERIOD.get_or_init(|| (0..PERIOD).map(pattern).collect());
    let mut bytes = Vec::with_capacity(end.saturating_sub(start) as usize);
    let mut i = start;
    while i < end {
        let from = (i % PERIOD) as usize;
        let take = (end - i).min(PERIOD - i % PERIOD) as usize;
        bytes.extend_from_slice(&period[from..from + take]);
        i += take as u64;
    }
    bytes
}

#[test]
fn the_pattern_copied_from_one_period_is_the_pattern() {
    for (start, end) in [
        (0, 10),
        (5, 3 << 21),
        ((1 << 21) - 7, (1 << 22) + 9),
        (1 << 40, (1 << 40) + 70_000),
    ] {
        let direct: Vec<u8> = (start..end).map(pattern).collect();
        assert!(pattern_range(start, end) == direct, "{start}..{end}");
    }
}

/// Length and SHA-256 (hex) of `n` pattern bytes, computed the way the server does.
pub fn pattern_digest(n: u64) -> (u64, String) {
    let mut hasher = Sha256::new();
    let mut i = 0;
    while i < n {
        let end = (i + 65_536).min(n);
        let chunk: Vec<u8> = pattern_range(i, end);
        hasher.update(&chunk);
        i = end;
    }
    (n, hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the server on a free port; returns its base URL (without `/base`).
pub async fn start(idp_url: String) -> String {
    // Full paths rather than `nest`, so handlers see the URI as it arrived.
    let app = Router::new()
        .route("/base/headers", get(headers))
        .route("/base/echo", post(echo))
        .route("/base/digest", post(digest))
        .route("/base/download/{n}", get(download))
        .route("/base/slow", get(slow))
        .route("/base/guarded", post(guarded))
        .route("/base/refuses", get(refuses))
        .route("/base/nonce-always", get(nonce_always))
        .route("/base/refuses-token/{digest}", get(refuses_token))
        .route(
            "/base/refuses-then-challenges/{digest}",
            get(refuses_then_challenges),
        )
        .with_state(idp_url);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// What arrived: method, URI and every header; the answer carries hop-by-hop headers
/// of its own, which the proxy must drop.
async fn headers(request: Request) -> Response {
    let received: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
        .collect();
    let body = json!({"uri": request.uri().to_string(), "headers": received});
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert("connection", HeaderValue::from_static("x-resp-hop"));
    headers.insert("x-resp-hop", HeaderValue::from_static("1"));
    headers.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
    headers.insert("x-resp-end", HeaderValue::from_static("1"));
    response
}

/// The body back, streamed as it arrives.
async fn echo(request: Request) -> Response {
    Response::new(Body::from_stream(request.into_body().into_data_stream()))
}

/// Length and SHA-256 of the body, read as a stream.
async fn digest(request: Request) -> Response {
    let (n, sha) = digest_body(request.into_body()).await;
    axum::Json(json!({"len": n, "sha256": sha})).into_response()
}

async fn digest_body(body: Body) -> (u64, String) {
    let mut stream = body.into_data_stream();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (n, hex(&hasher.finalize()))
}

/// `n` pattern bytes in 64 KiB chunks, produced as they are sent.
async fn download(Path(n): Path<u64>) -> Response {
    let chunks = futures_util::stream::unfold(0u64, move |i| async move {
        (i < n).then(|| {
            let end = (i + 65_536).min(n);
            let chunk: Vec<u8> = pattern_range(i, end);
            (Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), end)
        })
    });
    Response::new(Body::from_stream(chunks))
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

/// Refuses every token, fresh or not: what an API does with a wrong audience.
async fn refuses() -> Response {
    (StatusCode::UNAUTHORIZED, "wrong audience").into_response()
}

/// Challenges every request for a DPoP nonce, with a new nonce each time: an API whose
/// nonces never take, so no retry can satisfy it.
async fn nonce_always() -> Response {
    static SENT: AtomicU64 = AtomicU64::new(0);
    let n = SENT.fetch_add(1, Ordering::Relaxed);
    let mut response = (StatusCode::UNAUTHORIZED, "nonce please").into_response();
    let headers = response.headers_mut();
    headers.insert(
        "www-authenticate",
        HeaderValue::from_static(
            r#"DPoP error="use_dpop_nonce", error_description="send a nonce""#,
        ),
    );
    headers.insert(
        "dpop-nonce",
        HeaderValue::from_str(&format!("n-{n}")).unwrap(),
    );
    response
}

/// Refuses the one token whose `token_digest` is `digest` (as an API that no longer
/// takes it: `DPoP error="invalid_token"`) and takes any other.
async fn refuses_token(Path(digest): Path<String>, headers: HeaderMap) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map_or("", |(_, token)| token);
    if token_digest(token) != digest {
        return "taken".into_response();
    }
    let mut response = (StatusCode::UNAUTHORIZED, "token refused").into_response();
    response.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static(r#"DPoP error="invalid_token""#),
    );
    response
}

/// Refuses the token whose `token_digest` is `digest`, and challenges every other one
/// for a nonce, as `nonce_always` does.
async fn refuses_then_challenges(Path(digest): Path<String>, headers: HeaderMap) -> Response {
    let refused = refuses_token(Path(digest), headers).await;
    if refused.status() == StatusCode::UNAUTHORIZED {
        return refused;
    }
    nonce_always().await
}

/// A token's name in a URL: the first 16 hex digits of its SHA-256, not the token.
pub fn token_digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))[..16].to_owned()
}

/// Reads the body, then lets the dev IdP judge the bearer token: 401 unless it is live.
async fn guarded(State(idp): State<String>, headers: HeaderMap, body: Body) -> Response {
    let (n, sha) = digest_body(body).await;
    let mut request = reqwest::Client::new().get(format!("{idp}/api/whoami"));
    if let Some(auth) = headers.get("authorization") {
        request = request.header("authorization", auth.to_str().unwrap());
    }
    let status = request.send().await.unwrap().status().as_u16();
    if status != 200 {
        return (StatusCode::UNAUTHORIZED, "stale token").into_response();
    }
    axum::Json(json!({"len": n, "sha256": sha})).into_response()
}

/// A raw HTTP/1.1 exchange: `head` (ending in a blank line) and `body` go out as
/// written; returns the status, the headers (lower-case names) and the decoded body.
pub async fn exchange(
    addr: &str,
    head: &str,
    body: &[u8],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let text = String::from_utf8(answer[..split].to_vec()).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = answer[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line]).unwrap().trim(), 16).unwrap();
        data = &data[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Peak resident memory of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}
