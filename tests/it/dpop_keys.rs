//! The DPoP key the broker makes and keeps in the state store: the same key after a
//! restart (file store, sealed) and for every broker of a fleet started together on one
//! redis-server, and never in clear at rest, nor in logs.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures_util::future::join_all;
use secrecy::SecretString;
use serde_json::{Value, json};
use token_broker::store::Cipher;

use crate::dpop::{jkt, proof};
use crate::fleet::{Fleet, converged};
use crate::harness::*;
use crate::redis_server::RedisServer;

const SEAL: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// The private scalar `d` (base64url) of a P-256 PKCS#8 key as ring writes it.
fn d_of(pkcs8: &[u8]) -> String {
    let at = pkcs8
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .unwrap()
        + 5;
    URL_SAFE_NO_PAD.encode(&pkcs8[at..at + 32])
}

/// Opens what the store sealed under `context`, with the test's key.
fn unseal(context: &str, sealed: &[u8]) -> Vec<u8> {
    let cipher = Cipher::from_secret(&SecretString::from(SEAL.to_owned())).unwrap();
    cipher.open(context, sealed).unwrap().to_vec()
}

/// `d` in every form it could be written in, none of which may appear in `text`.
fn assert_absent(d: &str, text: &[u8], what: &str) {
    let bytes = URL_SAFE_NO_PAD.decode(d).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    for form in [
        d.as_bytes(),
        STANDARD.encode(&bytes).as_bytes(),
        hex.as_bytes(),
        &bytes,
    ] {
        assert!(
            !text.windows(form.len()).any(|w| w == form),
            "key material in {what}"
        );
    }
}

