//! File sinks: a credential's current token written to a file on every new version, for
//! apps that read a file rather than call the API.
//!
//! `Credential::publish` offers each new version to each of its sinks. A sink runs at
//! most one writer task, and only while there is something to write: the writer always
//! takes the newest version offered, so versions that arrive while a write runs are
//! skipped, never written after a newer one. A write goes to a temporary file in the
//! same directory, is fsynced and renamed over the target (and the directory fsynced),
//! so a reader sees the old file or the new one, never a part. A failed write is logged
//! and counted, and retried with backoff while that version is the newest and still
//! valid; it never holds up a refresh or a read. When a token expires and no new one
//! comes, the file is left as it is (a JSON sink says `expires_at`). When the broker
//! withdraws a token (the IdP refused its chain), the file is removed: an app reading
//! it then fails loudly instead of using a token that is likely revoked.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{SinkFormat, SinkSpec};
use crate::metrics::SinkMetrics;
use crate::store::{temp_prefix, write_atomically};
use crate::token::Token;

/// Retry delays after a failed write grow from here...
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// ...to here.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// One configured file of one credential.
pub struct Sink {
    spec: SinkSpec,
    /// The credential's name, for logs.
    credential: Arc<str>,
    slot: Mutex<Slot>,
    /// Wakes a writer waiting to retry when a newer version arrives.
    offered: Notify,
    /// The credential's stop: a writer waiting to retry gives up (a write in progress
    /// finishes).
    stop: CancellationToken,
    /// Whether leftovers of a killed broker's writes were swept from the directory.
    swept: AtomicBool,
    metrics: SinkMetrics,
}

/// What the writer does next.
enum Offer {
    /// Write this version.
    Token(Arc<Token>),
    /// Remove the file: the token was withdrawn.
    Withdraw,
}

/// What waits to be written.
#[derive(Default)]
struct Slot {
    /// The newest version (or withdrawal) not yet written.
    pending: Option<Offer>,
    /// Whether a writer task is running (it takes `pending` before it exits).
    running: bool,
}

impl Sink {
    /// A sink of `credential`.
    pub fn new(
        spec: SinkSpec,
        credential: &str,
        stop: CancellationToken,
        metrics: SinkMetrics,
    ) -> Arc<Sink> {
        Arc::new(Sink {
            spec,
            credential: Arc::from(credential),
            slot: Mutex::default(),
            offered: Notify::new(),
            stop,
            swept: AtomicBool::new(false),
            metrics,
        })
    }

    /// Schedules `token` to be written; returns at once.
    pub fn offer(self: &Arc<Self>, token: Arc<Token>) {
        self.pend(Offer::Token(token));
    }

    /// Schedules the file's removal (after any write under way); returns at once.
    pub fn withdraw(self: &Arc<Self>) {
        self.pend(Offer::Withdraw);
    }

    fn pend(self: &Arc<Self>, offer: Offer) {
        let start = {
            let mut slot = self.lock();
            slot.pending = Some(offer);
            !std::mem::replace(&mut slot.running, true)
        };
        if !start {
            // Wakes a writer waiting to retry: the newer version goes first. Only then:
            // a stored wake-up would cut the writer's next retry wait short.
            self.offered.notify_one();
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.clone().writer());
            }
            Err(_) => self.lock().running = false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // Each critical section leaves the slot consistent.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the newest pending version until none is left.
    async fn writer(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let token = match self.take() {
                Some(Offer::Token(token)) => token,
                Some(Offer::Withdraw) => {
                    self.remove().await;
                    continue;
                }
                None => return,
            };
            match self.write(&token).await {
                Ok(()) => {
                    if failures > 0 {
                        info!(credential = %self.credential, path = %self.spec.path.display(), "sink written again");
                    }
                    failures = 0;
                    self.metrics.written();
                }
                Err(error) => {
                    failures += 1;
                    self.metrics.failed();
                    let delay = RETRY_FIRST
                        .saturating_mul(1 << failures.min(7).saturating_sub(1))
                        .min(RETRY_MAX);
                    warn!(credential = %self.credential, path = %self.spec.path.display(), error = %error, retry_in_ms = delay.as_millis() as u64, "sink write failed");
                    if !self.retry_later(token, delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// The newest pending version, or `None` (and the writer ends) when there is none.
    fn take(&self) -> Option<Offer> {
        let mut slot = self.lock();
        let token = slot.pending.take();
        if token.is_none() {
            slot.running = false;
        }
        token
    }

    /// Puts a failed version back (unless a newer one came) and waits before the next
    /// attempt; a newer version ends the wait. `false` when the writer ends: the
    /// credential stopped, or the version expired with nothing newer to write. The
    /// decision and `running = false` are one critical section, so a version offered
    /// meanwhile starts a new writer rather than being dropped.
    async fn retry_later(&self, failed: Arc<Token>, delay: Duration) -> bool {
        if failed.is_valid(SystemTime::now()) {
            self.lock().pending.get_or_insert(Offer::Token(failed));
        }
        let stopped = tokio::select! {
            () = tokio::time::sleep(delay) => false,
            () = self.offered.notified() => false,
            () = self.stop.cancelled() => true,
        };
        let mut slot = self.lock();
        let now = SystemTime::now();
        let keep = !stopped
            && slot.pending.as_ref().is_some_and(|offer| match offer {
                Offer::Token(token) => token.is_valid(now),
                Offer::Withdraw => true,
            });
        if !keep {
            slot.pending = None;
            slot.running = false;
        }
        keep
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

    async fn write(self: &Arc<Self>, token: &Token) -> std::io::Result<()> {
        let content = match self.spec.format {
            SinkFormat::Raw => token.raw(),
            SinkFormat::Json => token.json_body(SystemTime::now()),
        };
        let me = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            if !me.swept.swap(true, Ordering::Relaxed) {
                sweep(&me.spec.path);
            }
            write_atomically(&me.spec.path, me.spec.mode, &content)
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
