//! Header-injecting proxies against real upstreams (the dev IdP's `/api/whoami` and a
//! test server): the token added and the client's replaced, hop-by-hop headers dropped
//! both ways, one refresh for a burst of 401s, clear errors, a unix socket, the header
//! deadline, config checks. Bodies: `proxy_bodies`.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::upstream::{self, exchange};

/// A broker with credential `x` and the given `[proxies...]` tables.
pub fn start(idp: &Idp, dir: &std::path::Path, proxies: &str, env: &[(&str, &str)]) -> Broker {
    start_with(idp, dir, "", proxies, env)
}

/// `start`, with `extra` keys for the credential.
pub fn start_with(
    idp: &Idp,
    dir: &std::path::Path,
    extra: &str,
    proxies: &str,
    env: &[(&str, &str)],
) -> Broker {
    let bootstrap = dir.join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir) + &refresh_credential("x", idp, &bootstrap, extra) + proxies;
    Broker::start_with_env(dir, &config, env)
}

/// The address a proxy listens on, from its start-up line.
pub fn proxy_addr(broker: &mut Broker, name: &str) -> String {
    broker.proc.wait_for("the proxy to listen", |line| {
        let event: Value = serde_json::from_str(line).ok()?;
        (event["message"] == "proxy serving" && event["proxy"] == name)
            .then(|| event["listen"].as_str().unwrap().to_owned())
    })
}

