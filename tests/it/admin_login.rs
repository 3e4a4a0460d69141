//! `POST /v1/credentials/NAME/login` and `login_required`: a login's token response
//! adopted by a running broker (over its unix socket, or with an admin key), refused
//! to everyone else, resuming a refused chain without a restart; a credential without
//! a bootstrap waiting for it; `get` and `status` over the socket with a key. Offline
//! adoption is `offline_login.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// A real token response of the dev IdP: a fresh family minted, then redeemed once.
pub(crate) async fn token_response(idp: &Idp) -> String {
    let minted = idp.mint().await;
    let response = client()
        .post(format!("{}/token", idp.url))
        .basic_auth("dev-client", Some("dev-secret"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &minted)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

pub(crate) fn field(body: &str, name: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap();
    value[name].as_str().unwrap().to_owned()
}

/// A config with a TCP listener and the unix socket `socket`, `server` lines added,
/// and credential `x` (bootstrap from `bootstrap`, or none).
pub(crate) fn config(
    dir: &Path,
    idp: &Idp,
    socket: &Path,
    server: &str,
    bootstrap: Option<&Path>,
) -> String {
    let listen = format!(
        "listen = [\"127.0.0.1:0\", \"unix:{}\"]\nsocket_mode = \"0600\"\n{server}",
        socket.display()
    );
    let base = base_config(dir).replace("listen = \"127.0.0.1:0\"", &listen);
    let credential = match bootstrap {
        Some(file) => refresh_credential("x", idp, file, "min_refresh_interval = \"0s\""),
        None => format!(
            "\n[credentials.x]\ntoken_url = \"{}/token\"\nclient_id = \"dev-client\"\n\
             client_secret = \"dev-secret\"\nmin_refresh_interval = \"0s\"\n",
            idp.url
        ),
    };
    base + &credential
}

/// Extra request headers.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// `POST /v1/credentials/{name}/login` over TCP with the given headers.
async fn login_tcp(
    broker: &Broker,
    name: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut request = client()
        .post(format!("{}/v1/credentials/{name}/login", broker.url))
        .header("Token-Broker", "1")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn read(broker: &Broker) -> (u16, Value) {
    let response = broker.get("/token/x").await;
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Waits until the broker's logs hold `needle`.
fn logged(broker: &mut Broker, needle: &str) {
    broker
        .proc
        .wait_for(needle, |line| line.contains(needle).then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_over_the_socket_resumes_a_refused_chain_without_a_restart() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let socket = dir.path().join("broker.sock");
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = config(dir.path(), &idp, &socket, "", Some(&bootstrap));
    let mut broker = Broker::start(dir.path(), &config);
    broker.ready().await;
    idp.admin("revoke", json!({})).await;
    let refused = broker.refresh("x", None).await;
    assert_eq!(refused.status(), 503);
    let (status, body) = read(&broker).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("reauth_required"))
    );

    let response = token_response(&idp).await;
    let url = format!("unix:{}", socket.display());
    let answer = token_broker::client::post_login(&url, None, "x", response.as_bytes())
        .await
        .unwrap();
    assert_eq!(
        (answer.credential.as_str(), answer.state.as_str()),
        ("x", "valid")
    );
    assert!(answer.expires_in > 0);
    // Served at once, without a restart: the login's own access token.
    let access = field(&response, "access_token");
    assert_eq!(broker.access_token("x").await, access);
    assert_eq!(broker.status().await["credentials"][0]["state"], "valid");
    // The chain is the login's: a refresh spends its refresh token at the IdP.
    let refreshed = broker.refresh("x", None).await;
    assert_eq!(refreshed.status(), 200);
    let new: Value = refreshed.json().await.unwrap();
    assert_ne!(new["access_token"].as_str().unwrap(), access);
    assert_eq!(idp.whoami(new["access_token"].as_str().unwrap()).await, 200);
    logged(&mut broker, "adopted the chain a login handed in");
    let logs = broker.proc.logs();
    assert!(!logs.contains(&field(&response, "refresh_token")), "{logs}");
    assert!(!logs.contains(&access));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_may_log_in() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let socket = dir.path().join("broker.sock");
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let admin_key = dir.path().join("admin.key");
    std::fs::write(&admin_key, "adm1n-k3y\n").unwrap();
    let server = format!(
        "admin_uids = [12345]\nadmin_keys = [{{ file = \"{}\" }}]\n",
        admin_key.display()
    );
    let config = config(dir.path(), &idp, &socket, &server, Some(&bootstrap)).replace(
        "min_refresh_interval",
        "client_keys = [\"cl1ent-k3y\"]\nmin_refresh_interval",
    ) + &format!(
        "\n[credentials.cc]\ngrant = \"client_credentials\"\ntoken_url = \"{}/token\"\n\
             client_id = \"dev-client\"\nclient_secret = \"dev-secret\"\n",
        idp.url
    );
    let broker = Broker::start(dir.path(), &config);
    let response = token_response(&idp).await;

    // Our uid is not in admin_uids: the socket alone does not make us an admin.
    let url = format!("unix:{}", socket.display());
    let refused = token_broker::client::post_login(&url, None, "x", response.as_bytes()).await;
    let Err(token_broker::client::ClientError::Broker {
        status,
        error,
        message,
    }) = refused
    else {
        panic!("a login by a uid outside admin_uids went through: {refused:?}");
    };
    assert_eq!((status, error.as_str()), (403, "forbidden"));
    assert!(message.contains("server.admin_uids") && message.contains("server.admin_keys"));

    let admin = ("Token-Broker-Key", "adm1n-k3y");
    let cases: [(Headers, u16, &str); 4] = [
        (&[], 403, "forbidden"),
        (&[("Token-Broker-Key", "cl1ent-k3y")], 403, "forbidden"),
        (
            &[admin, ("X-Forwarded-For", "10.0.0.1")],
            403,
            "forwarded_request",
        ),
        (&[admin, ("Host", "evil.example")], 403, "bad_host"),
    ];
    for (headers, want, code) in cases {
        let (status, body) = login_tcp(&broker, "x", headers, &response).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want, Some(code)),
            "{headers:?}: {body}"
        );
        assert!(
            !body
                .to_string()
                .contains(&field(&response, "refresh_token"))
        );
    }
    let (status, body) = login_tcp(&broker, "x", &[admin], "{\"access_token\":\"a\"}").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("refresh_token"));
    let (status, _) = login_tcp(&broker, "x", &[admin], "not json").await;
    assert_eq!(status, 400);
    // A malformed body is described, never quoted.
    let wrong = r#"{"access_token": 7, "refresh_token": "s3cr3t-in-a-bad-body"}"#;
    let (status, body) = login_tcp(&broker, "x", &[admin], wrong).await;
    assert_eq!(status, 400);
    assert!(!body.to_string().contains("s3cr3t"), "{body}");
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let (status, body) = login_tcp(&broker, "x", &[admin], &huge).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let (status, body) = login_tcp(&broker, "nope", &[admin], &response).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_credential"))
    );
    let (status, body) = login_tcp(&broker, "cc", &[admin], &response).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_a_refresh_token_grant"))
    );

    // Nothing refused changed the credential; the admin key does.
    let (status, body) = login_tcp(&broker, "x", &[admin], &response).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("valid")),
        "{body}"
    );
    let served = client()
        .get(format!("{}/token/x", broker.url))
        .header("Token-Broker", "1")
        .header("Token-Broker-Key", "cl1ent-k3y")
        .send()
        .await
        .unwrap();
    let served: Value = served.json().await.unwrap();
    assert_eq!(
        served["access_token"].as_str().unwrap(),
        field(&response, "access_token")
    );
}

