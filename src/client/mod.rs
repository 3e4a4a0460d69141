//! `token-broker get` and `token-broker status`: small HTTP clients of a running broker,
//! for shell scripts and humans; `get --format exec-credential` is the kubectl
//! credential plugin's answer. `helpers` builds the git credential helper on these.
//! `transport`: how they reach the broker (http(s) or a unix socket, with a key), and
//! `post_login`, the hand-over of a login's new chain.

mod transport;

pub use transport::{Call, ClientError, LoginAnswer, Target, post_login, read_key, send, url_arg};

/// The value parser of a credential name argument: a name as the config allows it.
pub fn name_arg(text: &str) -> Result<String, String> {
    if crate::config::valid_name(text) {
        Ok(text.to_owned())
    } else {
        Err("a credential name is 1-64 letters, digits, `-`, `_` or `.`".to_owned())
    }
}

use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

/// Exit code when the broker answered with an error.
pub const EXIT_BROKER_ERROR: u8 = 1;
/// Exit code when the broker could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

pub(crate) fn http() -> Result<reqwest::Client, ExitCode> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| {
            fail(
                EXIT_UNREACHABLE,
                &format!("cannot build an HTTP client: {e}"),
            )
        })
}

pub(crate) fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("token-broker: {message}");
    ExitCode::from(code)
}

pub(crate) async fn fetch(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<(u16, String), ExitCode> {
    let response = request.send().await.map_err(|e| {
        fail(
            EXIT_UNREACHABLE,
            &format!("cannot reach the broker at {url}: {}", cause(&e)),
        )
    })?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| {
        fail(
            EXIT_UNREACHABLE,
            &format!("reading the broker's answer failed: {e}"),
        )
    })?;
    Ok((status, body))
}

/// Why a request got no answer, in plain words: reqwest's own message is only "error
/// sending request"; the cause is at the bottom of its chain of sources.
fn cause(e: &reqwest::Error) -> String {
    let target = e
        .url()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_else(|| "the broker".to_owned());
    if e.is_timeout() {
        return format!("no answer from {target} in time");
    }
    let mut innermost = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return format!("connection refused to {target}"),
                TimedOut => return format!("connecting to {target} timed out"),
                ConnectionReset | ConnectionAborted => {
                    return format!("{target} closed the connection");
                }
                _ => {}
            }
        }
        innermost = s.to_string();
        source = s.source();
    }
    format!("{innermost} ({target})")
}

pub(crate) fn broker_error(status: u16, body: &str) -> ExitCode {
    let message = match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => format!("{}: {}", e.error, e.message),
        Err(_) => format!("the broker answered HTTP {status}"),
    };
    fail(EXIT_BROKER_ERROR, &message)
}

/// How `get` prints the token.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GetFormat {
    /// The bare token.
    Raw,
    /// The JSON of `GET /token`.
    Json,
    /// A Kubernetes `ExecCredential`, for kubectl's credential plugins.
    ExecCredential,
}

/// Prints the access token on stdout: bare, as JSON, or as a kubectl `ExecCredential`.
pub async fn get(
    url: &str,
    key: Option<&secrecy::SecretString>,
    name: Option<&str>,
    min_ttl: Option<&str>,
    format: GetFormat,
) -> ExitCode {
    let format_param = match format {
        GetFormat::Raw => "raw",
        GetFormat::Json | GetFormat::ExecCredential => "json",
    };
    let mut path = match name {
        Some(name) => format!("/token/{}?format={format_param}", urlencode(name)),
        None => format!("/token?format={format_param}"),
    };
    if let Some(ttl) = min_ttl {
        path.push_str(&format!("&min_ttl={}", urlencode(ttl)));
    }
    let call = Call {
        method: "GET",
        path: &path,
        key,
        body: None,
    };
    match send(url, call).await {
        Ok((200, body)) if format == GetFormat::ExecCredential => print_exec_credential(&body),
        Ok((200, token)) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => broker_error(status, &body),
        Err(e) => fail_with(&e),
    }
}

/// Prints `error` and returns its exit code.
pub fn fail_with(error: &ClientError) -> ExitCode {
    eprintln!("token-broker: {error}");
    error.exit_code()
}

/// The `ExecCredential` versions kubectl and client libraries ask for.
const EXEC_VERSIONS: [&str; 2] = [
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
];

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    expires_at: String,
}

/// Prints `body` (the JSON of `GET /token`) as an `ExecCredential` of the version
/// `KUBERNETES_EXEC_INFO` asks for (v1 when it is absent).
fn print_exec_credential(body: &str) -> ExitCode {
    let version = match exec_version(std::env::var("KUBERNETES_EXEC_INFO").ok().as_deref()) {
        Ok(version) => version,
        Err(message) => return fail(EXIT_BROKER_ERROR, &message),
    };
    let token: TokenBody = match serde_json::from_str(body) {
        Ok(token) => token,
        Err(e) => return fail(EXIT_BROKER_ERROR, &format!("unexpected token answer: {e}")),
    };
    let credential = json!({
        "apiVersion": version,
        "kind": "ExecCredential",
        "status": {
            "token": token.access_token,
            "expirationTimestamp": token.expires_at,
        },
    });
    println!("{credential}");
    ExitCode::SUCCESS
}

