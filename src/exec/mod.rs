//! The `exec` source: a configured command prints the token, for cloud CLIs and custom
//! scripts. It asks no IdP; the broker runs it inside the same single flight as any
//! grant (`broker::refresh`), so coalescing, backoff, stale-while-valid and status apply
//! unchanged, and every failure here is retryable.
//!
//! The command runs without a shell, stdin closed, with a clean environment (`PATH`
//! plus the configured variables), in its own process group: once it exits (or
//! `timeout` passes), what is left of the group is killed and reaped (`reap`), so a
//! script's children cannot outlive it or hold the run open. Standard output
//! is capped and never logged (it is the token); standard error may hold secrets too,
//! so only its size is reported. Parsing the output lives in `output`.

mod output;
mod reap;

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::config::Exec;
use crate::idp::TokenResponse;
use crate::secret::ExposeSecret;

/// Largest standard output accepted; a token, even a JWT with many claims or an
/// ExecCredential, is a few KiB.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// `PATH` of the child unless `exec.env.PATH` is configured.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Why a run gave no token. Names the program and the cause, never any output.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `exec.command` is empty.
    #[error("exec.command is empty")]
    NoCommand,
    /// A configured environment variable's secret cannot be read.
    #[error("exec.env.{name}: {source}")]
    Env {
        name: String,
        source: crate::secret::SecretError,
    },
    /// The program could not be started.
    #[error("exec `{program}`: cannot start it: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    /// Its output was over `MAX_OUTPUT_BYTES`.
    #[error(
        "exec `{program}`: printed more than {MAX_OUTPUT_BYTES} bytes; killed it and its process group"
    )]
    TooLarge { program: String },
    /// Its output could not be read.
    #[error("exec `{program}`: reading its output failed: {source}")]
    Read {
        program: String,
        source: std::io::Error,
    },
    /// It did not finish within `timeout`.
    #[error(
        "exec `{program}`: no answer within {}; killed it and its process group",
        crate::duration::format(*.timeout)
    )]
    TimedOut { program: String, timeout: Duration },
    /// It exited unsuccessfully (`how`: the status or signal, and stderr's size).
    #[error("exec `{program}`: {how}")]
    Failed { program: String, how: String },
    /// What it printed is not a token (`why` says how, quoting none of it).
    #[error("exec `{program}`: {why}")]
    Output { program: String, why: String },
}

/// What running the command produced.
struct Finished {
    stdout: zeroize::Zeroizing<Vec<u8>>,
    stderr_bytes: u64,
    status: ExitStatus,
}

/// Why collecting the output stopped early.
enum Cut {
    TooLarge,
    Io(std::io::Error),
}

/// Runs the command once and reads the token it prints. Errors name the program and
/// what went wrong, never any output. Whatever the outcome, nothing it started is left
/// running (see `reap`).
pub async fn run(spec: &Exec) -> Result<TokenResponse, ExecError> {
    let program = || spec.command.first().cloned().unwrap_or_default();
    let (mut child, _leader) =
        reap::spawn(&mut command(spec)?).map_err(|source| ExecError::Start {
            program: program(),
            source,
        })?;
    let group = reap::group_of(&child);
    let outcome = tokio::time::timeout(spec.timeout, collect(&mut child, group)).await;
    if !matches!(outcome, Ok(Ok(_))) {
        reap::kill_group(group);
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    reap::end_group(group).await;
    let finished = match outcome {
        Ok(Ok(finished)) => finished,
        Ok(Err(Cut::TooLarge)) => return Err(ExecError::TooLarge { program: program() }),
        Ok(Err(Cut::Io(source))) => {
            return Err(ExecError::Read {
                program: program(),
                source,
            });
        }
        Err(_) => {
            return Err(ExecError::TimedOut {
                program: program(),
                timeout: spec.timeout,
            });
        }
    };
    if !finished.status.success() {
        return Err(ExecError::Failed {
            program: program(),
            how: exit_error(finished.status, finished.stderr_bytes),
        });
    }
    output::parse(&finished.stdout, spec.format).map_err(|why| ExecError::Output {
        program: program(),
        why,
    })
}

/// How the command failed. Its stderr is described by size only: CLIs print secrets there
/// too (a refresh token in a debug line, a key in an error), and this text reaches logs,
/// status and error bodies.
fn exit_error(status: ExitStatus, stderr_bytes: u64) -> String {
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "failed".to_owned(),
    };
    format!(
        "{how} ({stderr_bytes} bytes on stderr, not shown: they may hold secrets; run the command by hand to see them)"
    )
}

