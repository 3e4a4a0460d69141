//! The daemon through its one seam, `daemon::run(config, listeners, path, terminate)`,
//! in this test process: no child, so a test stops it exactly when it wants and sees
//! how `run` ended.

use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_in_process_and_drains_when_its_terminate_future_resolves() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let text = base_config(dir.path()) + &refresh_credential("x", &idp, &bootstrap, "");
    let config = token_broker::config::load_str(&text).unwrap();
    let listeners = token_broker::daemon::bind_all(&config).await.unwrap();
    let url = format!("http://{}", listeners[0].describe());
    let (terminate, terminated) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(token_broker::daemon::run(config, listeners, None, async {
        let _ = terminated.await;
    }));

    let token: serde_json::Value = client()
        .get(format!("{url}/token/x"))
        .header("Token-Broker", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
    assert_eq!(idp.whoami(token).await, 200);
    assert!(!daemon.is_finished());

    terminate.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), daemon).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    // Drained: the listener is closed.
    assert!(client().get(format!("{url}/healthz")).send().await.is_err());
}
