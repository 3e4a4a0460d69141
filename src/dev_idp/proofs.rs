//! DPoP (RFC 9449) at the dev IdP: what a proof must satisfy beyond its signature.
//!
//! `crate::dpop::verify` checks one proof on its own; this file keeps what needs
//! memory across requests: the `jti`s already seen (a proof is good for one request),
//! and the server nonces when `--dpop-nonce` demands them. The token endpoint and
//! `/api/whoami` share both. Pure like the state: every call takes `now`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::dpop::{self, Expect, Verified, VerifyError};

use super::tokens::{random_b64, unix_secs};

/// How old a proof may be. Proofs are made per request, so this only has to cover
/// clock skew and the time a request spends in flight (injected latency included).
pub const MAX_AGE: Duration = Duration::from_secs(120);
/// How long a nonce is the current one; the previous one stays accepted as long
/// again, so a client holding a nonce never meets a challenge it could not expect.
pub const NONCE_ROTATION: Duration = Duration::from_secs(60);
/// Above this many remembered `jti`s, those too old to pass the `iat` check anyway
/// are forgotten: the set stays bounded by the proofs of one `MAX_AGE` window.
const SEEN_PRUNE_AT: usize = 4096;
/// Slack on the prune: a proof's `iat` may lie up to a minute ahead (see `dpop`).
const FUTURE_SKEW_SECS: u64 = 60;

/// The DPoP rules of one IdP instance, from its options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DpopPolicy {
    /// Demand a server nonce in every proof (`--dpop-nonce`).
    pub nonce: bool,
    /// Refuse token requests without a proof (`--dpop-required`).
    pub required: bool,
}

/// Why a proof was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofRefusal {
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error("the DPoP proof was used before; make a fresh one per request")]
    Replayed,
    #[error("the request carries more than one DPoP header")]
    Several,
    #[error("this IdP requires a DPoP proof with every token request")]
    Required,
    #[error("the DPoP proof must carry the nonce of the DPoP-Nonce header")]
    UseNonce,
}

/// The current and previous server nonce.
struct Nonces {
    current: String,
    previous: Option<String>,
    since: SystemTime,
}

/// Seen `jti`s and nonces.
#[derive(Default)]
pub struct Proofs {
    policy: DpopPolicy,
    /// `(jkt, jti)` of every accepted proof, with its `iat`, until it is too old to pass.
    seen: HashMap<(String, String), u64>,
    nonces: Option<Nonces>,
}

impl Proofs {
    pub fn new(policy: DpopPolicy) -> Proofs {
        Proofs {
            policy,
            ..Proofs::default()
        }
    }

    pub fn policy(&self) -> DpopPolicy {
        self.policy
    }

    /// The nonce to announce in `DPoP-Nonce` at `now`, rotating it when due; `None`
    /// when nonces are not demanded.
    pub fn nonce(&mut self, now: SystemTime) -> Option<String> {
        if !self.policy.nonce {
            return None;
        }
        let nonces = self.nonces.get_or_insert_with(|| Nonces {
            current: random_b64(16),
            previous: None,
            since: now,
        });
        // A clock that stepped back counts as no time elapsed.
        if now.duration_since(nonces.since).unwrap_or_default() >= NONCE_ROTATION {
            let fresh = random_b64(16);
            nonces.previous = Some(std::mem::replace(&mut nonces.current, fresh));
            nonces.since = now;
        }
        Some(nonces.current.clone())
    }

    /// Checks `proof` for a request of method `htm` to any of `htus` (the URLs this
    /// endpoint answers to), with `access_token` for `ath`; remembers its `jti`.
    pub fn check(
        &mut self,
        now: SystemTime,
        proof: &str,
        htm: &str,
        htus: &[String],
        access_token: Option<&str>,
    ) -> Result<Verified, ProofRefusal> {
        let current = self.nonce(now);
        let accepted: Vec<&str> = match (&current, &self.nonces) {
            (Some(current), Some(n)) => [Some(current.as_str()), n.previous.as_deref()]
                .into_iter()
                .flatten()
                .collect(),
            _ => Vec::new(),
        };
        let verified = verify_any(proof, htm, htus, now, &accepted, access_token)?;
        if self.seen.len() >= SEEN_PRUNE_AT {
            let oldest = unix_secs(now).saturating_sub(MAX_AGE.as_secs() + FUTURE_SKEW_SECS);
            self.seen.retain(|_, iat| *iat >= oldest);
        }
        let key = (verified.jkt.clone(), verified.jti.clone());
        if self.seen.insert(key, verified.iat).is_some() {
            return Err(ProofRefusal::Replayed);
        }
        Ok(verified)
    }
}

/// Verifies against each URL the endpoint answers to (the client may address it by
/// `Host` or by the listen address, over http or https). When none fits, the most
/// telling error: any other than a wrong `htu`.
fn verify_any(
    proof: &str,
    htm: &str,
    htus: &[String],
    now: SystemTime,
    nonces: &[&str],
    access_token: Option<&str>,
) -> Result<Verified, ProofRefusal> {
    let mut refusal = VerifyError::Htu;
    for htu in htus {
        let expect = Expect {
            htm,
            htu,
            now,
            max_age: MAX_AGE,
            nonces,
            access_token,
        };
        match dpop::verify(proof, &expect) {
            Ok(verified) => return Ok(verified),
            Err(VerifyError::Nonce) => return Err(ProofRefusal::UseNonce),
            Err(VerifyError::Htu) => {}
            // Any other fault does not depend on the URL: no need to try the others.
            Err(err) => {
                refusal = err;
                break;
            }
        }
    }
    Err(refusal.into())
}

#[cfg(test)]
#[path = "proofs_tests.rs"]
mod tests;
