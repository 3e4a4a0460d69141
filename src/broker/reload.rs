//! Applying a new configuration without a restart: added credentials start, removed
//! ones stop, changed ones are replaced, and unchanged ones keep their token, timer and
//! any refresh in flight.
//!
//! A replaced or removed credential is retired first: its timer stops, it starts no new
//! refresh, and the reload waits for a refresh already in flight to finish and persist.
//! Only then does the successor restore from the store, so it can never pick up a refresh
//! token its predecessor is about to spend.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::credential::Credential;
use super::{Broker, Set};
use crate::config::Config;
use crate::secret::KeyRingError;

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Unchanged credentials whose client key files changed: their keys apply now.
    pub keys_reread: Vec<String>,
}

/// Longest a reload waits for a retiring credential's refresh to finish.
const RETIRE_WAIT: Duration = Duration::from_secs(30);

impl Broker {
    /// Applies `config`'s credentials. Settings outside `[credentials]` need a restart;
    /// the caller warns about those.
    pub async fn reload(&self, config: &Config) -> Result<Reloaded, KeyRingError> {
        let old = self.set.load_full();
        let mut report = Reloaded::default();
        let mut map = HashMap::new();
        let mut retiring = Vec::new();
        let mut starting = Vec::new();
        for spec in &config.credentials {
            match old.map.get(&spec.name) {
                Some(current) if current.spec == *spec => {
                    // The spec names key files, not their contents: look at them now.
                    if current.client_keys.reread() {
                        report.keys_reread.push(spec.name.clone());
                    }
                    report.unchanged.push(spec.name.clone());
                    map.insert(spec.name.clone(), current.clone());
                }
                existing => {
                    let fresh = Credential::build(&self.shared, spec)?;
                    if let Some(current) = existing {
                        fresh.lock().discard_stored_token = true;
                        retiring.push(current.clone());
                        report.changed.push(spec.name.clone());
                    } else {
                        report.added.push(spec.name.clone());
                    }
                    starting.push(fresh.clone());
                    map.insert(spec.name.clone(), fresh);
                }
            }
        }
        for (name, current) in &old.map {
            if !map.contains_key(name) {
                retiring.push(current.clone());
                report.removed.push(name.clone());
                self.shared.metrics.forget(name);
            }
        }
        for credential in &retiring {
            credential.retire().await;
        }
        self.set.store(Arc::new(Set::new(map)));
        self.sets.send_modify(|n| *n += 1);
        for credential in starting {
            self.shared.timers.schedule(&credential);
        }
        report.added.sort();
        report.removed.sort();
        report.changed.sort();
        info!(added = ?report.added, removed = ?report.removed, changed = ?report.changed, unchanged = report.unchanged.len(), client_keys_reread = ?report.keys_reread, "configuration reloaded");
        Ok(report)
    }
}

impl Credential {
    /// Stops the timer and new refreshes, then waits for a refresh in flight.
    async fn retire(&self) {
        self.stop.cancel();
        let flight = self.lock().flight.clone();
        if let Some(mut rx) = flight
            && tokio::time::timeout(RETIRE_WAIT, rx.wait_for(Option::is_some))
                .await
                .is_err()
        {
            warn!(
                credential = self.name(),
                "a refresh was still running when the credential was replaced"
            );
        }
    }
}