/// Polls `/readyz` until it answers `want`.
async fn readyz_is(broker: &Broker, want: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = client()
            .get(format!("{}/readyz", broker.url))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "readyz stays {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bootstrap_the_credential_waits_for_a_login_and_keeps_it() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let socket = dir.path().join("broker.sock");
    let config = config(dir.path(), &idp, &socket, "", None);
    let mut broker = Broker::start(dir.path(), &config);
    let calls = idp.stat("token_requests").await;
    for _ in 0..3 {
        let (status, body) = read(&broker).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("login_required")),
            "{body}"
        );
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("token-broker login x")
        );
    }
    let readyz = readyz_is(&broker, 503).await;
    assert_eq!(
        readyz["credentials"][0]["state"], "login_required",
        "{readyz}"
    );
    assert!(
        readyz["credentials"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("token-broker login x")
    );
    let status = broker.status().await;
    assert_eq!(
        status["credentials"][0]["state"], "login_required",
        "{status}"
    );
    assert!(
        status["credentials"][0]["next_refresh_at"].is_null(),
        "{status}"
    );
    let last_error = status["credentials"][0]["last_error"]["message"].as_str();
    assert!(
        last_error.unwrap().contains("token-broker login x"),
        "{status}"
    );
    assert_eq!(
        idp.stat("token_requests").await,
        calls,
        "no IdP call while waiting"
    );

    let response = token_response(&idp).await;
    let url = format!("unix:{}", socket.display());
    token_broker::client::post_login(&url, None, "x", response.as_bytes())
        .await
        .unwrap();
    readyz_is(&broker, 200).await;
    let access = field(&response, "access_token");
    assert_eq!(broker.access_token("x").await, access);

    // A restart keeps the stored chain: its token is served, and it refreshes.
    broker.proc.terminate();
    let broker = Broker::start(dir.path(), &config);
    assert_eq!(broker.access_token("x").await, access);
    let refreshed: Value = broker.refresh("x", None).await.json().await.unwrap();
    assert_ne!(
        refreshed["access_token"].as_str().unwrap(),
        access,
        "{refreshed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_into_one_broker_of_a_fleet_is_served_by_the_other() {
    let idp = Idp::start(&[]);
    let redis = crate::redis_server::RedisServer::start();
    let zero = "min_refresh_interval = \"0s\"";
    let (brokers, _dirs) = admin_fleet(&idp, &redis, zero, |config| config);
    let before = crate::fleet::converged(&brokers.iter().collect::<Vec<_>>()).await;
    let response = token_response(&idp).await;
    let access = field(&response, "access_token");
    assert_ne!(before, access);
    let key = secrecy::SecretString::from("adm1n".to_owned());
    let answer =
        token_broker::client::post_login(&brokers[0].url, Some(&key), "x", response.as_bytes())
            .await
            .unwrap();
    assert_eq!(answer.state, "valid");
    let served = crate::fleet::converged(&brokers.iter().collect::<Vec<_>>()).await;
    assert_eq!(served, access, "broker B never took the login's token");
    // B refreshes on the login's chain: the family the IdP knows it by.
    let refreshed: Value = brokers[1].refresh("x", None).await.json().await.unwrap();
    let next = refreshed["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!next.is_empty() && next != access, "{refreshed}");
    assert_eq!(
        crate::fleet::converged(&brokers.iter().collect::<Vec<_>>()).await,
        next
    );
    let rotated = field(&response, "refresh_token");
    for broker in &brokers {
        assert!(!broker.proc.logs().contains(&rotated));
    }
}

/// Runs the binary; (exit code, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = std::process::Command::new(bin());
    command
        .args(args)
        .env_remove("TOKEN_BROKER_KEY")
        .env_remove("TOKEN_BROKER_URL");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        output.status.code().unwrap_or(-1),
        text(output.stdout),
        text(output.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_status_reach_the_socket_and_send_a_key_file_or_the_variable() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let socket = dir.path().join("broker.sock");
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = config(dir.path(), &idp, &socket, "", Some(&bootstrap)).replace(
        "min_refresh_interval",
        "client_keys = [\"cl1ent\"]\nmin_refresh_interval",
    );
    let broker = Broker::start(dir.path(), &config);
    broker.ready().await;
    let unix = format!("unix:{}", socket.display());
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "cl1ent\n").unwrap();
    let key = key_file.to_str().unwrap();

    // The key file goes over the socket as over TCP.
    let (code, token, stderr) = run(&["get", "x", "--url", &unix, "--key-file", key], &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, by_tcp, stderr) = run(&["get", "x", "--url", &broker.url, "--key-file", key], &[]);
    assert_eq!((code, &by_tcp), (0, &token), "{stderr}");
    let (code, by_env, stderr) = run(
        &["get", "x", "--url", &broker.url],
        &[("TOKEN_BROKER_KEY", "cl1ent")],
    );
    assert_eq!((code, &by_env), (0, &token), "{stderr}");
    let (code, _, stderr) = run(&["get", "x", "--url", &broker.url], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("forbidden"), "{stderr}");
    let (code, out, stderr) = run(&["status", "--url", &unix, "--json"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("\"state\":\"valid\""), "{out}");
    let (code, _, stderr) = run(&["get", "x", "--url", "unix:relative.sock"], &[]);
    assert_eq!(code, 2, "{stderr}");
    let missing = format!("unix:{}", dir.path().join("none.sock").display());
    let (code, _, stderr) = run(&["get", "x", "--url", &missing], &[]);
    assert_eq!(code, 3, "{stderr}");
}

/// A login the store cannot take changes nothing, even where refreshes may run without
/// the store (`refresh_locally`): one broker's memory is no place for a new chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_the_shared_store_cannot_take_changes_nothing() {
    let idp = Idp::start(&[]);
    let mut redis = crate::redis_server::RedisServer::start();
    let dir = tempdir();
    let state = "on_store_unavailable = \"refresh_locally\"";
    let config = crate::fleet::fleet_config(dir.path(), &redis.url(), state, &idp, "")
        .replace("[server]\n", "[server]\nadmin_keys = [\"adm1n\"]\n");
    let broker = Broker::start(dir.path(), &config);
    let old = broker.access_token("x").await;
    let response = token_response(&idp).await;
    redis.kill();
    let (status, body) = login_tcp(&broker, "x", &[("Token-Broker-Key", "adm1n")], &response).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    assert_eq!(broker.access_token("x").await, old);
    assert_eq!(broker.status().await["credentials"][0]["state"], "valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_waiting_for_a_login_takes_it_from_either_broker() {
    let idp = Idp::start(&[]);
    let redis = crate::redis_server::RedisServer::start();
    // No bootstrap: the fleet waits for a login.
    let (brokers, _dirs) = admin_fleet(&idp, &redis, "", |config| {
        config
            .lines()
            .filter(|line| !line.starts_with("refresh_token = {"))
            .map(|line| format!("{line}\n"))
            .collect()
    });
    for broker in &brokers {
        let (status, body) = read(broker).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("login_required")),
            "{body}"
        );
    }
    let response = token_response(&idp).await;
    let (status, body) = login_tcp(
        &brokers[0],
        "x",
        &[("Token-Broker-Key", "adm1n")],
        &response,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let served = crate::fleet::converged(&brokers.iter().collect::<Vec<_>>()).await;
    assert_eq!(served, field(&response, "access_token"));
    assert_eq!(
        brokers[1].status().await["credentials"][0]["state"],
        "valid"
    );
}

/// Two brokers of a fleet on `redis` that take the admin key `adm1n`; `edit` changes
/// each one's config before it starts.
fn admin_fleet(
    idp: &Idp,
    redis: &crate::redis_server::RedisServer,
    credential: &str,
    edit: impl Fn(String) -> String,
) -> (Vec<Broker>, Vec<tempfile::TempDir>) {
    let mut brokers = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempdir();
        let config = crate::fleet::fleet_config(dir.path(), &redis.url(), "", idp, credential)
            .replace("[server]\n", "[server]\nadmin_keys = [\"adm1n\"]\n");
        brokers.push(Broker::start(dir.path(), &edit(config)));
        dirs.push(dir);
    }
    (brokers, dirs)
}
