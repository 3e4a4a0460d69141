//! `token-broker login NAME`: obtains a credential's first refresh token the way a
//! person does, and hands it to the broker, so no refresh token is ever copied by hand.
//!
//! The credential's IdP settings always come from the config file (`--config` or
//! `TOKEN_BROKER_CONFIG`, as for `run`). The login is the authorization code flow with
//! PKCE on a loopback redirect (`code`, `loopback`, `browser`), or with `--device` the
//! device authorization grant (`device`, `qr`); `discovery` finds the endpoints and the
//! scope; `deliver` hands the token response to the running broker or, when none runs,
//! writes it into the configured store. Every request to the IdP goes through `idp`.
//!
//! Boundaries: nothing here prints, logs or writes a token; the only output is what the
//! user must do and the outcome. Each ending has its own exit code (`LoginError`).

mod browser;
mod code;
mod deliver;
mod device;
mod discovery;
mod loopback;
mod pkce;
mod qr;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, Config, CredentialSpec, Grant};
use crate::idp::{IdpClient, Inputs, LoginTokens};

pub use deliver::derived_url;

/// What `token-broker login` was asked (its command-line arguments).
#[derive(clap::Args)]
pub struct Args {
    /// The credential.
    #[arg(value_parser = crate::client::name_arg)]
    pub name: String,
    /// Config file (TOML): the credential's IdP settings, and where its broker listens.
    #[arg(long, env = "TOKEN_BROKER_CONFIG")]
    pub config: PathBuf,
    /// The running broker to hand the new chain to (http://, https:// or unix:/path);
    /// default: TOKEN_BROKER_URL, else where the config's broker listens.
    #[arg(long, value_parser = crate::client::url_arg)]
    pub url: Option<String>,
    /// No broker: write the new chain straight into the configured store.
    #[arg(long, conflicts_with = "url")]
    pub offline: bool,
    /// A file holding an admin key (server.admin_keys) to send; or set TOKEN_BROKER_KEY.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The device flow: a code to enter on any device (SSH sessions, pods).
    #[arg(long)]
    pub device: bool,
    /// Print the URL instead of opening a browser.
    #[arg(long, conflicts_with = "device")]
    pub no_browser: bool,
    /// How long to wait for the browser to come back (e.g. 5m).
    #[arg(long, default_value = "5m", value_parser = crate::duration::parse)]
    pub timeout: Duration,
}

/// Why a login ended without a new chain; each has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The broker or the store refused the new chain.
    #[error("{0}")]
    Refused(String),
    /// A usage or config problem, found before the IdP was asked anything.
    #[error("{0}")]
    Usage(String),
    /// The broker named by `--url` or `TOKEN_BROKER_URL` does not answer.
    #[error("{0}")]
    Unreachable(String),
    /// The user said no.
    #[error("the login was denied (access_denied)")]
    Denied,
    /// The user took too long: the device code expired or no redirect came in time.
    #[error("{0}")]
    TimedOut(String),
    /// The IdP refused or failed.
    #[error("{0}")]
    Idp(String),
    /// The redirect did not carry this login's `state`: a forged or stale answer.
    #[error(
        "the redirect's state is not this login's: a forged or stale answer, so nothing was redeemed"
    )]
    WrongState,
}

impl LoginError {
    /// The documented exit code (README, "Log in").
    pub fn exit_code(&self) -> u8 {
        match self {
            LoginError::Refused(_) => 1,
            LoginError::Usage(_) => 2,
            LoginError::Unreachable(_) => 3,
            LoginError::Denied => 4,
            LoginError::TimedOut(_) => 5,
            LoginError::Idp(_) => 6,
            LoginError::WrongState => 7,
        }
    }
}

/// Runs the login; prints the outcome and maps it to the exit code.
pub async fn run(args: Args) -> ExitCode {
    match login(&args).await {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("token-broker: login {}: {e}", args.name);
            ExitCode::from(e.exit_code())
        }
    }
}

