//! Ways tokens leave the broker besides `GET /token`, validated: file sinks (a
//! credential's token written to a file on every new version) and header-injecting
//! proxies (`[proxies.NAME]`: requests forwarded upstream with the token added).
//!
//! Plain data; `config::validate` builds and checks them, `sink` writes the files and
//! `proxy` runs the proxies.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use super::Listen;

/// One file a credential's token is written to (`[[credentials.NAME.sinks]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    /// Absolute path of the file; written through a temporary file in the same
    /// directory and renamed over it.
    pub path: PathBuf,
    pub format: SinkFormat,
    /// File mode (default 0600).
    pub mode: u32,
}

/// What a sink file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// The bare access token, no trailing newline (as `?format=raw`).
    Raw,
    /// The JSON of `GET /token`, with `expires_in` as of the write.
    Json,
}

/// A header-injecting proxy (`[proxies.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySpec {
    /// The table key; labels metrics and logs.
    pub name: String,
    /// A loopback TCP address or a unix socket: the proxy lends the credential to
    /// whoever can connect.
    pub listen: Listen,
    /// Where requests go: scheme, authority and an optional path prefix.
    pub upstream: Url,
    /// The credential whose token is added.
    pub credential: String,
    /// PEM CAs trusted (besides the built-in web roots) for an https upstream; defaults
    /// to `idp.ca_file`.
    pub ca_file: Option<PathBuf>,
    /// How long the upstream may take to start answering once the request is sent.
    pub response_timeout: Duration,
}
