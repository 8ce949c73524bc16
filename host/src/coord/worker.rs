//! The per-host coordinator: validates and stores submitted runbooks, and
//! claims and runs ready steps in this host's sandboxes.
//!
//! One loop per host joins the claim store under a session lease, keeps it
//! alive, and on every change (or poll tick) scans the active runbooks:
//! steps whose dependencies completed are claimed while sandbox slots are
//! free; steps behind a failed dependency are marked skipped; runbooks
//! whose steps are all terminal are closed. Each claimed step runs as one
//! sandboxed module run and its result is written under its fence, retried
//! while the store is unreachable, dropped (and counted) if the fence no
//! longer holds, since then another host owns the step.
//!
//! When the store cannot be reached the loop stops claiming, lets running
//! steps finish, and reconnects with backoff; `coordinator_up` says so.
//! A running step is cancelled the moment this host's session lease lapses
//! by its own reckoning ([`super::lease`]): by then the store may have
//! handed the step to another host.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

use super::lease::LeaseClock;
use super::runbook::{RunbookError, RunbookFile, RunbookSpec};
use super::store::{
    Change, Claim, ClaimStore, CoordError, RunbookView, Session, StepOutcome, StepRecord, StepState,
};
use crate::audit::Event;
use crate::modules::ModuleError;
use crate::policy::{Policy, PolicySet};
use crate::sandbox::LimitsRequest;
use crate::telemetry::{
    CLAIM_DURATION, CLAIMS_TOTAL, COORDINATOR_UP, FENCE_REJECTIONS, RUNBOOK_STEPS_TOTAL,
    STEPS_ABANDONED,
};
use crate::{ErrorKind, Host, RunRequest};

/// Largest step output kept. Outputs live in the claim store, and etcd
/// refuses requests over 1.5 MiB by default; base64 and the record around
/// it must fit.
pub const MAX_STEP_OUTPUT: usize = 512 * 1024;

/// How a host takes part in coordination.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// This host's name in claims (unique per host).
    pub holder: String,
    /// Session lease TTL: how long a dead host's claims outlive it.
    pub claim_ttl: Duration,
    /// Steps this host runs at once.
    pub max_concurrent_steps: usize,
    /// Scan interval when nothing wakes the loop.
    pub poll_interval: Duration,
}

impl CoordinatorOptions {
    /// Options for `holder`: a 300 s claim TTL (a crashed host's steps wait
    /// that long), 64 steps at once, a 1 s poll.
    pub fn new(holder: impl Into<String>) -> Self {
        Self {
            holder: holder.into(),
            claim_ttl: Duration::from_secs(300),
            max_concurrent_steps: 64,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// The default holder name: `<hostname>-<pid>`.
pub fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "chassis".into());
    format!("{host}-{}", std::process::id())
}

/// Why a claimed step did not run, through no fault of its own; it is
/// handed back without counting an attempt.
#[derive(Debug, Error)]
enum NotRun {
    /// The claim store could not hand over the step's module.
    #[error("fetching the step's module: {0}")]
    Store(CoordError),
    /// Every compile slot stayed busy.
    #[error("compiling the step's module: {0}")]
    Compile(ModuleError),
}

/// Why a runbook submission was refused.
#[derive(Debug, Error)]
pub enum SubmitError {
    /// The runbook is invalid (the error names the step and field).
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    /// The claim store refused or could not be reached.
    #[error(transparent)]
    Store(#[from] CoordError),
    /// A module file could not be compiled now (every compile slot busy).
    #[error(transparent)]
    Module(#[from] ModuleError),
}

impl SubmitError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Runbook(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::Module(e) => e.kind(),
        }
    }
}

struct Inner {
    store: Arc<dyn ClaimStore>,
    host: Host,
    policies: Arc<PolicySet>,
    options: CoordinatorOptions,
    slots: Arc<Semaphore>,
    wake: Notify,
    up: AtomicBool,
    lease: LeaseClock,
    /// Steps whose claim request failed without an answer: the store may
    /// have granted the claim anyway. A claim under this host's name on
    /// one of them is handed back, or it would hold the step for as long
    /// as this host keeps its session alive.
    unanswered: std::sync::Mutex<BTreeSet<(String, String)>>,
}

/// A host's coordinator. Clones share one loop.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("store", &self.inner.store.backend())
            .field("holder", &self.inner.options.holder)
            .finish()
    }
}

