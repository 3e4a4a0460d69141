//! `check-config`'s checks of the machine that will run the broker, beyond the config's
//! own shape (which `config` checks): what `run` refuses before it serves (an existing
//! `state.dir` that is not a private directory), and, with `--check-secrets`, every
//! secret file and variable read once, private keys and state keys parsed, the IdP's CA
//! and client certificate loaded, each sink's directory and each proxy's CA file looked at.
//!
//! Boundaries: called by `cli` only. It reads files and variables, and opens no
//! connection and writes nothing. Each value is checked by the code that will use it
//! (`idp`, `store`, `proxy`), so what passes here passes in `run`; that is why this sits
//! above them, and `config` stays data and validation.

use std::path::Path;

use crate::config::{Config, Problem};

/// Every problem found, in the order of the config's sections.
pub fn check(config: &Config, check_secrets: bool) -> Vec<Problem> {
    let mut problems: Vec<_> = crate::store::check_state_dir(&config.state)
        .into_iter()
        .collect();
    if check_secrets {
        problems.extend(state_secrets(config));
        problems.extend(credential_secrets(config));
        if let Some(Err(message)) = config.emulate.azure.as_ref().map(|a| a.secret.read()) {
            problems.push(problem("emulate.azure.secret", message));
        }
        for (i, source) in config.server.admin_keys.iter().enumerate() {
            if let Err(message) = source.read() {
                problems.push(problem(format!("server.admin_keys[{i}]"), message));
            }
        }
        problems.extend(delivery(config));
        // The client `run` builds reads the CA and client certificate files.
        if let Err(error) = crate::idp::IdpClient::new(&config.idp) {
            problems.push(problem("idp", error.to_string()));
        }
    }
    problems
}

fn problem(key: impl Into<String>, message: impl ToString) -> Problem {
    Problem {
        key: key.into(),
        message: message.to_string(),
    }
}

/// The `[state]` secrets read, and the encryption keys among them parsed.
fn state_secrets(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (field, source) in config.state.secret_sources() {
        let read = source.read().map_err(|e| e.to_string()).and_then(|value| {
            if field.contains("encryption_key") {
                crate::store::Cipher::from_secret(&value)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                Ok(())
            }
        });
        if let Err(message) = read {
            problems.push(problem(format!("state.{field}"), message));
        }
    }
    problems
}

/// Each credential's secrets read, and its private key parsed.
fn credential_secrets(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for c in &config.credentials {
        for (field, source) in c.secret_sources() {
            if let Err(message) = source.read() {
                problems.push(problem(format!("credentials.{}.{field}", c.name), message));
            }
        }
        if let Some(Err(message)) = c.dpop.as_ref().and_then(|d| d.key.as_ref()).map(dpop_key) {
            problems.push(problem(format!("credentials.{}.dpop_key", c.name), message));
        }
        if let Some(Err(message)) = c.private_key.as_ref().map(crate::idp::check_key) {
            problems.push(problem(
                format!("credentials.{}.private_key", c.name),
                message,
            ));
        }
    }
    problems
}

/// A `dpop_key` read and parsed as the broker will (an EC P-256 private key in PEM).
fn dpop_key(source: &crate::secret::SecretSource) -> Result<(), String> {
    use crate::secret::ExposeSecret;
    let pem = source.read().map_err(|e| e.to_string())?;
    crate::dpop::Key::from_pem(pem.expose_secret().as_bytes())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Each sink's directory exists, and each proxy's CA file holds certificates.
fn delivery(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for c in &config.credentials {
        for (i, sink) in c.sinks.iter().enumerate() {
            let dir = sink.path.parent().unwrap_or(Path::new("/"));
            if !dir.is_dir() {
                problems.push(problem(
                    format!("credentials.{}.sinks[{i}].path", c.name),
                    format!("the directory {} does not exist", dir.display()),
                ));
            }
        }
    }
    for proxy in &config.proxies {
        let Some(path) = proxy.ca_file.as_ref() else {
            continue;
        };
        if let Err(e) = crate::proxy::read_roots(path) {
            problems.push(problem(
                format!("proxies.{}.ca_file", proxy.name),
                e.to_string(),
            ));
        }
    }
    problems
}
