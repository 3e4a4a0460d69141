//! Client authentication end to end: `private_key_jwt` with RSA and EC keys on every
//! grant, an unknown key refused until the key file changes, public clients, and
//! `check-config --check-secrets` over the new secret sources.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::failures::eventually;
use crate::grants::{fresh, keypair, replace, whoami};
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_with_rsa_and_ec_keys_authenticates_every_grant() {
    let dir = tempdir();
    for (kind, alg) in [("rsa", "RS256"), ("ec-sec1", "ES256")] {
        let (private, public) = keypair(dir.path(), kind, kind);
        let idp = Idp::start(&["--client-public-key", public.to_str().unwrap()]);
        let state = tempdir();
        let bootstrap = state.path().join("bootstrap");
        std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
        let auth = format!(
            "client_id = \"dev-client\"\nclient_auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{}\" }}\nsigning_alg = \"{alg}\"\nkey_id = \"k1\"\n",
            private.display()
        );
        let config = base_config(state.path())
            + &format!(
                "[credentials.machine]\ngrant = \"client_credentials\"\ntoken_url = \"{url}/token\"\n{auth}{each}\n\
                 [credentials.user]\ntoken_url = \"{url}/token\"\nrefresh_token = {{ file = \"{rt}\" }}\n{auth}{each}",
                // Every `min_ttl` request below refreshes: no interval between them.
                each = "min_refresh_interval = \"0s\"\n",
                url = idp.url,
                rt = bootstrap.display()
            );
        let broker = Broker::start(state.path(), &config);
        broker.ready().await;
        for name in ["machine", "user", "machine", "user"] {
            let response = fresh(&broker, name).await;
            assert_eq!(response.status(), 200, "{kind} {name}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                idp.whoami(body["access_token"].as_str().unwrap()).await,
                200
            );
        }
        // Two start-up fetches and four more: each with a fresh assertion (new jti).
        assert_eq!(idp.stat("client_assertions").await, 6, "{kind}");
        assert_eq!(idp.stat("assertion_replays").await, 0);
        assert_eq!(idp.stat("refresh_grants").await, 3);
        assert_eq!(idp.stat("client_credentials_grants").await, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_idp_does_not_know_is_reauth_required_until_the_key_file_changes() {
    let dir = tempdir();
    let (registered, public) = keypair(dir.path(), "registered", "ec");
    let (other, _) = keypair(dir.path(), "other", "ec");
    let idp = Idp::start(&["--client-public-key", public.to_str().unwrap()]);
    let key_file = dir.path().join("client.key");
    std::fs::copy(&other, &key_file).unwrap();
    let config = base_config(dir.path())
        + &format!(
            "[credentials.x]\ngrant = \"client_credentials\"\ntoken_url = \"{url}/token\"\nclient_id = \"dev-client\"\n\
             client_auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{key}\" }}\nbootstrap_poll = \"200ms\"\n",
            url = idp.url,
            key = key_file.display()
        );
    let broker = Broker::start(dir.path(), &config);
    let response = broker.get("/token/x").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "reauth_required", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("invalid_client") && message.contains("does not verify"),
        "{message}"
    );
    let calls = idp.stat("token_requests").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        idp.stat("token_requests").await,
        calls,
        "no retries with the same key"
    );

    // The operator installs the registered key: the broker notices and resumes.
    replace(&key_file, &std::fs::read_to_string(&registered).unwrap());
    eventually("the credential to resume", || async {
        broker.get("/token/x").await.status() == 200
    })
    .await;
    let logs = broker.proc.logs();
    let pem = std::fs::read_to_string(&registered).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "the private key leaked into the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_refreshes_with_only_its_client_id() {
    let idp = Idp::start(&["--public-client-id", "cli-app"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path())
        + &format!(
            "[credentials.x]\ntoken_url = \"{}/token\"\nclient_id = \"cli-app\"\nclient_auth = \"none\"\nrefresh_token = {{ file = \"{}\" }}\n",
            idp.url,
            bootstrap.display()
        );
    let broker = Broker::start(dir.path(), &config);
    let token = broker.access_token("x").await;
    assert_eq!(whoami(&idp, &token).await["client_id"], "cli-app");
    let next: Value = fresh(&broker, "x").await.json().await.unwrap();
    assert_ne!(next["access_token"], token.as_str());
    assert_eq!(idp.stat("refresh_grants").await, 2);
    assert_eq!(idp.stat("invalid_client").await, 0);
}

#[test]
fn check_secrets_reads_every_new_source_and_parses_private_keys() {
    let dir = tempdir();
    let (ec_key, _) = keypair(dir.path(), "ec", "ec");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[state]
dir = "{state}"

[credentials.signed]
grant = "client_credentials"
token_url = "https://idp.example/token"
client_id = "c"
client_auth = "private_key_jwt"
private_key = {{ file = "{key}" }}
signing_alg = "RS256"

[credentials.exchange]
grant = "token_exchange"
token_url = "https://idp.example/token"
client_id = "c"
subject_token = {{ file = "{missing}" }}

[credentials.command]
grant = "exec"
exec.command = ["/bin/true"]
exec.env = {{ TOKEN = {{ env = "TB_TEST_SURELY_UNSET" }} }}
"#,
            state = dir.path().join("state").display(),
            key = ec_key.display(),
            missing = dir.path().join("missing").display(),
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(bin())
            .args(["check-config", "--config", config.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(run(&[]).status.success(), "the config itself is valid");
    let output = run(&["--check-secrets"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for problem in [
        "credentials.signed.private_key: signing_alg = \"RS256\" needs an RSA key",
        "credentials.exchange.subject_token: cannot read file",
        "credentials.command.exec.env.TOKEN: environment variable TB_TEST_SURELY_UNSET",
    ] {
        assert!(
            stderr.contains(problem),
            "{problem} missing from:\n{stderr}"
        );
    }
}
