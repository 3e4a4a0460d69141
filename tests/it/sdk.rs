//! The real client libraries and tools the emulation tests drive, as installed by
//! `tests/sdk/install.sh` (called from `tests/run.sh`) under `target/sdk/`. A test whose
//! library is missing is skipped with a message on a developer's machine, and fails
//! under CI (`CI` set), where the install must have happened.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `tests/sdk/`, where the scripts live.
pub fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

fn installed() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("sdk")
}

/// `Some(())` when `what` is there; otherwise a skip message, or a failure under CI.
fn present(ok: bool, what: &str) -> Option<()> {
    if ok {
        return Some(());
    }
    let message = format!("{what} is not installed (run `bash tests/sdk/install.sh`)");
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("SKIPPED: {message}");
    None
}

/// The virtualenv's python, with google-auth, azure-identity and kubernetes.
pub fn python() -> Option<Command> {
    let python = installed().join("venv/bin/python");
    present(python.exists(), "the Python SDK virtualenv")?;
    Some(Command::new(python))
}

/// node, resolving `require` from the installed node_modules.
pub fn node() -> Option<Command> {
    let modules = installed().join("node/node_modules");
    let node = which("node");
    present(modules.exists() && node.is_some(), "node with the npm SDKs")?;
    let mut command = Command::new(node?);
    command.env("NODE_PATH", modules);
    Some(command)
}

/// A tool from `PATH`.
pub fn tool(name: &str) -> Option<Command> {
    let path = which(name);
    present(path.is_some(), name)?;
    Some(Command::new(path?))
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `command`, isolated from the machine's cloud configuration (`home` is its
/// HOME), with `stdin` as input, and waits for it.
fn output(mut command: Command, home: &std::path::Path, stdin: &str) -> std::process::Output {
    command
        .env("HOME", home)
        .env("CLOUDSDK_CONFIG", home.join("gcloud"))
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `output`'s stdout, panicking with both streams on failure.
pub fn run(command: Command, home: &std::path::Path, stdin: &str) -> String {
    let described = format!("{command:?}");
    let output = output(command, home, stdin);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{described} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The last line of `stdout` as JSON.
pub fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Like `run`, but returns (success, stdout + stderr) instead of panicking.
pub fn run_status(command: Command, home: &std::path::Path, stdin: &str) -> (bool, String) {
    let output = output(command, home, stdin);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}
