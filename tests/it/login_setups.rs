//! Where `token-broker login` runs: the broker's admin rule (a refusal ends the login
//! before the user is asked anything), a login that lifts `reauth_required`, the line
//! `token-broker dev` prints, and the browser `login` opens by itself.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::login_cli::{browser, config, exit_code, idp, login, write_config};

/// The broker refuses a login from who is not an admin: the login ends (exit 1) before
/// the user is asked anything. Then an admin's device login puts a credential whose
/// chain the IdP revoked (`reauth_required`) back to work, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_logs_in_and_a_login_lifts_reauth_required() {
    let idp = idp(&["--auto-approve", "--device-interval", "1s"]);
    let dir = tempdir();
    let text = config(dir.path(), &idp, Some(&idp.refresh_token));
    let strangers = text.replace("request_timeout", "admin_uids = [12345]\nrequest_timeout");
    let broker = Broker::start(dir.path(), &strangers);
    broker.ready().await;
    let path = dir.path().join("config.toml");
    let socket = format!("unix:{}/broker.sock", dir.path().display());
    let mut refused = login(path.to_str().unwrap(), &["--device", "--url", &socket]);
    assert_eq!(exit_code(&mut refused), 1, "{}", refused.logs());
    assert!(refused.logs().contains("forbidden"), "{}", refused.logs());
    assert!(
        !refused.logs().contains("enter the code"),
        "{}",
        refused.logs()
    );
    assert_eq!(idp.stat("device_code_grants").await, 0);
    drop(broker);

    let broker = Broker::start(dir.path(), &text);
    let before = broker.access_token("x").await;
    idp.admin("revoke", serde_json::json!({})).await;
    let response = broker.refresh("x", Some(&before)).await;
    assert_eq!(response.status(), 503, "{}", response.text().await.unwrap());
    assert_eq!(
        broker.status().await["credentials"][0]["state"],
        "reauth_required"
    );
    let mut admin = login(path.to_str().unwrap(), &["--device", "--url", &socket]);
    assert_eq!(exit_code(&mut admin), 0, "{}", admin.logs());
    let after = broker.access_token("x").await;
    assert_ne!(after, before);
    assert_eq!(idp.whoami(&after).await, 200);
}

/// The line `token-broker dev` prints to try a login works as printed: the device flow
/// against its dev IdP, approved at the verification page, into the running broker
/// (over the socket the dev config names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_line_of_the_dev_banner_works_as_printed() {
    let mut dev = Proc::spawn(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--idp-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let line = dev.wait_for("the login line", |line| {
        line.trim()
            .starts_with("token-broker login ")
            .then(|| line.trim().to_owned())
    });
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    let mut login = Proc::spawn(&args, &[]);
    let user_code = login.wait_for("the user code", |line| {
        let code = line.trim();
        let shaped = code.len() == 9 && code.as_bytes()[4] == b'-';
        shaped.then(|| code.to_owned())
    });
    let page = login.wait_for("the verification URI", |line| {
        let rest = line.strip_prefix("To log in, open ")?;
        Some(rest.split_whitespace().next()?.to_owned())
    });
    let approved = browser()
        .post(&page)
        .form(&[("user_code", user_code.as_str()), ("action", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);
    assert_eq!(exit_code(&mut login), 0, "{}", login.logs());
    let output = login.logs();
    assert!(
        output.contains("logged in, credential demo now valid"),
        "{output}"
    );
    assert!(output.contains("held by the broker at unix:"), "{output}");
    assert!(dev.terminate().success());
}

/// Without `--no-browser`, `login` opens the URL with `xdg-open`. Here that is a real
/// headless browser driven over its DevTools pipe (`browser_approve.py`): it approves
/// on the dev IdP's consent page, follows the redirect to the loopback listener and
/// ends on the login's page. With no browser on the machine, curl follows the
/// redirects of an auto-approving IdP instead, and the consent page is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_opens_the_browser_which_approves_and_ends_on_the_login_page() {
    let program = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|name| which(name) && which("python3"));
    let idp = idp(if program.is_some() {
        &[]
    } else {
        &["--auto-approve"]
    });
    let dir = tempdir();
    let path = write_config(dir.path(), &config(dir.path(), &idp, None));
    let page = dir.path().join("page.txt");
    let open = match program {
        Some(_) => {
            let driver = dir.path().join("browser_approve.py");
            std::fs::write(&driver, include_str!("browser_approve.py")).unwrap();
            format!("python3 '{}' \"$1\" '{}'", driver.display(), page.display())
        }
        None => {
            eprintln!(
                "SKIPPED the consent page in a real browser: no chromium on this machine; curl follows an auto-approved login instead"
            );
            format!("curl -sL \"$1\" > '{}'", page.display())
        }
    };
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let opener = bin_dir.join("xdg-open");
    std::fs::write(&opener, format!("#!/bin/sh\n({open} >/dev/null 2>&1 &)\n")).unwrap();
    std::fs::set_permissions(&opener, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let search = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let env = [
        ("PATH", search.as_str()),
        ("BROWSER_PROGRAM", program.unwrap_or("")),
    ];
    let mut login = Proc::spawn(&["login", "x", "--config", &path, "--offline"], &env);
    assert_eq!(exit_code(&mut login), 0, "{}", login.logs());
    assert!(
        login.logs().contains("Opening a browser"),
        "{}",
        login.logs()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = std::fs::read_to_string(&page).unwrap_or_default();
        if shown.contains("Logged in") {
            assert!(
                shown.contains("token-broker now holds credential x"),
                "{shown}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the browser showed: {shown}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(idp.stat("authorization_code_grants").await, 1);
}

fn which(program: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|dir| Path::new(dir).join(program).is_file())
}
