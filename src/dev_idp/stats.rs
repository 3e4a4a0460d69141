//! The counters served at `GET /stats`.
//!
//! They are the dev IdP's whole point: integration tests read them to prove how many
//! refreshes a client really made and how many ran at once. This file only holds the
//! numbers and their bookkeeping rules; the state decides when to bump them.

use serde::{Deserialize, Serialize};

/// A snapshot of the counters, serialized as a flat JSON object of integers (and
/// deserializable, so tests can read `/stats` back into this type).
///
/// Monotonic counters restart from zero at `POST /admin/stats/reset`; the two gauges
/// (`in_flight`, `active_families`) always tell the present truth.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every `POST /token` that reached the handler, whatever its outcome.
    pub token_requests: u64,
    /// Successful refresh grants that did real work (rotations, or non-rotating
    /// refreshes); grace replays are counted apart in `reuse_grace_hits`, so a test
    /// can assert "exactly one rotation" without caring about replays.
    pub refresh_grants: u64,
    /// Successful `client_credentials` grants.
    pub client_credentials_grants: u64,
    /// Successful RFC 8693 token exchanges.
    pub token_exchange_grants: u64,
    /// Successful RFC 7523 jwt-bearer grants.
    pub jwt_bearer_grants: u64,
    /// Authorization codes redeemed for tokens (RFC 6749 4.1 with PKCE).
    pub authorization_code_grants: u64,
    /// Approved device codes redeemed for tokens (RFC 8628).
    pub device_code_grants: u64,
    /// Authorization codes presented a second time; each revokes what the code issued.
    pub code_reuses: u64,
    /// Device-code polls answered `slow_down` for coming too fast.
    pub slow_downs: u64,
    /// Clients authenticated by a `private_key_jwt` client assertion.
    pub client_assertions: u64,
    /// Client or grant assertions refused because their `jti` was already used.
    pub assertion_replays: u64,
    /// Used refresh tokens presented again after their grace window.
    pub reuse_detected: u64,
    /// Used refresh tokens presented again within the grace window and answered.
    pub reuse_grace_hits: u64,
    /// Families revoked, by reuse detection or by `POST /admin/revoke`.
    pub families_revoked: u64,
    /// Token requests answered (or delayed) by an injected fault.
    pub errors_injected: u64,
    /// `invalid_grant` answers, for any reason.
    pub invalid_grant: u64,
    /// `invalid_client` answers, for any reason.
    pub invalid_client: u64,
    /// `invalid_request` answers, for any reason (a refused subject token among them).
    pub invalid_request: u64,
    /// Token requests that carried a valid DPoP proof (RFC 9449), whose tokens are
    /// therefore bound to the proof's key.
    pub dpop_token_requests: u64,
    /// `use_dpop_nonce` answers, at the token endpoint and at `/api/whoami`.
    pub dpop_nonce_challenges: u64,
    /// DPoP proofs refused (invalid, replayed, several, or missing where required), at
    /// the token endpoint and at `/api/whoami`; nonce challenges are counted apart.
    pub dpop_proof_rejections: u64,
    /// Token requests being handled right now (a gauge, never reset).
    pub in_flight: u64,
    /// Peak of `in_flight` since start or the last reset: how tests prove that a
    /// client never had more than one refresh outstanding.
    pub max_in_flight: u64,
    /// Families not revoked (a gauge computed at snapshot time, never reset).
    pub active_families: u64,
}

impl Stats {
    /// Zeroes the counters but keeps the gauges true: requests still in flight will
    /// decrement `in_flight` when they finish, so zeroing it would underflow, and the
    /// new peak starts from what is in flight now.
    pub(super) fn reset(&mut self) {
        *self = Stats {
            in_flight: self.in_flight,
            max_in_flight: self.in_flight,
            ..Stats::default()
        };
    }

    /// Records a token request arriving.
    pub(super) fn enter(&mut self) {
        self.token_requests += 1;
        self.in_flight += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
    }

    /// Records a token request finishing (answered, or dropped by its client).
    pub(super) fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_follows_in_flight_and_reset_keeps_gauges() {
        let mut stats = Stats::default();
        stats.enter();
        stats.enter();
        stats.leave();
        assert_eq!((stats.in_flight, stats.max_in_flight), (1, 2));
        stats.reset();
        assert_eq!(stats.token_requests, 0);
        assert_eq!((stats.in_flight, stats.max_in_flight), (1, 1));
        stats.leave();
        stats.leave();
        assert_eq!(stats.in_flight, 0, "never underflows");
    }
}
