//! `token-broker login` end to end: the real binary against the real dev IdP, the
//! browser played by an HTTP client that reads the URL `login --no-browser` prints and
//! follows each redirect to the loopback listener, and the new chain delivered to a
//! running broker or written into the store of a broker started afterwards. Also every
//! ending that is not a login (wrong state, denial, expiry, timeouts) with its exit
//! code, and the refresh token never shown.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// The dev IdP's registered redirect; loopback, so any port matches (RFC 8252 7.3).
const REDIRECT: &str = "http://127.0.0.1/callback";

pub(crate) fn idp(extra: &[&str]) -> Idp {
    let mut args = vec!["--redirect-uri", REDIRECT];
    args.extend_from_slice(extra);
    Idp::start(&args)
}

/// A broker config: TCP first (the harness reads it), then a unix socket in `dir`
/// (the login's way in: the same uid is an admin); credential `x` found by discovery.
/// Without `bootstrap` the credential waits for a login.
pub(crate) fn config(dir: &Path, idp: &Idp, bootstrap: Option<&str>) -> String {
    let refresh = match bootstrap {
        Some(token) => {
            let file = dir.join("bootstrap");
            std::fs::write(&file, token).unwrap();
            format!("refresh_token = {{ file = \"{}\" }}", file.display())
        }
        None => String::new(),
    };
    format!(
        r#"[server]
listen = ["127.0.0.1:0", "unix:{dir}/broker.sock"]
request_timeout = "5s"

[state]
dir = "{dir}/state"

[credentials.x]
issuer = "{issuer}"
client_id = "dev-client"
client_secret = "dev-secret"
scope = "openid"
{refresh}
"#,
        dir = dir.display(),
        issuer = idp.url,
    )
}

/// Writes `config` to `dir/config.toml` and returns its path.
pub(crate) fn write_config(dir: &Path, config: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Starts `token-broker login x --config PATH ARGS...`.
pub(crate) fn login(config: &str, args: &[&str]) -> Proc {
    let mut all = vec!["login", "x", "--config", config];
    all.extend_from_slice(args);
    Proc::spawn(&all, &[])
}

/// The authorization URL `login` printed.
fn printed_url(login: &mut Proc) -> String {
    login.wait_for("the authorization URL", |line| {
        let url = line.trim();
        url.contains("/authorize?").then(|| url.to_owned())
    })
}

/// A browser that shows each redirect instead of following it.
pub(crate) fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// GETs `url` and follows redirects as a browser would; the last status and page.
async fn follow(mut url: String) -> (u16, String) {
    for _ in 0..5 {
        let response = browser().get(&url).send().await.unwrap();
        match response.headers().get("location") {
            Some(next) if response.status().is_redirection() => {
                url = next.to_str().unwrap().to_owned();
            }
            _ => {
                let status = response.status().as_u16();
                return (status, response.text().await.unwrap());
            }
        }
    }
    panic!("too many redirects from {url}");
}

/// The exit code once `login` has ended.
pub(crate) fn exit_code(login: &mut Proc) -> i32 {
    login
        .wait_exit(Duration::from_secs(30))
        .code()
        .unwrap_or(-1)
}

/// Every refresh token in the state files under `dir` (the file store keeps them in
/// JSON records, in clear without `state.encryption_key`).
fn stored_refresh_tokens(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            for part in text.split("\"refresh_token\":\"").skip(1) {
                found.push(part.split('"').next().unwrap().to_owned());
            }
        }
    }
    found
}

