//! File sinks: the token on disk after start-up, after every refresh and after a
//! restart, with its mode; never a partial file for a reader polling it; a failing
//! sink logged, counted and retried without holding anything up.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// A broker whose credential `x` has a raw sink (default mode) and a JSON sink (0640)
/// in `out`, and may be refreshed at any time.
fn broker_with_sinks(idp: &Idp, dir: &Path, out: &Path) -> Broker {
    let sinks = format!(
        r#"min_refresh_interval = "0s"

[[credentials.x.sinks]]
path = "{raw}"

[[credentials.x.sinks]]
path = "{json}"
format = "json"
mode = "0640"
"#,
        raw = out.join("x.token").display(),
        json = out.join("x.json").display(),
    );
    broker_for(idp, dir, &sinks)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Waits until `path` holds `expected`.
async fn wait_for_file(path: &Path, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {now:?}, not the token served",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The access token of the JSON sink, once it is `expected`; returns the whole JSON.
async fn wait_for_json(path: &Path, expected: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Ok(json) = serde_json::from_str::<Value>(&text)
            && json["access_token"] == expected
        {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn forced_refresh(broker: &Broker) -> String {
    let response = broker.refresh("x", None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_hold_the_token_after_start_up_every_refresh_and_a_restart() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (raw, json) = (out.join("x.token"), out.join("x.json"));
    let mut broker = broker_with_sinks(&idp, dir.path(), &out);

    let served = broker.token("x").await;
    let first = served["access_token"].as_str().unwrap().to_owned();
    wait_for_file(&raw, &first).await;
    let written = wait_for_json(&json, &first).await;
    assert_eq!(written["expires_at"], served["expires_at"]);
    assert_eq!(written["token_type"], "Bearer");
    assert!(written["expires_in"].as_u64().unwrap() > 200);
    assert_eq!(mode(&raw), 0o600, "the default mode");
    assert_eq!(mode(&json), 0o640, "the configured mode");

    let second = forced_refresh(&broker).await;
    assert_ne!(second, first);
    wait_for_file(&raw, &second).await;
    wait_for_json(&json, &second).await;
    assert_eq!((mode(&raw), mode(&json)), (0o600, 0o640));
    // A write is counted just after its rename: the files may show before the count.
    let four = r#"token_broker_sink_writes_total{credential="x",result="ok"} 4"#;
    crate::failures::eventually("four sink writes counted", || async {
        broker.metrics_text().await.contains(four)
    })
    .await;
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "no temporary file is left behind: {names:?}"
    );

    // After a restart the stored token is restored, not fetched, and written again.
    assert!(broker.proc.terminate().success());
    std::fs::remove_file(&raw).unwrap();
    std::fs::remove_file(&json).unwrap();
    let grants = idp.stat("refresh_grants").await;
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let broker = Broker::start(dir.path(), &config);
    wait_for_file(&raw, &second).await;
    wait_for_json(&json, &second).await;
    assert_eq!(broker.access_token("x").await, second);
    assert_eq!(
        idp.stat("refresh_grants").await,
        grants,
        "restored, not refreshed"
    );
    for token in [&first, &second] {
        assert!(
            !broker.proc.logs().contains(token.as_str()),
            "a token reached the logs"
        );
    }
}

/// What a reader saw: every distinct content, and how many reads it made.
#[derive(Default)]
struct Seen {
    contents: HashSet<String>,
    reads: u64,
    failures: Vec<String>,
}

/// Reads `path` in a loop until `stop`, recording what it finds.
fn poll_file(path: std::path::PathBuf, json: bool, stop: Arc<AtomicBool>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let read = std::fs::read_to_string(&path);
            let mut seen = record.lock().unwrap();
            seen.reads += 1;
            match read {
                Ok(text) if text.is_empty() => seen.failures.push("an empty file".into()),
                Ok(text) if json => match serde_json::from_str::<Value>(&text) {
                    Ok(value) => {
                        let token = value["access_token"].as_str().unwrap_or_default();
                        seen.contents.insert(token.to_owned());
                    }
                    Err(e) => seen.failures.push(format!("not JSON ({e}): {text:?}")),
                },
                Ok(text) => {
                    seen.contents.insert(text);
                }
                Err(e) => seen.failures.push(format!("cannot read: {e}")),
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_polling_the_files_never_see_a_partial_or_empty_file() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let broker = broker_with_sinks(&idp, dir.path(), &out);
    let mut served = vec![broker.access_token("x").await];
    wait_for_file(&out.join("x.token"), &served[0]).await;
    wait_for_json(&out.join("x.json"), &served[0]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let raw = poll_file(out.join("x.token"), false, stop.clone());
    let json = poll_file(out.join("x.json"), true, stop.clone());
    for _ in 0..60 {
        served.push(forced_refresh(&broker).await);
    }
    let last = served.last().unwrap().clone();
    wait_for_file(&out.join("x.token"), &last).await;
    wait_for_json(&out.join("x.json"), &last).await;
    stop.store(true, Ordering::Relaxed);

    let served: HashSet<String> = served.into_iter().collect();
    for (name, seen) in [("raw", raw), ("json", json)] {
        let seen = seen.lock().unwrap();
        assert!(
            seen.failures.is_empty(),
            "{name}: {:?}",
            &seen.failures[..seen.failures.len().min(3)]
        );
        assert!(
            seen.reads > 200,
            "{name}: the reader ran ({} reads)",
            seen.reads
        );
        assert!(
            seen.contents.len() > 2,
            "{name}: the reader saw the versions change"
        );
        let partial: Vec<_> = seen.contents.difference(&served).collect();
        assert!(
            partial.is_empty(),
            "{name}: contents that are no whole token: {partial:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_is_logged_counted_retried_and_holds_nothing_up() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let missing = dir.path().join("not-yet");
    let sink = format!(
        "[[credentials.x.sinks]]\npath = \"{}\"\n",
        missing.join("x.token").display()
    );
    let mut broker = broker_for(&idp, dir.path(), &sink);

    // Reads are served while the sink cannot write.
    let token = broker.access_token("x").await;
    broker
        .proc
        .wait_for("the failed write to be logged", |line| {
            let event: Value = serde_json::from_str(line).ok()?;
            (event["message"] == "sink write failed").then(|| {
                assert_eq!(event["path"], missing.join("x.token").display().to_string());
                assert_eq!(event["level"], "WARN");
            })
        });
    let metrics = broker.metrics_text().await;
    assert!(
        metrics.contains(r#"token_broker_sink_writes_total{credential="x",result="error"}"#)
            && !metrics
                .contains(r#"token_broker_sink_writes_total{credential="x",result="error"} 0"#),
        "{metrics}"
    );

    // Once the directory exists, a retry writes the same version.
    std::fs::create_dir(&missing).unwrap();
    wait_for_file(&missing.join("x.token"), &token).await;
    broker.proc.wait_for("the recovery to be logged", |line| {
        line.contains("sink written again").then_some(())
    });
    assert!(
        !broker.proc.logs().contains(&token),
        "the token reached the logs"
    );
}

/// Runs `check-config` on `config`; returns stderr, which must report problems.
fn check_config(dir: &Path, config: &str, extra: &[&str]) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut args = vec!["check-config", "--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = std::process::Command::new(bin())
        .args(&args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "accepted:\n{config}");
    String::from_utf8(output.stderr).unwrap()
}

/// A credential `a` with `sinks`, state in `dir/state`.
fn sink_config(dir: &Path, sinks: &str) -> String {
    format!(
        "[state]\ndir = \"{}\"\n\n[credentials.a]\ngrant = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\nsinks = [\n{sinks}]\n",
        dir.join("state").display()
    )
}

#[test]
fn check_config_refuses_bad_sinks_and_checks_directories_with_check_secrets() {
    let dir = tempdir();
    let good = dir.path().join("a.token");
    let each = sink_config(
        dir.path(),
        &format!(
            "{{ path = \"relative/token\" }},\n{{ path = \"/tmp/../etc/token\" }},\n{{ path = \"{good}\", mode = \"0666\" }},\n{{ path = \"{good}\", mode = \"rw\" }},\n{{ path = \"{good}\", format = \"yaml\" }},\n{{ format = \"raw\" }},\n",
            good = good.display()
        ),
    );
    let errors = check_config(dir.path(), &each, &[]);
    for expected in [
        "credentials.a.sinks[0].path: `relative/token` must be absolute",
        "credentials.a.sinks[1].path: `/tmp/../etc/token` must not contain `.` or `..`",
        "credentials.a.sinks[2].mode: `0666` is not an octal mode",
        "credentials.a.sinks[3].mode: `rw` is not an octal mode",
        "credentials.a.sinks[4].format: unknown format `yaml`; expected raw or json",
        "credentials.a.sinks[5].path: is required",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }

    let unknown = sink_config(
        dir.path(),
        &format!("{{ path = \"{}\", owner = \"x\" }},\n", good.display()),
    );
    let errors = check_config(dir.path(), &unknown, &[]);
    assert!(errors.contains("unknown field `owner`"), "{errors}");

    let overall = sink_config(
        dir.path(),
        &format!(
            "{{ path = \"{state}/token\" }},\n{{ path = \"{good}\" }},\n{{ path = \"{good}\", format = \"json\" }},\n",
            state = dir.path().join("state").display(),
            good = good.display()
        ),
    );
    let errors = check_config(dir.path(), &overall, &[]);
    assert!(
        errors.contains("credentials.a.sinks[0].path:") && errors.contains("is inside state.dir"),
        "{errors}"
    );
    assert!(
        errors.contains("credentials.a.sinks[2].path:")
            && errors.contains("is also written by a sink of credentials.a"),
        "{errors}"
    );

    let missing = sink_config(
        dir.path(),
        &format!(
            "{{ path = \"{}/token\" }},\n",
            dir.path().join("missing").display()
        ),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &missing).unwrap();
    let plain = std::process::Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        plain.status.success(),
        "directories are checked only with --check-secrets"
    );
    let errors = check_config(dir.path(), &missing, &["--check-secrets"]);
    assert!(
        errors.contains("credentials.a.sinks[0].path: the directory")
            && errors.contains("does not exist"),
        "{errors}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_token_s_sink_files_are_removed_and_a_new_chain_writes_them_again() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (raw, json) = (out.join("x.token"), out.join("x.json"));
    let broker = broker_with_sinks(&idp, dir.path(), &out);
    let first = broker.access_token("x").await;
    wait_for_file(&raw, &first).await;
    wait_for_json(&json, &first).await;

    // The IdP refuses the chain: its token is withdrawn, from the files too.
    idp.admin("revoke", serde_json::json!({})).await;
    let response = broker.refresh("x", Some(&first)).await;
    assert_eq!(response.status(), 503);
    crate::failures::eventually("the sink files to be removed", || async {
        !raw.exists() && !json.exists()
    })
    .await;

    // A new bootstrap: the new chain's token is written again.
    std::fs::write(dir.path().join("bootstrap"), idp.mint().await).unwrap();
    crate::failures::eventually("the new chain's token", || async {
        broker.get("/token/x").await.status() == 200
    })
    .await;
    let second = broker.access_token("x").await;
    assert_ne!(second, first);
    wait_for_file(&raw, &second).await;
    wait_for_json(&json, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_added_by_a_reload_is_written_and_follows_later_refreshes() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let raw = out.join("x.token");
    let broker = broker_for(&idp, dir.path(), "");
    broker.access_token("x").await;
    assert!(!raw.exists());

    // The reload replaces `x` with settings that name a sink: the successor's tokens
    // are written, though the sink did not exist when the broker started.
    let config = dir.path().join("config.toml");
    let sink = format!(
        "min_refresh_interval = \"0s\"\n\n[[credentials.x.sinks]]\npath = \"{}\"\n",
        raw.display()
    );
    let text = std::fs::read_to_string(&config).unwrap() + &sink;
    std::fs::write(&config, text).unwrap();
    signal(&broker.proc.child, "HUP");
    crate::failures::eventually("the reloaded credential's sink file", || async {
        raw.exists()
    })
    .await;
    let current = broker.access_token("x").await;
    wait_for_file(&raw, &current).await;
    let next = forced_refresh(&broker).await;
    assert_ne!(next, current);
    wait_for_file(&raw, &next).await;
}
