//! Why the state store did not open at start-up: the directory, its lock and key check,
//! the keys and secrets the store reads, and the shared store's client. Each variant
//! names a cause and where it lies; none holds a secret or what a file holds.

use std::io;
use std::path::PathBuf;

use crate::secret::SecretError;

/// Why `Store::open` (or one of the backends it opens) refused to start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `state.dir` was missing and could not be created.
    #[error("state.dir {}: cannot create: {source}", dir.display())]
    CreateDir { dir: PathBuf, source: io::Error },
    /// `state.dir` could not be looked at.
    #[error("state.dir {}: {source}", dir.display())]
    Inaccessible { dir: PathBuf, source: io::Error },
    /// `state.dir` is something other than a directory.
    #[error("state.dir {}: not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    /// Every user may write to `state.dir`.
    #[error(
        "state.dir {}: writable by every user (mode {mode:o}); use a private \
         directory (0700), e.g. a subdirectory the broker creates",
        dir.display()
    )]
    WorldWritable { dir: PathBuf, mode: u32 },
    /// The lock file could not be opened.
    #[error("state.dir {}: cannot open lock file: {source}", dir.display())]
    OpenLock { dir: PathBuf, source: io::Error },
    /// Another broker holds the lock (`holder`: its pid as it wrote it, or "unknown").
    #[error(
        "state.dir {} is in use by another token-broker (pid {holder}); \
         each broker needs its own state directory",
        dir.display()
    )]
    InUse { dir: PathBuf, holder: String },
    /// This broker's pid could not be written into the lock file.
    #[error("state.dir {}: cannot write lock file: {source}", dir.display())]
    WriteLock { dir: PathBuf, source: io::Error },
    /// The key check exists but could not be read.
    #[error("state.dir: cannot read {}: {source}", path.display())]
    ReadKeyCheck { path: PathBuf, source: io::Error },
    /// The state is sealed and no key is configured.
    #[error(
        "the state in {} is sealed; set state.encryption_key to the key it was sealed with",
        dir.display()
    )]
    Sealed { dir: PathBuf },
    /// None of the configured keys is the one the state is sealed with.
    #[error(
        "state.encryption_key is not the key the state in {} was sealed with, nor is \
         any of state.previous_encryption_keys; set the old key in \
         state.previous_encryption_keys to change keys",
        dir.display()
    )]
    WrongKey { dir: PathBuf },
    /// The key check could not be written after sealing the state again.
    #[error("state.dir: cannot write {}: {source}", super::file_keys::CHECK_FILE)]
    WriteKeyCheck { source: io::Error },
    /// Something could not be encoded or sealed again with the current key.
    #[error("{0}")]
    Encode(String),
    /// `state.dir` could not be listed to seal its files again.
    #[error("state.dir: {0}")]
    ListDir(io::Error),
    /// A file could not be written back sealed with the current key.
    #[error("sealing {} again: {source}", path.display())]
    Reseal { path: PathBuf, source: io::Error },
    /// A `[state]` secret (`field`, e.g. `password`) could not be read.
    #[error("state.{field}: {source}")]
    Secret { field: String, source: SecretError },
    /// A `[state]` encryption key (`field`) is not a key.
    #[error("state.{field}: {source}")]
    Key {
        field: String,
        source: super::crypto::KeyError,
    },
    /// `state.url` does not make a Redis client.
    #[error("state.url: {0}")]
    Url(::redis::RedisError),
    /// `state.ca_file` could not be read.
    #[error("state.ca_file {}: {source}", path.display())]
    CaFile { path: PathBuf, source: io::Error },
    /// The shared store answered, and this broker's key does not fit its records.
    #[error("{0}")]
    SharedKey(String),
}
