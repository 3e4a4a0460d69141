//! Where a login's new chain goes: to the running broker (`POST
//! /v1/credentials/NAME/login`, an admin request), or straight into the configured store
//! when no broker runs. The token response is handed over as received and is never
//! printed or written anywhere else.
//!
//! The broker is asked before the user is (an empty body it must refuse as malformed),
//! so a login that could not be delivered (no such broker, no admin right) fails before
//! anyone opens a browser.

use std::path::Path;

use secrecy::SecretString;

use crate::client::{self, ClientError};
use crate::config::{Config, Listen};

use super::LoginError;

/// Where the chain will be delivered.
pub enum Target {
    /// A running broker at `url`; `derived` when the URL came from the config rather
    /// than from the user, in which case a broker that does not answer means "none runs".
    Broker {
        url: String,
        key: Option<SecretString>,
        derived: bool,
    },
    /// The configured store, written directly (`broker::login::adopt_offline`).
    Store,
}

/// What the delivery reported.
pub struct Delivered {
    pub expires_in: u64,
    /// Where the chain went, for the final message.
    pub into: String,
    /// The broker adopted the chain but its first refresh failed (it retries).
    pub refresh_error: Option<String>,
}

impl Target {
    /// `--offline`, `--url`, `TOKEN_BROKER_URL`, or the broker the config describes.
    pub fn choose(
        url: Option<String>,
        offline: bool,
        key_file: Option<&Path>,
        config: &Config,
    ) -> Result<Target, LoginError> {
        if offline {
            return Ok(Target::Store);
        }
        let key = client::read_key(key_file).map_err(LoginError::Usage)?;
        let explicit = url.or_else(|| {
            std::env::var("TOKEN_BROKER_URL")
                .ok()
                .filter(|u| !u.is_empty())
        });
        if let Some(url) = explicit {
            client::url_arg(&url).map_err(LoginError::Usage)?;
            return Ok(Target::Broker {
                url,
                key,
                derived: false,
            });
        }
        Ok(match derived_url(config) {
            Some(url) => Target::Broker {
                url,
                key,
                derived: true,
            },
            None => Target::Store,
        })
    }

    /// Checks that the broker would take a login for `name`; a derived broker that does
    /// not answer turns the target into the store.
    pub async fn check(self, name: &str, config_path: &Path) -> Result<Target, LoginError> {
        let Target::Broker { url, key, derived } = self else {
            return Ok(Target::Store);
        };
        match client::post_login(&url, key.as_ref(), name, b"{}").await {
            Err(ClientError::Broker { status: 400, .. }) | Ok(_) => {
                Ok(Target::Broker { url, key, derived })
            }
            Err(ClientError::Unreachable(why)) if derived => {
                println!(
                    "No broker answers at {url} ({why}); the new chain will go straight into the \
                     store of {}.",
                    config_path.display()
                );
                Ok(Target::Store)
            }
            Err(e) => Err(refusal(&url, e)),
        }
    }

    /// Hands the token response `body` to the broker or writes it into the store.
    pub async fn deliver(
        &self,
        config: &Config,
        name: &str,
        body: &[u8],
    ) -> Result<Delivered, LoginError> {
        match self {
            Target::Store => offline(config, name, body).await,
            Target::Broker { url, key, derived } => {
                match client::post_login(url, key.as_ref(), name, body).await {
                    Ok(answer) => Ok(Delivered {
                        expires_in: answer.expires_in,
                        into: format!("the broker at {url}"),
                        refresh_error: answer.refresh_error,
                    }),
                    // It stopped since the check: the store takes the chain instead.
                    Err(ClientError::Unreachable(_)) if *derived => {
                        offline(config, name, body).await
                    }
                    Err(e) => Err(refusal(url, e)),
                }
            }
        }
    }
}

async fn offline(config: &Config, name: &str, body: &[u8]) -> Result<Delivered, LoginError> {
    use crate::broker::login::{LoginError as Adopt, adopt_offline};
    match adopt_offline(config, name, body).await {
        Ok(adopted) => Ok(Delivered {
            expires_in: adopted.expires_in,
            into: "the store".to_owned(),
            refresh_error: None,
        }),
        Err(e @ (Adopt::UnknownCredential(_) | Adopt::NotRefreshGrant { .. })) => {
            Err(LoginError::Usage(e.to_string()))
        }
        Err(e) => Err(LoginError::Refused(format!(
            "the store did not take the new chain: {e}"
        ))),
    }
}

fn refusal(url: &str, error: ClientError) -> LoginError {
    match error {
        ClientError::Unreachable(why) => LoginError::Unreachable(format!(
            "cannot reach the broker at {url}: {why}; start it, pass the right --url, or use \
             --offline to write the new chain into the configured store"
        )),
        ClientError::Broker { error, message, .. } => LoginError::Refused(format!(
            "the broker at {url} refused the login: {error}: {message}"
        )),
    }
}

/// The broker this config runs, as a client reaches it: its first unix socket (the
/// peer's uid is its admin right), else its first TCP address with a wildcard IP
/// replaced by loopback. `None` when it listens on a port chosen at start (0).
pub fn derived_url(config: &Config) -> Option<String> {
    let listen = &config.server.listen;
    if let Some(path) = listen.iter().find_map(|l| match l {
        Listen::Unix(path) => Some(path),
        Listen::Tcp(_) => None,
    }) {
        return Some(format!("unix:{}", path.display()));
    }
    listen.iter().find_map(|l| match l {
        Listen::Tcp(addr) if addr.port() != 0 => {
            let ip = match addr.ip() {
                std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                    std::net::Ipv4Addr::LOCALHOST.into()
                }
                std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                    std::net::Ipv6Addr::LOCALHOST.into()
                }
                ip => ip,
            };
            Some(format!(
                "http://{}",
                std::net::SocketAddr::new(ip, addr.port())
            ))
        }
        _ => None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn url_for(listen: &str) -> Option<String> {
        let toml = format!(
            "[server]\nlisten = {listen}\n[credentials.x]\ntoken_url = \"https://idp.example/t\"\n\
             client_id = \"c\"\nrefresh_token = \"r\"\n"
        );
        derived_url(&crate::config::load_str(&toml).unwrap())
    }

    #[test]
    fn the_broker_is_found_where_the_config_listens() {
        assert_eq!(
            url_for("\"127.0.0.1:8656\"").as_deref(),
            Some("http://127.0.0.1:8656")
        );
        assert_eq!(
            url_for("\"0.0.0.0:9000\"").as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            url_for("\"[::]:9000\"").as_deref(),
            Some("http://[::1]:9000")
        );
        assert_eq!(
            url_for("[\"127.0.0.1:8656\", \"unix:/run/tb/broker.sock\"]").as_deref(),
            Some("unix:/run/tb/broker.sock"),
            "the socket first: the uid is the admin right"
        );
        assert_eq!(url_for("\"127.0.0.1:0\""), None);
    }
}