/// The running loop; [`CoordinatorTask::stop`] drains it.
#[derive(Debug)]
pub struct CoordinatorTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CoordinatorTask {
    /// Stops claiming, waits up to `grace` for running steps to record
    /// their results, then leaves the store (dropping any claim left, so
    /// other hosts take those steps over at once).
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace + Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

impl Coordinator {
    /// A coordinator running steps on `host` with `policies`.
    pub fn new(
        store: Arc<dyn ClaimStore>,
        host: Host,
        policies: Arc<PolicySet>,
        options: CoordinatorOptions,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(options.max_concurrent_steps.max(1)));
        Self {
            inner: Arc::new(Inner {
                store,
                host,
                policies,
                options,
                slots,
                wake: Notify::new(),
                up: AtomicBool::new(true),
                lease: LeaseClock::new(),
                unanswered: std::sync::Mutex::default(),
            }),
        }
    }

    /// The host steps run on.
    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    /// The claim store.
    pub fn store(&self) -> &Arc<dyn ClaimStore> {
        &self.inner.store
    }

    /// This host's name in claims.
    pub fn holder(&self) -> &str {
        &self.inner.options.holder
    }

    /// Whether the store answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Validates runbook `text` (named `file` in errors), registers the
    /// module files it names from `modules` (reference as written ->
    /// bytes), and stores it for any host to run. Returns the runbook id
    /// and the revision to watch from.
    pub async fn submit(
        &self,
        text: &str,
        file: &str,
        modules: &BTreeMap<String, Vec<u8>>,
        caller: &str,
        id: Option<&str>,
    ) -> Result<(String, i64), SubmitError> {
        let parsed = RunbookFile::parse(text, file)?;
        let policy_check = |name: &str| match self.inner.policies.get(name) {
            None => Err(format!("no policy `{name}` on this host")),
            Some(p) if !p.allows_caller(caller) => Err(format!(
                "caller `{caller}` is not among the callers of policy `{name}`"
            )),
            Some(_) => Ok(()),
        };
        // Everything but the modules' contents is checked before any module
        // is compiled, so an invalid runbook costs no compile.
        parsed.resolve(
            caller,
            |reference| {
                if reference.starts_with("sha256:") || modules.contains_key(reference) {
                    Ok(String::new())
                } else {
                    Err(not_sent(reference))
                }
            },
            policy_check,
        )?;
        let mut to_store: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut known_in_store: BTreeMap<String, bool> = BTreeMap::new();
        // Module files are compiled off the async workers and in turn with
        // other compiles; the second pass below only looks the results up.
        let mut registered: BTreeMap<String, Result<String, String>> = BTreeMap::new();
        for reference in parsed.steps.values().map(|s| s.module.as_str()) {
            if let Some(id) = reference.strip_prefix("sha256:") {
                let known = self.inner.host.modules().get(id).is_some()
                    || self.inner.store.module(id).await?.is_some();
                known_in_store.insert(reference.to_string(), known);
            } else if let Some(bytes) = modules.get(reference)
                && !registered.contains_key(reference)
            {
                let result = match self
                    .inner
                    .host
                    .modules()
                    .register_for(bytes.clone(), caller)
                    .await
                {
                    Ok(module) => {
                        to_store.insert(module.id().to_string(), bytes.clone());
                        Ok(module.id().to_string())
                    }
                    Err(e @ ModuleError::Busy(_)) => return Err(e.into()),
                    Err(e) => Err(format!("`{reference}` is not a usable module: {e}")),
                };
                registered.insert(reference.to_string(), result);
            }
        }
        let spec = parsed.resolve(
            caller,
            |reference| {
                if let Some(id) = reference.strip_prefix("sha256:") {
                    return if known_in_store.get(reference).copied().unwrap_or(false) {
                        Ok(id.to_string())
                    } else {
                        Err(format!(
                            "no module {id} on this host or in the claim store; name its .wasm file instead"
                        ))
                    };
                }
                registered
                    .get(reference)
                    .cloned()
                    .unwrap_or_else(|| Err(not_sent(reference)))
            },
            policy_check,
        )?;
        let id = match id {
            Some(id) if !id.is_empty() => {
                if !valid_id(id) {
                    return Err(CoordError::Invalid(format!(
                        "runbook id `{id}` must be 1-128 characters of a-z, A-Z, 0-9, `-`, `_` and `.`"
                    ))
                    .into());
                }
                id.to_string()
            }
            _ => new_id(&spec.name),
        };
        let modules: Vec<(String, Vec<u8>)> = to_store.into_iter().collect();
        let mut spec = spec;
        spec.traceparent = crate::telemetry::traces::traceparent_of(&tracing::Span::current());
        let revision = tracing::Instrument::instrument(
            self.inner.store.submit(&id, &spec, &modules),
            tracing::info_span!("claim.submit", runbook = %id),
        )
        .await?;
        let _ = self.inner.host.audit_event(|| Event::RunbookSubmitted {
            runbook: &id,
            name: &spec.name,
            caller,
            steps: spec.steps.len(),
            revision,
        });
        tracing::info!(runbook = %id, name = %spec.name, steps = spec.steps.len(), "runbook submitted");
        self.inner.wake.notify_one();
        Ok((id, revision))
    }

