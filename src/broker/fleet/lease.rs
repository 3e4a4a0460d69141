//! Keeping the fleet's refresh lease while a refresh runs, and knowing when it is gone.
//!
//! A lease is renewed a quarter of its duration after the last renewal Redis confirmed,
//! and at once again after a renewal that failed, each attempt bounded by the time the
//! lease surely has left (measured from when the last confirmed renewal was sent, so
//! Redis' expiry is never earlier than this broker's). Once that time is up, or Redis
//! says the lease belongs to someone else, the lease is lost: the refresh token is then
//! not sent (`LeaseClock::held` is asked right before sending), and what the refresh
//! already got is written only where no newer record would be overwritten.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use super::Member;
use crate::broker::credential::{Credential, Outcome};
use crate::metrics::LeaseEvent;

/// A pause between renewal attempts after a failed one, so a refused connection does
/// not turn into a busy loop.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A lease this broker took: its token, and how long it surely lasts.
#[derive(Clone)]
pub(crate) struct Held {
    /// The random token stored in `lease:NAME`.
    pub token: String,
    pub clock: Arc<LeaseClock>,
}

impl Held {
    /// A lease taken by a request sent at `asked`.
    pub fn new(token: String, asked: Instant, duration: Duration) -> Held {
        Held {
            token,
            clock: Arc::new(LeaseClock {
                confirmed: Mutex::new(asked),
                duration,
                lost: AtomicBool::new(false),
            }),
        }
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("held", &self.clock.held())
            .finish_non_exhaustive()
    }
}

/// When a lease runs out, as far as this broker can know.
pub(crate) struct LeaseClock {
    /// When the last request that Redis confirmed (the acquire or a renewal) was sent.
    confirmed: Mutex<Instant>,
    duration: Duration,
    /// Redis said the lease is gone, or no renewal was confirmed in time.
    lost: AtomicBool,
}

impl LeaseClock {
    /// Whether the lease is surely still this broker's.
    pub fn held(&self) -> bool {
        !self.lost.load(Ordering::Acquire) && Instant::now() < self.until()
    }

    /// When the lease runs out unless renewed.
    pub fn until(&self) -> Instant {
        *self.lock() + self.duration
    }

    fn renewed(&self, sent: Instant) {
        *self.lock() = sent;
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        // A single assignment cannot leave the instant half-written.
        self.confirmed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Credential {
    /// Runs `work` while keeping `held` renewed. A lost lease does not stop the work
    /// (its IdP call may be out already); the IdP request checks the clock before it
    /// is sent, and the store refuses writes that the lease no longer allows.
    pub(super) async fn renewing(
        &self,
        member: &Member,
        held: &Held,
        work: impl Future<Output = Outcome>,
    ) -> Outcome {
        tokio::pin!(work);
        tokio::select! {
            outcome = &mut work => outcome,
            () = self.keep_renewed(member, held) => work.await,
        }
    }

    /// Renews until the lease is lost.
    async fn keep_renewed(&self, member: &Member, held: &Held) {
        let clock = &held.clock;
        let mut failing = false;
        loop {
            let next = if failing {
                Instant::now() + RETRY_PAUSE
            } else {
                clock.until() - member.redis.lease_duration * 3 / 4
            };
            tokio::time::sleep_until(next.into()).await;
            let left = clock.until().saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.lost_lease(clock, "redis confirmed no renewal before it ran out");
            }
            let sent = Instant::now();
            match member.redis.renew(self.name(), &held.token, left).await {
                Ok(true) => {
                    clock.renewed(sent);
                    failing = false;
                }
                Ok(false) => {
                    return self.lost_lease(clock, "it ran out before the refresh finished");
                }
                Err(e) => {
                    if !failing {
                        self.shared.metrics.store_error("lease");
                        warn!(credential = self.name(), error = %e, "could not renew the refresh lease; trying again");
                    }
                    failing = true;
                }
            }
        }
    }

    fn lost_lease(&self, clock: &LeaseClock, why: &str) {
        clock.lose();
        self.metrics.lease(LeaseEvent::Lost);
        warn!(
            credential = self.name(),
            why,
            "lost the refresh lease: the refresh token is not sent now if it was not yet, \
             and what the refresh got is written only where nothing newer is overwritten"
        );
    }
}
