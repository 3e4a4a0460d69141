//! The file store sealed at rest (`state.encryption_key`): the files on disk hold no
//! token in clear, a key change with the old key in `previous_encryption_keys`
//! continues the chain and seals the files again, and a key that does not fit stops
//! the broker at start instead of losing the chain.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// A config whose `[state]` seals with `key` (and opens with `previous`).
fn config(idp: &Idp, dir: &Path, key: &Path, previous: Option<&Path>) -> String {
    let bootstrap = dir.join("bootstrap");
    if !bootstrap.exists() {
        std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    }
    let mut state = format!("encryption_key = {{ file = \"{}\" }}\n", key.display());
    if let Some(previous) = previous {
        state += &format!(
            "previous_encryption_keys = [{{ file = \"{}\" }}]\n",
            previous.display()
        );
    }
    base_config(dir)
        + &state
        + &refresh_credential("x", idp, &bootstrap, "min_refresh_interval = \"0s\"")
}

/// A forced refresh: it spends the stored refresh token, so it succeeds only if the
/// broker continued the chain (the IdP detects a reused token and revokes the family).
async fn refreshes(broker: &Broker, idp: &Idp) -> String {
    let response = broker.refresh("x", None).await;
    assert_eq!(response.status(), 200, "{}", broker.proc.logs());
    let body: serde_json::Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(idp.whoami(&token).await, 200);
    assert_eq!(idp.stat("reuse_detected").await, 0);
    token
}

/// The bytes of every state file.
fn state_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir.join("state"))
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_owned();
            name.ends_with(".state")
                .then(|| (name, std::fs::read(&path).unwrap()))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_sealed_and_a_key_change_continues_the_chain() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let (old_key, new_key) = (dir.path().join("old.key"), dir.path().join("new.key"));
    std::fs::write(&old_key, "11".repeat(32)).unwrap();
    std::fs::write(&new_key, "22".repeat(32)).unwrap();

    let mut broker = Broker::start(dir.path(), &config(&idp, dir.path(), &old_key, None));
    broker.ready().await;
    let mut tokens = vec![broker.access_token("x").await];
    tokens.push(refreshes(&broker, &idp).await);
    assert!(broker.proc.terminate().success());
    let files = state_files(dir.path());
    assert!(!files.is_empty());
    for (name, bytes) in &files {
        // The body is sealed: not even its field names are readable.
        assert!(!contains(bytes, "refresh_token"), "{name} is in clear");
        for token in &tokens {
            assert!(!contains(bytes, token), "{name} holds an access token");
        }
    }

    // A new key, the old one kept to open what it sealed: the chain continues.
    let mut broker = Broker::start(
        dir.path(),
        &config(&idp, dir.path(), &new_key, Some(&old_key)),
    );
    refreshes(&broker, &idp).await;
    assert!(broker.proc.terminate().success());

    // The files were sealed again: the old key alone no longer fits, and says so.
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(&idp, dir.path(), &old_key, None)).unwrap();
    let output = Command::new(bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("state.encryption_key is not the key"),
        "{stderr}"
    );
    assert!(!stderr.contains(&"11".repeat(32)), "{stderr}");

    // The new key alone opens everything.
    let mut broker = Broker::start(dir.path(), &config(&idp, dir.path(), &new_key, None));
    refreshes(&broker, &idp).await;
    assert!(broker.proc.terminate().success());
    assert_eq!(idp.stat("families_revoked").await, 0);
}
