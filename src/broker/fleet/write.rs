//! One write of a flight's state to the shared store, and what its result means.
//!
//! The fence says what the write must find (see `store::WriteKind`). A write whose
//! answer is lost (a timeout: Redis may apply it later, or may have applied it already)
//! is not taken as failed: the record is read back, on the same connection, so the read
//! is answered only after the write was, and its stamp tells whether the write went
//! through. If Redis does not answer that either, the write is remembered (`pending`)
//! so it is recognised as this broker's own when it shows up.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::fleet_of;
use super::{Pending, next_version};
use crate::broker::credential::Credential;
use crate::error::Error;
use crate::metrics::LeaseEvent;
use crate::secret::hex;
use crate::store::{Fence, RedisStore, Saved, StoreError, WriteKind};

/// The pause between reads of a record whose write's answer was lost.
const READ_BACK_PAUSE: Duration = Duration::from_millis(100);

/// A fresh write stamp.
pub(in crate::broker) fn stamp() -> String {
    hex(&rand::random::<[u8; 8]>())
}

impl Credential {
    /// The fence for a write in this flight (`mark`: the refresh token is sent next);
    /// `None` when the flight runs without the store (`refresh_locally`): the state
    /// stays in memory until it can be written back.
    fn fence(&self, mark: bool) -> Option<Fence> {
        let mut inner = self.lock();
        let fleet = fleet_of(&mut inner.fleet);
        let next = next_version(fleet.version, fleet.rotated);
        if fleet.local {
            // Counted as if written, so the state is newer than the record when it is
            // written back.
            fleet.version = next;
            fleet.rotated = false;
            fleet.unsynced = true;
            return None;
        }
        let kind = match (mark, fleet.rotated) {
            (true, _) => WriteKind::Mark,
            (false, true) => WriteKind::Token,
            (false, false) => WriteKind::Other,
        };
        Some(Fence {
            expected: fleet.version,
            next,
            lease: fleet.lease.as_ref().map(|held| held.token.clone()),
            kind,
            stamp: stamp(),
        })
    }

    /// One fenced write of the flight's state (`mark`: the refresh token in `saved` is
    /// sent next); without the store (`refresh_locally`) the state stays in memory
    /// until it can be written back.
    pub(in crate::broker) async fn write_shared(
        &self,
        saved: Saved,
        mark: bool,
    ) -> Result<(), Error> {
        let Some(fence) = self.fence(mark) else {
            return Ok(());
        };
        let started = Instant::now();
        let result = self.shared.store.save(self.name(), saved, &fence).await;
        self.shared
            .metrics
            .observe_store(started.elapsed().as_secs_f64());
        self.wrote(result, &fence).await
    }

    /// Takes a write's result: the new version, or the error requests see. A write
    /// that may or may not have gone through is read back first.
    pub(super) async fn wrote(
        &self,
        result: Result<u64, StoreError>,
        fence: &Fence,
    ) -> Result<(), Error> {
        let redis = self.shared.store.shared().cloned();
        let result = match (result, &redis) {
            (Err(StoreError::Unavailable(why)), Some(redis)) => {
                self.read_back(redis, fence, why).await
            }
            (result, _) => result,
        };
        let failed = |inner: &mut crate::broker::credential::Inner| {
            // A state that could not be written is written back later; a token held
            // back has `unsaved` for that.
            if redis.is_some() && fence.kind == WriteKind::Other {
                fleet_of(&mut inner.fleet).unsynced = true;
            }
        };
        match result {
            Ok(version) => {
                fleet_of(&mut self.lock().fleet).wrote(version, fence);
                Ok(())
            }
            Err(StoreError::Unavailable(why)) => {
                if redis.is_some() {
                    self.shared.metrics.store_error("save");
                }
                failed(&mut self.lock());
                Err(Error::Store(why))
            }
            Err(StoreError::Fenced(why)) => {
                self.metrics.lease(LeaseEvent::Lost);
                warn!(credential = self.name(), reason = %why, "the shared store refused a write");
                failed(&mut self.lock());
                Err(Error::Store(why))
            }
        }
    }

    /// A write's answer was lost: reads the record's version and stamp until Redis
    /// answers (for about a lease), and tells whether the write went through.
    async fn read_back(
        &self,
        redis: &RedisStore,
        fence: &Fence,
        why: String,
    ) -> Result<u64, StoreError> {
        let give_up = Instant::now() + redis.lease_duration;
        loop {
            match redis.versions(&[self.name().to_owned()]).await {
                Ok(polled) => {
                    let landed = polled.first().is_some_and(|p| {
                        p.version == Some(fence.next) && p.stamp.as_deref() == Some(&fence.stamp)
                    });
                    debug!(
                        credential = self.name(),
                        landed, "read back a write whose answer was lost"
                    );
                    if landed {
                        return Ok(fence.next);
                    }
                    break;
                }
                Err(_) if Instant::now() < give_up => {
                    tokio::time::sleep(READ_BACK_PAUSE).await;
                }
                Err(_) => break,
            }
        }
        // Not there (or not known): should it arrive after all (a connection that
        // dropped with the write in it), it is recognised as this broker's.
        fleet_of(&mut self.lock().fleet).pending = Some(Pending {
            version: fence.next,
            stamp: fence.stamp.clone(),
            kind: fence.kind,
        });
        Err(StoreError::Unavailable(why))
    }
}
