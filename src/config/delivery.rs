//! Ways tokens leave the broker besides `GET /token`, validated: file sinks (a
//! credential's token written to a file on every new version).
//!
//! Plain data; `config::validate` builds and checks them, `sink` writes the files.

use std::path::PathBuf;

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

impl SinkFormat {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkFormat::Raw => "raw",
            SinkFormat::Json => "json",
        }
    }
}
