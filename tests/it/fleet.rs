//! Several broker processes sharing one credential through a real redis-server: one
//! refresh per rotation across the fleet, and how the others learn of it (pub/sub
//! notices, the polling fallback).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::*;
use crate::redis_server::RedisServer;

/// `[server]`, a redis `[state]` and credential `x` bootstrapped from the IdP's first
/// token. Short leases, polls and IdP timeouts keep the tests quick; `state` may end
/// with an `[idp]` table of its own.
pub fn fleet_config(dir: &Path, url: &str, state: &str, idp: &Idp, credential: &str) -> String {
    let bootstrap = dir.join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    // The `[state]` keys given, without a table that may follow.
    let own = state.split("[idp]").next().unwrap_or_default();
    let defaults: String = [
        ("lease_duration", "\"2s\""),
        ("timeout", "\"500ms\""),
        ("poll_interval", "\"200ms\""),
    ]
    .iter()
    .filter(|(key, _)| !own.contains(&format!("{key} =")))
    .map(|(key, value)| format!("{key} = {value}\n"))
    .collect();
    let idp_table = if state.contains("[idp]") {
        ""
    } else {
        "\n[idp]\ntimeout = \"5s\"\n"
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"20s\"\n\n\
         [state]\nbackend = \"redis\"\nurl = \"{url}\"\n{defaults}{state}\n{idp_table}{}",
        refresh_credential("x", idp, &bootstrap, credential)
    )
}

/// Brokers sharing one redis, each with its own directory.
pub struct Fleet {
    pub brokers: Vec<Broker>,
    pub dirs: Vec<TempDir>,
}

impl Fleet {
    pub fn start(idp: &Idp, redis: &RedisServer, n: usize, state: &str, credential: &str) -> Fleet {
        let mut fleet = Fleet {
            brokers: Vec::new(),
            dirs: Vec::new(),
        };
        for _ in 0..n {
            fleet.add(idp, &redis.url(), state, credential, &[]);
        }
        fleet
    }

    /// Starts one more broker.
    pub fn add(
        &mut self,
        idp: &Idp,
        url: &str,
        state: &str,
        credential: &str,
        env: &[(&str, &str)],
    ) {
        let dir = tempdir();
        let config = fleet_config(dir.path(), url, state, idp, credential);
        self.brokers
            .push(Broker::start_with_env(dir.path(), &config, env));
        self.dirs.push(dir);
    }

    /// Waits until every broker follows change notices: subscribed, and caught up with
    /// what was written before, so news written after this reaches each by notice.
    pub async fn subscribed(&self) {
        for broker in &self.brokers {
            crate::failures::eventually("the subscription to change notices", || async {
                broker.proc.logs().lines().any(|line| {
                    serde_json::from_str::<Value>(line)
                        .is_ok_and(|event| event["message"] == "subscribed to change notices")
                })
            })
            .await;
        }
    }

    /// Waits until every live broker serves the same token, and returns it.
    pub async fn converged(&self) -> String {
        converged(&self.brokers.iter().collect::<Vec<_>>()).await
    }
}

