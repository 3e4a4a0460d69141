//! The shared store's record for one credential: `Saved` as JSON, sealed when a key is
//! configured. Times are kept in milliseconds, so a broker that adopts a token computes
//! the same expiry as the broker that fetched it.
//!
//! Unknown fields are accepted (unlike the file store's format): during a rolling
//! upgrade, older brokers must still read records that newer ones wrote.
//!
//! Records are read only after the fleet's key check passed (see `redis`), so a sealed
//! record that does not open is damaged (or was planted), not sealed with another key.
//! Not detected here: a record rolled back to an older sealed copy of the same version
//! (brokers that saw a newer version notice the step back; one starting then does not).

use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Saved;
use super::crypto::{self, Cipher};
use crate::secret::ExposeSecret;

#[derive(Serialize, Deserialize)]
struct Body {
    credential: String,
    refresh_token: Option<String>,
    access_token: Option<String>,
    token_type: String,
    scope: Option<String>,
    issued_at_ms: u64,
    expires_at_ms: u64,
    bootstrap: Option<String>,
    reauth_reason: Option<String>,
    in_flight_since_ms: Option<u64>,
    /// Which broker wrote it (host and pid), for operators reading logs.
    #[serde(default)]
    written_by: String,
}

/// Why a stored record could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// Its bytes are broken (or do not open with the fleet's key): this record is lost.
    Corrupt(String),
    /// It is sealed and this broker has no key, or in clear while this broker has one:
    /// nothing is lost, this broker is misconfigured.
    Key(String),
}

/// The record's bytes for `version`, sealed when `cipher` is set.
pub fn encode(
    name: &str,
    context: &str,
    saved: &Saved,
    writer: &str,
    cipher: Option<&Cipher>,
) -> Result<Vec<u8>, String> {
    let mut body = Body {
        credential: name.to_owned(),
        refresh_token: saved
            .refresh_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        access_token: saved
            .access_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        token_type: saved.token_type.clone(),
        scope: saved.scope.clone(),
        issued_at_ms: millis(saved.issued_at),
        expires_at_ms: millis(saved.expires_at),
        bootstrap: saved.bootstrap.clone(),
        reauth_reason: saved.reauth_reason.clone(),
        in_flight_since_ms: saved.in_flight_since.map(millis),
        written_by: writer.to_owned(),
    };
    let json = serde_json::to_vec(&body).map(Zeroizing::new);
    for secret in [&mut body.refresh_token, &mut body.access_token]
        .into_iter()
        .flatten()
    {
        zeroize::Zeroize::zeroize(secret);
    }
    let json = json.map_err(|e| e.to_string())?;
    match cipher {
        Some(cipher) => cipher.seal(context, &json),
        None => Ok(json.to_vec()),
    }
}

/// A record read back, with the name of the broker that wrote it.
pub fn decode(
    name: &str,
    context: &str,
    bytes: &[u8],
    cipher: Option<&Cipher>,
) -> Result<(Saved, String), Unreadable> {
    let opened;
    let json: &[u8] = match (crypto::is_sealed(bytes), cipher) {
        (true, Some(cipher)) => {
            // The key check passed before any record is read: a record that does not
            // open with the fleet's key is damaged, and waiting for another key is vain.
            opened = cipher.open(context, bytes).map_err(Unreadable::Corrupt)?;
            &opened
        }
        (true, None) => {
            return Err(Unreadable::Key(
                "it is encrypted; set state.encryption_key to the key the fleet uses".into(),
            ));
        }
        (false, Some(_)) => {
            return Err(Unreadable::Key(
                "it is stored in clear, but state.encryption_key is set: a record anyone could \
                 have written is not trusted; delete it to start again from the bootstrap token"
                    .into(),
            ));
        }
        (false, None) => bytes,
    };
    let body: Body = serde_json::from_slice(json)
        .map_err(|e| Unreadable::Corrupt(super::bad_json(&e, "record")))?;
    if body.credential != name {
        return Err(Unreadable::Corrupt(format!(
            "the record belongs to credential `{}`",
            body.credential
        )));
    }
    let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    let saved = Saved {
        refresh_token: body.refresh_token.map(SecretString::from),
        access_token: body.access_token.map(SecretString::from),
        token_type: body.token_type,
        scope: body.scope,
        issued_at: at(body.issued_at_ms),
        expires_at: at(body.expires_at_ms),
        bootstrap: body.bootstrap,
        reauth_reason: body.reauth_reason,
        in_flight_since: body.in_flight_since_ms.map(at),
    };
    Ok((saved, body.written_by))
}

