//! Verifying signed JWTs the way a strict authorization server does (RFC 7523 section
//! 3): the signature against a registered public key, the algorithm that key implies
//! (never `none`, never one the header merely claims), the audience (this token
//! endpoint), the expiry, and a `jti` that may be used only once.
//!
//! Used for `private_key_jwt` client assertions and `jwt-bearer` grant assertions.
//! Public keys come from PEM files (`BEGIN PUBLIC KEY`); the few DER elements of a
//! SubjectPublicKeyInfo are read here, and ring checks the signature.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Map, Value};

use super::tokens::unix_secs;

/// Longest lifetime (`exp` minus now) accepted for an assertion: they are meant to be
/// minted per request.
const MAX_LIFETIME_SECS: u64 = 3600;
/// Clock skew forgiven on `iat` and `nbf`.
const LEEWAY_SECS: u64 = 60;
/// Above this many remembered `jti`s, expired ones are forgotten.
const REPLAY_PRUNE_AT: usize = 4096;

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A registered public key and the one JWS algorithm it verifies.
#[derive(Clone)]
pub struct PublicKey {
    alg: &'static str,
    key: UnparsedPublicKey<Vec<u8>>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.alg)
    }
}

impl PublicKey {
    /// An RSA (RS256) or EC P-256 (ES256) key from a `BEGIN PUBLIC KEY` PEM.
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, String> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|_| "not a PEM public key (BEGIN PUBLIC KEY)".to_owned())?;
        let unsupported = || "only RSA and EC P-256 public keys are supported".to_owned();
        let (algorithm, key) = split_spki(spki.as_ref()).ok_or_else(unsupported)?;
        let (oid, params) = der(algorithm, 0x06).ok_or_else(unsupported)?;
        let key = key.to_vec();
        match oid {
            OID_RSA => Ok(PublicKey {
                alg: "RS256",
                key: UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, key),
            }),
            OID_EC if der(params, 0x06).map(|(curve, _)| curve) == Some(OID_P256) => {
                Ok(PublicKey {
                    alg: "ES256",
                    key: UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, key),
                })
            }
            _ => Err(unsupported()),
        }
    }

    /// Reads a key file (the command line's value parser).
    pub fn from_file(path: &str) -> Result<PublicKey, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        PublicKey::from_pem(&pem).map_err(|e| format!("{path}: {e}"))
    }
}

/// The algorithm identifier and the key bits of a SubjectPublicKeyInfo.
fn split_spki(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let (body, _) = der(spki, 0x30)?;
    let (algorithm, rest) = der(body, 0x30)?;
    let (bits, _) = der(rest, 0x03)?;
    // A BIT STRING starts with its count of unused bits, zero for a key.
    match bits.split_first()? {
        (0, key) => Some((algorithm, key)),
        _ => None,
    }
}

/// One DER element of tag `tag`: its contents and what follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if found != tag {
        return None;
    }
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let (bytes, rest) = rest.split_at_checked(usize::from(first & 0x7f))?;
        if bytes.is_empty() || bytes.len() > 4 {
            return None;
        }
        let len = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (len, rest)
    };
    rest.split_at_checked(len)
}

/// What a JWT must satisfy besides its signature.
pub struct Expect<'a> {
    /// Accepted `aud` values: this IdP's token endpoint URLs.
    pub audiences: &'a [String],
    pub now: SystemTime,
}

/// Checks signature, algorithm and claims; the error is a fixed description. The `jti`
/// is not remembered here: `Replay::first_use` does that once everything else passed.
pub fn verify(token: &str, key: &PublicKey, expect: &Expect<'_>) -> Result<Claims, &'static str> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the assertion is not a compact JWS (three dot-separated parts)");
    };
    let header = json_object(header).ok_or("the assertion's header is not base64url JSON")?;
    if header.get("alg").and_then(Value::as_str) != Some(key.alg) {
        return Err("the assertion's alg does not match the registered key");
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| "the assertion's signature is not base64url")?;
    let signed = &token[..header_len(token)];
    key.key
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| "the assertion's signature does not verify with the registered key")?;
    let claims = json_object(payload).ok_or("the assertion's claims are not base64url JSON")?;
    check(claims, expect)
}

/// Length of `header.payload`, the signing input.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The claims of a JWT whose signature verified and whose times and audience fit.
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub jti: String,
    pub exp: u64,
}

fn check(claims: Map<String, Value>, expect: &Expect<'_>) -> Result<Claims, &'static str> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let now = unix_secs(expect.now);
    let exp = number("exp").ok_or("the assertion has no numeric exp")?;
    if exp <= now {
        return Err("the assertion has expired");
    }
    if exp > now + MAX_LIFETIME_SECS {
        return Err("the assertion lives too long (exp more than an hour ahead)");
    }
    for name in ["iat", "nbf"] {
        match claims.get(name) {
            None => {}
            Some(value) if value.as_u64().is_some_and(|t| t <= now + LEEWAY_SECS) => {}
            Some(_) => return Err("the assertion's iat or nbf is not a past time"),
        }
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => expect.audiences.contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| expect.audiences.iter().any(|a| a == aud)),
        _ => false,
    };
    if !audience_ok {
        return Err("the assertion's aud is not this token endpoint");
    }
    Ok(Claims {
        iss: text("iss").ok_or("the assertion has no iss")?.to_owned(),
        sub: text("sub").ok_or("the assertion has no sub")?.to_owned(),
        jti: text("jti").ok_or("the assertion has no jti")?.to_owned(),
        exp,
    })
}

/// Every `jti` seen, until its assertion expires: an assertion is good for one use.
#[derive(Default)]
pub struct Replay {
    seen: HashMap<(String, String), u64>,
}

impl Replay {
    /// True the first time `(iss, jti)` is presented.
    pub fn first_use(&mut self, claims: &Claims, now: SystemTime) -> bool {
        if self.seen.len() >= REPLAY_PRUNE_AT {
            let now = unix_secs(now);
            self.seen.retain(|_, exp| *exp > now);
        }
        let key = (claims.iss.clone(), claims.jti.clone());
        self.seen.insert(key, claims.exp).is_none()
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
