//! Operating the broker: metrics that move as they should, structured logs, hot reload,
//! graceful shutdown, readiness of optional credentials.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::failures::eventually;
use crate::harness::*;

/// One sample from the metrics text, 0 when absent.
async fn metric(broker: &Broker, series: &str) -> u64 {
    let text = broker.metrics_text().await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stampede_shows_one_refresh_and_the_rest_joined_and_logs_are_json() {
    let idp = Idp::start(&["--access-ttl", "100s", "--latency", "1s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "");
    broker.token("x").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The first request may have joined the start-up fetch.
    let joined_before = metric(
        &broker,
        r#"token_broker_refresh_joined_total{credential="x"}"#,
    )
    .await;
    let client = client();
    let requests = (0..200).map(|_| {
        let request = client
            .get(format!("{}/token/x?min_ttl=99s", broker.url))
            .header("Token-Broker", "1");
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200));

    let refreshes = metric(
        &broker,
        r#"token_broker_refreshes_total{credential="x",trigger="min_ttl",result="ok"}"#,
    )
    .await;
    let joined = metric(
        &broker,
        r#"token_broker_refresh_joined_total{credential="x"}"#,
    )
    .await
        - joined_before;
    let served = metric(
        &broker,
        r#"token_broker_requests_total{credential="x",outcome="ok"}"#,
    )
    .await;
    assert_eq!((refreshes, joined, served), (1, 199, 201));
    let expiry = metric(
        &broker,
        r#"token_broker_token_expiry_timestamp_seconds{credential="x"}"#,
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 90..=now + 100).contains(&expiry),
        "{expiry} vs {now}"
    );
    assert_eq!(
        metric(
            &broker,
            r#"token_broker_credential_state{credential="x",state="valid"}"#
        )
        .await,
        1
    );
    assert!(metric(&broker, "token_broker_idp_request_duration_seconds_count").await >= 2);
    assert!(metric(&broker, "token_broker_store_write_duration_seconds_count").await >= 2);

    let logs = broker.proc.logs();
    let events: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let refreshed: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "refreshed")
        .collect();
    assert_eq!(refreshed.len(), 2, "{logs}");
    for event in refreshed {
        for field in [
            "timestamp",
            "level",
            "credential",
            "trigger",
            "took_ms",
            "result",
            "expires_at",
            "next_refresh_at",
        ] {
            assert!(!event[field].is_null(), "{field} missing in {event}");
        }
    }
    // Per-request events are debug-level: none at the default info level.
    assert!(!logs.contains("token request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reload_adds_removes_and_changes_credentials_without_failing_unchanged_ones() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let machine = |name: &str, scope: &str| {
        format!(
            "[credentials.{name}]\ngrant = \"client_credentials\"\ntoken_url = \"{}/token\"\nclient_id = \"dev-client\"\nclient_secret = \"dev-secret\"\nscope = \"{scope}\"\n",
            idp.url
        )
    };
    let base = base_config(dir.path()) + &refresh_credential("a", &idp, &bootstrap, "");
    let broker = Broker::start(
        dir.path(),
        &(base.clone() + &machine("b", "one") + &machine("d", "one")),
    );
    broker.ready().await;
    let before = broker.access_token("a").await;

    // A client loops on the unchanged credential through the whole reload.
    let stop = tokio_util::sync::CancellationToken::new();
    let looper = {
        let (url, stop) = (broker.url.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !stop.is_cancelled() {
                let response = client()
                    .get(format!("{url}/token/a"))
                    .header("Token-Broker", "1")
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(
        dir.path().join("config.toml"),
        base.clone() + &machine("c", "one") + &machine("d", "two"),
    )
    .unwrap();
    signal(&broker.proc.child, "HUP");
    eventually("the reload", || async {
        broker.get("/token/c").await.status() == 200 && broker.get("/token/b").await.status() == 404
    })
    .await;
    assert_eq!(broker.token("d").await["scope"], "two");

    // A broken config is refused and the running one stays.
    std::fs::write(
        dir.path().join("config.toml"),
        "[credentials.a]\ncolour = 1\n",
    )
    .unwrap();
    signal(&broker.proc.child, "HUP");
    eventually("the refusal to be logged", || async {
        broker.proc.logs().contains("the new config is invalid")
    })
    .await;
    assert_eq!(broker.get("/token/c").await.status(), 200);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (ok, failed) = looper.await.unwrap();
    assert!(ok > 20, "{ok} requests");
    assert_eq!(failed, 0, "unchanged credential failed {failed} times");
    assert_eq!(
        broker.token("a").await["access_token"],
        before.as_str(),
        "a kept its token"
    );
    assert_eq!(idp.stat("reuse_detected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_config_file_reloads_on_change() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path()).replace("[server]\n", "[server]\nwatch_config = true\n")
        + &refresh_credential("a", &idp, &bootstrap, "");
    let broker = Broker::start(dir.path(), &config);
    broker.ready().await;
    let extra = format!(
        "[credentials.m]\ngrant = \"client_credentials\"\ntoken_url = \"{}/token\"\nclient_id = \"dev-client\"\nclient_secret = \"dev-secret\"\n",
        idp.url
    );
    std::fs::write(dir.path().join("config.toml"), config + &extra).unwrap();
    eventually("the watched reload", || async {
        broker.get("/token/m").await.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_refresh_answers_the_waiter_persists_and_exits_0() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let extra = "min_refresh_interval = \"0s\"";
    let mut broker = broker_for(&idp, dir.path(), extra);
    let old = broker.access_token("x").await;
    idp.admin("latency", json!({"latency": "2s"})).await;
    let waiter = {
        let url = broker.url.clone();
        tokio::spawn(async move {
            let response = client()
                .post(format!("{url}/token/x/refresh"))
                .header("Token-Broker", "1")
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let status = broker.proc.terminate();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(8));
    let (code, body) = waiter.await.unwrap();
    assert_eq!(code, 200, "{body}");
    let new = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    idp.admin("latency", json!({"latency": "0s"})).await;
    let grants = idp.stat("refresh_grants").await;
    let broker = broker_for(&idp, dir.path(), extra);
    assert_eq!(
        broker.token("x").await["access_token"],
        new.as_str(),
        "the new token was persisted"
    );
    assert_eq!(idp.stat("refresh_grants").await, grants);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_credential_does_not_gate_readiness() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path())
        + &refresh_credential("a", &idp, &bootstrap, "")
        + "[credentials.broken]\ngrant = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:1/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\nrequired = false\n";
    let broker = Broker::start(dir.path(), &config);
    broker.ready().await;
    let status = broker.status().await;
    let broken = status["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "broken")
        .unwrap()
        .clone();
    assert_eq!(broken["required"], false);
    assert_eq!(broken["ready"], false);
}
