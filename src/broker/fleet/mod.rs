//! The single flight across brokers that share the redis store: one broker refreshes,
//! the others take its result from the store.
//!
//! It sits inside each broker's own flight (`Credential::refresh`), so there is still
//! one mechanism. The flight takes the credential's lease in Redis (SET NX PX with a
//! random token), or waits for a change notice and adopts the record another broker
//! wrote. Holding the lease, it reconciles its state with the record (`reconcile`:
//! another broker may have refreshed meanwhile, Redis may have lost writes), then runs
//! the ordinary refresh (`Credential::fetch`), whose writes are fenced
//! (`write`). The lease is renewed while the refresh runs (`lease`) and released
//! by compare-and-delete at the end. Notices and polling between flights live in
//! `notices`; `member` is the coordinator (see `broker::coordinate`) that leads a
//! flight here. Here: the broker's position relative to the record (`Fleet`), taking
//! the lease, and adopting records.

mod lease;
mod member;
mod notices;
mod reconcile;
mod write;

pub(super) use write::stamp;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use self::lease::Held;
pub(crate) use self::member::Member;
use self::reconcile::Reconciled;
use crate::broker::credential::{Credential, Inner, Outcome};
use crate::config::OnStoreUnavailable;
use crate::error::Error;
use crate::metrics::LeaseEvent;
use crate::secret::hex;
use crate::store::{Fence, ReadError, Record, Unanswered, WriteKind};
use crate::token::Token;

/// A flight waits at most this long (or three leases) for another broker's refresh.
const MAX_LEASE_WAIT: Duration = Duration::from_secs(60);

/// Record versions order the fleet's states: the high bits count new tokens, the low
/// `WRITE_BITS` count other writes (in-flight marks, stops) since the last new token.
/// A state after a refresh is therefore newer than every state before it, whichever
/// broker wrote what and whatever Redis lost; versions stay below 2^53, which Lua's
/// numbers hold exactly.
const WRITE_BITS: u32 = 20;

/// The version a write makes after `version`.
pub(super) fn next_version(version: u64, new_token: bool) -> u64 {
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
    /// The stamp of the write that made that record: a record at the same version with
    /// another stamp is another history (Redis lost writes, another broker wrote anew).
    pub stamp: Option<String>,
    /// The highest version seen in Redis: a record found below it means Redis lost writes.
    pub seen: u64,
    /// The lease while this broker's flight holds it.
    pub lease: Option<Held>,
    /// A flight is refreshing without the lease (`refresh_locally`, Redis unreachable).
    pub local: bool,
    /// The state holds a new token not yet written: the next write starts a new
    /// rotation in the version.
    pub rotated: bool,
    /// This broker's state moved on without the store (a refresh without the lease, a
    /// write that failed); it is written back once Redis can be reached again.
    pub unsynced: bool,
    /// The version of the last mark this broker wrote itself: a mark in the state at
    /// another version came from another broker (or an earlier life of this one).
    pub own_mark: Option<u64>,
    /// Another broker's mark, at this version, first seen with nobody holding the lease.
    pub orphan: Option<(u64, SystemTime)>,
    /// A write whose answer was lost, to recognise it if it shows up in Redis.
    pub pending: Option<Pending>,
    /// After lost writes: no refresh from this broker before then.
    pub settle_until: Option<SystemTime>,
    /// The flight ends because refreshes are held back until then: it retries then.
    pub held_until: Option<SystemTime>,
    /// The flight was answered with another broker's token (counted as adopted).
    pub adopted: bool,
}

/// A write whose answer was lost.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub version: u64,
    pub stamp: String,
    pub kind: WriteKind,
}

impl Fleet {
    /// The version this broker's state would have once written: a new token that is
    /// not yet written counts, so a record from before it is never taken over it.
    pub fn effective(&self) -> u64 {
        if self.rotated {
            next_version(self.version, true)
        } else {
            self.version
        }
    }

    /// Notes a version (and stamp) read from Redis; `true` when it is below one seen
    /// before, which only lost writes explain.
    pub fn observe(&mut self, version: u64, stamp: Option<&str>) -> bool {
        let went_back = version < self.seen;
        self.seen = self.seen.max(version);
        let landed = self
            .pending
            .as_ref()
            .is_some_and(|p| p.version == version && stamp == Some(p.stamp.as_str()));
        if let Some(pending) = self.pending.take_if(|_| landed) {
            // A write this broker gave up on went through after all. What it holds now
            // may differ (a mark whose token was then not sent): write it back.
            self.version = version;
            self.stamp = Some(pending.stamp);
            self.rotated &= pending.kind != WriteKind::Token;
            self.unsynced = true;
        }
        went_back
    }

