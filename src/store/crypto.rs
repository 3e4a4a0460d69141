//! Encryption of records at rest in the shared store: ChaCha20-Poly1305 (the `ring`
//! implementation rustls already brings), a 32-byte key, a fresh random nonce per write,
//! and the record's key name and version as associated data, so a sealed record cannot
//! be replayed under another credential or another version without failing to open.
//!
//! A sealed record is `MAGIC`, the 12-byte nonce, then the ciphertext with its tag.
//! Opening with the wrong key fails authentication: the caller gets a clear error, never
//! garbage. This module knows nothing of Redis.

use std::fmt;

use base64::Engine;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::secret::ExposeSecret;

/// Marks a sealed record; a record without it is plain JSON.
pub const MAGIC: &[u8] = b"tb-sealed-1:";

/// Why a configured value is not a key. Says what a key looks like, never the value.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Neither base64 nor 64 hex digits.
    #[error("{}", KEY_SHAPE)]
    Shape,
    /// Decodes, but not to 32 bytes.
    #[error("{} (it decodes to {len} bytes)", KEY_SHAPE)]
    Length { len: usize },
}

/// A record key, ready to seal and open.
pub struct Cipher {
    key: LessSafeKey,
    random: SystemRandom,
}

impl Cipher {
    /// Parses a key given as 32 bytes in base64 (`openssl rand -base64 32`) or as 64
    /// hex digits. The error never repeats the value.
    pub fn from_secret(value: &SecretString) -> Result<Cipher, KeyError> {
        let text = value.expose_secret().trim();
        let bytes = Zeroizing::new(
            if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                (0..32)
                    .map(|i| u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).unwrap_or_default())
                    .collect::<Vec<u8>>()
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| KeyError::Shape)?
            },
        );
        if bytes.len() != 32 {
            return Err(KeyError::Length { len: bytes.len() });
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| KeyError::Shape)?;
        Ok(Cipher {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    /// Seals `plain`, bound to `context` (the record's key name and version).
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| "no randomness for a nonce".to_owned())?;
        let mut sealed = Vec::with_capacity(MAGIC.len() + NONCE_LEN + plain.len() + 16);
        sealed.extend_from_slice(MAGIC);
        sealed.extend_from_slice(&nonce);
        let start = sealed.len();
        sealed.extend_from_slice(plain);
        let mut body = sealed.split_off(start);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut body,
            )
            .map_err(|_| "sealing failed".to_owned())?;
        sealed.extend_from_slice(&body);
        zeroize::Zeroize::zeroize(&mut body);
        Ok(sealed)
    }

    /// Opens what `seal` made with the same key and context.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let rest = sealed
            .strip_prefix(MAGIC)
            .ok_or("the record is not sealed")?;
        if rest.len() < NONCE_LEN + 16 {
            return Err("the sealed record is truncated".into());
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut body = Zeroizing::new(body.to_vec());
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| {
                "cannot decrypt it: state.encryption_key is not the key it was written with \
                 (or the record was altered)"
                    .to_owned()
            })?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

const KEY_SHAPE: &str = "the key must be 32 random bytes in base64 \
     (e.g. `openssl rand -base64 32`) or as 64 hex digits";

/// Whether `bytes` is a sealed record.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(ChaCha20-Poly1305, key redacted)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cipher(byte: u8) -> Cipher {
        let key = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        Cipher::from_secret(&SecretString::from(key)).unwrap()
    }

    #[test]
    fn sealed_text_opens_only_with_the_same_key_and_context() {
        let (a, b) = (cipher(1), cipher(2));
        let sealed = a.seal("k:x#3", b"refresh-token-value").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(7).any(|w| w == b"refresh"), "no plaintext");
        assert_eq!(
            a.open("k:x#3", &sealed).unwrap().as_slice(),
            b"refresh-token-value"
        );
        let wrong_key = b.open("k:x#3", &sealed).unwrap_err();
        assert!(
            wrong_key.contains("not the key it was written with"),
            "{wrong_key}"
        );
        assert!(a.open("k:y#3", &sealed).is_err(), "another credential");
        assert!(a.open("k:x#4", &sealed).is_err(), "another version");
        assert!(a.open("k:x#3", &sealed[..sealed.len() - 1]).is_err());
        // A fresh nonce per write: the same input never seals the same way twice.
        assert_ne!(a.seal("c", b"same").unwrap(), a.seal("c", b"same").unwrap());
    }

    #[test]
    fn keys_parse_from_base64_or_hex_and_bad_ones_say_what_is_expected() {
        let hex = "00".repeat(31) + "ff";
        let from_hex = Cipher::from_secret(&SecretString::from(hex)).unwrap();
        let sealed = from_hex.seal("c", b"x").unwrap();
        let mut bytes = [0u8; 32];
        bytes[31] = 0xff;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let from_b64 = Cipher::from_secret(&SecretString::from(b64)).unwrap();
        assert_eq!(from_b64.open("c", &sealed).unwrap().as_slice(), b"x");
        for bad in ["short", "c2hvcnQ=", &"zz".repeat(32)] {
            let err = Cipher::from_secret(&SecretString::from(bad.to_owned()))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("32 random bytes"), "{err}");
            assert!(!err.contains(bad), "the value is not echoed: {err}");
        }
        assert!(!format!("{from_hex:?}").contains("ff"));
    }
}
