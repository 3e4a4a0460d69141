//! The single flight across brokers that share the redis store: one broker refreshes,
//! the others take its result from the store.
//!
//! It sits inside each broker's own flight (`Credential::refresh`), so there is still
//! one mechanism. The flight takes the credential's lease in Redis (SET NX PX with a
//! random token), or waits for a change notice and adopts the record another broker
//! wrote. Holding the lease, it re-reads the record (another broker may have refreshed
//! meanwhile: adopt instead of calling the IdP), then runs the ordinary refresh
//! (`Credential::fetch`), whose writes are fenced: they go through only while the lease
//! is still this broker's and the record is still at the version it read. The lease is
//! renewed while the refresh runs and released by compare-and-delete at the end.
//! Notices and polling between flights live in `notices`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use super::credential::{Credential, Inner, Outcome};
use super::token::Token;
use crate::config::OnStoreUnavailable;
use crate::error::Error;
use crate::metrics::LeaseEvent;
use crate::secret::hex;
use crate::store::{Fence, ReadError, Record, RedisStore, StoreError};

/// A flight waits at most this long (or three leases) for another broker's refresh.
const MAX_LEASE_WAIT: Duration = Duration::from_secs(60);

/// Record versions order the fleet's states: the high bits count new tokens, the low
/// `WRITE_BITS` count other writes (in-flight marks, stops) since the last new token.
/// A state after a refresh is therefore newer than every state before it, whichever
/// broker wrote what and whatever Redis lost; versions stay below 2^53, which Lua's
/// numbers hold exactly.
const WRITE_BITS: u32 = 20;

/// The version a write makes after `version`.
fn next_version(version: u64, new_token: bool) -> u64 {
    if new_token {
        ((version >> WRITE_BITS) + 1) << WRITE_BITS
    } else {
        version + 1
    }
}

/// Where this broker stands with a credential's shared record.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    /// The version of the shared record this broker's state matches.
    pub version: u64,
    /// The lease token while this broker's flight holds the lease.
    pub lease: Option<String>,
    /// A flight is refreshing without the lease (`refresh_locally`, Redis unreachable).
    pub local: bool,
    /// The state holds a new token not yet written: the next write starts a new
    /// rotation in the version.
    pub rotated: bool,
    /// This broker's chain moved on without the store; it is written back once Redis
    /// can be reached again.
    pub unsynced: bool,
}

/// Who adopts a record, which decides what it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taker {
    /// A flight holding the lease: it may take over a refresh another broker left out.
    Lease,
    /// A flight waiting for the lease: settled records only.
    Waiting,
    /// Between flights (a notice or the poll). `orphaned`: the record has a refresh out
    /// and no broker holds the lease, so its broker is gone; the mark is taken and the
    /// timer settles it at once, within the IdP's reuse grace if there is one.
    Idle { orphaned: bool },
}

/// How the wait for the lease ended.
enum Took {
    Lease(String),
    /// Another broker's result (or a reason to stop) settled this flight.
    Settled(Outcome),
    Unreachable(String),
}

impl Credential {
    /// A refresh under the fleet's lease. The credential is restored already.
    pub(super) async fn refresh_shared(self: &Arc<Self>, redis: &Arc<RedisStore>) -> Outcome {
        let lease = match self.take_lease(redis).await {
            Took::Lease(lease) => lease,
            Took::Settled(outcome) => return outcome,
            Took::Unreachable(why) => return self.without_store(redis, why).await,
        };
        self.lock().fleet.lease = Some(lease.clone());
        let outcome = self.renewing(redis, &lease, self.under_lease(redis)).await;
        self.lock().fleet.lease = None;
        if let Err(e) = redis.release(self.name(), &lease).await {
            // It runs out by itself within lease_duration.
            self.shared.metrics.store_error("lease");
            debug!(credential = self.name(), error = %e, "could not release the lease");
        }
        outcome
    }

    async fn under_lease(self: &Arc<Self>, redis: &RedisStore) -> Outcome {
        if let Some(outcome) = self.reconcile(redis).await {
            return outcome;
        }
        self.fetch().await
    }

    /// Takes the lease, or waits for the broker holding it and adopts its result.
    async fn take_lease(&self, redis: &RedisStore) -> Took {
        let token = hex(&rand::random::<[u8; 16]>());
        let started = Instant::now();
        let limit = MAX_LEASE_WAIT.max(redis.lease_duration * 3);
        let mut waited = false;
        loop {
            // Registered before asking, so a notice between the two is not missed.
            let notified = self.remote.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match redis.acquire(self.name(), &token).await {
                Ok(true) => {
                    self.metrics.lease(LeaseEvent::Acquired);
                    return Took::Lease(token);
                }
                Ok(false) => {}
                Err(why) => return Took::Unreachable(why),
            }
            if started.elapsed() >= limit {
                return Took::Settled(Err(Error::UpstreamUnavailable {
                    reason: format!(
                        "another broker has held the refresh lease for {}",
                        crate::duration::format(limit)
                    ),
                    retry_after: Duration::from_secs(1),
                }));
            }
            if !std::mem::replace(&mut waited, true) {
                self.metrics.lease(LeaseEvent::Waited);
                debug!(
                    credential = self.name(),
                    "another broker holds the refresh lease; waiting for its result"
                );
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(redis.poll_interval) => {}
                () = self.stop.cancelled() => return Took::Settled(Err(Error::ShuttingDown)),
            }
            if let Some(took) = self.holder_done(redis).await {
                return took;
            }
        }
    }

