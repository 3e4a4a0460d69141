//! Recognising the inputs of a refused request again, without keeping them.
//!
//! When the IdP refuses a credential that has no refresh token, the broker stops asking
//! until something the IdP judges changes: a secret, the private key, a subject token,
//! an assertion, or a setting that shapes the request (endpoint, client, scope,
//! audience, grant parameters, assertion claims, algorithm, key id). `Digest` condenses
//! all of them, in memory only, to notice a change cheaply.
//!
//! The refusal is stored (so a restart, or another broker sharing Redis, does not repeat
//! the refused call) with a fingerprint of that digest: PBKDF2-HMAC-SHA256 with a random
//! salt, written `pbkdf2-sha256$ITERATIONS$SALT$HASH`. The salt and count travel with
//! it, so any broker can compare its own inputs with it without a key kept anywhere.
//! Someone who reads the store learns nothing from it but can test guesses (of a
//! low-entropy client secret, say) only at the cost of `ITERATIONS` HMACs per guess,
//! instead of one hash. The stored state of a healthy credential holds no fingerprint.

use std::fmt;
use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::pbkdf2;
use sha2::{Digest as _, Sha256};

use crate::config::{CredentialSpec, Endpoint, Grant, JwtBearer};

/// Iterations of new fingerprints: about 40 ms of one core (release build), paid once
/// per refusal and once per restart of a refused credential.
const ITERATIONS: u32 = 100_000;

/// Above this, a stored count is refused rather than computed: a record must not be
/// able to make a broker spin.
const MAX_ITERATIONS: u32 = 10_000_000;

const PREFIX: &str = "pbkdf2-sha256";

/// A SHA-256 over everything a request for a credential is made of. Never stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest([redacted])")
    }
}

/// Feeds the digest: each part with its name and length first, so no two different
/// input sets can run together into the same bytes.
pub(super) struct Hasher(Sha256);

impl Hasher {
    /// A hasher already fed with the request-shaping settings of `spec`.
    pub(super) fn new(spec: &CredentialSpec) -> Hasher {
        let mut hasher = Hasher(Sha256::new());
        hasher.part("v", "2");
        settings(&mut hasher, spec);
        hasher
    }

    pub(super) fn part(&mut self, name: &str, value: &str) {
        for bytes in [name.as_bytes(), value.as_bytes()] {
            self.0.update((bytes.len() as u64).to_be_bytes());
            self.0.update(bytes);
        }
    }

    fn optional(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(value) => self.part(name, value),
            None => self.part("absent", name),
        }
    }

    pub(super) fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// Everything besides secrets that the IdP sees of a request.
fn settings(h: &mut Hasher, spec: &CredentialSpec) {
    match &spec.endpoint {
        Some(Endpoint::TokenUrl(url)) => h.part("token_url", &url.text),
        Some(Endpoint::Issuer(issuer)) => h.part("issuer", issuer.as_str()),
        None => h.part("absent", "endpoint"),
    }
    h.part("grant", spec.grant.as_str());
    h.part("client_id", &spec.client_id);
    h.part("client_auth", spec.client_auth.as_str());
    h.optional("scope", spec.scope.as_deref());
    h.optional("audience", spec.audience.as_deref());
    if let Some(key) = &spec.private_key {
        h.optional("signing_alg", key.alg.map(|alg| alg.as_str()));
        h.optional("key_id", key.key_id.as_deref());
        h.part("assertion_lifetime", &key.lifetime.as_millis().to_string());
    }
    match &spec.grant {
        Grant::TokenExchange(x) => {
            h.part("subject_token_type", &x.subject_token_type);
            h.optional("actor_token_type", x.actor_token_type.as_deref());
            h.optional("requested_token_type", x.requested_token_type.as_deref());
            for resource in &x.resource {
                h.part("resource", resource);
            }
        }
        Grant::JwtBearer(JwtBearer::Signed(signed)) => {
            h.part("assertion_issuer", &signed.issuer);
            h.part("assertion_subject", &signed.subject);
            h.optional("assertion_audience", signed.audience.as_deref());
            for (name, value) in &signed.claims {
                h.part("claim", name);
                h.part("value", value);
            }
        }
        _ => {}
    }
}

/// A new fingerprint of `digest`, with a fresh salt. Slow on purpose: run it off the
/// async threads.
pub fn seal(digest: &Digest) -> String {
    let salt: [u8; 16] = rand::random();
    let mut hash = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN),
        &salt,
        &digest.0,
        &mut hash,
    );
    format!(
        "{PREFIX}${ITERATIONS}${}${}",
        URL_SAFE_NO_PAD.encode(salt),
        URL_SAFE_NO_PAD.encode(hash)
    )
}

/// Whether `stored` is a fingerprint of `digest`. Anything else (another format, an
/// older broker's fingerprint, garbage) does not match. As slow as `seal`.
pub fn matches(stored: &str, digest: &Digest) -> bool {
    let mut parts = stored.split('$');
    let (Some(PREFIX), Some(iterations), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let iterations = iterations
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX_ITERATIONS)
        .and_then(NonZeroU32::new);
    let (Some(iterations), Ok(salt), Ok(hash)) = (
        iterations,
        URL_SAFE_NO_PAD.decode(salt),
        URL_SAFE_NO_PAD.decode(hash),
    ) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        &digest.0,
        &hash,
    )
    .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn digest(text: &str) -> Digest {
        let mut hasher = Hasher(Sha256::new());
        hasher.part("client_secret", text);
        hasher.finish()
    }

    #[test]
    fn a_fingerprint_matches_its_inputs_only_and_is_salted() {
        let (a, b) = (digest("hunter2"), digest("hunter3"));
        let first = seal(&a);
        assert!(first.starts_with("pbkdf2-sha256$100000$"), "{first}");
        assert!(matches(&first, &a) && !matches(&first, &b));
        let second = seal(&a);
        assert_ne!(first, second, "a fresh salt each time");
        assert!(matches(&second, &a));
        // An unsalted SHA-256 of the secret, as older brokers stored, is not it.
        let plain = crate::secret::hex(&Sha256::digest(b"hunter2")[..16]);
        assert!(!first.contains(&plain));
        for garbage in [
            "",
            &plain,
            "pbkdf2-sha256$0$AA$AA",
            "pbkdf2-sha256$99999999999$AA$AA",
        ] {
            assert!(!matches(garbage, &a), "{garbage}");
        }
        assert_eq!(format!("{a:?}"), "Digest([redacted])");
    }
}