pub(super) fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine;

    fn saved() -> Saved {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Saved {
            refresh_token: Some(SecretString::from("rt-secret".to_owned())),
            access_token: Some(SecretString::from("at-secret".to_owned())),
            token_type: "Bearer".into(),
            scope: Some("read".into()),
            issued_at: now,
            expires_at: now + Duration::from_millis(60_500),
            bootstrap: Some("fp".into()),
            reauth_reason: None,
            in_flight_since: Some(now),
        }
    }

    fn cipher(byte: u8) -> Cipher {
        let key = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        Cipher::from_secret(&SecretString::from(key)).unwrap()
    }

    #[test]
    fn a_record_round_trips_to_the_millisecond_in_clear_and_sealed() {
        for cipher in [None, Some(cipher(7))] {
            let bytes = encode("x", "p:x#1", &saved(), "host:1", cipher.as_ref()).unwrap();
            let sealed = cipher.is_some();
            let text = String::from_utf8_lossy(&bytes);
            assert_eq!(text.contains("rt-secret"), !sealed, "{text}");
            let (back, writer) = decode("x", "p:x#1", &bytes, cipher.as_ref()).unwrap();
            assert_eq!(writer, "host:1");
            assert_eq!(back.refresh_token.unwrap().expose_secret(), "rt-secret");
            assert_eq!(back.expires_at, saved().expires_at);
            assert_eq!(back.in_flight_since, saved().in_flight_since);
        }
    }

    #[test]
    fn key_mismatches_are_told_apart_from_corruption() {
        let sealed = encode("x", "c", &saved(), "", Some(&cipher(1))).unwrap();
        let clear = encode("x", "c", &saved(), "", None).unwrap();
        let key_error = |r: Result<(Saved, String), Unreadable>| match r {
            Err(Unreadable::Key(message)) => message,
            other => panic!("expected a key error, got {:?}", other.map(|_| ())),
        };
        assert!(key_error(decode("x", "c", &sealed, None)).contains("set state.encryption_key"));
        assert!(key_error(decode("x", "c", &clear, Some(&cipher(1)))).contains("stored in clear"));
        assert!(matches!(
            decode("y", "c", &clear, None),
            Err(Unreadable::Corrupt(m)) if m.contains("belongs to credential `x`")
        ));
        assert!(matches!(
            decode("x", "c", b"{not json", None),
            Err(Unreadable::Corrupt(_))
        ));
    }

    #[test]
    fn a_damaged_sealed_record_is_corrupt_not_a_key_problem() {
        let mut sealed = encode("x", "c", &saved(), "", Some(&cipher(1))).unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            decode("x", "c", &sealed, Some(&cipher(1))),
            Err(Unreadable::Corrupt(m)) if m.contains("cannot decrypt")
        ));
        // Moved to another version (its associated data), or sealed with another key:
        // the key check passed, so the record is what is wrong.
        let moved = encode("x", "c#1", &saved(), "", Some(&cipher(1))).unwrap();
        assert!(matches!(
            decode("x", "c#2", &moved, Some(&cipher(1))),
            Err(Unreadable::Corrupt(_))
        ));
        assert!(matches!(
            decode("x", "c#1", &moved, Some(&cipher(2))),
            Err(Unreadable::Corrupt(_))
        ));
    }

    #[test]
    fn a_malformed_record_is_described_without_its_values() {
        let json = br#"{"credential":"x","refresh_token":"rt-secret","access_token":"at-secret",
            "token_type":"Bearer","scope":null,"issued_at_ms":"at-secret-2","expires_at_ms":1,
            "bootstrap":null,"reauth_reason":null,"in_flight_since_ms":null}"#;
        let Err(Unreadable::Corrupt(message)) = decode("x", "c", json, None) else {
            panic!("expected a corrupt record");
        };
        assert!(
            message.contains("wrong type") && message.contains("line 2"),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
        let truncated = decode(
            "x",
            "c",
            br#"{"credential": "x", "refresh_token": "rt-sec"#,
            None,
        );
        let Err(Unreadable::Corrupt(message)) = truncated else {
            panic!("expected a corrupt record");
        };
        assert!(!message.contains("rt-sec"), "{message}");
    }
}
