//! A real redis-server per test, on a free loopback port with its own directory, killed
//! when the test ends. `tests/run.sh` installs redis-server when it is missing.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running (or stopped, between `kill` and `restart`) redis-server.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Its working directory: AOF and RDB files land here.
    pub dir: TempDir,
    args: Vec<String>,
    /// Set for a TLS server: the port is the TLS port and redis-cli needs these flags.
    tls_cli: Vec<String>,
}

impl RedisServer {
    /// No persistence: a restart starts empty.
    pub fn start() -> RedisServer {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// With `extra` arguments (persistence, ACL files, ...).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let mut args = vec![
            "--port".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Self::launch(port, args, Vec::new())
    }

    /// TLS only, on a free port, with the given certificate files.
    pub fn start_tls(cert: &str, key: &str, ca: &str) -> RedisServer {
        let port = free_port();
        let args: Vec<String> = [
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-auth-clients",
            "no",
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-port",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([port.to_string()])
        .collect();
        let tls_cli = vec!["--tls".to_owned(), "--cacert".to_owned(), ca.to_owned()];
        Self::launch(port, args, tls_cli)
    }

    fn launch(port: u16, args: Vec<String>, tls_cli: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            args,
            tls_cli,
        };
        server.restart();
        server
    }

    /// Its log file, outside `dir` so `files_on_disk` sees only what Redis stores.
    fn log(&self) -> PathBuf {
        self.dir.path().with_extension("redis.log")
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown save, connections drop at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to the server process: `STOP` freezes it with
    /// every connection open, as a long pause would.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        crate::harness::signal(child, name);
    }

    /// Starts it (again) on the same port, directory and arguments.
    pub fn restart(&mut self) {
        self.kill();
        let binary = which("redis-server").unwrap_or_else(|| {
            panic!(
                "redis-server is not installed: `bash tests/run.sh` installs it \
                 (apt-get install redis-server)"
            )
        });
        let child = Command::new(binary)
            .args(&self.args)
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(["--logfile", self.log().to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server never answered PING:\n{}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs redis-cli against it (as the default user) and returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cli_bytes(args)).into_owned()
    }

    /// Like `cli`, with `--raw` output as bytes.
    pub fn cli_bytes(&self, args: &[&str]) -> Vec<u8> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(&self.tls_cli)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        output.stdout
    }

    /// Every file redis wrote in its directory (AOF, RDB), concatenated.
    pub fn files_on_disk(&self) -> Vec<u8> {
        let mut all = Vec::new();
        let mut dirs = vec![PathBuf::from(self.dir.path())];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
                if entry.file_type().unwrap().is_dir() {
                    dirs.push(entry.path());
                } else {
                    all.extend(std::fs::read(entry.path()).unwrap());
                }
            }
        }
        all
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.log());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(binary))
        .find(|path| path.is_file())
}
