//! Command-line arguments of `token-broker dev-idp`, and the same options for
//! in-process use by tests. Parsing only; the behaviour lives in the state.

use super::authorize;
use super::clients::Clients;
use super::jwt::PublicKey;
use super::proofs::DpopPolicy;
use super::state::{Config, LoginConfig};
use std::fmt;
use std::time::Duration;

/// Where the dev IdP listens unless told: `dev-idp`, the IdP inside `token-broker dev`,
/// `config/dev.toml` and the examples all assume this port, so their lines work as written.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8657";

/// Run a strict OAuth2 token server for development and tests only, never production.
///
/// It issues unsigned tokens to one confidential client (and optionally one public
/// client), speaks refresh_token, client_credentials, token exchange (RFC 8693),
/// jwt-bearer (RFC 7523), the authorization code with PKCE (RFC 7636) and the device
/// flow (RFC 8628), keeps everything in memory, and exposes
/// unauthenticated admin endpoints to inject faults and revoke credentials. Development
/// and tests only: never run it in production or expose it beyond localhost.
#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "Run a strict OAuth2 token server for development and tests only, never production"
)]
pub struct DevIdpArgs {
    /// Address to listen on; keep it on loopback, the admin endpoints have no auth.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Demand client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// How the IdP behaves.
    #[command(flatten)]
    pub options: DevIdpOptions,
}

/// How the dev IdP behaves: its one client, token lifetimes, and the strictness knobs
/// that let tests model real IdPs.
#[derive(clap::Args, Clone)]
pub struct DevIdpOptions {
    /// The confidential client's id (see also --public-client-id).
    #[arg(long, default_value = "dev-client")]
    pub client_id: String,
    /// That client's secret.
    #[arg(long, default_value = "dev-secret")]
    pub client_secret: String,
    /// Lifetime of issued access tokens (e.g. 300s, 5m).
    #[arg(long, value_name = "DUR", default_value = "300s", value_parser = crate::duration::parse)]
    pub access_ttl: Duration,
    /// Delay before every /token answer, to make overlapping requests observable.
    #[arg(long, value_name = "DUR", default_value = "0", value_parser = crate::duration::parse)]
    pub latency: Duration,
    /// First refresh token to accept; a random one is generated when absent.
    #[arg(long, value_name = "VALUE")]
    pub initial_refresh_token: Option<String>,
    /// How long after its first use a refresh token may be replayed and get the same
    /// successor; past it, a replay revokes the whole family. 0 forgives nothing.
    #[arg(long, value_name = "DUR", default_value = "0", value_parser = crate::duration::parse)]
    pub reuse_grace: Duration,
    /// Behave like a non-rotating IdP: refresh answers carry no new refresh token and
    /// the old one stays valid forever.
    #[arg(long)]
    pub no_rotation: bool,
    /// Leave expires_in out of token answers; the access token's JWT exp still tells
    /// the truth.
    #[arg(long)]
    pub omit_expires_in: bool,
    /// Write the access tokens' JWT iat and exp in milliseconds instead of seconds, as
    /// some misbehaving IdPs do (with --omit-expires-in a client then has no usable
    /// lifetime at all). The tokens still live --access-ttl.
    #[arg(long)]
    pub exp_in_millis: bool,
    /// Mint access tokens without a jti and with a signature derived from the claims,
    /// so two tokens for one client in the same second are the same string, as with
    /// IdPs whose JWTs carry a second-resolution iat and no jti.
    #[arg(long)]
    pub no_jti: bool,
    /// The client's public key (PEM, RSA or EC P-256): it may then authenticate with
    /// private_key_jwt, a signed client assertion (iss = sub = client id, aud = this
    /// token endpoint, a jti used once).
    #[arg(long, value_name = "FILE", value_parser = PublicKey::from_file)]
    pub client_public_key: Option<PublicKey>,
    /// A public client: it sends only its client_id, no secret, and may use refresh
    /// tokens, token exchange and jwt-bearer, never client_credentials.
    #[arg(long, value_name = "ID")]
    pub public_client_id: Option<String>,
    /// Public key (PEM, RSA or EC P-256) that signs jwt-bearer grant assertions
    /// (RFC 7523); without it the jwt-bearer grant is refused.
    #[arg(long, value_name = "FILE", value_parser = PublicKey::from_file)]
    pub jwt_bearer_key: Option<PublicKey>,
    /// The iss a jwt-bearer assertion must carry [default: the --client-id].
    #[arg(long, value_name = "ISS")]
    pub jwt_bearer_issuer: Option<String>,
    /// A subject token accepted for token exchange (RFC 8693, type jwt), e.g. a
    /// Kubernetes service-account token; repeat for several. Access tokens this IdP
    /// issued are accepted too.
    #[arg(long, value_name = "TOKEN")]
    pub subject_token: Vec<String>,
    /// A redirect URI that may receive authorization codes; repeat for several. It must
    /// match exactly, except that a loopback http://127.0.0.1/... or http://[::1]/...
    /// URI matches on any port (RFC 8252 7.3). Without one, /authorize refuses all.
    #[arg(long, value_name = "URI", value_parser = authorize::parse_registered)]
    pub redirect_uri: Vec<String>,
    /// Approve every authorization request and device code at once, with no consent or
    /// verification page: for tests.
    #[arg(long)]
    pub auto_approve: bool,
    /// How long a device code waits for the user (RFC 8628 expires_in), whole seconds.
    #[arg(long, value_name = "DUR", default_value = "600s", value_parser = whole_seconds)]
    pub device_code_ttl: Duration,
    /// The polling interval device codes start with (RFC 8628 interval), whole seconds.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = whole_seconds)]
    pub device_interval: Duration,
    /// Demand a server nonce in DPoP proofs (RFC 9449 section 8), at the token
    /// endpoint and at /api/whoami: a proof without the current one is answered
    /// use_dpop_nonce with the nonce in a DPoP-Nonce header. Nonces rotate every
    /// minute; the previous one stays accepted for another minute.
    #[arg(long)]
    pub dpop_nonce: bool,
    /// Refuse token requests without a DPoP proof (invalid_dpop_proof), as an IdP that
    /// issues only sender-constrained tokens does.
    #[arg(long)]
    pub dpop_required: bool,
}

