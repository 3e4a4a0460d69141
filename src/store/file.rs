//! The embedded backend: durable per-credential state in `state.dir` for one broker.
//!
//! Each save writes a new generation file `NAME.GEN.state` (temp file, fsync, rename,
//! fsync of the directory, mode 0600) and keeps the previous generation, so a torn or
//! corrupt newest file falls back to the one before instead of to a stale bootstrap.
//! Every file starts with a header carrying a SHA-256 of its body. An exclusive lock on
//! `state.dir/.lock` keeps a second broker out. The calls block: the broker runs them on
//! the blocking pool.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::file_keys::{self, Keys};
use super::{Loaded, OpenError, Saved};
use crate::secret::{ExposeSecret, hex};

const MAGIC: &str = "token-broker-state 1";

/// The on-disk body. Plain strings, only ever held inside `Zeroizing` buffers.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    credential: String,
    generation: u64,
    refresh_token: Option<String>,
    access_token: Option<String>,
    token_type: String,
    scope: Option<String>,
    issued_at: u64,
    expires_at: u64,
    bootstrap: Option<String>,
    reauth_reason: Option<String>,
    #[serde(default)]
    in_flight_since: Option<u64>,
}

/// The state directory, locked for this process.
pub struct FileStore {
    pub(super) dir: PathBuf,
    /// Seals every file when `state.encryption_key` is set.
    pub(super) keys: Option<Keys>,
    /// Held for the process' life: the OS lock is what keeps a second broker out.
    _lock: File,
    /// Newest generation written per credential, so a save needs no directory listing.
    generations: Mutex<HashMap<String, u64>>,
    /// Generation files found at open, per credential; each is taken by its first load.
    on_disk: Mutex<HashMap<String, Vec<u64>>>,
}

