//! JWTs the broker signs: `private_key_jwt` client assertions (RFC 7523 section 2.2,
//! OIDC Core section 9) and `jwt_bearer` grant assertions (RFC 7523 section 2.1).
//!
//! Signing uses ring directly: RS256 (RSASSA-PKCS1-v1_5, SHA-256) and ES256 (ECDSA
//! P-256, SHA-256, the fixed-width `r || s` signature JWS wants). A JWS compact
//! serialization is two base64url JSON documents and a signature, so no JWT library
//! is needed for the signing side. Keys are parsed from PEM at each use (a replaced
//! key file is used at once), live only for one signature, and are never printed.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::config::SigningAlg;
use crate::dpop::sec1_to_pkcs8;
use crate::secret::ExposeSecret;

/// `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A parsed private key, ready to sign.
pub struct SigningKey {
    key_id: Option<String>,
    pair: Pair,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// Shows the algorithm and key id only.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Why a configured private key cannot sign. Says what the key is not, never the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM private key block at all.
    #[error("not a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NotPem,
    /// `signing_alg = "RS256"`, and the key is no RSA key of 2048 bits or more.
    #[error("signing_alg = \"RS256\" needs an RSA key of 2048 bits or more ({why})")]
    NotRs256 { why: String },
    /// `signing_alg = "ES256"`, and the key is no EC P-256 key.
    #[error("signing_alg = \"ES256\" needs an EC P-256 key ({why})")]
    NotEs256 { why: String },
    /// No algorithm named, and the key fits neither.
    #[error("neither an RSA key of 2048 bits or more ({rsa}) nor an EC P-256 key ({ec})")]
    Unsupported { rsa: String, ec: String },
}

/// The signature could not be made (the system gave no randomness).
#[derive(Debug, thiserror::Error)]
#[error("signing failed")]
pub struct SignError;

impl SigningKey {
    /// Parses a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 (`BEGIN RSA
    /// PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`). The algorithm follows from the
    /// key unless `alg` names one, which must then fit the key.
    pub fn from_pem(
        pem: &SecretString,
        alg: Option<SigningAlg>,
        key_id: Option<String>,
    ) -> Result<SigningKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem.expose_secret().as_bytes())
            .map_err(|_| KeyError::NotPem)?;
        // The DER copy is wiped when this function returns, whatever it returns.
        let der = Zeroizing::new(der);
        let pair = match alg {
            Some(SigningAlg::Rs256) => {
                Pair::Rsa(rsa_pair(&der).map_err(|why| KeyError::NotRs256 { why })?)
            }
            Some(SigningAlg::Es256) => {
                Pair::Ec(ec_pair(&der).map_err(|why| KeyError::NotEs256 { why })?)
            }
            None => match (rsa_pair(&der), ec_pair(&der)) {
                (Ok(pair), _) => Pair::Rsa(pair),
                (_, Ok(pair)) => Pair::Ec(pair),
                (Err(rsa), Err(ec)) => return Err(KeyError::Unsupported { rsa, ec }),
            },
        };
        Ok(SigningKey { key_id, pair })
    }

    /// The JWS algorithm this key signs with: the key's kind decides it.
    pub fn alg(&self) -> SigningAlg {
        match self.pair {
            Pair::Rsa(_) => SigningAlg::Rs256,
            Pair::Ec(_) => SigningAlg::Es256,
        }
    }

    /// Signs `claims` as a compact JWS: `header.payload.signature`.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<SecretString, SignError> {
        let mut header = json!({"alg": self.alg().as_str(), "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = json!(kid);
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string())
        );
        let rng = SystemRandom::new();
        let failed = |_| SignError;
        let signature = match &self.pair {
            Pair::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(failed)?;
                sig
            }
            Pair::Ec(pair) => pair
                .sign(&rng, signing_input.as_bytes())
                .map_err(failed)?
                .as_ref()
                .to_vec(),
        };
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

fn rsa_pair(der: &PrivateKeyDer<'_>) -> Result<RsaKeyPair, String> {
    let pair = match der {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err("an EC PRIVATE KEY block".into()),
    };
    pair.map_err(|e| e.to_string())
}

fn ec_pair(der: &PrivateKeyDer<'_>) -> Result<EcdsaKeyPair, String> {
    let pkcs8 = match der {
        PrivateKeyDer::Pkcs8(k) => Zeroizing::new(k.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Sec1(k) => sec1_to_pkcs8(k.secret_sec1_der()),
        _ => return Err("an RSA PRIVATE KEY block".into()),
    };
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    EcdsaKeyPair::from_pkcs8(alg, &pkcs8, &SystemRandom::new()).map_err(|e| e.to_string())
}

/// The standard claims of a JWT the broker signs: `iss`, `sub`, `aud`, `iat`, `exp`
/// (`iat` + `lifetime`) and a random `jti`, so an IdP can refuse a replay.
pub fn claims(
    issuer: &str,
    subject: &str,
    audience: &str,
    lifetime: Duration,
) -> Map<String, Value> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let jti: [u8; 16] = rand::random();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(issuer));
    claims.insert("sub".into(), json!(subject));
    claims.insert("aud".into(), json!(audience));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + lifetime.as_secs()));
    claims.insert("jti".into(), json!(URL_SAFE_NO_PAD.encode(jti)));
    claims
}

#[cfg(test)]
#[path = "assertion_tests.rs"]
mod tests;
