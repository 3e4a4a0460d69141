//! Keeping each broker's copy of the shared records current between flights: change
//! notices over pub/sub bring another broker's new token as soon as it is written, and a
//! poll of every record's version each `poll_interval` catches what a notice missed (a
//! dropped subscription, a restart of Redis, an ACL that forbids the channel).
//!
//! A newer, settled record is adopted through `Credential::publish` and
//! `Credential::schedule_changed`; a record older than this broker's state, damaged, or
//! from another history (Redis lost writes) is written back under a lease; a new token
//! held back while Redis was unreachable gets a flight at once, so it is written before
//! another broker gives up on the refresh that got it. A running flight is left alone:
//! it reads the record itself.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tracing::{debug, info, warn};

use super::Member;
use super::Taker;
use super::lease::Held;
use super::reconcile::Reconciled;
use crate::broker::credential::Credential;
use crate::broker::{Broker, schedule};
use crate::secret::hex;
use crate::store::{Notice, Polled, ReadError, Record, RedisStore};

impl Broker {
    /// With the shared store: listens for change notices and polls; a no-op otherwise.
    pub fn watch_store(self: &Arc<Self>) {
        let Some(redis) = self.shared.store.shared().cloned() else {
            return;
        };
        tokio::spawn(listen(self.clone(), redis.clone()));
        tokio::spawn(poll(self.clone(), redis));
    }
}

/// Subscribes, and subscribes again whenever the subscription drops, until shutdown.
async fn listen(broker: Arc<Broker>, redis: Arc<RedisStore>) {
    let shutdown = broker.shared.shutdown.clone();
    let mut failures = 0u32;
    let mut first = true;
    loop {
        match redis.subscribe().await {
            Ok(notices) => {
                // What changed while no subscription was up.
                catch_up(&broker, &redis).await;
                // Said once the catch-up is done: from here on, news comes by notice.
                if std::mem::replace(&mut first, false) {
                    info!("subscribed to change notices");
                } else if failures > 0 {
                    info!("subscribed to change notices again");
                }
                failures = 0;
                if follow(&broker, notices).await.is_none() {
                    return;
                }
                broker.shared.metrics.store_error("subscribe");
                warn!("the change-notice subscription dropped; subscribing again");
            }
            Err(e) => {
                failures += 1;
                broker.shared.metrics.store_error("subscribe");
                if failures == 1 {
                    warn!(error = %e, "cannot subscribe to change notices; polling meanwhile");
                } else {
                    debug!(error = %e, "cannot subscribe to change notices");
                }
            }
        }
        let delay = schedule::backoff(
            failures.max(1),
            Duration::from_millis(200),
            Duration::from_secs(10),
            None,
            rand::random::<f64>(),
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Handles notices until the subscription drops (`Some`) or shutdown (`None`).
async fn follow(broker: &Arc<Broker>, notices: impl Stream<Item = Notice>) -> Option<()> {
    tokio::pin!(notices);
    loop {
        tokio::select! {
            notice = notices.next() => match notice {
                Some(notice) => on_notice(broker, notice),
                None => return Some(()),
            },
            () = broker.shared.shutdown.cancelled() => return None,
        }
    }
}

/// The polling fallback.
async fn poll(broker: Arc<Broker>, redis: Arc<RedisStore>) {
    let shutdown = broker.shared.shutdown.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(redis.poll_interval) => {}
            () = shutdown.cancelled() => return,
        }
        catch_up(&broker, &redis).await;
    }
}

fn on_notice(broker: &Arc<Broker>, notice: Notice) {
    let Ok(credential) = broker.credential(&notice.name) else {
        return;
    };
    // A flight waiting for the lease tries again (its holder wrote or let go).
    credential.remote.notify_waiters();
    let Some(member) = credential.coordinator.fleet() else {
        return;
    };
    let newer = {
        let mut fleet = member.position();
        fleet.observe(notice.version, None);
        notice.version > fleet.effective()
    };
    if newer {
        tokio::spawn(async move {
            if let Some(member) = credential.coordinator.fleet() {
                credential.fetch_record(member, "notice").await;
            }
        });
    }
}

/// Compares every credential's version (and stamp) with Redis in one round trip.
async fn catch_up(broker: &Broker, redis: &RedisStore) {
    let credentials = broker.credentials();
    let names: Vec<String> = credentials.iter().map(|c| c.spec.name.clone()).collect();
    let polled = match redis.versions(&names).await {
        Ok(polled) => polled,
        Err(e) => {
            broker.shared.metrics.store_error("poll");
            debug!(error = %e, "cannot poll the shared records");
            return;
        }
    };
    for (credential, polled) in credentials.into_iter().zip(polled) {
        let Some(member) = credential.coordinator.fleet() else {
            continue;
        };
        let step = credential.next_step(member, &polled);
        if step != Step::None {
            credential.remote.notify_waiters();
        }
        match step {
            Step::None => {}
            Step::Adopt => credential.fetch_record(member, "poll").await,
            Step::WriteBack => credential.sync_back(member).await,
            Step::Flight => {
                // A new token held back while Redis could not be reached: write it now,
                // before another broker decides the refresh that got it was lost.
                credential.lock().retry_at = None;
                credential.schedule_changed();
            }
        }
    }
}

/// What a poll asks of a credential.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    None,
    /// The record is newer: take it.
    Adopt,
    /// The record is behind this broker's state, damaged, or from another history.
    WriteBack,
    /// A token is held back: a flight writes it.
    Flight,
}

