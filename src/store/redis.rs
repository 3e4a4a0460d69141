//! The shared backend: one record per credential in Redis, written only by the broker
//! that holds the credential's lease and only over the version it read (fencing), with
//! a change notice on a pub/sub channel after every write.
//!
//! Keys, all under `key_prefix`: `record:NAME`, a hash of `version` and `data` (the
//! record, sealed when a key is configured); `lease:NAME`, the lease token with a TTL;
//! `key-check`, a sealed constant that tells a wrong `encryption_key` at once. Channel
//! `changes` carries `NAME VERSION`. Redis is reached lazily, so a broker starts (and
//! serves nothing stale) while Redis is still down. This module decides nothing about
//! refreshing: `broker::fleet` does.

use std::fmt;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, Client, IntoConnectionInfo, Script};
use futures_util::{Stream, StreamExt};
use tokio::sync::OnceCell;

use super::crypto::Cipher;
use super::record::{self, Unreadable};
use super::{Fence, Saved, StoreError};
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
}

/// A change notice: the credential's record (or lease) changed; `version` is the
/// record's version after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The credential.
    pub name: String,
    /// Its record's version after the change.
    pub version: u64,
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

impl From<ConnectError> for String {
    fn from(error: ConnectError) -> String {
        match error {
            ConnectError::Unreachable(why) | ConnectError::WrongKey(why) => why,
        }
    }
}

/// The Redis backend.
pub struct RedisStore {
    client: Client,
    /// Made on first use and then kept: it reconnects by itself.
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    cipher: Option<Cipher>,
    /// Limit for connecting and for each command.
    timeout: Duration,
    /// Host and pid, written into each record.
    writer: String,
    /// How long a lease lives unless renewed (`state.lease_duration`).
    pub lease_duration: Duration,
    /// How often the broker compares versions, and retries a lease it waits for.
    pub poll_interval: Duration,
    /// Whether a broker refreshes without the lease when Redis is unreachable.
    pub on_unavailable: OnStoreUnavailable,
    save_script: Script,
    renew_script: Script,
    release_script: Script,
}

/// Writes only for the lease holder and only over the version it read.
const SAVE: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[2]) then return -2 end
redis.call('HSET', KEYS[1], 'version', ARGV[3], 'data', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. ARGV[3])
return tonumber(ARGV[3])
";

/// Extends the lease only while it is still ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Compare-and-delete, then a notice so waiting brokers try the lease at once.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local version = redis.call('HGET', KEYS[2], 'version') or '0'
redis.call('PUBLISH', ARGV[2], ARGV[3] .. ' ' .. version)
return 1
";

/// What `key-check` holds, sealed.
const KEY_CHECK: &[u8] = b"token-broker key check";

