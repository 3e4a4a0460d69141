//! File sinks: a credential's current token written to a file on every new version, for
//! apps that read a file rather than call the API.
//!
//! Each sink is a task subscribed to its credential's published versions
//! (`Credential::versions`); the broker does not know sinks exist. `start` attaches
//! the tasks to every credential, and to those a reload starts. A task always takes the
//! newest version, so versions published while a write runs are skipped, never written
//! after a newer one. A token with a refresh-token chain is published only once its
//! chain is stored durably, so a sink never holds a token the broker could lose; the
//! two exceptions are the broker's own choices to serve anyway: a fleet member running
//! on without its shared store (`on_store_unavailable = "refresh_locally"`), and a
//! grant without a chain whose state could not be written (nothing to lose there). A write goes to a temporary file in
//! the same directory, is fsynced and renamed over the target (and the directory
//! fsynced), so a reader sees the old file or the new one, never a part. A failed write
//! is logged and counted, and retried with backoff while that version is the newest and
//! still valid; it never holds up a refresh or a read. When a token expires and no new
//! one comes, the file is left as it is (a JSON sink says `expires_at`). When the broker
//! withdraws a token (the IdP refused its chain), the file is removed: an app reading
//! it then fails loudly instead of using a token that is likely revoked.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::{Broker, Credential, Published};
use crate::config::{SinkFormat, SinkSpec};
use crate::metrics::SinkMetrics;
use crate::store::{temp_prefix, write_atomically};
use crate::token::Token;

