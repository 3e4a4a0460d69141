//! The shared backend: one record per credential in Redis, written by the broker that
//! holds the credential's lease over the version it read (fencing; a broker whose lease
//! ran out may still write where nothing newer is overwritten, see `WriteKind`), with a
//! change notice on a pub/sub channel after every write.
//!
//! Keys, all under `key_prefix`: `record:NAME`, a hash of `version`, `data` (the record,
//! sealed when a key is configured) and `stamp` (a random tag per write); `lease:NAME`,
//! the lease token with a TTL; `hold:NAME`, set for a while after Redis lost writes to
//! the record, when no refresh token may be marked as sent; `key-check` (see
//! `keycheck`). Channel `changes` carries `NAME VERSION`. Redis is reached lazily, so a
//! broker starts (and serves nothing stale) while Redis is still down. This module
//! decides nothing about refreshing: `broker::fleet` does.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, Client, IntoConnectionInfo, Script};
use arc_swap::ArcSwapOption;

use super::crypto::Cipher;
use super::keycheck::KeyCheck;
use super::record::{self, Unreadable};
use super::{Fence, OpenError, Saved, StoreError, WriteKind};
use crate::config::{OnStoreUnavailable, RedisConfig};
use crate::secret::ExposeSecret;

/// A credential's record as read from Redis.
pub struct Record {
    /// The credential's state.
    pub saved: Saved,
    /// The version the record is at; the next write must name it.
    pub version: u64,
    /// Host and pid of the broker that wrote it.
    pub writer: String,
    /// The tag of the write that made it (`Fence::stamp`); `None` from older brokers.
    pub stamp: Option<String>,
}

/// One credential's entry in a poll of every version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polled {
    /// The record's version: 0 when there is none, `None` when the field is not a
    /// number (the record is damaged).
    pub version: Option<u64>,
    /// The stamp of the write that made it.
    pub stamp: Option<String>,
}

/// Why a record could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Redis cannot be reached, or this broker's key does not fit: nothing is lost.
    Unavailable(String),
    /// The record's bytes are broken.
    Corrupt { why: String, version: u64 },
}

/// Why Redis cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// It cannot be reached (yet): the broker waits for it.
    Unreachable(String),
    /// This broker's encryption key does not fit the records: it must not run.
    WrongKey(String),
}

/// Why one operation on the shared store did not happen. Each may be retried; the
/// broker meets them as `Error::Store` (Retry-After: 1 s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    /// No connection could be made (see `ConnectError`).
    #[error("{0}")]
    Connect(String),
    /// Redis answered with an error, or the connection broke.
    #[error("redis: {0}")]
    Command(String),
    /// No answer within twice the configured timeout.
    #[error("redis did not answer within {0:?}")]
    TimedOut(Duration),
    /// Subscribed, but a probe notice did not come back (an ACL that forbids the channel).
    #[error(
        "subscribed to `{0}`, but no notice arrives: does the Redis ACL allow this channel to the user?"
    )]
    NoNotices(String),
}

impl From<ConnectError> for Unanswered {
    fn from(error: ConnectError) -> Unanswered {
        Unanswered::Connect(error.into())
    }
}

impl From<Unanswered> for String {
    fn from(error: Unanswered) -> String {
        error.to_string()
    }
}

impl From<ConnectError> for String {
    fn from(error: ConnectError) -> String {
        match error {
            ConnectError::Unreachable(why) | ConnectError::WrongKey(why) => why,
        }
    }
}

/// The Redis backend.
pub struct RedisStore {
    pub(super) client: Client,
    /// Made on first use and then kept: it reconnects by itself, except when a
    /// reconnection fails other than on I/O (a refused password while Redis restarts
    /// with its users): it then keeps failing, so it is dropped (`failed`) and the next
    /// use connects anew, checking the key again.
    connection: ArcSwapOption<ConnectionManager>,
    /// Held while connecting, so concurrent first uses make one connection.
    connecting: tokio::sync::Mutex<()>,
    prefix: String,
    pub(super) cipher: Option<Cipher>,
    /// Limit for connecting and for each command.
    pub(super) timeout: Duration,
    /// Whether this broker's encryption key fits the fleet's.
    key_check: KeyCheck,
    /// Host and pid, written into each record.
    writer: String,
    /// How long a lease lives unless renewed (`state.lease_duration`).
    pub lease_duration: Duration,
    /// How often the broker compares versions, and retries a lease it waits for.
    pub poll_interval: Duration,
    /// Whether a broker refreshes without the lease when Redis is unreachable.
    pub on_unavailable: OnStoreUnavailable,
    save_script: Script,
    pub(super) renew_script: Script,
    pub(super) release_script: Script,
    pub(super) hold_script: Script,
}

