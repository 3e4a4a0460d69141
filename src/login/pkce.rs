//! The one-time values of a login: the PKCE verifier and its S256 challenge
//! (RFC 7636), and the `state` and `nonce` that bind the answer to this login.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// A PKCE pair: the verifier stays here until the code is redeemed; the challenge goes
/// to the authorization endpoint.
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

impl Pkce {
    /// A fresh pair: 32 random bytes, base64url (43 characters, RFC 7636 4.1).
    pub fn new() -> Pkce {
        Pkce::from_verifier(random_value())
    }

    fn from_verifier(verifier: String) -> Pkce {
        let challenge = challenge(&verifier);
        Pkce {
            verifier: SecretString::from(verifier),
            challenge,
        }
    }
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

/// `BASE64URL(SHA256(ASCII(code_verifier)))`, the only method offered (`S256`).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// 256 random bits, base64url: unguessable `state`, `nonce` and verifier values.
pub fn random_value() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Compares a value that came back with the one sent, in constant time.
pub fn same(sent: &str, received: &str) -> bool {
    let (a, b) = (sent.as_bytes(), received.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn s256_matches_the_rfc_7636_appendix_b_example() {
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned());
        assert_eq!(
            pkce.challenge,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn fresh_values_are_43_url_safe_characters_and_never_repeat() {
        let pkce = Pkce::new();
        let values = [
            pkce.verifier.expose_secret().to_owned(),
            random_value(),
            random_value(),
        ];
        for value in &values {
            assert_eq!(value.len(), 43, "{value}");
            assert!(
                value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{value}"
            );
        }
        assert_ne!(values[0], values[1]);
        assert_ne!(values[1], values[2]);
        assert_eq!(pkce.challenge, challenge(&values[0]));
        assert!(
            !format!("{pkce:?}").contains(&values[0]),
            "Debug hides the verifier"
        );
    }

    #[test]
    fn state_comparison_needs_the_exact_value() {
        let state = random_value();
        assert!(same(&state, &state.clone()));
        assert!(!same(&state, &state[..42]));
        assert!(!same(&state, ""));
        let mut other = state.clone().into_bytes();
        other[0] ^= 1;
        assert!(!same(&state, &String::from_utf8(other).unwrap_or_default()));
    }
}
