//! A credential's coordinator when its store is shared (see `broker::coordinate`): the
//! flight's steps go through the fleet's lease, fenced writes and notices, and the
//! broker's position relative to the credential's record lives here.

use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;

use super::Fleet;
use crate::broker::coordinate::{Coordinator, Settled};
use crate::broker::credential::{Credential, Outcome};
use crate::error::Error;
use crate::store::{Loaded, ReadError, RedisStore, Saved};

/// A credential's coordinator in a fleet: the shared store, and where this broker
/// stands with the credential's record there.
pub(crate) struct Member {
    pub redis: Arc<RedisStore>,
    /// Locked after the credential's `inner` when both are needed, never before it,
    /// and never across an `.await`.
    position: Mutex<Fleet>,
}

impl Member {
    pub fn new(redis: Arc<RedisStore>) -> Member {
        Member {
            redis,
            position: Mutex::default(),
        }
    }

    /// Where this broker stands with the record.
    pub fn position(&self) -> MutexGuard<'_, Fleet> {
        // Every critical section leaves the position consistent.
        self.position.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Coordinator for Member {
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Loaded> {
        Box::pin(async move {
            match self.redis.read(name).await {
                Ok(None) => Loaded::Empty,
                Ok(Some(record)) => Loaded::Found {
                    saved: record.saved,
                    skipped: Vec::new(),
                    version: record.version,
                    stamp: record.stamp,
                },
                Err(ReadError::Corrupt { why, .. }) => Loaded::Corrupt(vec![why]),
                Err(ReadError::Unavailable(why)) => Loaded::Unavailable(why),
            }
        })
    }

    fn restored(&self, version: u64, stamp: Option<String>) {
        self.position().restored(version, stamp);
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn refresh<'a>(&'a self, credential: &'a Arc<Credential>) -> BoxFuture<'a, Outcome> {
        Box::pin(credential.refresh_shared(self))
    }

    fn write<'a>(
        &'a self,
        credential: &'a Credential,
        saved: Saved,
        mark: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(credential.write_shared(self, saved, mark))
    }

    fn new_token(&self) {
        self.position().rotated = true;
    }

    fn may_send(&self) -> Box<dyn Fn() -> bool + Send + Sync> {
        // The lease may be lost while the request waits for a permit to go out; then
        // it must not go out at all.
        let lease = self.position().lease.as_ref().map(|h| h.clock.clone());
        Box::new(move || lease.as_ref().is_none_or(|clock| clock.held()))
    }

    fn settle(&self) -> Settled {
        let mut fleet = self.position();
        Settled {
            adopted: std::mem::take(&mut fleet.adopted),
            held_until: fleet.held_until.take(),
        }
    }

    fn fleet(&self) -> Option<&Member> {
        Some(self)
    }
}
