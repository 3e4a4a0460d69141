//! A credential's published versions as a channel: what long polls, event streams and
//! file sinks are built on.
//!
//! Each credential holds one `tokio::sync::watch` sender of `Published`, which
//! `publish` and `withdraw` replace; a subscriber sees the newest value, never a stale
//! one after it, and a version published between subscribing and looking is never
//! missed. Nothing runs per credential while nobody subscribes. The read path does not
//! use the channel: it loads `Credential::current`, which is set before each send.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::credential::Credential;
use crate::token::Token;

/// What a credential last published.
#[derive(Clone, Default)]
pub enum Published {
    /// Nothing yet in this process.
    #[default]
    Nothing,
    /// A token version, published once it is stored durably (see `sink` for the two
    /// cases the broker serves without: `refresh_locally`, and chainless grants).
    Token(Arc<Token>),
    /// The published token was withdrawn (the IdP refused its chain), or a stopped
    /// chain was restored: whatever holds a copy of it must let it go.
    Withdrawn,
}

impl Credential {
    /// The published versions, from the newest one on. The channel closes when the
    /// credential is dropped (after a reload replaced or removed it).
    pub fn versions(&self) -> watch::Receiver<Published> {
        self.versions.subscribe()
    }

    /// Cancelled when the credential stops (shutdown, or a reload replaced or removed
    /// it); cancelling it stops nothing else.
    pub fn stop_signal(&self) -> CancellationToken {
        self.stop.child_token()
    }

    /// The first published version whose id is not `seen`; `None` when `until` passes,
    /// the token is withdrawn, or the credential stops (shutdown, or a reload replaced
    /// or removed it).
    pub async fn next_version(&self, seen: u64, until: Instant) -> Option<Arc<Token>> {
        let mut versions = self.versions();
        let mut woken = false;
        loop {
            match self.current() {
                Some(token) if token.version() != seen => return Some(token),
                // Only a withdrawal wakes watchers and leaves no token.
                None if woken => return None,
                _ => {}
            }
            tokio::select! {
                changed = versions.changed() => match changed {
                    Ok(()) => woken = true,
                    Err(_) => return None,
                },
                () = tokio::time::sleep_until(until) => return None,
                () = self.stop.cancelled() => return None,
            }
        }
    }

    /// Whether the credential stopped: its watchers end (a reload's successor, if any,
    /// is found by name again).
    pub fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}