    /// A write went through as `fence` says.
    pub fn wrote(&mut self, version: u64, fence: &Fence) {
        self.version = version;
        self.stamp = Some(fence.stamp.clone());
        self.seen = self.seen.max(version);
        self.rotated = false;
        self.pending = None;
        if fence.kind == WriteKind::Mark {
            self.own_mark = Some(version);
        }
    }

    /// The state was loaded from this record.
    pub fn restored(&mut self, version: u64, stamp: Option<String>) {
        self.version = version;
        self.stamp = stamp;
        self.seen = self.seen.max(version);
    }
}

/// Who adopts a record, which decides what it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taker {
    /// A flight holding the lease: it may take over a refresh another broker left out.
    Lease,
    /// A flight holding the lease that found the record at this broker's version but
    /// from another history: the record is what the fleet sees, so it is taken.
    Diverged,
    /// A flight waiting for the lease: settled records only.
    Waiting,
    /// Between flights (a notice or the poll). `orphaned`: the record has a refresh out
    /// and no broker holds the lease; the mark is taken, and a flight settles it once
    /// its broker can no longer be waiting for the answer.
    Idle { orphaned: bool },
}

/// How the wait for the lease ended.
enum Took {
    Lease(Held),
    /// Another broker's result (or a reason to stop) settled this flight.
    Settled(Outcome),
    Unreachable(Unanswered),
}

impl Credential {
    /// A refresh under the fleet's lease. The credential is restored already.
    pub(super) async fn refresh_shared(self: &Arc<Self>, member: &Member) -> Outcome {
        let held = match self.take_lease(member).await {
            Took::Lease(held) => held,
            Took::Settled(outcome) => return self.answered_by_adoption(member, outcome),
            Took::Unreachable(why) => return self.without_store(member, why).await,
        };
        member.position().lease = Some(held.clone());
        let outcome = self
            .renewing(member, &held, self.under_lease(member, &held))
            .await;
        member.position().lease = None;
        if let Err(e) = member.redis.release(self.name(), &held.token).await {
            // It runs out by itself within lease_duration.
            self.shared.metrics.store_error("lease");
            debug!(credential = self.name(), error = %e, "could not release the lease");
        }
        outcome
    }

    async fn under_lease(self: &Arc<Self>, member: &Member, held: &Held) -> Outcome {
        match self.reconcile(member, held).await {
            Some(Reconciled::Adopted(outcome)) => {
                return self.answered_by_adoption(member, outcome);
            }
            Some(Reconciled::Settled(outcome)) => return outcome,
            None => {}
        }
        if let Some((error, until)) = self.held_back(member).await {
            member.position().held_until = Some(until);
            return Err(error);
        }
        self.fetch().await
    }

    /// A flight's outcome taken from another broker's record: a token there is counted
    /// as adopted, not as this broker's refresh.
    fn answered_by_adoption(&self, member: &Member, outcome: Outcome) -> Outcome {
        if outcome.is_ok() {
            member.position().adopted = true;
        }
        outcome
    }

