//! Guarantee 2: rotated refresh tokens are durable, private, and win over a spent
//! bootstrap after any restart, including `kill -9`.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::harness::*;

async fn forced(broker: &Broker) -> String {
    let response = broker.refresh("x", None).await;
    assert_eq!(response.status(), 200, "{}", broker.proc.logs());
    response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_stored_token_not_the_spent_bootstrap() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let extra = "min_refresh_interval = \"0s\"";
    let mut broker = broker_for(&idp, dir.path(), extra);
    broker.token("x").await;
    forced(&broker).await;
    assert_eq!(idp.stat("refresh_grants").await, 2);

    // Every state file is private; the directory too.
    let state = dir.path().join("state");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for entry in std::fs::read_dir(&state).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path().display());
    }

    assert!(broker.proc.terminate().success());
    let broker = broker_for(&idp, dir.path(), extra);
    let restored = broker.token("x").await;
    assert_eq!(
        idp.stat("refresh_grants").await,
        2,
        "the stored access token was still valid"
    );
    assert_eq!(
        idp.whoami(restored["access_token"].as_str().unwrap()).await,
        200
    );
    forced(&broker).await;
    assert_eq!(idp.stat("refresh_grants").await, 3);
    assert_eq!(idp.stat("invalid_grant").await, 0);
    assert_eq!(idp.stat("reuse_detected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_a_rotation_loses_nothing() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let extra = "min_refresh_interval = \"0s\"";
    let mut broker = broker_for(&idp, dir.path(), extra);
    for _ in 0..3 {
        forced(&broker).await;
    }
    broker.proc.kill9();
    let broker = broker_for(&idp, dir.path(), extra);
    let token = forced(&broker).await;
    assert_eq!(idp.whoami(&token).await, 200);
    assert_eq!(idp.stat("reuse_detected").await, 0);
    assert_eq!(idp.stat("families_revoked").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_bootstrap_token_starts_a_new_chain_at_restart() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let mut broker = broker_for(&idp, dir.path(), "");
    broker.token("x").await;
    assert!(broker.proc.terminate().success());

    // The operator mints a new family and writes it as the bootstrap.
    let fresh = idp.mint().await;
    std::fs::write(dir.path().join("bootstrap"), &fresh).unwrap();
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let broker = Broker::start(dir.path(), &config);
    let response = broker.refresh("x", None).await;
    assert_eq!(response.status(), 200, "{}", broker.proc.logs());
    assert!(
        broker.proc.logs().contains("bootstrap token changed"),
        "{}",
        broker.proc.logs()
    );
    assert_eq!(idp.stat("reuse_detected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_state_dir_is_refused() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let _first = broker_for(&idp, dir.path(), "");
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let second = tempdir();
    std::fs::write(second.path().join("config.toml"), config).unwrap();
    let output = std::process::Command::new(bin())
        .args([
            "run",
            "--config",
            second.path().join("config.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another token-broker (pid"),
        "{stderr}"
    );
}
