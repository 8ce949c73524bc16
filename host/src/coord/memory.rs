//! The in-process claim store: the embedded default, one host, no etcd.
//!
//! It keeps etcd's semantics where the coordinator relies on them: one
//! revision counter for every change, claims attached to session leases
//! that expire when not kept alive, fences that are claim revisions, and a
//! history that watchers can resume from. Expired leases are swept on every
//! operation, so a claim is never observed past its lease.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::runbook::RunbookSpec;
use super::store::{
    Change, Claim, ClaimInfo, ClaimStore, CoordError, EventStream, RunbookView, Session, StepEvent,
    StepRecord, StepView,
};

/// Events kept for watchers resuming from an old revision.
const HISTORY: usize = 100_000;

#[derive(Debug, Default)]
struct Runbook {
    spec: Option<RunbookSpec>,
    steps: BTreeMap<String, StepView>,
    closed: bool,
}

#[derive(Debug)]
struct Lease {
    holder: String,
    expires: Instant,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct State {
    revision: i64,
    next_lease: i64,
    leases: HashMap<i64, Lease>,
    /// (runbook, step) -> lease of its claim.
    claim_leases: HashMap<(String, String), i64>,
    runbooks: BTreeMap<String, Runbook>,
    modules: HashMap<String, Arc<Vec<u8>>>,
    history: std::collections::VecDeque<StepEvent>,
}

/// The embedded claim store. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<StepEvent>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            events: broadcast::channel(4096).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops a claim that still holds, applies `update` to its step, and
    /// records `Unclaimed` then `change`: what finishing and releasing share.
    fn end_claim(
        &self,
        claim: &Claim,
        update: impl FnOnce(&mut StepView),
        change: Change,
    ) -> Result<(), CoordError> {
        let mut s = self.lock();
        s.sweep(&self.events);
        if !s.holds(claim) {
            return Err(State::fenced(claim));
        }
        s.claim_leases
            .remove(&(claim.runbook.clone(), claim.step.clone()));
        if let Some(view) = s
            .runbooks
            .get_mut(&claim.runbook)
            .and_then(|r| r.steps.get_mut(&claim.step))
        {
            view.claim = None;
            update(view);
        }
        let unclaimed = Change::Unclaimed {
            step: claim.step.clone(),
        };
        s.emit_all(&self.events, &claim.runbook, [unclaimed, change]);
        Ok(())
    }
}

impl State {
    fn emit(
        &mut self,
        events: &broadcast::Sender<StepEvent>,
        runbook: &str,
        change: Change,
    ) -> i64 {
        self.emit_all(events, runbook, [change])
    }

    /// Records `changes` at one new revision, as one etcd transaction does.
    fn emit_all(
        &mut self,
        events: &broadcast::Sender<StepEvent>,
        runbook: &str,
        changes: impl IntoIterator<Item = Change>,
    ) -> i64 {
        self.revision += 1;
        for change in changes {
            let event = StepEvent {
                revision: self.revision,
                runbook: runbook.to_string(),
                change,
            };
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(event.clone());
            let _ = events.send(event);
        }
        self.revision
    }

    /// Drops expired leases and the claims on them.
    fn sweep(&mut self, events: &broadcast::Sender<StepEvent>) {
        let now = Instant::now();
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_lease(events, id);
        }
    }

    fn drop_lease(&mut self, events: &broadcast::Sender<StepEvent>, lease: i64) {
        self.leases.remove(&lease);
        let claims: Vec<(String, String)> = self
            .claim_leases
            .iter()
            .filter(|(_, l)| **l == lease)
            .map(|(k, _)| k.clone())
            .collect();
        for (runbook, step) in claims {
            self.claim_leases.remove(&(runbook.clone(), step.clone()));
            if let Some(view) = self
                .runbooks
                .get_mut(&runbook)
                .and_then(|r| r.steps.get_mut(&step))
            {
                view.claim = None;
            }
            self.emit(events, &runbook, Change::Unclaimed { step });
        }
    }

    fn holds(&self, claim: &Claim) -> bool {
        self.runbooks
            .get(&claim.runbook)
            .and_then(|r| r.steps.get(&claim.step))
            .and_then(|v| v.claim.as_ref())
            .is_some_and(|c| c.fence == claim.fence)
    }

    fn fenced(claim: &Claim) -> CoordError {
        CoordError::Fenced {
            runbook: claim.runbook.clone(),
            step: claim.step.clone(),
            fence: claim.fence,
        }
    }
}

