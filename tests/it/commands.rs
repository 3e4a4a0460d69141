//! The sub-commands: `check-config`, `get`, `status` (and `usage.rs`: `dev`, usage errors).

use std::process::Command;

use serde_json::Value;

use crate::harness::*;

fn check_config(text: &str) -> (bool, String) {
    let dir = tempdir();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[credentials.a]
token_url = "https://idp.example.com/token"
client_id = "c"
refresh_token = "r"
"#;

#[test]
fn check_config_accepts_the_shipped_examples() {
    for example in ["config/example.toml", "config/dev.toml"] {
        let path = format!("{}/{example}", env!("CARGO_MANIFEST_DIR"));
        let output = Command::new(bin())
            .args(["check-config", "--config", &path])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(check_config(GOOD).0);
}

#[test]
fn check_config_names_the_key_of_every_problem() {
    let cases: &[(&str, &str)] = &[
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        (
            "[server]\nlisten = \"unix:relative.sock\"\n",
            "server.listen",
        ),
        ("[server]\nrequest_timeout = \"soon\"\n", "request_timeout"),
        ("[server]\nbogus = 1\n", "bogus"),
        ("[state]\nbackend = \"floppy\"\n", "state.backend"),
        (
            "[credentials.a]\nclient_id = \"c\"\nrefresh_token = \"r\"\n",
            "credentials.a.token_url",
        ),
        (
            "[credentials.a]\ntoken_url = \"http://idp.example.com/t\"\nclient_id = \"c\"\nrefresh_token = \"r\"\n",
            "credentials.a.token_url",
        ),
        (
            "[credentials.a]\ntoken_url = \"not a url\"\nclient_id = \"c\"\nrefresh_token = \"r\"\n",
            "credentials.a.token_url",
        ),
        (
            "[credentials.a]\ntoken_url = \"https://i/t\"\nrefresh_token = \"r\"\n",
            "credentials.a.client_id",
        ),
        (
            "[credentials.a]\ngrant = \"password\"\ntoken_url = \"https://i/t\"\nclient_id = \"c\"\n",
            "credentials.a.grant",
        ),
        (
            "[credentials.a]\ngrant = \"client_credentials\"\ntoken_url = \"https://i/t\"\nclient_id = \"c\"\n",
            "credentials.a.client_secret",
        ),
        (
            "[credentials.a]\ntoken_url = \"https://i/t\"\nclient_id = \"c\"\nrefresh_token = { vault = \"x\" }\n",
            "refresh_token",
        ),
        (
            "[credentials.a]\ntoken_url = \"https://i/t\"\nclient_id = \"c\"\nrefresh_token = \"r\"\nrefresh_ratio = 2.0\n",
            "credentials.a.refresh_ratio",
        ),
        (
            "[credentials.a]\ntoken_url = \"https://i/t\"\nclient_id = \"c\"\nrefresh_token = \"r\"\nclient_auth = \"magic\"\n",
            "credentials.a.client_auth",
        ),
        (
            "[credentials.a]\ntoken_url = \"https://i/t\"\nissuer = \"https://i\"\nclient_id = \"c\"\nrefresh_token = \"r\"\n",
            "credentials.a",
        ),
        (
            "[credentials.\"a/b\"]\ntoken_url = \"https://i/t\"\nclient_id = \"c\"\nrefresh_token = \"r\"\n",
            "credentials.a/b",
        ),
        (
            "[credentials.a]\ntoken_url = \"https://i/t\"\nclient_id = \"c\"\nrefresh_token = \"r\"\ncolour = \"blue\"\n",
            "colour",
        ),
        ("", "credentials"),
        ("this is not toml", "config"),
    ];
    for (text, key) in cases {
        let (ok, stderr) = check_config(text);
        assert!(!ok, "accepted:\n{text}");
        assert!(
            stderr.contains(key),
            "for\n{text}\nexpected `{key}` in:\n{stderr}"
        );
    }
}

#[test]
fn check_config_reports_every_problem_at_once() {
    let (ok, stderr) = check_config(
        "[credentials.a]\ntoken_url = \"http://example.com/t\"\nrefresh_ratio = 3.0\n",
    );
    assert!(!ok);
    for key in [
        "credentials.a.token_url",
        "credentials.a.client_id",
        "credentials.a.refresh_ratio",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    // A missing bootstrap is no problem: the credential waits for `token-broker login`.
    assert!(!stderr.contains("credentials.a.refresh_token"), "{stderr}");
    let (ok, stderr) =
        check_config("[credentials.a]\ntoken_url = \"https://i/t\"\nclient_id = \"c\"\n");
    assert!(ok, "{stderr}");
}

/// Keys of the wrong shape in several sections and credentials, and a problem the
/// checks after parsing find: all named in one run, in the words of the file.
#[test]
fn check_config_lists_every_type_error_in_one_run() {
    let (ok, stderr) = check_config(
        r#"
[server]
listen = 5
request_timeout = true
max_watchers = [1]

[idp]
max_concurrent = "many"

[credentials.a]
token_url = "https://idp.example.com/token"
client_id = "c"
refresh_token = "r"
refresh_ratio = "high"
allowed_uids = ["hunter2"]
colour = "blue"

[credentials.b]
token_url = "https://idp.example.com/token"
client_id = 12345
refresh_token = ["r"]

[credentials.c]
token_url = "https://idp.example.com/token"
refresh_token = "r"
"#,
    );
    assert!(!ok);
    for key in [
        "server.listen",
        "server.request_timeout",
        "server.max_watchers",
        "idp.max_concurrent",
        "credentials.a.refresh_ratio",
        "credentials.a.allowed_uids",
        "credentials.a.colour",
        "credentials.b.client_id",
        "credentials.b.refresh_token",
        // Found by the checks after parsing, in a credential of the right shapes.
        "credentials.c.client_id: is required",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    for internal in [
        "untagged",
        "variant",
        "u32",
        "usize",
        "invalid type",
        "12345",
        "hunter2",
    ] {
        assert!(!stderr.contains(internal), "`{internal}` in:\n{stderr}");
    }
    // A key removed for its shape does not come back as missing.
    assert!(
        !stderr.contains("credentials.b.client_id: is required"),
        "{stderr}"
    );
}

/// `check-config` (with `--check-secrets` for what it reads) refuses each config `run`
/// refuses before serving, naming the same key.
#[test]
fn check_config_refuses_what_run_refuses() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let open_to_all = dir.path().join("open");
    std::fs::create_dir(&open_to_all).unwrap();
    std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o777)).unwrap();
    let a_file = dir.path().join("file");
    std::fs::write(&a_file, "").unwrap();
    let private = dir.path().join("private");
    let missing = dir.path().join("missing-key");
    let with = |state: &std::path::Path, extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n{GOOD}{extra}\n",
            state.display()
        )
    };
    let cases = [
        (
            with(&open_to_all, ""),
            "state.dir",
            "writable by every user",
        ),
        (with(&a_file, ""), "state.dir", "not a directory"),
        (
            with(&private, "client_keys = [\"k\", \"  \"]"),
            "credentials.a.client_keys[1]",
            "is empty",
        ),
        (
            with(&private, "client_secret = \"\""),
            "credentials.a.client_secret",
            "is empty",
        ),
        (
            with(
                &private,
                &format!("client_keys = [{{ file = \"{}\" }}]", missing.display()),
            ),
            "credentials.a.client_keys[0]",
            "cannot read file",
        ),
    ];
    for (config, key, why) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &config).unwrap();
        let output = Command::new(bin())
            .args(["check-config", "--check-secrets", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "check-config accepted:\n{config}");
        assert!(
            stderr.contains(key) && stderr.contains(why),
            "expected `{key}` ... `{why}` in:\n{stderr}"
        );
        let (status, stderr) = run_failing(dir.path(), &config);
        assert!(!status.success());
        assert!(stderr.contains(key), "run: expected `{key}` in:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_status_talk_to_a_running_broker() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "");
    broker.ready().await;

    let output = Command::new(bin())
        .args(["get", "x", "--url", &broker.url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(idp.whoami(&token).await, 200);

    // Through the environment, with the default credential.
    let output = Command::new(bin())
        .arg("get")
        .env("TOKEN_BROKER_URL", &broker.url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), token);

    let output = Command::new(bin())
        .args(["get", "nope", "--url", &broker.url])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown_credential"));

    let output = Command::new(bin())
        .args(["get", "x", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));

    let output = Command::new(bin())
        .args(["status", "--url", &broker.url])
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("x "), "{table}");
    assert!(table.contains("valid"), "{table}");
    assert!(!table.contains(&token));
}

/// `TOKEN_BROKER__SECTION__KEY` overrides the file, for the server and for a credential,
/// and a bad override is reported under its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_override_the_config_file() {
    let idp = Idp::start(&["--access-ttl", "120s"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    // The file names a port that is taken; the environment moves the broker to port 0.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = base_config(dir.path())
        .replace("127.0.0.1:0", &taken.local_addr().unwrap().to_string())
        + &refresh_credential("x", &idp, &bootstrap, "scope = \"from-file\"");
    let broker = Broker::start_with_env(
        dir.path(),
        &config,
        &[
            ("TOKEN_BROKER__SERVER__LISTEN", "127.0.0.1:0"),
            ("TOKEN_BROKER__SERVER__REQUIRE_HEADER", "false"),
            ("TOKEN_BROKER__CREDENTIALS__X__SCOPE", "from-env"),
        ],
    );
    let body: Value = client()
        .get(format!("{}/token/x", broker.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["scope"], "from-env", "{body}");

    let path = dir.path().join("config.toml");
    let output = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("TOKEN_BROKER__SERVER__MAX_WAITING_REQUESTS", "lots")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.max_waiting_requests"), "{stderr}");
}

/// Runs `token-broker run` on `config` (expected to fail): its exit status and stderr.
/// Killed after 20 s, so a broker that serves instead of failing fails the test.
fn run_failing(dir: &std::path::Path, config: &str) -> (std::process::ExitStatus, String) {
    let path = dir.join("run.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the broker kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn run_reports_a_taken_port_and_a_bad_config_behind_an_early_bound_one() {
    let dir = tempdir();
    let credential = "\n[credentials.a]\ntoken_url = \"https://idp.example.com/token\"\n\
                      client_id = \"c\"\nrefresh_token = \"r\"\n";

    // The port is taken: the early bind fails quietly, the bind after the check reports.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = base_config(dir.path()).replace("127.0.0.1:0", &addr) + credential;
    let (status, stderr) = run_failing(dir.path(), &config);
    assert!(!status.success());
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    drop(taken);

    // The head is fine and bound early; a credential below it is not: the broker exits
    // naming the key, never says it serves, and lets go of the port.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let config = base_config(dir.path()).replace("127.0.0.1:0", &addr)
        + credential
        + "refresh_ratio = 3.0\n";
    let (status, stderr) = run_failing(dir.path(), &config);
    assert!(!status.success());
    assert!(stderr.contains("credentials.a.refresh_ratio"), "{stderr}");
    assert!(!stderr.contains("token-broker serving"), "{stderr}");
    std::net::TcpListener::bind(&addr).expect("the early-bound port is released");
}

#[test]
fn check_config_refuses_emulations_of_unknown_credentials() {
    let text = format!(
        "{GOOD}
[emulate.gce]
project_id = \"p\"
service_accounts = {{ default = \"a\", \"robot@p.iam.gserviceaccount.com\" = \"nope\" }}

[emulate.azure]
resources = {{ \"https://management.azure.com/\" = \"gone\" }}

[emulate.git]
hosts = {{ \"github.com\" = \"missing\" }}
"
    );
    let (ok, stderr) = check_config(&text);
    assert!(!ok);
    for expected in [
        "emulate.gce.service_accounts.robot@p.iam.gserviceaccount.com: no credential is named `nope`",
        "emulate.azure.secret: is required",
        "emulate.azure.resources.\"https://management.azure.com/\": no credential is named `gone`",
        "emulate.git.hosts.\"github.com\": no credential is named `missing`",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
    assert!(!stderr.contains("service_accounts.default"), "{stderr}");
    let unknown_key = format!("{GOOD}\n[emulate.gce]\nproject = \"p\"\n");
    let (ok, stderr) = check_config(&unknown_key);
    assert!(!ok && stderr.contains("emulate.gce.project"), "{stderr}");
}
