//! How the command-line clients reach a running broker: an http(s) URL, or
//! `unix:/path/to.sock` for a unix socket listener (where the broker knows the caller
//! by its uid); and which key they send in `Token-Broker-Key` (`--key-file FILE`, else
//! `TOKEN_BROKER_KEY`). `post_login` hands a login's token response to the broker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use secrecy::SecretString;
use serde::Deserialize;

use crate::secret::ExposeSecret;

/// How long any one exchange with the broker may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An http:// or https:// base URL, without a trailing `/`.
    Http(String),
    /// A unix socket listener's path.
    Unix(PathBuf),
}

impl Target {
    /// Parses `http://...`, `https://...` or `unix:/absolute/path`.
    pub fn parse(text: &str) -> Result<Target, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(format!("`{text}`: a unix socket path must be absolute"));
            }
            return Ok(Target::Unix(path.to_owned()));
        }
        match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                Ok(Target::Http(text.trim_end_matches('/').to_owned()))
            }
            _ => Err(format!(
                "`{text}` is not an http:// or https:// URL, nor unix:/path/to.sock"
            )),
        }
    }
}

/// The `--url` value parser of every client command.
pub fn url_arg(text: &str) -> Result<String, String> {
    Target::parse(text).map(|_| text.to_owned())
}

/// The key to send: the contents of `key_file` (surrounding whitespace removed), else
/// `TOKEN_BROKER_KEY`; `None` when neither is given.
pub fn read_key(key_file: Option<&Path>) -> Result<Option<SecretString>, String> {
    let key = match key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
            let key = text.trim();
            if key.is_empty() {
                return Err(format!("the key file {} is empty", path.display()));
            }
            key.to_owned()
        }
        None => match std::env::var("TOKEN_BROKER_KEY") {
            Ok(key) if !key.is_empty() => key,
            _ => return Ok(None),
        },
    };
    Ok(Some(SecretString::from(key)))
}

/// One request to the broker.
pub struct Call<'a> {
    pub method: &'a str,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    pub key: Option<&'a SecretString>,
    pub body: Option<Vec<u8>>,
}

/// Why an exchange with the broker did not give an answer or gave an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No answer: the broker cannot be reached (exit code 3).
    #[error("{0}")]
    Unreachable(String),
    /// The broker answered with an error (exit code 1).
    #[error("{error}: {message}")]
    Broker {
        status: u16,
        error: String,
        message: String,
    },
}

impl ClientError {
    /// The exit code the commands use for it.
    pub fn exit_code(&self) -> std::process::ExitCode {
        std::process::ExitCode::from(match self {
            ClientError::Unreachable(_) => super::EXIT_UNREACHABLE,
            ClientError::Broker { .. } => super::EXIT_BROKER_ERROR,
        })
    }

    /// The error an answer with `status` and `body` means.
    pub fn from_answer(status: u16, body: &str) -> ClientError {
        #[derive(Deserialize)]
        struct Body {
            error: String,
            message: String,
        }
        match serde_json::from_str::<Body>(body) {
            Ok(b) => ClientError::Broker {
                status,
                error: b.error,
                message: b.message,
            },
            Err(_) => ClientError::Broker {
                status,
                error: format!("http_{status}"),
                message: format!("the broker answered HTTP {status}"),
            },
        }
    }
}

/// Sends `call` to the broker at `url`; its status and body.
pub async fn send(url: &str, call: Call<'_>) -> Result<(u16, String), ClientError> {
    match Target::parse(url).map_err(ClientError::Unreachable)? {
        Target::Http(base) => send_http(&base, call).await,
        Target::Unix(path) => {
            let exchange = send_unix(&path, call);
            tokio::time::timeout(TIMEOUT, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer from the broker at {} in time",
                        path.display()
                    ))
                })
                .map_err(ClientError::Unreachable)
        }
    }
}

