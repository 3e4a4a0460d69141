//! The cap on open connections (`server.max_connections`), shared by every listener:
//! the API's, the ops port's and the proxies'.
//!
//! Descriptors past the cap stay free for what the broker needs to do its job (state
//! writes, IdP calls, sinks). A listener at the cap does not stop accepting, which would
//! leave real clients queued in the kernel's backlog behind idle sockets: it closes the
//! oldest connection that has not sent a request yet (the cheapest to lose, and what an
//! idle-connection flood is made of), then accepts. Connections with a request under
//! way are never closed for this; when every one is busy, new ones wait in the backlog.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Open connections, and which of them have not sent a request yet.
pub struct Connections {
    slots: Arc<Semaphore>,
    /// The cap, which no connection's weight may exceed.
    max: u32,
    /// Connections without a request so far, oldest first, each with what closes it.
    /// A std mutex, held for one map operation, never across an `.await`.
    fresh: Mutex<BTreeMap<u64, CancellationToken>>,
    next_id: AtomicU64,
}

/// One open connection's hold on the cap; released when dropped.
pub struct Slot {
    id: u64,
    connections: Arc<Connections>,
    /// Closes this connection (on shutdown, or to make room).
    pub close: CancellationToken,
    requested: AtomicBool,
    _permits: OwnedSemaphorePermit,
}

impl Connections {
    /// A cap of `max` connections (at least 1).
    pub fn new(max: usize) -> Arc<Connections> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Arc::new(Connections {
            slots: Arc::new(Semaphore::new(max)),
            max: u32::try_from(max).unwrap_or(u32::MAX),
            fresh: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Room for one more connection worth `weight` slots, closing idle ones to make it
    /// if need be; `None` once `stop` is cancelled. `close` of the slot is a child of
    /// `stop`.
    pub async fn reserve(
        self: &Arc<Self>,
        weight: u32,
        stop: &CancellationToken,
    ) -> Option<(OwnedSemaphorePermit, u32)> {
        // A weight over the cap could never be granted.
        let weight = weight.clamp(1, self.max);
        loop {
            if let Ok(permit) = self.slots.clone().try_acquire_many_owned(weight) {
                return Some((permit, weight));
            }
            let made_room = self.close_oldest_fresh();
            let permit = tokio::select! {
                _ = stop.cancelled() => return None,
                permit = self.slots.clone().acquire_many_owned(weight) => permit.ok()?,
                // Nothing to close: wait for a connection to end. Otherwise try again
                // after the closed one has let go of its slot.
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)), if made_room => continue,
            };
            return Some((permit, weight));
        }
    }

    /// Registers an accepted connection holding `permit`.
    pub fn open(self: &Arc<Self>, permit: OwnedSemaphorePermit, stop: &CancellationToken) -> Slot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = stop.child_token();
        self.lock().insert(id, close.clone());
        Slot {
            id,
            connections: self.clone(),
            close,
            requested: AtomicBool::new(false),
            _permits: permit,
        }
    }

    /// Closes the oldest connection that has sent no request; whether there was one.
    fn close_oldest_fresh(&self) -> bool {
        match self.lock().pop_first() {
            Some((_, close)) => {
                close.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.fresh.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Slot {
    /// The connection sent a request: it is no longer the first to be closed for room.
    pub fn requested(&self) {
        if !self.requested.swap(true, Ordering::Relaxed) {
            self.connections.lock().remove(&self.id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !*self.requested.get_mut() {
            self.connections.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_oldest_connection_without_a_request_is_closed() {
        let stop = CancellationToken::new();
        let connections = Connections::new(3);
        let mut slots = Vec::new();
        for _ in 0..3 {
            let (permit, _) = connections.reserve(1, &stop).await.unwrap();
            slots.push(connections.open(permit, &stop));
        }
        slots[0].requested();
        // Full: room is made by closing slot 1, the oldest without a request.
        let reserving = {
            let connections = connections.clone();
            let stop = stop.clone();
            tokio::spawn(async move { connections.reserve(1, &stop).await.is_some() })
        };
        slots[1].close.cancelled().await;
        assert!(!slots[0].close.is_cancelled() && !slots[2].close.is_cancelled());
        drop(slots.remove(1));
        assert!(reserving.await.unwrap());
    }

    #[tokio::test]
    async fn a_weight_over_the_cap_is_granted_the_whole_cap() {
        let stop = CancellationToken::new();
        let connections = Connections::new(1);
        let (_permit, weight) = connections.reserve(2, &stop).await.unwrap();
        assert_eq!(weight, 1);
    }

    #[tokio::test]
    async fn busy_connections_are_never_closed_and_shutdown_ends_the_wait() {
        let stop = CancellationToken::new();
        let connections = Connections::new(1);
        let (permit, _) = connections.reserve(1, &stop).await.unwrap();
        let busy = connections.open(permit, &stop);
        busy.requested();
        let waiting = {
            let connections = connections.clone();
            let stop = stop.clone();
            tokio::spawn(async move { connections.reserve(1, &stop).await.is_none() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!busy.close.is_cancelled());
        stop.cancel();
        assert!(
            waiting.await.unwrap(),
            "the wait ends with None at shutdown"
        );
        assert!(
            busy.close.is_cancelled(),
            "shutdown reaches every connection"
        );
    }
}
