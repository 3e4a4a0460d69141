//! From `RawConfig` to `Config`: defaults filled in, every value checked, every problem
//! collected with the key it belongs to.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use super::raw::{OneOrMany, RawConfig, RawCredential, RawIdp, RawServer};
use super::*;

mod client;
mod delivery;
mod dpop;
mod exec;
mod grant;
mod login;

/// Collects problems while building a value.
#[derive(Default)]
pub(super) struct Check {
    pub problems: Vec<Problem>,
}

impl Check {
    pub(super) fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Validates a raw config; returns every problem found, not just the first.
pub fn validate(raw: RawConfig) -> Result<Config, Problems> {
    let mut check = Check::default();
    let server = server(&mut check, raw.server.unwrap_or_default());
    let idp = idp(&mut check, raw.idp.unwrap_or_default());
    let state = super::state::state(&mut check, raw.state.unwrap_or_default());
    let raw_credentials = raw.credentials.unwrap_or_default();
    if raw_credentials.is_empty() {
        check.fail(
            "credentials",
            "no credentials configured; add a [credentials.NAME] table",
        );
    }
    names_differing_in_case(&mut check, raw_credentials.keys());
    let credentials: Vec<CredentialSpec> = raw_credentials
        .into_iter()
        .filter_map(|(name, c)| credential(&mut check, name, c))
        .collect();
    for c in &credentials {
        empty_inline_secrets(&mut check, c);
    }
    let defaults: Vec<&str> = credentials
        .iter()
        .filter(|c| c.default)
        .map(|c| c.name.as_str())
        .collect();
    if defaults.len() > 1 {
        check.fail(
            "credentials",
            format!(
                "more than one credential has default = true: {}",
                defaults.join(", ")
            ),
        );
    }
    delivery::sinks_overall(&mut check, &credentials, &state);
    let proxies = delivery::proxies(&mut check, raw.proxies, &server, &credentials);
    let emulate = super::emulate::emulate(&mut check, raw.emulate, &credentials);
    if check.problems.is_empty() {
        Ok(Config {
            server,
            state,
            idp,
            credentials,
            proxies,
            emulate,
        })
    } else {
        Err(Problems(check.problems))
    }
}

fn server(check: &mut Check, raw: RawServer) -> ServerConfig {
    let addresses = match raw.listen {
        None => vec![DEFAULT_LISTEN.to_owned()],
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    };
    if addresses.is_empty() {
        check.fail("server.listen", "needs at least one address");
    }
    let listen: Vec<Listen> = addresses
        .iter()
        .filter_map(|a| match parse_listen(a) {
            Ok(l) => Some(l),
            Err(e) => {
                check.fail("server.listen", e);
                None
            }
        })
        .collect();
    let ops_listen = ops_listen(check, raw.ops_listen, &listen);
    let request_timeout = raw.request_timeout.unwrap_or(Duration::from_secs(10));
    if request_timeout.is_zero() {
        check.fail("server.request_timeout", "must be more than 0s");
    }
    ServerConfig {
        listen,
        ops_listen,
        require_header: raw.require_header.unwrap_or(true),
        request_timeout,
        shutdown_grace: raw.shutdown_grace.unwrap_or(Duration::from_secs(10)),
        max_waiting_requests: raw.max_waiting_requests.unwrap_or(100_000),
        header_timeout: raw
            .header_timeout
            .unwrap_or(Duration::from_secs(10))
            .max(Duration::from_millis(100)),
        socket_mode: socket_mode(check, raw.socket_mode.as_deref()),
        watch_config: raw.watch_config.unwrap_or(false),
        allowed_hosts: raw
            .allowed_hosts
            .unwrap_or_default()
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        max_watchers: raw.max_watchers.unwrap_or(10_000),
        max_connections: match raw.max_connections {
            Some(0) => {
                check.fail("server.max_connections", "must be at least 1");
                None
            }
            other => other,
        },
        admin_uids: raw
            .admin_uids
            .unwrap_or_else(|| vec![rustix::process::getuid().as_raw()]),
        admin_keys: raw.admin_keys.unwrap_or_default(),
    }
}

/// `server.ops_listen`: addresses of its own, none of them a token listener's.
fn ops_listen(check: &mut Check, raw: Option<OneOrMany>, listen: &[Listen]) -> Vec<Listen> {
    let addresses = match raw {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    };
    let mut ops: Vec<Listen> = Vec::new();
    for text in &addresses {
        match parse_listen(text) {
            Ok(address)
                if listen
                    .iter()
                    .chain(&ops)
                    .any(|l| delivery::same_listener(l, &address)) =>
            {
                let message = format!("`{text}` is already used by server.listen or ops_listen");
                check.fail("server.ops_listen", message);
            }
            Ok(address) => ops.push(address),
            Err(e) => check.fail("server.ops_listen", e),
        }
    }
    ops
}

/// A file mode written in octal (`"0660"`, `"0o660"`, `"660"`).
pub(super) fn octal_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
}