impl Credential {
    /// Compares a polled version with this broker's state.
    fn next_step(&self, member: &Member, polled: &Polled) -> Step {
        let inner = self.lock();
        if !inner.restored {
            return Step::None;
        }
        let Some(version) = polled.version else {
            return Step::WriteBack;
        };
        let mut fleet = member.position();
        fleet.observe(version, polled.stamp.as_deref());
        if inner.unsaved.is_some() {
            return if inner.flight.is_none() {
                Step::Flight
            } else {
                Step::None
            };
        }
        if version > fleet.effective() {
            Step::Adopt
        } else if version < fleet.version
            || fleet.unsynced
            || (version == fleet.version && polled.stamp != fleet.stamp)
        {
            Step::WriteBack
        } else {
            Step::None
        }
    }

    /// Reads the record and adopts it if it is newer and settled.
    async fn fetch_record(&self, member: &Member, via: &'static str) {
        let redis = &member.redis;
        if self.lock().flight.is_some() {
            return;
        }
        match redis.read(self.name()).await {
            Ok(Some(record)) => {
                let orphaned = record.saved.in_flight_since.is_some()
                    && self.left_behind(redis, &record).await;
                if orphaned {
                    // When the lease was first seen gone: the mark is settled only
                    // after its broker had time to write an answer it may hold.
                    let now = std::time::SystemTime::now();
                    let mut fleet = member.position();
                    if fleet.orphan.is_none_or(|(v, _)| v != record.version) {
                        fleet.orphan = Some((record.version, now));
                    }
                }
                let _ = self.adopt_record(member, record, via, Taker::Idle { orphaned });
            }
            Ok(None) => {}
            Err(ReadError::Corrupt { version, .. }) => {
                member.position().observe(version, None);
            }
            Err(ReadError::Unavailable(e)) => {
                self.shared.metrics.store_error("load");
                debug!(credential = self.name(), error = %e, "cannot read the shared record");
            }
        }
    }

    /// Whether the broker that marked `record` is gone: nobody holds the lease, and the
    /// record is still the same after that look. A holder writes its answer and then
    /// lets go, so a free lease alone may follow an answer already written.
    async fn left_behind(&self, redis: &RedisStore, record: &Record) -> bool {
        let read = Polled {
            version: Some(record.version),
            stamp: record.stamp.clone(),
        };
        let lease_held = redis.lease_held(self.name()).await.ok();
        let again = match lease_held {
            Some(false) => redis.versions(&[self.name().to_owned()]).await.ok(),
            _ => None,
        };
        let again = again.and_then(|mut polled| polled.pop());
        unchanged_without_lease(&read, lease_held, again.as_ref())
    }

    /// Outside a flight: writes this broker's state back over an older record, under
    /// a lease of its own, so a broker that starts now finds the live chain and not a
    /// spent one.
    async fn sync_back(&self, member: &Member) {
        let redis = &member.redis;
        {
            let inner = self.lock();
            if inner.flight.is_some() || inner.unsaved.is_some() || self.stop.is_cancelled() {
                return;
            }
        }
        let token = hex(&rand::random::<[u8; 16]>());
        let asked = std::time::Instant::now();
        if !matches!(redis.acquire(self.name(), &token).await, Ok(true)) {
            return;
        }
        let held = Held::new(token, asked, redis.lease_duration);
        if let Some(Reconciled::Settled(Err(e))) = self.reconcile(member, &held).await {
            debug!(credential = self.name(), error = %e, "could not write the state back");
        }
        if redis.release(self.name(), &held.token).await.is_err() {
            self.shared.metrics.store_error("lease");
        }
        // The record taken may carry a mark to settle, or a new schedule.
        self.schedule_changed();
    }
}

/// The decision of `left_behind` from its three looks: the record read, the lease
/// (`None`: unknown), and the record read again. Only a free lease seen between two
/// reads of one record (same version and stamp) shows a refresh nobody is finishing.
fn unchanged_without_lease(
    read: &Polled,
    lease_held: Option<bool>,
    again: Option<&Polled>,
) -> bool {
    lease_held == Some(false) && again == Some(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polled(version: u64, stamp: &str) -> Polled {
        Polled {
            version: Some(version),
            stamp: Some(stamp.into()),
        }
    }

    #[test]
    fn a_mark_is_orphaned_only_if_the_record_stayed_the_same_while_the_lease_was_free() {
        let marked = polled(5, "mark");
        let lease_free_then =
            |again: Option<&Polled>| unchanged_without_lease(&marked, Some(false), again);
        assert!(lease_free_then(Some(&marked)));
        // Its holder is still refreshing, or the lease could not be asked about.
        assert!(!unchanged_without_lease(&marked, Some(true), Some(&marked)));
        assert!(!unchanged_without_lease(&marked, None, Some(&marked)));
        // The race: the holder wrote its token and let go between the read and the
        // look at the lease. The record read again is the new one: nothing was lost.
        assert!(!lease_free_then(Some(&polled(1 << 20, "token"))));
        // Another history at the same version, a damaged record, no second answer.
        assert!(!lease_free_then(Some(&polled(5, "other"))));
        let damaged = Polled {
            version: None,
            stamp: Some("mark".into()),
        };
        assert!(!lease_free_then(Some(&damaged)));
        assert!(!lease_free_then(None));
    }
}