#[async_trait::async_trait]
impl ClaimStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "in-process"
    }

    async fn join(&self, holder: &str, ttl: Duration) -> Result<Session, CoordError> {
        let mut s = self.lock();
        s.sweep(&self.events);
        s.next_lease += 1;
        let lease = s.next_lease;
        s.leases.insert(
            lease,
            Lease {
                holder: holder.to_string(),
                expires: Instant::now() + ttl,
                ttl,
            },
        );
        Ok(Session {
            holder: holder.to_string(),
            lease,
            ttl,
        })
    }

    async fn keep_alive(&self, session: &Session) -> Result<(), CoordError> {
        let mut s = self.lock();
        s.sweep(&self.events);
        match s.leases.get_mut(&session.lease) {
            Some(l) => {
                l.expires = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(CoordError::SessionLost(session.lease)),
        }
    }

    async fn leave(&self, session: &Session) -> Result<(), CoordError> {
        let mut s = self.lock();
        s.drop_lease(&self.events, session.lease);
        Ok(())
    }

    async fn hosts(&self) -> Result<Vec<String>, CoordError> {
        let mut s = self.lock();
        s.sweep(&self.events);
        let mut hosts: Vec<String> = s.leases.values().map(|l| l.holder.clone()).collect();
        hosts.sort();
        hosts.dedup();
        Ok(hosts)
    }

    async fn submit(
        &self,
        id: &str,
        spec: &RunbookSpec,
        modules: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError> {
        let mut s = self.lock();
        if s.runbooks.contains_key(id) {
            return Err(CoordError::AlreadyExists(id.to_string()));
        }
        for (mid, bytes) in modules {
            s.modules
                .entry(mid.clone())
                .or_insert_with(|| Arc::new(bytes.clone()));
        }
        s.runbooks.insert(
            id.to_string(),
            Runbook {
                spec: Some(spec.clone()),
                steps: spec
                    .steps
                    .keys()
                    .map(|k| (k.clone(), StepView::default()))
                    .collect(),
                closed: false,
            },
        );
        Ok(s.emit(&self.events, id, Change::Submitted))
    }

    async fn module(&self, id: &str) -> Result<Option<Vec<u8>>, CoordError> {
        Ok(self.lock().modules.get(id).map(|b| b.as_ref().clone()))
    }

    async fn runbook(&self, id: &str) -> Result<Option<RunbookView>, CoordError> {
        let mut s = self.lock();
        s.sweep(&self.events);
        let revision = s.revision;
        Ok(s.runbooks.get(id).and_then(|r| {
            Some(RunbookView {
                id: id.to_string(),
                spec: r.spec.clone()?,
                steps: r.steps.clone(),
                revision,
                closed: r.closed,
            })
        }))
    }

    async fn active(&self) -> Result<Vec<String>, CoordError> {
        let mut s = self.lock();
        s.sweep(&self.events);
        Ok(s.runbooks
            .iter()
            .filter(|(_, r)| !r.closed)
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn claim(
        &self,
        session: &Session,
        runbook: &str,
        step: &str,
        attempt: u32,
    ) -> Result<Option<Claim>, CoordError> {
        let mut s = self.lock();
        s.sweep(&self.events);
        if !s.leases.contains_key(&session.lease) {
            return Err(CoordError::SessionLost(session.lease));
        }
        let Some(view) = s.runbooks.get(runbook).and_then(|r| r.steps.get(step)) else {
            return Err(CoordError::NotFound(format!("{runbook}/{step}")));
        };
        if view.claim.is_some() || view.result.is_some() || view.failures + 1 != attempt {
            return Ok(None);
        }
        let next = s.revision + 1;
        let fence = s.emit(
            &self.events,
            runbook,
            Change::Claimed {
                step: step.to_string(),
                holder: session.holder.clone(),
                attempt,
                fence: next,
            },
        );
        if let Some(view) = s
            .runbooks
            .get_mut(runbook)
            .and_then(|r| r.steps.get_mut(step))
        {
            view.claim = Some(ClaimInfo {
                holder: session.holder.clone(),
                attempt,
                fence,
            });
        }
        s.claim_leases
            .insert((runbook.to_string(), step.to_string()), session.lease);
        Ok(Some(Claim {
            runbook: runbook.to_string(),
            step: step.to_string(),
            holder: session.holder.clone(),
            fence,
            attempt,
        }))
    }

    async fn finish(&self, claim: &Claim, record: &StepRecord) -> Result<(), CoordError> {
        self.end_claim(
            claim,
            |view| view.result = Some(record.clone()),
            Change::Finished {
                step: claim.step.clone(),
                record: record.clone(),
            },
        )
    }

    async fn release(&self, claim: &Claim, failures: u32) -> Result<(), CoordError> {
        self.end_claim(
            claim,
            |view| view.failures = failures,
            Change::Retrying {
                step: claim.step.clone(),
                failures,
            },
        )
    }

    async fn skip(
        &self,
        runbook: &str,
        step: &str,
        record: &StepRecord,
    ) -> Result<bool, CoordError> {
        let mut s = self.lock();
        s.sweep(&self.events);
        let Some(view) = s
            .runbooks
            .get_mut(runbook)
            .and_then(|r| r.steps.get_mut(step))
        else {
            return Err(CoordError::NotFound(format!("{runbook}/{step}")));
        };
        if view.claim.is_some() || view.result.is_some() {
            return Ok(false);
        }
        view.result = Some(record.clone());
        s.emit(
            &self.events,
            runbook,
            Change::Finished {
                step: step.to_string(),
                record: record.clone(),
            },
        );
        Ok(true)
    }

    async fn close(&self, runbook: &str) -> Result<(), CoordError> {
        let mut s = self.lock();
        let Some(r) = s.runbooks.get_mut(runbook) else {
            return Err(CoordError::NotFound(runbook.to_string()));
        };
        if !r.closed {
            r.closed = true;
            s.emit(&self.events, runbook, Change::Closed);
        }
        Ok(())
    }

    async fn watch(&self, runbook: &str, from_revision: i64) -> Result<EventStream, CoordError> {
        let (past, mut live) = {
            let s = self.lock();
            let oldest = s.history.front().map_or(s.revision + 1, |e| e.revision);
            if from_revision > 0 && from_revision < oldest {
                return Err(CoordError::Invalid(format!(
                    "revision {from_revision} is compacted; the oldest kept is {oldest}"
                )));
            }
            let past: Vec<StepEvent> = if from_revision > 0 {
                s.history
                    .iter()
                    .filter(|e| e.revision >= from_revision && e.runbook == runbook)
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            // Subscribing under the lock: nothing is missed between the two.
            (past, self.events.subscribe())
        };
        let runbook = runbook.to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut last = from_revision - 1;
            for e in past {
                last = e.revision;
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                // Ends as soon as the reader is gone, not at the next event.
                let received = tokio::select! {
                    r = live.recv() => r,
                    () = tx.closed() => return,
                };
                let e = match received {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(CoordError::Invalid(format!(
                                "the watcher fell {n} events behind; watch again from revision {}",
                                last + 1
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // Live events all follow the replayed ones (both were taken
                // under the lock); one revision may carry several events.
                if e.runbook != runbook || e.revision < from_revision {
                    continue;
                }
                last = e.revision;
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn changes(&self) -> Result<EventStream, CoordError> {
        let mut live = self.events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    r = live.recv() => r,
                    () = tx.closed() => return,
                };
                match received {
                    Ok(e) => {
                        // A full channel already holds a wake-up; dropping is fine.
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send(Ok(e))
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_a_stream_ends_its_task_without_waiting_for_an_event() {
        let store = MemoryStore::new();
        let watch = store.watch("quiet", 0).await.unwrap();
        let changes = store.changes().await.unwrap();
        assert_eq!(store.events.receiver_count(), 2);
        drop(watch);
        drop(changes);
        for _ in 0..200 {
            if store.events.receiver_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the forwarding tasks outlived their readers");
    }
}
