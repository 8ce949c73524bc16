//! Slots shared fairly among callers: the server's sandbox slots and the
//! module store's compile slots.
//!
//! The server runs at most `sandbox_pool.max_size` sandboxes at once. A
//! first-come queue in front of them lets one caller that keeps the pool
//! full (say, 10x `max_size` runs spinning to their deadline) push every
//! other caller's request behind its own backlog, where it waits
//! `queue_timeout_ms` and is refused. Here requests wait in one queue per
//! caller, and a freed slot goes to the next caller in turn (round robin
//! over the callers waiting), so a caller that just arrived is served
//! within one slot turnover whatever the others have queued. A caller may
//! also be held to `sandbox_pool.per_caller_max_size` slots at once: its
//! further requests wait their turn below that quota.
//!
//! Bounds: one queue entry per waiting request (each is an open gRPC
//! request, itself bounded by the transport's stream limits) and one
//! counter per caller holding or awaiting a slot; both are removed as soon
//! as they reach zero.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::oneshot;

/// A request waited its whole queue timeout without getting a slot.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SlotsBusy {
    /// Every slot stayed taken.
    #[error("all {capacity} {what} slots stayed busy for {waited_ms} ms; retry later")]
    Full {
        /// What the slots are for (`sandbox`, `compile`).
        what: &'static str,
        /// How many there are.
        capacity: usize,
        /// How long the request waited.
        waited_ms: u128,
    },
    /// The caller held its whole quota the whole time.
    #[error(
        "caller `{caller}` kept its quota of {quota} {what} slots ({setting}) busy for {waited_ms} ms; retry later"
    )]
    Quota {
        /// What the slots are for.
        what: &'static str,
        /// The setting that sets the quota.
        setting: &'static str,
        /// The caller.
        caller: String,
        /// Its quota.
        quota: usize,
        /// How long the request waited.
        waited_ms: u128,
    },
}

/// `capacity` slots, handed out round robin among waiting callers, at most
/// `quota` to one caller at a time.
#[derive(Debug, Clone)]
pub(crate) struct FairSlots {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    what: &'static str,
    setting: &'static str,
    capacity: usize,
    quota: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Slots each caller holds now.
    held: HashMap<Arc<str>, usize>,
    /// Each waiting caller's requests, oldest first.
    queues: HashMap<Arc<str>, VecDeque<(u64, oneshot::Sender<Slot>)>>,
    /// Waiting callers in the order they are served.
    turn: VecDeque<Arc<str>>,
    next_id: u64,
}

/// A held slot; dropping it hands the slot on.
#[derive(Debug)]
pub(crate) struct Slot {
    shared: Option<Arc<Shared>>,
    caller: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.release(&self.caller);
        }
    }
}

impl FairSlots {
    /// `capacity` slots for `what` (named in refusals); a caller holds at
    /// most `quota` of them (clamped to `1..=capacity`), set by `setting`.
    pub(crate) fn new(
        what: &'static str,
        capacity: usize,
        quota: usize,
        setting: &'static str,
    ) -> Self {
        let capacity = capacity.max(1);
        Self {
            shared: Arc::new(Shared {
                what,
                setting,
                capacity,
                quota: quota.clamp(1, capacity),
                state: Mutex::new(State {
                    free: capacity,
                    ..State::default()
                }),
            }),
        }
    }

    /// Waits at most `timeout` for a slot for `caller`.
    pub(crate) async fn acquire(&self, caller: &str, timeout: Duration) -> Result<Slot, SlotsBusy> {
        let shared = &self.shared;
        let (id, mut rx, caller) = {
            let mut state = shared.lock();
            let caller = state.key(caller);
            if state.free > 0 && state.holds(&caller) < shared.quota {
                state.free -= 1;
                *state.held.entry(caller.clone()).or_default() += 1;
                return Ok(Slot {
                    shared: Some(shared.clone()),
                    caller,
                });
            }
            let id = state.next_id;
            state.next_id += 1;
            let (tx, rx) = oneshot::channel();
            let queue = state.queues.entry(caller.clone()).or_default();
            queue.push_back((id, tx));
            if queue.len() == 1 {
                state.turn.push_back(caller.clone());
            }
            (id, rx, caller)
        };
        // Declared after `rx`, so dropped before it: a request abandoned
        // while queued leaves the queue, and a slot handed to it in the
        // meantime is dropped with `rx` and handed on.
        let mut waiting = Waiting {
            shared,
            caller: &caller,
            id,
            queued: true,
        };
        match tokio::time::timeout(timeout, &mut rx).await {
            Ok(Ok(slot)) => {
                waiting.queued = false;
                Ok(slot)
            }
            Ok(Err(_)) | Err(_) => {
                // Under the lock nobody can hand us a slot any more: take one
                // that arrived just now, or leave the queue.
                let mut state = shared.lock();
                if let Ok(slot) = rx.try_recv() {
                    waiting.queued = false;
                    drop(state);
                    return Ok(slot);
                }
                state.dequeue(&caller, id);
                waiting.queued = false;
                let waited_ms = timeout.as_millis();
                Err(
                    if shared.quota < shared.capacity && state.holds(&caller) >= shared.quota {
                        SlotsBusy::Quota {
                            what: shared.what,
                            setting: shared.setting,
                            caller: caller.to_string(),
                            quota: shared.quota,
                            waited_ms,
                        }
                    } else {
                        SlotsBusy::Full {
                            what: shared.what,
                            capacity: shared.capacity,
                            waited_ms,
                        }
                    },
                )
            }
        }
    }

    /// How many slots there are.
    pub(crate) fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Slots free now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.shared.lock().free
    }
}

