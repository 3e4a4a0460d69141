//! `server.ops_listen`: a separate port for probes, scrapers and status that never
//! serves a token, whatever the request looks like.

use serde_json::Value;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_port_serves_health_metrics_and_status_and_never_a_token() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path())
        .replace("[server]\n", "[server]\nops_listen = \"127.0.0.1:0\"\n")
        + &refresh_credential("x", &idp, &bootstrap, "default = true");
    let mut broker = Broker::start(dir.path(), &config);
    broker.ready().await;
    let ops = broker.proc.wait_for("the ops port", |line| {
        let event: Value = serde_json::from_str(line).ok()?;
        (event["message"] == "token-broker serving")
            .then(|| event["ops_listen"].as_str().map(str::to_owned))?
    });
    let token = broker.access_token("x").await;
    let client = client();
    // Probes and scrapers send the pod's IP as Host.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/credentials"] {
        let response = client
            .get(format!("http://{ops}{path}"))
            .header("Host", "10.1.2.3:8657")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.unwrap();
        assert!(!text.contains(&token), "{path} shows the token");
    }
    let status: Value = get_json(&format!("http://{ops}/v1/credentials")).await;
    assert_eq!(status["credentials"][0]["name"], "x");
    let token_requests = [
        ("GET", "/token/x"),
        ("GET", "/token"),
        ("GET", "/token/x?format=raw"),
        ("GET", "/token/x/events"),
        ("POST", "/token/x/refresh"),
        ("POST", "/token/refresh"),
    ];
    for (method, path) in token_requests {
        let response = client
            .request(method.parse().unwrap(), format!("http://{ops}{path}"))
            .header("Token-Broker", "1")
            .header("Host", "127.0.0.1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        let text = response.text().await.unwrap();
        assert!(!text.contains(&token), "{method} {path} shows the token");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"], "not_found", "{method} {path}");
    }
    // The token API is where it was.
    assert_eq!(broker.access_token("x").await, token);
}

#[test]
fn an_ops_address_taken_by_the_api_or_a_typo_is_refused_by_check_config() {
    let dir = tempdir();
    for (ops, why) in [
        ("\"127.0.0.1:8656\"", "already used"),
        ("[\"127.0.0.1:8657\", \"127.0.0.1:8657\"]", "already used"),
        ("\"localhost\"", "is not IP:PORT"),
    ] {
        let path = dir.path().join("config.toml");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:8656\"\nops_listen = {ops}\n[state]\ndir = \"{}\"\n",
            dir.path().join("state").display()
        );
        std::fs::write(&path, config).unwrap();
        let output = std::process::Command::new(bin())
            .args(["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{ops}: {stderr}");
        assert!(
            stderr.contains("server.ops_listen") && stderr.contains(why),
            "{ops}: {stderr}"
        );
    }
}
