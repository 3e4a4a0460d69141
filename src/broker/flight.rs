//! One refresh flight, from start to end: started under the credential's lock by
//! `Credential::decide` (the gate), run in its own task (so a client that hangs up
//! cancels nothing, and a panic still ends it), and finished once: the outcome is
//! published or the failure recorded with its backoff, and every waiter gets the one
//! result. What the flight does in between is `refresh` (and, with the shared store,
//! `fleet`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::{error, info, warn};

use super::Shared;
use super::coordinate::Settled;
use super::credential::{Credential, Decision, Inner, Outcome, Want};
use super::{schedule, state};
use crate::config::LostAnswer;
use crate::error::Error;
use crate::token::rfc3339;

impl Credential {
    /// Serves, or joins or starts the flight and waits for its outcome.
    pub(super) async fn wait_for(self: &Arc<Self>, want: &Want, arrived: SystemTime) -> Outcome {
        let rx = match self.decide(want, arrived, None) {
            Decision::Serve(token) => return Ok(token),
            Decision::Fail(error) => return Err(error),
            Decision::Wait(rx) => rx,
        };
        let Some(_slot) = WaitSlot::take(&self.shared) else {
            let error = Error::UpstreamUnavailable {
                reason: "too many requests are already waiting for refreshes".into(),
                retry_after: Duration::from_secs(1),
            };
            return self.stale_while_valid(want, error);
        };
        let waited = tokio::time::timeout(self.shared.request_timeout, wait(rx)).await;
        let outcome = waited.unwrap_or_else(|_| {
            Err(Error::UpstreamUnavailable {
                reason: format!(
                    "the refresh did not finish within request_timeout ({})",
                    crate::duration::format(self.shared.request_timeout)
                ),
                retry_after: Duration::from_secs(1),
            })
        });
        outcome.or_else(|error| self.stale_while_valid(want, error))
    }

    /// After a failed or slow refresh, a request still gets a token that has not
    /// expired; a rejected-token report never gets its rejected token back.
    pub(super) fn stale_while_valid(&self, want: &Want, error: Error) -> Outcome {
        match self.current.load_full() {
            Some(token) if state::still_serves(&token, want, SystemTime::now()) => Ok(token),
            _ => Err(error),
        }
    }

