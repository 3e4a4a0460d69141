//! Durable per-credential state: the live refresh token (rotated ones included), the
//! last access token and its expiry, which bootstrap token the chain started from, and
//! whether a refresh is out unanswered.
//!
//! Two backends behind one `Store`: `file` (the default), generation files in
//! `state.dir` for one broker, optionally sealed (`file_keys`); `redis`, one record per credential shared by a fleet of
//! brokers, written under a lease with a version check (fencing, `lease`), optionally
//! sealed (`crypto`, `keycheck`), with change notices (`changes`). Only the broker decides when to write; the stores only keep what they
//! are given, crash-safely.

mod changes;
mod crypto;
mod dpop_key;
mod file;
mod file_keys;
mod keycheck;
mod lease;
mod open_error;
mod record;
mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use secrecy::SecretString;

pub use changes::Notice;
pub use crypto::Cipher;
pub use file::{FileStore, SaveError};
pub(crate) use file::{temp_prefix, write_atomically};
pub use open_error::OpenError;
pub use redis::{ConnectError, Polled, ReadError, Record, RedisStore, Unanswered};

use crate::config::StateConfig;

/// What is persisted for one credential.
#[derive(Clone)]
pub struct Saved {
    /// The refresh token to use next; `None` once the IdP has refused the chain.
    pub refresh_token: Option<SecretString>,
    pub access_token: Option<SecretString>,
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// Fingerprint of the bootstrap token this chain started from: a different bootstrap
    /// at start-up means an operator supplied a new one on purpose.
    pub bootstrap: Option<String>,
    /// Why the chain stopped, when it did (`reauth_required`).
    pub reauth_reason: Option<String>,
    /// Set while a refresh request carrying `refresh_token` is out and unanswered: after a
    /// crash, this is how the broker knows the token may already be spent.
    pub in_flight_since: Option<SystemTime>,
}

impl fmt::Debug for Saved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saved")
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("has_access_token", &self.access_token.is_some())
            .field("expires_at", &self.expires_at)
            .field("reauth_reason", &self.reauth_reason)
            .field("in_flight_since", &self.in_flight_since)
            .finish_non_exhaustive()
    }
}

/// What loading found.
#[derive(Debug)]
// Made once per credential and taken apart at once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    /// Nothing stored yet.
    Empty,
    /// The newest readable state, a warning per newer unreadable one skipped, and the
    /// shared record's version (0 for the file store) and stamp (see `Fence::stamp`).
    Found {
        saved: Saved,
        skipped: Vec<String>,
        version: u64,
        stamp: Option<String>,
    },
    /// State exists but none is readable.
    Corrupt(Vec<String>),
    /// The store cannot be read right now (Redis down, or this broker's encryption key
    /// does not fit): nothing is known, so nothing may be decided yet.
    Unavailable(String),
}

/// What a shared-store write must find to go through.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    /// The record version the writer read.
    pub expected: u64,
    /// The version it writes.
    pub next: u64,
    /// The lease token the writer holds (or held: see `WriteKind`).
    pub lease: Option<String>,
    /// What the write is, which decides what it must find.
    pub kind: WriteKind,
    /// A random tag stored with the record: when a write's answer is lost, reading the
    /// record back tells whether it went through.
    pub stamp: String,
}

/// The kinds of shared-store writes. The lease guards the IdP call, not the record: a
/// broker whose lease ran out while nobody took it over may still record what it knows,
/// as long as that overwrites nothing newer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteKind {
    /// The refresh token is about to be sent: only under the writer's lease, over the
    /// version it read, and not while the credential is held back after lost writes.
    Mark,
    /// A new token from the IdP: under the writer's lease or no one's, over any record
    /// older than the version it writes (a state after a new token is newer than every
    /// state before it).
    Token,
    /// Anything else (a cleared mark, a stop, a write-back): under the writer's lease or
    /// no one's, over the version it read.
    #[default]
    Other,
}

/// Why a write did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The store cannot be written right now; the write may be retried.
    Unavailable(String),
    /// The shared store refused the write: this broker lost its lease or another broker
    /// wrote first. Retrying the same write can never succeed.
    Fenced(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) | StoreError::Fenced(why) => f.write_str(why),
        }
    }
}

/// The backend in use.
#[derive(Clone)]
pub enum Store {
    File(Arc<FileStore>),
    Redis(Arc<RedisStore>),
}

/// What `open` would refuse about the file backend's directory before creating or
/// locking it, for `check-config`: an existing `state.dir` that is not a private
/// directory. A missing one is fine (the broker creates it).
pub fn check_state_dir(config: &StateConfig) -> Option<crate::config::Problem> {
    if config.redis.is_some() || !config.dir.exists() {
        return None;
    }
    file::check_dir(&config.dir)
        .err()
        .map(|why| crate::config::Problem {
            key: "state.dir".to_owned(),
            message: why.to_string(),
        })
}

impl Store {
    /// Opens the configured backend. The file store locks its directory; the redis
    /// store reads its secrets and, if Redis answers, checks the encryption key (a
    /// Redis that is down is not an error here: the broker waits for it).
    pub async fn open(config: &StateConfig) -> Result<Store, OpenError> {
        match &config.redis {
            None => {
                let keys = config
                    .file_keys
                    .as_ref()
                    .map(file_keys::Keys::read)
                    .transpose()?;
                FileStore::open_sealed(&config.dir, keys).map(|s| Store::File(Arc::new(s)))
            }
            Some(redis) => {
                let store = RedisStore::new(redis)?;
                match store.check().await {
                    Ok(()) => {}
                    Err(ConnectError::WrongKey(why)) => return Err(OpenError::SharedKey(why)),
                    Err(ConnectError::Unreachable(why)) => {
                        tracing::warn!(error = %why, "redis is not reachable yet; waiting for it");
                    }
                }
                Ok(Store::Redis(Arc::new(store)))
            }
        }
    }

    /// The shared backend, if that is the one in use.
    pub fn shared(&self) -> Option<&Arc<RedisStore>> {
        match self {
            Store::Redis(redis) => Some(redis),
            Store::File(_) => None,
        }
    }
}

/// What is wrong with stored JSON (`what`: "record", "body"), by kind and place only:
/// serde's own messages quote the offending value, which may be a token.
fn bad_json(error: &serde_json::Error, what: &str) -> String {
    use serde_json::error::Category;
    let why = match error.classify() {
        Category::Io => "cannot be read",
        Category::Syntax => "is not valid JSON",
        Category::Data => "has a field of the wrong type, or lacks one",
        Category::Eof => "is truncated",
    };
    format!(
        "bad {what}: it {why} (line {}, column {})",
        error.line(),
        error.column()
    )
}
