//! The daemon through its one seam, `daemon::run(config, listeners, path, terminate)`,
//! in this test process: no child, so a test stops it exactly when it wants, sees how
//! `run` ended, and can pause the runtime's clock while the broker's own timers (long
//! polls, keep-alives) are what it waits for.
//!
//! Paused time fits only waits that are the broker's timers alone: the dev IdP is
//! another process, and a paused clock jumps to the next timer whenever the runtime is
//! idle, also while a reply from that process is on its way. So tests pause around such
//! waits and resume before they call the IdP again.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::harness::*;

/// A daemon running in this process on port 0; aborted if dropped unstopped.
pub struct InProcess {
    pub url: String,
    terminate: Option<oneshot::Sender<()>>,
    daemon: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Runs the daemon on `config` (TOML text); its first listener is the TCP one.
    pub async fn start(config: &str) -> InProcess {
        let config = token_broker::config::load_str(config).unwrap();
        let listeners = token_broker::daemon::bind_all(&config).await.unwrap();
        let url = format!("http://{}", listeners[0].describe());
        let (terminate, terminated) = oneshot::channel::<()>();
        let daemon = tokio::spawn(token_broker::daemon::run(config, listeners, None, async {
            let _ = terminated.await;
        }));
        InProcess {
            url,
            terminate: Some(terminate),
            daemon,
        }
    }

    /// Resolves the terminate future and waits (10 s at most) for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(terminate) = self.terminate.take() {
            let _ = terminate.send(());
        }
        let daemon = &mut self.daemon;
        tokio::time::timeout(Duration::from_secs(10), daemon)
            .await
            .expect("the daemon did not drain within 10 s")
            .expect("the daemon task panicked")
    }

    pub fn is_finished(&self) -> bool {
        self.daemon.is_finished()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.daemon.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_in_process_and_drains_when_its_terminate_future_resolves() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let text = base_config(dir.path()) + &refresh_credential("x", &idp, &bootstrap, "");
    let daemon = InProcess::start(&text).await;
    let url = daemon.url.clone();

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

    let ended = daemon.stop().await;
    assert!(ended.is_ok(), "{ended:?}");
    // Drained: the listener is closed.
    assert!(client().get(format!("{url}/healthz")).send().await.is_err());
}
