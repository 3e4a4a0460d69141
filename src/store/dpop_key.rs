//! A credential's DPoP private key (PKCS#8 bytes), kept beside its state: made once, then
//! the same key for the life of the store, so tokens bound to it (`cnf.jkt`) stay usable
//! across restarts and across every broker of a fleet.
//!
//! The first writer wins: the caller brings a freshly generated key, and the store keeps
//! it only if none is stored yet, answering with the one that is (the file store links
//! its new file without replacing an existing one; Redis sets with `NX`). Two brokers
//! starting together therefore both end up with the same key. The key is sealed wherever
//! the store seals its records (`state.encryption_key`), bound to the credential's name.
//! This module knows nothing of DPoP: it keeps bytes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use ::redis::AsyncCommands;
use zeroize::Zeroizing;

use super::{FileStore, OpenError, RedisStore, Store, StoreError};

const MAGIC: &[u8] = b"token-broker-dpop-key 1\n";
const SUFFIX: &str = ".dpop-key";

impl Store {
    /// The credential's stored key, or `candidate` once stored (if no other key was
    /// stored first). Errors name the place, never the key.
    pub async fn dpop_key(
        &self,
        name: &str,
        candidate: Zeroizing<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        match self {
            Store::File(file) => {
                let (file, name) = (file.clone(), name.to_owned());
                tokio::task::spawn_blocking(move || file.dpop_key(&name, &candidate))
                    .await
                    .unwrap_or_else(|e| Err(format!("store task failed: {e}")))
                    .map_err(StoreError::Unavailable)
            }
            Store::Redis(redis) => redis.dpop_key(name, &candidate).await,
        }
    }
}

impl FileStore {
    fn dpop_key_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    fn dpop_key(&self, name: &str, candidate: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let path = self.dpop_key_path(name);
        if !path.exists() {
            let sealed = self.seal_key(name, candidate)?;
            let mut file = tempfile::Builder::new()
                .prefix(&super::temp_prefix(&path))
                .suffix(".tmp")
                .tempfile_in(&self.dir)
                .map_err(|e| format!("state.dir: cannot write a DPoP key: {e}"))?;
            let written = (|| {
                file.as_file()
                    .set_permissions(fs::Permissions::from_mode(0o600))?;
                file.write_all(&sealed)?;
                file.as_file().sync_all()
            })();
            written.map_err(|e| format!("state.dir: cannot write a DPoP key: {e}"))?;
            // Never replaces a key already there: whoever linked first, that key stays.
            match file.persist_noclobber(&path) {
                Ok(_) => {
                    fs::File::open(&self.dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| format!("state.dir: cannot sync: {e}"))?;
                }
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("{}: {}", path.display(), e.error)),
            }
        }
        let bytes = Zeroizing::new(
            fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        self.open_key(name, &bytes, false)
            .map(|(plain, _)| plain)
            .map_err(|why| format!("the DPoP key in {}: {why}", path.display()))
    }

    fn seal_key(&self, name: &str, plain: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let mut out = Zeroizing::new(MAGIC.to_vec());
        match &self.keys {
            Some(keys) => out.extend_from_slice(&keys.seal(&context(name), plain)?),
            None => out.extend_from_slice(plain),
        }
        Ok(out)
    }

    /// The key in a file's bytes, and whether it is as the current settings would write
    /// it. A key in clear while the store seals is refused, except when sealing again.
    fn open_key(
        &self,
        name: &str,
        bytes: &[u8],
        clear_ok: bool,
    ) -> Result<(Zeroizing<Vec<u8>>, bool), String> {
        let body = bytes
            .strip_prefix(MAGIC)
            .ok_or("not a token-broker DPoP key file")?;
        match (&self.keys, super::crypto::is_sealed(body)) {
            (Some(keys), true) => keys.open(&context(name), body),
            (None, true) => Err("sealed, but state.encryption_key is not set".to_owned()),
            (Some(_), false) if !clear_ok => {
                Err("stored in clear while state.encryption_key is set".to_owned())
            }
            (keys, false) => Ok((Zeroizing::new(body.to_vec()), keys.is_none())),
        }
    }
}

