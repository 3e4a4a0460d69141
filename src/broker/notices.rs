//! Keeping each broker's copy of the shared records current between flights: change
//! notices over pub/sub bring another broker's new token as soon as it is written, and a
//! poll of every record's version each `poll_interval` catches what a notice missed (a
//! dropped subscription, a restart of Redis, an ACL that forbids the channel).
//!
//! A newer, settled record is adopted through `Credential::publish` and
//! `Credential::schedule_changed`; a record older than this broker's state (Redis lost
//! writes) is written back under the lease. A running flight is left alone: it reads
//! the record itself.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tracing::{debug, info, warn};

use super::credential::Credential;
use super::fleet::Taker;
use super::{Broker, schedule};
use crate::secret::hex;
use crate::store::{Notice, ReadError, RedisStore};

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
    loop {
        match redis.subscribe().await {
            Ok(notices) => {
                if failures > 0 {
                    info!("subscribed to change notices again");
                }
                failures = 0;
                // What changed while no subscription was up.
                catch_up(&broker, &redis, "poll").await;
                if follow(&broker, &redis, notices).await.is_none() {
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
async fn follow(
    broker: &Arc<Broker>,
    redis: &Arc<RedisStore>,
    notices: impl Stream<Item = Notice>,
) -> Option<()> {
    tokio::pin!(notices);
    loop {
        tokio::select! {
            notice = notices.next() => match notice {
                Some(notice) => on_notice(broker, redis, notice),
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
        catch_up(&broker, &redis, "poll").await;
    }
}

fn on_notice(broker: &Arc<Broker>, redis: &Arc<RedisStore>, notice: Notice) {
    let Ok(credential) = broker.credential(&notice.name) else {
        return;
    };
    // A flight waiting for the lease tries again (its holder wrote or let go).
    credential.remote.notify_waiters();
    if notice.version > credential.lock().fleet.version {
        let redis = redis.clone();
        tokio::spawn(async move { credential.fetch_record(&redis, "notice").await });
    }
}

/// Compares every credential's version with Redis in one round trip.
async fn catch_up(broker: &Broker, redis: &RedisStore, via: &'static str) {
    let credentials = broker.credentials();
    let names: Vec<String> = credentials.iter().map(|c| c.spec.name.clone()).collect();
    let versions = match redis.versions(&names).await {
        Ok(versions) => versions,
        Err(e) => {
            broker.shared.metrics.store_error("poll");
            debug!(error = %e, "cannot poll the shared records");
            return;
        }
    };
    for (credential, version) in credentials.into_iter().zip(versions) {
        let (ours, unsynced, restored) = {
            let inner = credential.lock();
            (inner.fleet.version, inner.fleet.unsynced, inner.restored)
        };
        if !restored || (version == ours && !unsynced) {
            continue;
        }
        credential.remote.notify_waiters();
        if version > ours {
            credential.fetch_record(redis, via).await;
        } else {
            credential.sync_back(redis).await;
        }
    }
}

impl Credential {
    /// Reads the record and adopts it if it is newer and settled.
    async fn fetch_record(&self, redis: &RedisStore, via: &'static str) {
        if self.lock().flight.is_some() {
            return;
        }
        match redis.read(self.name()).await {
            Ok(Some(record)) => {
                let orphaned = record.saved.in_flight_since.is_some()
                    && matches!(redis.lease_held(self.name()).await, Ok(false));
                let _ = self.adopt_record(record, via, Taker::Idle { orphaned });
            }
            Ok(None) | Err(ReadError::Corrupt { .. }) => {}
            Err(ReadError::Unavailable(e)) => {
                self.shared.metrics.store_error("load");
                debug!(credential = self.name(), error = %e, "cannot read the shared record");
            }
        }
    }

    /// Outside a flight: writes this broker's state back over an older record, under
    /// the lease, so a broker that starts now finds the live chain and not a spent one.
    async fn sync_back(&self, redis: &RedisStore) {
        if self.lock().flight.is_some() || self.stop.is_cancelled() {
            return;
        }
        let token = hex(&rand::random::<[u8; 16]>());
        if !matches!(redis.acquire(self.name(), &token).await, Ok(true)) {
            return;
        }
        self.lock().fleet.lease = Some(token.clone());
        if let Some(Err(e)) = self.reconcile(redis).await {
            debug!(credential = self.name(), error = %e, "could not write the state back");
        }
        self.lock().fleet.lease = None;
        if redis.release(self.name(), &token).await.is_err() {
            self.shared.metrics.store_error("lease");
        }
    }
}
