//! File descriptors under pressure: idle connections may not starve the broker of the
//! descriptors its state writes and IdP calls need, nor keep clients out.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// Starts the broker through a shell that first sets the descriptor limit to `limit`.
fn broker_with_limit(dir: &std::path::Path, config: &str, limit: u32) -> Broker {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let script = format!("ulimit -n {limit} && exec \"$0\" \"$@\"");
    let mut proc = Proc::spawn_program(
        "bash",
        &[
            "-c",
            &script,
            bin(),
            "run",
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[],
    );
    let addr = proc.wait_for("the broker to listen", |line| {
        let event: Value = serde_json::from_str(line).ok()?;
        (event["message"] == "token-broker serving")
            .then(|| event["listen"].as_str().map(str::to_owned))?
    });
    Broker {
        proc,
        url: format!("http://{addr}"),
        dir: dir.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_idle_connections_under_256_descriptors_starve_nothing() {
    let idp = Idp::start(&["--access-ttl", "3s"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    // Idle connections would be closed after header_timeout: keep them for the test.
    let config = base_config(dir.path())
        .replace("[server]\n", "[server]\nheader_timeout = \"60s\"\n")
        + &refresh_credential("x", &idp, &bootstrap, "");
    let mut broker = broker_with_limit(dir.path(), &config, 256);
    broker.ready().await;
    let cap: u64 = broker.proc.wait_for("the connection cap", |line| {
        let event: Value = serde_json::from_str(line).ok()?;
        event["max_connections"].as_u64()
    });
    assert!(cap < 256, "max_connections {cap} is not below the limit");

    let addr = broker.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let refreshes = idp.stat("refresh_grants").await;
    // Tokens live 3 s: over 8 s the broker must refresh (IdP call, state write) and
    // serve, while the 400 connections stay open on our side.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut served = 0;
    while Instant::now() < deadline {
        let response = tokio::time::timeout(Duration::from_secs(3), broker.get("/token/x"))
            .await
            .expect("a token request was not answered within 3 s");
        assert_eq!(response.status(), 200, "{}", broker.proc.logs());
        // A 200 is a token that has not expired.
        let token: Value = response.json().await.unwrap();
        assert!(token["access_token"].is_string());
        served += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(served >= 10);
    assert!(
        idp.stat("refresh_grants").await >= refreshes + 2,
        "no refreshes while the connections were open:\n{}",
        broker.proc.logs()
    );
    let logs = broker.proc.logs();
    assert!(!logs.contains("refresh failed"), "{logs}");
    // The cap kept accept itself from running out of descriptors.
    assert!(!logs.contains("accept failed"), "{logs}");
    drop(idle);
}