/// Seals every DPoP key file again with the current key (part of `FileStore::reseal`).
pub(super) fn reseal(store: &FileStore) -> Result<(), OpenError> {
    let entries = fs::read_dir(&store.dir).map_err(OpenError::ListDir)?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|f| f.strip_suffix(SUFFIX)) else {
            continue;
        };
        let path = entry.path();
        let Ok(bytes) = fs::read(&path).map(Zeroizing::new) else {
            continue;
        };
        let Ok((plain, false)) = store.open_key(name, &bytes, true) else {
            continue;
        };
        let sealed = store.seal_key(name, &plain).map_err(OpenError::Encode)?;
        super::write_atomically(&path, 0o600, &sealed)
            .map_err(|source| OpenError::Reseal { path, source })?;
    }
    Ok(())
}

/// What a sealed key is bound to, so a key cannot be passed off as another's.
fn context(name: &str) -> String {
    format!("{name}#dpop-key")
}

impl RedisStore {
    fn dpop_key_name(&self, name: &str) -> String {
        self.key(&format!("dpop-key:{name}"))
    }

    async fn dpop_key(
        &self,
        name: &str,
        candidate: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let unavailable = StoreError::Unavailable;
        let mut conn = self.connection().await.map_err(|e| unavailable(e.into()))?;
        let key = self.dpop_key_name(name);
        let sealed = match &self.cipher {
            Some(cipher) => Zeroizing::new(cipher.seal(&key, candidate).map_err(unavailable)?),
            None => Zeroizing::new(candidate.to_vec()),
        };
        // SET NX: of brokers racing to store their key, exactly one wins; all read it.
        let set = conn.set_nx::<_, _, bool>(&key, sealed.as_slice());
        self.limit(set)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(self.failed(e).to_string()))?;
        let get = conn.get::<_, Option<Vec<u8>>>(&key);
        let stored = self
            .limit(get)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(self.failed(e).to_string()))?
            .map(Zeroizing::new)
            .ok_or_else(|| unavailable(format!("redis lost the DPoP key of `{name}`")))?;
        match (&self.cipher, super::crypto::is_sealed(&stored)) {
            (Some(cipher), _) => cipher
                .open(&key, &stored)
                .map_err(|why| unavailable(format!("the DPoP key of `{name}` in redis: {why}"))),
            (None, true) => Err(unavailable(format!(
                "the DPoP key of `{name}` in redis is sealed, but state.encryption_key is not set"
            ))),
            (None, false) => Ok(stored),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::StateKeys;
    use crate::secret::SecretSource;

    fn keys(byte: u8, previous: &[u8]) -> Option<super::super::file_keys::Keys> {
        let source = |b: &u8| SecretSource::Inline(format!("{b:02x}").repeat(32));
        let config = StateKeys {
            key: source(&byte),
            previous: previous.iter().map(source).collect(),
        };
        Some(super::super::file_keys::Keys::read(&config).unwrap())
    }

    #[test]
    fn the_first_key_stays_sealed_and_survives_a_reopen_and_a_new_encryption_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = b"pkcs8-bytes-standing-in-for-a-key".to_vec();
        {
            let store = FileStore::open_sealed(dir.path(), keys(1, &[])).unwrap();
            let first = store.dpop_key("a", &secret).unwrap();
            assert_eq!(first.as_slice(), secret.as_slice());
            // A second candidate loses to the stored key.
            let again = store.dpop_key("a", b"another").unwrap();
            assert_eq!(again.as_slice(), secret.as_slice());
        }
        let on_disk = fs::read(dir.path().join("a.dpop-key")).unwrap();
        assert!(
            !on_disk
                .windows(secret.len())
                .any(|w| w == secret.as_slice()),
            "sealed at rest"
        );
        // A new encryption key, the old one as previous: the file is sealed again.
        {
            let store = FileStore::open_sealed(dir.path(), keys(2, &[1])).unwrap();
            assert_eq!(store.dpop_key("a", b"x").unwrap().as_slice(), secret);
        }
        let store = FileStore::open_sealed(dir.path(), keys(2, &[])).unwrap();
        assert_eq!(store.dpop_key("a", b"x").unwrap().as_slice(), secret);
        // Each credential has its own key.
        assert_eq!(store.dpop_key("b", b"bee").unwrap().as_slice(), b"bee");
    }

    #[test]
    fn a_key_that_does_not_open_is_an_error_and_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FileStore::open_sealed(dir.path(), keys(1, &[])).unwrap();
            store.dpop_key("a", b"first").unwrap();
        }
        let path = dir.path().join("a.dpop-key");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let store = FileStore::open_sealed(dir.path(), keys(1, &[])).unwrap();
        let err = store.dpop_key("a", b"second").unwrap_err();
        assert!(err.contains("a.dpop-key"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "left as it was");
    }
}
