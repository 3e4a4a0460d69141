//! Refresh decisions under clients that misbehave and IdPs that surprise: no local
//! client behaviour costs more than one IdP call per `min_refresh_interval`, a refused
//! chain's token is never served again, and every answer tells the truth.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::failures::eventually;
use crate::harness::*;

/// `status` and the JSON body of a response.
async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A broker with one `client_credentials` credential `m` at `idp`, refreshed whenever
/// asked (no `min_refresh_interval`).
fn machine(dir: &std::path::Path, idp: &Idp) -> Broker {
    let config = base_config(dir)
        + &format!(
            "\n[credentials.m]\ngrant = \"client_credentials\"\ntoken_url = \"{}/token\"\n\
             client_id = \"dev-client\"\nclient_secret = \"dev-secret\"\n\
             min_refresh_interval = \"0s\"\n",
            idp.url
        );
    Broker::start(dir, &config)
}

async fn refreshes(idp: &Idp) -> u64 {
    idp.stat("refresh_grants").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_asking_for_more_lifetime_than_the_idp_gives_makes_one_refresh() {
    let idp = Idp::start(&["--access-ttl", "10s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "");
    broker.access_token("x").await;
    let before = refreshes(&idp).await;

    let url = format!("{}/token/x?min_ttl=60s", broker.url);
    let client = client();
    let requests = (0..300).map(|_| {
        let request = client.get(&url).header("Token-Broker", "1").send();
        async move { request.await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(refreshes(&idp).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_asking_for_more_lifetime_than_the_idp_gives_refreshes_once_per_interval() {
    let idp = Idp::start(&["--access-ttl", "10s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "min_refresh_interval = \"1s\"\n");
    broker.access_token("x").await;
    let before = refreshes(&idp).await;

    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let response = broker.get("/token/x?min_ttl=5m").await;
        assert_eq!(response.status(), 200);
        served += 1;
    }
    let made = refreshes(&idp).await - before;
    let intervals = started.elapsed().as_secs() + 1;
    assert!(served > 20, "only {served} requests");
    assert!(
        (1..=intervals).contains(&made),
        "{served} requests over 3 s made {made} refreshes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reports_every_new_token_refreshes_once_per_interval_and_is_told_to_wait() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "min_refresh_interval = \"1s\"\n");
    broker.access_token("x").await;
    let before = refreshes(&idp).await;

    let started = Instant::now();
    let mut told_to_wait = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let token = broker.access_token("x").await;
        let response = broker.refresh("x", Some(&token)).await;
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, body) = answer(response).await;
        if status == 429 {
            assert_eq!(body["error"], "refresh_too_soon", "{body}");
            let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
            assert_eq!(secs, 1, "Retry-After");
            told_to_wait += 1;
        } else {
            assert_eq!(status, 200, "{body}");
        }
    }
    let made = refreshes(&idp).await - before;
    let intervals = started.elapsed().as_secs() + 1;
    assert!(told_to_wait > 10, "told to wait {told_to_wait} times");
    assert!(
        (1..=intervals).contains(&made),
        "a report loop over 3 s made {made} refreshes"
    );
}

/// Waits until the wall clock is early in a second, so what follows happens within it.
async fn start_of_a_second() {
    loop {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if millis < 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis((1000 - millis as u64) + 5)).await;
    }
}

/// Through a report, a token minted early in a second; then `min_refresh_interval`
/// (100 ms here) passes, leaving most of that second for a refresh that repeats it.
async fn minted_early_in_a_second(broker: &Broker) -> String {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    start_of_a_second().await;
    let current = broker.access_token("x").await;
    assert_eq!(broker.refresh("x", Some(&current)).await.status(), 200);
    let minted = broker.access_token("x").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    minted
}

/// Tries at a refresh within the second of the token it replaces; each takes 1 to 2 s.
const ROUNDS: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_a_token_the_idp_hands_out_again_make_one_refresh() {
    // Tokens without a jti: a refresh in the same second returns the same string.
    let idp = Idp::start(&["--no-jti", "--access-ttl", "60s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "min_refresh_interval = \"100ms\"\n");
    broker.access_token("x").await;

    // One report of such a token: the IdP hands it out again, and the client is told
    // so instead of looping. A round whose refresh fell into the next second (a busy
    // machine) repeats nothing and is tried again: up to ROUNDS times, since under load
    // (the suite runs many tests at once) most rounds may miss their second.
    let mut repeated = false;
    for _ in 0..ROUNDS {
        let minted = minted_early_in_a_second(&broker).await;
        let before = refreshes(&idp).await;
        let (status, body) = answer(broker.refresh("x", Some(&minted)).await).await;
        assert_eq!(refreshes(&idp).await, before + 1, "one report, one refresh");
        if broker.access_token("x").await == minted {
            assert_eq!(
                (status, body["error"].as_str()),
                (429, Some("refresh_too_soon"))
            );
            repeated = true;
            break;
        }
    }
    assert!(repeated, "the IdP never repeated a token within a second");

    // 300 concurrent reports of such a token.
    let mut repeated = false;
    for _ in 0..ROUNDS {
        let minted = minted_early_in_a_second(&broker).await;
        let before = refreshes(&idp).await;
        let started = Instant::now();
        let url = format!("{}/token/x/refresh", broker.url);
        let client = client();
        let reports = (0..300).map(|_| {
            let request = client
                .post(&url)
                .header("Token-Broker", "1")
                .json(&json!({ "rejected_token": minted }))
                .send();
            async move { request.await.unwrap().status().as_u16() }
        });
        let statuses = futures_util::future::join_all(reports).await;
        let took = started.elapsed();
        let made = refreshes(&idp).await - before;
        // One refresh, plus at most one per min_refresh_interval the burst outlasted.
        let allowed = 1 + (took.as_millis() / 100) as u64;
        assert!(
            made >= 1 && made <= allowed,
            "300 reports over {took:?} made {made} refreshes"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        if broker.access_token("x").await == minted {
            repeated = true;
            break;
        }
    }
    assert!(repeated, "the IdP never repeated a token within a second");
    assert_eq!(idp.stat("reuse_detected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_joining_a_refresh_the_idp_refuses_withdraws_the_token_of_a_grant_without_a_chain()
{
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = machine(dir.path(), &idp);
    let token = broker.access_token("m").await;

    // A forced refresh starts a slow flight, which the IdP will refuse; the report of
    // the current token joins it.
    idp.admin("latency", json!({"latency": "1s"})).await;
    idp.admin(
        "faults",
        json!({"status": 401, "error": "invalid_client", "count": 1}),
    )
    .await;
    let forced = {
        let url = format!("{}/token/m/refresh", broker.url);
        tokio::spawn(async move {
            let response = client()
                .post(url)
                .header("Token-Broker", "1")
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = answer(broker.refresh("m", Some(&token)).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("reauth_required"))
    );
    assert_eq!(forced.await.unwrap(), 503);
    let (status, body) = answer(broker.get("/token/m").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("reauth_required")),
        "the disputed token is not served: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_hears_of_a_withdrawn_token_at_once() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "");
    let response = broker.get("/token/x").await;
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let token = response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let poll = {
        let url = format!("{}/token/x?wait=30s", broker.url);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client()
                .get(url)
                .header("Token-Broker", "1")
                .header("If-None-Match", etag)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    idp.admin("revoke", json!({})).await;
    assert_eq!(broker.refresh("x", Some(&token)).await.status(), 503);
    let (status, waited) = poll.await.unwrap();
    assert_eq!(status, 503);
    assert!(
        waited < Duration::from_secs(10),
        "the poll waited {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_token_whose_refresh_is_refused_is_never_served_again() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "");
    let token = broker.access_token("x").await;
    broker.ready().await;

    idp.admin("revoke", json!({})).await;
    let (status, body) = answer(broker.refresh("x", Some(&token)).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("reauth_required"))
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("refused the refresh token") && message.contains("new bootstrap"),
        "{message}"
    );
    assert!(!message.contains("fix the secret"), "{message}");

    for _ in 0..3 {
        let (status, body) = answer(broker.get("/token/x").await).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("reauth_required"))
        );
    }
    let ready = client()
        .get(format!("{}/readyz", broker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        broker.status().await["credentials"][0]["state"],
        "reauth_required"
    );
    // Not after a restart either.
    drop(broker);
    let broker = broker_for(&idp, dir.path(), "");
    let (status, _) = answer(broker.get("/token/x").await).await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_new_bootstrap_is_taken_the_stopped_chain_s_token_is_not_served() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    // A lost answer without a reuse grace stops the chain; its token stays valid.
    let extra = "min_refresh_interval = \"0s\"\nbootstrap_poll = \"100ms\"\n";
    let broker = broker_with(&idp, dir.path(), "[idp]\ntimeout = \"1s\"\n", extra);
    let old = broker.access_token("x").await;
    idp.admin("faults", json!({"hang": "2s", "count": 1})).await;
    let (status, _) = answer(broker.refresh("x", None).await).await;
    assert_eq!(status, 503);
    assert_eq!(broker.access_token("x").await, old);

    // A new bootstrap, whose first refresh takes a while.
    idp.admin("latency", json!({"latency": "700ms"})).await;
    let fresh = idp.mint().await;
    std::fs::write(dir.path().join("bootstrap"), fresh).unwrap();
    eventually("the new chain to be taken", || async {
        broker
            .proc
            .logs()
            .contains("a new bootstrap token appeared")
    })
    .await;
    let (status, body) = answer(broker.get("/token/x").await).await;
    assert_eq!(status, 200, "{body}\n{}", broker.proc.logs());
    assert_ne!(body["access_token"], old.as_str(), "the old chain's token");
    assert_eq!(
        idp.whoami(body["access_token"].as_str().unwrap()).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_refresh_that_fails_says_so_and_reads_still_get_the_valid_token() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let extra = "min_refresh_interval = \"0s\"\nbackoff_initial = \"5s\"\n";
    let broker = broker_for(&idp, dir.path(), extra);
    let token = broker.access_token("x").await;

    idp.admin("faults", json!({"status": 503, "count": 10}))
        .await;
    for _ in 0..2 {
        // The flight's own failure, then a forced refresh while backing off.
        let (status, body) = answer(broker.refresh("x", None).await).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "upstream_unavailable");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("could not get a new token"),
            "{message}"
        );
        assert!(!message.contains("no valid token"), "{message}");
        assert_eq!(broker.access_token("x").await, token);
    }
    assert_eq!(broker.status().await["credentials"][0]["state"], "stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_without_a_chain_is_served_when_the_state_dir_cannot_be_written() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = machine(dir.path(), &idp);
    let first = broker.access_token("m").await;
    // The next save's file is taken by a directory, so the write fails (even for root).
    let state = dir.path().join("state");
    let newest = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("m.")?
                .strip_suffix(".state")?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0u64);
    std::fs::create_dir(state.join(format!("m.{}.state", newest + 1))).unwrap();

    let (status, body) = answer(broker.refresh("m", None).await).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["access_token"], first.as_str());
    assert_eq!(broker.access_token("m").await, body["access_token"]);
    eventually("the failed write to be logged", || async {
        broker.proc.logs().contains("serving it anyway")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_s_hint_fits_its_grant_and_a_never_served_credential_is_starting() {
    let idp = Idp::start(&[]);
    idp.admin(
        "faults",
        json!({"status": 401, "error": "invalid_client", "count": 1}),
    )
    .await;
    let dir = tempdir();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let table = |name: &str, url: &str| {
        format!(
            "\n[credentials.{name}]\ngrant = \"client_credentials\"\ntoken_url = \"{url}/token\"\n\
             client_id = \"dev-client\"\nclient_secret = \"dev-secret\"\n"
        )
    };
    let config = base_config(dir.path()) + &table("m", &idp.url) + &table("down", &closed_url);
    let broker = Broker::start(dir.path(), &config);

    let (status, body) = answer(broker.get("/token/m").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("reauth_required"))
    );
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("invalid_client"), "{message}");
    assert!(
        message.contains("fix what the identity provider refused"),
        "{message}"
    );
    assert!(!message.contains("bootstrap"), "{message}");

    let (status, body) = answer(broker.get("/token/down").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("upstream_unavailable"))
    );
    let states = broker.status().await;
    let down = states["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "down")
        .unwrap()
        .clone();
    assert!(down["refreshes"]["failed"].as_u64().unwrap() >= 1, "{down}");
    assert_eq!(down["state"], "starting", "{down}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_after_a_lost_answer_does_not_claim_a_refusal() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let extra = "min_refresh_interval = \"0s\"\n";
    let broker = broker_with(&idp, dir.path(), "[idp]\ntimeout = \"1s\"\n", extra);
    broker.access_token("x").await;
    idp.admin("faults", json!({"hang": "2s", "count": 1})).await;
    let (status, body) = answer(broker.refresh("x", None).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("reauth_required"))
    );
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("got no answer"), "{message}");
    assert!(!message.contains("refused"), "{message}");
    assert!(message.contains("new bootstrap refresh token"), "{message}");
    assert!(message.contains("token-broker login x"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_could_not_be_written_is_written_later_so_a_restart_serves_nothing_refused() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let extra = "bootstrap_poll = \"200ms\"\n";
    let mut broker = broker_for(&idp, dir.path(), extra);
    let token = broker.access_token("x").await;

    // A report's refresh writes the in-flight mark, then, refused, the stop: a directory
    // where the stop's file goes makes that write fail (even for root).
    let state = dir.path().join("state");
    let stop = state.join(format!(
        "x.{}.state",
        crate::failures::newest_generation(&state) + 2
    ));
    std::fs::create_dir(&stop).unwrap();
    idp.admin("revoke", json!({})).await;
    assert_eq!(broker.refresh("x", Some(&token)).await.status(), 503);
    broker.proc.wait_for("the failed stop write", |line| {
        line.contains("could not record the stop").then_some(())
    });

    // The directory goes: the next poll writes the stop.
    std::fs::remove_dir(&stop).unwrap();
    eventually("the stop to be written", || async { stop.is_file() }).await;
    broker.proc.kill9();
    let broker = broker_for(&idp, dir.path(), extra);
    let (status, body) = answer(broker.get("/token/x").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("reauth_required")),
        "{body}"
    );
}