    /// Starts the claim loop on the current runtime.
    pub fn start(&self) -> CoordinatorTask {
        let (stop, stop_rx) = watch::channel(false);
        let this = self.clone();
        let task = tokio::spawn(async move { this.run_loop(stop_rx).await });
        CoordinatorTask { stop, task }
    }

    fn set_up(&self, up: bool) {
        if self.inner.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(
                    store = self.inner.store.backend(),
                    "claim store reachable again"
                );
            } else {
                tracing::warn!(
                    store = self.inner.store.backend(),
                    "claim store unreachable: not claiming new steps"
                );
            }
        }
        metrics::gauge!(COORDINATOR_UP).set(if up { 1.0 } else { 0.0 });
    }

    async fn run_loop(self, mut stop: watch::Receiver<bool>) {
        let inner = &self.inner;
        let backoff_max = Duration::from_secs(5);
        let mut backoff = Duration::from_millis(100);
        let mut session: Option<Session> = None;
        let mut changes: Option<super::store::EventStream> = None;
        let mut last_renewal = Instant::now();
        let mut running: JoinSet<()> = JoinSet::new();
        let renew_every = (inner.options.claim_ttl / 3).max(Duration::from_millis(200));
        loop {
            if *stop.borrow() {
                break;
            }
            while running.try_join_next().is_some() {}
            let mut failed = false;
            if session.is_none() {
                let sent = tokio::time::Instant::now();
                match inner
                    .store
                    .join(&inner.options.holder, inner.options.claim_ttl)
                    .await
                {
                    Ok(s) => {
                        tracing::info!(holder = %s.holder, lease = s.lease, ttl_s = s.ttl.as_secs(), store = inner.store.backend(), "joined the claim store");
                        inner.lease.renewed(s.lease, sent, s.ttl);
                        session = Some(s);
                        last_renewal = Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "joining the claim store");
                        failed = true;
                    }
                }
            }
            if let Some(s) = &session
                && last_renewal.elapsed() >= renew_every
            {
                let sent = tokio::time::Instant::now();
                match inner.store.keep_alive(s).await {
                    Ok(()) => {
                        last_renewal = Instant::now();
                        inner.lease.renewed(s.lease, sent, s.ttl);
                    }
                    Err(CoordError::SessionLost(lease)) => {
                        tracing::warn!(
                            lease,
                            "session lease expired: claims on it are gone; joining again"
                        );
                        inner.lease.lost();
                        session = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the session lease");
                        failed = true;
                    }
                }
            }
            if !failed && changes.is_none() {
                match inner.store.changes().await {
                    Ok(c) => changes = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "watching the claim store");
                        failed = true;
                    }
                }
            }
            if !failed && let Some(s) = session.clone() {
                match self.scan(&s, &mut running).await {
                    Ok(()) => {}
                    Err(CoordError::SessionLost(_)) => {
                        inner.lease.lost();
                        session = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "scanning runbooks");
                        failed = true;
                    }
                }
            }
            self.set_up(!failed);
            let wait = if failed {
                changes = None;
                let wait = backoff;
                backoff = (backoff * 2).min(backoff_max);
                wait
            } else {
                backoff = Duration::from_millis(100);
                inner
                    .options
                    .poll_interval
                    .min(renew_every.saturating_sub(last_renewal.elapsed()))
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = inner.wake.notified() => {}
                _ = stop.changed() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                event = next_change(&mut changes) => {
                    if let Some(Err(e)) = event {
                        tracing::warn!(error = %e, "the claim store watch ended; re-watching");
                        changes = None;
                    }
                }
            }
        }
        // Draining: running steps record their results; nothing new starts.
        while running.join_next().await.is_some() {}
        if let Some(s) = &session
            && let Err(e) = inner.store.leave(s).await
        {
            tracing::warn!(error = %e, "leaving the claim store; claims end with the lease TTL");
        }
        inner.lease.lost();
    }

    /// One pass over the active runbooks.
    async fn scan(&self, session: &Session, running: &mut JoinSet<()>) -> Result<(), CoordError> {
        let inner = &self.inner;
        for id in inner.store.active().await? {
            let Some(view) = inner.store.runbook(&id).await? else {
                continue;
            };
            if view.steps.values().all(|s| s.state().is_terminal()) {
                inner.store.close(&id).await?;
                let state = view.state();
                let _ = inner.host.audit_event(|| Event::RunbookFinished {
                    runbook: &id,
                    state: state.as_str(),
                });
                tracing::info!(runbook = %id, state = state.as_str(), "runbook finished");
                continue;
            }
            let outputs = view.outputs();
            let order = view.spec.topological_order();
            // Hosts start at different points, so they contend less.
            let start = holder_offset(&inner.options.holder, order.len());
            for name in order[start..].iter().chain(order[..start].iter()) {
                let step_view = &view.steps[*name];
                self.hand_back_unanswered(&id, name, step_view).await?;
                if step_view.state() != StepState::Pending {
                    continue;
                }
                let spec = &view.spec.steps[*name];
                let blocked = spec.depends_on.iter().find(|d| {
                    let s = view.steps[d.as_str()].state();
                    s.is_terminal() && s != StepState::Completed
                });
                if let Some(dep) = blocked {
                    let record = StepRecord {
                        outcome: StepOutcome::Skipped {
                            because: dep.clone(),
                        },
                        host: String::new(),
                        fence: 0,
                        attempts: 0,
                        run_id: String::new(),
                    };
                    if inner.store.skip(&id, name, &record).await? {
                        metrics::counter!(RUNBOOK_STEPS_TOTAL, "state" => "skipped").increment(1);
                    }
                    continue;
                }
                if !spec
                    .depends_on
                    .iter()
                    .all(|d| view.steps[d.as_str()].state() == StepState::Completed)
                {
                    continue;
                }
                if inner.lease.remaining(session.lease) < session.ttl / 2 {
                    // Renewals are overdue: a step started now could outlive
                    // the lease. The loop renews (or rejoins) first.
                    return Ok(());
                }
                let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
                    return Ok(()); // every slot busy; the next wake-up continues
                };
                let started = Instant::now();
                let claim = tracing::Instrument::instrument(
                    inner
                        .store
                        .claim(session, &id, name, step_view.failures + 1),
                    tracing::info_span!("claim.acquire", runbook = %id, step = %name),
                )
                .await;
                metrics::histogram!(CLAIM_DURATION).record(started.elapsed().as_secs_f64());
                let claim = match claim {
                    Ok(Some(c)) => {
                        metrics::counter!(CLAIMS_TOTAL, "result" => "acquired").increment(1);
                        self.unanswered().remove(&(id.clone(), name.to_string()));
                        c
                    }
                    Ok(None) => {
                        metrics::counter!(CLAIMS_TOTAL, "result" => "contended").increment(1);
                        continue;
                    }
                    Err(e) => {
                        metrics::counter!(CLAIMS_TOTAL, "result" => "error").increment(1);
                        if !matches!(e, CoordError::SessionLost(_)) {
                            self.unanswered().insert((id.clone(), name.to_string()));
                        }
                        return Err(e);
                    }
                };
                let this = self.clone();
                let spec = view.spec.clone();
                let outputs = outputs.clone();
                let lease = session.lease;
                running.spawn(async move {
                    this.run_step(claim, lease, spec, outputs).await;
                    drop(permit);
                });
            }
        }
        Ok(())
    }

    fn unanswered(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, String)>> {
        self.inner
            .unanswered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A step whose claim went unanswered and that the store shows claimed
    /// under this host's name holds a claim nothing here runs (the store
    /// granted it and the answer was lost): release it without counting an
    /// attempt, so this host or another claims it again. Any other state
    /// means the question is settled.
    async fn hand_back_unanswered(
        &self,
        runbook: &str,
        step: &str,
        view: &super::store::StepView,
    ) -> Result<(), CoordError> {
        // Scanned for every step on every pass: nothing to look up (and no
        // key to build) unless some claim went unanswered.
        if self.unanswered().is_empty() {
            return Ok(());
        }
        let key = (runbook.to_string(), step.to_string());
        if !self.unanswered().contains(&key) {
            return Ok(());
        }
        let orphan = match (&view.result, &view.claim) {
            (None, Some(held)) if held.holder == self.inner.options.holder => Claim {
                runbook: key.0.clone(),
                step: key.1.clone(),
                holder: held.holder.clone(),
                fence: held.fence,
                attempt: held.attempt,
            },
            _ => {
                self.unanswered().remove(&key);
                return Ok(());
            }
        };
        match self.inner.store.release(&orphan, view.failures).await {
            Ok(()) | Err(CoordError::Fenced { .. }) => {
                tracing::warn!(
                    runbook,
                    step,
                    fence = orphan.fence,
                    "the store granted a claim whose answer was lost; handed the step back"
                );
                self.unanswered().remove(&key);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs one claimed step, held under session `lease`, and records what
    /// happened under its fence.
    async fn run_step(
        &self,
        claim: Claim,
        lease: i64,
        spec: RunbookSpec,
        outputs: BTreeMap<String, Vec<u8>>,
    ) {
        // The step joins the trace of the runbook's submission, whichever
        // host submitted it.
        let span = tracing::info_span!(
            "runbook.step",
            runbook = %claim.runbook,
            step = %claim.step,
            attempt = claim.attempt,
            fence = claim.fence,
            host = %claim.holder,
        );
        if let Some(traceparent) = &spec.traceparent {
            crate::telemetry::traces::continue_from_traceparent(&span, traceparent);
        }
        tracing::Instrument::instrument(self.run_step_traced(claim, lease, spec, outputs), span)
            .await
    }

    async fn run_step_traced(
        &self,
        claim: Claim,
        lease: i64,
        spec: RunbookSpec,
        outputs: BTreeMap<String, Vec<u8>>,
    ) {
        let inner = &self.inner;
        let step = &spec.steps[&claim.step];
        let _ = inner.host.audit_event(|| Event::StepClaimed {
            runbook: &claim.runbook,
            step: &claim.step,
            fence: claim.fence,
            attempt: claim.attempt,
            holder: &claim.holder,
        });
        tracing::info!(runbook = %claim.runbook, step = %claim.step, fence = claim.fence, attempt = claim.attempt, "step claimed");
        let ran = tokio::select! {
            // Checked first: a host resumed after a stop finds both ready,
            // and the lapsed lease must win over a result it may not keep.
            biased;
            () = inner.lease.lapsed(lease) => None,
            ran = self.execute(&spec, &claim.step, &outputs) => Some(ran),
        };
        let Some(ran) = ran else {
            // Dropping `execute` dropped the run: its sandbox is gone and the
            // host audited the run as `cancelled`.
            metrics::counter!(STEPS_ABANDONED).increment(1);
            tracing::warn!(runbook = %claim.runbook, step = %claim.step, fence = claim.fence, lease, "session lease lapsed mid-step: run cancelled, another host may hold the step now");
            let _ = inner.host.audit_event(|| Event::StepAbandoned {
                runbook: &claim.runbook,
                step: &claim.step,
                fence: claim.fence,
                attempt: claim.attempt,
                holder: &claim.holder,
                reason: "the session lease lapsed before the step finished",
            });
            // Hand it back uncounted; if another host claimed it meanwhile
            // the fence refuses this and `step.fenced` is audited.
            self.record(&claim, None, claim.attempt - 1).await;
            return;
        };
        let (outcome, run_id) = match ran {
            Ok(ran) => ran,
            Err(e) => {
                // The claim store or a full compile queue failed us, not the
                // step: hand the step back without counting an attempt.
                tracing::warn!(error = %e, runbook = %claim.runbook, step = %claim.step, "could not start the step; releasing it");
                self.record(&claim, None, claim.attempt - 1).await;
                return;
            }
        };
        // A step whose input cannot render fails the same way on every
        // host: record it rather than retry it.
        let renders = step.rendered_len(&outputs) <= super::runbook::MAX_STEP_INPUT as u128;
        let retry = matches!(outcome, StepOutcome::Failed { .. })
            && claim.attempt <= step.retries
            && renders;
        let record = StepRecord {
            outcome,
            host: claim.holder.clone(),
            fence: claim.fence,
            attempts: claim.attempt,
            run_id,
        };
        if retry {
            self.record(&claim, None, claim.attempt).await;
        } else {
            self.record(&claim, Some(&record), claim.attempt).await;
        }
    }

    /// Writes `record` (or, with `None`, releases the step with `failures`
    /// recorded), retrying while the store is unreachable.
    async fn record(&self, claim: &Claim, record: Option<&StepRecord>, failures: u32) {
        let inner = &self.inner;
        let retry = record.is_none();
        let state = match record {
            Some(r) => r.outcome.state().as_str(),
            None if failures == claim.attempt => "retried",
            None => "released",
        };
        let run_id = record.map(|r| r.run_id.clone()).unwrap_or_default();
        let mut backoff = Duration::from_millis(50);
        loop {
            let span = tracing::info_span!(
                "claim.record",
                runbook = %claim.runbook,
                step = %claim.step,
                fence = claim.fence,
                state
            );
            let written = match record {
                None => {
                    tracing::Instrument::instrument(inner.store.release(claim, failures), span)
                        .await
                }
                Some(record) => {
                    tracing::Instrument::instrument(inner.store.finish(claim, record), span).await
                }
            };
            match written {
                Ok(()) => {
                    if state != "released" {
                        metrics::counter!(RUNBOOK_STEPS_TOTAL, "state" => state).increment(1);
                    }
                    let _ = inner.host.audit_event(|| {
                        let error = match record.map(|r| &r.outcome) {
                            Some(StepOutcome::Failed { error, .. }) => Some(error.clone()),
                            _ => None,
                        };
                        let (runbook, step, fence, attempt) =
                            (&claim.runbook, &claim.step, claim.fence, claim.attempt);
                        if retry {
                            Event::StepRetrying {
                                runbook,
                                step,
                                fence,
                                attempt,
                                state,
                                run_id: &run_id,
                                error,
                            }
                        } else {
                            Event::StepFinished {
                                runbook,
                                step,
                                fence,
                                attempt,
                                state,
                                run_id: &run_id,
                                error,
                            }
                        }
                    });
                    tracing::info!(runbook = %claim.runbook, step = %claim.step, fence = claim.fence, state, "step recorded");
                    break;
                }
                Err(e @ CoordError::Fenced { .. }) => {
                    metrics::counter!(FENCE_REJECTIONS).increment(1);
                    let _ = inner.host.audit_event(|| Event::StepFenced {
                        runbook: &claim.runbook,
                        step: &claim.step,
                        fence: claim.fence,
                        attempt: claim.attempt,
                        run_id: &run_id,
                    });
                    tracing::warn!(error = %e, "step result dropped: another host owns the step now");
                    break;
                }
                Err(
                    e @ (CoordError::Invalid(_)
                    | CoordError::Corrupt { .. }
                    | CoordError::NotFound(_)),
                ) => {
                    // Retrying cannot help. Record the step as failed with
                    // the reason, so the runbook ends rather than stalls.
                    tracing::error!(error = %e, runbook = %claim.runbook, step = %claim.step, "the claim store refused the step's result");
                    match record {
                        Some(r) if r.outcome.state() != StepState::Failed => {
                            let failed = StepRecord {
                                outcome: StepOutcome::Failed {
                                    kind: ErrorKind::Internal,
                                    error: format!(
                                        "the claim store refused the step's result: {e}"
                                    ),
                                },
                                ..r.clone()
                            };
                            return Box::pin(self.record(claim, Some(&failed), failures)).await;
                        }
                        _ => break,
                    }
                }
                Err(e) => {
                    // The store is unreachable: keep the result until it
                    // answers; if our lease lapses meanwhile, the fence
                    // will refuse the write and the step runs elsewhere.
                    tracing::warn!(error = %e, runbook = %claim.runbook, step = %claim.step, "recording a step result; retrying");
                    self.set_up(false);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        inner.wake.notify_one();
    }

    /// Runs a step's module. A failing step is an outcome; only the claim
    /// store failing to hand over the module, or no compile slot, is an
    /// error.
    async fn execute(
        &self,
        spec: &RunbookSpec,
        name: &str,
        outputs: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(StepOutcome, String), NotRun> {
        let inner = &self.inner;
        let step = &spec.steps[name];
        let failed = |kind: ErrorKind, error: String| StepOutcome::Failed { kind, error };
        let module = match inner.host.modules().get(&step.module) {
            Some(m) => m,
            None => match inner.store.module(&step.module).await {
                Ok(Some(bytes)) => {
                    match inner.host.modules().register_for(bytes, &spec.caller).await {
                        Ok(m) if m.id() == step.module => m,
                        Ok(m) => {
                            return Ok((
                                failed(
                                    ErrorKind::InvalidModule,
                                    format!("stored module {} hashes to {}", step.module, m.id()),
                                ),
                                String::new(),
                            ));
                        }
                        Err(e @ ModuleError::Busy(_)) => return Err(NotRun::Compile(e)),
                        Err(e) => return Ok((failed(e.kind(), e.to_string()), String::new())),
                    }
                }
                Ok(None) => {
                    return Ok((
                        failed(
                            ErrorKind::InvalidModule,
                            format!(
                                "module {} is neither on this host nor in the claim store",
                                step.module
                            ),
                        ),
                        String::new(),
                    ));
                }
                Err(e) => return Err(NotRun::Store(e)),
            },
        };
        let policy = match &step.policy {
            None => Arc::new(Policy::deny_all()),
            Some(p) => match inner.policies.get(p) {
                Some(p) => p,
                None => {
                    return Ok((
                        failed(
                            ErrorKind::PolicyDenied,
                            format!("no policy `{p}` on host {}", inner.options.holder),
                        ),
                        String::new(),
                    ));
                }
            },
        };
        let input = match step.render_input(outputs) {
            Ok(input) => input,
            Err(e) => {
                crate::telemetry::record_refused(crate::telemetry::Refusal::InputTooLarge);
                return Ok((
                    failed(ErrorKind::InvalidRequest, e.to_string()),
                    String::new(),
                ));
            }
        };
        let request = RunRequest::under(input, policy)
            .caller(spec.caller.clone())
            .limits(LimitsRequest {
                timeout: step.timeout(),
                ..LimitsRequest::default()
            });
        Ok(match inner.host.run(&module, request).await {
            Ok(report) => {
                let run_id = report.run_id.clone();
                match report.result {
                    Ok(output) if output.len() > MAX_STEP_OUTPUT => (
                        failed(
                            ErrorKind::OutputLimit,
                            format!(
                                "the step's output is {} bytes; runbook steps may pass on at most {MAX_STEP_OUTPUT}",
                                output.len()
                            ),
                        ),
                        run_id,
                    ),
                    Ok(output) => (StepOutcome::Completed { output }, run_id),
                    Err(e) => (failed(e.kind(), e.to_string()), run_id),
                }
            }
            Err(e) => (failed(e.kind(), e.to_string()), String::new()),
        })
    }
}

async fn next_change(
    changes: &mut Option<super::store::EventStream>,
) -> Option<Result<super::store::StepEvent, CoordError>> {
    match changes {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Why a runbook's module file reference cannot be resolved.
fn not_sent(reference: &str) -> String {
    format!("module file `{reference}` was not sent with the runbook")
}

fn holder_offset(holder: &str, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let h = holder.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % len as u64) as usize
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `<name>-<12 random hex>`.
fn new_id(name: &str) -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::fill(&mut bytes);
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    format!("{name}-{}", hex::encode(bytes))
}

/// Waits until runbook `id` is closed (every step terminal) and returns
/// its final view. Watches for changes and re-reads on each; rides out the
/// store being briefly unreachable (bound it with a timeout).
pub async fn wait_closed(store: &dyn ClaimStore, id: &str) -> Result<RunbookView, CoordError> {
    loop {
        let view = match store.runbook(id).await {
            Ok(Some(v)) => v,
            Ok(None) => return Err(CoordError::NotFound(id.to_string())),
            Err(CoordError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if view.closed {
            return Ok(view);
        }
        let mut events = match store.watch(id, view.revision + 1).await {
            Ok(events) => events,
            Err(CoordError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        loop {
            match tokio::time::timeout(Duration::from_secs(1), events.next()).await {
                Ok(Some(Ok(e))) if e.change == Change::Closed => break,
                Ok(Some(Ok(_))) => continue,
                // A stream error or a quiet second: read the state again.
                Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            }
        }
    }
}
