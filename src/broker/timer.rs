//! The proactive side: one scheduler task for every credential.
//!
//! Each credential has at most one live entry in a min-heap of due times: the jittered
//! refresh point, a backoff retry, or a bootstrap re-check. Whenever something changes a
//! credential's schedule (a refresh finished, a reload added it), `schedule` pushes a new
//! entry and bumps the credential's generation, so older entries are skipped when they
//! come up instead of being searched for and removed. The one task sleeps until the
//! earliest entry is due, then fires it through the same single flight as every request.
//!
//! Thousands of credentials are therefore thousands of heap entries (tens of bytes each),
//! not thousands of tasks. Timer-started flights also take a slot from a pool sized like
//! the IdP cap: at start-up, when every credential is due at once, flights are started as
//! slots free up rather than all at once, each waiting for an IdP permit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::credential::{Credential, Decision, Want};

/// What the scheduler needs of a credential.
pub(crate) trait Timed: Send + Sync + 'static {
    /// Bumped by every `schedule`; only the entry carrying the current value is live.
    fn generation(&self) -> &AtomicU64;
    /// Time from now until the credential has something to do.
    fn until_due(&self) -> Duration;
    /// Whether the credential is retired (removed, replaced, or shutting down).
    fn retired(&self) -> bool;
    /// Does what is due. A flight it starts keeps `slot` until it ends; whatever it does
    /// must end in a new `schedule` (a finished flight schedules its successor).
    fn fire(self: Arc<Self>, slot: OwnedSemaphorePermit);
}

/// One scheduled wake-up.
struct Entry<T> {
    at: Instant,
    generation: u64,
    credential: Weak<T>,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.generation) == (other.at, other.generation)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.generation).cmp(&(other.at, other.generation))
    }
}

/// Every credential's next wake-up, and the one task that acts on them.
pub(crate) struct Timers<T> {
    /// A std mutex: pushes and pops are short and never cross an `.await`.
    heap: Mutex<BinaryHeap<Reverse<Entry<T>>>>,
    /// Wakes the task when an entry earlier than the one it sleeps for arrives.
    earlier: Notify,
    /// Timer-started flights in progress at once.
    slots: Arc<Semaphore>,
}

impl<T: Timed> Timers<T> {
    /// `slots`: how many timer-started flights may run at once.
    pub fn new(slots: usize) -> Timers<T> {
        Timers {
            heap: Mutex::default(),
            earlier: Notify::new(),
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// (Re)computes when `credential` is next due; any older entry becomes stale.
    pub fn schedule(&self, credential: &Arc<T>) {
        let generation = credential.generation().fetch_add(1, Ordering::AcqRel) + 1;
        let at = Instant::now() + credential.until_due();
        let mut heap = self.lock();
        let sooner = heap.peek().is_none_or(|Reverse(head)| at < head.at);
        heap.push(Reverse(Entry {
            at,
            generation,
            credential: Arc::downgrade(credential),
        }));
        drop(heap);
        if sooner {
            self.earlier.notify_one();
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let next = self.lock().peek().map(|Reverse(entry)| entry.at);
            let due = match next {
                Some(at) if at <= Instant::now() => true,
                Some(at) => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.earlier.notified() => false,
                    _ = tokio::time::sleep_until(at) => true,
                },
                None => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.earlier.notified() => false,
                },
            };
            if !due {
                continue;
            }
            let Some(credential) = self.pop_live() else {
                continue;
            };
            let slot = tokio::select! {
                _ = shutdown.cancelled() => return,
                slot = self.slots.clone().acquire_owned() => slot,
            };
            // The semaphore is never closed, so a slot always comes.
            if let Ok(slot) = slot {
                credential.fire(slot);
            }
        }
    }

