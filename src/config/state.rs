//! The `[state]` table: which backend keeps the credentials' state, and, for the shared
//! Redis backend, how to reach it and how the brokers of a fleet coordinate.
//!
//! Every key of one backend is refused with the other, so a config never silently
//! carries settings that do nothing.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use super::raw::RawState;
use super::validate::Check;
use super::{OnStoreUnavailable, RedisConfig, StateConfig, StateKeys};
use crate::secret::SecretSource;

/// Default `state.dir` of the file backend.
pub const DEFAULT_DIR: &str = "/var/lib/token-broker";

/// Builds the `[state]` settings, recording every problem in `check`.
pub(super) fn state(check: &mut Check, raw: RawState) -> StateConfig {
    let mut file_keys = None;
    let redis = match raw.backend.as_deref() {
        None | Some("file") => {
            for key in redis_keys_set(&raw) {
                check.fail(
                    format!("state.{key}"),
                    "is only used with backend = \"redis\"",
                );
            }
            file_keys = sealing(check, &raw);
            None
        }
        Some("redis") => {
            if raw.previous_encryption_keys.is_some() {
                check.fail(
                    "state.previous_encryption_keys",
                    "is only used with the file backend: a fleet sharing Redis changes its key \
                     by starting a new chain",
                );
            }
            if raw.dir.is_some() {
                check.fail(
                    "state.dir",
                    "is not used with backend = \"redis\": the shared state lives in Redis and \
                     nothing is kept on disk; remove it",
                );
            }
            redis(check, &raw)
        }
        Some(other) => {
            let message = format!("unknown backend `{other}`; expected `file` or `redis`");
            check.fail("state.backend", message);
            None
        }
    };
    let dir = PathBuf::from(raw.dir.unwrap_or_else(|| DEFAULT_DIR.to_owned()));
    if dir.as_os_str().is_empty() {
        check.fail("state.dir", "must not be empty");
    }
    StateConfig {
        dir,
        redis,
        file_keys,
    }
}

/// The file backend's `encryption_key` and `previous_encryption_keys`.
fn sealing(check: &mut Check, raw: &RawState) -> Option<StateKeys> {
    let previous = raw.previous_encryption_keys.clone().unwrap_or_default();
    match raw.encryption_key.clone() {
        Some(key) => Some(StateKeys { key, previous }),
        None if previous.is_empty() => None,
        None => {
            check.fail(
                "state.previous_encryption_keys",
                "needs state.encryption_key, the key the state is sealed with from now on",
            );
            None
        }
    }
}

