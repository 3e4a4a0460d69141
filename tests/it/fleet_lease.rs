//! The refresh lease under stress: renewals that fail while Redis is down, a lease that
//! runs out while its refresh is still out at the IdP, a broker waiting for the lease
//! that cannot read the record, and how adoptions are counted.

use std::time::Duration;

use serde_json::json;

use crate::failures::eventually;
use crate::fleet::{Fleet, metric};
use crate::fleet_recovery::{assert_no_reuse, background_refresh, refresh_until_ok, state};
use crate::harness::*;
use crate::redis_server::RedisServer;

/// The default lease, timeout and poll interval, and the default IdP timeout.
const DEFAULTS: &str = "lease_duration = \"10s\"\ntimeout = \"2s\"\npoll_interval = \"1s\"\n\
                        [idp]\ntimeout = \"15s\"\n";

/// Broker 0 refreshes while `outage` happens to Redis; its answer must be kept, and the
/// fleet must go on without stopping.
async fn refresh_through(
    idp: &Idp,
    fleet: &Fleet,
    old: &str,
    outage: impl std::future::Future<Output = ()>,
) {
    let grants = idp.stat("refresh_grants").await;
    let first = background_refresh(&fleet.brokers[0].url);
    eventually("the refresh to be out", || async {
        idp.stat("in_flight").await == 1
    })
    .await;
    outage.await;
    let (status, body) = first.await.unwrap();
    assert_eq!(
        status,
        200,
        "the refreshing broker kept its answer: {body}\n{}",
        fleet.brokers[0].proc.logs()
    );
    let new = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(fleet.converged().await, new);
    for broker in &fleet.brokers {
        assert_eq!(state(broker).await, "valid", "{}", broker.proc.logs());
    }
    idp.admin("latency", json!({"latency": "0s"})).await;
    let (next, _) = refresh_until_ok(&fleet.brokers[1], Duration::from_secs(30)).await;
    assert_eq!(fleet.converged().await, next);
    assert_no_reuse(idp, fleet).await;
    assert_eq!(idp.stat("refresh_grants").await, grants + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_settings_renewals_outlast_a_redis_outage() {
    let mut redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]);
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let fleet = Fleet::start(&idp, &redis, 2, DEFAULTS, "min_refresh_interval = \"0s\"\n");
    let old = fleet.converged().await;
    idp.admin("latency", json!({"latency": "12s"})).await;
    // Down from 1 s to 8 s into a 10 s lease: every renewal in between fails at once,
    // and the lease must still be renewed before it runs out.
    let outage = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.kill();
        tokio::time::sleep(Duration::from_secs(7)).await;
        redis.restart();
    };
    refresh_through(&idp, &fleet, &old, outage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_in_a_pause_leaves_the_answer_to_its_broker() {
    let redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let fleet = Fleet::start(&idp, &redis, 2, "", "min_refresh_interval = \"0s\"\n");
    let old = fleet.converged().await;
    idp.admin("latency", json!({"latency": "4s"})).await;
    // Redis freezes for longer than the 2 s lease while the refresh is out: the lease
    // is gone when it wakes up, though its broker is alive and gets its answer.
    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.signal("STOP");
        tokio::time::sleep(Duration::from_millis(2700)).await;
        redis.signal("CONT");
    };
    refresh_through(&idp, &fleet, &old, outage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_is_not_sent_once_its_lease_ran_out_waiting_for_an_idp_permit() {
    let redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s"]);
    // Broker a has credentials x and y and one IdP call at a time; broker b has x.
    let secrets = tempdir();
    let bootstrap = secrets.path().join("y");
    std::fs::write(&bootstrap, idp.mint().await).unwrap();
    let credential = "min_refresh_interval = \"0s\"\n";
    let with_y = format!(
        "{credential}{}",
        refresh_credential("y", &idp, &bootstrap, credential)
    );
    let one_call = "[idp]\ntimeout = \"5s\"\nmax_concurrent = 1\n";
    let mut fleet = Fleet {
        brokers: Vec::new(),
        dirs: Vec::new(),
    };
    fleet.add(&idp, &redis.url(), one_call, &with_y, &[]);
    fleet.add(&idp, &redis.url(), "", credential, &[]);
    let old = fleet.converged().await;
    let grants = idp.stat("refresh_grants").await;
    idp.admin("latency", json!({"latency": "3s"})).await;

    // y's refresh holds a's only IdP permit; x's refresh takes its lease, marks its
    // refresh token as sent and waits for the permit. Redis freezes past x's lease.
    let url = fleet.brokers[0].url.clone();
    let y = tokio::spawn(async move {
        let request = client().post(format!("{url}/token/y/refresh"));
        request
            .header("Token-Broker", "1")
            .send()
            .await
            .unwrap()
            .status()
    });
    eventually("y's refresh to be out", || async {
        idp.stat("in_flight").await == 1
    })
    .await;
    let version = || redis.cli(&["HGET", "token-broker:record:x", "version"]);
    let unmarked = version();
    let x = background_refresh(&fleet.brokers[0].url);
    // The mark is a write after the lease is taken: freezing Redis between the two (a
    // busy machine) would make the mark fail instead of the lease run out.
    eventually("x to hold its lease and mark its token as sent", || async {
        !redis
            .cli(&["GET", "token-broker:lease:x"])
            .trim()
            .is_empty()
            && version() != unmarked
    })
    .await;
    redis.signal("STOP");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    redis.signal("CONT");
    assert_eq!(y.await.unwrap(), 200);
    let (status, body) = x.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was sent"),
        "{body}"
    );
    assert_eq!(idp.stat("refresh_grants").await, grants + 1, "only y's");

    // x's chain is intact: b refreshes it without stopping.
    idp.admin("latency", json!({"latency": "0s"})).await;
    let (next, refused) = refresh_until_ok(&fleet.brokers[1], Duration::from_secs(20)).await;
    assert!(
        !refused.iter().any(|e| e == "reauth_required"),
        "{refused:?}"
    );
    assert_ne!(next, old);
    assert_eq!(fleet.converged().await, next);
    assert_no_reuse(&idp, &fleet).await;
    assert_eq!(idp.stat("refresh_grants").await, grants + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_broker_that_cannot_read_the_record_does_not_refresh_on_its_own() {
    let redis = RedisServer::start();
    for user in ["a", "b"] {
        let password = format!(">{user}-pw");
        let args = [
            "ACL",
            "SETUSER",
            user,
            "on",
            &password,
            "~token-broker:*",
            "&token-broker:*",
            "+@all",
        ];
        assert_eq!(redis.cli(&args).trim(), "OK");
    }
    let idp = Idp::start(&["--access-ttl", "600s", "--no-rotation"]);
    let credential = "min_refresh_interval = \"0s\"\n";
    let mut fleet = Fleet {
        brokers: Vec::new(),
        dirs: Vec::new(),
    };
    for user in ["a", "b"] {
        let state = format!(
            "username = \"{user}\"\npassword = \"{user}-pw\"\n\
             on_store_unavailable = \"refresh_locally\"\n"
        );
        fleet.add(&idp, &redis.url(), &state, credential, &[]);
    }
    fleet.converged().await;
    let grants = idp.stat("refresh_grants").await;
    let waits = metric(
        &fleet.brokers[1].metrics_text().await,
        "token_broker_lease_waits_total",
    );
    idp.admin("latency", json!({"latency": "2s"})).await;

    let first = background_refresh(&fleet.brokers[0].url);
    eventually("the refresh to be out", || async {
        idp.stat("in_flight").await == 1
    })
    .await;
    let second = background_refresh(&fleet.brokers[1].url);
    eventually("broker b to wait for the lease", || async {
        let text = fleet.brokers[1].metrics_text().await;
        metric(&text, "token_broker_lease_waits_total") > waits
    })
    .await;
    // b may still take leases but no longer read records: Redis is reachable, so a
    // failed read is no reason to refresh without the lease.
    let revoke = ["ACL", "SETUSER", "b", "-hget", "-hmget"];
    assert_eq!(redis.cli(&revoke).trim(), "OK");
    let (first, _) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.0, 200, "{}", first.1);
    let stats = idp.stats().await;
    assert_eq!(stats["max_in_flight"], 1, "{stats}");
    assert_eq!(stats["refresh_grants"], grants + 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_answered_by_another_brokers_refresh_counts_as_adopted_not_refreshed() {
    let redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let fleet = Fleet::start(&idp, &redis, 2, "", "min_refresh_interval = \"0s\"\n");
    fleet.converged().await;
    let counts = |text: &str| {
        (
            metric(
                text,
                "token_broker_refreshes_total{credential=\"x\",trigger=\"forced\",result=\"ok\"}",
            ),
            metric(
                text,
                "token_broker_adopted_total{credential=\"x\",via=\"flight\"}",
            ),
        )
    };
    let before = counts(&fleet.brokers[1].metrics_text().await);
    idp.admin("latency", json!({"latency": "1s"})).await;

    let first = background_refresh(&fleet.brokers[0].url);
    eventually("the refresh to be out", || async {
        idp.stat("in_flight").await == 1
    })
    .await;
    let (status, body) = background_refresh(&fleet.brokers[1].url).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(first.await.unwrap().1["access_token"], body["access_token"]);
    let after = counts(&fleet.brokers[1].metrics_text().await);
    assert_eq!(after.0, before.0, "broker 1 refreshed nothing itself");
    assert_eq!(after.1, before.1 + 1.0, "it adopted broker 0's token");
}