/// Asserts none of `secrets` appears in `text`.
fn assert_absent(text: &str, secrets: &[String], what: &str) {
    assert!(!secrets.is_empty(), "no secret to look for in {what}");
    for secret in secrets {
        assert!(secret.len() >= 20, "not a token: {secret}");
        assert!(
            !text.contains(secret.as_str()),
            "a token in {what}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_gives_a_waiting_credential_its_chain_in_the_running_broker() {
    let idp = idp(&["--auto-approve"]);
    let dir = tempdir();
    let broker = Broker::start(dir.path(), &config(dir.path(), &idp, None));
    let socket = format!("unix:{}/broker.sock", dir.path().display());
    let path = dir.path().join("config.toml");
    let mut login = login(path.to_str().unwrap(), &["--no-browser", "--url", &socket]);
    let url = printed_url(&mut login);
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("nonce="),
        "{url}"
    );
    let (status, page) = follow(url).await;
    assert_eq!(status, 200, "{page}\n{}", login.logs());
    assert!(
        page.contains("Logged in") && page.contains("close this tab"),
        "{page}"
    );
    assert_eq!(exit_code(&mut login), 0, "{}", login.logs());
    let output = login.logs();
    assert!(
        output.contains("logged in, credential x now valid, expires in"),
        "{output}"
    );
    let access = broker.access_token("x").await;
    assert_eq!(idp.whoami(&access).await, 200);
    assert_eq!(idp.stat("authorization_code_grants").await, 1);
    let stored = stored_refresh_tokens(&dir.path().join("state"));
    assert_absent(&output, &stored, "login's output");
    assert_absent(&output, &[access], "login's output");
    assert_absent(&broker.proc.logs(), &stored, "the broker's log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_into_the_running_broker_honours_slow_down() {
    let idp = idp(&["--auto-approve", "--device-interval", "1s"]);
    let dir = tempdir();
    let broker = Broker::start(dir.path(), &config(dir.path(), &idp, None));
    // The first poll is told to slow down: the next comes 1 + 5 seconds later.
    let fault = serde_json::json!({"status": 400, "error": "slow_down", "count": 1});
    idp.admin("faults", fault).await;
    let started = Instant::now();
    let path = dir.path().join("config.toml");
    let socket = format!("unix:{}/broker.sock", dir.path().display());
    let mut login = login(path.to_str().unwrap(), &["--device", "--url", &socket]);
    assert_eq!(exit_code(&mut login), 0, "{}", login.logs());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(6),
        "polled again after {took:?}"
    );
    let output = login.logs();
    assert!(output.contains("/device?user_code="), "{output}");
    assert!(
        output.contains("logged in, credential x now valid"),
        "{output}"
    );
    assert_eq!(idp.stat("device_code_grants").await, 1);
    assert_eq!(idp.stat("errors_injected").await, 1);
    let access = broker.access_token("x").await;
    assert_eq!(idp.whoami(&access).await, 200);
    let stored = stored_refresh_tokens(&dir.path().join("state"));
    assert_absent(&output, &stored, "login's output");
}

/// With no broker running, both flows write the chain into the store, and a broker
/// started afterwards serves the credential from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_a_login_writes_the_store_a_broker_then_starts_from() {
    let idp = idp(&["--auto-approve", "--device-interval", "1s"]);
    for device in [false, true] {
        let dir = tempdir();
        let path = write_config(dir.path(), &config(dir.path(), &idp, None));
        // No --url and nothing at the config's socket: the store takes the chain.
        let mut login = match device {
            true => login(&path, &["--device"]),
            false => login(&path, &["--no-browser", "--offline"]),
        };
        if !device {
            let (status, page) = follow(printed_url(&mut login)).await;
            assert_eq!(status, 200, "{page}");
        }
        assert_eq!(exit_code(&mut login), 0, "{}", login.logs());
        let output = login.logs();
        assert!(
            output.contains("logged in, credential x now valid"),
            "{output}"
        );
        if device {
            assert!(output.contains("No broker answers at unix:"), "{output}");
        }
        let stored = stored_refresh_tokens(&dir.path().join("state"));
        assert_absent(&output, &stored, "login's output");

        let broker = Broker::start(dir.path(), &std::fs::read_to_string(&path).unwrap());
        let access = broker.access_token("x").await;
        assert_eq!(idp.whoami(&access).await, 200, "device: {device}");
    }
    assert_eq!(idp.stat("authorization_code_grants").await, 1);
    assert_eq!(idp.stat("device_code_grants").await, 1);
}

/// A redirect with another `state` ends the login (exit 7): nothing is redeemed, and
/// the browser is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_with_a_wrong_state_is_refused_and_nothing_is_redeemed() {
    let idp = idp(&["--auto-approve"]);
    let dir = tempdir();
    let path = write_config(
        dir.path(),
        &config(dir.path(), &idp, Some(&idp.refresh_token)),
    );
    let mut login = login(&path, &["--no-browser", "--offline"]);
    let url = printed_url(&mut login);
    let sent = url::Url::parse(&url).unwrap();
    let redirect_uri = sent
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .into_owned();
    assert!(
        redirect_uri.starts_with("http://127.0.0.1:"),
        "{redirect_uri}"
    );
    // The IdP's real code, with a state of the attacker's.
    let answer = browser().get(&url).send().await.unwrap();
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let forged = format!("{redirect_uri}?code={}&state=forged", urlencode(&code));
    let (status, page) = follow(forged).await;
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("state") && page.contains("Login failed"),
        "{page}"
    );
    assert_eq!(exit_code(&mut login), 7, "{}", login.logs());
    assert!(
        login.logs().contains("nothing was redeemed"),
        "{}",
        login.logs()
    );
    assert_eq!(idp.stat("authorization_code_grants").await, 0);
    assert_eq!(idp.stat("token_requests").await, 0);
}

