//! The fleet's key check: a sealed constant under `key-check` that tells a broker with
//! the wrong `encryption_key` (or none) before it reads or writes a record.
//!
//! The first broker to connect stores it; every record write stores it again if Redis
//! lost it (the SAVE script in `redis`) and is refused if it changed, so a sealed record
//! never exists without the check. A broker that finds a check its key cannot open, at
//! start-up or at any time later, must stop: `failed` resolves then, and the daemon
//! exits. This module decides nothing about records.

use std::sync::Mutex;

use ::redis::AsyncCommands;
use ::redis::aio::ConnectionManager;
use tokio::sync::watch;

use super::crypto::Cipher;
use super::redis::ConnectError;

/// The stored check (`stored`) that `cipher` must open, or why this broker's key does
/// not fit.
fn verdict(
    key: &str,
    cipher: Option<&Cipher>,
    stored: Option<Vec<u8>>,
    prefix: &str,
) -> Result<Vec<u8>, String> {
    match (cipher, stored) {
        (None, None) => Ok(Vec::new()),
        (None, Some(_)) => Err(format!(
            "the records under key prefix `{prefix}` are encrypted; set state.encryption_key \
             to the key the other brokers use"
        )),
        (Some(cipher), Some(sealed))
            if cipher
                .open(key, &sealed)
                .is_ok_and(|plain| plain.as_slice() == KEY_CHECK) =>
        {
            Ok(sealed)
        }
        (Some(_), _) => Err(format!(
            "state.encryption_key is not the key the records under key prefix `{prefix}` were \
             written with (if Redis lost its data, a broker with another key may have stored \
             its key check first: stop that broker and delete `{key}`)"
        )),
    }
}

/// What `key-check` holds, sealed.
const KEY_CHECK: &[u8] = b"token-broker key check";

/// This broker's standing with the fleet's key check.
pub struct KeyCheck {
    /// The stored check this broker's key opened (empty for a fleet in clear); `None`
    /// until verified. Record writes must find exactly these bytes.
    verified: Mutex<Option<Vec<u8>>>,
    /// Why this broker's key does not fit, once that is known.
    wrong: watch::Sender<Option<String>>,
}

impl KeyCheck {
    pub fn new() -> KeyCheck {
        KeyCheck {
            verified: Mutex::new(None),
            wrong: watch::Sender::new(None),
        }
    }

    /// Stores the check if there is none, then opens the stored one with `cipher`.
    /// `key` is the check's Redis key (also the associated data of its sealing).
    pub async fn verify(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
        cipher: Option<&Cipher>,
        prefix: &str,
    ) -> Result<(), ConnectError> {
        let fail = |e: ::redis::RedisError| ConnectError::Unreachable(format!("redis: {e}"));
        let mut stored: Option<Vec<u8>> = conn.get(key).await.map_err(fail)?;
        if let (Some(cipher), None) = (cipher, &stored) {
            let sealed = cipher
                .seal(key, KEY_CHECK)
                .map_err(ConnectError::Unreachable)?;
            let only_new =
                ::redis::SetOptions::default().conditional_set(::redis::ExistenceCheck::NX);
            let _: Option<String> = conn
                .set_options(key, sealed, only_new)
                .await
                .map_err(fail)?;
            // Read back: a broker with another key may have stored its check first.
            stored = conn.get(key).await.map_err(fail)?;
        }
        let verdict = verdict(key, cipher, stored, prefix);
        match verdict {
            Ok(bytes) => {
                *self.lock() = Some(bytes);
                Ok(())
            }
            Err(why) => {
                self.wrong.send_replace(Some(why.clone()));
                Err(ConnectError::WrongKey(why))
            }
        }
    }

    /// The check a record write must find (empty: a fleet in clear, where none may
    /// exist); `None` before the check was verified.
    pub fn expected(&self) -> Option<Vec<u8>> {
        self.lock().clone()
    }

    /// Resolves once this broker's key is known not to fit, with the reason.
    pub async fn failed(&self) -> String {
        let mut rx = self.wrong.subscribe();
        // The borrow of the value ends here, so this future is `Send` (the daemon's
        // `run` is spawned by tests).
        let why = (rx.wait_for(Option::is_some).await).map(|why| why.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The sender lives as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        // A single assignment cannot leave the value half-written.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}