    pub(super) fn start_flight(
        self: &Arc<Self>,
        inner: &mut Inner,
        want: &Want,
        slot: Option<OwnedSemaphorePermit>,
    ) -> watch::Receiver<Option<Outcome>> {
        let (tx, rx) = watch::channel(None);
        inner.flight = Some(rx.clone());
        self.metrics.in_flight.set(1);
        let me = Arc::clone(self);
        let trigger = if inner.restored {
            want.trigger()
        } else {
            "startup"
        };
        let demanded = want.demands_refresh();
        let want = want.clone();
        let login = inner.login.as_ref().map(|l| l.adopted.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            // A panic must still end the flight, or the credential would stay "in
            // flight" forever and every later request would wait on it.
            let outcome = AssertUnwindSafe(me.refresh(&want))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(Error::UpstreamUnavailable {
                        reason: "internal error during the refresh".into(),
                        retry_after: Duration::from_secs(1),
                    })
                });
            // Once stored, a login's chain is the credential's: a failure after that
            // (a DPoP credential's first refresh with a proof) is a refresh failure.
            let adopted = login.is_some_and(|a| a.load(Ordering::Acquire));
            match outcome {
                // A login that could not be adopted left the chain as it was: it is
                // no refresh failure, and starts no backoff.
                Err(error) if want == Want::Login && !adopted => me.login_failed(error, tx),
                outcome => me.finish(outcome, tx, trigger, demanded, started.elapsed()),
            }
            drop(slot);
        });
        rx
    }

    /// Publishes the outcome, ends the flight and wakes every waiter.
    pub(super) fn finish(
        &self,
        mut outcome: Outcome,
        tx: watch::Sender<Option<Outcome>>,
        trigger: &'static str,
        demanded: bool,
        took: Duration,
    ) {
        let now = SystemTime::now();
        let mut inner = self.lock();
        // Another broker's token taken from the store is counted as adopted only.
        let Settled {
            adopted,
            held_until,
        } = self.coordinator.settle();
        inner.disputed = None;
        match &mut outcome {
            Ok(token) if adopted => self.publish(token.clone()),
            Ok(token) => {
                self.publish(token.clone());
                inner.failures = 0;
                inner.retry_at = None;
                inner.last_error = None;
                inner.last_refresh_at = Some(now);
                // Counted when a client's want made the IdP call (the first flight may
                // only have restored a stored token).
                let started = now.checked_sub(took).unwrap_or(now);
                if demanded && token.issued_at >= started {
                    inner.last_demanded_at = Some(now);
                }
                inner.refreshes_ok += 1;
                info!(
                    credential = self.name(),
                    trigger,
                    took_ms = took.as_millis() as u64,
                    result = "ok",
                    expires_at = %rfc3339(token.expires_at),
                    next_refresh_at = %rfc3339(token.refresh_at),
                    "refreshed"
                );
            }
            Err(error) => {
                inner.failures += 1;
                inner.refreshes_failed += 1;
                let delay = if self.chainless() && matches!(error, Error::ReauthRequired { .. }) {
                    self.refused_delay(inner.failures)
                } else {
                    schedule::backoff(
                        inner.failures,
                        self.spec.backoff_initial,
                        self.spec.backoff_max,
                        error.retry_after(),
                        rand::random::<f64>(),
                    )
                };
                let delay = match held_until {
                    // Held back by the fleet: nothing to gain before then.
                    Some(until) => until.duration_since(now).unwrap_or_default(),
                    None => self.within_grace(&inner, delay, now),
                };
                if let Error::UpstreamUnavailable { retry_after, .. }
                | Error::HeldBack { retry_after, .. } = error
                {
                    *retry_after = delay;
                }
                inner.retry_at = Some(now.checked_add(delay).unwrap_or(now));
                inner.last_error = Some((error.clone(), now));
                self.log_failure(error, trigger, took, delay);
            }
        }
        let result = if outcome.is_ok() { "ok" } else { "error" };
        if !adopted {
            self.metrics.refreshed(trigger, result);
        }
        inner.flight = None;
        self.metrics.in_flight.set(0);
        drop(inner);
        // Waiters may all have gone; the outcome is published either way.
        let _ = tx.send(Some(outcome));
        self.schedule_changed();
    }

    /// After a lost answer, the resend must land inside the IdP's reuse grace.
    fn within_grace(&self, inner: &Inner, delay: Duration, now: SystemTime) -> Duration {
        match inner.unanswered_since {
            Some(since) if self.spec.lost_answer == LostAnswer::RetryWithinGrace => {
                let end = since + self.spec.idp_reuse_grace;
                delay.min(end.duration_since(now).unwrap_or_default() / 2)
            }
            _ => delay,
        }
    }

    fn log_failure(&self, error: &Error, trigger: &str, took: Duration, delay: Duration) {
        if let (Error::ReauthRequired { .. }, true) = (error, self.chainless()) {
            error!(
                credential = self.name(),
                trigger,
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "the identity provider refused the credential; asking again after the delay, or as soon as an input or setting changes"
            );
        } else if let Error::ReauthRequired { .. } = error {
            error!(
                credential = self.name(),
                trigger,
                error = %error,
                "the credential's refresh-token chain stopped; no further calls until a new bootstrap token appears"
            );
        } else {
            warn!(
                credential = self.name(),
                trigger,
                took_ms = took.as_millis() as u64,
                result = "error",
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "refresh failed"
            );
        }
    }
}

/// Waits for a flight's result. A dropped sender (the task panicked) is an error, not
/// a hang.
pub(super) async fn wait(mut rx: watch::Receiver<Option<Outcome>>) -> Outcome {
    match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone().unwrap_or_else(|| Err(Error::ShuttingDown)),
        Err(_) => Err(Error::UpstreamUnavailable {
            reason: "the refresh task ended without a result".into(),
            retry_after: Duration::from_secs(1),
        }),
    }
}

/// One of the `max_waiting_requests` places; released on drop, however the wait ends.
struct WaitSlot<'a>(&'a Shared);

impl<'a> WaitSlot<'a> {
    fn take(shared: &'a Shared) -> Option<WaitSlot<'a>> {
        let before = shared.waiting.fetch_add(1, Ordering::AcqRel);
        let slot = WaitSlot(shared);
        (before < shared.max_waiting).then_some(slot)
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