/// A duration of whole seconds, from one second to a year: RFC 8628 states
/// `expires_in` and `interval` in seconds, so a fraction would be rounded into a
/// different promise, and the bound keeps `now + ttl` from overflowing.
fn whole_seconds(text: &str) -> Result<Duration, String> {
    let duration = crate::duration::parse(text)?;
    let bounds = Duration::from_secs(1)..=crate::duration::LONGEST_SETTING;
    if !bounds.contains(&duration) || duration.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds, from 1s to 365 days".to_owned());
    }
    Ok(duration)
}

impl Default for DevIdpOptions {
    fn default() -> Self {
        DevIdpOptions {
            client_id: "dev-client".to_owned(),
            client_secret: "dev-secret".to_owned(),
            access_ttl: Duration::from_secs(300),
            latency: Duration::ZERO,
            initial_refresh_token: None,
            reuse_grace: Duration::ZERO,
            no_rotation: false,
            omit_expires_in: false,
            exp_in_millis: false,
            no_jti: false,
            client_public_key: None,
            public_client_id: None,
            jwt_bearer_key: None,
            jwt_bearer_issuer: None,
            subject_token: Vec::new(),
            redirect_uri: Vec::new(),
            auto_approve: false,
            device_code_ttl: LoginConfig::default().device_code_ttl,
            device_interval: LoginConfig::default().device_interval,
            dpop_nonce: false,
            dpop_required: false,
        }
    }
}

// Hand-written so that the secret and the initial refresh token can never reach a log
// through `{:?}`.
impl fmt::Debug for DevIdpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<none>" };
        f.debug_struct("DevIdpOptions")
            .field("client_id", &self.client_id)
            .field("client_secret", &redacted(true))
            .field("access_ttl", &self.access_ttl)
            .field("latency", &self.latency)
            .field(
                "initial_refresh_token",
                &redacted(self.initial_refresh_token.is_some()),
            )
            .field("reuse_grace", &self.reuse_grace)
            .field("no_rotation", &self.no_rotation)
            .field("omit_expires_in", &self.omit_expires_in)
            .field("exp_in_millis", &self.exp_in_millis)
            .field("no_jti", &self.no_jti)
            .field("client_public_key", &self.client_public_key)
            .field("public_client_id", &self.public_client_id)
            .field("jwt_bearer_key", &self.jwt_bearer_key)
            .field("jwt_bearer_issuer", &self.jwt_bearer_issuer)
            .field("subject_tokens", &self.subject_token.len())
            .field("redirect_uris", &self.redirect_uri)
            .field("auto_approve", &self.auto_approve)
            .field("device_code_ttl", &self.device_code_ttl)
            .field("device_interval", &self.device_interval)
            .field("dpop_nonce", &self.dpop_nonce)
            .field("dpop_required", &self.dpop_required)
            .finish()
    }
}

impl DevIdpOptions {
    /// The DPoP rules the state enforces.
    pub(super) fn dpop_policy(&self) -> DpopPolicy {
        DpopPolicy {
            nonce: self.dpop_nonce,
            required: self.dpop_required,
        }
    }

