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

use super::Member;
use super::{Pending, next_version};
use crate::broker::credential::Credential;
use crate::error::Error;
use crate::metrics::LeaseEvent;
use crate::secret::hex;
use crate::store::{Fence, Saved, StoreError, WriteKind};

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
    fn fence(member: &Member, mark: bool) -> Option<Fence> {
        let mut fleet = member.position();
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
    pub(super) async fn write_shared(
        &self,
        member: &Member,
        saved: Saved,
        mark: bool,
    ) -> Result<(), Error> {
        let Some(fence) = Self::fence(member, mark) else {
            return Ok(());
        };
        let started = Instant::now();
        let result = member.redis.save(self.name(), &saved, &fence).await;
        self.shared
            .metrics
            .observe_store(started.elapsed().as_secs_f64());
        self.wrote(member, result, &fence).await
    }

    /// Takes a write's result: the new version, or the error requests see. A write
    /// that may or may not have gone through is read back first.
    pub(super) async fn wrote(
        &self,
        member: &Member,
        result: Result<u64, StoreError>,
        fence: &Fence,
    ) -> Result<(), Error> {
        let result = match result {
            Err(StoreError::Unavailable(why)) => self.read_back(member, fence, why).await,
            result => result,
        };
        let failed = || {
            // A state that could not be written is written back later; a token held
            // back has `unsaved` for that.
            if fence.kind == WriteKind::Other {
                member.position().unsynced = true;
            }
        };
        match result {
            Ok(version) => {
                member.position().wrote(version, fence);
                Ok(())
            }
            Err(StoreError::Unavailable(why)) => {
                self.shared.metrics.store_error("save");
                failed();
                Err(Error::Store(why))
            }
            Err(StoreError::Fenced(why)) => {
                self.metrics.lease(LeaseEvent::Lost);
                warn!(credential = self.name(), reason = %why, "the shared store refused a write");
                failed();
                Err(Error::Store(why))
            }
        }
    }

    /// A write's answer was lost: reads the record's version and stamp until Redis
    /// answers (for about a lease), and tells whether the write went through.
    async fn read_back(
        &self,
        member: &Member,
        fence: &Fence,
        why: String,
    ) -> Result<u64, StoreError> {
        let give_up = Instant::now() + member.redis.lease_duration;
        loop {
            match member.redis.versions(&[self.name().to_owned()]).await {
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
        member.position().pending = Some(Pending {
            version: fence.next,
            stamp: fence.stamp.clone(),
            kind: fence.kind,
        });
        Err(StoreError::Unavailable(why))
    }
}
