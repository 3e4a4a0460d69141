//! Waiting for a credential's next token version: what long polls and event streams
//! are built on.
//!
//! Each credential has one inline `Notify` that `publish` wakes; a watcher registers
//! with it before it compares versions, so a version published in between is never
//! missed. Nothing runs per credential while nobody watches.

use std::sync::Arc;

use tokio::time::Instant;

use super::credential::Credential;
use crate::token::Token;

impl Credential {
    /// The first published version whose id is not `seen`; `None` when `until` passes,
    /// the token is withdrawn, or the credential stops (shutdown, or a reload replaced
    /// or removed it).
    pub async fn next_version(&self, seen: u64, until: Instant) -> Option<Arc<Token>> {
        let mut woken = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.current() {
                Some(token) if token.version() != seen => return Some(token),
                // Only a withdrawal wakes watchers and leaves no token.
                None if woken => return None,
                _ => {}
            }
            tokio::select! {
                () = &mut notified => woken = true,
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