/// Why a state file was not saved. Names the file, never what it holds.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The state could not be encoded or sealed.
    #[error("{0}")]
    Encode(String),
    /// The file could not be written, synced or renamed into place.
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Refuses an existing `state.dir` that is not a directory or that every user may write
/// to. `open` and `check-config` both ask this, so they decide alike.
pub fn check_dir(dir: &Path) -> Result<(), OpenError> {
    let at = || dir.to_owned();
    let meta = fs::metadata(dir).map_err(|source| OpenError::Inaccessible { dir: at(), source })?;
    if !meta.is_dir() {
        return Err(OpenError::NotADirectory { dir: at() });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o002 != 0 {
        return Err(OpenError::WorldWritable { dir: at(), mode });
    }
    Ok(())
}

impl FileStore {
    /// Opens (creating with mode 0700 if missing) and locks the directory, in clear.
    pub fn open(dir: &Path) -> Result<FileStore, OpenError> {
        FileStore::open_sealed(dir, None)
    }

    /// Opens and locks the directory; with `keys`, checks that they fit the files and
    /// seals again with the current key what another key (or none) wrote.
    pub fn open_sealed(dir: &Path, keys: Option<Keys>) -> Result<FileStore, OpenError> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| OpenError::CreateDir {
                    dir: dir.to_owned(),
                    source,
                })?;
        }
        check_dir(dir)?;
        let lock = lock_dir(dir)?;
        let reseal = file_keys::check(dir, keys.as_ref())?;
        let store = FileStore {
            dir: dir.to_owned(),
            keys,
            _lock: lock,
            generations: Mutex::default(),
            on_disk: Mutex::new(scan(dir)),
        };
        if let (true, Some(keys)) = (reseal, &store.keys) {
            store.reseal()?;
            file_keys::write_check(dir, keys)?;
        }
        Ok(store)
    }

    /// Seals every readable file again with the current key, in place (same
    /// generation). A file that does not open is left for `load` to report.
    fn reseal(&self) -> Result<(), OpenError> {
        let on_disk = self
            .on_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (name, generations) in &on_disk {
            for generation in generations {
                let path = self.path(name, *generation);
                let Ok((saved, current)) =
                    read_file(&path, name, *generation, self.keys.as_ref(), true)
                else {
                    continue;
                };
                if current {
                    continue;
                }
                let bytes = encode(name, *generation, &saved, self.keys.as_ref())
                    .map_err(OpenError::Encode)?;
                write_atomically(&path, 0o600, &bytes)
                    .map_err(|source| OpenError::Reseal { path, source })?;
            }
        }
        super::dpop_key::reseal(self)
    }

    /// Loads the newest readable generation for a credential.
    pub fn load(&self, name: &str) -> Loaded {
        let mut generations = self.list(name);
        generations.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(newest) = generations.first() {
            self.lock_generations().insert(name.to_owned(), *newest);
        }
        // Leftovers older than newest and fallback (e.g. from a crash mid-cleanup).
        for old in generations.iter().skip(2) {
            let _ = fs::remove_file(self.path(name, *old));
        }
        generations.truncate(2);
        let mut skipped = Vec::new();
        for generation in &generations {
            let path = self.path(name, *generation);
            match read_file(&path, name, *generation, self.keys.as_ref(), false) {
                Ok((saved, _)) => {
                    return Loaded::Found {
                        saved,
                        skipped,
                        version: 0,
                        stamp: None,
                    };
                }
                Err(e) => skipped.push(format!("{}: {e}", path.display())),
            }
        }
        if skipped.is_empty() {
            Loaded::Empty
        } else {
            Loaded::Corrupt(skipped)
        }
    }

    /// Durably saves a new generation: on `Ok`, the data survives a crash.
    pub fn save(&self, name: &str, saved: &Saved) -> Result<(), SaveError> {
        let generation = self.lock_generations().get(name).copied().unwrap_or(0) + 1;
        let bytes =
            encode(name, generation, saved, self.keys.as_ref()).map_err(SaveError::Encode)?;
        let path = self.path(name, generation);
        write_atomically(&path, 0o600, &bytes).map_err(|source| SaveError::Write {
            path: path.clone(),
            source,
        })?;
        self.lock_generations().insert(name.to_owned(), generation);
        // Keep one older generation as the fallback. `load` cleared anything older, so
        // only the one before the fallback is left to remove: no directory scan per save,
        // which would cost time in proportion to the number of credentials.
        if generation > 2 {
            let _ = fs::remove_file(self.path(name, generation - 2));
        }
        Ok(())
    }

    fn path(&self, name: &str, generation: u64) -> PathBuf {
        self.dir.join(format!("{name}.{generation}.state"))
    }

    /// Generations on disk for `name`: from the one directory scan made at open, so
    /// loading thousands of credentials does not scan the directory thousands of times.
    /// After a save or a load (a reload restores a credential again), the newest
    /// generation is known and the fallback is the one before it.
    fn list(&self, name: &str) -> Vec<u64> {
        let mut found = self
            .on_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .unwrap_or_default();
        if let Some(newest) = self.lock_generations().get(name).copied() {
            found.extend([newest, newest.saturating_sub(1)]);
        }
        found.sort_unstable();
        found.dedup();
        found.retain(|g| *g > 0 && self.path(name, *g).exists());
        found
    }

    fn lock_generations(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every `NAME.GEN.state` file in `dir`, grouped by credential name.
fn scan(dir: &Path) -> HashMap<String, Vec<u64>> {
    let mut found: HashMap<String, Vec<u64>> = HashMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for file in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
        let parsed = file.strip_suffix(".state").and_then(|f| f.rsplit_once('.'));
        if let Some((name, generation)) = parsed
            && let Ok(generation) = generation.parse()
        {
            found.entry(name.to_owned()).or_default().push(generation);
        }
    }
    found
}

fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(".lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| OpenError::OpenLock {
            dir: dir.to_owned(),
            source,
        })?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let holder = if holder.is_empty() { "unknown" } else { holder };
        return Err(OpenError::InUse {
            dir: dir.to_owned(),
            holder: holder.to_owned(),
        });
    }
    file.set_len(0)
        .and_then(|_| file.write_all(std::process::id().to_string().as_bytes()))
        .and_then(|_| file.sync_all())
        .map_err(|source| OpenError::WriteLock {
            dir: dir.to_owned(),
            source,
        })?;
    Ok(file)
}