/// The redis-only keys present in `raw`.
fn redis_keys_set(raw: &RawState) -> Vec<&'static str> {
    [
        ("url", raw.url.is_some()),
        ("username", raw.username.is_some()),
        ("password", raw.password.is_some()),
        ("key_prefix", raw.key_prefix.is_some()),
        ("on_store_unavailable", raw.on_store_unavailable.is_some()),
        ("lease_duration", raw.lease_duration.is_some()),
        ("poll_interval", raw.poll_interval.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("ca_file", raw.ca_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

fn redis(check: &mut Check, raw: &RawState) -> Option<RedisConfig> {
    let before = check.problems.len();
    let url = match raw.url.as_deref() {
        None => {
            check.fail("state.url", "is required for backend = \"redis\"");
            None
        }
        Some(text) => redis_url(text, raw.encryption_key.is_some())
            .map_err(|message| check.fail("state.url", message))
            .ok(),
    };
    let on_unavailable = match raw.on_store_unavailable.as_deref() {
        None | Some("wait") => OnStoreUnavailable::Wait,
        Some("refresh_locally") => OnStoreUnavailable::RefreshLocally,
        Some(other) => {
            check.fail(
                "state.on_store_unavailable",
                format!("unknown policy `{other}`; expected wait or refresh_locally"),
            );
            OnStoreUnavailable::Wait
        }
    };
    let key_prefix = raw
        .key_prefix
        .clone()
        .unwrap_or_else(|| "token-broker:".to_owned());
    if key_prefix.len() > 100 || key_prefix.chars().any(|c| c.is_whitespace()) {
        check.fail(
            "state.key_prefix",
            "must be at most 100 characters, without spaces",
        );
    }
    let (lease_duration, poll_interval, timeout) = timings(check, raw);
    let ca_file = raw.ca_file.as_ref().map(PathBuf::from);
    if ca_file.is_some() && !raw.url.as_deref().is_some_and(|u| u.starts_with("rediss:")) {
        check.fail("state.ca_file", "is only used with a rediss:// url");
    }
    if check.problems.len() > before {
        return None;
    }
    Some(RedisConfig {
        url: url?,
        username: raw.username.clone(),
        password: raw.password.clone(),
        key_prefix,
        on_unavailable,
        lease_duration,
        poll_interval,
        timeout,
        encryption_key: raw.encryption_key.clone(),
        ca_file,
    })
}

/// `lease_duration`, `poll_interval` and `timeout`, checked against each other.
fn timings(check: &mut Check, raw: &RawState) -> (Duration, Duration, Duration) {
    let lease_duration = raw.lease_duration.unwrap_or(Duration::from_secs(10));
    let timeout = raw.timeout.unwrap_or(Duration::from_secs(2));
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&lease_duration) {
        check.fail("state.lease_duration", "must be between 1s and 10m");
    }
    // A renewal is due a quarter into the lease and gives up after twice the timeout:
    // with the timeout at most a quarter, a renewal that failed still leaves a retry a
    // full timeout before the lease runs out.
    if timeout.is_zero() || timeout * 4 > lease_duration {
        check.fail(
            "state.timeout",
            "must be more than 0s and at most a quarter of lease_duration, so a lease \
             renewal that times out can be retried, with a full timeout, before the lease \
             runs out",
        );
    }
    let poll_interval = raw.poll_interval.unwrap_or(Duration::from_secs(1));
    if poll_interval < Duration::from_millis(100) {
        check.fail("state.poll_interval", "must be at least 100ms");
    }
    (lease_duration, poll_interval, timeout)
}

/// A `redis://` or `rediss://` URL without a password. Plain `redis://` to a host that
/// is not loopback needs `encryption_key`: refresh tokens would otherwise cross the
/// network in clear. Messages never echo the user part of the URL (the ACL user and
/// password are secrets), nor any of a text that does not parse, whose user part
/// cannot be told apart.
fn redis_url(text: &str, encrypted: bool) -> Result<String, String> {
    let url = Url::parse(text).map_err(|e| format!("is not a URL ({e})"))?;
    if url.password().is_some() {
        return Err(
            "contains a password; give it in state.password (a secret source) instead".into(),
        );
    }
    let shown = without_user(&url);
    if url.host().is_none() {
        return Err(format!("`{shown}` names no host"));
    }
    match url.scheme() {
        "rediss" => Ok(text.to_owned()),
        "redis" if encrypted || super::validate::is_loopback(&url) => Ok(text.to_owned()),
        "redis" => Err(format!(
            "`{shown}` is plain redis:// to a host that is not loopback: refresh tokens would \
             cross the network in clear; use rediss://, or set state.encryption_key"
        )),
        other => Err(format!(
            "`{shown}`: scheme `{other}` is not redis or rediss"
        )),
    }
}

/// The URL as it may appear in a message: without a user name.
fn without_user(url: &Url) -> String {
    let mut shown = url.clone();
    // Fails only for URLs that cannot carry a user, which then have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

impl StateConfig {
    /// Every secret source of `[state]` with its key (below `state.`), for
    /// `check-config --check-secrets`.
    pub fn secret_sources(&self) -> Vec<(String, &SecretSource)> {
        let mut sources: Vec<(String, &SecretSource)> = Vec::new();
        if let Some(redis) = &self.redis {
            let fields = [
                ("username", &redis.username),
                ("password", &redis.password),
                ("encryption_key", &redis.encryption_key),
            ];
            for (field, source) in fields {
                if let Some(source) = source {
                    sources.push((field.to_owned(), source));
                }
            }
        }
        if let Some(keys) = &self.file_keys {
            sources.push(("encryption_key".to_owned(), &keys.key));
            for (i, source) in keys.previous.iter().enumerate() {
                sources.push((format!("previous_encryption_keys[{i}]"), source));
            }
        }
        sources
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::load_str;

    /// A whole config with this `[state]` table and one credential.
    fn config(state: &str) -> Result<crate::config::Config, Vec<String>> {
        let toml = format!(
            "[state]\n{state}\n[credentials.a]\ntoken_url = \"https://idp.example.com/t\"\n\
             client_id = \"c\"\nrefresh_token = \"r\"\n"
        );
        load_str(&toml).map_err(|p| p.0.iter().map(|p| p.to_string()).collect())
    }

    fn problems(state: &str) -> Vec<String> {
        config(state).err().unwrap_or_default()
    }

    #[test]
    fn a_complete_redis_table_is_accepted() {
        let config = config(
            r#"backend = "redis"
url = "rediss://redis.internal:6380/2"
username = "broker"
password = { env = "REDIS_PASSWORD" }
key_prefix = "team-a:"
on_store_unavailable = "refresh_locally"
lease_duration = "20s"
poll_interval = "500ms"
timeout = "1s"
encryption_key = { file = "/run/secrets/state_key" }
ca_file = "/etc/ssl/redis-ca.pem"
"#,
        )
        .unwrap();
        let redis = config.state.redis.unwrap();
        assert_eq!(redis.on_unavailable, OnStoreUnavailable::RefreshLocally);
        assert_eq!(redis.lease_duration, Duration::from_secs(20));
        assert_eq!(redis.key_prefix, "team-a:");
    }

    #[test]
    fn every_mistake_names_its_key() {
        let cases = [
            ("backend = \"redis\"", "state.url: is required"),
            (
                "url = \"redis://127.0.0.1\"",
                "state.url: is only used with backend = \"redis\"",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1\"",
                "state.url: contains a password",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://redis.internal\"",
                "state.url: `redis://redis.internal` is plain redis://",
            ),
            (
                "backend = \"redis\"\nurl = \"http://127.0.0.1\"",
                "scheme `http` is not redis or rediss",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://127.0.0.1\"\ndir = \"/x\"",
                "state.dir: is not used with backend = \"redis\"",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://127.0.0.1\"\non_store_unavailable = \"yolo\"",
                "state.on_store_unavailable: unknown policy `yolo`",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://127.0.0.1\"\nlease_duration = \"2s\"\ntimeout = \"600ms\"",
                "state.timeout: must be more than 0s and at most a quarter of lease_duration",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://127.0.0.1\"\nca_file = \"/ca.pem\"",
                "state.ca_file: is only used with a rediss:// url",
            ),
            (
                "backend = \"etcd\"",
                "state.backend: unknown backend `etcd`",
            ),
        ];
        for (toml, expected) in cases {
            let found = problems(toml);
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "{toml}: expected `{expected}` in {found:?}"
            );
            assert!(!found.iter().any(|p| p.contains("hunter2")), "{found:?}");
        }
    }

    #[test]
    fn a_url_that_is_refused_is_never_echoed_with_its_credentials() {
        for (url, expected) in [
            // Unparsable: the whole text could be a secret, so none of it is shown.
            (
                "redis://:hunter2@127.0.0.1:notaport",
                "is not a URL (invalid port number)",
            ),
            ("redis://user:hunter2@[::1", "is not a URL"),
            // Parsable but refused: shown without its user part.
            (
                "redis://hunter2@redis.internal",
                "`redis://redis.internal` is plain redis://",
            ),
            (
                "http://hunter2@127.0.0.1",
                "`http://127.0.0.1/`: scheme `http`",
            ),
        ] {
            let found = problems(&format!("backend = \"redis\"\nurl = \"{url}\""));
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "{url}: expected `{expected}` in {found:?}"
            );
            assert!(!found.iter().any(|p| p.contains("hunter2")), "{found:?}");
        }
    }

    #[test]
    fn plain_redis_is_fine_to_loopback_or_once_records_are_encrypted() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://[::1]:6379",
            "redis://localhost",
        ] {
            let found = problems(&format!("backend = \"redis\"\nurl = \"{url}\""));
            assert!(found.is_empty(), "{url}: {found:?}");
        }
        let found = problems(
            "backend = \"redis\"\nurl = \"redis://redis:6379\"\nencryption_key = { env = \"K\" }",
        );
        assert!(found.is_empty(), "{found:?}");
    }
}
