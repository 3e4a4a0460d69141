//! The `exec` source: a configured command prints the token, for cloud CLIs and custom
//! scripts. It asks no IdP; the broker runs it inside the same single flight as any
//! grant (`broker::refresh`), so coalescing, backoff, stale-while-valid and status apply
//! unchanged, and every failure here is retryable.
//!
//! The command runs without a shell, stdin closed, with a clean environment (`PATH`
//! plus the configured variables), in its own process group: when `timeout` passes,
//! the whole group is killed, so a script's children cannot outlive it. Standard output
//! is capped and never logged (it is the token); standard error may hold secrets too,
//! so only its size is reported. Parsing the output lives in `output`.

mod output;

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

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
/// what went wrong, never any output.
pub async fn run(spec: &Exec) -> Result<TokenResponse, String> {
    let program = spec.command.first().map_or("", String::as_str);
    let fail = |what: String| format!("exec `{program}`: {what}");
    let mut child = command(spec)?
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    let outcome = tokio::time::timeout(spec.timeout, collect(&mut child)).await;
    let finished = match outcome {
        Ok(Ok(finished)) => finished,
        Ok(Err(cut)) => {
            kill(&mut child).await;
            return Err(fail(match cut {
                Cut::TooLarge => format!(
                    "printed more than {MAX_OUTPUT_BYTES} bytes; killed it and its process group"
                ),
                Cut::Io(e) => format!("reading its output failed: {e}"),
            }));
        }
        Err(_) => {
            kill(&mut child).await;
            return Err(fail(format!(
                "no answer within {}; killed it and its process group",
                crate::duration::format(spec.timeout)
            )));
        }
    };
    if !finished.status.success() {
        return Err(fail(exit_error(finished.status, finished.stderr_bytes)));
    }
    output::parse(&finished.stdout, spec.format).map_err(fail)
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
fn command(spec: &Exec) -> Result<Command, String> {
    let (program, args) = spec.command.split_first().ok_or("exec.command is empty")?;
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
        let value = source.read().map_err(|e| format!("exec.env.{name}: {e}"))?;
        command.env(name, value.expose_secret());
    }
    Ok(command)
}

/// Reads stdout (capped) and stderr (counted, discarded) until the command exits and
/// closes both.
async fn collect(child: &mut Child) -> Result<Finished, Cut> {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (stdout, stderr_bytes) = tokio::try_join!(read_capped(stdout), count(stderr))?;
    let status = child.wait().await.map_err(Cut::Io)?;
    Ok(Finished {
        stdout,
        stderr_bytes,
        status,
    })
}

async fn read_capped(
    stream: Option<impl AsyncRead + Unpin>,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Cut> {
    let mut out = zeroize::Zeroizing::new(Vec::new());
    if let Some(stream) = stream {
        // One byte past the cap tells "too large" from "exactly the cap".
        let limit = MAX_OUTPUT_BYTES as u64 + 1;
        stream
            .take(limit)
            .read_to_end(&mut out)
            .await
            .map_err(Cut::Io)?;
    }
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(Cut::TooLarge);
    }
    Ok(out)
}

async fn count(stream: Option<impl AsyncRead + Unpin>) -> Result<u64, Cut> {
    match stream {
        Some(mut stream) => tokio::io::copy(&mut stream, &mut tokio::io::sink())
            .await
            .map_err(Cut::Io),
        None => Ok(0),
    }
}

/// Kills the command's whole process group, then reaps the command itself.
async fn kill(child: &mut Child) {
    // The group id is the child's pid (`process_group(0)`); it is gone once reaped.
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        // Fails only if every member is already gone.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}
