//! The proactive side: one lightweight task per credential that sleeps until the next
//! thing is due (the jittered refresh point, a backoff retry, or a bootstrap re-check)
//! and then asks for a refresh through the same single flight as every request.
//! A sleeping task is a timer-wheel entry, not a busy loop; it wakes early only when
//! `Credential::wake` says the schedule changed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::credential::{Credential, Want};

/// How long to sleep when only a notification can change anything (a flight running).
const IDLE: Duration = Duration::from_secs(3600);

/// Runs until shutdown.
pub(super) async fn run(credential: Arc<Credential>) {
    let shutdown = credential.stop.clone();
    loop {
        let wait = credential.until_due(SystemTime::now());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = credential.wake.notified() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        let in_reauth = credential.lock().reauth.is_some();
        if in_reauth && !credential.check_bootstrap() {
            continue;
        }
        // The result is published to every waiter and logged in `finish`.
        let _ = credential.get(Want::Timer).await;
    }
}

impl Credential {
    /// Time until the timer has something to do.
    fn until_due(&self, now: SystemTime) -> Duration {
        let inner = self.lock();
        if inner.flight.is_some() {
            return IDLE;
        }
        if inner.reauth.is_some() {
            return self.spec.bootstrap_poll;
        }
        // A retry time already past must not count, or a token that is not yet due
        // would make this loop spin.
        let due = match (
            inner.retry_at.filter(|at| *at > now),
            self.current.load_full(),
        ) {
            (Some(retry_at), _) => retry_at,
            (None, Some(token))
                if inner.restored
                    && inner.unsaved.is_none()
                    && inner.unanswered_since.is_none() =>
            {
                token.refresh_at
            }
            _ => now,
        };
        due.duration_since(now).unwrap_or_default()
    }
}
