//! `token-broker dev`: the broker and a dev IdP in one process, with a `demo` credential
//! whose access tokens live 20 seconds, so a newcomer sees proactive refresh within a
//! minute. State goes to a fresh private temporary directory removed at exit, beside
//! the config written there for `token-broker login demo`, which the banner shows.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::dev_idp::{self, DevIdp, DevIdpOptions};

/// Access-token lifetime of the demo credential.
const DEMO_TTL: Duration = Duration::from_secs(20);
/// The redirect URI the dev IdP accepts from `login` (loopback: any port, RFC 8252).
const LOGIN_REDIRECT: &str = "http://127.0.0.1/callback";

/// Runs until SIGTERM/SIGINT. The dev IdP listens on a fixed port by default (that of
/// `dev-idp`), so the lines of the README and of the examples work as written.
pub async fn run(listen: &str, idp_listen: &str) -> anyhow::Result<()> {
    let options = DevIdpOptions {
        access_ttl: DEMO_TTL,
        // `token-broker login demo` in a browser: the loopback redirect, any port.
        redirect_uri: vec![LOGIN_REDIRECT.to_owned()],
        ..DevIdpOptions::default()
    };
    let idp = DevIdp::new(options.clone());
    let idp_listener = tokio::net::TcpListener::bind(idp_listen)
        .await
        .with_context(|| {
            format!("the dev IdP cannot listen on {idp_listen}; choose another address with --idp-listen")
        })?;
    let idp_addr = idp_listener.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(dev_idp::serve(
        idp_listener,
        idp.clone(),
        stop.clone().cancelled_owned(),
    ));

    let state = tempfile::Builder::new()
        .prefix("token-broker-dev-")
        .tempdir()
        .context("creating a state directory")?;
    let text = demo_config(listen, &idp_addr.to_string(), &idp, &options, state.path());
    let config = crate::config::load_str(&text)
        .map_err(|p| anyhow::anyhow!("the embedded dev config is invalid:\n{p}"))?;
    // `login` reads the credential's settings from a file, and finds the broker by the
    // socket it names (the same user may log in over it).
    let config_file = state.path().join("dev.toml");
    std::fs::write(&config_file, &text).context("writing the dev config for `login`")?;
    let listeners = crate::daemon::bind_all(&config).await?;
    let broker_url = listeners
        .first()
        .map(|l| format!("http://{}", l.describe()))
        .unwrap_or_default();
    println!(
        "{}",
        banner(&broker_url, &format!("http://{idp_addr}"), &config_file)
    );
    let result = crate::daemon::run(config, listeners, None, crate::signal::terminated()).await;
    stop.cancel();
    result
}

fn demo_config(
    listen: &str,
    idp_addr: &str,
    idp: &DevIdp,
    options: &DevIdpOptions,
    state: &std::path::Path,
) -> String {
    format!(
        r#"
[server]
listen = ["{listen}", "unix:{state}/broker.sock"]
socket_mode = "0600"

[state]
dir = "{state}/state"

[credentials.demo]
token_url = "http://{idp_addr}/token"
authorization_endpoint = "http://{idp_addr}/authorize"
device_authorization_endpoint = "http://{idp_addr}/device_authorization"
client_id = "{client_id}"
client_secret = "{client_secret}"
refresh_token = "{refresh_token}"
"#,
        state = state.display(),
        client_id = options.client_id,
        client_secret = options.client_secret,
        refresh_token = idp.initial_refresh_token(),
    )
}

fn banner(broker: &str, idp: &str, config: &std::path::Path) -> String {
    format!(
        r#"token-broker dev: the broker on {broker}, a dev IdP on {idp}.
The `demo` credential's access tokens live {ttl}s; watch the log refresh them before they expire.

  curl -H 'Token-Broker: 1' {broker}/token/demo
  curl -H "Authorization: Bearer $(curl -s -H 'Token-Broker: 1' '{broker}/token/demo?format=raw')" {idp}/api/whoami
  curl {broker}/v1/credentials
  curl {idp}/stats

Log in as a person, giving `demo` a new refresh-token chain (approve the code at the page it
names; without --device it opens a browser at the dev IdP's consent page):

  token-broker login demo --device --config {config}

Ctrl-C stops both. For development only: the dev IdP is not an identity provider."#,
        ttl = DEMO_TTL.as_secs(),
        config = config.display(),
    )
}
