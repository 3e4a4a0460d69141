//! Shared-store writes whose answer comes late or not at all: a mark that Redis applies
//! after the writer gave up on it, and a new token that can only be written after an
//! outage. Neither may leave the fleet stopped in `reauth_required`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::failures::eventually;
use crate::fleet::{Fleet, converged, fleet_config};
use crate::fleet_recovery::{
    assert_no_reuse, background_refresh, converged_past, refresh_until_ok, state,
};
use crate::harness::*;
use crate::redis_server::RedisServer;

/// A named pipe: a secret read from it blocks until the test writes one.
fn fifo(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("client-secret.fifo");
    let made = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success());
    path
}

/// Hands `secret` to the next reader of the pipe, from a thread (opening a pipe for
/// writing blocks until a reader opens it).
fn feed(path: &Path, secret: &'static str) -> std::thread::JoinHandle<()> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        std::fs::write(&path, secret).unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_applied_after_its_write_timed_out_does_not_stop_the_fleet() {
    let redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let state_table = "lease_duration = \"4s\"\n";
    let credential = "min_refresh_interval = \"0s\"\n";
    let mut fleet = Fleet::start(&idp, &redis, 1, state_table, credential);
    let old = fleet.converged().await;
    let grants = idp.stat("refresh_grants").await;

    // Broker a reads its client secret from a pipe, so the test decides when its
    // refresh gets past reading its secrets and writes the mark.
    let dir = tempdir();
    let pipe = fifo(dir.path());
    let config = fleet_config(dir.path(), &redis.url(), state_table, &idp, credential).replace(
        "client_secret = \"dev-secret\"",
        &format!("client_secret = {{ file = \"{}\" }}", pipe.display()),
    );
    fleet.brokers.push(Broker::start(dir.path(), &config));
    fleet.dirs.push(dir);
    let brokers: Vec<&Broker> = fleet.brokers.iter().collect();
    assert_eq!(
        converged(&brokers).await,
        old,
        "a restored the shared token"
    );

    let first = background_refresh(&fleet.brokers[1].url);
    eventually("broker a to hold the lease", || async {
        !redis
            .cli(&["GET", "token-broker:lease:x"])
            .trim()
            .is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Writes stall for 1.5 s: the mark's write times out after 1 s (twice the 500 ms
    // timeout) and is applied when the pause ends.
    assert_eq!(
        redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]).trim(),
        "OK"
    );
    feed(&pipe, "dev-secret").join().unwrap();
    let (status, body) = first.await.unwrap();
    let new = converged_past(&brokers, &old).await;
    assert_eq!(
        status, 200,
        "broker a refreshed once the mark was known: {body}"
    );
    assert_eq!(body["access_token"], json!(new));
    let (next, refused) = refresh_until_ok(&fleet.brokers[0], Duration::from_secs(15)).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(converged(&brokers).await, next);
    assert_no_reuse(&idp, &fleet).await;
    assert_eq!(idp.stat("refresh_grants").await, grants + 2);
    for broker in &fleet.brokers {
        assert_eq!(state(broker).await, "valid");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_held_back_through_an_outage_is_written_before_anyone_takes_over() {
    let mut redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]);
    let idp = Idp::start(&["--access-ttl", "600s"]);
    // A slow retry: only the return of Redis may bring the held-back token out.
    let credential = "min_refresh_interval = \"0s\"\nbackoff_initial = \"20s\"\n";
    let fleet = Fleet::start(&idp, &redis, 2, "", credential);
    let old = fleet.converged().await;
    let grants = idp.stat("refresh_grants").await;
    idp.admin("latency", json!({"latency": "2s"})).await;

    // Broker 0 sends; Redis goes down before the answer, which therefore cannot be
    // written: the new refresh token exists only in broker 0's memory.
    let first = background_refresh(&fleet.brokers[0].url);
    eventually("the refresh to be out", || async {
        idp.stat("in_flight").await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    let (status, body) = first.await.unwrap();
    assert_eq!((status, &body["error"]), (503, &json!("store_unavailable")));
    idp.admin("latency", json!({"latency": "0s"})).await;

    // Redis returns with its data, the mark of the token sent, and no lease holder.
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    let brokers: Vec<&Broker> = fleet.brokers.iter().collect();
    let new = converged_past(&brokers, &old).await;
    assert_eq!(idp.whoami(&new).await, 200);
    for broker in &fleet.brokers {
        assert_eq!(state(broker).await, "valid", "{}", broker.proc.logs());
    }
    let (next, refused) = refresh_until_ok(&fleet.brokers[1], Duration::from_secs(15)).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(fleet.converged().await, next);
    assert_no_reuse(&idp, &fleet).await;
    assert_eq!(idp.stat("refresh_grants").await, grants + 2);
}