    /// Takes the lease, or waits for the broker holding it and adopts its result.
    async fn take_lease(&self, member: &Member) -> Took {
        let token = hex(&rand::random::<[u8; 16]>());
        let started = Instant::now();
        let limit = MAX_LEASE_WAIT.max(member.redis.lease_duration * 3);
        let mut waited = false;
        loop {
            // Registered before asking, so a notice between the two is not missed.
            let notified = self.remote.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let asked = Instant::now();
            match member.redis.acquire(self.name(), &token).await {
                Ok(true) => {
                    self.metrics.lease(LeaseEvent::Acquired);
                    return Took::Lease(Held::new(token, asked, member.redis.lease_duration));
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
                () = tokio::time::sleep(member.redis.poll_interval) => {}
                () = self.stop.cancelled() => return Took::Settled(Err(Error::ShuttingDown)),
            }
            if let Some(outcome) = self.holder_done(member).await {
                return Took::Settled(outcome);
            }
        }
    }

    /// While waiting: whether the lease holder's record settles this flight. A failed
    /// read is no reason to stop waiting: only a failed attempt at the lease says that
    /// Redis cannot be reached (and, with `refresh_locally`, starts a refresh here).
    async fn holder_done(&self, member: &Member) -> Option<Outcome> {
        match member.redis.read(self.name()).await {
            Ok(Some(record)) => self.adopt_record(member, record, "flight", Taker::Waiting),
            Ok(None) => None,
            Err(ReadError::Corrupt { version, .. }) => {
                member.position().observe(version, None);
                None
            }
            Err(ReadError::Unavailable(e)) => {
                debug!(credential = self.name(), error = %e, "cannot read the shared record while waiting for the lease");
                None
            }
        }
    }

    /// Makes a newer record this broker's state. `Some` when that answers a flight: a
    /// fresh token, or the chain's end.
    pub(super) fn adopt_record(
        &self,
        member: &Member,
        record: Record,
        via: &'static str,
        by: Taker,
    ) -> Option<Outcome> {
        let before = self.current();
        let mut inner = self.lock();
        // The position is locked after `inner`, never the other way round.
        let (effective, ours) = {
            let mut fleet = member.position();
            fleet.observe(record.version, record.stamp.as_deref());
            (fleet.effective(), fleet.version)
        };
        // A record with a refresh out belongs to the broker sending it, unless that
        // broker is gone.
        let marked = record.saved.in_flight_since.is_some();
        let may_take_mark = matches!(
            by,
            Taker::Lease | Taker::Diverged | Taker::Idle { orphaned: true }
        );
        let idle = matches!(by, Taker::Idle { .. });
        let newer = record.version > effective || (by == Taker::Diverged && record.version == ours);
        if !inner.restored
            || (idle && inner.flight.is_some())
            || !newer
            || (marked && !may_take_mark)
        {
            return None;
        }
        {
            let mut fleet = member.position();
            fleet.version = record.version;
            fleet.stamp = record.stamp.clone();
            fleet.unsynced = false;
            fleet.rotated = false;
        }
        inner.unsaved = None;
        self.adopt(&mut inner, record.saved);
        let outcome = self.adopted_outcome(&mut inner, before, via, &record.writer);
        drop(inner);
        if marked && idle {
            warn!(credential = self.name(), written_by = %record.writer, "the broker refreshing this credential is gone with its refresh out; settling it here");
        }
        if idle {
            // The timer picks up the new token's schedule, or settles a taken mark.
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
        if inner.reauth.is_some() {
            return Some(Err(self.refusal(inner)));
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
    async fn without_store(self: &Arc<Self>, member: &Member, why: Unanswered) -> Outcome {
        self.shared.metrics.store_error("lease");
        if member.redis.on_unavailable == OnStoreUnavailable::Wait {
            return Err(Error::Store(format!(
                "{why}; a refresh needs the shared store's lease (on_store_unavailable = \"wait\")"
            )));
        }
        warn!(
            credential = self.name(),
            error = %why,
            "redis is unreachable; refreshing without the fleet's lease (on_store_unavailable = \"refresh_locally\")"
        );
        member.position().local = true;
        let outcome = self.fetch().await;
        member.position().local = false;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_not_yet_written_outranks_the_record_it_came_from() {
        let mut fleet = Fleet {
            version: next_version(5 << WRITE_BITS, false),
            ..Fleet::default()
        };
        assert_eq!(fleet.effective(), fleet.version);
        fleet.rotated = true;
        assert_eq!(fleet.effective(), 6 << WRITE_BITS);
        // A record written back from before the token (its rotation, more writes) is
        // still older.
        assert!(next_version(fleet.version + 100, false) < fleet.effective());
    }

    #[test]
    fn a_version_below_one_seen_means_lost_writes_and_a_lost_answer_is_recognised() {
        let mut fleet = Fleet::default();
        assert!(!fleet.observe(7, Some("a")));
        assert!(fleet.observe(0, None), "the record is gone");
        assert!(!fleet.observe(7, Some("a")));
        fleet.pending = Some(Pending {
            version: 8,
            stamp: "mine".into(),
            kind: WriteKind::Token,
        });
        fleet.rotated = true;
        assert!(!fleet.observe(8, Some("theirs")));
        assert_eq!(
            (fleet.version, fleet.rotated),
            (0, true),
            "not this broker's write"
        );
        assert!(!fleet.observe(8, Some("mine")));
        assert_eq!(fleet.version, 8);
        assert!(!fleet.rotated && fleet.unsynced && fleet.pending.is_none());
    }

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
