//! With the fleet's lease held, before any IdP call: bringing this broker's state and
//! the shared record together, and deciding whether a refresh may be sent at all.
//!
//! Versions only grow, so a record below a version this broker has seen (or one that
//! differs from its state at the same version) means Redis lost writes: a restart
//! without persistence, a failover to a replica that was behind. A refresh may have been
//! out when they were lost, its mark and lease gone with them; so the credential is held
//! back fleet-wide (`hold:NAME`, and locally) for a settle window of `lease_duration` +
//! `idp.timeout` + 2 x `poll_interval`, long enough for that refresh to end and its
//! broker to write the answer. The newer state, wherever it is, is written back; a new
//! token waiting to be written always outranks the record it came from.
//!
//! A refresh another broker marked as sent, with no lease holder left, is settled (by
//! the lost-answer policy) only once that broker cannot still be waiting for the answer:
//! `idp.timeout` after the mark, and two polls after the lease was first seen gone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::lease::Held;
use super::{Member, Taker, next_version};
use crate::broker::credential::{Credential, Outcome};
use crate::error::Error;
use crate::store::{Fence, ReadError, Record, WriteKind};
use crate::token::{Token, rfc3339};

impl Credential {
    /// Brings this broker's state and the shared record together. `Some` when that
    /// settles the flight (another broker already refreshed, the chain has stopped, a
    /// held-back token was written); `None` to go on.
    pub(super) async fn reconcile(&self, member: &Member, held: &Held) -> Option<Reconciled> {
        let record = match member.redis.read(self.name()).await {
            Ok(record) => record,
            Err(ReadError::Corrupt { why, version }) => {
                warn!(credential = self.name(), error = %why, "the shared record is unreadable; writing this broker's state over it");
                member.position().observe(version, None);
                // Whether a refresh was marked as out in it cannot be known.
                self.hold_after_loss(member).await;
                return self.written_back(member, held, version).await;
            }
            Err(ReadError::Unavailable(why)) => {
                self.shared.metrics.store_error("load");
                return Some(Reconciled::Settled(Err(Error::Store(why))));
            }
        };
        let found = record.as_ref().map_or(0, |r| r.version);
        let (lost, step) = self.compare(member, record.as_ref());
        if lost {
            self.hold_after_loss(member).await;
        }
        match (step, record) {
            (Step::Take(by), Some(record)) => self
                .adopt_record(member, record, "flight", by)
                .map(Reconciled::Adopted),
            (Step::WriteBack, _) => self.written_back(member, held, found).await,
            _ => None,
        }
    }

    /// Whether `record` shows that Redis lost writes, and what to do about it.
    fn compare(&self, member: &Member, record: Option<&Record>) -> (bool, Step) {
        let version = record.map_or(0, |r| r.version);
        let stamp = record.and_then(|r| r.stamp.as_deref());
        let inner = self.lock();
        let mut fleet = member.position();
        let went_back = fleet.observe(version, stamp);
        let diverged =
            record.is_some() && version == fleet.version && stamp != fleet.stamp.as_deref();
        // What only this broker knows must not be lost: a state not yet written, a
        // refresh token that may be spent.
        let keep_ours = fleet.unsynced || fleet.rotated || inner.unanswered_since.is_some();
        let step = if diverged && !keep_ours {
            Step::Take(Taker::Diverged)
        } else if version > fleet.effective() {
            if fleet.unsynced {
                warn!(
                    credential = self.name(),
                    "this broker's state moved on without redis, and so did the shared record; \
                     taking the shared record"
                );
            }
            Step::Take(Taker::Lease)
        } else if version < fleet.version || fleet.unsynced || diverged {
            Step::WriteBack
        } else {
            Step::None
        };
        (went_back || diverged, step)
    }

    /// `write_back` as a flight's answer: the token it wrote, its error, or nothing.
    async fn written_back(&self, member: &Member, held: &Held, found: u64) -> Option<Reconciled> {
        match self.write_back(member, held, found).await {
            Ok(Some(token)) => Some(Reconciled::Settled(Ok(token))),
            Ok(None) => None,
            Err(e) => Some(Reconciled::Settled(Err(e))),
        }
    }

    /// Writes this broker's state over an older record (or another history), with a
    /// token held back if there is one: Redis lost writes, or this broker went on
    /// without it. Versions never go back, so other brokers adopt it. Returns the token
    /// it made durable, if any.
    async fn write_back(
        &self,
        member: &Member,
        held: &Held,
        found: u64,
    ) -> Result<Option<Arc<Token>>, Error> {
        let (saved, fence, token) = {
            let inner = self.lock();
            let fleet = member.position();
            let fence = Fence {
                expected: found,
                next: write_back_version(fleet.version, found, fleet.rotated),
                lease: Some(held.token.clone()),
                kind: if fleet.rotated {
                    WriteKind::Token
                } else {
                    WriteKind::Other
                },
                stamp: super::write::stamp(),
            };
            let token = inner.unsaved.clone();
            (self.saved(&inner, token.as_ref()), fence, token)
        };
        info!(
            credential = self.name(),
            found,
            writes = fence.next,
            "the shared record is behind this broker's state; writing it back"
        );
        let result = member.redis.save(self.name(), &saved, &fence).await;
        self.wrote(member, result, &fence).await?;
        let mut inner = self.lock();
        member.position().unsynced = false;
        Ok(token.filter(|_| inner.unsaved.take().is_some()))
    }

