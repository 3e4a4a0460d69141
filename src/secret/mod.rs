//! Secret values and where they come from.
//!
//! A secret in the config is a literal string, `{ file = "PATH" }` or `{ env = "VAR" }`.
//! Sources are read when the value is needed (each refresh), so a rotated file or
//! Kubernetes Secret is picked up without a restart. Values live in `SecretString`,
//! which redacts `Debug` and zeroizes on drop; nothing in this module prints a value.

mod keyring;

use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use sha2::{Digest, Sha256};

pub use keyring::{KeyRing, LoadError as KeyRingError};
pub use secrecy::ExposeSecret;

/// Why a secret could not be read. Names the source, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read (missing, unreadable, not UTF-8).
    #[error("cannot read file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The environment variable is not set, or not UTF-8.
    #[error("environment variable {0} is not set or not UTF-8")]
    Env(String),
    /// The source holds only whitespace; `what` describes it (never an inline value).
    #[error("{what} is empty")]
    Empty { what: String },
}

/// Where a secret value is read from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written inline in the config (convenient for development, discouraged otherwise).
    Inline(String),
    /// Read from a file, trimmed of surrounding whitespace (mounted secrets end in `\n`).
    File(PathBuf),
    /// Read from an environment variable.
    Env(String),
}

impl SecretSource {
    /// Reads the current value. The error names the source, never the value.
    pub fn read(&self) -> Result<SecretString, SecretError> {
        let value = match self {
            SecretSource::Inline(value) => value.clone(),
            SecretSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?
            }
            SecretSource::Env(var) => {
                std::env::var(var).map_err(|_| SecretError::Env(var.clone()))?
            }
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(SecretError::Empty {
                what: format!("{self:?}"),
            });
        }
        Ok(SecretString::from(value.to_owned()))
    }

    /// The source's file, if it is one (used to watch a bootstrap token for changes).
    pub fn path(&self) -> Option<&PathBuf> {
        match self {
            SecretSource::File(path) => Some(path),
            _ => None,
        }
    }
}

/// A one-way fingerprint of a secret value, used to notice that a bootstrap token
/// changed without storing the token itself next to its successor.
pub fn fingerprint(value: &SecretString) -> String {
    let digest = Sha256::digest(value.expose_secret().as_bytes());
    hex(&digest[..16])
}

/// Compares secrets without an early exit, so timing does not reveal how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Never shows an inline value, only the kind of source.
impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("inline secret"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SourceVisitor)
    }
}

/// Hand-written so a mistake says which shapes are allowed, rather than serde's
/// "did not match any variant".
struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a string, { file = "PATH" } or { env = "VAR" }"#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(SecretSource::Inline(v.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(
                r#"expected { file = "PATH" } or { env = "VAR" }"#,
            ));
        };
        let value: String = map.next_value()?;
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom(
                "a secret source takes exactly one of `file` or `env`",
            ));
        }
        match key.as_str() {
            "file" => Ok(SecretSource::File(PathBuf::from(value))),
            "env" => Ok(SecretSource::Env(value)),
            other => Err(de::Error::custom(format!(
                "unknown secret source `{other}`; expected `file` or `env`"
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_values_are_trimmed_and_debug_never_shows_inline_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "  hunter2\n").unwrap();
        let source = SecretSource::File(path);
        assert_eq!(source.read().unwrap().expose_secret(), "hunter2");
        let inline = SecretSource::Inline("hunter2".into());
        assert!(!format!("{inline:?}").contains("hunter2"));
        assert!(!format!("{:?}", inline.read().unwrap()).contains("hunter2"));
    }

    #[test]
    fn missing_sources_name_the_source() {
        let err = SecretSource::Env("TB_TEST_SURELY_UNSET".into())
            .read()
            .unwrap_err();
        assert!(matches!(err, SecretError::Env(_)));
        assert!(err.to_string().contains("TB_TEST_SURELY_UNSET"));
        let err = SecretSource::File("/nonexistent/x".into())
            .read()
            .unwrap_err();
        assert!(matches!(err, SecretError::File { .. }));
        assert!(err.to_string().contains("/nonexistent/x"));
        let err = SecretSource::Inline("  \n".into()).read().unwrap_err();
        assert!(matches!(err, SecretError::Empty { .. }));
        assert_eq!(err.to_string(), "inline secret is empty");
    }

    #[test]
    fn parses_every_shape() {
        #[derive(Deserialize)]
        struct T {
            s: SecretSource,
        }
        let parse = |text: &str| serde_json::from_str::<T>(text).map(|t| t.s);
        assert_eq!(
            parse(r#"{"s":"v"}"#).unwrap(),
            SecretSource::Inline("v".into())
        );
        assert_eq!(
            parse(r#"{"s":{"file":"/p"}}"#).unwrap(),
            SecretSource::File("/p".into())
        );
        assert_eq!(
            parse(r#"{"s":{"env":"V"}}"#).unwrap(),
            SecretSource::Env("V".into())
        );
        let err = parse(r#"{"s":{"vault":"x"}}"#).err().unwrap().to_string();
        assert!(err.contains("unknown secret source `vault`"), "{err}");
    }
}
