//! DPoP (RFC 9449): proofs of possession that bind an access token to a key pair.
//!
//! The shared core for both ends: the broker signs proofs with its [`Key`] (ES256), and
//! the dev IdP (token endpoint and resource server) checks them with [`verify`]. Keys
//! never leave a [`Key`] except as PKCS#8 bytes for the state store; nothing here prints
//! them. What this module does not do: remember seen `jti`s (a verifier's caller keeps
//! its own bounded set), hand out server nonces, or speak HTTP.
//!
//! Layout: `key` holds the private key and signs; `jwk` reads a proof's public key and
//! computes thumbprints (RFC 7638); `htu` normalises the request URI a proof names;
//! `verify` checks a proof against the request it came with.

mod htu;
mod jwk;
mod key;
mod verify;

pub use htu::{HtuError, normalize_htu};
pub use key::{Key, KeyError};
pub use verify::{Expect, Verified, VerifyError, verify};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// The JWT `typ` of a DPoP proof (RFC 9449 section 4.2).
pub const PROOF_TYP: &str = "dpop+jwt";

/// The `alg`s [`verify`] accepts, as a server lists them in its metadata
/// (`dpop_signing_alg_values_supported`).
pub const SIGNING_ALGS: [&str; 2] = ["ES256", "RS256"];

/// The `ath` claim for `access_token`: base64url of its SHA-256 (RFC 9449 section 4.2).
pub fn ath(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

pub(crate) use key::sec1_to_pkcs8;

#[cfg(test)]
#[path = "key_tests.rs"]
mod key_tests;
#[cfg(test)]
#[path = "verify_tests.rs"]
mod verify_tests;
