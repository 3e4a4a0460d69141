//! Validation of file sinks (`[[credentials.NAME.sinks]]`): each table on its own,
//! then what only the whole config can tell (a file written by two sinks, a sink
//! inside the state directory).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::super::raw::RawSink;
use super::Check;
use crate::config::{Config, CredentialSpec, Problem, SinkFormat, SinkSpec, StateConfig};

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
        Some(text) => match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            // A token file others could write is one they could swap for their own.
            Ok(mode) if mode <= 0o777 && mode & 0o022 == 0 => mode,
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

/// For `check-config --check-secrets`, on the machine that will run the broker: each
/// sink's directory exists.
pub fn check_delivery(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for c in &config.credentials {
        for (i, sink) in c.sinks.iter().enumerate() {
            let dir = sink.path.parent().unwrap_or(Path::new("/"));
            if !dir.is_dir() {
                problems.push(Problem {
                    key: format!("credentials.{}.sinks[{i}].path", c.name),
                    message: format!("the directory {} does not exist", dir.display()),
                });
            }
        }
    }
    problems
}
