//! Locking down the local endpoint: Host allowlist, unix sockets with peer credentials,
//! client keys, and no secret anywhere a secret could leak.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::*;

/// `curl --unix-socket` against the broker; returns (status, body).
fn curl_unix(socket: &Path, path: &str, extra: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            socket.to_str().unwrap(),
        ])
        .args(extra)
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("curl is installed by tests/run.sh");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

fn uid() -> u32 {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_outside_the_allowlist_are_refused() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path()).replace(
        "[server]\n",
        "[server]\nallowed_hosts = [\"broker.internal\"]\n",
    ) + &refresh_credential("x", &idp, &bootstrap, "");
    let broker = Broker::start(dir.path(), &config);
    broker.ready().await;
    let with_host = |host: &str| {
        client()
            .get(format!("{}/token/x", broker.url))
            .header("Token-Broker", "1")
            .header("Host", host)
            .send()
    };
    for host in ["evil.example", "evil.example:8656", "10.1.2.3"] {
        let response = with_host(host).await.unwrap();
        assert_eq!(response.status(), 403, "{host}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "bad_host");
    }
    for host in [
        "localhost:1",
        "127.0.0.1",
        "[::1]:8656",
        "Broker.Internal:8656",
    ] {
        assert_eq!(with_host(host).await.unwrap().status(), 200, "{host}");
    }
    let status = client()
        .get(format!("{}/v1/credentials", broker.url))
        .header("Host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 403);
    // Probes and scrapers come with the pod's IP as Host; they need no allowlist.
    let readyz = client()
        .get(format!("{}/readyz", broker.url))
        .header("Host", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_with_peer_credentials_and_tcp_with_client_keys() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let socket = dir.path().join("broker.sock");
    // A socket file left by a dead broker is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let me = uid();
    let config = base_config(dir.path()).replace(
        "listen = \"127.0.0.1:0\"",
        &format!(
            "listen = [\"127.0.0.1:0\", \"unix:{}\"]\nsocket_mode = \"0600\"",
            socket.display()
        ),
    ) + &refresh_credential(
        "mine",
        &idp,
        &bootstrap,
        &format!("allowed_uids = [{me}]\nclient_keys = [{{ env = \"TB_KEY\" }}]"),
    ) + &format!(
        "[credentials.theirs]\ngrant = \"client_credentials\"\ntoken_url = \"{}/token\"\nclient_id = \"dev-client\"\nclient_secret = \"dev-secret\"\nallowed_uids = [{}]\n",
        idp.url,
        me + 1
    );
    let broker = Broker::start_with_env(dir.path(), &config, &[("TB_KEY", "k3y-for-tcp-clients")]);
    broker.ready().await;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Over the socket, the kernel vouches for our uid: no key needed.
    let (status, body) = curl_unix(&socket, "/token/mine", &["-H", "Token-Broker: 1"]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl_unix(&socket, "/token/theirs", &["-H", "Token-Broker: 1"]);
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "forbidden"
    );

    // Over TCP, only the key opens it.
    let tcp = |key: Option<&str>| {
        let request = client()
            .get(format!("{}/token/mine", broker.url))
            .header("Token-Broker", "1");
        match key {
            Some(key) => request.header("Token-Broker-Key", key).send(),
            None => request.send(),
        }
    };
    assert_eq!(tcp(None).await.unwrap().status(), 403);
    assert_eq!(tcp(Some("k3y-for-tcp-client")).await.unwrap().status(), 403);
    assert_eq!(
        tcp(Some("k3y-for-tcp-clients")).await.unwrap().status(),
        200
    );
    assert!(
        !broker.proc.logs().contains("k3y-for-tcp"),
        "a key reached the logs"
    );

    // A live socket is not stolen by a second broker.
    let second = tempdir();
    let stolen = config.replace(
        &dir.path().join("state").display().to_string(),
        &second.path().join("state").display().to_string(),
    );
    std::fs::write(second.path().join("config.toml"), stolen).unwrap();
    let output = Command::new(bin())
        .args([
            "run",
            "--config",
            second.path().join("config.toml").to_str().unwrap(),
        ])
        .env("TB_KEY", "x")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("served by a running process"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_metrics_status_or_error_bodies_even_at_trace() {
    let secret = format!("client-secret-{}", rand_suffix());
    let idp = Idp::start(&["--client-secret", &secret, "--access-ttl", "3s"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let key = format!("client-key-{}", rand_suffix());
    let config = base_config(dir.path())
        + &refresh_credential(
            "x",
            &idp,
            &bootstrap,
            "min_refresh_interval = \"0s\"\nclient_keys = [{ env = \"TB_KEY\" }]",
        )
        .replace(
            "client_secret = \"dev-secret\"",
            "client_secret = { env = \"TB_SECRET\" }",
        );
    let broker = Broker::start_with_env(
        dir.path(),
        &config,
        &[
            ("TB_KEY", key.as_str()),
            ("TB_SECRET", secret.as_str()),
            ("RUST_LOG", "trace"),
        ],
    );
    let keyed = |path: &str| {
        client()
            .get(format!("{}{path}", broker.url))
            .header("Token-Broker", "1")
            .header("Token-Broker-Key", key.as_str())
    };
    let mut seen = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let body: Value = keyed("/token/x?min_ttl=2s")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
        let report = client()
            .post(format!("{}/token/x/refresh", broker.url))
            .header("Token-Broker", "1")
            .header("Token-Broker-Key", key.as_str())
            .json(&serde_json::json!({"rejected_token": tokens.last().unwrap()}))
            .send()
            .await
            .unwrap();
        tokens.push(
            report.json::<Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for path in ["/token/nope", "/token/x?min_ttl=bad", "/token/x?format=xml"] {
        seen.push(keyed(path).send().await.unwrap().text().await.unwrap());
    }
    seen.push(
        client()
            .get(format!("{}/token/x", broker.url))
            .header("Token-Broker", "1")
            .header("Token-Broker-Key", "wrong")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    for path in ["/metrics", "/v1/credentials", "/readyz", "/healthz"] {
        seen.push(
            client()
                .get(format!("{}{path}", broker.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let status = Command::new(bin())
        .args(["status", "--url", &broker.url])
        .output()
        .unwrap();
    seen.push(String::from_utf8_lossy(&status.stdout).into_owned());
    idp.admin("revoke", serde_json::json!({})).await;
    seen.push(broker.refresh("x", None).await.text().await.unwrap());

    // The live refresh token, straight from the state file.
    let state = dir.path().join("state");
    let mut refresh_tokens = vec![idp.refresh_token.clone()];
    for entry in std::fs::read_dir(&state).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        if let Some((_, json)) = text.split_once('\n')
            && let Ok(body) = serde_json::from_str::<Value>(json)
            && let Some(rt) = body["refresh_token"].as_str()
        {
            refresh_tokens.push(rt.to_owned());
        }
    }
    let logs = broker.proc.logs();
    let verbose = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"DEBUG\"") || l.contains("\"level\":\"TRACE\""))
        .count();
    assert!(
        verbose >= 10,
        "trace logging was on: {verbose} verbose lines"
    );
    seen.push(logs);
    let haystack = seen.join("\n");
    for needle in tokens.iter().chain(&refresh_tokens).chain([&secret, &key]) {
        assert!(
            !haystack.contains(needle.as_str()),
            "a secret leaked: {}...",
            &needle[..12.min(needle.len())]
        );
    }
}
