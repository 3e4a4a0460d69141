//! The broker's DPoP key: an ES256 (ECDSA P-256) key pair that signs proofs.
//!
//! ES256 because every DPoP server must accept it in practice and its keys are small
//! and quick to make. The private key lives in ring's key pair and, for storage, as
//! PKCS#8 bytes that are wiped when dropped; `Debug` shows the thumbprint only.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::PROOF_TYP;
use super::jwk::ec_thumbprint;

/// Bytes of randomness in a proof's `jti`: 128 bits, above the RFC's 96.
const JTI_BYTES: usize = 16;

/// Why a key could not be made, read or used. No variant carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate a DPoP key")]
    Generate,
    #[error("not a PEM private key (BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY)")]
    NotPem,
    #[error("a DPoP key must be an EC P-256 key, found an RSA PRIVATE KEY block")]
    Rsa,
    #[error("not an EC P-256 private key usable for ES256: {0}")]
    Rejected(String),
    #[error("signing a DPoP proof failed")]
    Sign,
}

/// An ES256 key pair for DPoP proofs.
pub struct Key {
    pair: EcdsaKeyPair,
    /// The key as PKCS#8, kept for [`Key::pkcs8`] (the state store) and wiped on drop.
    pkcs8: Zeroizing<Vec<u8>>,
    /// The public JWK, computed once: every proof carries it.
    jwk: Value,
    /// The RFC 7638 thumbprint (`jkt`), computed once.
    thumbprint: String,
}

/// Shows the thumbprint only, which is public.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("alg", &"ES256")
            .field("jkt", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A fresh random key.
    pub fn generate() -> Result<Key, KeyError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| KeyError::Generate)?;
        Key::from_pkcs8(doc.as_ref())
    }

    /// A key from PKCS#8 DER, as [`Key::pkcs8`] gives it.
    pub fn from_pkcs8(der: &[u8]) -> Result<Key, KeyError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|e| KeyError::Rejected(e.to_string()))?;
        // An uncompressed point: 0x04, then x and y of 32 bytes each.
        let point = pair.public_key().as_ref();
        let (x, y) = match point.split_first() {
            Some((0x04, xy)) if xy.len() == 64 => xy.split_at(32),
            _ => return Err(KeyError::Rejected("unexpected public key shape".into())),
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let thumbprint = ec_thumbprint(&x, &y);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        Ok(Key {
            pair,
            pkcs8: Zeroizing::new(der.to_vec()),
            jwk,
            thumbprint,
        })
    }

    /// A key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`),
    /// P-256 only.
    pub fn from_pem(pem: &[u8]) -> Result<Key, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::NotPem)?;
        // The DER copy is wiped when this function returns, whatever it returns.
        let der = Zeroizing::new(der);
        match &*der {
            PrivateKeyDer::Pkcs8(k) => Key::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Sec1(k) => Key::from_pkcs8(&sec1_to_pkcs8(k.secret_sec1_der())),
            PrivateKeyDer::Pkcs1(_) => Err(KeyError::Rsa),
            _ => Err(KeyError::NotPem),
        }
    }

    /// The private key as PKCS#8 DER, for storage; wiped when the value is dropped.
    pub fn pkcs8(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8.clone()
    }

    /// The public key as a JWK: `{"kty":"EC","crv":"P-256","x":..,"y":..}`.
    pub fn public_jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// The RFC 7638 thumbprint of the public key, the `jkt` a bound token carries.
    pub fn thumbprint(&self) -> String {
        self.thumbprint.clone()
    }

    /// A proof for a request to `htu` with method `htm`, issued now, with a fresh
    /// random `jti`. `htu` is written as given: pass [`super::normalize_htu`]'s output.
    /// `ath` is [`super::ath`] of the access token sent along (for resource requests);
    /// `nonce` is the server's latest `DPoP-Nonce`.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, KeyError> {
        self.proof_at(htm, htu, ath, nonce, SystemTime::now())
    }

    /// [`Key::proof`] with an explicit `iat`.
    pub fn proof_at(
        &self,
        htm: &str,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
        iat: SystemTime,
    ) -> Result<String, KeyError> {
        let iat = iat.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let jti: [u8; JTI_BYTES] = rand::random();
        let mut claims = Map::new();
        claims.insert("jti".into(), json!(URL_SAFE_NO_PAD.encode(jti)));
        claims.insert("htm".into(), json!(htm));
        claims.insert("htu".into(), json!(htu));
        claims.insert("iat".into(), json!(iat));
        if let Some(ath) = ath {
            claims.insert("ath".into(), json!(ath));
        }
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        let header = json!({"typ": PROOF_TYP, "alg": "ES256", "jwk": self.jwk});
        self.sign_jws(&header, &Value::Object(claims))
    }

    /// Signs any header and claims as a compact JWS; the tests use it to make proofs
    /// that break one rule at a time.
    pub(super) fn sign_jws(&self, header: &Value, claims: &Value) -> Result<String, KeyError> {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| KeyError::Sign)?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

/// Wraps a SEC1 `ECPrivateKey` into the PKCS#8 document ring reads, as rustls does:
/// version 0, the id-ecPublicKey / prime256v1 algorithm, the SEC1 bytes as the key.
pub(crate) fn sec1_to_pkcs8(sec1: &[u8]) -> Zeroizing<Vec<u8>> {
    const PREFIX: &[u8] = b"\x02\x01\x00\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07";
    let octets = der_wrap(0x04, &[sec1]);
    der_wrap(0x30, &[PREFIX, &octets])
}

/// One DER element with tag `tag` around the concatenated `parts`.
fn der_wrap(tag: u8, parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Zeroizing::new(Vec::with_capacity(len + 6));
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}
