//! The command-line halves of the emulation, driven by the real tools: `git` with
//! `token-broker git-credential` as its credential helper, and `kubectl` (and the
//! Python `kubernetes` client) with `token-broker get --format exec-credential` as an
//! exec credential plugin. The servers they reach check the token with the dev IdP.

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;

use crate::harness::*;
use crate::sdk;

/// A git smart-HTTP-looking remote that demands Basic auth whose password the dev IdP
/// accepts as an access token; it answers with a dumb-protocol ref list.
struct GitRemote {
    url: String,
    /// `(username, accepted)` of every authenticated attempt.
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

#[derive(Clone)]
struct RemoteState {
    idp: String,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

async fn info_refs(State(state): State<RemoteState>, headers: HeaderMap) -> Response {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"repo\"")];
    let Some((user, password)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return (StatusCode::UNAUTHORIZED, challenge).into_response();
    };
    let whoami = client()
        .get(format!("{}/api/whoami", state.idp))
        .bearer_auth(password)
        .send()
        .await
        .unwrap()
        .status();
    state
        .seen
        .lock()
        .unwrap()
        .push((user.to_owned(), whoami == 200));
    if whoami != 200 {
        return (StatusCode::UNAUTHORIZED, challenge).into_response();
    }
    let refs = format!("{}\trefs/heads/main\n", "1".repeat(40));
    ([(header::CONTENT_TYPE, "text/plain")], refs).into_response()
}

async fn git_remote(idp: &Idp) -> GitRemote {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = RemoteState {
        idp: idp.url.clone(),
        seen: seen.clone(),
    };
    let app = Router::new()
        .route("/repo.git/info/refs", get(info_refs))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    GitRemote {
        url: format!("http://{addr}/repo.git"),
        seen,
    }
}

/// `git ls-remote URL` with only our helper configured; (success, stdout + stderr).
async fn ls_remote(broker: &Broker, url: &str, home: &std::path::Path) -> (bool, String) {
    let Some(mut git) = sdk::tool("git") else {
        return (false, String::new());
    };
    let helper = format!("{} git-credential --url {}", bin(), broker.url);
    git.args(["-c", "credential.helper=", "-c"])
        .arg(format!("credential.helper={helper}"))
        .args(["ls-remote", url])
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS");
    let output = tokio::task::spawn_blocking(move || git.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test]
async fn git_uses_the_helper_and_an_erase_of_a_refused_token_refreshes_it() {
    if sdk::tool("git").is_none() {
        return;
    }
    let idp = Idp::start(&[]);
    let remote = git_remote(&idp).await;
    let dir = tempdir();
    let host = remote
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    let git = format!("[emulate.git]\nhosts = {{ \"{host}\" = \"x\" }}\nusername = \"oauth2\"\n");
    let broker = broker_with(&idp, dir.path(), &git, "");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let (ok, out) = ls_remote(&broker, &remote.url, &home).await;
    assert!(ok, "{out}\n{}", broker.proc.logs());
    assert!(out.contains("refs/heads/main"), "{out}");
    assert_eq!(
        remote.seen.lock().unwrap().last().unwrap(),
        &("oauth2".to_owned(), true)
    );
    let first = broker.access_token("x").await;
    let refreshes = idp.stat("refresh_grants").await;

    // The API stops accepting the token: git reports it (erase), the broker refreshes
    // once, and the next run gets the new token.
    idp.admin("forget-access-tokens", serde_json::json!({}))
        .await;
    let (ok, out) = ls_remote(&broker, &remote.url, &home).await;
    assert!(!ok, "the stale token must fail: {out}");
    assert_eq!(idp.stat("refresh_grants").await, refreshes + 1, "{out}");
    let (ok, out) = ls_remote(&broker, &remote.url, &home).await;
    assert!(ok, "{out}");
    assert_ne!(broker.access_token("x").await, first);
    assert_eq!(idp.stat("refresh_grants").await, refreshes + 1);
    assert!(!broker.proc.logs().contains(&first), "token in the logs");
    let metrics = broker.metrics_text().await;
    // Three gets and one erase (a rejected-token report answered with the new token).
    let served =
        r#"token_broker_emulated_requests_total{credential="x",protocol="git",outcome="served"} 4"#;
    assert!(metrics.contains(served), "{metrics}");
}

#[tokio::test]
async fn the_git_helper_answers_nothing_for_other_hosts_and_refuses_plain_http_afar() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let git = "[emulate.git]\nhosts = { \"git.example.com\" = \"x\" }\n";
    let broker = broker_with(&idp, dir.path(), git, "");
    let helper = |input: &str| {
        let mut command = Command::new(bin());
        command.args(["git-credential", "get", "--url", &broker.url]);
        let home = dir.path().join("home");
        let stdin = input.to_owned();
        move || sdk::run_status(command, &home, &stdin)
    };
    let (ok, out) =
        tokio::task::spawn_blocking(helper("protocol=https\nhost=other.example.com\n\n"))
            .await
            .unwrap();
    assert!(ok && out.is_empty(), "no answer for an unknown host: {out}");
    let (ok, out) = tokio::task::spawn_blocking(helper("protocol=http\nhost=git.example.com\n\n"))
        .await
        .unwrap();
    assert!(!ok && !out.contains("password"), "{out}");
    let (ok, out) = tokio::task::spawn_blocking(helper("protocol=https\nhost=git.example.com\n\n"))
        .await
        .unwrap();
    assert!(ok, "{out}");
    let token = broker.access_token("x").await;
    assert_eq!(out, format!("username=x-access-token\npassword={token}\n"));
}