impl RedisStore {
    /// Reads the secrets and prepares the client; does not connect yet.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, String> {
        let cipher = match &config.encryption_key {
            Some(source) => Some(
                source
                    .read()
                    .and_then(|key| Cipher::from_secret(&key))
                    .map_err(|e| format!("state.encryption_key: {e}"))?,
            ),
            None => None,
        };
        Ok(RedisStore {
            client: client(config)?,
            connection: OnceCell::new(),
            prefix: config.key_prefix.clone(),
            cipher,
            timeout: config.timeout,
            writer: writer(),
            lease_duration: config.lease_duration,
            poll_interval: config.poll_interval,
            on_unavailable: config.on_unavailable,
            save_script: Script::new(SAVE),
            renew_script: Script::new(RENEW),
            release_script: Script::new(RELEASE),
        })
    }

    /// Connects (if not yet) and checks the encryption key against the fleet's.
    pub async fn check(&self) -> Result<(), ConnectError> {
        self.connection().await.map(|_| ())
    }

    async fn connection(&self) -> Result<ConnectionManager, ConnectError> {
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
        let made = self
            .connection
            .get_or_try_init(|| async {
                self.limit(connect)
                    .await
                    .map_err(ConnectError::Unreachable)
                    .and_then(|r| r)
            })
            .await?;
        Ok(made.clone())
    }

    /// Bounds one operation by the configured timeout.
    async fn limit<T>(&self, work: impl Future<Output = T>) -> Result<T, String> {
        tokio::time::timeout(self.timeout * 2, work)
            .await
            .map_err(|_| format!("redis did not answer within {:?}", self.timeout * 2))
    }

    /// The first broker to connect stores a sealed constant; every later one must open
    /// it, so a broker with the wrong key fails at once instead of on each record.
    async fn check_key(&self, mut conn: ConnectionManager) -> Result<(), ConnectError> {
        let key = self.key("key-check");
        let fail = |e: ::redis::RedisError| ConnectError::Unreachable(format!("redis: {e}"));
        let mut stored: Option<Vec<u8>> = conn.get(&key).await.map_err(fail)?;
        if let (Some(cipher), None) = (&self.cipher, &stored) {
            let sealed = cipher
                .seal(&key, KEY_CHECK)
                .map_err(ConnectError::Unreachable)?;
            let only_new =
                ::redis::SetOptions::default().conditional_set(::redis::ExistenceCheck::NX);
            let _: Option<String> = conn
                .set_options(&key, sealed, only_new)
                .await
                .map_err(fail)?;
            // Read back: a broker with another key may have stored its check first.
            stored = conn.get(&key).await.map_err(fail)?;
        }
        match (&self.cipher, stored) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(ConnectError::WrongKey(format!(
                "the records under key prefix `{}` are encrypted; set state.encryption_key \
                 to the key the other brokers use",
                self.prefix
            ))),
            (Some(cipher), stored) => match stored.map(|sealed| cipher.open(&key, &sealed)) {
                Some(Ok(plain)) if plain.as_slice() == KEY_CHECK => Ok(()),
                _ => Err(ConnectError::WrongKey(format!(
                    "state.encryption_key is not the key the records under key prefix `{}` \
                     were written with",
                    self.prefix
                ))),
            },
        }
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    fn record_key(&self, name: &str) -> String {
        self.key(&format!("record:{name}"))
    }

    fn lease_key(&self, name: &str) -> String {
        self.key(&format!("lease:{name}"))
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
        let fields: (Option<u64>, Option<Vec<u8>>) = self
            .limit(conn.hget(self.record_key(name), &["version", "data"]))
            .await
            .map_err(ReadError::Unavailable)?
            .map_err(|e| ReadError::Unavailable(format!("redis: {e}")))?;
        let (Some(version), Some(data)) = fields else {
            return Ok(None);
        };
        let data = zeroize::Zeroizing::new(data);
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
            })),
            Err(Unreadable::Key(why)) => Err(ReadError::Unavailable(format!(
                "the record of `{name}` in redis: {why}"
            ))),
            Err(Unreadable::Corrupt(why)) => Err(ReadError::Corrupt {
                why: format!("the record of `{name}` in redis (version {version}): {why}"),
                version,
            }),
        }
    }

    /// Writes `saved` as version `fence.next` if `fence.lease` is still held and the
    /// record is still at `fence.expected`; returns the new version.
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
        let mut conn = self
            .connection()
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))?;
        let mut call = self.save_script.prepare_invoke();
        call.key(self.record_key(name))
            .key(self.lease_key(name))
            .arg(lease)
            .arg(fence.expected)
            .arg(fence.next)
            .arg(data.as_slice())
            .arg(self.channel())
            .arg(name);
        let answer: i64 = self
            .limit(call.invoke_async(&mut conn))
            .await
            .map_err(StoreError::Unavailable)?
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        match answer {
            -1 => Err(StoreError::Fenced(
                "this broker no longer holds the refresh lease (it ran out), so its write was \
                 refused"
                    .into(),
            )),
            -2 => Err(StoreError::Fenced(
                "another broker wrote a newer record, so this broker's write was refused".into(),
            )),
            version => Ok(version as u64),
        }
    }

    /// Takes the lease if nobody holds it.
    pub async fn acquire(&self, name: &str, token: &str) -> Result<bool, String> {
        let mut conn = self.connection().await?;
        let options = ::redis::SetOptions::default()
            .conditional_set(::redis::ExistenceCheck::NX)
            .with_expiration(::redis::SetExpiry::PX(millis(self.lease_duration)));
        let set: Option<String> = self
            .limit(conn.set_options(self.lease_key(name), token, options))
            .await?
            .map_err(|e| format!("redis: {e}"))?;
        Ok(set.is_some())
    }

    /// Whether any broker holds the lease.
    pub async fn lease_held(&self, name: &str) -> Result<bool, String> {
        let mut conn = self.connection().await?;
        let holder: Option<String> = self
            .limit(conn.get(self.lease_key(name)))
            .await?
            .map_err(|e| format!("redis: {e}"))?;
        Ok(holder.is_some())
    }

    /// Extends the lease; `false` when it is no longer ours.
    pub async fn renew(&self, name: &str, token: &str) -> Result<bool, String> {
        let mut conn = self.connection().await?;
        let mut call = self.renew_script.prepare_invoke();
        call.key(self.lease_key(name))
            .arg(token)
            .arg(millis(self.lease_duration));
        let renewed: i64 = self
            .limit(call.invoke_async(&mut conn))
            .await?
            .map_err(|e| format!("redis: {e}"))?;
        Ok(renewed == 1)
    }

    /// Gives the lease up if it is still ours, and tells the waiting brokers.
    pub async fn release(&self, name: &str, token: &str) -> Result<(), String> {
        let mut conn = self.connection().await?;
        let mut call = self.release_script.prepare_invoke();
        call.key(self.lease_key(name))
            .key(self.record_key(name))
            .arg(token)
            .arg(self.channel())
            .arg(name);
        let _: i64 = self
            .limit(call.invoke_async(&mut conn))
            .await?
            .map_err(|e| format!("redis: {e}"))?;
        Ok(())
    }

    /// The record version of each credential (0 when it has none), in one round trip.
    pub async fn versions(&self, names: &[String]) -> Result<Vec<u64>, String> {
        let mut conn = self.connection().await?;
        let mut pipe = ::redis::pipe();
        for name in names {
            pipe.hget(self.record_key(name), "version");
        }
        let versions: Vec<Option<u64>> = self
            .limit(pipe.query_async(&mut conn))
            .await?
            .map_err(|e| format!("redis: {e}"))?;
        Ok(versions
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// Subscribes to change notices on a connection of its own. The stream ends when
    /// that connection drops; the caller subscribes again. A probe published right
    /// after subscribing must come back: Redis refuses a channel the ACL forbids, and
    /// without the probe that refusal would go unnoticed.
    pub async fn subscribe(&self) -> Result<impl Stream<Item = Notice> + use<>, String> {
        let mut conn = self.connection().await?;
        let mut pubsub = self
            .limit(self.client.get_async_pubsub())
            .await?
            .map_err(|e| format!("redis: {e}"))?;
        self.limit(pubsub.subscribe(self.channel()))
            .await?
            .map_err(|e| format!("redis: {e}"))?;
        let mut messages = pubsub.into_on_message();
        let probe = format!("~probe {}", crate::secret::hex(&rand::random::<[u8; 8]>()));
        let _: i64 = self
            .limit(conn.publish(self.channel(), &probe))
            .await?
            .map_err(|e| format!("redis: {e}"))?;
        let heard = async {
            while let Some(message) = messages.next().await {
                if message.get_payload::<String>().is_ok_and(|p| p == probe) {
                    return true;
                }
            }
            false
        };
        if !self.limit(heard).await.unwrap_or(false) {
            return Err(format!(
                "subscribed to `{}`, but no notice arrives: does the Redis ACL allow this \
                 channel to the user?",
                self.channel()
            ));
        }
        Ok(messages.filter_map(|message| async move {
            let text: String = message.get_payload().ok()?;
            let (name, version) = text.split_once(' ')?;
            Some(Notice {
                name: name.to_owned(),
                version: version.parse().ok()?,
            })
        }))
    }
}

/// The client: the URL, the ACL user and password from their sources, and for
/// `rediss://` with `ca_file`, that CA instead of the built-in roots.
fn client(config: &RedisConfig) -> Result<Client, String> {
    let mut info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("state.url: {e}"))?;
    if let Some(source) = &config.username {
        let user = source.read().map_err(|e| format!("state.username: {e}"))?;
        info.redis.username = Some(user.expose_secret().to_owned());
    }
    if let Some(source) = &config.password {
        let password = source.read().map_err(|e| format!("state.password: {e}"))?;
        info.redis.password = Some(password.expose_secret().to_owned());
    }
    match &config.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("state.ca_file {}: {e}", path.display()))?;
            let certificates = ::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            Client::build_with_tls(info, certificates)
        }
        None => Client::open(info),
    }
    .map_err(|e| format!("state.url: {e}"))
}

fn millis(duration: Duration) -> u64 {
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