    /// The fixed rules the state enforces.
    pub(super) fn config(&self) -> Config {
        Config {
            clients: Clients {
                id: self.client_id.clone(),
                secret: self.client_secret.clone(),
                key: self.client_public_key.clone(),
                public_id: self.public_client_id.clone(),
            },
            access_ttl: self.access_ttl,
            reuse_grace: self.reuse_grace,
            rotation: !self.no_rotation,
            omit_expires_in: self.omit_expires_in,
            exp_in_millis: self.exp_in_millis,
            no_jti: self.no_jti,
            bearer_key: self.jwt_bearer_key.clone(),
            bearer_issuer: self
                .jwt_bearer_issuer
                .clone()
                .unwrap_or_else(|| self.client_id.clone()),
            subject_tokens: self.subject_token.clone(),
            login: LoginConfig {
                redirect_uris: self.redirect_uri.clone(),
                auto_approve: self.auto_approve,
                device_code_ttl: self.device_code_ttl,
                device_interval: self.device_interval,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        DevIdp(DevIdpArgs),
    }

    fn parse(args: &[&str]) -> DevIdpArgs {
        let argv = ["token-broker", "dev-idp"].iter().chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::DevIdp(args) => args,
        }
    }

    #[test]
    fn defaults_match_default_impl() {
        let args = parse(&[]);
        assert_eq!(args.listen, "127.0.0.1:8657");
        assert_eq!(
            format!("{:?}", args.options),
            format!("{:?}", DevIdpOptions::default())
        );
    }

    #[test]
    fn durations_and_flags_parse() {
        let args = parse(&[
            "--access-ttl=1m",
            "--latency=250ms",
            "--reuse-grace=2",
            "--no-rotation",
            "--omit-expires-in",
            "--exp-in-millis",
            "--initial-refresh-token=abc",
        ]);
        let o = args.options;
        assert_eq!(o.access_ttl, Duration::from_secs(60));
        assert_eq!(o.latency, Duration::from_millis(250));
        assert_eq!(o.reuse_grace, Duration::from_secs(2));
        assert!(o.no_rotation && o.omit_expires_in && o.exp_in_millis);
        assert_eq!(o.initial_refresh_token.as_deref(), Some("abc"));
        assert!(!format!("{o:?}").contains("abc"));
        assert!(Cli::try_parse_from(["tb", "dev-idp", "--latency=soon"]).is_err());
    }

    #[test]
    fn login_flow_options_parse_strictly() {
        let args = parse(&[
            "--redirect-uri=http://127.0.0.1/cb",
            "--redirect-uri=https://app.example/cb",
            "--auto-approve",
            "--device-code-ttl=2",
            "--device-interval=1s",
        ]);
        let login = args.options.config().login;
        assert_eq!(login.redirect_uris.len(), 2);
        assert!(login.auto_approve);
        assert_eq!(login.device_code_ttl, Duration::from_secs(2));
        assert_eq!(login.device_interval, Duration::from_secs(1));
        for bad in [
            "--redirect-uri=/relative",
            "--redirect-uri=http://127.0.0.1/cb#frag",
            "--device-interval=500ms",
            "--device-interval=0",
            "--device-code-ttl=1500ms",
            "--device-code-ttl=99999999999999",
        ] {
            assert!(
                Cli::try_parse_from(["tb", "dev-idp", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_are_read_at_parse_time_and_subject_tokens_repeat() {
        let keys = crate::test_keys::generate(crate::test_keys::Kind::EcPkcs8);
        let public = keys.public.to_str().unwrap();
        let args = parse(&[
            "--client-public-key",
            public,
            "--jwt-bearer-key",
            public,
            "--subject-token=a",
            "--subject-token=b",
            "--public-client-id=spa",
        ]);
        let config = args.options.config();
        assert!(config.clients.key.is_some() && config.bearer_key.is_some());
        assert_eq!(config.bearer_issuer, "dev-client");
        assert_eq!(config.subject_tokens, ["a", "b"]);
        assert!(!format!("{:?}", args.options).contains("\"a\""));
        let private = keys.private.to_str().unwrap();
        let err = Cli::try_parse_from(["tb", "dev-idp", "--client-public-key", private]);
        assert!(err.err().unwrap().to_string().contains("BEGIN PUBLIC KEY"));
    }

    #[test]
    fn help_says_development_only() {
        let mut cli = Cli::command();
        let sub = cli.find_subcommand_mut("dev-idp").unwrap();
        let help = sub.render_help().to_string();
        assert!(help.contains("never production"), "{help}");
        let long = sub.render_long_help().to_string();
        assert!(long.contains("never production"), "{long}");
    }
}
