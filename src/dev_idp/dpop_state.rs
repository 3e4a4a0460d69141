//! The state's side of DPoP: checking a request's proof under the one lock (so the
//! seen-`jti` set and the nonces stay consistent across concurrent requests), counting
//! the outcome, and telling which access tokens are bound. A child of `state`; the
//! per-proof rules are in `crate::dpop`, the memory across proofs in `proofs`.

use std::time::SystemTime;

use super::State;
use crate::dev_idp::proofs::{DpopPolicy, ProofRefusal, Proofs};
use crate::dev_idp::protocol::TokenError;
use crate::dpop::Verified;

/// A request about to be checked for a DPoP proof.
pub struct ProofRequest<'a> {
    /// The values of its `DPoP` headers: a valid request has at most one.
    pub proofs: &'a [&'a str],
    pub htm: &'a str,
    /// Every URL the endpoint answers to.
    pub htus: &'a [String],
    /// The access token sent along, whose hash the proof's `ath` must be.
    pub access_token: Option<&'a str>,
    /// Whether a request without a proof is refused.
    pub required: bool,
}

impl State {
    /// Sets the DPoP rules (the IdP's options), forgetting seen proofs and nonces.
    pub fn set_dpop_policy(&mut self, policy: DpopPolicy) {
        self.proofs = Proofs::new(policy);
    }

    /// The nonce to send in `DPoP-Nonce`, if nonces are demanded.
    pub fn dpop_nonce(&mut self, now: SystemTime) -> Option<String> {
        self.proofs.nonce(now)
    }

    /// Checks the request's proof, if any, and counts a challenge or a refusal.
    /// `Ok(None)`: no proof, and none required.
    pub fn check_proof(
        &mut self,
        now: SystemTime,
        request: &ProofRequest<'_>,
    ) -> Result<Option<Verified>, ProofRefusal> {
        let result = match request.proofs {
            [] if request.required => Err(ProofRefusal::Required),
            [] => return Ok(None),
            [proof] => {
                self.proofs
                    .check(now, proof, request.htm, request.htus, request.access_token)
            }
            _ => Err(ProofRefusal::Several),
        };
        match &result {
            Ok(_) => {}
            Err(ProofRefusal::UseNonce) => self.stats.dpop_nonce_challenges += 1,
            Err(_) => self.stats.dpop_proof_rejections += 1,
        }
        result.map(Some)
    }

    /// Checks a token request's proof (`htm` POST, `htus` this token endpoint's URLs)
    /// and gives the key thumbprint what it issues is bound to.
    pub fn token_proof(
        &mut self,
        now: SystemTime,
        proofs: &[&str],
        htus: &[String],
    ) -> Result<Option<String>, TokenError> {
        let request = ProofRequest {
            proofs,
            htm: "POST",
            htus,
            access_token: None,
            required: self.proofs.policy().required,
        };
        let verified = self.check_proof(now, &request).map_err(TokenError::Dpop)?;
        if verified.is_some() {
            self.stats.dpop_token_requests += 1;
        }
        Ok(verified.map(|v| v.jkt))
    }

    /// The DPoP key thumbprint `access_token` is bound to, if it is a known bound token.
    pub fn bound_key(&self, access_token: &str) -> Option<&str> {
        self.access_tokens.get(access_token)?.jkt.as_deref()
    }
}
