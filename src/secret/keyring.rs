//! Client keys that follow their files.
//!
//! A credential's `client_keys` are compared on every request, so they are held in
//! memory rather than read per request; but a key in a file is revoked by rewriting the
//! file (a Kubernetes Secret update swaps it), and that must take effect without a
//! restart. The ring looks at its files' metadata at most once per `RECHECK` (one
//! `stat` per file, done by the one request that finds the check due while the others
//! go on with the keys they have) and re-reads a file whose metadata changed. A reload
//! looks at once (`reread`).
//!
//! A key whose file can no longer be read (removed, emptied, unreadable) admits nobody
//! until it can be read again: failing open would keep a revoked key working. The ring
//! logs that once per change, naming the key, never its value. Inline and environment
//! keys never change while the process runs.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use secrecy::SecretString;

use super::{ExposeSecret, SecretError, SecretSource, constant_time_eq};

/// Longest a rewritten key file goes unnoticed.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What tells a file was replaced or rewritten: a new inode (a rename over it, a
/// Kubernetes Secret's symlink swap), a new size, or a new modification or change time
/// (nanoseconds; a `chmod` changes the latter).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The client keys of one credential, kept current with their files.
pub struct KeyRing {
    /// Where each key comes from, and its name in messages (`credentials.x.client_keys[0]`).
    sources: Vec<(SecretSource, String)>,
    /// Each key's value now; `None` while its file cannot be read.
    keys: ArcSwap<Vec<Option<SecretString>>>,
    /// The files' stamps as last seen; locked only by whoever is looking at the files.
    stamps: Mutex<Vec<Option<Stamp>>>,
    /// When the files are next due a look, in milliseconds after `epoch`.
    next_check: AtomicU64,
    epoch: Instant,
}

/// Which key of a ring could not be read at start-up (`name`: e.g.
/// `server.admin_keys[0]`), and why.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {source}")]
pub struct LoadError {
    pub name: String,
    pub source: SecretError,
}

impl KeyRing {
    /// Reads every key once. An unreadable or empty key is an error here, as it is for
    /// every secret when the config is loaded; later it only disables that key.
    pub fn load(credential: &str, sources: &[SecretSource]) -> Result<KeyRing, LoadError> {
        Self::load_as(&format!("credentials.{credential}.client_keys"), sources)
    }

    /// `load`, the keys named `{field}[i]` in messages (e.g. `server.admin_keys`).
    pub fn load_as(field: &str, sources: &[SecretSource]) -> Result<KeyRing, LoadError> {
        let mut keys = Vec::new();
        let mut stamps = Vec::new();
        let mut named = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let name = format!("{field}[{i}]");
            // The stamp before the read: a change in between is seen at the next look.
            stamps.push(source.path().and_then(|p| stamp(p)));
            match source.read() {
                Ok(key) => keys.push(Some(key)),
                Err(source) => return Err(LoadError { name, source }),
            }
            named.push((source.clone(), name));
        }
        Ok(KeyRing {
            sources: named,
            keys: ArcSwap::from_pointee(keys),
            stamps: Mutex::new(stamps),
            next_check: AtomicU64::new(RECHECK.as_millis() as u64),
            epoch: Instant::now(),
        })
    }

    /// Whether `key` is one of the keys, compared in constant time against every one so
    /// timing does not tell which nearly matched. Looks at the files first when due.
    pub fn admits(&self, key: &[u8]) -> bool {
        self.look(false);
        self.keys.load().iter().flatten().fold(false, |ok, k| {
            ok | constant_time_eq(k.expose_secret().as_bytes(), key)
        })
    }

    /// Looks at the files now (a reload); whether a key changed.
    pub fn reread(&self) -> bool {
        self.look(true)
    }

    /// Re-reads the files whose stamps changed; whether a key changed. Unless `now`,
    /// only when due and only if no one else is looking.
    fn look(&self, now: bool) -> bool {
        if self.sources.iter().all(|(s, _)| s.path().is_none()) {
            return false;
        }
        let elapsed = self.epoch.elapsed().as_millis() as u64;
        if !now && elapsed < self.next_check.load(Ordering::Relaxed) {
            return false;
        }
        let mut stamps = match (now, self.stamps.try_lock()) {
            (_, Ok(stamps)) => stamps,
            (false, Err(_)) => return false,
            (true, Err(_)) => self.stamps.lock().unwrap_or_else(PoisonError::into_inner),
        };
        self.next_check
            .store(elapsed + RECHECK.as_millis() as u64, Ordering::Relaxed);
        let mut keys = Vec::clone(&self.keys.load());
        let mut changed = false;
        for (i, (source, name)) in self.sources.iter().enumerate() {
            let Some(path) = source.path() else { continue };
            let seen = stamp(path);
            if seen == stamps[i] {
                continue;
            }
            stamps[i] = seen;
            let value = match source.read() {
                Ok(value) => Some(value),
                Err(error) => {
                    tracing::warn!(key = %name, %error, "a client key cannot be read; it admits no client until it can");
                    None
                }
            };
            let same = match (&keys[i], &value) {
                (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
                (a, b) => a.is_none() && b.is_none(),
            };
            if !same {
                keys[i] = value;
                changed = true;
            }
        }
        if changed {
            self.keys.store(Arc::new(keys));
        }
        changed
    }
}

/// Never shows a key.
impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} keys)", self.sources.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_key_file_is_followed_and_an_unreadable_one_admits_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, "old\n").unwrap();
        let ring = KeyRing::load(
            "x",
            &[
                SecretSource::File(path.clone()),
                SecretSource::Inline("inline".into()),
            ],
        )
        .unwrap();
        assert!(ring.admits(b"old") && ring.admits(b"inline"));
        assert!(!ring.admits(b"new"));

        fs::write(&path, "new\n").unwrap();
        assert!(ring.reread());
        assert!(ring.admits(b"new") && !ring.admits(b"old"));
        assert!(!ring.reread(), "nothing changed since");

        fs::remove_file(&path).unwrap();
        assert!(ring.reread());
        assert!(!ring.admits(b"new") && ring.admits(b"inline"));

        // Without a reload: noticed within RECHECK.
        fs::write(&path, "newer").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert!(ring.admits(b"newer"));
    }

    #[test]
    fn a_key_that_cannot_be_read_at_start_is_an_error_naming_it() {
        let err = KeyRing::load("x", &[SecretSource::File("/nonexistent/k".into())])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("credentials.x.client_keys[0]: cannot read file"),
            "{err}"
        );
        assert!(
            !format!(
                "{:?}",
                KeyRing::load("x", &[SecretSource::Inline("hunter2".into())]).unwrap()
            )
            .contains("hunter2")
        );
    }
}
