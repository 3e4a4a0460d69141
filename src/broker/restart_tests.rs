//! The first flights after a restart, started by hand (no timer) against a real dev
//! IdP served in-process and a real file store, so the order of events is exact.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::credential::{Decision, Want};
use super::{Broker, STATES};
use crate::dev_idp::{DevIdp, DevIdpOptions};
use crate::metrics::Metrics;
use crate::store::Store;

async fn dev_idp() -> (DevIdp, String) {
    let idp = DevIdp::new(DevIdpOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(crate::dev_idp::serve(
        listener,
        idp.clone(),
        std::future::pending(),
    ));
    (idp, url)
}

/// A broker on `dir` that has not started its timer; the directory lock of the
/// previous one may take a moment to be released.
async fn broker(dir: &Path, idp: &DevIdp, url: &str) -> Broker {
    let config = crate::config::load_str(&format!(
        "[state]\ndir = \"{}\"\n[credentials.x]\ntoken_url = \"{url}\"\n\
         client_id = \"dev-client\"\nclient_secret = \"dev-secret\"\nrefresh_token = \"{}\"\n",
        dir.display(),
        idp.initial_refresh_token()
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let store = loop {
        match Store::open(&config.state).await {
            Ok(store) => break store,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    Broker::new(
        &config,
        store,
        Metrics::new(STATES),
        CancellationToken::new(),
    )
    .unwrap()
}

async fn token(broker: &Broker, want: Want) -> String {
    let credential = broker.credential("x").unwrap();
    credential.get(want).await.unwrap().secret().to_owned()
}

#[tokio::test]
async fn the_first_report_after_a_restart_never_gets_the_rejected_token_back() {
    let (idp, url) = dev_idp().await;
    let dir = tempfile::tempdir().unwrap();
    let first = token(
        &broker(dir.path(), &idp, &url).await,
        Want::Fresh(Duration::ZERO),
    )
    .await;

    // The report itself starts the first flight, which restores `first`.
    let broker2 = broker(dir.path(), &idp, &url).await;
    let second = token(&broker2, Want::Rejected(first.clone())).await;
    assert_ne!(second, first);
    drop(broker2);

    // The report joins the start-up flight (as the timer starts it), which restores
    // `second`.
    let broker3 = broker(dir.path(), &idp, &url).await;
    let credential = broker3.credential("x").unwrap();
    let startup = credential.decide(&Want::Timer, SystemTime::now(), None);
    assert!(matches!(startup, Decision::Wait(_)));
    let third = token(&broker3, Want::Rejected(second.clone())).await;
    assert_ne!(third, second);
    assert_eq!(idp.stats().refresh_grants, 3);
    assert_eq!(idp.stats().reuse_detected, 0);
}
