//! The configuration exactly as written: every key optional, unknown keys rejected.
//! `config::validate` turns this into the checked `Config` the rest of the program uses,
//! so no other module ever sees a half-valid value.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::duration::serde_opt;
use crate::secret::SecretSource;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub state: Option<RawState>,
    pub idp: Option<RawIdp>,
    pub credentials: Option<BTreeMap<String, RawCredential>>,
}

/// `listen` takes one address or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<OneOrMany>,
    pub require_header: Option<bool>,
    #[serde(default, with = "serde_opt")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub shutdown_grace: Option<Duration>,
    pub max_waiting_requests: Option<usize>,
    #[serde(default, with = "serde_opt")]
    pub header_timeout: Option<Duration>,
    pub socket_mode: Option<String>,
    pub watch_config: Option<bool>,
    pub allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Option<String>,
    pub backend: Option<String>,
    pub url: Option<String>,
    pub username: Option<SecretSource>,
    pub password: Option<SecretSource>,
    pub key_prefix: Option<String>,
    pub on_store_unavailable: Option<String>,
    #[serde(default, with = "serde_opt")]
    pub lease_duration: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub poll_interval: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub timeout: Option<Duration>,
    pub encryption_key: Option<SecretSource>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdp {
    #[serde(default, with = "serde_opt")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub timeout: Option<Duration>,
    pub max_concurrent: Option<usize>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub grant: Option<String>,
    pub token_url: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretSource>,
    pub client_auth: Option<String>,
    pub refresh_token: Option<SecretSource>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub default: Option<bool>,
    pub required: Option<bool>,
    pub refresh_ratio: Option<f64>,
    pub refresh_jitter: Option<f64>,
    #[serde(default, with = "serde_opt")]
    pub default_lifetime: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub min_refresh_interval: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub backoff_initial: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub backoff_max: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub bootstrap_poll: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub idp_reuse_grace: Option<Duration>,
    pub lost_answer: Option<String>,
    pub allowed_uids: Option<Vec<u32>>,
    pub allowed_gids: Option<Vec<u32>>,
    pub client_keys: Option<Vec<SecretSource>>,
}