    /// While waiting: whether the lease holder's record settles this flight.
    async fn holder_done(&self, redis: &RedisStore) -> Option<Took> {
        match redis.read(self.name()).await {
            Ok(Some(record)) => self
                .adopt_record(record, "flight", Taker::Waiting)
                .map(Took::Settled),
            Ok(None) | Err(ReadError::Corrupt { .. }) => None,
            Err(ReadError::Unavailable(why)) => Some(Took::Unreachable(why)),
        }
    }

    /// Runs `work`, renewing the lease every third of its duration. A lost lease does
    /// not stop the work (its IdP call may be out already): fencing refuses its write.
    async fn renewing(
        &self,
        redis: &RedisStore,
        lease: &str,
        work: impl Future<Output = Outcome>,
    ) -> Outcome {
        let renew = async {
            loop {
                tokio::time::sleep(redis.lease_duration / 3).await;
                match redis.renew(self.name(), lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.metrics.lease(LeaseEvent::Lost);
                        warn!(
                            credential = self.name(),
                            "the refresh lease ran out before the refresh finished; its result \
                             will not be written over another broker's"
                        );
                        return;
                    }
                    Err(e) => {
                        self.shared.metrics.store_error("lease");
                        warn!(credential = self.name(), error = %e, "could not renew the refresh lease");
                    }
                }
            }
        };
        tokio::pin!(work);
        tokio::pin!(renew);
        let mut renewing = true;
        loop {
            tokio::select! {
                outcome = &mut work => return outcome,
                () = &mut renew, if renewing => renewing = false,
            }
        }
    }

    /// With the lease held: brings this broker's state and the shared record together.
    /// `Some` when that settles the flight (another broker already refreshed, or the
    /// chain has stopped); `None` to go on and refresh.
    pub(super) async fn reconcile(&self, redis: &RedisStore) -> Option<Outcome> {
        let (record, version) = match redis.read(self.name()).await {
            Ok(Some(record)) => {
                let version = record.version;
                (Some(record), version)
            }
            Ok(None) => (None, 0),
            Err(ReadError::Corrupt { why, version }) => {
                warn!(credential = self.name(), error = %why, "the shared record is unreadable; writing this broker's state over it");
                return self.write_back(redis, version).await.err().map(Err);
            }
            Err(ReadError::Unavailable(why)) => {
                self.shared.metrics.store_error("load");
                return Some(Err(Error::Store(why)));
            }
        };
        let (ours, unsynced) = {
            let inner = self.lock();
            (inner.fleet.version, inner.fleet.unsynced)
        };
        if let Some(record) = record.filter(|_| version > ours) {
            if unsynced {
                warn!(
                    credential = self.name(),
                    "this broker refreshed while redis was unreachable, and so did another; \
                     taking the shared record"
                );
            }
            return self.adopt_record(record, "flight", Taker::Lease);
        }
        if version < ours || unsynced {
            return self.write_back(redis, version).await.err().map(Err);
        }
        None
    }

    /// Writes this broker's state over an older record: Redis lost writes (a restart
    /// without persistence, a failover to a replica behind) or this broker refreshed
    /// while Redis was unreachable. Versions never go back, so other brokers adopt it.
    async fn write_back(&self, redis: &RedisStore, found: u64) -> Result<(), Error> {
        let (saved, fence) = {
            let inner = self.lock();
            let fence = Fence {
                expected: found,
                next: inner.fleet.version.max(found) + 1,
                lease: inner.fleet.lease.clone(),
            };
            (self.saved(&inner, None), fence)
        };
        info!(
            credential = self.name(),
            found,
            ours = fence.next - 1,
            "the shared record is behind this broker's state; writing it back"
        );
        let result = redis.save(self.name(), &saved, &fence).await;
        self.wrote(result)?;
        self.lock().fleet.unsynced = false;
        Ok(())
    }

    /// Makes a newer record this broker's state. `Some` when that answers a flight: a
    /// fresh token, or the chain's end.
    pub(super) fn adopt_record(
        &self,
        record: Record,
        via: &'static str,
        by: Taker,
    ) -> Option<Outcome> {
        let before = self.current();
        let mut inner = self.lock();
        // A record with a refresh out belongs to the broker sending it, unless that
        // broker is gone.
        let marked = record.saved.in_flight_since.is_some();
        let may_take_mark = matches!(by, Taker::Lease | Taker::Idle { orphaned: true });
        let idle = matches!(by, Taker::Idle { .. });
        if !inner.restored
            || (idle && inner.flight.is_some())
            || record.version <= inner.fleet.version
            || (marked && !may_take_mark)
        {
            return None;
        }
        inner.fleet.version = record.version;
        inner.fleet.unsynced = false;
        inner.unsaved = None;
        self.adopt(&mut inner, record.saved);
        let outcome = self.adopted_outcome(&mut inner, before, via, &record.writer);
        drop(inner);
        if marked && idle {
            warn!(credential = self.name(), written_by = %record.writer, "the broker refreshing this credential is gone with its refresh out; settling it here");
        }
        if idle {
            // The timer picks up the new token's schedule, or settles a taken mark now.
            self.schedule_changed();
        }
        outcome
    }

    /// What an adopted record means for a flight: the chain's end, a fresh token (then
    /// this broker's failures are over too), or nothing yet.
    fn adopted_outcome(
        &self,
        inner: &mut Inner,
        before: Option<Arc<Token>>,
        via: &'static str,
        writer: &str,
    ) -> Option<Outcome> {
        if let Some(reason) = &inner.reauth {
            return Some(Err(Error::ReauthRequired {
                reason: reason.clone(),
            }));
        }
        let now = SystemTime::now();
        let after = self.current().filter(|t| t.is_valid(now))?;
        let fresh = before.is_none_or(|b| !b.is(after.secret()));
        if !fresh || inner.unanswered_since.is_some() {
            return None;
        }
        inner.failures = 0;
        inner.retry_at = None;
        inner.last_error = None;
        inner.last_refresh_at = Some(now);
        self.metrics.adopted(via);
        info!(credential = self.name(), via, written_by = %writer, "took the token another broker refreshed");
        Some(Ok(after))
    }

    /// Redis cannot be reached when a refresh is due.
    async fn without_store(self: &Arc<Self>, redis: &RedisStore, why: String) -> Outcome {
        self.shared.metrics.store_error("lease");
        if redis.on_unavailable == OnStoreUnavailable::Wait {
            return Err(Error::Store(format!(
                "{why}; a refresh needs the shared store's lease (on_store_unavailable = \"wait\")"
            )));
        }
        warn!(
            credential = self.name(),
            error = %why,
            "redis is unreachable; refreshing without the fleet's lease (on_store_unavailable = \"refresh_locally\")"
        );
        self.lock().fleet.local = true;
        let outcome = self.fetch().await;
        self.lock().fleet.local = false;
        outcome
    }

    /// The fence for a write in this flight; `None` when the flight runs without the
    /// store (`refresh_locally`): the state stays in memory until it can be written back.
    pub(super) fn fence(&self) -> Option<Fence> {
        let mut inner = self.lock();
        let fleet = &mut inner.fleet;
        let next = next_version(fleet.version, fleet.rotated);
        if fleet.local {
            // Counted as if written, so the state is newer than the record when it is
            // written back.
            fleet.version = next;
            fleet.rotated = false;
            fleet.unsynced = true;
            return None;
        }
        Some(Fence {
            expected: fleet.version,
            next,
            lease: fleet.lease.clone(),
        })
    }

    /// Takes a write's result: the new version, or the error requests see.
    pub(super) fn wrote(&self, result: Result<u64, StoreError>) -> Result<(), Error> {
        match result {
            Ok(version) => {
                let fleet = &mut self.lock().fleet;
                fleet.version = version;
                fleet.rotated = false;
                Ok(())
            }
            Err(StoreError::Unavailable(why)) => {
                if self.shared.store.shared().is_some() {
                    self.shared.metrics.store_error("save");
                }
                Err(Error::Store(why))
            }
            Err(StoreError::Fenced(why)) => {
                self.metrics.lease(LeaseEvent::Lost);
                warn!(credential = self.name(), reason = %why, "the shared store refused a write");
                Err(Error::Store(why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_after_a_new_token_orders_after_every_state_before_it() {
        let marked = next_version(next_version(0, false), false);
        let refreshed = next_version(marked, true);
        assert!(refreshed > marked);
        // Marks and stops (fewer than 2^20 per rotation) keep a stale broker behind.
        let stale = (0..1000).fold(marked, |v, _| next_version(v, false));
        assert!(stale < refreshed);
        assert_eq!(next_version(refreshed, false), refreshed + 1);
        assert_eq!(
            next_version(refreshed + 7, true),
            next_version(refreshed, true)
        );
        // Two billion rotations still fit the 2^53 that Lua's numbers hold exactly.
        assert!(next_version((1u64 << 31) << WRITE_BITS, true) < 1u64 << 53);
    }
}
