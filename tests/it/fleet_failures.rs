//! A fleet when things break: the lease holder killed mid-refresh, Redis restarted
//! without its data, Redis down with `on_store_unavailable = "refresh_locally"`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::failures::eventually;
use crate::fleet::{Fleet, converged};
use crate::fleet_recovery::refresh_until_ok;
use crate::harness::*;
use crate::redis_server::RedisServer;

async fn refreshed(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lease_holder_mid_refresh_hands_over_without_reuse() {
    let redis = RedisServer::start();
    // The IdP answers after 3s and forgives a replay within 30s; the lease lasts 2s.
    let idp = Idp::start(&[
        "--access-ttl",
        "600s",
        "--latency",
        "3s",
        "--reuse-grace",
        "30s",
    ]);
    let credential = "idp_reuse_grace = \"30s\"\nmin_refresh_interval = \"0s\"\n";
    let mut fleet = Fleet::start(&idp, &redis, 3, "", credential);
    let old = fleet.converged().await;
    let grants = idp.stat("refresh_grants").await;

    // Broker 0 takes the lease and sends the refresh token; the IdP sits on it for 3s.
    let url = fleet.brokers[0].url.clone();
    let doomed = tokio::spawn(async move {
        let request = client().post(format!("{url}/token/x/refresh"));
        request.header("Token-Broker", "1").send().await
    });
    eventually("the refresh to be out at the IdP", || async {
        idp.stat("in_flight").await == 1
    })
    .await;
    fleet.brokers[0].proc.kill9();
    assert!(
        doomed.await.unwrap().is_err(),
        "the killed broker never answered"
    );

    // Unasked, the survivors see the refresh token marked as sent with nobody holding
    // the lease once it runs out; one of them resends it within the grace.
    let survivors: Vec<&Broker> = fleet.brokers[1..].iter().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let new = loop {
        let token = converged(&survivors).await;
        if token != old {
            break token;
        }
        assert!(std::time::Instant::now() < deadline, "no broker took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(idp.whoami(&new).await, 200);
    assert!(
        survivors
            .iter()
            .any(|b| b.proc.logs().contains("is gone with its refresh out")),
        "a survivor took over the refresh left out"
    );
    // A report of the old token now gets the new one, with no further refresh.
    let reported = refreshed(fleet.brokers[1].refresh("x", Some(&old)).await).await;
    assert_eq!(reported, new);
    let stats = idp.stats().await;
    assert_eq!(stats["reuse_detected"], 0, "{stats}");
    assert_eq!(stats["families_revoked"], 0, "{stats}");
    assert_eq!(
        stats["reuse_grace_hits"], 1,
        "the replay within grace: {stats}"
    );
    assert_eq!(stats["refresh_grants"], grants + 1, "one rotation: {stats}");

    // The chain is intact: the next refresh rotates normally.
    let next = refreshed(fleet.brokers[2].refresh("x", None).await).await;
    assert_ne!(next, new);
    assert_eq!(converged(&survivors).await, next);
    let stats = idp.stats().await;
    assert_eq!(stats["reuse_detected"], 0, "{stats}");
    assert_eq!(stats["refresh_grants"], grants + 2, "{stats}");
}

/// Plain GETs in a loop against every broker until stopped; counts failures.
fn hammer(
    urls: Vec<String>,
    stop: CancellationToken,
    served: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = client();
        while !stop.is_cancelled() {
            for url in &urls {
                let get = client
                    .get(format!("{url}/token/x"))
                    .header("Token-Broker", "1");
                match get.timeout(Duration::from_secs(5)).send().await {
                    Ok(response) if response.status() == 200 => {
                        served.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_fails_no_request_while_tokens_are_valid() {
    let mut redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let fleet = Fleet::start(&idp, &redis, 3, "", "min_refresh_interval = \"0s\"\n");
    let old = fleet.converged().await;
    let grants = idp.stat("refresh_grants").await;
    let stop = CancellationToken::new();
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let urls: Vec<String> = fleet.brokers.iter().map(|b| b.url.clone()).collect();
    let clients: Vec<_> = (0..3)
        .map(|_| hammer(urls.clone(), stop.clone(), served.clone(), failed.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Without the store there is no lease: a forced refresh is refused, the IdP sees
    // nothing, and the valid token keeps being served.
    let response = fleet.brokers[0].refresh("x", None).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable", "{body}");
    assert_eq!(idp.stat("refresh_grants").await, grants);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Back, but empty (no persistence): the brokers write their chain back, and hold
    // refreshes back for a while, as a refresh could have been out when Redis lost it.
    redis.restart();
    eventually("a broker to write the chain back", || async {
        !redis
            .cli(&["HGET", "token-broker:record:x", "version"])
            .trim()
            .is_empty()
    })
    .await;
    let (new, refused) = refresh_until_ok(&fleet.brokers[1], Duration::from_secs(20)).await;
    assert!(
        !refused.is_empty(),
        "refreshes were held back after the loss"
    );
    assert!(
        refused.iter().all(|e| e == "store_unavailable"),
        "{refused:?}"
    );
    assert_ne!(new, old);
    assert_eq!(fleet.converged().await, new);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    for client in clients {
        client.await.unwrap();
    }
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(failed, 0, "no request failed ({served} served)");
    assert!(served > 30, "clients were served throughout: {served}");
    let stats = idp.stats().await;
    assert_eq!(stats["refresh_grants"], grants + 1, "{stats}");
    assert_eq!(stats["reuse_detected"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_locally_refreshes_without_redis_and_writes_the_chain_back() {
    let mut redis = RedisServer::start();
    // The policy is for IdPs that do not rotate refresh tokens.
    let idp = Idp::start(&["--access-ttl", "600s", "--no-rotation"]);
    let state = "on_store_unavailable = \"refresh_locally\"";
    let fleet = Fleet::start(&idp, &redis, 2, state, "min_refresh_interval = \"0s\"\n");
    let old = fleet.converged().await;

    redis.kill();
    let new = refreshed(fleet.brokers[0].refresh("x", None).await).await;
    assert_ne!(new, old, "refreshed without the store");
    assert_eq!(
        fleet.brokers[1].access_token("x").await,
        old,
        "the other broker cannot know"
    );

    redis.restart();
    assert_eq!(fleet.converged().await, new, "written back, then adopted");
    assert!(
        fleet.brokers[0]
            .proc
            .logs()
            .contains("refreshing without the fleet's lease")
    );
}
