//! `token-broker login --config FILE` with no broker running: the login's chain written
//! straight into the configured store (files, sealed files, Redis), and what a broker
//! started afterwards makes of it.

use serde_json::Value;

use crate::admin_login::{config, field, token_response};
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_login_is_what_a_broker_started_afterwards_serves() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let socket = dir.path().join("broker.sock");
    let text = config(dir.path(), &idp, &socket, "", None);
    let parsed = token_broker::config::load_str(&text).unwrap();
    let response = token_response(&idp).await;
    let bad = token_broker::broker::login::adopt_offline(&parsed, "x", b"{}").await;
    assert!(matches!(
        bad,
        Err(token_broker::broker::login::LoginError::BadBody(_))
    ));
    let unknown =
        token_broker::broker::login::adopt_offline(&parsed, "y", response.as_bytes()).await;
    assert!(matches!(
        unknown,
        Err(token_broker::broker::login::LoginError::UnknownCredential(
            _
        ))
    ));
    let adopted = token_broker::broker::login::adopt_offline(&parsed, "x", response.as_bytes())
        .await
        .unwrap();
    assert_eq!(adopted.credential, "x");
    assert!(adopted.expires_in > 0);

    let mut broker = Broker::start(dir.path(), &text);
    serves_the_login_then_its_chain(&broker, &response).await;
    // While the broker runs, its store is locked: an offline login says so.
    let locked =
        token_broker::broker::login::adopt_offline(&parsed, "x", response.as_bytes()).await;
    assert!(
        matches!(
            locked,
            Err(token_broker::broker::login::LoginError::Store(_))
        ),
        "{locked:?}"
    );
    broker.proc.terminate();
    assert_logs_hold_no_refresh_token(&broker, &response);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_login_into_redis_is_what_a_broker_started_afterwards_serves() {
    let idp = Idp::start(&[]);
    let redis = crate::redis_server::RedisServer::start();
    let dir = tempdir();
    let zero = "min_refresh_interval = \"0s\"";
    let text = crate::fleet::fleet_config(dir.path(), &redis.url(), "", &idp, zero);
    let parsed = token_broker::config::load_str(&text).unwrap();
    let response = token_response(&idp).await;
    let adopted = token_broker::broker::login::adopt_offline(&parsed, "x", response.as_bytes())
        .await
        .unwrap();
    assert_eq!(adopted.credential, "x");
    // The configured bootstrap is older than the login: the login's chain wins.
    let broker = Broker::start(dir.path(), &text);
    serves_the_login_then_its_chain(&broker, &response).await;
    assert_logs_hold_no_refresh_token(&broker, &response);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_login_into_a_sealed_file_store_is_sealed_and_served() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let key = dir.path().join("state.key");
    std::fs::write(&key, (0..4).map(|_| rand_suffix()).collect::<String>()).unwrap();
    let socket = dir.path().join("broker.sock");
    let sealed = format!("encryption_key = {{ file = \"{}\" }}\n", key.display());
    let text = config(dir.path(), &idp, &socket, "", None)
        .replace("[state]\n", &format!("[state]\n{sealed}"));
    let parsed = token_broker::config::load_str(&text).unwrap();
    let response = token_response(&idp).await;
    token_broker::broker::login::adopt_offline(&parsed, "x", response.as_bytes())
        .await
        .unwrap();
    let (refresh, access) = (
        field(&response, "refresh_token"),
        field(&response, "access_token"),
    );
    for entry in std::fs::read_dir(dir.path().join("state")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&refresh) && !text.contains(&access),
            "a token in clear"
        );
    }
    let broker = Broker::start(dir.path(), &text);
    assert_eq!(broker.access_token("x").await, access);
}

/// A broker started after an offline login serves the login's access token, and its
/// chain refreshes to a new one.
async fn serves_the_login_then_its_chain(broker: &Broker, response: &str) {
    let access = field(response, "access_token");
    assert_eq!(broker.access_token("x").await, access);
    let refreshed = broker.refresh("x", None).await;
    assert_eq!(refreshed.status(), 200, "{}", broker.proc.logs());
    let new: Value = refreshed.json().await.unwrap();
    assert_ne!(new["access_token"].as_str().unwrap(), access, "{new}");
}

fn assert_logs_hold_no_refresh_token(broker: &Broker, response: &str) {
    assert!(
        !broker
            .proc
            .logs()
            .contains(&field(response, "refresh_token"))
    );
}