/// The dev IdP over HTTPS (client-go sends no credentials over plain http) and a broker
/// whose credential `x` it serves; the CA is `dir/ca.pem`.
fn tls_idp_and_broker(dir: &std::path::Path) -> (Idp, Broker) {
    crate::tls::make_certificates(dir);
    let path = |name: &str| dir.join(name).display().to_string();
    let idp = Idp::start(&[
        "--tls-cert",
        &path("server.pem"),
        "--tls-key",
        &path("server.key"),
    ]);
    let ca = format!("[idp]\nca_file = \"{}\"\n", path("ca.pem"));
    let broker = broker_with(&idp, dir, &ca, "");
    (idp, broker)
}

/// A kubeconfig whose cluster is the dev IdP and whose user runs our plugin.
fn kubeconfig(
    dir: &std::path::Path,
    idp: &Idp,
    broker: &Broker,
    version: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!(
        "kubeconfig-{}",
        version.rsplit('/').next().unwrap()
    ));
    let interactive = match version.ends_with("/v1") {
        true => "      interactiveMode: Never\n",
        false => "",
    };
    let text = format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: idp
  cluster:
    server: {idp}
    certificate-authority: {ca}
contexts:
- name: idp
  context:
    cluster: idp
    user: broker
current-context: idp
users:
- name: broker
  user:
    exec:
      apiVersion: {version}
      command: {bin}
      args: [get, x, --format, exec-credential, --url, "{broker}"]
{interactive}"#,
        idp = idp.url,
        ca = dir.join("ca.pem").display(),
        bin = bin(),
        broker = broker.url,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The exec-credential versions this kubectl can ask for (v1 from Kubernetes 1.22).
fn kubectl_versions() -> Vec<&'static str> {
    let mut versions = vec!["client.authentication.k8s.io/v1beta1"];
    let output = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let minor: u32 = info["clientVersion"]["minor"]
        .as_str()
        .unwrap_or_default()
        .trim_end_matches('+')
        .parse()
        .unwrap_or(0);
    if minor >= 22 {
        versions.push("client.authentication.k8s.io/v1");
    }
    versions
}

