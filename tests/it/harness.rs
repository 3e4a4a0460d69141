//! Starts real processes for the tests: the dev IdP and the broker, each on port 0, with
//! their logs captured so tests can grep them for secrets.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_token-broker")
}

/// A child process whose stdout and stderr lines are collected.
pub struct Proc {
    pub child: Child,
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        Self::spawn_program(bin(), args, env)
    }

    /// Like `spawn`, for another program (e.g. a shell that sets limits, then runs the
    /// broker).
    pub fn spawn_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line);
                }
            });
        }
        Proc { child, output }
    }

    /// Waits until a line satisfies `find`, returning what it extracted.
    pub fn wait_for<T>(&mut self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = self.output.lock().unwrap().iter().find_map(|l| find(l)) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("process exited ({status}) before {what}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        self.wait_exit(Duration::from_secs(20))
    }

    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running dev IdP.
pub struct Idp {
    pub proc: Proc,
    pub url: String,
    pub refresh_token: String,
}

impl Idp {
    /// Starts `dev-idp` with a known first refresh token and extra options.
    pub fn start(extra: &[&str]) -> Idp {
        let refresh_token = format!("bootstrap-{}", rand_suffix());
        let mut args = vec![
            "dev-idp",
            "--listen",
            "127.0.0.1:0",
            "--initial-refresh-token",
            &refresh_token,
        ];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args, &[]);
        let url = proc.wait_for("the dev IdP to listen", |line| {
            let rest = line.split("listening on ").nth(1)?;
            Some(rest.split_whitespace().next()?.to_owned())
        });
        Idp {
            proc,
            url,
            refresh_token,
        }
    }

    pub async fn stats(&self) -> Value {
        get_json(&format!("{}/stats", self.url)).await
    }

    pub async fn stat(&self, key: &str) -> u64 {
        let stats = self.stats().await;
        stats[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {key} in {stats}"))
    }

    pub async fn admin(&self, path: &str, body: Value) -> Value {
        let response = client()
            .post(format!("{}/admin/{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "admin {path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    /// A new refresh-token family (a fresh bootstrap token).
    pub async fn mint(&self) -> String {
        self.admin("refresh-tokens", serde_json::json!({})).await["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn whoami(&self, token: &str) -> u16 {
        client()
            .get(format!("{}/api/whoami", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// A running broker with its own directory for config and state.
pub struct Broker {
    pub proc: Proc,
    pub url: String,
    pub dir: PathBuf,
}

impl Broker {
    /// Writes `config` to `dir/config.toml` and runs the broker on it.
    pub fn start(dir: &Path, config: &str) -> Broker {
        Self::start_with_env(dir, config, &[])
    }

    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Broker {
        let path = dir.join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut proc = Proc::spawn(
            &[
                "run",
                "--config",
                path.to_str().unwrap(),
                "--log-format",
                "json",
            ],
            env,
        );
        let addr = proc.wait_for("the broker to listen", |line| {
            let event: Value = serde_json::from_str(line).ok()?;
            (event["message"] == "token-broker serving")
                .then(|| event["listen"].as_str().map(str::to_owned))?
        });
        // The first listener is the TCP one in every test config.
        let addr = addr.split(',').next().unwrap_or_default();
        Broker {
            proc,
            url: format!("http://{addr}"),
            dir: dir.to_owned(),
        }
    }

    /// `GET {path}` with the `Token-Broker: 1` header.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.url))
            .header("Token-Broker", "1")
            .send()
            .await
            .unwrap()
    }

    /// `GET /token/{name}` expecting 200; returns the JSON body.
    pub async fn token(&self, name: &str) -> Value {
        let response = self.get(&format!("/token/{name}")).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(
            status,
            200,
            "GET /token/{name}: {body}\n{}",
            self.proc.logs()
        );
        serde_json::from_str(&body).unwrap()
    }

    /// Just the access token of `GET /token/{name}`.
    pub async fn access_token(&self, name: &str) -> String {
        self.token(name).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let url = format!("{}/metrics", self.url);
        client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `POST /token/{name}/refresh` with an optional rejected token.
    pub async fn refresh(&self, name: &str, rejected: Option<&str>) -> reqwest::Response {
        let request = client()
            .post(format!("{}/token/{name}/refresh", self.url))
            .header("Token-Broker", "1");
        let request = match rejected {
            Some(token) => request.json(&serde_json::json!({ "rejected_token": token })),
            None => request,
        };
        request.send().await.unwrap()
    }

    pub async fn status(&self) -> Value {
        get_json(&format!("{}/v1/credentials", self.url)).await
    }

    /// Waits until `/readyz` says ready.
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = client()
                .get(format!("{}/readyz", self.url))
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never ready: {}\n{}",
                response.text().await.unwrap(),
                self.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A `[credentials.NAME]` table for a refresh-token credential at `idp`, with
/// `refresh_token` read from `bootstrap`.
pub fn refresh_credential(name: &str, idp: &Idp, bootstrap: &Path, extra: &str) -> String {
    format!(
        r#"
[credentials.{name}]
token_url = "{url}/token"
client_id = "dev-client"
client_secret = "dev-secret"
refresh_token = {{ file = "{bootstrap}" }}
{extra}
"#,
        url = idp.url,
        bootstrap = bootstrap.display()
    )
}

/// `[server]` and `[state]` for a broker on port 0 with state in `dir/state`.
pub fn base_config(dir: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"5s\"\n\n[state]\ndir = \"{}\"\n",
        dir.join("state").display()
    )
}

/// A broker with one refresh-token credential `x` bootstrapped from the IdP's first token.
pub fn broker_for(idp: &Idp, dir: &Path, extra: &str) -> Broker {
    broker_with(idp, dir, "", extra)
}

/// Like `broker_for`, with `sections` (e.g. an `[idp]` table) after `[server]` and `[state]`.
pub fn broker_with(idp: &Idp, dir: &Path, sections: &str, extra: &str) -> Broker {
    let bootstrap = dir.join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir) + sections + &refresh_credential("x", idp, &bootstrap, extra);
    Broker::start(dir, &config)
}

/// `GET url` as JSON, no headers.
pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Form-encodes a value for a query string or form body.
pub fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub fn rand_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