/// Writes as `Fence` and `WriteKind` describe, with the key check beside every record:
/// stored again if Redis lost it, and the write refused (-4) if it is not the one this
/// broker verified. -1: another broker holds the lease (or, for a mark, this one does
/// not); -2: the record is not the version the write expects; -5: the credential is held
/// back after lost writes, so no refresh token may be marked as sent.
const SAVE: &str = r"
local check = redis.call('GET', KEYS[3])
if ARGV[9] == '' then
  if check then return -4 end
elseif not check then
  redis.call('SET', KEYS[3], ARGV[9])
elseif check ~= ARGV[9] then
  return -4
end
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] and (holder or ARGV[7] == 'mark') then return -1 end
local current = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
if ARGV[7] == 'token' then
  if current >= tonumber(ARGV[3]) then return -2 end
elseif current ~= tonumber(ARGV[2]) then
  return -2
end
if ARGV[7] == 'mark' and redis.call('GET', KEYS[4]) then return -5 end
redis.call('HSET', KEYS[1], 'version', ARGV[3], 'data', ARGV[4], 'stamp', ARGV[8])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. ARGV[3])
return tonumber(ARGV[3])
";

impl RedisStore {
    /// Reads the secrets and prepares the client; does not connect yet.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, OpenError> {
        let field = || "encryption_key".to_owned();
        let cipher = match &config.encryption_key {
            Some(source) => {
                let key = source.read().map_err(|source| OpenError::Secret {
                    field: field(),
                    source,
                })?;
                let cipher = Cipher::from_secret(&key).map_err(|source| OpenError::Key {
                    field: field(),
                    source,
                })?;
                Some(cipher)
            }
            None => None,
        };
        Ok(RedisStore {
            client: client(config)?,
            connection: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            prefix: config.key_prefix.clone(),
            cipher,
            timeout: config.timeout,
            key_check: KeyCheck::new(),
            writer: writer(),
            lease_duration: config.lease_duration,
            poll_interval: config.poll_interval,
            on_unavailable: config.on_unavailable,
            save_script: Script::new(SAVE),
            renew_script: Script::new(super::lease::RENEW),
            release_script: Script::new(super::lease::RELEASE),
            hold_script: Script::new(super::lease::HOLD),
        })
    }

    /// Connects (if not yet) and checks the encryption key against the fleet's.
    pub async fn check(&self) -> Result<(), ConnectError> {
        self.connection().await.map(|_| ())
    }

    pub(super) async fn connection(&self) -> Result<ConnectionManager, ConnectError> {
        let connect = async {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(self.timeout)
                .set_response_timeout(self.timeout)
                .set_number_of_retries(1)
                .set_max_delay(1000);
            let manager = ConnectionManager::new_with_config(self.client.clone(), config)
                .await
                .map_err(|e| ConnectError::Unreachable(format!("cannot connect to redis: {e}")))?;
            self.check_key(manager.clone()).await?;
            Ok(manager)
        };
        if let Some(made) = self.connection.load_full() {
            return Ok((*made).clone());
        }
        let _connecting = self.connecting.lock().await;
        if let Some(made) = self.connection.load_full() {
            return Ok((*made).clone());
        }
        let made = self
            .limit(connect)
            .await
            .map_err(|e| ConnectError::Unreachable(e.to_string()))??;
        self.connection.store(Some(Arc::new(made.clone())));
        Ok(made)
    }

    /// A command's error. One that the connection cannot recover from by itself drops
    /// it, so the next use connects anew.
    pub(super) fn failed(&self, error: ::redis::RedisError) -> Unanswered {
        if error.is_unrecoverable_error() && !error.is_io_error() {
            self.connection.store(None);
        }
        Unanswered::Command(error.to_string())
    }

    /// Bounds one operation by the configured timeout.
    pub(super) async fn limit<T>(&self, work: impl Future<Output = T>) -> Result<T, Unanswered> {
        tokio::time::timeout(self.timeout * 2, work)
            .await
            .map_err(|_| Unanswered::TimedOut(self.timeout * 2))
    }

    /// The first broker to connect stores a sealed constant; every later one must open
    /// it, so a broker with the wrong key fails at once instead of on each record.
    async fn check_key(&self, mut conn: ConnectionManager) -> Result<(), ConnectError> {
        let key = self.key("key-check");
        let verified = self
            .key_check
            .verify(&mut conn, &key, self.cipher.as_ref(), &self.prefix);
        self.limit(verified)
            .await
            .map_err(|e| ConnectError::Unreachable(e.to_string()))?
    }

    /// Resolves once this broker's encryption key is found not to fit the fleet's, at
    /// start-up or later; the broker must then stop.
    pub async fn wrong_key(&self) -> String {
        self.key_check.failed().await
    }

    pub(super) fn key(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    pub(super) fn record_key(&self, name: &str) -> String {
        self.key(&format!("record:{name}"))
    }

    pub(super) fn lease_key(&self, name: &str) -> String {
        self.key(&format!("lease:{name}"))
    }

    pub(super) fn hold_key(&self, name: &str) -> String {
        self.key(&format!("hold:{name}"))
    }

    /// The pub/sub channel of change notices.
    pub fn channel(&self) -> String {
        self.key("changes")
    }

    /// Associated data of a sealed record: its key name and version.
    fn context(&self, name: &str, version: u64) -> String {
        format!("{}#{version}", self.record_key(name))
    }

    /// A credential's record, or `None` when there is none.
    pub async fn read(&self, name: &str) -> Result<Option<Record>, ReadError> {
        let mut conn = self
            .connection()
            .await
            .map_err(|e| ReadError::Unavailable(e.into()))?;
        let fields = conn.hget(self.record_key(name), &["version", "data", "stamp"]);
        let (version, data, stamp): (Option<String>, Option<Vec<u8>>, Option<String>) = self
            .limit(fields)
            .await
            .map_err(|e| ReadError::Unavailable(e.into()))?
            .map_err(|e| ReadError::Unavailable(self.failed(e).into()))?;
        let Some(version) = version else {
            return Ok(None);
        };
        let corrupt = |why: String, version| ReadError::Corrupt {
            why: format!("the record of `{name}` in redis: {why}"),
            version,
        };
        // The write script reads a version that is not a number as 0.
        let version = version
            .parse::<u64>()
            .map_err(|_| corrupt("its version is not a number".into(), 0))?;
        let data = zeroize::Zeroizing::new(
            data.ok_or_else(|| corrupt(format!("version {version} has no data"), version))?,
        );
        match record::decode(
            name,
            &self.context(name, version),
            &data,
            self.cipher.as_ref(),
        ) {
            Ok((saved, writer)) => Ok(Some(Record {
                saved,
                version,
                writer,
                stamp,
            })),
            Err(Unreadable::Key(why)) => Err(ReadError::Unavailable(format!(
                "the record of `{name}` in redis: {why}"
            ))),
            Err(Unreadable::Corrupt(why)) => {
                Err(corrupt(format!("version {version}: {why}"), version))
            }
        }
    }

    /// Writes `saved` as version `fence.next` if the lease and the record's version
    /// allow it (see `WriteKind`); returns the new version.
    pub async fn save(&self, name: &str, saved: &Saved, fence: &Fence) -> Result<u64, StoreError> {
        let lease = fence.lease.as_deref().ok_or_else(|| {
            StoreError::Fenced("no refresh lease is held; the shared record is not written".into())
        })?;
        let data = record::encode(
            name,
            &self.context(name, fence.next),
            saved,
            &self.writer,
            self.cipher.as_ref(),
        )
        .map_err(StoreError::Unavailable)?;
        let data = zeroize::Zeroizing::new(data);
        let mut answer = self.save_once(name, lease, &data, fence).await?;
        if answer == -4 {
            // The key check changed: Redis lost it and another broker stored its own.
            // Ours opens it (the same key): write again. Otherwise this broker stops.
            let conn = self
                .connection()
                .await
                .map_err(|e| StoreError::Unavailable(e.into()))?;
            self.check_key(conn)
                .await
                .map_err(|e| StoreError::Unavailable(e.into()))?;
            answer = self.save_once(name, lease, &data, fence).await?;
        }
        answer_of_save(answer)
    }

    async fn save_once(
        &self,
        name: &str,
        lease: &str,
        data: &[u8],
        fence: &Fence,
    ) -> Result<i64, StoreError> {
        // Connecting verifies the key check first.
        let mut conn = self
            .connection()
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))?;
        let check = self.key_check.expected().ok_or_else(|| {
            StoreError::Unavailable("the key check has not been verified yet".into())
        })?;
        let kind = match fence.kind {
            WriteKind::Mark => "mark",
            WriteKind::Token => "token",
            WriteKind::Other => "other",
        };
        let mut call = self.save_script.prepare_invoke();
        call.key(self.record_key(name))
            .key(self.lease_key(name))
            .key(self.key("key-check"))
            .key(self.hold_key(name))
            .arg(lease)
            .arg(fence.expected)
            .arg(fence.next)
            .arg(data)
            .arg(self.channel())
            .arg(name)
            .arg(kind)
            .arg(&fence.stamp)
            .arg(check);
        self.limit(call.invoke_async(&mut conn))
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))?
            .map_err(|e| StoreError::Unavailable(self.failed(e).into()))
    }

    /// The record version and stamp of each credential, in one round trip.
    pub async fn versions(&self, names: &[String]) -> Result<Vec<Polled>, String> {
        let mut conn = self.connection().await?;
        let mut pipe = ::redis::pipe();
        for name in names {
            pipe.hget(self.record_key(name), &["version", "stamp"]);
        }
        let fields: Vec<(Option<String>, Option<String>)> = self
            .limit(pipe.query_async(&mut conn))
            .await?
            .map_err(|e| self.failed(e))?;
        Ok(fields
            .into_iter()
            .map(|(version, stamp)| Polled {
                version: version.map_or(Some(0), |v| v.parse().ok()),
                stamp,
            })
            .collect())
    }
}

