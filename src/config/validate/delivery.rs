//! Validation of file sinks (`[[credentials.NAME.sinks]]`) and proxies
//! (`[proxies.NAME]`): each table on its own, then what only the whole config can tell
//! (a file written by two sinks, a sink inside the state directory, a proxy for a
//! credential that does not exist or on an address already taken).

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::super::raw::{RawProxy, RawSink};
use super::{Check, checked_url, parse_listen, valid_name};
use crate::config::{
    CredentialSpec, Listen, ProxySpec, ServerConfig, SinkFormat, SinkSpec, StateConfig,
};

/// Default upstream `response_timeout` of a proxy.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The checked sinks of one credential.
pub(super) fn sinks(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: Option<Vec<RawSink>>,
) -> Vec<SinkSpec> {
    let raw = raw.unwrap_or_default();
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, sink)| self::sink(check, &key(&format!("sinks[{i}]")), sink))
        .collect()
}

fn sink(check: &mut Check, key: &str, raw: RawSink) -> Option<SinkSpec> {
    let before = check.problems.len();
    let path = PathBuf::from(raw.path.unwrap_or_default());
    if path.as_os_str().is_empty() {
        check.fail(format!("{key}.path"), "is required");
    } else if let Err(why) = plain_absolute(&path) {
        check.fail(format!("{key}.path"), format!("`{}` {why}", path.display()));
    }
    let format = match raw.format.as_deref() {
        None | Some("raw") => SinkFormat::Raw,
        Some("json") => SinkFormat::Json,
        Some(other) => {
            let message = format!("unknown format `{other}`; expected raw or json");
            check.fail(format!("{key}.format"), message);
            SinkFormat::Raw
        }
    };
    let mode = match raw.mode.as_deref() {
        None => 0o600,
        Some(text) => match super::octal_mode(text) {
            // A token file others could write is one they could swap for their own.
            Some(mode) if mode & 0o022 == 0 => mode,
            _ => {
                let message = format!(
                    "`{text}` is not an octal mode like \"0600\" or \"0640\" (group and others \
                     may read, never write)"
                );
                check.fail(format!("{key}.mode"), message);
                0o600
            }
        },
    };
    (check.problems.len() == before).then_some(SinkSpec { path, format, mode })
}

/// An absolute path to a file, without `.` or `..` (so two spellings of one file are
/// caught as duplicates, and the directory is the one it looks like).
fn plain_absolute(path: &Path) -> Result<(), &'static str> {
    if !path.is_absolute() {
        return Err("must be absolute");
    }
    if path
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
    {
        return Err("must not contain `.` or `..`");
    }
    if path.file_name().is_none() || path.to_string_lossy().ends_with('/') {
        return Err("must name a file, not a directory");
    }
    Ok(())
}

/// What only the whole config tells about sinks: one file per sink, and none in the
/// file store's directory (whose files the broker owns).
pub(super) fn sinks_overall(
    check: &mut Check,
    credentials: &[CredentialSpec],
    state: &StateConfig,
) {
    let mut seen: HashMap<&Path, &str> = HashMap::new();
    for c in credentials {
        for (i, sink) in c.sinks.iter().enumerate() {
            let key = format!("credentials.{}.sinks[{i}].path", c.name);
            if let Some(other) = seen.insert(&sink.path, &c.name) {
                let message = format!(
                    "`{}` is also written by a sink of credentials.{other}; one file, one sink",
                    sink.path.display()
                );
                check.fail(key, message);
            } else if state.redis.is_none() && sink.path.starts_with(&state.dir) {
                let message = format!(
                    "`{}` is inside state.dir, whose files belong to the state store",
                    sink.path.display()
                );
                check.fail(key, message);
            }
        }
    }
}