/// The prefix of this file's temporary files: `.NAME.` (hidden, and named after it).
pub(crate) fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    format!(".{name}.")
}

/// Writes `content` to a temporary file beside `path` with `mode`, fsyncs it, renames
/// it over `path` and fsyncs the directory, so `path` always holds a whole version and,
/// on `Ok`, survives a crash. The one way the broker puts a secret in a file: state
/// generations and sinks.
pub(crate) fn write_atomically(path: &Path, mode: u32, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut file = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    // Set before the token is in it; the mode does not depend on the umask.
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(content)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// What a sealed file is bound to: its credential and generation.
fn context(name: &str, generation: u64) -> String {
    format!("{name}#{generation}")
}

fn encode(
    name: &str,
    generation: u64,
    saved: &Saved,
    keys: Option<&Keys>,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let body = Body {
        credential: name.to_owned(),
        generation,
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
        issued_at: unix(saved.issued_at),
        expires_at: unix(saved.expires_at),
        bootstrap: saved.bootstrap.clone(),
        reauth_reason: saved.reauth_reason.clone(),
        in_flight_since: saved.in_flight_since.map(unix),
    };
    let json = Zeroizing::new(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    let mut body = body;
    body.refresh_token.zeroize_opt();
    body.access_token.zeroize_opt();
    let json = match keys {
        Some(keys) => Zeroizing::new(keys.seal(&context(name, generation), &json)?),
        None => json,
    };
    let digest = hex(&Sha256::digest(json.as_slice()));
    let mut out = Zeroizing::new(Vec::with_capacity(json.len() + 100));
    out.extend_from_slice(format!("{MAGIC} sha256={digest}\n").as_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Reads a state file: its state, and whether it was sealed with the current key (or
/// is in clear with no key set). A file in clear while a key is set is refused, except
/// when sealing files again at start-up (`clear_ok`): then it was written before the key.
fn read_file(
    path: &Path,
    name: &str,
    generation: u64,
    keys: Option<&Keys>,
    clear_ok: bool,
) -> Result<(Saved, bool), String> {
    let bytes = Zeroizing::new(fs::read(path).map_err(|e| e.to_string())?);
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "header is not text")?;
    let expected = header
        .strip_prefix(MAGIC)
        .and_then(|rest| rest.trim().strip_prefix("sha256="))
        .ok_or("not a token-broker state file")?;
    let stored = &bytes[newline + 1..];
    if hex(&Sha256::digest(stored)) != expected {
        return Err("checksum mismatch (truncated or corrupt)".to_owned());
    }
    let opened;
    let (json, current): (&[u8], bool) = match (keys, super::crypto::is_sealed(stored)) {
        (Some(keys), true) => {
            opened = keys.open(&context(name, generation), stored)?;
            (opened.0.as_slice(), opened.1)
        }
        (None, true) => return Err("sealed, but state.encryption_key is not set".to_owned()),
        (Some(_), false) if !clear_ok => {
            return Err("stored in clear while state.encryption_key is set".to_owned());
        }
        (keys, false) => (stored, keys.is_none()),
    };
    let body: Body = serde_json::from_slice(json).map_err(|e| super::bad_json(&e, "body"))?;
    if body.credential != name {
        return Err(format!("belongs to credential `{}`", body.credential));
    }
    let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let saved = Saved {
        refresh_token: body.refresh_token.map(SecretString::from),
        access_token: body.access_token.map(SecretString::from),
        token_type: body.token_type,
        scope: body.scope,
        issued_at: at(body.issued_at),
        expires_at: at(body.expires_at),
        bootstrap: body.bootstrap,
        reauth_reason: body.reauth_reason,
        in_flight_since: body.in_flight_since.map(at),
    };
    Ok((saved, current))
}

/// Wipes an owned secret string in place.
trait ZeroizeOpt {
    fn zeroize_opt(&mut self);
}

impl ZeroizeOpt for Option<String> {
    fn zeroize_opt(&mut self) {
        if let Some(s) = self.as_mut() {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn saved(rt: &str) -> Saved {
        Saved {
            refresh_token: Some(SecretString::from(rt.to_owned())),
            access_token: Some(SecretString::from("at".to_owned())),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: SystemTime::now(),
            expires_at: SystemTime::now() + Duration::from_secs(60),
            bootstrap: Some("fp".into()),
            reauth_reason: None,
            in_flight_since: None,
        }
    }

    fn refresh_token(loaded: Loaded) -> String {
        match loaded {
            Loaded::Found { saved, .. } => saved.refresh_token.unwrap().expose_secret().to_owned(),
            other => panic!("expected Found, got {other:?}"),
        }
    }

    #[test]
    fn saves_are_private_durable_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = FileStore::open(&state).unwrap();
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(matches!(store.load("a"), Loaded::Empty));
        for n in 1..=4 {
            store.save("a", &saved(&format!("rt{n}"))).unwrap();
        }
        let file = state.join("a.4.state");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Only the newest and one fallback generation are kept.
        let mut left = store.list("a");
        left.sort_unstable();
        assert_eq!(left, vec![3, 4]);
        drop(store);
        let store = FileStore::open(&state).unwrap();
        assert_eq!(refresh_token(store.load("a")), "rt4");
    }

    #[test]
    fn a_corrupt_newest_generation_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.save("a", &saved("rt1")).unwrap();
        store.save("a", &saved("rt2")).unwrap();
        let newest = dir.path().join("a.2.state");
        let text = fs::read(&newest).unwrap();
        fs::write(&newest, &text[..text.len() - 5]).unwrap();
        match store.load("a") {
            Loaded::Found { saved, skipped, .. } => {
                assert_eq!(saved.refresh_token.unwrap().expose_secret(), "rt1");
                assert!(skipped[0].contains("checksum mismatch"), "{skipped:?}");
            }
            other => panic!("{other:?}"),
        }
        fs::write(dir.path().join("a.1.state"), "garbage").unwrap();
        assert!(matches!(store.load("a"), Loaded::Corrupt(_)));
    }

    #[test]
    fn an_unreadable_body_is_reported_without_quoting_its_values() {
        let dir = tempfile::tempdir().unwrap();
        // A checksum that matches, over a body whose token sits where a number belongs.
        let body = br#"{"credential":"a","generation":1,"refresh_token":null,"access_token":null,"token_type":"Bearer","scope":null,"issued_at":"SECRET-VALUE","expires_at":0,"bootstrap":null}"#;
        let mut file = format!("{MAGIC} sha256={}\n", hex(&Sha256::digest(body))).into_bytes();
        file.extend_from_slice(body);
        fs::write(dir.path().join("a.1.state"), file).unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        match store.load("a") {
            Loaded::Corrupt(why) => {
                assert!(
                    why[0].contains("bad body: it has a field of the wrong type"),
                    "{why:?}"
                );
                assert!(!why[0].contains("SECRET-VALUE"), "{why:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_second_store_on_the_same_dir_is_refused_naming_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _first = FileStore::open(dir.path()).unwrap();
        let err = FileStore::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_world_writable_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = FileStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("writable by every user"), "{err}");
    }

    #[test]
    fn a_second_load_in_the_same_process_still_finds_the_newest() {
        // A reload restores a replaced credential again from the same store.
        let dir = tempfile::tempdir().unwrap();
        FileStore::open(dir.path())
            .unwrap()
            .save("a", &saved("old"))
            .unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(refresh_token(store.load("a")), "old");
        store.save("a", &saved("new")).unwrap();
        assert_eq!(refresh_token(store.load("a")), "new");
        assert_eq!(refresh_token(store.load("a")), "new");
    }

    #[test]
    fn names_with_dots_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.save("a.b", &saved("x")).unwrap();
        store.save("a", &saved("y")).unwrap();
        assert_eq!(refresh_token(store.load("a.b")), "x");
        assert_eq!(refresh_token(store.load("a")), "y");
    }
}
