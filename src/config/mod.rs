//! Loading and validating the configuration.
//!
//! Layering (lowest first): built-in defaults, the TOML file, then environment variables
//! `TOKEN_BROKER__SECTION__KEY` (`load`). The raw shape lives in `raw`; `validate` checks every key
//! and returns either a `Config` whose values are all usable, or every problem at once,
//! each naming its key, so `check-config` can report them together.
//!
//! Boundaries: data and its validation, using only `secret` and `duration` of this
//! crate; what needs the machine that will run the broker (reading secrets, parsing keys
//! and certificates) is `preflight`'s, through the modules that use those values.

mod delivery;
mod emulate;
mod every;
mod grant;
mod load;
mod login;
mod raw;
mod state;
mod validate;

#[cfg(test)]
mod checks_tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;

pub use delivery::*;
pub use emulate::*;
pub use grant::*;
pub use load::{Source, lenient};
pub use login::*;
pub use raw::RawConfig;
pub use validate::{checked_url, parse_listen, valid_name, validate};

use crate::secret::SecretSource;

/// Default address of the HTTP API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8656";

/// One problem found in a config: the dotted key and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem with a config, reported together.
#[derive(Debug, Clone)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub state: StateConfig,
    pub idp: IdpConfig,
    /// Sorted by name.
    pub credentials: Vec<CredentialSpec>,
    /// Header-injecting proxies, sorted by name.
    pub proxies: Vec<ProxySpec>,
    /// Token protocols of SDKs and tools the broker also answers.
    pub emulate: EmulateConfig,
}

/// Where and how the HTTP API listens.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// One or more listeners (TCP addresses or `unix:` paths).
    pub listen: Vec<Listen>,
    /// Listeners that serve only health, readiness, metrics and status (never a token),
    /// for probes and scrapers that must reach the pod while the token API stays on
    /// loopback.
    pub ops_listen: Vec<Listen>,
    /// Token endpoints demand `Token-Broker: 1` (request-forgery protection).
    pub require_header: bool,
    /// How long a request may wait for a refresh before it gets 503.
    pub request_timeout: Duration,
    /// How long shutdown waits for refreshes in flight.
    pub shutdown_grace: Duration,
    /// Cap on requests waiting for a refresh at once; more get 503 instead of queueing.
    pub max_waiting_requests: usize,
    /// Time a client has to send request headers; also the idle keep-alive limit.
    pub header_timeout: Duration,
    /// Reload when the config file changes (SIGHUP always reloads).
    pub watch_config: bool,
    /// Mode of unix socket files (default 0660: owner and group).
    pub socket_mode: u32,
    /// Host names (besides loopback and the listen addresses) a request may name in
    /// `Host`; others get 403 `bad_host` (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// Cap on long polls (`?wait=`) and event streams open at once.
    pub max_watchers: usize,
    /// Cap on open connections across all listeners; `None`: derived from the
    /// descriptor limit at start (`limits::default_max_connections`).
    pub max_connections: Option<usize>,
    /// Unix-socket peers (by uid) allowed the admin actions (`POST
    /// /v1/credentials/NAME/login`); default: the broker's own uid.
    pub admin_uids: Vec<u32>,
    /// Keys that allow the admin actions in `Token-Broker-Key`, over any listener; a
    /// client key is not one of them.
    pub admin_keys: Vec<SecretSource>,
}

/// A listener address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Where rotated refresh tokens are persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// The file backend's directory; unused with the redis backend.
    pub dir: PathBuf,
    /// The shared backend, when `backend = "redis"`; `None` means the file store in `dir`.
    pub redis: Option<RedisConfig>,
    /// File backend: the keys that seal the state files at rest, when set.
    pub file_keys: Option<StateKeys>,
}

/// The file backend's sealing keys: `encryption_key` seals every write; files sealed
/// with one of `previous` still open, and are sealed again with `key` at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct StateKeys {
    pub key: SecretSource,
    pub previous: Vec<SecretSource>,
}

/// The shared backend: several brokers keep one state per credential in Redis and
/// refresh it under a lease, so a fleet makes one refresh per rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://HOST:PORT[/DB]` or `rediss://...` (TLS); never with a password in it.
    pub url: String,
    /// The Redis ACL user, if not the default user.
    pub username: Option<SecretSource>,
    pub password: Option<SecretSource>,
    /// Prepended to every key and channel, so several fleets can share one Redis.
    pub key_prefix: String,
    /// Whether a broker refreshes without the lease when Redis cannot be reached.
    pub on_unavailable: OnStoreUnavailable,
    /// How long a refresh lease lives unless renewed: how soon another broker takes
    /// over from one that died mid-refresh.
    pub lease_duration: Duration,
    /// How often each broker compares its versions with Redis, in case it missed a
    /// change notice.
    pub poll_interval: Duration,
    /// Limit for connecting and for each command.
    pub timeout: Duration,
    /// 32-byte key that encrypts records at rest (ChaCha20-Poly1305).
    pub encryption_key: Option<SecretSource>,
    /// PEM CA certificates that `rediss://` trusts instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
}

/// What a broker does when a refresh is due and Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreUnavailable {
    /// Keep serving valid tokens; refresh only under the lease, once Redis is back.
    Wait,
    /// Refresh on its own (single flight within this broker only) and write the chain
    /// back when Redis returns. Safe only for IdPs that do not rotate refresh tokens or
    /// that have a reuse grace: other brokers may present the same refresh token.
    RefreshLocally,
}

