//! Credentials without a refresh token that the IdP refuses: they resume as soon as
//! anything the IdP judges changes (a secret, or a setting such as the scope), through
//! a reload or a restart, and a setting the IdP never sees changes nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::failures::eventually;
use crate::harness::*;

/// A `client_credentials` credential at `idp` with `scope`, plus `extra` keys.
fn machine(name: &str, idp: &Idp, scope: &str, extra: &str) -> String {
    format!(
        "\n[credentials.{name}]\ngrant = \"client_credentials\"\ntoken_url = \"{}/token\"\n\
         client_id = \"dev-client\"\nclient_secret = \"dev-secret\"\nscope = \"{scope}\"\n\
         bootstrap_poll = \"100ms\"\n{extra}\n",
        idp.url
    )
}

async fn error_code(broker: &Broker, name: &str) -> Value {
    let body: Value = broker
        .get(&format!("/token/{name}"))
        .await
        .json()
        .await
        .unwrap();
    body["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_resumes_once_its_settings_are_fixed_by_reload_or_restart() {
    let idp = Idp::start(&[]);
    idp.admin(
        "faults",
        json!({"status": 400, "error": "invalid_scope", "count": 2}),
    )
    .await;
    let dir = tempdir();
    let config = |m: &str, n: &str, extra: &str| {
        base_config(dir.path()) + &machine("m", &idp, m, extra) + &machine("n", &idp, n, "")
    };
    let mut broker = Broker::start(dir.path(), &config("wrong", "wrong", ""));
    for name in ["m", "n"] {
        assert_eq!(error_code(&broker, name).await, "reauth_required");
    }
    assert_eq!(idp.stat("token_requests").await, 2);

    // A setting the IdP never sees: still refused, no new call.
    std::fs::write(
        dir.path().join("config.toml"),
        config("wrong", "wrong", "min_refresh_interval = \"7s\""),
    )
    .unwrap();
    signal(&broker.proc.child, "HUP");
    eventually("the reload", || async {
        broker.proc.logs().contains("configuration reloaded")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(error_code(&broker, "m").await, "reauth_required");
    assert_eq!(idp.stat("token_requests").await, 2);

    // The scope fixed and reloaded: m asks again and gets its token.
    std::fs::write(dir.path().join("config.toml"), config("right", "wrong", "")).unwrap();
    signal(&broker.proc.child, "HUP");
    eventually("m to resume after the reload", || async {
        broker.get("/token/m").await.status() == 200
    })
    .await;
    assert_eq!(broker.token("m").await["scope"], "right");
    assert_eq!(error_code(&broker, "n").await, "reauth_required");

    // n's scope fixed while the broker is stopped: it resumes at start.
    assert!(broker.proc.terminate().success());
    broker = Broker::start(dir.path(), &config("right", "right", ""));
    assert_eq!(broker.token("n").await["scope"], "right");
    assert_eq!(idp.stat("token_requests").await, 4);
}

/// The text of the newest state generation of `name`.
fn newest_state(dir: &std::path::Path, name: &str) -> String {
    let newest = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let generation = file
                .strip_prefix(&format!("{name}."))?
                .strip_suffix(".state")?
                .parse::<u64>()
                .ok()?;
            Some((generation, e.path()))
        })
        .max()
        .unwrap();
    std::fs::read_to_string(newest.1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_refusal_is_stored_with_a_fingerprint_and_that_one_is_slow_and_salted() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let config = base_config(dir.path()) + &machine("m", &idp, "read", "");
    let broker = Broker::start(dir.path(), &config);
    let token = broker.access_token("m").await;
    let healthy = newest_state(dir.path(), "m");
    assert!(healthy.contains("\"bootstrap\":null"), "{healthy}");

    idp.admin(
        "faults",
        json!({"status": 401, "error": "invalid_client", "count": 1}),
    )
    .await;
    let response = broker.refresh("m", Some(&token)).await;
    assert_eq!(response.status(), 503);
    let refused = newest_state(dir.path(), "m");
    let fingerprint = refused
        .split("\"bootstrap\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no fingerprint stored with the refusal: {refused}"));
    let parts: Vec<&str> = fingerprint.split('$').collect();
    assert_eq!(parts[..2], ["pbkdf2-sha256", "100000"], "{fingerprint}");
    assert!(parts[2].len() >= 22, "a 16-byte salt: {fingerprint}");
    assert!(!refused.contains("dev-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_without_a_chain_is_asked_again_after_backoff_max_but_a_chain_stays_stopped() {
    let idp = Idp::start(&[]);
    // The first two requests are refused: one per credential.
    idp.admin(
        "faults",
        json!({"status": 401, "error": "invalid_client", "count": 2}),
    )
    .await;
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let timings = "backoff_initial = \"100ms\"\nbackoff_max = \"3s\"";
    let config = base_config(dir.path())
        + &machine("m", &idp, "read", timings)
        + &refresh_credential(
            "r",
            &idp,
            &bootstrap,
            &format!("{timings}\nbootstrap_poll = \"100ms\""),
        );
    let broker = Broker::start(dir.path(), &config);
    for name in ["m", "r"] {
        assert_eq!(error_code(&broker, name).await, "reauth_required");
    }
    let refused_at = std::time::Instant::now();
    let status = broker.status().await;
    let m = status["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "m")
        .unwrap()
        .clone();
    assert_eq!(m["state"], "reauth_required", "{m}");
    assert!(m["next_refresh_at"].is_string(), "the retry is shown: {m}");

    // Requests never ask the IdP for a refused credential, and the retry waits.
    for _ in 0..20 {
        assert_eq!(error_code(&broker, "m").await, "reauth_required");
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(idp.stat("token_requests").await, 2);

    eventually("m to be asked again and served", || async {
        broker.get("/token/m").await.status() == 200
    })
    .await;
    assert!(refused_at.elapsed() >= Duration::from_millis(2500));
    assert!(
        broker
            .proc
            .logs()
            .contains("asking the identity provider again"),
        "{}",
        broker.proc.logs()
    );
    // The refresh-token chain is never retried: its token may be spent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(error_code(&broker, "r").await, "reauth_required");
    assert_eq!(idp.stat("token_requests").await, 3);
}
