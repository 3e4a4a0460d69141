//! The shared records when Redis loses or garbles them: the key check comes back with
//! the records, a broker with the wrong key exits whenever it finds out, a broken
//! version field spoils only its own credential, and a record that differs from a
//! broker's state at the same version is not ignored.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::failures::eventually;
use crate::fleet::{Fleet, converged, fleet_config, metric};
use crate::harness::*;
use crate::redis_server::RedisServer;

fn write_key(dir: &Path, name: &str, byte: u8) -> String {
    let path = dir.join(name);
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [byte; 32]);
    std::fs::write(&path, key).unwrap();
    format!("encryption_key = {{ file = \"{}\" }}\n", path.display())
}

/// Starts a broker with `state` and expects it to exit 1 saying it has the wrong key.
fn expect_wrong_key_exit(mut proc: Proc) {
    let status = proc.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", proc.logs());
    assert!(
        proc.logs()
            .contains("state.encryption_key is not the key the records under key prefix"),
        "{}",
        proc.logs()
    );
}

fn spawn_broker(dir: &Path, config: &str) -> Proc {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    Proc::spawn(&["run", "--config", path.to_str().unwrap()], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_lost_its_data_the_key_check_returns_with_the_records() {
    let mut redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s", "--no-rotation"]);
    let keys = tempdir();
    let sealed = write_key(keys.path(), "key", 1);
    let fleet = Fleet::start(&idp, &redis, 2, &sealed, "");
    let token = fleet.converged().await;

    redis.restart();
    eventually("a broker to write its state back", || async {
        !redis
            .cli(&["HGET", "token-broker:record:x", "version"])
            .trim()
            .is_empty()
    })
    .await;
    assert_eq!(
        redis.cli(&["EXISTS", "token-broker:key-check"]).trim(),
        "1",
        "the key check was written with the record"
    );
    // A broker with another key now refuses to start, as it did before the loss.
    let dir = tempdir();
    let other = write_key(keys.path(), "other", 2);
    let config = fleet_config(dir.path(), &redis.url(), &other, &idp, "");
    expect_wrong_key_exit(spawn_broker(dir.path(), &config));
    assert_eq!(fleet.converged().await, token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_the_wrong_key_started_while_redis_was_down_exits_once_it_is_back() {
    let mut redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]);
    let idp = Idp::start(&["--access-ttl", "600s", "--no-rotation"]);
    let keys = tempdir();
    let fleet = Fleet::start(&idp, &redis, 1, &write_key(keys.path(), "key", 1), "");
    let token = fleet.converged().await;

    redis.kill();
    let dir = tempdir();
    let other = write_key(keys.path(), "other", 2);
    let config = fleet_config(dir.path(), &redis.url(), &other, &idp, "");
    let mut proc = spawn_broker(dir.path(), &config);
    proc.wait_for("the broker to serve while redis is down", |line| {
        line.contains("token-broker serving").then_some(())
    });
    redis.restart();
    expect_wrong_key_exit(proc);
    assert_eq!(fleet.converged().await, token, "nothing was overwritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_version_field_spoils_only_its_own_credential() {
    let redis = RedisServer::start();
    // `deaf` may not use pub/sub: it learns of changes only by polling every version.
    for user in [
        "user broker on >broker-pw ~token-broker:* &token-broker:* +@all",
        "user deaf on >deaf-pw ~token-broker:* resetchannels +@all",
    ] {
        let mut args = vec!["ACL", "SETUSER"];
        args.extend(user.split(' ').skip(1));
        assert_eq!(redis.cli(&args).trim(), "OK");
    }
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let mut fleet = Fleet {
        brokers: Vec::new(),
        dirs: Vec::new(),
    };
    // Both brokers have credentials x and y (y from a refresh-token family of its own).
    let secrets = tempdir();
    let bootstrap = secrets.path().join("y");
    std::fs::write(&bootstrap, idp.mint().await).unwrap();
    let credentials = format!(
        "min_refresh_interval = \"0s\"\n{}",
        refresh_credential("y", &idp, &bootstrap, "")
    );
    let login = |user: &str| format!("username = \"{user}\"\npassword = \"{user}-pw\"\n");
    for user in ["broker", "deaf"] {
        fleet.add(&idp, &redis.url(), &login(user), &credentials, &[]);
        fleet.converged().await;
    }
    let deaf = &fleet.brokers[1];
    assert_eq!(deaf.get("/token/y").await.status(), 200);

    let garbled = ["HSET", "token-broker:record:y", "version", "not-a-number"];
    assert_eq!(redis.cli(&garbled).trim(), "0");
    let response = fleet.brokers[0].refresh("x", None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let new = body["access_token"].as_str().unwrap();
    let brokers: Vec<&Broker> = fleet.brokers.iter().collect();
    assert_eq!(converged(&brokers).await, new, "x was still polled");
    let text = deaf.metrics_text().await;
    assert!(
        metric(
            &text,
            "token_broker_adopted_total{credential=\"x\",via=\"poll\"}"
        ) >= 1.0,
        "{text}"
    );
    // y's record is written over with a broker's state.
    eventually("y's record to be repaired", || async {
        let version = redis.cli(&["HGET", "token-broker:record:y", "version"]);
        version.trim().parse::<u64>().is_ok()
    })
    .await;
    assert_eq!(deaf.get("/token/y").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_differs_at_the_same_version_is_taken() {
    let redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let fleet = Fleet::start(&idp, &redis, 1, "", "");
    let token = fleet.converged().await;
    assert_eq!(fleet.brokers[0].access_token("x").await, token);

    // Another state arrives at the version the broker already has: Redis lost a write
    // and a broker wrote something else in its place.
    let key = "token-broker:record:x";
    let version = redis.cli(&["HGET", key, "version"]).trim().to_owned();
    let data = redis.cli(&["HGET", key, "data"]);
    let mut record: Value = serde_json::from_str(data.trim()).unwrap();
    record["access_token"] = Value::from("written-elsewhere");
    record["written_by"] = Value::from("elsewhere:1");
    let args = [
        "HSET",
        key,
        "version",
        &version,
        "data",
        &record.to_string(),
        "stamp",
        "elsewhere",
    ];
    assert_eq!(
        redis.cli(&args).trim(),
        "0",
        "the fields are replaced, none added"
    );
    eventually("the broker to serve the record's token", || async {
        fleet.brokers[0].access_token("x").await == "written-elsewhere"
    })
    .await;
}