async fn send_http(base: &str, call: Call<'_>) -> Result<(u16, String), ClientError> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| ClientError::Unreachable(format!("cannot build an HTTP client: {e}")))?;
    let method = reqwest::Method::from_bytes(call.method.as_bytes())
        .map_err(|e| ClientError::Unreachable(e.to_string()))?;
    let mut request = client
        .request(method, format!("{base}{}", call.path))
        .header("Token-Broker", "1");
    if let Some(key) = call.key {
        request = request.header("Token-Broker-Key", key.expose_secret());
    }
    if let Some(body) = call.body {
        request = request
            .header("Content-Type", "application/json")
            .body(body);
    }
    let response = request.send().await.map_err(|e| {
        ClientError::Unreachable(format!(
            "cannot reach the broker at {base}: {}",
            super::cause(&e)
        ))
    })?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| {
        ClientError::Unreachable(format!("reading the broker's answer failed: {e}"))
    })?;
    Ok((status, text))
}

/// HTTP/1.1 over the unix socket at `path`, one request per connection.
async fn send_unix(path: &Path, call: Call<'_>) -> Result<(u16, String), String> {
    let unreachable = |e: &dyn std::fmt::Display| {
        format!("cannot reach the broker at unix:{}: {e}", path.display())
    };
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| unreachable(&e))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(call.method)
        .uri(call.path)
        // A unix socket has no host name; the broker does not check one there.
        .header("Host", "localhost")
        .header("Token-Broker", "1");
    if let Some(key) = call.key {
        request = request.header("Token-Broker-Key", key.expose_secret());
    }
    if call.body.is_some() {
        request = request.header("Content-Type", "application/json");
    }
    let body = Full::new(bytes::Bytes::from(call.body.unwrap_or_default()));
    let request = request.body(body).map_err(|e| unreachable(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// What the broker answers a login.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LoginAnswer {
    pub credential: String,
    pub state: String,
    /// 0 with `refresh_error`.
    #[serde(default)]
    pub expires_in: u64,
    /// Set (answer 202) when the chain was adopted but its first refresh failed.
    #[serde(default)]
    pub refresh_error: Option<String>,
}

/// Hands a login's token response (`body`, exactly as the IdP sent it) to the broker
/// at `url`: `POST /v1/credentials/{name}/login`, an admin action (see the README).
pub async fn post_login(
    url: &str,
    key: Option<&SecretString>,
    name: &str,
    body: &[u8],
) -> Result<LoginAnswer, ClientError> {
    let path = format!("/v1/credentials/{}/login", super::urlencode(name));
    let call = Call {
        method: "POST",
        path: &path,
        key,
        body: Some(body.to_vec()),
    };
    let (status, text) = send(url, call).await?;
    // 202: adopted, its first refresh failed (`LoginAnswer::refresh_error`).
    if status != 200 && status != 202 {
        return Err(ClientError::from_answer(status, &text));
    }
    serde_json::from_str(&text).map_err(|_| {
        ClientError::Unreachable("the broker's login answer is not the expected JSON".into())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_http_https_or_absolute_unix_paths() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8656/").unwrap(),
            Target::Http("http://127.0.0.1:8656".into())
        );
        assert_eq!(
            Target::parse("unix:/run/tb.sock").unwrap(),
            Target::Unix("/run/tb.sock".into())
        );
        assert!(
            Target::parse("unix:run/tb.sock")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("127.0.0.1:8656").is_err());
    }

    #[test]
    fn a_key_file_is_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "  k-123\n").unwrap();
        let key = read_key(Some(&file)).unwrap().unwrap();
        assert_eq!(key.expose_secret(), "k-123");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_key(Some(&file)).unwrap_err().contains("empty"));
        assert!(read_key(Some(&dir.path().join("none"))).is_err());
    }

    #[test]
    fn error_answers_keep_their_code_and_message() {
        let e = ClientError::from_answer(403, r#"{"error":"forbidden","message":"no"}"#);
        assert_eq!(e.to_string(), "forbidden: no");
        assert_eq!(e.exit_code(), std::process::ExitCode::from(1));
        let e = ClientError::from_answer(502, "<html>");
        assert!(e.to_string().contains("HTTP 502"));
    }
}