fn socket_mode(check: &mut Check, text: Option<&str>) -> u32 {
    let Some(text) = text else { return 0o660 };
    match octal_mode(text) {
        Some(mode) if mode & 0o600 == 0o600 => mode,
        _ => {
            check.fail(
                "server.socket_mode",
                format!(
                    "`{text}` is not an octal mode like \"0660\" that lets the owner read and write"
                ),
            );
            0o660
        }
    }
}

/// Parses `HOST:PORT` or `unix:/path`.
pub fn parse_listen(text: &str) -> Result<Listen, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!("`{text}`: a unix socket path must be absolute"));
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    let text = text.replace("localhost:", "127.0.0.1:");
    text.parse::<SocketAddr>()
        .map(Listen::Tcp)
        .map_err(|_| format!("`{text}` is not IP:PORT or unix:/path"))
}

fn idp(check: &mut Check, raw: RawIdp) -> IdpConfig {
    let config = IdpConfig {
        connect_timeout: raw.connect_timeout.unwrap_or(Duration::from_secs(5)),
        timeout: raw.timeout.unwrap_or(Duration::from_secs(15)),
        max_concurrent: raw.max_concurrent.unwrap_or(64),
        ca_file: raw.ca_file.map(PathBuf::from),
        client_cert: raw.client_cert.map(PathBuf::from),
        client_key: raw.client_key.map(PathBuf::from),
    };
    if config.client_cert.is_some() != config.client_key.is_some() {
        check.fail("idp.client_cert", "client_cert and client_key go together");
    }
    if config.timeout.is_zero() {
        check.fail("idp.timeout", "must be more than 0s");
    }
    if config.max_concurrent == 0 {
        check.fail("idp.max_concurrent", "must be at least 1");
    }
    config
}

fn credential(check: &mut Check, name: String, raw: RawCredential) -> Option<CredentialSpec> {
    let key = |field: &str| format!("credentials.{name}.{field}");
    let before = check.problems.len();
    if !valid_name(&name) {
        check.fail(
            format!("credentials.{name}"),
            "a name is 1-64 letters, digits, `-`, `_` or `.` (it appears in URLs and file names)",
        );
    }
    let parts = grant::parts(check, &name, &raw);
    // The exec grant asks no IdP: `grant::parts` refuses IdP keys on it instead.
    let is_exec = raw.grant.as_deref() == Some("exec");
    let endpoint = match is_exec {
        true => Some(None),
        false => endpoint(check, &name, &raw).map(Some),
    };
    let client_id = raw.client_id.clone().unwrap_or_default();
    if client_id.is_empty() && !is_exec {
        check.fail(key("client_id"), "is required");
    }
    let refresh_ratio = raw.refresh_ratio.unwrap_or(0.8);
    if !(0.1..=0.95).contains(&refresh_ratio) {
        check.fail(key("refresh_ratio"), "must be between 0.1 and 0.95");
    }
    let refresh_jitter = raw.refresh_jitter.unwrap_or(0.1);
    if !(0.0..=0.5).contains(&refresh_jitter) || refresh_jitter >= refresh_ratio {
        check.fail(
            key("refresh_jitter"),
            "must be between 0 and 0.5 and below refresh_ratio",
        );
    }
    let backoff_initial = raw.backoff_initial.unwrap_or(Duration::from_secs(1));
    let backoff_max = raw.backoff_max.unwrap_or(Duration::from_secs(300));
    if backoff_initial.is_zero() || backoff_max < backoff_initial {
        check.fail(
            key("backoff_max"),
            "backoff_initial must be > 0 and <= backoff_max",
        );
    }
    let default_lifetime = raw.default_lifetime.unwrap_or(Duration::from_secs(3600));
    if default_lifetime < Duration::from_secs(1) {
        check.fail(key("default_lifetime"), "must be at least 1s");
    }
    let bootstrap_poll = raw.bootstrap_poll.unwrap_or(Duration::from_secs(5));
    if bootstrap_poll < Duration::from_millis(100) {
        check.fail(key("bootstrap_poll"), "must be at least 100ms");
    }
    let lost_answer = match raw.lost_answer.as_deref() {
        None | Some("retry_within_grace") => LostAnswer::RetryWithinGrace,
        Some("retry") => LostAnswer::Retry,
        Some(other) => {
            check.fail(
                key("lost_answer"),
                format!("unknown policy `{other}`; expected retry_within_grace or retry"),
            );
            LostAnswer::RetryWithinGrace
        }
    };
    let is_refresh_token = matches!(raw.grant.as_deref(), None | Some("refresh_token"));
    let login = login::login(check, &key, &raw, is_refresh_token);
    let dpop = dpop::dpop(check, &key, &raw, is_exec);
    let sinks = delivery::sinks(check, &key, raw.sinks);
    if check.problems.len() > before {
        return None;
    }
    let parts = parts?;
    Some(CredentialSpec {
        grant: parts.grant,
        endpoint: endpoint?,
        client_id,
        client_secret: raw.client_secret,
        client_auth: parts.client_auth,
        private_key: parts.private_key,
        refresh_token: raw.refresh_token,
        scope: raw.scope.filter(|s| !s.is_empty()),
        audience: raw.audience,
        default: raw.default.unwrap_or(false),
        required: raw.required.unwrap_or(true),
        refresh_ratio,
        refresh_jitter,
        default_lifetime,
        min_refresh_interval: raw.min_refresh_interval.unwrap_or(Duration::from_secs(5)),
        backoff_initial,
        backoff_max,
        bootstrap_poll,
        idp_reuse_grace: raw.idp_reuse_grace.unwrap_or_default(),
        lost_answer,
        access: Access {
            uids: raw.allowed_uids.unwrap_or_default(),
            gids: raw.allowed_gids.unwrap_or_default(),
            keys: raw.client_keys.unwrap_or_default(),
        },
        sinks,
        login,
        dpop,
        name,
    })
}

