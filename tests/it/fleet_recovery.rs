//! A fleet when Redis loses writes or answers late while a refresh is out: Redis
//! restarted empty, its data flushed while the refreshing broker cannot reach it, a
//! write whose answer comes too late, an outage between the IdP's answer and the write.
//! Whatever happens, each refresh token is sent once and the chain goes on.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::failures::eventually;
use crate::fleet::{Fleet, converged, metric};
use crate::harness::*;
use crate::redis_server::RedisServer;

/// A forced refresh on `url`, in the background: its status and body.
pub fn background_refresh(url: &str) -> JoinHandle<(u16, Value)> {
    let url = url.to_owned();
    tokio::spawn(async move {
        let request = client().post(format!("{url}/token/x/refresh"));
        let response = request.header("Token-Broker", "1").send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

/// The state of credential `x` in a broker's status.
pub async fn state(broker: &Broker) -> String {
    broker.status().await["credentials"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Forced refreshes on `broker` until one succeeds; returns the new token and the error
/// codes seen before it (a fleet holds refreshes back for a while after lost writes).
pub async fn refresh_until_ok(broker: &Broker, limit: Duration) -> (String, Vec<String>) {
    let deadline = Instant::now() + limit;
    let mut refused = Vec::new();
    loop {
        let (status, body) = background_refresh(&broker.url).await.unwrap();
        if status == 200 {
            return (body["access_token"].as_str().unwrap().to_owned(), refused);
        }
        refused.push(body["error"].as_str().unwrap_or_default().to_owned());
        assert!(
            Instant::now() < deadline,
            "no refresh succeeded: {refused:?} {body}\n{}",
            broker.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until every one of `brokers` serves the same token, other than `old`.
pub async fn converged_past(brokers: &[&Broker], old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let token = converged(brokers).await;
        if token != old {
            return token;
        }
        assert!(
            Instant::now() < deadline,
            "the brokers still serve the old token:\n{}",
            brokers
                .iter()
                .map(|b| b.proc.logs())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The dev IdP's verdict on the chain: no token was presented twice.
pub async fn assert_no_reuse(idp: &Idp, fleet: &Fleet) {
    let stats = idp.stats().await;
    let logs = || {
        fleet
            .brokers
            .iter()
            .map(|b| b.proc.logs())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(stats["reuse_detected"], 0, "{stats}\n{}", logs());
    assert_eq!(stats["families_revoked"], 0, "{stats}");
    assert_eq!(stats["max_in_flight"], 1, "{stats}");
}

fn record_version(redis: &RedisServer) -> String {
    let version = redis.cli(&["HGET", "token-broker:record:x", "version"]);
    version.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_while_a_refresh_is_out_sends_no_token_twice() {
    let mut redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let credential = "min_refresh_interval = \"0s\"\n";
    let fleet = Fleet::start(&idp, &redis, 2, "", credential);
    let old = fleet.converged().await;
    let grants = idp.stat("refresh_grants").await;
    let waits = metric(
        &fleet.brokers[1].metrics_text().await,
        "token_broker_lease_waits_total",
    );
    idp.admin("latency", json!({"latency": "3s"})).await;

    // Broker 0 sends the refresh token; broker 1 waits for its lease.
    let first = background_refresh(&fleet.brokers[0].url);
    eventually("the refresh to be out", || async {
        idp.stat("in_flight").await == 1
    })
    .await;
    let waiting = background_refresh(&fleet.brokers[1].url);
    eventually("broker 1 to wait for the lease", || async {
        let text = fleet.brokers[1].metrics_text().await;
        metric(&text, "token_broker_lease_waits_total") > waits
    })
    .await;

    // Redis comes back empty: the mark, the lease, the record are gone. Once a broker
    // has written its state back, broker 1 is asked for a new token again.
    redis.restart();
    eventually("a broker to write its state back", || async {
        !record_version(&redis).is_empty()
    })
    .await;
    let again = background_refresh(&fleet.brokers[1].url).await.unwrap();
    let (first, waiting) = (first.await.unwrap(), waiting.await.unwrap());
    eventually("the refresh out to be answered", || async {
        idp.stat("in_flight").await == 0
    })
    .await;
    assert_no_reuse(&idp, &fleet).await;
    assert_eq!(first.0, 200, "broker 0 kept its answer: {}", first.1);
    for (status, body) in [waiting, again] {
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "store_unavailable", "{body}");
    }
    let new = first.1["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(fleet.converged().await, new);
    assert_eq!(idp.stat("refresh_grants").await, grants + 1);

    // Held back for a while (the lease, the IdP timeout, two polls), then a refresh
    // continues the chain.
    idp.admin("latency", json!({"latency": "0s"})).await;
    let (next, _) = refresh_until_ok(&fleet.brokers[1], Duration::from_secs(20)).await;
    assert_ne!(next, new);
    assert_eq!(fleet.converged().await, next);
    assert_no_reuse(&idp, &fleet).await;
    assert_eq!(idp.stat("refresh_grants").await, grants + 2);
    for broker in &fleet.brokers {
        assert_eq!(state(broker).await, "valid");
    }
}

/// A user `name` with password `name-pw` allowed everything under the default prefix.
fn add_user(redis: &RedisServer, name: &str) {
    let password = format!(">{name}-pw");
    let args = [
        "ACL",
        "SETUSER",
        name,
        "on",
        &password,
        "~token-broker:*",
        "&token-broker:*",
        "+@all",
    ];
    assert_eq!(redis.cli(&args).trim(), "OK");
}

/// A `[state]` fragment that logs in as `name`.
fn as_user(name: &str) -> String {
    format!("username = \"{name}\"\npassword = \"{name}-pw\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_lost_while_the_new_token_waits_to_be_written_is_not_refreshed_over() {
    let redis = RedisServer::start();
    add_user(&redis, "a");
    add_user(&redis, "b");
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let credential = "min_refresh_interval = \"0s\"\n";
    let mut fleet = Fleet {
        brokers: Vec::new(),
        dirs: Vec::new(),
    };
    for user in ["a", "b"] {
        fleet.add(&idp, &redis.url(), &as_user(user), credential, &[]);
    }
    let old = fleet.converged().await;
    let grants = idp.stat("refresh_grants").await;
    idp.admin("latency", json!({"latency": "2s"})).await;

    // Broker a sends; while the IdP works, a loses Redis: the new refresh token it gets
    // can only wait in its memory.
    let first = background_refresh(&fleet.brokers[0].url);
    eventually("the refresh to be out", || async {
        idp.stat("in_flight").await == 1
    })
    .await;
    assert_eq!(redis.cli(&["ACL", "SETUSER", "a", "off"]).trim(), "OK");
    redis.cli(&["CLIENT", "KILL", "USER", "a"]);
    eventually("the IdP to answer", || async {
        idp.stat("in_flight").await == 0
    })
    .await;
    assert_eq!(idp.stat("refresh_grants").await, grants + 1);

    // Redis loses its data; broker b writes back the chain it knows (the spent token),
    // then is asked for a new token.
    redis.cli(&["FLUSHALL"]);
    eventually("broker b to write its state back", || async {
        !record_version(&redis).is_empty()
    })
    .await;
    idp.admin("latency", json!({"latency": "0s"})).await;
    // It does not send the spent token: it waits (for the lost writes to settle, or for
    // an answer to the refresh it found marked as sent).
    let (status, body) = background_refresh(&fleet.brokers[1].url).await.unwrap();
    assert_no_reuse(&idp, &fleet).await;
    assert_eq!(status, 503, "{body}");
    assert_ne!(
        body["error"],
        "reauth_required",
        "{body}\n{}",
        fleet.brokers[1].proc.logs()
    );

    let (status, body) = first.await.unwrap();
    assert_eq!((status, &body["error"]), (503, &json!("store_unavailable")));

    // Broker a reaches Redis again and writes the token it held back over b's state.
    assert_eq!(redis.cli(&["ACL", "SETUSER", "a", "on"]).trim(), "OK");
    let brokers: Vec<&Broker> = fleet.brokers.iter().collect();
    let new = converged_past(&brokers, &old).await;
    assert_eq!(idp.whoami(&new).await, 200);
    let (next, _) = refresh_until_ok(&fleet.brokers[1], Duration::from_secs(20)).await;
    assert_eq!(converged(&brokers).await, next);
    assert_no_reuse(&idp, &fleet).await;
    assert_eq!(idp.stat("refresh_grants").await, grants + 2);
}
