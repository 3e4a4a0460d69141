//! The proxy of a DPoP credential against an upstream whose nonce challenge no retry
//! satisfies: the challenge is passed on as it is, with no refresh (the token was not
//! refused) and no quiet spell, so a later real refusal still gets its refresh; also
//! when the challenge answers the retry with a refreshed token.

use crate::fleet::metric;
use crate::harness::*;
use crate::proxy::{proxy, proxy_addr, start_with};
use crate::upstream::{self, token_digest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_challenge_that_never_takes_is_passed_on_without_a_refresh_or_a_quiet_spell() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let upstream = upstream::start(idp.url.clone()).await;
    let dir = tempdir();
    let (broker, addr) = dpop_proxy(&idp, dir.path(), &upstream);
    let token = broker.access_token("x").await;
    let grants = idp.stat("refresh_grants").await;

    // Challenged, sent again with that nonce, challenged again: passed on as it is.
    let response = client()
        .get(format!("http://{addr}/nonce-always"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("use_dpop_nonce"), "{challenge}");
    assert!(response.headers().contains_key("dpop-nonce"));
    assert_eq!(response.text().await.unwrap(), "nonce please");
    assert_eq!(
        idp.stat("refresh_grants").await,
        grants,
        "a nonce challenge is no refusal of the token: no refresh"
    );
    assert_eq!(broker.access_token("x").await, token);
    let metrics = broker.metrics_text().await;
    let retries = |result: &str| {
        metric(
            &metrics,
            &format!("token_broker_proxy_retries_total{{proxy=\"api\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(retries("dpop_nonce"), 1.0, "{metrics}");
    assert_eq!(retries("dpop_nonce_again"), 1.0, "{metrics}");
    assert_eq!(retries("rejected"), 0.0, "{metrics}");
    assert!(
        !broker
            .proc
            .logs()
            .contains("refused a freshly refreshed token"),
        "a quiet spell began"
    );

    // No quiet spell: the API now refuses the token, and that 401 gets its refresh.
    let refuses = format!("http://{addr}/refuses-token/{}", token_digest(&token));
    let response = client().get(&refuses).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", broker.proc.logs());
    assert_eq!(response.text().await.unwrap(), "taken");
    assert_eq!(idp.stat("refresh_grants").await, grants + 1);
    assert_ne!(broker.access_token("x").await, token);
    let metrics = broker.metrics_text().await;
    let ok = "token_broker_proxy_retries_total{proxy=\"api\",result=\"ok\"}";
    assert_eq!(metric(&metrics, ok), 1.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "token_broker_proxy_retries_total{proxy=\"api\",result=\"quiet\"}"
        ),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_challenge_of_the_retry_with_a_refreshed_token_starts_no_quiet_spell() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let upstream = upstream::start(idp.url.clone()).await;
    let dir = tempdir();
    let (broker, addr) = dpop_proxy(&idp, dir.path(), &upstream);
    let token = broker.access_token("x").await;
    let grants = idp.stat("refresh_grants").await;

    // The token is refused: one refresh; the fresh one is challenged, twice: passed on.
    let url = format!(
        "http://{addr}/refuses-then-challenges/{}",
        token_digest(&token)
    );
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.text().await.unwrap(), "nonce please");
    assert_eq!(idp.stat("refresh_grants").await, grants + 1);
    let fresh = broker.access_token("x").await;
    assert_ne!(fresh, token);
    let metrics = broker.metrics_text().await;
    let retries = |result: &str| {
        metric(
            &metrics,
            &format!("token_broker_proxy_retries_total{{proxy=\"api\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(retries("dpop_nonce_again"), 1.0, "{metrics}");
    assert_eq!(retries("rejected"), 0.0, "{metrics}");

    // No quiet spell: the fresh token refused next gets its own refresh.
    let refuses = format!("http://{addr}/refuses-token/{}", token_digest(&fresh));
    let response = client().get(&refuses).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", broker.proc.logs());
    assert_eq!(idp.stat("refresh_grants").await, grants + 2);
    assert!(
        !broker
            .proc
            .logs()
            .contains("refused a freshly refreshed token"),
        "a quiet spell began"
    );
}

/// A broker whose DPoP credential `x` has a proxy `api` to `upstream`'s `/base`.
fn dpop_proxy(idp: &Idp, dir: &std::path::Path, upstream: &str) -> (Broker, String) {
    let mut broker = start_with(
        idp,
        dir,
        "dpop = true\nmin_refresh_interval = \"0s\"",
        &proxy("api", &format!("{upstream}/base"), ""),
        &[],
    );
    let addr = proxy_addr(&mut broker, "api");
    (broker, addr)
}