/// The checked `[proxies]`, sorted by name.
pub(super) fn proxies(
    check: &mut Check,
    raw: Option<BTreeMap<String, RawProxy>>,
    server: &ServerConfig,
    credentials: &[CredentialSpec],
) -> Vec<ProxySpec> {
    let mut taken: Vec<(Listen, String)> = server
        .listen
        .iter()
        .map(|l| (l.clone(), "server.listen".to_owned()))
        .chain(
            server
                .ops_listen
                .iter()
                .map(|l| (l.clone(), "server.ops_listen".to_owned())),
        )
        .collect();
    raw.unwrap_or_default()
        .into_iter()
        .filter_map(|(name, raw)| proxy(check, name, raw, &mut taken, credentials))
        .collect()
}

/// One proxy; its address joins `taken`.
fn proxy(
    check: &mut Check,
    name: String,
    raw: RawProxy,
    taken: &mut Vec<(Listen, String)>,
    credentials: &[CredentialSpec],
) -> Option<ProxySpec> {
    let key = format!("proxies.{name}");
    let before = check.problems.len();
    if !valid_name(&name) {
        check.fail(&key, "a name is 1-64 letters, digits, `-`, `_` or `.`");
    }
    let listen = proxy_listen(check, &key, raw.listen.as_deref(), taken);
    let upstream = upstream(check, &key, raw.upstream.as_deref());
    let credential = raw.credential.unwrap_or_default();
    if credential.is_empty() {
        check.fail(format!("{key}.credential"), "is required");
    } else if !credentials.iter().any(|c| c.name == credential) {
        let message = format!("no credential is named `{credential}`");
        check.fail(format!("{key}.credential"), message);
    }
    let response_timeout = raw.response_timeout.unwrap_or(RESPONSE_TIMEOUT);
    if response_timeout.is_zero() {
        check.fail(format!("{key}.response_timeout"), "must be more than 0s");
    }
    if let Some(listen) = &listen {
        taken.push((listen.clone(), format!("{key}.listen")));
    }
    (check.problems.len() == before).then_some(())?;
    Some(ProxySpec {
        name,
        listen: listen?,
        upstream: upstream?,
        credential,
        ca_file: raw.ca_file.map(PathBuf::from),
        response_timeout,
    })
}

/// A loopback address or a unix socket, not used by another listener.
fn proxy_listen(
    check: &mut Check,
    key: &str,
    text: Option<&str>,
    taken: &[(Listen, String)],
) -> Option<Listen> {
    let key = format!("{key}.listen");
    let Some(text) = text else {
        check.fail(
            key,
            "is required (e.g. \"127.0.0.1:8657\" or \"unix:/run/app/api.sock\")",
        );
        return None;
    };
    let listen = parse_listen(text).map_err(|e| check.fail(&key, e)).ok()?;
    if let Listen::Tcp(addr) = &listen
        && !addr.ip().is_loopback()
    {
        let message = format!(
            "`{text}` is not a loopback address: the proxy adds the token to every request it \
             receives, so only local clients may reach it (use 127.0.0.1, ::1 or a unix socket)"
        );
        check.fail(key, message);
        return None;
    }
    if let Some((_, owner)) = taken.iter().find(|(l, _)| same_listener(l, &listen)) {
        check.fail(key, format!("`{text}` is already used by {owner}"));
        return None;
    }
    Some(listen)
}

/// Two listeners that would collide (port 0 never does: each gets its own port).
pub(super) fn same_listener(a: &Listen, b: &Listen) -> bool {
    match (a, b) {
        (Listen::Tcp(a), Listen::Tcp(b)) => a.port() != 0 && a == b,
        (a, b) => a == b,
    }
}

/// An http(s) base URL: no credentials, query or fragment; a path is a prefix.
fn upstream(check: &mut Check, key: &str, text: Option<&str>) -> Option<reqwest::Url> {
    let key = format!("{key}.upstream");
    let Some(text) = text else {
        check.fail(key, "is required (e.g. \"https://api.example.com\")");
        return None;
    };
    let url = checked_url(text).map_err(|e| check.fail(&key, e)).ok()?;
    if !url.username().is_empty() || url.password().is_some() {
        check.fail(key, "must not carry a user name or password");
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() {
        check.fail(
            key,
            "must not have a query or fragment; a path is used as a prefix",
        );
        return None;
    }
    Some(url)
}
