//! The grants that trade one credential for another: RFC 8693 token exchange and the
//! RFC 7523 jwt-bearer grant. A child of `state`, so it reads the issued access tokens
//! and the replay cache directly; the rules are here, the bookkeeping is the state's.
//!
//! Token exchange accepts as subject (or actor) token an unexpired access token this
//! IdP issued, or one of the tokens listed with `--subject-token`; anything else, or a
//! mismatched token type, is `invalid_request`, as RFC 8693 section 2.2.2 prescribes.
//! A jwt-bearer assertion must verify with `--jwt-bearer-key`, come from the trusted
//! issuer, name this token endpoint and be fresh; failures are `invalid_grant`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Issued, Outcome, State};
use crate::dev_idp::jwt::{self, Expect};
use crate::dev_idp::protocol::{Exchange, TokenError};
use std::time::SystemTime;

const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

impl State {
    /// RFC 8693: the new token speaks for the subject token's subject.
    pub(super) fn token_exchange(
        &mut self,
        now: SystemTime,
        client: &str,
        exchange: &Exchange,
    ) -> Result<Issued, TokenError> {
        let sub = self.subject_of(now, &exchange.subject_token, &exchange.subject_token_type)?;
        if let Some((token, kind)) = &exchange.actor_token {
            self.subject_of(now, token, kind)?;
        }
        match exchange.requested_token_type.as_deref() {
            None | Some(TYPE_ACCESS_TOKEN | TYPE_JWT) => {}
            Some(_) => {
                return Err(TokenError::InvalidRequest(
                    "requested_token_type is not supported; this IdP issues access tokens",
                ));
            }
        }
        self.stats.token_exchange_grants += 1;
        let scope = exchange.scope.clone();
        let mut issued = self.issue(now, None, &sub, client, scope, None, Outcome::TokenExchange);
        issued.issued_token_type = Some(TYPE_ACCESS_TOKEN);
        Ok(issued)
    }

    /// Whom a subject or actor token speaks for, if this IdP accepts it.
    fn subject_of(&self, now: SystemTime, token: &str, kind: &str) -> Result<String, TokenError> {
        if let Some(who) = self.whoami(now, token) {
            // This IdP's access tokens are JWTs, so both names fit them.
            return match kind {
                TYPE_ACCESS_TOKEN | TYPE_JWT => Ok(who.sub),
                _ => Err(TokenError::InvalidRequest(
                    "the token type does not match the token",
                )),
            };
        }
        if !self.config.subject_tokens.iter().any(|t| t == token) {
            return Err(TokenError::InvalidRequest(
                "subject_token or actor_token is not valid here",
            ));
        }
        if kind != TYPE_JWT {
            return Err(TokenError::InvalidRequest(
                "the token type does not match the token (expected the jwt type)",
            ));
        }
        Ok(jwt_sub(token).unwrap_or_else(|| "external-subject".to_owned()))
    }

    /// RFC 7523 section 2.1: the new token speaks for the assertion's subject.
    pub(super) fn jwt_bearer(
        &mut self,
        expect: &Expect<'_>,
        client: &str,
        assertion: &str,
        scope: Option<String>,
    ) -> Result<Issued, TokenError> {
        let key = self
            .config
            .bearer_key
            .as_ref()
            .ok_or(TokenError::InvalidGrant(
                "no key is registered for jwt-bearer assertions (--jwt-bearer-key)",
            ))?;
        let claims = jwt::verify(assertion, key, expect).map_err(TokenError::InvalidGrant)?;
        if claims.iss != self.config.bearer_issuer {
            return Err(TokenError::InvalidGrant(
                "the assertion's iss is not the trusted issuer",
            ));
        }
        if !self.replay.first_use(&claims, expect.now) {
            self.stats.assertion_replays += 1;
            return Err(TokenError::InvalidGrant(
                "the assertion was already used (jti replay)",
            ));
        }
        self.stats.jwt_bearer_grants += 1;
        let client = if client.is_empty() {
            &claims.iss
        } else {
            client
        };
        let outcome = Outcome::JwtBearer;
        Ok(self.issue(expect.now, None, &claims.sub, client, scope, None, outcome))
    }
}

/// The `sub` claim of a JWT-shaped token, unverified (the token is trusted by listing).
fn jwt_sub(token: &str) -> Option<String> {
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    Some(claims.get("sub")?.as_str()?.to_owned())
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
