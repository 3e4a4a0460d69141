//! The refresh grant: a child of `state`. The families judge the presented token
//! (rotation, reuse, scope); this checks its DPoP binding first, counts the outcome
//! and issues.

use std::time::SystemTime;

use super::{DEV_USER, Issued, Outcome, State};
use crate::dev_idp::families::{Policy, RefreshKind, Refusal};
use crate::dev_idp::protocol::TokenError;

impl State {
    /// The refresh grant: the families judge the token, this counts and issues.
    pub(super) fn refresh(
        &mut self,
        now: SystemTime,
        client: &str,
        presented: &str,
        scope: Option<&str>,
    ) -> Result<Issued, TokenError> {
        // Checked before the families judge the token, so a refusal uses nothing up.
        if let Some(bound) = self.families.binding(presented)
            && self.binding.as_deref() != Some(bound)
        {
            return Err(TokenError::InvalidGrant(
                "the refresh token is bound to a DPoP key; send a DPoP proof made with that key",
            ));
        }
        let policy = Policy {
            rotation: self.config.rotation,
            reuse_grace: self.config.reuse_grace,
        };
        let refreshed = match self.families.refresh(now, presented, scope, policy) {
            Ok(refreshed) => refreshed,
            Err(refusal) => return Err(self.refused(refusal)),
        };
        let outcome = match refreshed.kind {
            RefreshKind::Rotated => Outcome::Rotated,
            RefreshKind::GraceReplay => Outcome::GraceReplay,
            RefreshKind::NotRotated => Outcome::NotRotated,
        };
        if outcome == Outcome::GraceReplay {
            self.stats.reuse_grace_hits += 1;
        } else {
            self.stats.refresh_grants += 1;
        }
        let (family, successor) = (Some(refreshed.family), refreshed.successor);
        Ok(self.issue(
            now,
            family,
            DEV_USER,
            client,
            refreshed.scope,
            successor,
            outcome,
        ))
    }

    /// Counts a refused refresh and turns it into the protocol error.
    fn refused(&mut self, refusal: Refusal) -> TokenError {
        match refusal {
            Refusal::Unknown => TokenError::InvalidGrant("unknown refresh token"),
            Refusal::Revoked => TokenError::InvalidGrant("refresh token revoked"),
            Refusal::Reused => {
                self.stats.reuse_detected += 1;
                self.stats.families_revoked += 1;
                TokenError::InvalidGrant("refresh token reused; its family is revoked")
            }
            Refusal::ScopeExceeded => {
                TokenError::InvalidScope("requested scope exceeds the original grant")
            }
        }
    }
}