/// A proxy table on a free loopback port.
pub fn proxy(name: &str, upstream: &str, extra: &str) -> String {
    format!(
        "\n[proxies.{name}]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\ncredential = \"x\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_token_and_its_host_and_no_hop_by_hop_headers() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let upstream = upstream::start(idp.url.clone()).await;
    let dir = tempdir();
    let proxies = proxy("api", &format!("{upstream}/base/"), "") + &proxy("idp", &idp.url, "");
    let mut broker = start(&idp, dir.path(), &proxies, &[("RUST_LOG", "trace")]);
    let addr = proxy_addr(&mut broker, "api");
    let whoami = proxy_addr(&mut broker, "idp");
    let token = broker.access_token("x").await;

    let head = format!(
        "GET /headers?q=1&r=%2F HTTP/1.1\r\nHost: {addr}\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-sum\r\nProxy-Authorization: Basic Zm9v\r\n\
         Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nAuthorization: Bearer the-clients-own\r\n\
         Token-Broker-Key: not-for-them\r\nX-End-To-End: kept\r\n\r\n"
    );
    let (status, headers, body) = exchange(&addr, &head, b"").await;
    assert_eq!(status, 200);
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        seen["uri"], "/base/headers?q=1&r=%2F",
        "the prefix, path and query"
    );
    let received = seen["headers"].as_object().unwrap();
    assert_eq!(
        received["authorization"],
        format!("Bearer {token}").as_str()
    );
    assert_eq!(received["host"], upstream.trim_start_matches("http://"));
    assert_eq!(received["x-end-to-end"], "kept");
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "token-broker-key",
    ] {
        assert!(
            !received.contains_key(gone),
            "{gone} reached the upstream: {received:?}"
        );
    }
    assert_eq!(headers.get("x-resp-end").map(String::as_str), Some("1"));
    assert!(!headers.contains_key("x-resp-hop"), "{headers:?}");
    assert!(!headers.contains_key("proxy-authenticate"), "{headers:?}");

    // The dev IdP's protected resource accepts what the proxy sends.
    let response = client()
        .get(format!("http://{whoami}/api/whoami"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the client's Authorization was replaced"
    );
    let who: Value = response.json().await.unwrap();
    assert_eq!(who["client_id"], "dev-client");
    let logs = broker.proc.logs();
    assert!(
        logs.contains("\"level\":\"TRACE\""),
        "trace lines were logged"
    );
    assert!(
        !logs.contains(&token),
        "the token reached the trace-level logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_requests_with_a_stale_token_make_one_refresh() {
    let idp = Idp::start(&["--access-ttl", "300s", "--latency", "200ms"]);
    let dir = tempdir();
    let mut broker = start(
        &idp,
        dir.path(),
        &proxy("idp", &idp.url, ""),
        &[("RUST_LOG", "debug")],
    );
    let addr = proxy_addr(&mut broker, "idp");
    let first = broker.access_token("x").await;
    let client = client();
    let whoami = format!("http://{addr}/api/whoami");
    assert_eq!(client.get(&whoami).send().await.unwrap().status(), 200);
    let before = idp.stat("refresh_grants").await;

    // The API now refuses the token the broker still holds as valid.
    idp.admin("forget-access-tokens", serde_json::json!({}))
        .await;
    assert_eq!(idp.whoami(&first).await, 401);
    let statuses = join_all((0..300).map(|_| {
        let request = client.get(&whoami);
        async move { request.send().await.unwrap().status().as_u16() }
    }))
    .await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        idp.stat("refresh_grants").await - before,
        1,
        "exactly one refresh"
    );
    assert_eq!(idp.stat("max_in_flight").await, 1);
    assert_eq!(idp.stat("reuse_detected").await, 0);
    let second = broker.access_token("x").await;
    assert_ne!(second, first);
    let metrics = broker.metrics_text().await;
    assert!(
        metrics
            .contains(r#"token_broker_proxy_requests_total{proxy="idp",outcome="forwarded"} 301"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"token_broker_proxy_retries_total{proxy="idp",result="ok"}"#),
        "{metrics}"
    );
    let logs = broker.proc.logs();
    assert!(
        logs.contains("\"message\":\"proxied\""),
        "debug lines were logged"
    );
    for token in [&first, &second] {
        assert!(!logs.contains(token.as_str()), "a token reached the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_with_client_keys_is_used_through_its_proxy_only_with_a_key() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let upstream = upstream::start(idp.url.clone()).await;
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let keyed = "client_keys = [{ env = \"TB_KEY\" }]";
    let config = base_config(dir.path())
        + &refresh_credential("x", &idp, &bootstrap, keyed)
        + &proxy("api", &format!("{upstream}/base"), "");
    let mut broker = Broker::start_with_env(dir.path(), &config, &[("TB_KEY", "the-key")]);
    let addr = proxy_addr(&mut broker, "api");
    let headers = format!("http://{addr}/headers");

    for key in [None, Some("a-wrong-key")] {
        let mut request = client().get(&headers);
        if let Some(key) = key {
            request = request.header("Token-Broker-Key", key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "key {key:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "forbidden", "{body}");
    }
    let response = client()
        .get(&headers)
        .header("Token-Broker-Key", "the-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert!(
        seen["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer "),
        "{seen}"
    );
    let metrics = broker.metrics_text().await;
    for line in [
        r#"token_broker_proxy_requests_total{proxy="api",outcome="refused"} 2"#,
        r#"token_broker_proxy_requests_total{proxy="api",outcome="forwarded"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_errors_are_clear_json_answers() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let upstream = upstream::start(idp.url.clone()).await;
    let dir = tempdir();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = format!(
        "\n[credentials.down]\ngrant = \"client_credentials\"\ntoken_url = \"http://{closed}/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\nrequired = false\n"
    );
    let proxies = proxy(
        "api",
        &format!("{upstream}/base"),
        "response_timeout = \"1s\"",
    ) + &proxy("dead", &format!("http://{closed}"), "")
        + &proxy("tokenless", &upstream, "").replace("credential = \"x\"", "credential = \"down\"");
    let mut broker = start(&idp, dir.path(), &(down + &proxies), &[]);
    let (api, dead, tokenless) = (
        proxy_addr(&mut broker, "api"),
        proxy_addr(&mut broker, "dead"),
        proxy_addr(&mut broker, "tokenless"),
    );
    broker.token("x").await;
    let client = client();
    let answer = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body)
    };

    let (status, body) = answer(client.get(format!("http://{dead}/anything"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("upstream_unreachable")),
        "{body}"
    );
    assert_eq!(body["proxy"], "dead");
    let (status, body) = answer(client.get(format!("http://{api}/slow"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("upstream_timeout")),
        "{body}"
    );
    let (status, body) = answer(client.get(format!("http://{tokenless}/headers"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("upstream_unavailable")),
        "{body}"
    );
    assert_eq!(body["credential"], "down");
    let from_page = client
        .get(format!("http://{api}/headers"))
        .header("Origin", "https://evil.example");
    let (status, body) = answer(from_page).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("browser_request")),
        "{body}"
    );
    let cross = client
        .get(format!("http://{api}/headers"))
        .header("Sec-Fetch-Site", "cross-site");
    assert_eq!(answer(cross).await.0, 403);
    let rebound = client
        .get(format!("http://{api}/headers"))
        .header("Host", "evil.example");
    let (status, body) = answer(rebound).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("bad_host")),
        "{body}"
    );
    let metrics = broker.metrics_text().await;
    for expected in [
        r#"token_broker_proxy_requests_total{proxy="dead",outcome="upstream_unreachable"} 1"#,
        r#"token_broker_proxy_requests_total{proxy="api",outcome="upstream_timeout"} 1"#,
        r#"token_broker_proxy_requests_total{proxy="tokenless",outcome="no_token"} 1"#,
        r#"token_broker_proxy_requests_total{proxy="api",outcome="refused"} 3"#,
    ] {
        assert!(metrics.contains(expected), "{expected} not in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_proxy_and_the_header_deadline() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let socket = dir.path().join("api.sock");
    let proxies = format!(
        "\n[proxies.sock]\nlisten = \"unix:{}\"\nupstream = \"{}\"\ncredential = \"x\"\n",
        socket.display(),
        idp.url
    ) + &proxy("tcp", &idp.url, "");
    let config_dir = dir.path();
    let bootstrap = config_dir.join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(config_dir)
        .replace("[server]\n", "[server]\nheader_timeout = \"1s\"\n")
        + &refresh_credential("x", &idp, &bootstrap, "")
        + &proxies;
    let mut broker = Broker::start(config_dir, &config);
    let tcp = proxy_addr(&mut broker, "tcp");
    broker.ready().await;

    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&socket)
        .arg("http://localhost/api/whoami")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200");

    // A client that never finishes its headers is cut off, as on the API's listeners.
    let mut slow = tokio::net::TcpStream::connect(&tcp).await.unwrap();
    slow.write_all(b"GET /api/whoami HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "the slow connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn check_config_refuses_bad_proxies() {
    let dir = tempdir();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:8656\"\n[state]\ndir = \"{}\"\n\
         [credentials.x]\ngrant = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         [proxies.open]\nlisten = \"0.0.0.0:9000\"\nupstream = \"https://api.example.com\"\ncredential = \"x\"\n\
         [proxies.clash]\nlisten = \"127.0.0.1:8656\"\nupstream = \"https://api.example.com\"\ncredential = \"x\"\n\
         [proxies.plain]\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://api.example.com\"\ncredential = \"x\"\n\
         [proxies.userinfo]\nlisten = \"127.0.0.1:9002\"\nupstream = \"https://u:p@api.example.com\"\ncredential = \"x\"\n\
         [proxies.nobody]\nlisten = \"127.0.0.1:9003\"\nupstream = \"https://api.example.com\"\ncredential = \"y\"\n\
         [proxies.empty]\nupstream = \"https://api.example.com?a=b\"\n",
        dir.path().join("state").display()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let errors = String::from_utf8(output.stderr).unwrap();
    for expected in [
        "proxies.open.listen: `0.0.0.0:9000` is not a loopback address",
        "proxies.clash.listen: `127.0.0.1:8656` is already used by server.listen",
        "proxies.plain.upstream: `http://api.example.com` uses plain http to a non-loopback host",
        "proxies.userinfo.upstream: must not carry a user name or password",
        "proxies.nobody.credential: no credential is named `y`",
        "proxies.empty.listen: is required",
        "proxies.empty.credential: is required",
        "proxies.empty.upstream: must not have a query or fragment",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }

    // With --check-secrets, a proxy's CA file must hold certificates.
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let config = format!(
        "[state]\ndir = \"{}\"\n[credentials.x]\ngrant = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         [proxies.api]\nlisten = \"127.0.0.1:9000\"\nupstream = \"https://api.example.com\"\ncredential = \"x\"\nca_file = \"{}\"\n",
        dir.path().join("state").display(),
        not_pem.display()
    );
    std::fs::write(&path, config).unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec!["check-config", "--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        std::process::Command::new(bin())
            .args(&args)
            .output()
            .unwrap()
    };
    assert!(check(&[]).status.success());
    let output = check(&["--check-secrets"]);
    let errors = String::from_utf8(output.stderr).unwrap();
    assert!(
        errors.contains("proxies.api.ca_file:") && errors.contains("holds no PEM certificate"),
        "{errors}"
    );
}

/// Makes the broker's current token stale at the API (the dev IdP forgets it).
pub async fn stale(idp: &Idp) {
    idp.admin("forget-access-tokens", serde_json::json!({}))
        .await;
}
