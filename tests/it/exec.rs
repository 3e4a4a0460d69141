//! The `exec` source end to end: real scripts in a temp directory, run by the real
//! broker; each output format, a clean environment, timeouts that kill the whole
//! process group, failures that back off, and single flight.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures_util::future::join_all;
use serde_json::Value;

use crate::failures::eventually;
use crate::harness::*;

/// Writes an executable `#!/bin/sh` script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A `[credentials.NAME]` table running `command`, plus `extra` keys.
fn credential(name: &str, command: &Path, extra: &str) -> String {
    format!(
        "\n[credentials.{name}]\ngrant = \"exec\"\nexec.command = [\"{}\"]\n{extra}\n",
        command.display()
    )
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Whether the process is gone (or only a zombie waiting for its new parent).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_output_format_is_served_from_a_clean_environment() {
    let dir = tempdir();
    let env_file = dir.path().join("env.txt");
    let raw = script(dir.path(), "raw.sh", "printf 'opaque-token-%s\\n' $$");
    let jwt = script(
        dir.path(),
        "jwt.sh",
        "exp=$(( $(date +%s) + 900 ))\n\
         payload=$(printf '{\"exp\":%s,\"n\":\"%s\"}' $exp $$ | base64 | tr '+/' '-_' | tr -d '=\\n')\n\
         printf 'eyJhbGciOiJub25lIn0.%s.c2ln' \"$payload\"",
    );
    let exec_credential = script(
        dir.path(),
        "kube.sh",
        "at=$(date -u -d @$(( $(date +%s) + 1200 )) +%Y-%m-%dT%H:%M:%SZ)\n\
         printf '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"k8s-%s\",\"expirationTimestamp\":\"%s\"}}' $$ \"$at\"",
    );
    let oauth = script(
        dir.path(),
        "oauth.sh",
        "printf '{\"access_token\":\"oauth-%s\",\"expires_in\":300,\"token_type\":\"Bearer\"}' $$",
    );
    let env = script(
        dir.path(),
        "env.sh",
        &format!("env > '{}'\necho env-token-$$", env_file.display()),
    );
    let config = base_config(dir.path())
        + &credential("raw", &raw, "default_lifetime = \"10m\"")
        + &credential("jwt", &jwt, "exec.format = \"raw\"")
        + &credential("kube", &exec_credential, "exec.format = \"json\"")
        + &credential("oauth", &oauth, "")
        + &credential(
            "env",
            &env,
            "exec.env = { GREETING = \"hello\", FROM_BROKER = { env = \"EXEC_TEST_PASSED\" } }",
        );
    let broker = Broker::start_with_env(
        dir.path(),
        &config,
        &[
            ("RUST_LOG", "trace"),
            ("EXEC_TEST_PASSED", "passed-through"),
            ("EXEC_TEST_HIDDEN", "must-not-be-seen"),
        ],
    );
    let mut served = Vec::new();
    for (name, prefix, lifetime) in [
        ("raw", "opaque-token-", 600),
        ("jwt", "eyJhbGciOiJub25lIn0.", 900),
        ("kube", "k8s-", 1200),
        ("oauth", "oauth-", 300),
    ] {
        let body = broker.token(name).await;
        let token = body["access_token"].as_str().unwrap().to_owned();
        assert!(token.starts_with(prefix), "{name}: {body}");
        let left = body["expires_in"].as_u64().unwrap();
        assert!((lifetime - 5..=lifetime).contains(&left), "{name}: {left}s");
        served.push(token);
    }
    served.push(broker.access_token("env").await);
    let env = std::fs::read_to_string(&env_file).unwrap();
    for line in [
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "GREETING=hello",
        "FROM_BROKER=passed-through",
    ] {
        assert!(
            env.lines().any(|l| l == line),
            "{line} missing from:\n{env}"
        );
    }
    for hidden in ["EXEC_TEST_HIDDEN", "RUST_LOG", "HOME=", "TOKEN_BROKER"] {
        assert!(!env.contains(hidden), "{hidden} leaked into:\n{env}");
    }
    let status = broker.status().await;
    assert!(
        status["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["grant"] == "exec" && c["state"] == "valid")
    );
    let mut secrets: Vec<&str> = served.iter().map(String::as_str).collect();
    // The value the broker hands the command from its own environment.
    secrets.push("passed-through");
    crate::grants::assert_no_leak(&broker, "", &secrets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_timeout_is_killed_with_its_children() {
    let dir = tempdir();
    let (main_pid, child_pid) = (dir.path().join("main.pid"), dir.path().join("child.pid"));
    let hang = script(
        dir.path(),
        "hang.sh",
        &format!(
            "sleep 300 &\necho $! > '{}'\necho $$ > '{}'\nwait",
            child_pid.display(),
            main_pid.display()
        ),
    );
    let config = base_config(dir.path())
        + &credential(
            "x",
            &hang,
            "exec.timeout = \"1s\"\nbackoff_initial = \"1m\"\nbackoff_max = \"1m\"",
        );
    let broker = Broker::start(dir.path(), &config);
    let (status, body) = error_of(broker.get("/token/x").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("upstream_unavailable")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("no answer within 1s; killed it and its process group"),
        "{message}"
    );
    let main = std::fs::read_to_string(&main_pid).unwrap();
    let child = std::fs::read_to_string(&child_pid).unwrap();
    eventually("the script and its sleeping child to be killed", || async {
        gone(&main) && gone(&child)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_and_never_show_stderr() {
    let dir = tempdir();
    let runs = dir.path().join("runs");
    let failing = script(
        dir.path(),
        "fail.sh",
        &format!(
            "echo run >> '{}'\necho 'stderr-secret-7f3a: token abc' >&2\nexit 3",
            runs.display()
        ),
    );
    let huge = script(
        dir.path(),
        "huge.sh",
        "head -c 200000 /dev/zero | tr '\\0' a",
    );
    let broken = script(dir.path(), "broken.sh", "echo '{\"access_token\": '");
    let config = base_config(dir.path())
        + &credential(
            "fail",
            &failing,
            "backoff_initial = \"200ms\"\nbackoff_max = \"400ms\"",
        )
        + &credential("huge", &huge, "required = false")
        + &credential("broken", &broken, "required = false");
    let broker = Broker::start_with_env(dir.path(), &config, &[("RUST_LOG", "debug")]);
    let (status, body) = error_of(broker.get("/token/fail").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("upstream_unavailable")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("exited with status 3 (30 bytes on stderr, not shown"),
        "{message}"
    );
    eventually("retries with backoff", || async { lines(&runs) >= 4 }).await;
    let status = broker.status().await;
    let fail = status["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "fail")
        .unwrap();
    assert_eq!(
        fail["state"], "starting",
        "retryable, never reauth_required: {fail}"
    );

    let (status, body) = error_of(broker.get("/token/huge").await).await;
    assert_eq!(status, 503);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("printed more than 65536 bytes"),
        "{body}"
    );
    let (status, body) = error_of(broker.get("/token/broken").await).await;
    assert_eq!(status, 503);
    assert!(
        body["message"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );

    let logs = broker.proc.logs();
    assert!(
        logs.contains("exited with status 3"),
        "the failure is logged"
    );
    assert!(
        !logs.contains("stderr-secret-7f3a"),
        "stderr leaked into the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_requests_for_a_too_short_token_run_the_command_once() {
    let dir = tempdir();
    let runs = dir.path().join("runs");
    let counted = script(
        dir.path(),
        "counted.sh",
        &format!(
            "echo run >> '{}'\nsleep 0.5\nprintf '{{\"access_token\":\"tok-%s\",\"expires_in\":100}}' $$",
            runs.display()
        ),
    );
    let config = base_config(dir.path()) + &credential("x", &counted, "");
    let broker = Broker::start(dir.path(), &config);
    let first = broker.access_token("x").await;
    assert_eq!(lines(&runs), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // The current token has under 99s left; every request needs a new one.
    let client = client();
    let url = format!("{}/token/x?min_ttl=99s", broker.url);
    let requests = (0..300).map(|_| {
        let request = client.get(&url).header("Token-Broker", "1");
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["access_token"].as_str().unwrap().to_owned()
        }
    });
    let tokens: HashSet<String> = join_all(requests).await.into_iter().collect();
    assert_eq!(lines(&runs), 2, "the command ran once for all 300 requests");
    assert_eq!(tokens.len(), 1, "every request got the same new token");
    assert!(!tokens.contains(&first));
}

/// Whether the process no longer exists at all: not even a zombie waiting to be reaped.
fn reaped(pid: &str) -> bool {
    !Path::new(&format!("/proc/{}", pid.trim())).exists()
}

/// The zombies whose parent is `parent`.
fn zombie_children(parent: u32) -> Vec<String> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str()) {
            zombies.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    zombies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_child_holding_stdout_neither_delays_the_token_nor_outlives_the_run() {
    let dir = tempdir();
    let (child_pid, orphan_pid) = (dir.path().join("child.pid"), dir.path().join("orphan.pid"));
    // Both keep the command's stdout open: one a child of the script, one orphaned
    // at once (its parent subshell exits).
    let agent = script(
        dir.path(),
        "agent.sh",
        &format!(
            "sleep 300 &\necho $! > '{}'\n(sleep 301 & echo $! > '{}')\necho token-$$",
            child_pid.display(),
            orphan_pid.display()
        ),
    );
    let config = base_config(dir.path()) + &credential("x", &agent, "exec.timeout = \"30s\"");
    let broker = Broker::start(dir.path(), &config);
    // Within request_timeout (5s), not at exec.timeout.
    let token = broker.access_token("x").await;
    assert!(token.starts_with("token-"), "{token}");
    let child = std::fs::read_to_string(&child_pid).unwrap();
    let orphan = std::fs::read_to_string(&orphan_pid).unwrap();
    let broker_pid = broker.proc.child.id();
    eventually("the helpers to be killed and reaped", || async {
        reaped(&child) && reaped(&orphan) && zombie_children(broker_pid).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_left_the_group_is_reaped_when_it_exits() {
    let dir = tempdir();
    let daemon_pid = dir.path().join("daemon.pid");
    // `setsid` puts it in its own session: the run leaves it alone, and when it ends
    // the broker (its new parent) reaps it, as init would.
    let starter = script(
        dir.path(),
        "starter.sh",
        &format!(
            "setsid sleep 1 </dev/null >/dev/null 2>&1 &\necho $! > '{}'\necho token-$$",
            daemon_pid.display()
        ),
    );
    let config = base_config(dir.path()) + &credential("x", &starter, "");
    let broker = Broker::start(dir.path(), &config);
    broker.access_token("x").await;
    let daemon = std::fs::read_to_string(&daemon_pid).unwrap();
    let broker_pid = broker.proc.child.id();
    eventually("the daemon to exit and be reaped", || async {
        reaped(&daemon) && zombie_children(broker_pid).is_empty()
    })
    .await;
}
