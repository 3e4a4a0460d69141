//! The seam between a credential's flight and whoever else may hold its chain: one
//! broker alone (`Local`, the file store) or a fleet of brokers sharing a redis store
//! (`fleet::Member`: lease, fencing, notices, reconcile).
//!
//! A credential holds exactly one coordinator, chosen by the store when it is built.
//! The flight asks it for the few things that differ: load the stored chain, run the
//! refresh (directly, or under the fleet's lease), persist a state, note a new token,
//! guard the IdP request, and settle what the flight ended with. With the file store
//! no fleet code runs and no fleet state exists.
//!
//! A trait object: the two implementations are chosen at run time, and their async
//! methods return boxed futures (one allocation per flight or write, next to an IdP
//! call or an fsync).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::future::BoxFuture;

use super::credential::{Credential, Outcome};
use super::fleet::Member;
use crate::error::Error;
use crate::store::{FileStore, Loaded, Saved, Store};

/// What a flight ended with, beyond its outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Settled {
    /// The token came from another broker's record: counted as adopted, not refreshed.
    pub adopted: bool,
    /// Refreshes are held back until then (the fleet settles lost writes): the next
    /// attempt waits for it rather than for the backoff.
    pub held_until: Option<SystemTime>,
}

/// The operations a flight needs from its chain's keeper.
pub(super) trait Coordinator: Send + Sync {
    /// The stored state of `name`.
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Loaded>;

    /// The state was loaded from the record at `version` (written with `stamp`).
    fn restored(&self, version: u64, stamp: Option<String>);

    /// Whether other brokers may hold the chain: then a live stored chain wins over
    /// a changed bootstrap (see `restore`), and stops are settled by later flights.
    fn is_shared(&self) -> bool;

    /// The refresh of a restored credential: `Credential::fetch`, alone or under the
    /// fleet's lease.
    fn refresh<'a>(&'a self, credential: &'a Arc<Credential>) -> BoxFuture<'a, Outcome>;

    /// Writes `saved` durably (`mark`: its refresh token is sent next).
    fn write<'a>(
        &'a self,
        credential: &'a Credential,
        saved: Saved,
        mark: bool,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// The IdP answered with a new token not yet written.
    fn new_token(&self);

    /// Checked right before the IdP request goes out: `false` stops it.
    fn may_send(&self) -> Box<dyn Fn() -> bool + Send + Sync>;

    /// What the flight that just ended leaves behind (read once, then cleared).
    fn settle(&self) -> Settled;

    /// The fleet's side of this credential, for its notices and polls.
    fn fleet(&self) -> Option<&Member> {
        None
    }
}

/// The coordinator `store` calls for.
pub(super) fn for_store(store: &Store) -> Arc<dyn Coordinator> {
    match store {
        Store::File(file) => Arc::new(Local(file.clone())),
        Store::Redis(redis) => Arc::new(Member::new(redis.clone())),
    }
}

/// One broker alone with its file store: nothing to coordinate.
pub(super) struct Local(Arc<FileStore>);

impl Coordinator for Local {
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Loaded> {
        let (file, name) = (self.0.clone(), name.to_owned());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || file.load(&name))
                .await
                .unwrap_or_else(|e| Loaded::Corrupt(vec![format!("load task failed: {e}")]))
        })
    }

    fn restored(&self, _version: u64, _stamp: Option<String>) {}

    fn is_shared(&self) -> bool {
        false
    }

    fn refresh<'a>(&'a self, credential: &'a Arc<Credential>) -> BoxFuture<'a, Outcome> {
        Box::pin(credential.fetch())
    }

    fn write<'a>(
        &'a self,
        credential: &'a Credential,
        saved: Saved,
        _mark: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let started = Instant::now();
            let (file, name) = (self.0.clone(), credential.name().to_owned());
            let result = tokio::task::spawn_blocking(move || file.save(&name, &saved))
                .await
                .map_err(|e| format!("store task failed: {e}"))
                .and_then(|saved| saved.map_err(|e| e.to_string()));
            credential
                .shared
                .metrics
                .observe_store(started.elapsed().as_secs_f64());
            // Whatever the cause, a state not yet durable holds the token back: asked
            // again in a second.
            result.map_err(Error::Store)
        })
    }

    fn new_token(&self) {}

    fn may_send(&self) -> Box<dyn Fn() -> bool + Send + Sync> {
        Box::new(|| true)
    }

    fn settle(&self) -> Settled {
        Settled::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_store_s_coordinator_has_no_fleet_side() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::File(Arc::new(FileStore::open(dir.path()).unwrap()));
        let coordinator = for_store(&store);
        assert!(coordinator.fleet().is_none());
        assert!(!coordinator.is_shared());
        assert!(coordinator.may_send()());
        coordinator.new_token();
        assert_eq!(coordinator.settle(), Settled::default());
        assert!(matches!(coordinator.load("x").await, Loaded::Empty));
    }
}