    /// After lost writes: no refresh of this credential, from any broker, for the
    /// settle window.
    async fn hold_after_loss(&self, member: &Member) {
        let window = self.settle_window(member);
        let until = SystemTime::now() + window;
        {
            let mut fleet = member.position();
            fleet.settle_until = fleet.settle_until.max(Some(until));
        }
        warn!(
            credential = self.name(),
            until = %rfc3339(until),
            "redis lost writes to this credential's record; no broker refreshes it until \
             then, so that a refresh out when they were lost is answered and written first"
        );
        if let Err(e) = member.redis.hold(self.name(), window).await {
            self.shared.metrics.store_error("save");
            warn!(credential = self.name(), error = %e, "could not hold the other brokers back");
        }
    }

    /// `lease_duration` + `idp.timeout` + 2 x `poll_interval`: a refresh sent just
    /// before writes were lost (its broker notices the lost lease at its next renewal)
    /// has ended, and its answer been written, by then.
    fn settle_window(&self, member: &Member) -> Duration {
        member.redis.lease_duration + self.shared.idp_timeout + member.redis.poll_interval * 2
    }

    /// Whether no refresh may be sent now, and until when: lost writes, or another
    /// broker's refresh whose answer may still come. A token waiting to be written is
    /// written regardless (that sends nothing).
    pub(super) async fn held_back(&self, member: &Member) -> Option<(Error, SystemTime)> {
        if self.lock().unsaved.is_some() {
            return None;
        }
        let now = SystemTime::now();
        let fleet_wide = match member.redis.held_until(self.name()).await {
            Ok(until) => until,
            Err(why) => return Some((Error::Store(why.into()), now + Duration::from_secs(1))),
        };
        let until = fleet_wide.max(member.position().settle_until);
        if let Some(until) = until.filter(|until| *until > now) {
            let reason = format!(
                "refreshes are held back until {}: redis lost writes to the shared record, and \
                 a refresh that was out then is answered and written first",
                rfc3339(until)
            );
            let retry_after = until.duration_since(now).unwrap_or_default();
            return Some((
                Error::HeldBack {
                    reason,
                    retry_after,
                },
                until,
            ));
        }
        self.orphan_wait(member, now)
    }

    /// Another broker's mark with no lease holder: wait until that broker's IdP call
    /// has surely ended and it had two polls to write its answer.
    fn orphan_wait(&self, member: &Member, now: SystemTime) -> Option<(Error, SystemTime)> {
        let inner = self.lock();
        let sent = inner.unanswered_since?;
        let mut fleet = member.position();
        if fleet.own_mark == Some(fleet.version) {
            return None;
        }
        let version = fleet.version;
        let since = match fleet.orphan {
            Some((orphaned, since)) if orphaned == version => since,
            _ => fleet.orphan.insert((version, now)).1,
        };
        let polls = member.redis.poll_interval * 2;
        let ready = (since + polls).max(sent + self.shared.idp_timeout + polls);
        let wait = ready.duration_since(now).ok()?;
        let reason = format!(
            "another broker sent the refresh token at {} and its lease ran out before an \
             answer was written; waiting until {} for that answer",
            rfc3339(sent),
            rfc3339(ready)
        );
        Some((
            Error::UpstreamUnavailable {
                reason,
                retry_after: wait,
            },
            ready,
        ))
    }
}

/// How reconciling settled a flight.
pub(super) enum Reconciled {
    /// With the record another broker wrote (its token counts as adopted).
    Adopted(Outcome),
    /// With this broker's own work (a token held back, now written) or an error.
    Settled(Outcome),
}

/// What reconciling does with the record.
enum Step {
    None,
    Take(Taker),
    WriteBack,
}

/// The version a write-back makes: past both this broker's state and the record it
/// found, and a new rotation when it carries a token not yet written.
fn write_back_version(ours: u64, found: u64, rotated: bool) -> u64 {
    next_version(ours.max(found), rotated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_back_passes_both_states_and_keeps_a_new_tokens_rotation() {
        let rotation = next_version(0, true);
        assert_eq!(write_back_version(rotation + 3, 0, false), rotation + 4);
        assert_eq!(
            write_back_version(rotation, rotation + 5, false),
            rotation + 6
        );
        // A new token held back: a new rotation, above the record written back meanwhile.
        let written = write_back_version(rotation + 1, rotation + 2, true);
        assert_eq!(written, next_version(rotation, true));
        assert!(written > rotation + 2);
    }
}