/// Waits until each of `brokers` serves the same valid token, and returns it.
pub async fn converged(brokers: &[&Broker]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut tokens = Vec::new();
        for broker in brokers {
            let response = broker.get("/token/x").await;
            if response.status() == 200 {
                let body: Value = response.json().await.unwrap();
                tokens.push(body["access_token"].as_str().unwrap().to_owned());
            }
        }
        if tokens.len() == brokers.len() && tokens.windows(2).all(|w| w[0] == w[1]) {
            return tokens.remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "the brokers never served one token: {tokens:?}\n{}",
            brokers
                .iter()
                .map(|b| b.proc.logs())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request of the mix: a rejected-token report, a forced refresh, or `min_ttl`.
async fn ask(url: String, kind: usize, rejected: String, min_ttl: &str) -> (u16, String) {
    let client = client();
    let request = match kind {
        0 => client
            .post(format!("{url}/token/x/refresh"))
            .json(&json!({ "rejected_token": rejected })),
        1 => client.post(format!("{url}/token/x/refresh")),
        _ => client.get(format!("{url}/token/x?min_ttl={min_ttl}")),
    };
    let response = request.header("Token-Broker", "1").send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    (
        status,
        if status == 200 {
            token
        } else {
            body.to_string()
        },
    )
}

/// A counter's value in a broker's `/metrics` text (summed over matching lines).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_brokers_answer_300_concurrent_requests_with_one_refresh() {
    let redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s", "--latency", "500ms"]);
    let fleet = Fleet::start(&idp, &redis, 3, "", "");
    let old = fleet.converged().await;
    assert_eq!(
        idp.stat("refresh_grants").await,
        1,
        "three brokers starting together make one refresh"
    );

    // The current token has aged: a `min_ttl` of 596s asks for a new one, which the
    // fresh token satisfies for its first 4 seconds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let requests: Vec<_> = (0..300)
        .map(|i| {
            let url = fleet.brokers[i % 3].url.clone();
            tokio::spawn(ask(url, (i / 3) % 3, old.clone(), "596s"))
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    let new = &answers[0].1;
    assert_ne!(new, &old);
    for (status, token) in &answers {
        assert_eq!(
            (*status, token),
            (200, new),
            "every request gets the one new token"
        );
    }
    let stats = idp.stats().await;
    assert_eq!(stats["refresh_grants"], 2, "exactly one refresh: {stats}");
    assert_eq!(stats["max_in_flight"], 1, "{stats}");
    assert_eq!(stats["reuse_detected"], 0, "{stats}");
    assert_eq!(idp.whoami(new).await, 200);

    // The refresh ran on one broker; the other two took its result from the store.
    let mut adopted = 0.0;
    for broker in &fleet.brokers {
        adopted += metric(&broker.metrics_text().await, "token_broker_adopted_total");
    }
    assert!(
        adopted >= 2.0,
        "two brokers adopted the new token: {adopted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_reaches_the_other_brokers_by_notice() {
    let redis = RedisServer::start();
    let idp = Idp::start(&["--access-ttl", "600s"]);
    // No polling within the test's time: only a pub/sub notice can carry the news.
    let fleet = Fleet::start(&idp, &redis, 3, "poll_interval = \"1h\"", "");
    let old = fleet.converged().await;
    // A broker still subscribing would catch up with the refresh by reading the
    // record (via="poll") instead of taking the notice.
    fleet.subscribed().await;

    let response = fleet.brokers[0].refresh("x", Some(&old)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let new = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    // Plain GETs start no refresh while the old token is valid: the others serve the
    // new token because the notice brought it.
    assert_eq!(fleet.converged().await, new);
    // A broker publishes the adopted token just before it counts the adoption.
    for broker in &fleet.brokers[1..] {
        crate::failures::eventually("the adoption in the metrics", || async {
            let text = broker.metrics_text().await;
            metric(
                &text,
                "token_broker_adopted_total{credential=\"x\",via=\"notice\"}",
            ) >= 1.0
        })
        .await;
    }
    assert_eq!(idp.stat("refresh_grants").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_catches_up_when_notices_cannot_arrive() {
    let redis = RedisServer::start();
    // `deaf` may use the keys but no pub/sub channel: it can never receive a notice.
    for user in [
        "user broker on >broker-pw ~token-broker:* &token-broker:* +@all",
        "user deaf on >deaf-pw ~token-broker:* resetchannels +@all",
    ] {
        let words: Vec<&str> = user.split(' ').skip(1).collect();
        let mut args = vec!["ACL", "SETUSER"];
        args.extend(words);
        assert_eq!(redis.cli(&args).trim(), "OK");
    }
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let mut fleet = Fleet {
        brokers: Vec::new(),
        dirs: Vec::new(),
    };
    let secrets = tempdir();
    let password_file = secrets.path().join("redis-password");
    std::fs::write(&password_file, "broker-pw\n").unwrap();
    let as_broker = format!(
        "username = \"broker\"\npassword = {{ file = \"{}\" }}\n",
        password_file.display()
    );
    let credential = "min_refresh_interval = \"0s\"\n";
    fleet.add(&idp, &redis.url(), &as_broker, credential, &[]);
    let old = fleet.converged().await;
    let as_deaf = "username = { env = \"REDIS_USER\" }\npassword = { env = \"REDIS_PASSWORD\" }\n";
    let env = [("REDIS_USER", "deaf"), ("REDIS_PASSWORD", "deaf-pw")];
    fleet.add(&idp, &redis.url(), as_deaf, credential, &env);
    assert_eq!(
        fleet.converged().await,
        old,
        "the second broker restored the shared token"
    );

    let response = fleet.brokers[0].refresh("x", None).await;
    assert_eq!(response.status(), 200);
    let new = fleet.converged().await;
    assert_ne!(new, old);
    let deaf = &fleet.brokers[1];
    let text = deaf.metrics_text().await;
    assert!(
        metric(
            &text,
            "token_broker_adopted_total{credential=\"x\",via=\"poll\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "token_broker_store_errors_total{operation=\"subscribe\"}"
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(idp.stat("refresh_grants").await, 2);
    for broker in &fleet.brokers {
        let logs = broker.proc.logs();
        for secret in ["broker-pw", "deaf-pw", &old, &new, &idp.refresh_token] {
            assert!(!logs.contains(secret), "a secret in the logs:\n{logs}");
        }
    }
}