/// The consent page's "deny" comes back as `access_denied`: exit 4, a page that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_consent_ends_the_login_with_its_own_exit_code() {
    let idp = idp(&[]);
    let dir = tempdir();
    let path = write_config(
        dir.path(),
        &config(dir.path(), &idp, Some(&idp.refresh_token)),
    );
    let mut login = login(&path, &["--no-browser", "--offline"]);
    let consent = browser()
        .get(printed_url(&mut login))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut form = hidden_fields(&consent);
    assert!(!form.is_empty(), "{consent}");
    form.push(("action".to_owned(), "deny".to_owned()));
    let denied = browser()
        .post(format!("{}/authorize", idp.url))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 303);
    let back = denied.headers()["location"].to_str().unwrap().to_owned();
    let (status, page) = follow(back).await;
    assert_eq!(status, 400);
    assert!(page.contains("denied"), "{page}");
    assert_eq!(exit_code(&mut login), 4, "{}", login.logs());
    assert!(
        login
            .logs()
            .contains("the login was denied (access_denied)")
    );
    assert_eq!(idp.stat("token_requests").await, 0);
}

/// The hidden fields of the dev IdP's consent form.
fn hidden_fields(page: &str) -> Vec<(String, String)> {
    page.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|input| {
            let attr = |name: &str| {
                let value = input.split(&format!("{name}=\"")).nth(1).unwrap();
                let value = value.split('"').next().unwrap();
                value.replace("&amp;", "&").replace("&quot;", "\"")
            };
            (attr("name"), attr("value"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_code_or_a_browser_that_never_returns_times_out() {
    let idp = idp(&["--device-code-ttl", "2s", "--device-interval", "1s"]);
    let dir = tempdir();
    let path = write_config(
        dir.path(),
        &config(dir.path(), &idp, Some(&idp.refresh_token)),
    );
    let mut device = login(&path, &["--device", "--offline"]);
    assert_eq!(exit_code(&mut device), 5, "{}", device.logs());
    assert!(
        device.logs().contains("the device code expired"),
        "{}",
        device.logs()
    );

    let mut browser = login(&path, &["--no-browser", "--offline", "--timeout", "1s"]);
    assert_eq!(exit_code(&mut browser), 5, "{}", browser.logs());
    assert!(
        browser
            .logs()
            .contains("no answer came to http://127.0.0.1:")
    );
    assert_eq!(idp.stat("device_code_grants").await, 0);
    assert_eq!(idp.stat("authorization_code_grants").await, 0);
}

/// `--url` names a broker that is not there: the login stops before the user is asked
/// anything (exit 3); a credential that cannot log in is a usage error (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_cannot_be_delivered_never_starts() {
    let idp = idp(&["--auto-approve"]);
    let dir = tempdir();
    let path = write_config(
        dir.path(),
        &config(dir.path(), &idp, Some(&idp.refresh_token)),
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut unreachable = login(&path, &["--device", "--url", &url]);
    assert_eq!(exit_code(&mut unreachable), 3, "{}", unreachable.logs());
    assert!(unreachable.logs().contains("cannot reach the broker at"));
    assert!(!unreachable.logs().contains("user_code"));

    let token_url_only = format!(
        "[state]\ndir = \"{}/s2\"\n[credentials.x]\ntoken_url = \"{}/token\"\nclient_id = \"dev-client\"\n\
         client_secret = \"dev-secret\"\nrefresh_token = \"r\"\n",
        dir.path().display(),
        idp.url
    );
    let other = dir.path().join("other.toml");
    std::fs::write(&other, token_url_only).unwrap();
    let mut no_endpoint = login(other.to_str().unwrap(), &["--device", "--offline"]);
    assert_eq!(exit_code(&mut no_endpoint), 2, "{}", no_endpoint.logs());
    assert!(
        no_endpoint
            .logs()
            .contains("`device_authorization_endpoint`")
    );
    let mut unknown = Proc::spawn(&["login", "y", "--config", &path, "--offline"], &[]);
    assert_eq!(exit_code(&mut unknown), 2, "{}", unknown.logs());
    assert!(unknown.logs().contains("no credential `y`"));
    assert_eq!(idp.stat("token_requests").await, 0);
    let stats: Value = idp.stats().await;
    assert_eq!(stats["device_code_grants"], 0);
}