/// An inline secret that is empty (or only whitespace) can never be read: the broker
/// would refuse it at start (a client key) or at every refresh. Sources in files and
/// variables are read by `check-config --check-secrets`, where they will be used.
fn empty_inline_secrets(check: &mut Check, c: &CredentialSpec) {
    for (field, source) in c.secret_sources() {
        if matches!(source, SecretSource::Inline(value) if value.trim().is_empty()) {
            check.fail(format!("credentials.{}.{field}", c.name), "is empty");
        }
    }
}

/// Refuses names equal but for case: they would share a state file on a file system
/// that ignores case, and a client could not tell them apart in a log or a URL typed
/// by hand.
fn names_differing_in_case<'a>(check: &mut Check, names: impl Iterator<Item = &'a String>) {
    let mut seen: std::collections::HashMap<String, &String> = Default::default();
    for name in names {
        if let Some(first) = seen.insert(name.to_lowercase(), name) {
            check.fail(
                format!("credentials.{name}"),
                format!("differs from credentials.{first} only in case; names must differ in more"),
            );
        }
    }
}

/// Whether a credential or proxy name is allowed: it appears in URLs and file names.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn endpoint(check: &mut Check, name: &str, raw: &RawCredential) -> Option<Endpoint> {
    let (field, text) = match (&raw.token_url, &raw.issuer) {
        (Some(_), Some(_)) => {
            check.fail(
                format!("credentials.{name}"),
                "set token_url or issuer, not both",
            );
            return None;
        }
        (None, None) => {
            check.fail(
                format!("credentials.{name}.token_url"),
                "is required (or set issuer)",
            );
            return None;
        }
        (Some(url), None) => ("token_url", url),
        (None, Some(url)) => ("issuer", url),
    };
    let key = format!("credentials.{name}.{field}");
    match checked_url(text) {
        Ok(url) if field == "token_url" => Some(Endpoint::TokenUrl(EndpointUrl {
            url,
            text: text.trim().to_owned(),
        })),
        Ok(url) => Some(Endpoint::Issuer(url)),
        Err(e) => {
            check.fail(key, e);
            None
        }
    }
}

/// An http(s) URL; plain http only for loopback hosts, since the token endpoint carries
/// the client secret and the refresh token.
pub fn checked_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "`{text}` uses plain http to a non-loopback host; use https"
        )),
        other => Err(format!("`{text}`: scheme `{other}` is not http or https")),
    }
}

/// Whether the URL names a loopback host. For a scheme the URL parser does not know
/// (`redis://`) an IPv4 host stays text, so a domain is tried as an address first.
pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => match d.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => d == "localhost" || d.ends_with(".localhost"),
        },
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}
