//! The command-line half of the git credential helper (`git-credential get|store|erase`),
//! a client of a running broker on top of `client`. Which host maps to which credential
//! is the broker's business (`[emulate.git]`), so the helper needs only the broker's URL.

use std::io::Read;
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::json;

use crate::client::{EXIT_BROKER_ERROR, broker_error, fail, fetch, http, with_key};

/// Largest git request read from stdin (git sends a few short lines).
const MAX_GIT_INPUT: u64 = 64 * 1024;

/// What git asks a credential helper to do.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GitOperation {
    Get,
    Store,
    Erase,
}

/// `token-broker git-credential OPERATION`: reads git's attributes from stdin and
/// answers on stdout. A host the broker has no credential for gets no answer (exit 0),
/// so git goes on to its next helper or prompt.
pub async fn git_credential(url: &str, operation: GitOperation) -> ExitCode {
    let mut input = String::new();
    let read = std::io::stdin()
        .take(MAX_GIT_INPUT)
        .read_to_string(&mut input);
    if let Err(e) = read {
        return fail(2, &format!("cannot read git's request on stdin: {e}"));
    }
    let attributes = parse_attributes(&input);
    let attribute = |key: &str| {
        attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let remote: Vec<(&str, &str)> = ["protocol", "host"]
        .into_iter()
        .filter_map(|key| Some((key, attribute(key)?)))
        .collect();
    let base = url.trim_end_matches('/');
    let client = match http() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let request = match operation {
        // Git keeps nothing of ours: the broker is the store.
        GitOperation::Store => return ExitCode::SUCCESS,
        GitOperation::Get => client.get(format!("{base}/git/credential")).query(&remote),
        GitOperation::Erase => {
            let Some(password) = attribute("password") else {
                return ExitCode::SUCCESS;
            };
            let mut body: serde_json::Map<String, serde_json::Value> = remote
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            body.insert("password".to_owned(), json!(password));
            let body = serde_json::Value::Object(body);
            client
                .post(format!("{base}/git/credential/erase"))
                .header("Content-Type", "application/json")
                .body(body.to_string())
        }
    };
    let request = with_key(request.header("Token-Broker", "1"));
    match fetch(request, base).await {
        Ok((200, body)) if operation == GitOperation::Get => print_git_answer(&body),
        Ok((200 | 204, _)) => ExitCode::SUCCESS,
        Ok((404, body)) if body.contains("\"unknown_host\"") => ExitCode::SUCCESS,
        Ok((status, body)) => broker_error(status, &body),
        Err(code) => code,
    }
}

/// `key=value` lines up to a blank line or the end (git's credential format).
fn parse_attributes(input: &str) -> Vec<(String, String)> {
    input
        .lines()
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[derive(Deserialize)]
struct GitAnswer {
    username: String,
    password: String,
}

fn print_git_answer(body: &str) -> ExitCode {
    let answer: GitAnswer = match serde_json::from_str(body) {
        Ok(answer) => answer,
        Err(e) => return fail(EXIT_BROKER_ERROR, &format!("unexpected broker answer: {e}")),
    };
    // A newline would let a value add attributes of its own.
    if [&answer.username, &answer.password]
        .iter()
        .any(|v| v.contains(['\n', '\0']))
    {
        return fail(
            EXIT_BROKER_ERROR,
            "the token or user name holds a line break",
        );
    }
    print!(
        "username={}\npassword={}\n",
        answer.username, answer.password
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn git_attributes_end_at_a_blank_line() {
        let parsed = parse_attributes("protocol=https\nhost=example.com\n\nhost=later\n");
        assert_eq!(
            parsed,
            vec![
                ("protocol".to_owned(), "https".to_owned()),
                ("host".to_owned(), "example.com".to_owned()),
            ]
        );
    }
}
