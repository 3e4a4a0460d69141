//! Client keys in files follow their files: rewriting a key file revokes the old key
//! within seconds, a reload applies it at once (and says so), and a key file that can
//! no longer be read admits nobody.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

async fn status_with_key(broker: &Broker, key: &str) -> u16 {
    client()
        .get(format!("{}/token/x", broker.url))
        .header("Token-Broker", "1")
        .header("Token-Broker-Key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until `key` gets `status`, within a few seconds.
async fn until(broker: &Broker, key: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_with_key(broker, key).await != status {
        assert!(
            Instant::now() < deadline,
            "`{key}` never got {status}:\n{}",
            broker.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_key_file_revokes_the_old_key_without_a_restart() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let key_file = dir.path().join("client-key");
    std::fs::write(&key_file, "first-key\n").unwrap();
    let mut broker = broker_for(
        &idp,
        dir.path(),
        &format!("client_keys = [{{ file = \"{}\" }}]", key_file.display()),
    );
    broker.ready().await;
    assert_eq!(status_with_key(&broker, "first-key").await, 200);
    assert_eq!(status_with_key(&broker, "second-key").await, 403);

    // Rewritten in place, as an operator revoking a leaked key does.
    std::fs::write(&key_file, "second-key\n").unwrap();
    until(&broker, "second-key", 200).await;
    assert_eq!(status_with_key(&broker, "first-key").await, 403);

    // Replaced by a rename (as a Kubernetes Secret update does), then SIGHUP: the
    // reload applies it at once and names the credential.
    let staged = dir.path().join("client-key.new");
    std::fs::write(&staged, "third-key").unwrap();
    std::fs::rename(&staged, &key_file).unwrap();
    signal(&broker.proc.child, "HUP");
    let reread = broker.proc.wait_for("the reload", |line| {
        let event: Value = serde_json::from_str(line).ok()?;
        (event["message"] == "configuration reloaded").then(|| event["client_keys_reread"].clone())
    });
    assert!(
        reread.as_str().is_some_and(|r| r.contains("\"x\"")),
        "{reread}"
    );
    assert_eq!(status_with_key(&broker, "third-key").await, 200);
    assert_eq!(status_with_key(&broker, "second-key").await, 403);

    // Gone: the key admits nobody, and the log says which key, never its value.
    std::fs::remove_file(&key_file).unwrap();
    until(&broker, "third-key", 403).await;
    // The warning is written before the refusal is answered, but read from the pipe
    // by another thread: wait for it rather than race it.
    broker.proc.wait_for("the unreadable-key warning", |line| {
        (line.contains("a client key cannot be read")
            && line.contains("credentials.x.client_keys[0]"))
        .then_some(())
    });
    let logs = broker.proc.logs();
    for key in ["first-key", "second-key", "third-key"] {
        assert!(!logs.contains(key), "{key} in the log:\n{logs}");
    }
    broker.proc.terminate();
}
