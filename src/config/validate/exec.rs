//! Validation of the `exec` table of `grant = "exec"`: a program to run, a timeout, an
//! output format and variable names the child can actually receive.

use std::time::Duration;

use super::super::raw::RawExec;
use super::Check;
use crate::config::{Exec, ExecFormat};

/// The checked `exec` table; `None` when it is missing.
pub(super) fn exec(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: Option<&RawExec>,
) -> Option<Exec> {
    let Some(raw) = raw else {
        check.fail(
            key("exec"),
            "is required for grant = \"exec\" (e.g. exec.command = [\"/usr/bin/gcloud\", \"auth\", \"print-access-token\"])",
        );
        return None;
    };
    let command = raw.command.clone().unwrap_or_default();
    if command.first().is_none_or(|program| program.is_empty()) {
        check.fail(
            key("exec.command"),
            "needs the program and its arguments, e.g. [\"/usr/local/bin/get-token\", \"--quiet\"]",
        );
    }
    if command.iter().any(|arg| arg.contains('\0')) {
        check.fail(key("exec.command"), "must not contain NUL characters");
    }
    let timeout = raw.timeout.unwrap_or(Duration::from_secs(30));
    if timeout.is_zero() {
        check.fail(key("exec.timeout"), "must be more than 0s");
    }
    let format = match raw.format.as_deref() {
        None | Some("auto") => ExecFormat::Auto,
        Some("raw") => ExecFormat::Raw,
        Some("json") => ExecFormat::Json,
        Some(other) => {
            check.fail(
                key("exec.format"),
                format!("unknown format `{other}`; expected auto, raw or json"),
            );
            ExecFormat::Auto
        }
    };
    let env = raw.env.clone().unwrap_or_default();
    for name in env.keys() {
        if name.is_empty() || name.contains(['=', '\0']) {
            check.fail(key("exec.env"), format!("`{name}` is not a variable name"));
        }
    }
    Some(Exec {
        command,
        env,
        timeout,
        format,
    })
}
