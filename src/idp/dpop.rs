//! DPoP (RFC 9449) at the token endpoint: the `DPoP` proof every token request of a
//! `dpop = true` credential carries, and the server nonce the IdP may demand.
//!
//! The IdP's latest `DPoP-Nonce` is remembered (`Nonce`) and sent in the next proof.
//! A `use_dpop_nonce` refusal (RFC 9449 section 8) means the request did not take
//! effect, so `request_token` sends it once more with the nonce, inside the same call:
//! one refresh, two HTTP requests, and the refresh token is not spent by the first.
//! The key, and whether the answer's `token_type` is right, are the broker's business.

use std::sync::Mutex;

use reqwest::header::HeaderMap;

use super::IdpError;
use crate::dpop::Key;

/// Longest server nonce kept; a longer one is ignored (it is opaque, but not a payload).
pub const MAX_NONCE: usize = 1024;

/// What a DPoP credential brings to a token request.
pub struct Dpop<'a> {
    /// The key the proofs are signed with (and the token is bound to).
    pub key: &'a Key,
    /// The IdP's latest nonce, shared by every request of the credential.
    pub nonce: &'a Nonce,
}

/// The latest `DPoP-Nonce` one server sent.
#[derive(Debug, Default)]
pub struct Nonce(Mutex<Option<String>>);

impl Nonce {
    pub fn get(&self) -> Option<String> {
        self.lock().clone()
    }

    /// Keeps the `DPoP-Nonce` of an answer, if it carries a usable one.
    pub fn remember(&self, headers: &HeaderMap) -> bool {
        match headers
            .get("dpop-nonce")
            .and_then(|v| valid_nonce(v.as_bytes()))
        {
            Some(nonce) => {
                *self.lock() = Some(nonce);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A plain value: a panic elsewhere cannot leave it half written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A nonce as RFC 9449 section 8.1 allows it (`NQCHAR`: visible ASCII but `"` and
/// `\`), of a sane length.
pub fn valid_nonce(bytes: &[u8]) -> Option<String> {
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NONCE
        && bytes
            .iter()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E));
    ok.then(|| String::from_utf8_lossy(bytes).into_owned())
}

impl Dpop<'_> {
    /// A proof for a POST to the token endpoint `htu`, with the latest nonce.
    pub fn proof(&self, htu: &str) -> Result<String, IdpError> {
        self.key
            .proof("POST", htu, None, self.nonce.get().as_deref())
            .map_err(|e| IdpError::Unavailable {
                reason: format!("cannot sign the DPoP proof: {e}"),
                retry_after: None,
            })
    }
}

/// The token endpoint as a proof's `htu`.
pub fn htu(url: &reqwest::Url) -> Result<String, IdpError> {
    crate::dpop::normalize_htu(url.as_str()).map_err(|e| IdpError::Unavailable {
        reason: format!("the token endpoint cannot be named in a DPoP proof: {e}"),
        retry_after: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_nonces_of_the_allowed_characters_and_length_are_kept() {
        assert_eq!(
            valid_nonce(b"eyJ7S_zG.9-~").as_deref(),
            Some("eyJ7S_zG.9-~")
        );
        for bad in [&b""[..], b"a b", b"a\"b", b"a\\b", b"a\nb", "é".as_bytes()] {
            assert_eq!(valid_nonce(bad), None, "{bad:?}");
        }
        assert!(valid_nonce(&[b'a'; MAX_NONCE]).is_some());
        assert!(valid_nonce(&[b'a'; MAX_NONCE + 1]).is_none());
        let nonce = Nonce::default();
        let mut headers = HeaderMap::new();
        assert!(!nonce.remember(&headers));
        headers.insert("dpop-nonce", "n1".parse().unwrap());
        assert!(nonce.remember(&headers));
        headers.insert("dpop-nonce", "bad nonce".parse().unwrap());
        assert!(!nonce.remember(&headers));
        assert_eq!(
            nonce.get().as_deref(),
            Some("n1"),
            "a bad one replaces nothing"
        );
    }
}