struct Waiting<'a> {
    shared: &'a Arc<Shared>,
    caller: &'a Arc<str>,
    id: u64,
    queued: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.queued {
            self.shared.lock().dequeue(self.caller, self.id);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section only moves counters and queue entries, so
        // a panic elsewhere cannot leave the state half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `caller` gave a slot back: it goes to the waiting caller under its
    /// quota that holds the fewest slots (the earliest in turn among
    /// equals), else it is free.
    fn release(self: &Arc<Self>, caller: &str) {
        let mut state = self.lock();
        if let Some(n) = state.held.get_mut(caller) {
            *n -= 1;
            if *n == 0 {
                state.held.remove(caller);
            }
        }
        loop {
            let pick = state
                .turn
                .iter()
                .enumerate()
                .map(|(i, c)| (state.holds(c), i))
                .filter(|(holds, _)| *holds < self.quota)
                .min()
                .map(|(_, i)| i);
            let Some(i) = pick else {
                break;
            };
            let State {
                queues, held, turn, ..
            } = &mut *state;
            let Some(next) = turn.remove(i) else {
                break;
            };
            let Some(queue) = queues.get_mut(&next) else {
                continue;
            };
            let Some((_, tx)) = queue.pop_front() else {
                queues.remove(&next);
                continue;
            };
            let slot = Slot {
                shared: Some(self.clone()),
                caller: next.clone(),
            };
            let sent = tx.send(slot);
            let emptied = queue.is_empty();
            if emptied {
                queues.remove(&next);
            }
            match sent {
                Ok(()) => {
                    *held.entry(next.clone()).or_default() += 1;
                    if !emptied {
                        turn.push_back(next);
                    }
                    return;
                }
                // The request gave up between its timeout and taking the
                // lock; this slot was never held. Try its next request.
                Err(mut slot) => {
                    slot.shared = None;
                    if !emptied {
                        turn.insert(i, next);
                    }
                }
            }
        }
        state.free += 1;
    }
}

impl State {
    /// The map key for `caller`, reusing the allocation already there.
    fn key(&self, caller: &str) -> Arc<str> {
        let held = self.held.get_key_value(caller).map(|(k, _)| k);
        let queued = || self.queues.get_key_value(caller).map(|(k, _)| k);
        held.or_else(queued)
            .cloned()
            .unwrap_or_else(|| Arc::from(caller))
    }

    fn holds(&self, caller: &str) -> usize {
        self.held.get(caller).copied().unwrap_or(0)
    }

    fn dequeue(&mut self, caller: &str, id: u64) {
        if let Some(queue) = self.queues.get_mut(caller) {
            queue.retain(|(i, _)| *i != id);
            if queue.is_empty() {
                self.queues.remove(caller);
                self.turn.retain(|c| &**c != caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_newcomer_is_served_before_a_flooding_callers_backlog() {
        let slots = FairSlots::new("sandbox", 2, 2, "q");
        let mut held = vec![
            slots.acquire("a", LONG).await.unwrap(),
            slots.acquire("a", LONG).await.unwrap(),
        ];
        // A queues ten more, then B asks once.
        let mut a_waiting = Vec::new();
        for _ in 0..10 {
            let slots = slots.clone();
            a_waiting.push(tokio::spawn(async move { slots.acquire("a", LONG).await }));
        }
        tokio::task::yield_now().await;
        let b = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire("b", LONG).await }
        });
        tokio::task::yield_now().await;
        // One slot turns over: B gets it, not A's backlog.
        held.pop();
        let b = b.await.unwrap().expect("b is served at the first turnover");
        assert_eq!(&*b.caller, "b");
        assert!(a_waiting.iter().all(|t| !t.is_finished()));
        drop(b);
        // Then A's queue drains in order, a slot at a time.
        tokio::task::yield_now().await;
        assert_eq!(a_waiting.iter().filter(|t| t.is_finished()).count(), 1);
        drop(held);
        for t in a_waiting {
            drop(t.await.unwrap().unwrap());
        }
        assert_eq!(slots.available(), 2);
    }

    #[tokio::test]
    async fn a_caller_at_its_quota_waits_while_others_use_the_free_slots() {
        let slots = FairSlots::new("sandbox", 4, 1, "q");
        let a = slots.acquire("a", LONG).await.unwrap();
        let refused = slots.acquire("a", Duration::from_millis(100)).await;
        assert_eq!(
            refused.unwrap_err(),
            SlotsBusy::Quota {
                what: "sandbox",
                setting: "q",
                caller: "a".into(),
                quota: 1,
                waited_ms: 100
            }
        );
        let b = slots.acquire("b", LONG).await.unwrap();
        assert_eq!(slots.available(), 2);
        // A waiting under its quota gets the slot A frees, not a free one.
        let next = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire("a", LONG).await }
        });
        tokio::task::yield_now().await;
        drop(a);
        drop(next.await.unwrap().unwrap());
        drop(b);
        assert_eq!(slots.available(), 4);
    }

    #[tokio::test]
    async fn a_full_pool_refuses_after_the_timeout_and_abandoned_waits_leak_nothing() {
        let slots = FairSlots::new("sandbox", 1, 1, "q");
        let a = slots.acquire("a", LONG).await.unwrap();
        assert_eq!(
            slots
                .acquire("b", Duration::from_millis(250))
                .await
                .unwrap_err(),
            SlotsBusy::Full {
                what: "sandbox",
                capacity: 1,
                waited_ms: 250
            }
        );
        // A request dropped while queued (its client hung up) leaves no
        // entry behind and never holds a slot.
        let abandoned = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire("c", LONG).await }
        });
        tokio::task::yield_now().await;
        abandoned.abort();
        let _ = abandoned.await;
        drop(a);
        assert_eq!(slots.available(), 1);
        let state = slots.shared.lock();
        assert!(state.queues.is_empty() && state.turn.is_empty() && state.held.is_empty());
    }
}