/// The client: the URL, the ACL user and password from their sources, and for
/// `rediss://` with `ca_file`, that CA instead of the built-in roots.
fn client(config: &RedisConfig) -> Result<Client, OpenError> {
    let mut info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(OpenError::Url)?;
    let secret = |field: &str| {
        let field = field.to_owned();
        move |source| OpenError::Secret { field, source }
    };
    if let Some(source) = &config.username {
        let user = source.read().map_err(secret("username"))?;
        info.redis.username = Some(user.expose_secret().to_owned());
    }
    if let Some(source) = &config.password {
        let password = source.read().map_err(secret("password"))?;
        info.redis.password = Some(password.expose_secret().to_owned());
    }
    match &config.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| OpenError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certificates = ::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            Client::build_with_tls(info, certificates)
        }
        None => Client::open(info),
    }
    .map_err(OpenError::Url)
}

/// What the SAVE script's answer means.
fn answer_of_save(answer: i64) -> Result<u64, StoreError> {
    let refused = |why: &str| Err(StoreError::Fenced(why.to_owned()));
    match answer {
        -1 => refused(
            "this broker no longer holds the refresh lease (it ran out, and another broker \
             holds it), so its write was refused",
        ),
        -2 => refused("another broker wrote a newer record, so this broker's write was refused"),
        -4 => Err(StoreError::Unavailable(
            "the key check in redis changed while writing; will try again".into(),
        )),
        -5 => refused(
            "refreshes of this credential are held back for a while after redis lost writes",
        ),
        version => Ok(version.unsigned_abs()),
    }
}

pub(super) fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(u128::from(u64::MAX)) as u64
}

/// `host:pid`, to tell in a record which broker wrote it.
fn writer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{}:{}", host.trim(), std::process::id())
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("encrypted", &self.cipher.is_some())
            .field("lease_duration", &self.lease_duration)
            .finish_non_exhaustive()
    }
}
