//! Every lease a run holds is revoked when the run ends, whatever the
//! reason, and a lease that could not be revoked is retried until it is.
//!
//! A run's leases live in a [`LeaseGuard`]. `Host::run` calls
//! [`LeaseGuard::finish`] on every way out of a sandbox (success, trap, out
//! of fuel, timeout), which revokes them at once. If the run's future is
//! dropped instead (the gRPC server interrupting runs at shutdown, a client
//! going away) the guard's `Drop` hands its leases to the registry's retry
//! queue. A revocation that fails goes to the same queue: a background task
//! retries it with exponential backoff (counted in
//! `if_chassis_secret_revoke_failures_total`, recorded in the audit log as
//! `secret.lease_revoke_failed`), and [`LeaseRegistry::drain`] tries every
//! one of them again when the host shuts down. The number not yet revoked
//! is the gauge `if_chassis_secret_leases_pending`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::SecretProvider;
use crate::audit::AuditLog;
use crate::telemetry::{SECRET_LEASES_PENDING, SECRET_REVOKE_FAILURES};

/// The longest wait between two attempts at revoking one lease.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A lease waiting to be revoked again.
#[derive(Debug)]
struct Unrevoked {
    run_id: String,
    attempts: u32,
    next_at: Instant,
    backoff: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    /// Leases held by runs still going.
    live: usize,
    /// Leases whose revocation failed or whose run was dropped, by id.
    queue: BTreeMap<String, Unrevoked>,
    /// Leases being revoked right now by the retry task or a drain.
    attempting: usize,
    /// Whether the retry task is running.
    retrying: bool,
}

/// Where a lease is counted until its revocation settles (revoked and
/// audited, or queued again): it leaves that count in the same critical
/// section that publishes the outcome, so [`LeaseRegistry::pending`] and
/// the gauge never read 0 while a revocation's record or requeue is still
/// to come.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// Held by a run (`Inner::live`).
    Live,
    /// Being retried (`Inner::attempting`).
    Attempting,
}

impl Inner {
    fn release(&mut self, held: Held) {
        let count = match held {
            Held::Live => &mut self.live,
            Held::Attempting => &mut self.attempting,
        };
        *count = count.saturating_sub(1);
    }
}