    /// The earliest entry if it is due and still live.
    fn pop_live(&self) -> Option<Arc<T>> {
        let mut heap = self.lock();
        let Reverse(entry) = heap.pop()?;
        let credential = entry.credential.upgrade()?;
        let live = credential.generation().load(Ordering::Acquire) == entry.generation;
        (live && !credential.retired()).then_some(credential)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Entry<T>>>> {
        // Pushes and pops leave the heap consistent, so a poisoned lock is usable.
        self.heap.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries in the heap, stale ones included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// How long to wait when only the end of a flight can change anything; the flight's end
/// schedules the credential again anyway.
const IDLE: Duration = Duration::from_secs(3600);

impl Timed for Credential {
    fn generation(&self) -> &AtomicU64 {
        &self.timer_generation
    }

    fn until_due(&self) -> Duration {
        let now = SystemTime::now();
        let inner = self.lock();
        // Only a login (its own flight) gives a credential waiting for one a chain.
        if inner.flight.is_some() || self.awaits_login(&inner) {
            return IDLE;
        }
        if inner.reauth.is_some() {
            let poll = self.spec.bootstrap_poll;
            return self.refusal_retry_at(&inner).map_or(poll, |at| {
                at.duration_since(now).unwrap_or_default().min(poll)
            });
        }
        // A retry time already past must not count, or a token that is not yet due
        // would be fired at once again and again.
        let due = match (
            inner.retry_at.filter(|at| *at > now),
            self.current.load_full(),
        ) {
            (Some(retry_at), _) => retry_at,
            (None, Some(token))
                if inner.restored
                    && inner.unsaved.is_none()
                    && inner.unanswered_since.is_none() =>
            {
                token.refresh_at
            }
            _ => now,
        };
        due.duration_since(now).unwrap_or_default()
    }

    fn retired(&self) -> bool {
        self.stop.is_cancelled()
    }

    fn fire(self: Arc<Self>, slot: OwnedSemaphorePermit) {
        if self.lock().reauth.is_none() {
            self.due(slot);
            return;
        }
        // Re-reading the inputs reads files and may check a deliberately slow
        // fingerprint: not on the loop every credential's timer shares, nor on an async
        // thread.
        tokio::spawn(async move {
            self.save_stop().await;
            let me = self.clone();
            let resume =
                tokio::task::spawn_blocking(move || me.check_bootstrap() || me.lift_refusal());
            if resume.await.unwrap_or(false) {
                self.due(slot);
            } else {
                self.schedule_changed();
            }
        });
    }
}

impl Credential {
    /// The timer's turn: refresh if the token is due.
    fn due(self: &Arc<Self>, slot: OwnedSemaphorePermit) {
        match self.decide(&Want::Timer, SystemTime::now(), Some(slot)) {
            // A flight runs (this one or a request's); its end schedules the next wake-up.
            Decision::Wait(_) => {}
            // Not due after all (a request refreshed first), or nothing to do.
            Decision::Serve(_) | Decision::Fail(_) => self.schedule_changed(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A credential that records when it fired and asks to fire again after `every`.
    struct Fake {
        generation: AtomicU64,
        every: Mutex<Duration>,
        fired: Mutex<Vec<Instant>>,
        retired: AtomicBool,
        timers: Weak<Timers<Fake>>,
        me: Weak<Fake>,
        /// How long a fired flight holds its slot.
        busy: Duration,
    }

    impl Timed for Fake {
        fn generation(&self) -> &AtomicU64 {
            &self.generation
        }
        fn until_due(&self) -> Duration {
            *self.every.lock().unwrap()
        }
        fn retired(&self) -> bool {
            self.retired.load(Ordering::Relaxed)
        }
        fn fire(self: Arc<Self>, slot: OwnedSemaphorePermit) {
            self.fired.lock().unwrap().push(Instant::now());
            tokio::spawn(async move {
                tokio::time::sleep(self.busy).await;
                drop(slot);
                if let (Some(timers), Some(me)) = (self.timers.upgrade(), self.me.upgrade()) {
                    timers.schedule(&me);
                }
            });
        }
    }

    fn fake(timers: &Arc<Timers<Fake>>, every: u64, busy: u64) -> Arc<Fake> {
        Arc::new_cyclic(|me| Fake {
            generation: AtomicU64::new(0),
            every: Mutex::new(Duration::from_secs(every)),
            fired: Mutex::default(),
            retired: AtomicBool::new(false),
            timers: Arc::downgrade(timers),
            me: me.clone(),
            busy: Duration::from_secs(busy),
        })
    }

    fn start(timers: &Arc<Timers<Fake>>) -> CancellationToken {
        let stop = CancellationToken::new();
        let (t, s) = (timers.clone(), stop.clone());
        tokio::spawn(async move { t.run(s).await });
        stop
    }

    fn offsets(f: &Fake, t0: Instant) -> Vec<u64> {
        let fired = f.fired.lock().unwrap();
        fired.iter().map(|at| (*at - t0).as_secs()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn each_credential_fires_when_due_and_again_after_its_flight() {
        let timers = Arc::new(Timers::new(8));
        let (a, b) = (fake(&timers, 10, 1), fake(&timers, 25, 0));
        let t0 = Instant::now();
        timers.schedule(&a);
        timers.schedule(&b);
        let stop = start(&timers);
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop.cancel();
        // a: due at 10, busy 1 s, then due 10 s after that.
        assert_eq!(offsets(&a, t0), vec![10, 21, 32, 43, 54]);
        assert_eq!(offsets(&b, t0), vec![25, 50]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_schedule_replaces_the_old_one_and_an_earlier_one_wakes_the_task() {
        let timers = Arc::new(Timers::new(8));
        let a = fake(&timers, 100, 0);
        let t0 = Instant::now();
        timers.schedule(&a);
        let stop = start(&timers);
        tokio::time::sleep(Duration::from_secs(5)).await;
        // The schedule moved sooner while the task slept for the old entry.
        *a.every.lock().unwrap() = Duration::from_secs(3);
        timers.schedule(&a);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(offsets(&a, t0), vec![8]);
        // The stale entry at 100 s does not fire a second time.
        *a.every.lock().unwrap() = Duration::from_secs(1000);
        timers.schedule(&a);
        tokio::time::sleep(Duration::from_secs(200)).await;
        stop.cancel();
        assert_eq!(offsets(&a, t0), vec![8]);
    }

    #[tokio::test(start_paused = true)]
    async fn retired_and_dropped_credentials_never_fire() {
        let timers = Arc::new(Timers::new(8));
        let (a, b) = (fake(&timers, 1, 0), fake(&timers, 1, 0));
        timers.schedule(&a);
        timers.schedule(&b);
        a.retired.store(true, Ordering::Relaxed);
        drop(b);
        let stop = start(&timers);
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.cancel();
        assert!(a.fired.lock().unwrap().is_empty());
        assert_eq!(timers.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn timer_flights_are_capped_by_the_slots() {
        // 10 credentials due at once, 3 slots, each flight holds its slot for 2 s.
        let timers = Arc::new(Timers::new(3));
        let all: Vec<_> = (0..10).map(|_| fake(&timers, 0, 2)).collect();
        for f in &all {
            *f.every.lock().unwrap() = Duration::ZERO;
            timers.schedule(f);
            *f.every.lock().unwrap() = Duration::from_secs(1000);
        }
        let t0 = Instant::now();
        let stop = start(&timers);
        tokio::time::sleep(Duration::from_secs(20)).await;
        stop.cancel();
        let mut firsts: Vec<u64> = all.iter().map(|f| offsets(f, t0)[0]).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, vec![0, 0, 0, 2, 2, 2, 4, 4, 4, 6]);
    }
}