/// The API version of the `ExecCredential` kubectl passes in `KUBERNETES_EXEC_INFO`.
fn exec_version(info: Option<&str>) -> Result<&'static str, String> {
    let Some(info) = info.filter(|i| !i.trim().is_empty()) else {
        return Ok(EXEC_VERSIONS[0]);
    };
    let value: serde_json::Value =
        serde_json::from_str(info).map_err(|e| format!("KUBERNETES_EXEC_INFO is not JSON: {e}"))?;
    let asked = value["apiVersion"].as_str().unwrap_or_default();
    EXEC_VERSIONS
        .into_iter()
        .find(|v| *v == asked)
        .ok_or_else(|| {
            format!(
                "KUBERNETES_EXEC_INFO asks for apiVersion `{asked}`; supported: {}",
                EXEC_VERSIONS.join(", ")
            )
        })
}

/// Adds the client key of `TOKEN_BROKER_KEY`, if set, for credentials with
/// `client_keys`.
pub(crate) fn with_key(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match std::env::var("TOKEN_BROKER_KEY") {
        Ok(key) if !key.is_empty() => request.header("Token-Broker-Key", key),
        _ => request,
    }
}

/// Exit 0 if `GET {url}{path}` answers 200 within 5 seconds.
pub async fn probe(url: &str, path: &str) -> ExitCode {
    let target = format!(
        "{}/{}",
        url.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return fail(
                EXIT_BROKER_ERROR,
                &format!("cannot build an HTTP client: {e}"),
            );
        }
    };
    match client.get(&target).send().await {
        Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(response) => fail(
            EXIT_BROKER_ERROR,
            &format!("{target} answered HTTP {}", response.status().as_u16()),
        ),
        Err(e) => fail(
            EXIT_BROKER_ERROR,
            &format!("cannot reach {target}: {}", cause(&e)),
        ),
    }
}

pub(crate) fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[derive(Deserialize)]
struct Listing {
    credentials: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    name: String,
    state: String,
    expires_in: Option<u64>,
    last_refresh_at: Option<String>,
    next_refresh_at: Option<String>,
    last_error: Option<LastError>,
}

#[derive(Deserialize)]
struct LastError {
    message: String,
}

/// Prints a table of credentials (or the raw JSON).
pub async fn status(url: &str, key: Option<&secrecy::SecretString>, json: bool) -> ExitCode {
    let call = Call {
        method: "GET",
        path: "/v1/credentials",
        key,
        body: None,
    };
    let (status, body) = match send(url, call).await {
        Ok(answer) => answer,
        Err(e) => return fail_with(&e),
    };
    if status != 200 {
        return broker_error(status, &body);
    }
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<Listing>(&body) {
        Ok(listing) => {
            let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
            print!("{}", table(&listing.credentials, colour));
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_BROKER_ERROR, &format!("unexpected status answer: {e}")),
    }
}

/// The state, padded, in a colour that says whether it needs attention.
fn paint(state: &str, width: usize) -> String {
    let code = match state {
        "valid" => "32",
        "refreshing" | "starting" | "stale" => "33",
        _ => "31",
    };
    format!("\x1b[{code}m{state:<width$}\x1b[0m")
}

/// An aligned table; colour only for a terminal.
fn table(rows: &[Row], colour: bool) -> String {
    let header = [
        "NAME",
        "STATE",
        "EXPIRES IN",
        "LAST REFRESH",
        "NEXT REFRESH",
        "LAST ERROR",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.state.clone(),
                r.expires_in.map_or("-".into(), |s| {
                    crate::duration::format(Duration::from_secs(s))
                }),
                r.last_refresh_at.clone().unwrap_or_else(|| "-".into()),
                r.next_refresh_at.clone().unwrap_or_else(|| "-".into()),
                r.last_error
                    .as_ref()
                    .map_or("-".into(), |e| e.message.clone()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cols: Vec<&str>| {
        let padded: Vec<String> = cols
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if colour && i == 1 && *c != "STATE" {
                    paint(c, w)
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exec_credential_versions_follow_kubernetes_exec_info() {
        assert_eq!(exec_version(None).unwrap(), EXEC_VERSIONS[0]);
        let beta = r#"{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","spec":{}}"#;
        assert_eq!(exec_version(Some(beta)).unwrap(), EXEC_VERSIONS[1]);
        let alpha = r#"{"apiVersion":"client.authentication.k8s.io/v1alpha1"}"#;
        assert!(exec_version(Some(alpha)).unwrap_err().contains("v1alpha1"));
        assert!(exec_version(Some("{")).unwrap_err().contains("not JSON"));
    }
}
