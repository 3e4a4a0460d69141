//! Sealing the file store at rest: the keys, and the key check kept in `state.dir`.
//!
//! With `state.encryption_key`, every state file's body is sealed as the Redis records
//! are (`crypto`: ChaCha20-Poly1305, a fresh nonce per write), bound to the credential
//! and the generation so a file cannot be passed off as another. Files sealed with one
//! of `state.previous_encryption_keys`, or written in clear before a key was set, still
//! open at start-up, where they are sealed again with the current key.
//!
//! `.key-check` in the directory holds a constant sealed with the key the files are
//! sealed with. It is what lets the broker refuse to start with a wrong key, or without
//! the key the files need, instead of taking every file for corrupt and waiting for new
//! bootstrap tokens. It is written last when files are sealed again, so a start-up
//! interrupted halfway seals the rest at the next one.

use std::fs;
use std::path::Path;

use zeroize::Zeroizing;

use super::OpenError;
use super::crypto::Cipher;
use crate::config::StateKeys;

pub(super) const CHECK_FILE: &str = ".key-check";
const CHECK_CONTEXT: &str = "key-check";
const CHECK: &[u8] = b"token-broker key check";

/// The current key and those it replaced.
pub struct Keys {
    current: Cipher,
    previous: Vec<Cipher>,
}

impl Keys {
    /// Reads and parses the configured keys; errors name the key, never its value.
    pub fn read(config: &StateKeys) -> Result<Keys, OpenError> {
        let cipher = |field: String, source: &crate::secret::SecretSource| {
            let value = match source.read() {
                Ok(value) => value,
                Err(source) => return Err(OpenError::Secret { field, source }),
            };
            Cipher::from_secret(&value).map_err(|source| OpenError::Key { field, source })
        };
        let current = cipher("encryption_key".to_owned(), &config.key)?;
        let previous = config
            .previous
            .iter()
            .enumerate()
            .map(|(i, s)| cipher(format!("previous_encryption_keys[{i}]"), s))
            .collect::<Result<_, _>>()?;
        Ok(Keys { current, previous })
    }

    /// Seals with the current key.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        self.current.seal(context, plain)
    }

    /// Opens with the current key, else with a previous one; also whether it was the
    /// current one.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<(Zeroizing<Vec<u8>>, bool), String> {
        let current = self.current.open(context, sealed);
        let Err(why) = current else {
            return current.map(|plain| (plain, true));
        };
        self.previous
            .iter()
            .find_map(|key| key.open(context, sealed).ok())
            .map(|plain| (plain, false))
            .ok_or(why)
    }
}

/// What the key check says about `dir`: whether files must be sealed again with the
/// current key (none was set before, or a previous key sealed them), or why this
/// broker's keys do not fit the files.
pub fn check(dir: &Path, keys: Option<&Keys>) -> Result<bool, OpenError> {
    let path = dir.join(CHECK_FILE);
    let stored = match fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(OpenError::ReadKeyCheck { path, source }),
    };
    let dir = dir.to_owned();
    match (keys, stored) {
        (None, None) => Ok(false),
        (None, Some(_)) => Err(OpenError::Sealed { dir }),
        (Some(_), None) => Ok(true),
        (Some(keys), Some(sealed)) => match keys.open(CHECK_CONTEXT, &sealed) {
            Ok((plain, current)) if plain.as_slice() == CHECK => Ok(!current),
            _ => Err(OpenError::WrongKey { dir }),
        },
    }
}

/// Records that every file in `dir` is sealed with the current key.
pub fn write_check(dir: &Path, keys: &Keys) -> Result<(), OpenError> {
    let sealed = keys.seal(CHECK_CONTEXT, CHECK).map_err(OpenError::Encode)?;
    super::file::write_atomically(&dir.join(CHECK_FILE), 0o600, &sealed)
        .map_err(|source| OpenError::WriteKeyCheck { source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, SystemTime};

    use secrecy::SecretString;

    use super::*;
    use crate::secret::{ExposeSecret, SecretSource};
    use crate::store::{FileStore, Loaded, Saved};

    fn keys(key: u8, previous: &[u8]) -> Option<Keys> {
        let source = |b: &u8| SecretSource::Inline(format!("{b:02x}").repeat(32));
        let config = StateKeys {
            key: source(&key),
            previous: previous.iter().map(source).collect(),
        };
        Some(Keys::read(&config).unwrap())
    }

    fn saved(rt: &str) -> Saved {
        Saved {
            refresh_token: Some(SecretString::from(rt.to_owned())),
            access_token: None,
            token_type: "Bearer".into(),
            scope: None,
            issued_at: SystemTime::now(),
            expires_at: SystemTime::now() + Duration::from_secs(60),
            bootstrap: None,
            reauth_reason: None,
            in_flight_since: None,
        }
    }

    fn loads(store: &FileStore) -> String {
        match store.load("x") {
            Loaded::Found { saved, .. } => saved.refresh_token.unwrap().expose_secret().to_owned(),
            other => panic!("expected Found, got {other:?}"),
        }
    }

    fn files_hold(dir: &Path, text: &str) -> bool {
        fs::read_dir(dir).unwrap().any(|e| {
            let bytes = fs::read(e.unwrap().path()).unwrap();
            bytes.windows(text.len()).any(|w| w == text.as_bytes())
        })
    }

    #[test]
    fn state_in_clear_is_sealed_once_a_key_is_set_and_then_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.save("x", &saved("rt-in-clear")).unwrap();
        drop(store);
        assert!(files_hold(dir.path(), "rt-in-clear"));

        let store = FileStore::open_sealed(dir.path(), keys(1, &[])).unwrap();
        assert_eq!(loads(&store), "rt-in-clear");
        drop(store);
        assert!(!files_hold(dir.path(), "rt-in-clear"), "sealed at start-up");

        let err = FileStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("is sealed; set state.encryption_key"), "{err}");
        let err = FileStore::open_sealed(dir.path(), keys(2, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is not the key"), "{err}");
        // The old key as a previous one: opened, sealed again with the new key.
        let store = FileStore::open_sealed(dir.path(), keys(2, &[1])).unwrap();
        assert_eq!(loads(&store), "rt-in-clear");
        drop(store);
        let store = FileStore::open_sealed(dir.path(), keys(2, &[])).unwrap();
        assert_eq!(loads(&store), "rt-in-clear");
    }

    #[test]
    fn a_sealed_file_is_bound_to_its_credential_and_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open_sealed(dir.path(), keys(1, &[])).unwrap();
        store.save("x", &saved("first")).unwrap();
        store.save("x", &saved("second")).unwrap();
        drop(store);
        // The older generation passed off as the newer one does not open.
        fs::copy(dir.path().join("x.1.state"), dir.path().join("x.2.state")).unwrap();
        let store = FileStore::open_sealed(dir.path(), keys(1, &[])).unwrap();
        match store.load("x") {
            Loaded::Found { saved, skipped, .. } => {
                assert_eq!(saved.refresh_token.unwrap().expose_secret(), "first");
                assert!(skipped[0].contains("x.2.state"), "{skipped:?}");
            }
            other => panic!("expected the fallback, got {other:?}"),
        }
    }
}
