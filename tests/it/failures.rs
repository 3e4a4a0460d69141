//! Failure behaviour: a slow or broken IdP, lost answers, an unwritable store.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

async fn error_code(response: reqwest::Response) -> (u16, String, Option<String>) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
        retry_after,
    )
}

/// Polls until `check` passes or 10 seconds pass.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_of_idp_failure_maps_to_a_clear_answer() {
    // (fault, expected error code, expected credential state, what a read gets after)
    let cases = [
        (
            json!({"status": 500, "shape": "html"}),
            "upstream_unavailable",
            "stale",
            200,
        ),
        (
            json!({"status": 503, "shape": "huge"}),
            "upstream_unavailable",
            "stale",
            200,
        ),
        (
            json!({"status": 429, "retry_after": 7}),
            "upstream_unavailable",
            "stale",
            200,
        ),
        // Refusals of the refresh token: the chain's token is withdrawn with it.
        (
            json!({"status": 400, "shape": "empty"}),
            "reauth_required",
            "reauth_required",
            503,
        ),
        (
            json!({"status": 401, "shape": "html"}),
            "reauth_required",
            "reauth_required",
            503,
        ),
        (
            json!({"status": 400, "error": "invalid_grant", "shape": "json_no_description"}),
            "reauth_required",
            "reauth_required",
            503,
        ),
        // A 2xx the broker cannot read: the IdP may have rotated, so the answer is lost.
        // Nothing was refused: the valid token is still served.
        (
            json!({"status": 200, "shape": "garbage"}),
            "reauth_required",
            "reauth_required",
            200,
        ),
    ];
    for (fault, code, state, read) in cases {
        let idp = Idp::start(&["--access-ttl", "300s"]);
        let dir = tempdir();
        let broker = broker_for(&idp, dir.path(), "min_refresh_interval = \"0s\"");
        broker.ready().await;
        idp.admin("faults", fault.clone()).await;
        let (status, error, retry_after) = error_code(broker.refresh("x", None).await).await;
        assert_eq!((status, error.as_str()), (503, code), "{fault}");
        if code == "upstream_unavailable" {
            let secs: u64 = retry_after.unwrap().parse().unwrap();
            let floor = fault["retry_after"].as_u64().unwrap_or(1);
            assert!(secs >= floor, "{fault}: Retry-After {secs}");
        }
        let status = broker.status().await;
        assert_eq!(
            status["credentials"][0]["state"], state,
            "{fault}: {status}"
        );
        // Stale-while-valid: the token from before keeps being served, unless refused.
        assert_eq!(broker.get("/token/x").await.status(), read, "{fault}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_resent_within_the_idp_reuse_grace() {
    let idp = Idp::start(&["--access-ttl", "300s", "--reuse-grace", "30s"]);
    let dir = tempdir();
    let extra =
        "min_refresh_interval = \"0s\"\nidp_reuse_grace = \"30s\"\nbackoff_initial = \"200ms\"\n";
    let broker = broker_with(&idp, dir.path(), "[idp]\ntimeout = \"1s\"\n", extra);
    let first = broker.access_token("x").await;

    idp.admin("faults", json!({"hang": "2s", "count": 1})).await;
    let (status, error, _) = error_code(broker.refresh("x", None).await).await;
    assert_eq!((status, error.as_str()), (503, "upstream_unavailable"));

    eventually("the resend to succeed", || async {
        broker.status().await["credentials"][0]["state"] == "valid"
            && broker.token("x").await["access_token"] != first.as_str()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // let the hung request finish too
    assert_eq!(idp.stat("reuse_detected").await, 0);
    assert_eq!(idp.stat("families_revoked").await, 0);
    let token = broker.access_token("x").await;
    assert_eq!(idp.whoami(&token).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reuse_grace_a_lost_answer_stops_the_chain_instead_of_guessing() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let extra = "min_refresh_interval = \"0s\"\nbackoff_initial = \"200ms\"\n";
    let broker = broker_with(&idp, dir.path(), "[idp]\ntimeout = \"1s\"\n", extra);
    let first = broker.access_token("x").await;

    idp.admin("faults", json!({"hang": "2s", "count": 1})).await;
    let (status, error, _) = error_code(broker.refresh("x", None).await).await;
    assert_eq!((status, error.as_str()), (503, "reauth_required"));
    let calls = idp.stat("token_requests").await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(idp.stat("token_requests").await, calls, "no resend");
    assert_eq!(idp.stat("reuse_detected").await, 0);
    let status = broker.status().await;
    assert_eq!(status["credentials"][0]["state"], "reauth_required");
    assert!(status.to_string().contains("reuse grace"), "{status}");
    // The valid access token is still served.
    assert_eq!(broker.token("x").await["access_token"], first.as_str());
}

/// The largest generation number among `x`'s state files.
pub fn newest_generation(state: &std::path::Path) -> u64 {
    std::fs::read_dir(state)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("x.")?
                .strip_suffix(".state")?
                .parse()
                .ok()
        })
        .max()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_token_is_not_served_until_its_refresh_token_is_durable() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let extra =
        "min_refresh_interval = \"0s\"\nbackoff_initial = \"200ms\"\nbackoff_max = \"400ms\"\n";
    let mut broker = broker_for(&idp, dir.path(), extra);
    let first = broker.access_token("x").await;

    // A refresh writes two generations: the in-flight mark, then the result. A directory
    // where the result's file goes makes that second write's rename fail (even for root).
    let state = dir.path().join("state");
    let result_generation = newest_generation(&state) + 2;
    let blocker = state.join(format!("x.{result_generation}.state"));
    std::fs::create_dir(&blocker).unwrap();
    let grants = idp.stat("refresh_grants").await;

    let (status, error, _) = error_code(broker.refresh("x", None).await).await;
    assert_eq!((status, error.as_str()), (503, "store_unavailable"));
    assert_eq!(
        idp.stat("refresh_grants").await,
        grants + 1,
        "the IdP rotated"
    );
    for _ in 0..5 {
        assert_eq!(
            broker.token("x").await["access_token"],
            first.as_str(),
            "not served before durable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::remove_dir(&blocker).unwrap();
    eventually("the held-back token to be saved and served", || async {
        broker.token("x").await["access_token"] != first.as_str()
    })
    .await;
    assert_eq!(
        idp.stat("refresh_grants").await,
        grants + 1,
        "saved without asking the IdP again"
    );

    // And it really is durable: kill -9, restart, refresh.
    broker.proc.kill9();
    let broker = broker_for(&idp, dir.path(), extra);
    assert_eq!(broker.refresh("x", None).await.status(), 200);
    assert_eq!(idp.stat("reuse_detected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_serves_the_cached_token_then_503_backs_off_and_recovers_with_one_refresh() {
    let idp = Idp::start(&["--access-ttl", "3s"]);
    let dir = tempdir();
    let broker = broker_for(
        &idp,
        dir.path(),
        "backoff_initial = \"500ms\"\nbackoff_max = \"1s\"\n",
    );
    let cached = broker.access_token("x").await;
    idp.admin("faults", json!({"status": 503, "count": 100000}))
        .await;
    let calls_before = idp.stat("token_requests").await;
    let started = Instant::now();

    // Until expiry, the cached token; afterwards 503 with Retry-After.
    let mut saw_503 = false;
    while started.elapsed() < Duration::from_secs(6) {
        let response = broker.get("/token/x").await;
        if response.status() == 200 {
            assert!(!saw_503, "a token after the cached one expired?");
            assert_eq!(
                response.json::<Value>().await.unwrap()["access_token"],
                cached.as_str()
            );
        } else {
            let (status, error, retry_after) = error_code(response).await;
            assert_eq!((status, error.as_str()), (503, "upstream_unavailable"));
            assert!(retry_after.is_some());
            saw_503 = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_503);
    // The schedule allows at most one call per backoff_initial (500ms), plus the first.
    let calls = idp.stat("token_requests").await - calls_before;
    assert!(
        (2..=14).contains(&calls),
        "{calls} IdP calls during a 6s outage"
    );

    let grants = idp.stat("refresh_grants").await;
    idp.admin("faults", json!({"count": 0})).await;
    broker.ready().await;
    assert_eq!(
        idp.stat("refresh_grants").await - grants,
        1,
        "exactly one refresh brings it back"
    );
    let token = broker.access_token("x").await;
    assert_eq!(idp.whoami(&token).await, 200);
}