/// Retry delays after a failed write grow from here...
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// ...to here.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Attaches a task to each sink of each credential in force, now and after every
/// reload. Ends when the broker is dropped.
pub fn start(broker: &Arc<Broker>) {
    let mut reloads = broker.reloads();
    let broker = Arc::downgrade(broker);
    tokio::spawn(async move {
        // The credentials attached to, by name: a reload that keeps one keeps its tasks.
        let mut attached: HashMap<String, Weak<Credential>> = HashMap::new();
        loop {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            reloads.borrow_and_update();
            attached = broker
                .credentials()
                .into_iter()
                .map(|credential| {
                    let weak = Arc::downgrade(&credential);
                    if !attached
                        .get(credential.name())
                        .is_some_and(|w| w.ptr_eq(&weak))
                    {
                        attach(&broker, &credential);
                    }
                    (credential.name().to_owned(), weak)
                })
                .collect();
            drop(broker);
            if reloads.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Starts the tasks of `credential`'s sinks. Each ends when the credential is dropped.
fn attach(broker: &Broker, credential: &Credential) {
    if credential.spec.sinks.is_empty() {
        return;
    }
    let metrics = broker.metrics().sink(credential.name());
    for spec in &credential.spec.sinks {
        let sink = Sink {
            spec: spec.clone(),
            credential: Arc::from(credential.name()),
            stop: credential.stop_signal(),
            swept: false,
            metrics: metrics.clone(),
        };
        tokio::spawn(sink.follow(credential.versions()));
    }
}

/// What a sink does after handling a version.
enum Next {
    /// Wait for the next version.
    Wait,
    /// A newer version came meanwhile: handle it now.
    Newer,
    /// The credential is gone.
    Closed,
}

/// One configured file of one credential.
struct Sink {
    spec: SinkSpec,
    /// The credential's name, for logs.
    credential: Arc<str>,
    /// The credential's stop: a write waiting to be retried is given up (a write in
    /// progress finishes, and later versions are still written).
    stop: CancellationToken,
    /// Whether leftovers of a killed broker's writes were swept from the directory.
    swept: bool,
    metrics: SinkMetrics,
}

impl Sink {
    /// Writes (or removes) the newest published version, until the channel closes.
    async fn follow(mut self, mut versions: watch::Receiver<Published>) {
        loop {
            let newest = versions.borrow_and_update().clone();
            let next = match newest {
                Published::Nothing => Next::Wait,
                Published::Withdrawn => {
                    self.remove().await;
                    Next::Wait
                }
                Published::Token(token) => self.write_until_done(&token, &mut versions).await,
            };
            let closed = match next {
                Next::Wait => versions.changed().await.is_err(),
                Next::Newer => false,
                Next::Closed => true,
            };
            if closed {
                return;
            }
        }
    }

    /// Writes `token`, retrying with backoff while it is the newest version and still
    /// valid.
    async fn write_until_done(
        &mut self,
        token: &Token,
        versions: &mut watch::Receiver<Published>,
    ) -> Next {
        let mut failures = 0u32;
        loop {
            let error = match self.write(token).await {
                Ok(()) => {
                    if failures > 0 {
                        info!(credential = %self.credential, path = %self.spec.path.display(), "sink written again");
                    }
                    self.metrics.written();
                    return Next::Wait;
                }
                Err(error) => error,
            };
            failures += 1;
            self.metrics.failed();
            let delay = RETRY_FIRST
                .saturating_mul(1 << failures.min(7).saturating_sub(1))
                .min(RETRY_MAX);
            warn!(credential = %self.credential, path = %self.spec.path.display(), error = %error, retry_in_ms = delay.as_millis() as u64, "sink write failed");
            // A newer version (or a withdrawal) ends the wait: it goes first.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                changed = versions.changed() => return match changed {
                    Ok(()) => Next::Newer,
                    Err(_) => Next::Closed,
                },
                () = self.stop.cancelled() => return Next::Wait,
            }
            if !token.is_valid(SystemTime::now()) {
                return Next::Wait;
            }
        }
    }

    /// Removes the file of a withdrawn token; a failure is logged, not retried (the
    /// next version overwrites the file anyway).
    async fn remove(&self) {
        let path = self.spec.path.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        match removed {
            Ok(Ok(())) => {
                info!(credential = %self.credential, path = %self.spec.path.display(), "sink file removed: its token was withdrawn")
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => {
                warn!(credential = %self.credential, path = %self.spec.path.display(), error = %e, "cannot remove the sink file of a withdrawn token")
            }
            Err(e) => {
                warn!(credential = %self.credential, error = %e, "the sink removal task failed")
            }
        }
    }

    async fn write(&mut self, token: &Token) -> std::io::Result<()> {
        let content = match self.spec.format {
            SinkFormat::Raw => token.raw(),
            SinkFormat::Json => token.json_body(SystemTime::now()),
        };
        let (path, mode) = (self.spec.path.clone(), self.spec.mode);
        let sweep_first = !std::mem::replace(&mut self.swept, true);
        let written = tokio::task::spawn_blocking(move || {
            if sweep_first {
                sweep(&path);
            }
            write_atomically(&path, mode, &content)
        })
        .await;
        written
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("the write task failed: {e}"))))
    }
}

/// Removes temporary files a killed broker left beside `path` (they may hold a token).
fn sweep(path: &Path) {
    let (Some(dir), prefix) = (path.parent(), temp_prefix(path)) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    debug!(file = %entry.path().display(), "removed a leftover temporary sink file")
                }
                Err(e) => {
                    debug!(file = %entry.path().display(), error = %e, "cannot remove a leftover temporary sink file")
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_write_replaces_the_file_whole_with_its_mode_and_sweeps_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        let leftover = dir.path().join(".api.token.abc123.tmp");
        std::fs::write(&leftover, "old secret").unwrap();
        let unrelated = dir.path().join(".other.tmp");
        std::fs::write(&unrelated, "keep").unwrap();
        sweep(&path);
        assert!(!leftover.exists());
        assert!(unrelated.exists());

        write_atomically(&path, 0o640, b"first").unwrap();
        write_atomically(&path, 0o640, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let error = write_atomically(Path::new("/nonexistent-dir-for-sinks/x.token"), 0o600, b"t")
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }
}