/// Tracks leases from creation to revocation; one per host.
pub struct LeaseRegistry {
    provider: Arc<dyn SecretProvider>,
    audit: Option<Arc<AuditLog>>,
    first_backoff: Duration,
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for LeaseRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRegistry")
            .field("provider", &self.provider.describe())
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl LeaseRegistry {
    /// A registry revoking through `provider`, recording in `audit`, and
    /// retrying failed revocations first after `first_backoff`, doubling up
    /// to [`RETRY_BACKOFF_MAX`].
    pub fn new(
        provider: Arc<dyn SecretProvider>,
        audit: Option<Arc<AuditLog>>,
        first_backoff: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            provider,
            audit,
            first_backoff,
            inner: Mutex::new(Inner::default()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// A guard for the leases of run `run_id`.
    pub fn guard(self: &Arc<Self>, run_id: &str) -> LeaseGuard {
        LeaseGuard {
            registry: self.clone(),
            run_id: run_id.to_string(),
            leases: Vec::new(),
        }
    }

    /// Leases not yet revoked: held by live runs, queued or being retried.
    pub fn pending(&self) -> usize {
        let inner = self.lock();
        inner.live + inner.queue.len() + inner.attempting
    }

    /// Ids of the leases waiting to be revoked again.
    pub fn unrevoked(&self) -> Vec<String> {
        self.lock().queue.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        let pending = inner.live + inner.queue.len() + inner.attempting;
        metrics::gauge!(SECRET_LEASES_PENDING).set(pending as f64);
    }

    fn record(&self, event: crate::audit::Event<'_>) {
        if let Some(log) = &self.audit {
            let kind = event.kind();
            if let Err(e) = log.event(event) {
                tracing::warn!(error = %e, kind, "could not audit a lease event");
            }
        }
    }

    /// Revokes `lease_id` of run `run_id` now; a failure is queued.
    async fn revoke_now(self: &Arc<Self>, run_id: &str, lease_id: String) {
        match self.provider.revoke(&lease_id).await {
            Ok(()) => {
                self.record(crate::audit::Event::LeaseRevoked {
                    run_id,
                    lease_id: &lease_id,
                    attempts: None,
                });
                self.settled(Held::Live);
            }
            Err(e) => {
                let error = e.to_string();
                self.failed(run_id, lease_id, 1, self.first_backoff, &error, Held::Live);
            }
        }
    }

    /// A lease counted as `held` is revoked (and audited).
    fn settled(&self, held: Held) {
        let mut inner = self.lock();
        inner.release(held);
        self.publish(&inner);
    }

    /// Counts, reports and queues a failed revocation of a lease counted
    /// as `held`.
    fn failed(
        &self,
        run_id: &str,
        lease_id: String,
        attempts: u32,
        backoff: Duration,
        error: &str,
        held: Held,
    ) {
        metrics::counter!(SECRET_REVOKE_FAILURES).increment(1);
        tracing::warn!(%lease_id, %run_id, attempts, %error, retry_in = ?backoff, "could not revoke a lease; will retry");
        self.record(crate::audit::Event::LeaseRevokeFailed {
            run_id: Some(run_id),
            lease_id: &lease_id,
            attempts: Some(attempts),
            error,
        });
        self.enqueue(run_id, lease_id, attempts, backoff, held);
    }

    /// Queues `lease_id`, which leaves its count as `held` in the same step.
    fn enqueue(
        &self,
        run_id: &str,
        lease_id: String,
        attempts: u32,
        backoff: Duration,
        held: Held,
    ) {
        let mut inner = self.lock();
        inner.release(held);
        inner.queue.insert(
            lease_id,
            Unrevoked {
                run_id: run_id.to_string(),
                attempts,
                next_at: Instant::now() + backoff,
                backoff,
            },
        );
        self.publish(&inner);
        drop(inner);
        self.wake.notify_one();
    }

    /// Starts the retry task if it is not running and a runtime is at hand;
    /// without one, [`drain`](Self::drain) revokes the queue later.
    fn ensure_retrying(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut inner = self.lock();
            if inner.retrying || inner.queue.is_empty() {
                return;
            }
            inner.retrying = true;
        }
        let registry = self.clone();
        runtime.spawn(async move { registry.retry_loop().await });
    }

    async fn retry_loop(self: Arc<Self>) {
        loop {
            let next = {
                let mut inner = self.lock();
                match inner.queue.values().map(|u| u.next_at).min() {
                    None => {
                        inner.retrying = false;
                        return;
                    }
                    Some(at) => at,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = self.wake.notified() => continue,
            }
            self.attempt_due(false).await;
        }
    }

    /// Tries every queued lease that is due (or all, if `all`) once.
    async fn attempt_due(&self, all: bool) {
        let now = Instant::now();
        let due: Vec<(String, Unrevoked)> = {
            let mut inner = self.lock();
            let ids: Vec<String> = inner
                .queue
                .iter()
                .filter(|(_, u)| all || u.next_at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            let taken: Vec<_> = ids
                .into_iter()
                .filter_map(|id| inner.queue.remove(&id).map(|u| (id, u)))
                .collect();
            inner.attempting += taken.len();
            taken
        };
        for (lease_id, u) in due {
            match self.provider.revoke(&lease_id).await {
                Ok(()) => {
                    tracing::info!(%lease_id, run_id = %u.run_id, attempts = u.attempts + 1, "revoked a lease on retry");
                    self.record(crate::audit::Event::LeaseRevoked {
                        run_id: &u.run_id,
                        lease_id: &lease_id,
                        attempts: Some(u.attempts + 1),
                    });
                    self.settled(Held::Attempting);
                }
                Err(e) => {
                    let backoff = (u.backoff * 2).min(RETRY_BACKOFF_MAX);
                    self.failed(
                        &u.run_id,
                        lease_id,
                        u.attempts + 1,
                        backoff,
                        &e.to_string(),
                        Held::Attempting,
                    );
                }
            }
        }
    }

    /// At shutdown: tries every unrevoked lease again, until none is left or
    /// `within` has passed. Returns the ids still unrevoked, each also
    /// logged as an error, so none is forgotten silently.
    pub async fn drain(self: &Arc<Self>, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut pause = self.first_backoff.max(Duration::from_millis(10));
        loop {
            self.attempt_due(true).await;
            let (queued, attempting) = {
                let inner = self.lock();
                (inner.queue.len(), inner.attempting)
            };
            if queued == 0 && attempting == 0 {
                return Vec::new();
            }
            if Instant::now() >= deadline {
                let left = self.unrevoked();
                for lease_id in &left {
                    tracing::error!(%lease_id, "host stopping with a lease it could not revoke; it expires at its TTL");
                }
                return left;
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(RETRY_BACKOFF_MAX);
        }
    }
}

/// The leases of one run. Call [`finish`](Self::finish) when the sandbox
/// ends; dropping it unfinished queues the leases for revocation instead.
#[derive(Debug)]
pub struct LeaseGuard {
    registry: Arc<LeaseRegistry>,
    run_id: String,
    leases: Vec<String>,
}

impl LeaseGuard {
    /// Holds `lease_id` until the run ends.
    pub fn add(&mut self, lease_id: String) {
        let mut inner = self.registry.lock();
        inner.live += 1;
        self.registry.publish(&inner);
        drop(inner);
        self.leases.push(lease_id);
    }

    /// The leases held.
    pub fn leases(&self) -> &[String] {
        &self.leases
    }

    /// Revokes every lease now; failures go to the retry queue.
    pub async fn finish(mut self) {
        let leases = std::mem::take(&mut self.leases);
        for lease_id in leases {
            self.registry.revoke_now(&self.run_id, lease_id).await;
        }
        self.registry.ensure_retrying();
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.leases.is_empty() {
            return;
        }
        for lease_id in std::mem::take(&mut self.leases) {
            tracing::info!(%lease_id, run_id = %self.run_id, "run ended without revoking its lease; queued");
            self.registry
                .enqueue(&self.run_id, lease_id, 0, Duration::ZERO, Held::Live);
        }
        self.registry.ensure_retrying();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::SecretGrant;
    use crate::secrets::{BoxFuture, Fetched, SecretError};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Revokes into a list, or fails while `down`.
    #[derive(Debug, Default)]
    struct Fake {
        down: AtomicBool,
        revoked: Mutex<Vec<String>>,
    }

    impl SecretProvider for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn read<'a>(
            &'a self,
            _: &'a SecretGrant,
            _: Duration,
        ) -> BoxFuture<'a, Result<Fetched, SecretError>> {
            unreachable!("leases never read")
        }
        fn revoke<'a>(&'a self, lease_id: &'a str) -> BoxFuture<'a, Result<(), SecretError>> {
            Box::pin(async move {
                if self.down.load(Ordering::SeqCst) {
                    return Err(SecretError::Unreachable {
                        addr: "fake".into(),
                        reason: "down".into(),
                    });
                }
                self.revoked.lock().unwrap().push(lease_id.to_string());
                Ok(())
            })
        }
    }

    fn registry() -> (Arc<Fake>, Arc<LeaseRegistry>) {
        let fake = Arc::new(Fake::default());
        let registry = LeaseRegistry::new(fake.clone(), None, Duration::from_millis(5));
        (fake, registry)
    }

    #[tokio::test]
    async fn finishing_a_guard_revokes_its_leases() {
        let (fake, registry) = registry();
        let mut guard = registry.guard("run1");
        guard.add("l1".into());
        guard.add("l2".into());
        assert_eq!(registry.pending(), 2);
        guard.finish().await;
        assert_eq!(*fake.revoked.lock().unwrap(), ["l1", "l2"]);
        assert_eq!(registry.pending(), 0);
    }

    #[tokio::test]
    async fn a_dropped_guard_queues_its_leases_and_drain_revokes_them() {
        let (fake, registry) = registry();
        let mut guard = registry.guard("run1");
        guard.add("l1".into());
        drop(guard);
        assert_eq!(registry.pending(), 1);
        assert!(registry.drain(Duration::from_secs(10)).await.is_empty());
        assert_eq!(*fake.revoked.lock().unwrap(), ["l1"]);
        assert_eq!(registry.pending(), 0);
    }

    #[tokio::test]
    async fn a_failed_revocation_is_retried_until_it_succeeds() {
        let (fake, registry) = registry();
        fake.down.store(true, Ordering::SeqCst);
        let mut guard = registry.guard("run1");
        guard.add("l1".into());
        guard.finish().await;
        assert_eq!(registry.unrevoked(), ["l1"]);
        fake.down.store(false, Ordering::SeqCst);
        assert!(registry.drain(Duration::from_secs(10)).await.is_empty());
        assert_eq!(*fake.revoked.lock().unwrap(), ["l1"]);
    }

    #[tokio::test]
    async fn drain_reports_what_it_could_not_revoke() {
        let (fake, registry) = registry();
        fake.down.store(true, Ordering::SeqCst);
        let mut guard = registry.guard("run1");
        guard.add("l1".into());
        guard.finish().await;
        assert_eq!(registry.drain(Duration::from_millis(50)).await, ["l1"]);
        assert_eq!(registry.pending(), 1, "never forgotten");
    }
}