#[tokio::test]
async fn kubectl_runs_the_exec_credential_plugin_against_a_server_checking_the_token() {
    if sdk::tool("kubectl").is_none() {
        return;
    }
    let dir = tempdir();
    let (idp, broker) = tls_idp_and_broker(dir.path());
    let home = dir.path().join("home");
    for version in kubectl_versions() {
        let config = kubeconfig(dir.path(), &idp, &broker, version);
        let mut kubectl = Command::new("kubectl");
        kubectl
            .arg("--kubeconfig")
            .arg(&config)
            .args(["get", "--raw", "/api/whoami"]);
        let home = home.clone();
        let out = tokio::task::spawn_blocking(move || sdk::run(kubectl, &home, ""))
            .await
            .unwrap();
        assert!(out.contains("dev-client"), "{version}: {out}");
    }
}

#[tokio::test]
async fn the_python_kubernetes_client_runs_the_plugin_for_both_api_versions() {
    let Some(_) = sdk::python() else {
        return;
    };
    let dir = tempdir();
    let (idp, broker) = tls_idp_and_broker(dir.path());
    let expected = broker.access_token("x").await;
    for version in [
        "client.authentication.k8s.io/v1",
        "client.authentication.k8s.io/v1beta1",
    ] {
        let config = kubeconfig(dir.path(), &idp, &broker, version);
        let mut python = sdk::python().unwrap();
        python
            .arg(sdk::scripts().join("kubernetes_exec.py"))
            .arg(&config);
        let home = dir.path().join("home");
        let out = tokio::task::spawn_blocking(move || sdk::run(python, &home, ""))
            .await
            .unwrap();
        let got = sdk::last_json(&out);
        assert_eq!(got["status"], 200, "{version}: {got}");
        assert_eq!(got["token"], expected.as_str(), "{version}");
    }
}

#[tokio::test]
async fn emulated_protocols_apply_the_credentials_client_rules() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let sections = "[emulate.gce]\nproject_id = \"p\"\nservice_accounts = { default = \"x\" }\n\n[emulate.git]\nhosts = { \"git.example.com\" = \"x\" }\n";
    let broker = broker_with(&idp, dir.path(), sections, "client_keys = [\"key-one\"]\n");

    // The metadata protocol carries no client key: refused.
    let response = client()
        .get(format!(
            "{}/computeMetadata/v1/instance/service-accounts/default/token",
            broker.url
        ))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("may not fetch"));

    // The git helper sends TOKEN_BROKER_KEY.
    let helper = |key: Option<&str>| {
        let mut command = Command::new(bin());
        command.args(["git-credential", "get", "--url", &broker.url]);
        if let Some(key) = key {
            command.env("TOKEN_BROKER_KEY", key);
        }
        let home = dir.path().join("home");
        move || sdk::run_status(command, &home, "protocol=https\nhost=git.example.com\n\n")
    };
    let (ok, out) = tokio::task::spawn_blocking(helper(None)).await.unwrap();
    assert!(
        !ok && out.contains("forbidden") && !out.contains("password="),
        "{out}"
    );
    let (ok, out) = tokio::task::spawn_blocking(helper(Some("key-two")))
        .await
        .unwrap();
    assert!(!ok && out.contains("forbidden"), "{out}");
    let (ok, out) = tokio::task::spawn_blocking(helper(Some("key-one")))
        .await
        .unwrap();
    assert!(ok && out.contains("password="), "{out}");

    let metrics = broker.metrics_text().await;
    for series in [
        r#"token_broker_emulated_requests_total{credential="x",protocol="gce",outcome="forbidden"} 1"#,
        r#"token_broker_emulated_requests_total{credential="x",protocol="git",outcome="forbidden"} 2"#,
        r#"token_broker_emulated_requests_total{credential="x",protocol="git",outcome="served"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series}\n{metrics}");
    }
    assert!(
        !broker.proc.logs().contains("key-one"),
        "client key in the logs"
    );
}
