//! Checking a DPoP proof against the request it came with (RFC 9449 section 4.3).
//!
//! Everything a single proof can be checked for is checked here; what needs memory
//! across requests is the caller's: whether the `jti` was seen before, which nonces
//! are current, and whether the `jkt` fits the token or refresh token presented.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::jwk::PublicJwk;
use super::{PROOF_TYP, ath, normalize_htu};

/// Longest proof read: an RS256 proof with an 8192-bit key is under 3 KiB.
const MAX_PROOF_LEN: usize = 8 * 1024;
/// Longest `jti` accepted, so a caller's seen-set stays bounded in bytes too.
const MAX_JTI_LEN: usize = 256;
/// How far in the future an `iat` may lie: the client's clock may run ahead.
const FUTURE_SKEW: Duration = Duration::from_secs(60);

/// What the request a proof came with demands of it.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The request's method.
    pub htm: &'a str,
    /// The request's URI as the client addressed it; normalised before comparing.
    pub htu: &'a str,
    /// The verifier's clock.
    pub now: SystemTime,
    /// How old a proof may be (its `iat` at most this far back).
    pub max_age: Duration,
    /// The server nonces accepted (current and previous, say); empty: none demanded.
    pub nonces: &'a [&'a str],
    /// The access token sent along, whose hash the proof's `ath` must be.
    pub access_token: Option<&'a str>,
}

/// A proof that passed: the key's thumbprint and what a replay check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// RFC 7638 thumbprint of the proof's key, to bind (`cnf.jkt`) or compare.
    pub jkt: String,
    pub jti: String,
    /// Seconds since the epoch.
    pub iat: u64,
}

/// Why a proof was refused. The messages name the rule broken, never the proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the DPoP proof is not a compact JWS of base64url JSON")]
    Malformed,
    #[error("the DPoP proof's typ is not dpop+jwt")]
    Typ,
    #[error("the DPoP proof's alg is not ES256 or RS256")]
    Alg,
    #[error("the DPoP proof's jwk is unusable: {0}")]
    Jwk(&'static str),
    #[error("the DPoP proof's signature does not verify with its jwk")]
    Signature,
    #[error("the DPoP proof lacks a usable {0} claim")]
    Missing(&'static str),
    #[error("the DPoP proof's htm is not the request's method")]
    Htm,
    #[error("the DPoP proof's htu is not the request's URI")]
    Htu,
    #[error("the DPoP proof's iat is too old or in the future")]
    Iat,
    #[error("the DPoP proof does not carry the server's current nonce")]
    Nonce,
    #[error("the DPoP proof's ath is not the hash of the access token sent")]
    Ath,
}

/// Checks `proof` against `expect`: header, signature, then claims.
pub fn verify(proof: &str, expect: &Expect<'_>) -> Result<Verified, VerifyError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(VerifyError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(header), Some(claims), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let header = json_object(header).ok_or(VerifyError::Malformed)?;
    let key = check_header(&header)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| VerifyError::Malformed)?;
    let signed = &proof[..proof.rfind('.').unwrap_or(proof.len())];
    if !key.verifies(signed.as_bytes(), &sig) {
        return Err(VerifyError::Signature);
    }
    let claims = json_object(claims).ok_or(VerifyError::Malformed)?;
    let (jti, iat) = check_claims(&claims, expect)?;
    Ok(Verified {
        jkt: key.thumbprint(),
        jti,
        iat,
    })
}

/// `typ`, `alg` and the public `jwk` the signature is checked with.
fn check_header(header: &Map<String, Value>) -> Result<PublicJwk, VerifyError> {
    if header.get("typ").and_then(Value::as_str) != Some(PROOF_TYP) {
        return Err(VerifyError::Typ);
    }
    let alg = header.get("alg").and_then(Value::as_str);
    let alg = alg
        .filter(|a| super::SIGNING_ALGS.contains(a))
        .ok_or(VerifyError::Alg)?;
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(VerifyError::Jwk("the header has no jwk object"))?;
    PublicJwk::parse(alg, jwk).map_err(VerifyError::Jwk)
}

/// The claims, in the order of RFC 9449 section 4.3; gives back `jti` and `iat`.
fn check_claims(
    claims: &Map<String, Value>,
    expect: &Expect<'_>,
) -> Result<(String, u64), VerifyError> {
    let text = |name| claims.get(name).and_then(Value::as_str);
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or(VerifyError::Missing("jti"))?;
    if text("htm").ok_or(VerifyError::Missing("htm"))? != expect.htm {
        return Err(VerifyError::Htm);
    }
    let htu = normalize_htu(text("htu").ok_or(VerifyError::Missing("htu"))?)
        .map_err(|_| VerifyError::Htu)?;
    if Ok(htu) != normalize_htu(expect.htu) {
        return Err(VerifyError::Htu);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or(VerifyError::Missing("iat"))?;
    // Checked: an `iat` near u64::MAX must be refused, not overflow the clock.
    let at = UNIX_EPOCH
        .checked_add(Duration::from_secs(iat))
        .ok_or(VerifyError::Iat)?;
    let too_old = expect
        .now
        .checked_sub(expect.max_age)
        .is_some_and(|t| at < t);
    if too_old || at > expect.now + FUTURE_SKEW {
        return Err(VerifyError::Iat);
    }
    if !expect.nonces.is_empty() && !text("nonce").is_some_and(|n| expect.nonces.contains(&n)) {
        return Err(VerifyError::Nonce);
    }
    if let Some(token) = expect.access_token
        && text("ath") != Some(ath(token).as_str())
    {
        return Err(VerifyError::Ath);
    }
    Ok((jti.to_owned(), iat))
}

fn json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}
