//! The configuration exactly as written: every key optional, unknown keys rejected.
//! `config::validate` turns this into the checked `Config` the rest of the program uses,
//! so no other module ever sees a half-valid value.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::lenient;
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
    pub proxies: Option<BTreeMap<String, RawProxy>>,
    pub emulate: Option<super::emulate::RawEmulate>,
}

/// `listen` takes one address or a list of them.
#[derive(Debug)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Hand-written so a mistake names the shapes allowed, not serde's "untagged enum".
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("text in quotes or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut many = Vec::new();
                while let Some(one) = seq.next_element::<String>()? {
                    many.push(one);
                }
                Ok(OneOrMany::Many(many))
            }
        }
        d.deserialize_any(Shape)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<OneOrMany>,
    pub ops_listen: Option<OneOrMany>,
    #[serde(default, with = "lenient")]
    pub require_header: Option<bool>,
    #[serde(default, with = "serde_opt")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub shutdown_grace: Option<Duration>,
    #[serde(default, with = "lenient")]
    pub max_waiting_requests: Option<usize>,
    #[serde(default, with = "serde_opt")]
    pub header_timeout: Option<Duration>,
    pub socket_mode: Option<String>,
    #[serde(default, with = "lenient")]
    pub watch_config: Option<bool>,
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default, with = "lenient")]
    pub max_watchers: Option<usize>,
    #[serde(default, with = "lenient")]
    pub max_connections: Option<usize>,
    pub admin_uids: Option<Vec<u32>>,
    pub admin_keys: Option<Vec<SecretSource>>,
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
    pub previous_encryption_keys: Option<Vec<SecretSource>>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdp {
    #[serde(default, with = "serde_opt")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "serde_opt")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "lenient")]
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
    #[serde(default, with = "lenient")]
    pub default: Option<bool>,
    #[serde(default, with = "lenient")]
    pub required: Option<bool>,
    #[serde(default, with = "lenient")]
    pub refresh_ratio: Option<f64>,
    #[serde(default, with = "lenient")]
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
    // Grants beyond refresh_token and client_credentials (checked in validate/grant.rs).
    pub subject_token: Option<SecretSource>,
    pub subject_token_type: Option<String>,
    pub actor_token: Option<SecretSource>,
    pub actor_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub resource: Option<OneOrMany>,
    pub assertion: Option<SecretSource>,
    pub assertion_issuer: Option<String>,
    pub assertion_subject: Option<String>,
    pub assertion_audience: Option<String>,
    pub assertion_claims: Option<BTreeMap<String, String>>,
    #[serde(default, with = "serde_opt")]
    pub assertion_lifetime: Option<Duration>,
    pub private_key: Option<SecretSource>,
    pub signing_alg: Option<String>,
    pub key_id: Option<String>,
    pub exec: Option<RawExec>,
    pub sinks: Option<Vec<RawSink>>,
    // DPoP (checked in validate/dpop.rs).
    #[serde(default, with = "lenient")]
    pub dpop: Option<bool>,
    pub dpop_key: Option<SecretSource>,
    // What `token-broker login` uses (checked in validate/login.rs).
    pub authorization_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub login: Option<RawLogin>,
}

/// `credentials.NAME.login`: how `token-broker login` asks for the first refresh token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    pub scope: Option<String>,
    #[serde(default, with = "lenient")]
    pub redirect_port: Option<u16>,
    pub redirect_path: Option<String>,
}

/// `credentials.NAME.exec`: the command of `grant = "exec"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, SecretSource>>,
    #[serde(default, with = "serde_opt")]
    pub timeout: Option<Duration>,
    pub format: Option<String>,
}

/// `[[credentials.NAME.sinks]]`: a file the token is written to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub path: Option<String>,
    pub format: Option<String>,
    pub mode: Option<String>,
}

/// `[proxies.NAME]`: a header-injecting proxy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub credential: Option<String>,
    pub ca_file: Option<String>,
    #[serde(default, with = "serde_opt")]
    pub response_timeout: Option<Duration>,
}
