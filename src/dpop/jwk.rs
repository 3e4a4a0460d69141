//! The public key a proof carries in its header (`jwk`, RFC 7517), and its RFC 7638
//! thumbprint, the `jkt` a DPoP-bound token is bound to.
//!
//! Only the two key types behind `ES256` and `RS256` are read. A `jwk` with private
//! members is refused: a client that sends its private key has lost it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// Members that only a private JWK has (RFC 7518 sections 6.2.2 and 6.3.2).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// Length of a P-256 coordinate.
const P256_COORD: usize = 32;

/// A public key read from a `jwk`, for the `alg` it was presented with.
pub(super) enum PublicJwk {
    Ec { x: Vec<u8>, y: Vec<u8> },
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl PublicJwk {
    /// Reads `jwk` as a key for `alg` (`ES256` or `RS256`); the error names the fault.
    pub(super) fn parse(alg: &str, jwk: &Map<String, Value>) -> Result<PublicJwk, &'static str> {
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err("the jwk holds private key members");
        }
        let text = |name| jwk.get(name).and_then(Value::as_str);
        let bytes = |name| {
            text(name)
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                .filter(|b| !b.is_empty())
        };
        match (alg, text("kty")) {
            ("ES256", Some("EC")) => {
                if text("crv") != Some("P-256") {
                    return Err("the jwk's crv is not P-256");
                }
                let coord = |name| bytes(name).filter(|b| b.len() == P256_COORD);
                match (coord("x"), coord("y")) {
                    (Some(x), Some(y)) => Ok(PublicJwk::Ec { x, y }),
                    _ => Err("the jwk's x and y are not 32-byte base64url values"),
                }
            }
            ("RS256", Some("RSA")) => match (bytes("n"), bytes("e")) {
                (Some(n), Some(e)) => Ok(PublicJwk::Rsa { n, e }),
                _ => Err("the jwk's n and e are not base64url values"),
            },
            _ => Err("the jwk's kty does not fit the alg"),
        }
    }

    /// Whether `sig` is this key's signature over `input`.
    pub(super) fn verifies(&self, input: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicJwk::Ec { x, y } => {
                let point = [&[0x04][..], x, y].concat();
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(input, sig)
                    .is_ok()
            }
            PublicJwk::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, input, sig)
                .is_ok(),
        }
    }

    /// The RFC 7638 thumbprint.
    pub(super) fn thumbprint(&self) -> String {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self {
            PublicJwk::Ec { x, y } => ec_thumbprint(&b64(x), &b64(y)),
            PublicJwk::Rsa { n, e } => rsa_thumbprint(&b64(n), &b64(e)),
        }
    }
}

/// RFC 7638 for an EC key: the required members in lexicographic order, no spaces,
/// hashed with SHA-256. Written out rather than left to a map's iteration order.
pub(super) fn ec_thumbprint(x: &str, y: &str) -> String {
    digest(&format!(
        r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
        quoted(x),
        quoted(y)
    ))
}

/// RFC 7638 for an RSA key.
pub(super) fn rsa_thumbprint(n: &str, e: &str) -> String {
    digest(&format!(
        r#"{{"e":{},"kty":"RSA","n":{}}}"#,
        quoted(e),
        quoted(n)
    ))
}

fn quoted(value: &str) -> String {
    Value::from(value).to_string()
}

fn digest(canonical: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}