/// The child process: no shell, stdin closed, a clean environment, its own group.
fn command(spec: &Exec) -> Result<Command, ExecError> {
    let (program, args) = spec.command.split_first().ok_or(ExecError::NoCommand)?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if !spec.env.contains_key("PATH") {
        command.env("PATH", DEFAULT_PATH);
    }
    for (name, source) in &spec.env {
        let value = source.read().map_err(|source| ExecError::Env {
            name: name.clone(),
            source,
        })?;
        command.env(name, value.expose_secret());
    }
    Ok(command)
}

/// How long the pipes may stay open after the command exited. What it printed is in
/// them already; only a process it left behind could still hold them open.
const DRAIN: Duration = Duration::from_millis(200);

/// Reads stdout (capped) and stderr (counted, discarded) while waiting for the command
/// to exit. The exit ends the run: the pipes then get `DRAIN` to reach their end, and
/// if a background process still holds them, the group is killed.
async fn collect(child: &mut Child, group: Option<Pid>) -> Result<Finished, Cut> {
    // Room for the cap and one byte more, reserved once: a growing buffer would leave
    // copies of the token behind in freed memory.
    let mut stdout = zeroize::Zeroizing::new(Vec::with_capacity(MAX_OUTPUT_BYTES + 1));
    let mut stderr_bytes = 0;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let status = {
        let reads = async {
            tokio::try_join!(read_capped(out, &mut stdout), count(err, &mut stderr_bytes))
        };
        tokio::pin!(reads);
        tokio::select! {
            read = &mut reads => {
                read?;
                child.wait().await.map_err(Cut::Io)?
            }
            status = child.wait() => {
                let status = status.map_err(Cut::Io)?;
                if let Ok(read) = tokio::time::timeout(DRAIN, &mut reads).await {
                    read?;
                } else {
                    reap::kill_group(group);
                    // Still open: held by a process outside the group; stop reading.
                    if let Ok(read) = tokio::time::timeout(DRAIN, &mut reads).await {
                        read?;
                    }
                }
                status
            }
        }
    };
    Ok(Finished {
        stdout,
        stderr_bytes,
        status,
    })
}

/// Appends the stream to `out` (cancel-safe: what was read stays read), up to one byte
/// past the cap, which tells "too large" from "exactly the cap".
async fn read_capped(stream: Option<impl AsyncRead + Unpin>, out: &mut Vec<u8>) -> Result<(), Cut> {
    let Some(mut stream) = stream else {
        return Ok(());
    };
    loop {
        if out.len() > MAX_OUTPUT_BYTES {
            return Err(Cut::TooLarge);
        }
        let room = MAX_OUTPUT_BYTES + 1 - out.len();
        let read = (&mut stream)
            .take(room as u64)
            .read_buf(out)
            .await
            .map_err(Cut::Io)?;
        if read == 0 {
            return Ok(());
        }
    }
}

/// Counts the stream's bytes into `total`, discarding them.
async fn count(stream: Option<impl AsyncRead + Unpin>, total: &mut u64) -> Result<(), Cut> {
    let Some(mut stream) = stream else {
        return Ok(());
    };
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await.map_err(Cut::Io)? {
            0 => return Ok(()),
            n => *total += n as u64,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::ExecFormat;
    use crate::secret::SecretSource;

    fn exec(command: &[&str], timeout: Duration) -> Exec {
        Exec {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            env: BTreeMap::new(),
            timeout,
            format: ExecFormat::Auto,
        }
    }

    // Only causes found before anything is spawned: a run makes this process a
    // subreaper that reaps every child it did not start itself (see `reap`), which
    // would take other unit tests' children (openssl) from them. Running commands is
    // covered by `tests/it/exec.rs`, against the real binary.
    #[tokio::test]
    async fn a_command_that_cannot_be_set_up_names_its_cause() {
        let long = Duration::from_secs(10);
        let error = run(&exec(&[], long)).await.unwrap_err();
        assert!(matches!(error, ExecError::NoCommand), "{error}");
        assert_eq!(error.to_string(), "exec.command is empty");

        let mut missing = exec(&["/bin/echo", "t"], long);
        let unset = SecretSource::Env("TB_EXEC_TEST_SURELY_UNSET".into());
        missing.env.insert("TOKEN".into(), unset);
        let error = run(&missing).await.unwrap_err();
        assert!(
            matches!(&error, ExecError::Env { name, source: crate::secret::SecretError::Env(_) } if name == "TOKEN"),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "exec.env.TOKEN: environment variable TB_EXEC_TEST_SURELY_UNSET is not set or not UTF-8"
        );
    }
}
