//! Minting of token strings: JWT-shaped access tokens and opaque refresh tokens.
//!
//! Only the strings are made here; remembering what was issued, and to whom, is the
//! state's job. Access tokens are unsigned (`alg: none`): clients must treat them as
//! opaque, and the shape only exists so a human (or a test) can read `exp` and `sub`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The claims carried by an access token, as the dev IdP remembers and encodes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Who the token speaks for: the dev user for refresh families, the client
    /// itself for `client_credentials`.
    pub sub: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Issue time, whole seconds since the epoch.
    pub iat: u64,
    /// Expiry, whole seconds since the epoch, rounded down so it never promises more
    /// than the IdP will honour.
    pub exp: u64,
    /// Unique token id, so two tokens minted in the same second still differ; empty
    /// for an IdP that sets none (`--no-jti`): then the token is a function of the
    /// other claims.
    pub jti: String,
    /// The thumbprint of the DPoP key the token is bound to (`cnf.jkt`, RFC 9449
    /// section 6.1), for a token issued with a proof.
    pub cnf_jkt: Option<String>,
}

/// Random bytes encoded base64url without padding.
pub fn random_b64(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new opaque refresh token: 32 random bytes, base64url.
pub fn refresh_token() -> String {
    random_b64(32)
}

/// Seconds since the epoch, saturating at zero for clocks set before 1970.
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl Claims {
    /// Claims for a token issued at `now` that lives `ttl`.
    pub fn new(sub: &str, client_id: &str, now: SystemTime, ttl: Duration) -> Claims {
        Claims {
            sub: sub.to_owned(),
            client_id: client_id.to_owned(),
            iat: unix_secs(now),
            exp: unix_secs(now + ttl),
            jti: random_b64(16),
            cnf_jkt: None,
        }
    }

    /// Encodes the claims as `header.payload.signature`, the signature being random
    /// bytes: nothing verifies it, but a JWT parser sees three well-formed segments.
    /// `millis` writes `iat` and `exp` in milliseconds, the mistake some IdPs make.
    pub fn encode(&self, millis: bool) -> String {
        let unit = if millis { 1000 } else { 1 };
        let header = serde_json::json!({"alg": "none", "typ": "JWT"});
        let mut payload = serde_json::json!({
            "sub": self.sub,
            "client_id": self.client_id,
            "iat": self.iat * unit,
            "exp": self.exp * unit,
        });
        if let Some(jkt) = &self.cnf_jkt {
            payload["cnf"] = serde_json::json!({"jkt": jkt});
        }
        let signature = if self.jti.is_empty() {
            // Derived from the claims, so the same claims make the same token.
            let digest = <sha2::Sha256 as sha2::Digest>::digest(payload.to_string());
            URL_SAFE_NO_PAD.encode(digest)
        } else {
            payload["jti"] = self.jti.clone().into();
            random_b64(32)
        };
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            signature
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn without_a_jti_the_same_claims_in_the_same_second_make_the_same_token() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut a = Claims::new("dev-user", "dev-client", now, Duration::from_secs(10));
        let mut b = Claims::new("dev-user", "dev-client", now, Duration::from_secs(10));
        assert_ne!(a.encode(false), b.encode(false));
        a.jti.clear();
        b.jti.clear();
        assert_eq!(a.encode(false), b.encode(false));
        b.iat += 1;
        assert_ne!(a.encode(false), b.encode(false));
        let token = a.encode(false);
        let payload = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert!(payload.get("jti").is_none(), "{payload}");
    }

    #[test]
    fn access_token_is_a_readable_jwt() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let claims = Claims::new("dev-user", "dev-client", now, Duration::from_millis(1_500));
        let token = claims.encode(false);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "none");
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(payload["exp"], 1_001);
        assert_eq!(payload["iat"], 1_000);
        assert_eq!(payload["client_id"], "dev-client");
        assert_eq!(payload["jti"], claims.jti.as_str());
        let millis = claims.encode(true);
        let payload: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(millis.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (payload["iat"].as_u64(), payload["exp"].as_u64()),
            (Some(1_000_000), Some(1_001_000))
        );
    }

    #[test]
    fn refresh_tokens_are_32_random_bytes() {
        let a = refresh_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, refresh_token());
    }
}
