//! Authorization codes: issued for an approved request, redeemed once at the token
//! endpoint with the PKCE verifier, within a minute. A child of `state`.
//!
//! A code is spent by its first presentation from the client it was issued to, whether
//! or not that presentation succeeds, so a wrong verifier cannot be retried. A second
//! presentation is a replay (RFC 6749 4.1.2): it fails and revokes the family the code
//! started, refresh and access tokens alike.

use super::{DEV_USER, Issued, Outcome, State};
use crate::dev_idp::authorize::{self, AuthError, AuthRequest};
use crate::dev_idp::families::FamilyId;
use crate::dev_idp::protocol::{Params, TokenError};
use crate::dev_idp::tokens;
use crate::secret::constant_time_eq;
use std::time::{Duration, SystemTime};

/// How long a code may wait for its redemption: a login redeems it within seconds, and
/// RFC 6749 4.1.2 asks for a short life.
pub const CODE_TTL: Duration = Duration::from_secs(60);

/// Spent codes are remembered this long past their expiry to catch replays, and then
/// forgotten once the table grows past `PRUNE_AT`.
const REMEMBER_SPENT: Duration = Duration::from_secs(600);
const PRUNE_AT: usize = 4096;

/// What the IdP remembers of one code.
pub struct CodeRecord {
    /// The request it answers: client, redirect URI, challenge, scope.
    request: AuthRequest,
    expires: SystemTime,
    /// `None` until presented; then the family its redemption started, if it succeeded.
    spent: Option<Option<FamilyId>>,
}

impl State {
    /// Checks an authorization request against the clients and redirect URIs.
    pub fn check_authorization(&self, params: &Params) -> Result<AuthRequest, AuthError> {
        authorize::check(
            params,
            &self.config.clients,
            &self.config.login.redirect_uris,
        )
    }

    /// Whether authorization requests and device codes skip the user's consent.
    pub fn auto_approve(&self) -> bool {
        self.config.login.auto_approve
    }

    /// Issues a code for an approved authorization request.
    pub fn issue_code(&mut self, now: SystemTime, request: AuthRequest) -> String {
        if self.codes.len() >= PRUNE_AT {
            self.codes
                .retain(|_, code| code.expires + REMEMBER_SPENT > now);
        }
        let code = tokens::random_b64(32);
        let record = CodeRecord {
            request,
            expires: now + CODE_TTL,
            spent: None,
        };
        self.codes.insert(code.clone(), record);
        code
    }

    /// The `authorization_code` grant, for an authenticated `client`.
    pub(super) fn authorization_code(
        &mut self,
        now: SystemTime,
        client: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Issued, TokenError> {
        let record = self
            .codes
            .get_mut(code)
            .ok_or(TokenError::InvalidGrant("unknown authorization code"))?;
        let request = &record.request;
        if request.client_id != client {
            // Not spent: a client that is not the code's cannot burn it.
            return Err(TokenError::InvalidGrant(
                "the authorization code was issued to another client",
            ));
        }
        if let Some(issued) = record.spent {
            self.stats.code_reuses += 1;
            if issued.is_some_and(|family| self.families.revoke(family)) {
                self.stats.families_revoked += 1;
            }
            return Err(TokenError::InvalidGrant(
                "authorization code already used; what it issued is revoked",
            ));
        }
        record.spent = Some(None);
        if now >= record.expires {
            return Err(TokenError::InvalidGrant("authorization code expired"));
        }
        if request.redirect_uri != redirect_uri {
            return Err(TokenError::InvalidGrant(
                "redirect_uri differs from the authorization request's",
            ));
        }
        let hashed = authorize::s256(verifier);
        if !constant_time_eq(hashed.as_bytes(), request.code_challenge.as_bytes()) {
            return Err(TokenError::InvalidGrant(
                "code_verifier does not match the code_challenge",
            ));
        }
        let scope = request.scope.clone();
        let (family, refresh_token) = self.families.start(scope.clone(), None);
        record.spent = Some(Some(family));
        self.stats.authorization_code_grants += 1;
        let outcome = Outcome::AuthorizationCode;
        Ok(self.issue(
            now,
            Some(family),
            DEV_USER,
            client,
            scope,
            Some(refresh_token),
            outcome,
        ))
    }
}