async fn login(args: &Args) -> Result<String, LoginError> {
    let config = config::load(&args.config).map_err(|p| {
        LoginError::Usage(format!("invalid config {}:\n{p}", args.config.display()))
    })?;
    let spec = credential(&config, &args.name)?;
    let target = deliver::Target::choose(
        args.url.clone(),
        args.offline,
        args.key_file.as_deref(),
        &config,
    )?
    .check(&spec.name, &args.config)
    .await?;
    let inputs = Inputs::read(spec).map_err(|e| LoginError::Usage(e.to_string()))?;
    let idp = IdpClient::new(&config.idp).map_err(|e| LoginError::Usage(e.to_string()))?;
    let endpoints = discovery::endpoints(&idp, spec).await?;
    let deliver =
        async |tokens: &LoginTokens| hand_over(&target, &config, &spec.name, tokens).await;
    if args.device {
        let endpoint = endpoints.device_authorization(&spec.name)?;
        let scope = endpoints.scope.as_deref();
        let tokens = device::login(&idp, spec, &inputs, endpoint, &endpoints.token, scope).await?;
        return deliver(&tokens).await;
    }
    let options = code::Options {
        open_browser: !args.no_browser,
        timeout: args.timeout,
    };
    let (tokens, reply) = code::login(&idp, spec, &inputs, &endpoints, &options).await?;
    let outcome = deliver(&tokens).await;
    let page = match &outcome {
        Ok(_) => Ok(format!("token-broker now holds credential {}.", spec.name)),
        Err(e) => Err(e),
    };
    reply.finish(page).await;
    outcome
}

/// Delivers a login's tokens; the message to print once the chain is held.
async fn hand_over(
    target: &deliver::Target,
    config: &Config,
    name: &str,
    tokens: &LoginTokens,
) -> Result<String, LoginError> {
    if tokens.response.refresh_token.is_none() {
        return Err(LoginError::Idp(
            "the IdP answered without a refresh token; ask for one with login.scope \
             (many IdPs need `offline_access`)"
                .to_owned(),
        ));
    }
    let delivered = target.deliver(config, name, &tokens.body).await?;
    if let Some(why) = delivered.refresh_error {
        return Ok(format!(
            "logged in: {} holds the new chain of credential {name}; {why}",
            delivered.into
        ));
    }
    Ok(format!(
        "logged in, credential {name} now valid, expires in {} (held by {})",
        human(Duration::from_secs(delivered.expires_in)),
        delivered.into
    ))
}

/// The credential, if it is one a login can start.
fn credential<'a>(config: &'a Config, name: &str) -> Result<&'a CredentialSpec, LoginError> {
    let spec = config
        .credentials
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.credentials.iter().map(|c| c.name.as_str()).collect();
            LoginError::Usage(format!(
                "no credential `{name}` in the config (it has: {})",
                names.join(", ")
            ))
        })?;
    if !matches!(spec.grant, Grant::RefreshToken) {
        return Err(LoginError::Usage(format!(
            "credentials.{name} has grant = \"{}\"; only refresh_token credentials log in",
            spec.grant.as_str()
        )));
    }
    Ok(spec)
}

/// A duration as people read it: `59s`, `10m`, `1h 5m`.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        _ if secs % 3600 / 60 == 0 => format!("{}h", secs / 3600),
        _ => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_its_own_exit_code() {
        let endings = [
            LoginError::Refused(String::new()),
            LoginError::Usage(String::new()),
            LoginError::Unreachable(String::new()),
            LoginError::Denied,
            LoginError::TimedOut(String::new()),
            LoginError::Idp(String::new()),
            LoginError::WrongState,
        ];
        let mut codes: Vec<u8> = endings.iter().map(LoginError::exit_code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn durations_read_like_people_write_them() {
        let h = |s| human(Duration::from_secs(s));
        assert_eq!(
            [h(0), h(59), h(60), h(90), h(600), h(3600), h(3900)],
            ["0s", "59s", "1m", "1m 30s", "10m", "1h", "1h 5m"]
        );
    }
}