/// The key file of credential `x` in a file store, opened.
fn stored_key(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let raw = std::fs::read(dir.join("state/x.dpop-key")).unwrap();
    let body = raw.splitn(2, |b| *b == b'\n').nth(1).unwrap().to_vec();
    (raw, unseal("x#dpop-key", &body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_generated_key_which_is_sealed_at_rest() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let seal = dir.path().join("seal");
    std::fs::write(&seal, SEAL).unwrap();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path())
        + &format!("encryption_key = {{ file = \"{}\" }}\n", seal.display())
        + &refresh_credential(
            "x",
            &idp,
            &bootstrap,
            "dpop = true\nmin_refresh_interval = \"0s\"",
        );
    let mut broker = Broker::start(dir.path(), &config);
    let before = jkt(&broker.access_token("x").await);
    let (raw, pkcs8) = stored_key(dir.path());
    let d = d_of(&pkcs8);
    assert_absent(&d, &raw, "the key file");
    broker.proc.terminate();
    let logs = broker.proc.logs();

    let broker = Broker::start(dir.path(), &config);
    // A forced refresh: a new token, and the refresh token is bound to the old key, so
    // the IdP refuses it unless the proof is signed with that same key.
    let response = broker.refresh("x", None).await;
    assert_eq!(response.status(), 200, "{}", broker.proc.logs());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(jkt(body["access_token"].as_str().unwrap()), before);
    assert_eq!(stored_key(dir.path()).1, pkcs8, "the file is the same key");
    for text in [logs, broker.proc.logs(), broker.status().await.to_string()] {
        assert_absent(&d, text.as_bytes(), "logs or status");
    }
    assert_absent(&d, broker.metrics_text().await.as_bytes(), "metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_of_two_started_together_signs_with_one_key_sealed_in_redis() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let redis = RedisServer::start();
    let dir = tempdir();
    let seal = dir.path().join("seal");
    std::fs::write(&seal, SEAL).unwrap();
    let state = format!("encryption_key = {{ file = \"{}\" }}\n", seal.display());
    let fleet = Fleet::start(&idp, &redis, 2, &state, "dpop = true");
    // Both ask at once: each makes a key, one wins, both sign with the winner.
    let htu = "https://api.test/";
    let asks = fleet
        .brokers
        .iter()
        .map(|b| proof(b, "x", "", json!({"htm": "GET", "htu": htu})));
    let answers = join_all(asks).await;
    let token = converged(&fleet.brokers.iter().collect::<Vec<_>>()).await;
    let bound = jkt(&token);
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let signed = body["dpop"].as_str().unwrap();
        let access = body["access_token"].as_str().unwrap();
        let expect = token_broker::dpop::Expect {
            htm: "GET",
            htu,
            now: std::time::SystemTime::now(),
            max_age: std::time::Duration::from_secs(60),
            nonces: &[],
            access_token: Some(access),
        };
        let verified = token_broker::dpop::verify(signed, &expect).unwrap();
        assert_eq!(
            verified.jkt, bound,
            "both brokers sign with the key the token is bound to"
        );
    }
    let name = "token-broker:dpop-key:x";
    let mut sealed = redis.cli_bytes(&["GET", name]);
    sealed.pop(); // redis-cli's newline
    let d = d_of(&unseal(name, &sealed));
    assert_absent(&d, &sealed, "the redis record");
    for broker in &fleet.brokers {
        assert_absent(&d, broker.proc.logs().as_bytes(), "logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_stored_before_dpop_was_set_is_not_served_after_the_restart() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config =
        |extra: &str| base_config(dir.path()) + &refresh_credential("x", &idp, &bootstrap, extra);
    let mut broker = Broker::start(dir.path(), &config(""));
    let bearer = broker.token("x").await;
    assert_eq!(bearer["token_type"], "Bearer");
    broker.proc.terminate();

    let broker = Broker::start(dir.path(), &config("dpop = true"));
    let bound = broker.token("x").await;
    assert_eq!(bound["token_type"], "DPoP");
    assert_ne!(bound["access_token"], bearer["access_token"]);
    jkt(bound["access_token"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logins_unbound_token_is_not_served_its_chain_is_refreshed_with_a_proof() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let socket = dir.path().join("broker.sock");
    let config = crate::admin_login::config(dir.path(), &idp, &socket, "", None)
        .replace("min_refresh_interval", "dpop = true\nmin_refresh_interval");
    let broker = Broker::start(dir.path(), &config);
    let response = crate::admin_login::token_response(&idp).await;
    let url = format!("unix:{}", socket.display());
    token_broker::client::post_login(&url, None, "x", response.as_bytes())
        .await
        .unwrap();
    let served = broker.token("x").await;
    assert_eq!(served["token_type"], "DPoP");
    let access = served["access_token"].as_str().unwrap();
    assert_ne!(access, crate::admin_login::field(&response, "access_token"));
    jkt(access);
    assert_eq!(idp.stat("reuse_detected").await, 0);
}

/// A login is adopted once its chain is stored: a DPoP credential's first refresh with a
/// proof failing after that is a refresh failure (counted, backed off, retried), and the
/// caller hears that the chain was taken, so nobody hands the spent login in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_login_is_adopted_even_when_its_first_refresh_fails() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let socket = dir.path().join("broker.sock");
    let config = crate::admin_login::config(dir.path(), &idp, &socket, "", None).replace(
        "min_refresh_interval",
        "dpop = true\nbackoff_initial = \"200ms\"\nbackoff_max = \"400ms\"\nmin_refresh_interval",
    );
    let broker = Broker::start(dir.path(), &config);
    let response = crate::admin_login::token_response(&idp).await;
    let grants = idp.stat("refresh_grants").await;
    let failed = |status: Value| status["credentials"][0]["refreshes"]["failed"].as_u64();
    let failed_before = failed(broker.status().await).unwrap();
    idp.admin("faults", json!({"status": 503, "count": 1}))
        .await;
    let url = format!("unix:{}", socket.display());
    let answer = token_broker::client::post_login(&url, None, "x", response.as_bytes())
        .await
        .unwrap();
    let why = answer
        .refresh_error
        .expect("a 202 naming the failed refresh");
    assert!(why.contains("the new chain is stored"), "{why}");
    assert!(why.contains("do not hand this login in again"), "{why}");
    assert!(!why.contains(&crate::admin_login::field(&response, "refresh_token")));
    let logs = broker.proc.logs();
    assert!(!logs.contains("nothing changed"), "{logs}");
    // Ended like any failed refresh: counted, with its error shown.
    let status = broker.status().await["credentials"][0].clone();
    assert_eq!(status["refreshes"]["failed"], failed_before + 1, "{status}");
    assert!(status["last_error"]["message"].is_string(), "{status}");

    // The backoff retries with the login's chain (the only one there is): no second
    // login is needed, and nothing is reused.
    crate::failures::eventually("a bound token from the login's chain", || async {
        broker.get("/token/x").await.status() == 200
    })
    .await;
    let served = broker.token("x").await;
    assert_eq!(served["token_type"], "DPoP");
    jkt(served["access_token"].as_str().unwrap());
    assert!(idp.stat("refresh_grants").await > grants);
    assert_eq!(idp.stat("reuse_detected").await, 0);
    let status = broker.status().await["credentials"][0].clone();
    assert_eq!(status["state"], "valid", "{status}");
}