/// Settings for every call to an identity provider.
#[derive(Debug, Clone, PartialEq)]
pub struct IdpConfig {
    pub connect_timeout: Duration,
    /// Total time for one token request, including reading the answer.
    pub timeout: Duration,
    /// Global cap on concurrent IdP calls, so a start with thousands of credentials
    /// does not open thousands of connections at once.
    pub max_concurrent: usize,
    /// Extra CA certificates (PEM) trusted besides the built-in roots: a private CA.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mutual TLS to the IdP.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Where the token endpoint is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    TokenUrl(EndpointUrl),
    /// OIDC discovery: `{issuer}/.well-known/openid-configuration`, fetched once.
    Issuer(Url),
}

/// A token endpoint: the parsed URL requests go to, and the text it was written as
/// (in the config or the discovery document). Signed assertions name the text as
/// their `aud`, because IdPs compare it as a string and parsing may add a `/` or
/// lower-case the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    pub url: Url,
    pub text: String,
}

/// One credential, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialSpec {
    pub name: String,
    pub grant: Grant,
    /// The token endpoint; `None` only for `Grant::Exec`, which asks no IdP.
    pub endpoint: Option<Endpoint>,
    pub client_id: String,
    pub client_secret: Option<SecretSource>,
    pub client_auth: ClientAuth,
    /// For `private_key_jwt` and for `jwt_bearer` assertions the broker signs.
    pub private_key: Option<PrivateKey>,
    /// The bootstrap refresh token; rotated successors live in the state store.
    pub refresh_token: Option<SecretSource>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    /// Served by `GET /token` when several credentials exist.
    pub default: bool,
    /// Gates `/readyz`.
    pub required: bool,
    /// Fraction of the lifetime after which the proactive refresh runs.
    pub refresh_ratio: f64,
    /// Up to this fraction of the lifetime is taken off the refresh point at random, so
    /// credentials issued together do not refresh together.
    pub refresh_jitter: f64,
    /// Lifetime assumed when the IdP gives neither `expires_in` nor a JWT `exp`.
    pub default_lifetime: Duration,
    /// A forced refresh within this long of the last refresh returns the current token.
    pub min_refresh_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often a credential awaiting re-authentication re-reads its bootstrap source.
    pub bootstrap_poll: Duration,
    /// How long the IdP accepts a just-used refresh token again (its "reuse interval"
    /// or "grace period"); zero when it has none.
    pub idp_reuse_grace: Duration,
    /// What to do when a refresh was sent but its answer never came.
    pub lost_answer: LostAnswer,
    /// Who may fetch this credential; open to every local client when empty.
    pub access: Access,
    /// Files the token is written to on every new version.
    pub sinks: Vec<SinkSpec>,
    /// How `token-broker login` obtains a first refresh token (`refresh_token` only).
    pub login: LoginSpec,
    /// `dpop = true`: tokens bound to a key the broker holds (RFC 9449).
    pub dpop: Option<DpopSpec>,
}

/// A credential's DPoP settings: whose key signs its proofs.
#[derive(Debug, Clone, PartialEq)]
pub struct DpopSpec {
    /// `dpop_key`: a PEM private key (P-256) given by the operator; `None`: the broker
    /// makes one on first use and keeps it in the state store.
    pub key: Option<SecretSource>,
}

/// Per-credential client access control. A request is allowed when the credential has
/// no rules, when it comes over a unix socket from an allowed uid or gid, or when it
/// carries one of the client keys in `Token-Broker-Key`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Access {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub keys: Vec<SecretSource>,
}

impl Access {
    /// Whether any rule is set.
    pub fn is_restricted(&self) -> bool {
        !(self.uids.is_empty() && self.gids.is_empty() && self.keys.is_empty())
    }
}

/// The policy for a refresh whose answer was lost (timeout or reset after sending, or a
/// crash while it was out): the IdP may have rotated the token, so resending it is only
/// safe while the IdP's reuse grace lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostAnswer {
    /// Resend only within `idp_reuse_grace` of the first send; after that, stop and
    /// wait for a new bootstrap token (`reauth_required`). With no grace: never resend.
    RetryWithinGrace,
    /// Always resend (for IdPs that do not rotate or do not detect reuse).
    Retry,
}

/// A config from TOML text plus the environment (used by `dev`, which embeds its config).
pub fn load_str(toml: &str) -> Result<Config, Problems> {
    load::checked(toml.to_owned(), false)
}

/// Loads and validates a config file.
pub fn load(path: &Path) -> Result<Config, Problems> {
    Source::read(path)?.config()
}

/// The listen addresses a config table names explicitly, if it names them plainly: the
/// daemon binds these before it checks the rest of the config, and keeps them only if
/// the checked config names the same (see `daemon`).
pub fn listen_hint(table: &toml::Table) -> Option<Vec<Listen>> {
    let listen = table.get("server").and_then(|s| s.get("listen"));
    let addresses: Vec<&str> = match listen {
        Some(toml::Value::String(one)) => vec![one.as_str()],
        Some(toml::Value::Array(many)) => many.iter().map(|v| v.as_str()).collect::<Option<_>>()?,
        _ => return None,
    };
    addresses.iter().map(|a| parse_listen(a).ok()).collect()
}
