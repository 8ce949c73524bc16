//! A chassis host: the engine, the module store and the runner, with the
//! host's caps applied to every run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use smallvec::SmallVec;
use thiserror::Error;

use crate::audit::{
    AuditError, AuditLog, ContextCache, Event, RunContext, RunId, RunOutcome, RunUsage,
};
use crate::disk::FreeSpaceFloor;
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::error::ErrorKind;
use crate::modules::{Module, ModuleError, ModuleStore};
use crate::policy::Policy;
use crate::sandbox::{
    Denial, DenialLog, HostCaps, Limits, LimitsError, LimitsRequest, LinkerError, RunReport,
    Runner, Tap,
};
use crate::secrets::{Granted, LeaseGuard, LeaseRegistry, SecretError, SecretProvider};

/// First wait before retrying a lease revocation that failed.
const LEASE_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a host could not start.
#[derive(Debug, Error)]
pub enum HostError {
    /// The engine could not be created.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The linker could not be built.
    #[error(transparent)]
    Linker(#[from] LinkerError),
    /// The module store could not be opened.
    #[error("opening the module store: {0}")]
    Modules(#[from] ModuleError),
    /// A fuel cap on a host that meters no fuel: it could never be kept.
    #[error(
        "a fuel cap of {cap} was set on a host that meters no fuel (runtime.metering = \"epoch\"): remove the cap or meter \"fuel\""
    )]
    FuelCapNotMetered {
        /// The cap.
        cap: u64,
    },
}

impl HostError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// Builds a [`Host`]; the defaults are production caps (`HostCaps`) with
/// an in-memory module store.
#[derive(Debug, Clone)]
pub struct HostBuilder {
    caps: HostCaps,
    engine: EngineConfig,
    data_dir: Option<PathBuf>,
    slo_target: std::time::Duration,
    max_module_bytes: u64,
    audit: Option<Arc<AuditLog>>,
    secrets: Option<Arc<dyn SecretProvider>>,
    lease_retry_backoff: std::time::Duration,
    resolver: Option<Arc<dyn crate::sandbox::NameResolver>>,
    audit_floor: Option<Arc<FreeSpaceFloor>>,
    compile_limits: Option<crate::modules::CompileLimits>,
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self {
            caps: HostCaps::default(),
            engine: EngineConfig::default(),
            data_dir: None,
            slo_target: std::time::Duration::from_millis(10),
            max_module_bytes: crate::modules::DEFAULT_MAX_MODULE_BYTES,
            audit: None,
            secrets: None,
            lease_retry_backoff: LEASE_RETRY_BACKOFF,
            resolver: None,
            audit_floor: None,
            compile_limits: None,
        }
    }
}

impl HostBuilder {
    /// The caps every run is held within (`runtime:` in the config).
    pub fn caps(mut self, caps: HostCaps) -> Self {
        self.caps = caps;
        self
    }

    /// How many sandboxes can be live at once (`sandbox_pool.max_size`).
    pub fn pool_slots(mut self, slots: u32) -> Self {
        self.engine = self.engine.with_pool_slots(slots);
        self
    }

    /// How many freed sandbox slots stay warm (`sandbox_pool.min_size`).
    pub fn warm_slots(mut self, slots: u32) -> Self {
        self.engine = self.engine.with_warm_slots(slots);
        self
    }

    /// How much of a freed slot's memory stays resident for the next run
    /// (`sandbox_pool.keep_resident_kib`; see
    /// [`crate::engine::DEFAULT_KEEP_RESIDENT`]).
    pub fn keep_resident(mut self, bytes: u64) -> Self {
        self.engine = self.engine.with_keep_resident(bytes);
        self
    }

    /// Runs slower than this count as SLO violations (`slo.target_latency_p95_ms`).
    pub fn slo_target(mut self, target: std::time::Duration) -> Self {
        self.slo_target = target;
        self
    }

    /// Largest `.wasm` the module store accepts.
    pub fn max_module_bytes(mut self, bytes: u64) -> Self {
        self.max_module_bytes = bytes;
        self
    }

    /// Record every run in `audit` (run started/ended, capability denied).
    pub fn audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Refuse audit records (and so runs) while the audit log's filesystem
    /// is below `floor` (`audit.min_free_mb`), before it fills up.
    pub fn audit_floor(mut self, floor: FreeSpaceFloor) -> Self {
        self.audit_floor = Some(Arc::new(floor));
        self
    }

    /// Read the secrets policies grant from `provider`. Without one, a run
    /// whose policy grants any secret is refused (UNAVAILABLE).
    pub fn secrets(mut self, provider: Arc<dyn SecretProvider>) -> Self {
        self.secrets = Some(provider);
        self
    }

    /// First wait before retrying a lease revocation that failed (doubling
    /// up to [`RETRY_BACKOFF_MAX`](crate::secrets::RETRY_BACKOFF_MAX)).
    pub fn lease_retry_backoff(mut self, first: std::time::Duration) -> Self {
        self.lease_retry_backoff = first;
        self
    }

    /// Resolve the host names policies list with `resolver` instead of the
    /// system resolver. Guests never reach it with an unlisted name.
    pub fn name_resolver(mut self, resolver: Arc<dyn crate::sandbox::NameResolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Bound compiles for remote callers
    /// ([`ModuleStore::register_for`](crate::modules::ModuleStore::register_for))
    /// to `limits`, on compile threads of their own, as a server must; by
    /// default a compile spreads over every core.
    pub fn compile_limits(mut self, limits: crate::modules::CompileLimits) -> Self {
        self.compile_limits = Some(limits);
        self
    }

    /// Keep compiled artifacts and keys under `dir` instead of in memory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Starts the host.
    pub fn build(self) -> Result<Host, HostError> {
        if self.caps.metering == crate::limits::Metering::Epoch
            && let Some(cap) = self.caps.max_fuel
        {
            return Err(HostError::FuelCapNotMetered { cap });
        }
        let engine = Engine::new(
            self.engine
                .with_max_memory_bytes(self.caps.max_memory_bytes)
                .with_metering(self.caps.metering),
        )?;
        let mut runner = Runner::new(engine.clone())?;
        if let Some(resolver) = self.resolver {
            runner = runner.with_name_resolver(resolver);
        }
        let mut modules = match &self.data_dir {
            Some(dir) => ModuleStore::open(engine, runner.preparer(), dir)?,
            None => ModuleStore::in_memory(engine, runner.preparer())?,
        };
        if let Some(limits) = self.compile_limits {
            modules = modules.with_compile_limits(limits)?;
        }
        let leases = self.secrets.as_ref().map(|provider| {
            LeaseRegistry::new(
                provider.clone(),
                self.audit.clone(),
                self.lease_retry_backoff,
            )
        });
        Ok(Host {
            caps: self.caps,
            runner,
            modules: Arc::new(modules.with_max_module_bytes(self.max_module_bytes)),
            slo_target_us: self.slo_target.as_micros() as u64,
            audit: self.audit,
            audit_floor: self.audit_floor,
            secrets: self.secrets,
            leases,
            interrupting: Arc::new(AtomicBool::new(false)),
            contexts: Arc::default(),
        })
    }
}

/// A running chassis host.
#[derive(Debug, Clone)]
pub struct Host {
    caps: HostCaps,
    runner: Runner,
    modules: Arc<ModuleStore>,
    slo_target_us: u64,
    audit: Option<Arc<AuditLog>>,
    audit_floor: Option<Arc<FreeSpaceFloor>>,
    secrets: Option<Arc<dyn SecretProvider>>,
    leases: Option<Arc<LeaseRegistry>>,
    interrupting: Arc<AtomicBool>,
    contexts: Arc<ContextCache<ContextKey>>,
}

/// What a run context is made of: module (which fixes the world), policy
/// name and digest, caller and limits.
///
/// Every run compares its own against the cached keys, so a key keeps its
/// text inline (heap only past the inline size): the strings of a key on
/// the heap were out of cache by the next run, and their compare was ~2.5%
/// of a worker's samples.
#[derive(Debug)]
struct ContextKey {
    /// [`Module::serial`]: which fixes the module's id and world.
    module: u64,
    limits: Limits,
    /// The policy the key was built for: a run of the same `Arc` matches
    /// without reading the policy's text, whose bytes may share a cache
    /// line with the `Arc`'s count, which every run's clone writes. Weak,
    /// so the key keeps no policy alive, and its address is never reused
    /// while the key holds it.
    policy_ref: std::sync::Weak<Policy>,
    policy: SmallVec<[u8; 24]>,
    /// Hex sha256, or empty.
    policy_sha256: SmallVec<[u8; 64]>,
    caller: SmallVec<[u8; 32]>,
}

/// Outcome audited for a run whose future was dropped before it finished.
const OUTCOME_CANCELLED: &str = "cancelled";
/// Outcome audited for a run dropped by the shutdown's interrupt.
const OUTCOME_INTERRUPTED: &str = "interrupted";

/// Writes a run's `capability.denied` records and its one `run.ended`,
/// whichever way the run ends: when [`Host::run`] returns, or, from `Drop`,
/// when its future is dropped mid-flight (a caller hanging up, a shutdown
/// interrupt), as `cancelled` or `interrupted` with the denials so far.
struct RunEnd<'a> {
    host: &'a Host,
    run_id: &'a str,
    /// The run's id as the log's messages carry it; `None` when the host
    /// keeps no audit log.
    audit_id: Option<RunId>,
    /// The run's context while its start is not yet sent: a run that
    /// never waits and about which nothing else is recorded sends its
    /// start with its end, one queue message instead of two (see
    /// [`RunEnd::start`]).
    start: Option<RunContext>,
    denials: DenialLog,
    ended: bool,
}

impl RunEnd<'_> {
    /// Audits the end of the run with `fields` (outcome, error, usage,
    /// denials).
    /// Neither the free-space floor nor the log's health is asked: they
    /// refuse new runs, never the end of one admitted, which would leave a
    /// half run.
    fn end(&mut self, outcome: impl FnOnce() -> RunOutcome) -> Result<(), AuditError> {
        match (&self.host.audit, self.audit_id) {
            (Some(log), Some(id)) => match self.start.take() {
                Some(context) => log.run_completed(id, context, outcome()),
                None => log.run_ended(id, outcome()),
            },
            _ => Ok(()),
        }
    }

    /// Sends the run's start if it is not sent yet: before any other
    /// record of the run (a secret's, a denial), and as soon as the run
    /// first waits (so a run in flight is on record within one batch of
    /// its first wait, and a run that never waits ends within its first
    /// poll). Never refused: the run was admitted.
    fn start(&mut self) -> Result<(), AuditError> {
        match (&self.host.audit, self.audit_id, self.start.take()) {
            (Some(log), Some(id), Some(context)) => log.run_started_admitted(id, context),
            _ => Ok(()),
        }
    }

    /// Audits the end of a run that did not reach the sandbox.
    fn refused(&mut self, error: &StartError) -> Result<(), AuditError> {
        self.ended = true;
        self.end(|| RunOutcome {
            error: Some(error.to_string()),
            ..RunOutcome::new(error.kind().as_str())
        })
    }

    /// Audits one denial of the run. Like its end, never refused by the
    /// free-space floor or the log's health: the run was admitted.
    fn deny(&self, denial: &Denial) -> Result<(), AuditError> {
        match &self.host.audit {
            Some(log) => log.run_event(Event::CapabilityDenied {
                run_id: self.run_id,
                kind: denial.kind.as_str(),
                target: &denial.target,
                reason: &denial.reason,
            }),
            None => Ok(()),
        }
    }

    /// Audits the denials and end of a run that finished: all of them are
    /// sent whatever one meets, and the first error is returned.
    fn finished(&mut self, report: &RunReport) -> Result<(), AuditError> {
        self.ended = true;
        let mut denied = match report.denials.is_empty() {
            true => Ok(()),
            false => self.start(),
        };
        for denial in &report.denials {
            let sent = self.deny(denial);
            if denied.is_ok() {
                denied = sent;
            }
        }
        let ended = self.end(|| {
            let denials = report.denials.len() as u64 + report.denials_dropped;
            RunOutcome {
                outcome: report.outcome_name().into(),
                error: report.result.as_ref().err().map(|e| e.to_string()),
                usage: Some(audit_usage(&report.usage)),
                denials: (denials > 0).then_some(denials),
            }
        });
        denied.and(ended)
    }
}

/// A run's context as the audit log keeps it, serialised straight from
/// borrowed fields (one allocation per run), keys in order.
#[derive(serde::Serialize)]
struct ContextFields<'a> {
    caller: &'a str,
    limits: &'a Limits,
    module: &'a str,
    policy: &'a str,
    policy_sha256: &'a str,
    world: crate::modules::World,
}

/// A run's usage as the audit log keeps it.
fn audit_usage(usage: &crate::sandbox::Usage) -> RunUsage {
    RunUsage {
        fuel: usage.fuel_consumed,
        mem: usage.peak_memory_bytes,
        wall_us: usage.wall_time_us,
        cpu_us: usage.cpu_time_us,
    }
}

impl Drop for RunEnd<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let outcome = if self.host.interrupting.load(Ordering::Relaxed) {
            OUTCOME_INTERRUPTED
        } else {
            OUTCOME_CANCELLED
        };
        let (denials, dropped) = self.denials.take();
        if !denials.is_empty() {
            let _ = self.start();
        }
        for denial in &denials {
            let _ = self.deny(denial);
        }
        tracing::info!(
            run_id = self.run_id,
            outcome,
            "run dropped before it finished"
        );
        let _ = self.end(|| RunOutcome {
            error: Some("the run was dropped before it finished".into()),
            denials: Some(denials.len() as u64 + dropped),
            ..RunOutcome::new(outcome)
        });
    }
}

/// Why a run could not even start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The request asked for more than the policy or host allows.
    #[error("invalid limits under policy `{policy}`: {source}")]
    Limits {
        /// The policy in force.
        policy: String,
        /// Which limit.
        #[source]
        source: LimitsError,
    },
    /// The audit log cannot record the run, so it is refused (fail closed).
    #[error("refusing the run: {0}")]
    Audit(#[from] AuditError),
    /// The policy does not allow this module or this caller.
    #[error("policy `{policy}` denies this run: {reason}")]
    Denied {
        /// The policy in force.
        policy: String,
        /// Why.
        reason: String,
    },
    /// A secret the policy grants could not be read, so the sandbox was
    /// not started (fail closed).
    #[error("policy `{policy}` grants secret `{name}`, which could not be read: {source}")]
    Secret {
        /// The policy in force.
        policy: String,
        /// The grant's name.
        name: String,
        /// Why; names the Vault address or the path, never a value.
        #[source]
        source: Box<SecretError>,
    },
}

impl StartError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StartError::Limits { .. } => ErrorKind::InvalidRequest,
            StartError::Denied { .. } => ErrorKind::PolicyDenied,
            StartError::Audit(e) => e.kind(),
            StartError::Secret { source, .. } => source.kind(),
        }
    }
}

/// One run to perform: the input, the policy it runs under, who asked, and
/// any limits tighter than the policy's.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The input bytes.
    pub input: Vec<u8>,
    /// The capability policy.
    pub policy: Arc<Policy>,
    /// The caller's identity (`local` for the CLI and loopback).
    pub caller: String,
    /// Limits tighter than the policy's.
    pub limits: LimitsRequest,
    /// Receives guest logs and output live, for streaming callers.
    pub tap: Option<Tap>,
}

impl RunRequest {
    /// A local run of `input` under the deny-all policy and host limits.
    ///
    /// Every such request shares one deny-all `Arc`: no policy is built
    /// per run, and the audit log's context cache knows it by its address
    /// instead of comparing its name and digest on every run.
    pub fn new(input: impl Into<Vec<u8>>) -> Self {
        static DENY_ALL: std::sync::LazyLock<Arc<Policy>> =
            std::sync::LazyLock::new(|| Arc::new(Policy::deny_all()));
        Self::under(input, DENY_ALL.clone())
    }

    /// A local run of `input` under `policy` and host limits: for callers
    /// that always name a policy (the gRPC service, the coordinator), so
    /// the request never touches the shared deny-all `Arc` of
    /// [`RunRequest::new`], whose count every core would otherwise write.
    pub fn under(input: impl Into<Vec<u8>>, policy: Arc<Policy>) -> Self {
        Self {
            input: input.into(),
            policy,
            caller: crate::policy::LOCAL_CALLER.into(),
            limits: LimitsRequest::default(),
            tap: None,
        }
    }

    /// Streams guest logs and output to `tap` while the run goes.
    pub fn tap(mut self, tap: Tap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Runs under `policy`.
    pub fn policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// Tightens the limits further.
    pub fn limits(mut self, limits: LimitsRequest) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the caller identity.
    pub fn caller(mut self, caller: impl Into<String>) -> Self {
        self.caller = caller.into();
        self
    }
}

impl Host {
    /// A builder with safe defaults.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The module store.
    pub fn modules(&self) -> &Arc<ModuleStore> {
        &self.modules
    }

    /// The host caps.
    pub fn caps(&self) -> &HostCaps {
        &self.caps
    }

    /// The runner.
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// The audit log, if this host keeps one.
    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    /// The free-space floor under the audit log, if one is set.
    pub fn audit_floor(&self) -> Option<&FreeSpaceFloor> {
        self.audit_floor.as_deref()
    }

    /// The secret provider, if this host has one.
    pub fn secrets(&self) -> Option<&Arc<dyn SecretProvider>> {
        self.secrets.as_ref()
    }

    /// The leases of dynamic secrets not yet revoked, if this host has a
    /// secret provider.
    pub fn leases(&self) -> Option<&Arc<LeaseRegistry>> {
        self.leases.as_ref()
    }

    /// At shutdown: revokes every lease still unrevoked, trying for at most
    /// `within`. Returns the ids it could not revoke (also logged).
    pub async fn drain_leases(&self, within: std::time::Duration) -> Vec<String> {
        match &self.leases {
            Some(leases) => leases.drain(within).await,
            None => Vec::new(),
        }
    }

    /// Reads every secret `request`'s policy grants, before the sandbox
    /// starts. The first that cannot be read refuses the run, after
    /// revoking the leases already taken.
    async fn resolve_secrets(
        &self,
        run_id: &str,
        request: &RunRequest,
        limits: &Limits,
    ) -> Result<(Granted, Option<LeaseGuard>), StartError> {
        let policy = &request.policy;
        let Some((first, _)) = policy.secrets.iter().next() else {
            return Ok((Granted::none(), None));
        };
        let refuse = |name: &str, source: SecretError| StartError::Secret {
            policy: policy.name.clone(),
            name: name.to_string(),
            source: Box::new(source),
        };
        let (Some(provider), Some(leases)) = (&self.secrets, &self.leases) else {
            crate::telemetry::record_secret_read("error");
            return Err(refuse(
                first,
                SecretError::Config {
                    message: "this host has no secret provider configured \
                              (credentials.vault_addr, or a local secrets file)"
                        .into(),
                },
            ));
        };
        let mut guard = leases.guard(run_id);
        let mut fetched = Vec::with_capacity(policy.secrets.len());
        for (name, grant) in &policy.secrets {
            // A span per read names the secret and its path, never its value.
            let read = tracing::Instrument::instrument(
                provider.read(grant, limits.timeout),
                tracing::info_span!("secret.read", secret = %name, path = %grant.path),
            );
            match read.await {
                Ok(f) => {
                    crate::telemetry::record_secret_read("granted");
                    if let Some(lease) = &f.lease {
                        guard.add(lease.id.clone());
                    }
                    fetched.push((name.clone(), f));
                }
                Err(e) => {
                    crate::telemetry::record_secret_read(e.metric_result());
                    tracing::warn!(run_id, secret = %name, path = %grant.path, error = %e, "a granted secret could not be read; the run is refused");
                    let audited = self.audit_event(|| Event::SecretReadFailed {
                        run_id,
                        name,
                        path: &grant.path,
                        error: e.to_string(),
                    });
                    guard.finish().await;
                    audited?;
                    return Err(refuse(name, e));
                }
            }
        }
        for (name, f) in &fetched {
            let path = &policy.secrets[name].path;
            let lease_id = f.lease.as_ref().map(|l| l.id.as_str());
            if let Err(e) = self.audit_event(|| Event::SecretGranted {
                run_id,
                name,
                path,
                lease_id,
            }) {
                guard.finish().await;
                return Err(e.into());
            }
        }
        Ok((Granted::new(fetched), Some(guard)))
    }

    /// Appends an event to the audit log, if there is one. `event` is only
    /// built when there is a log, so hosts without one pay nothing per run.
    /// Below the free-space floor the event is refused ([`AuditError::LowDisk`]):
    /// every audit write of the host passes here but the start (checked in
    /// [`Host::run`]) and the denials and end of a run already admitted,
    /// which are never refused (see `RunEnd`).
    pub fn audit_event<'a>(
        &self,
        event: impl FnOnce() -> crate::audit::Event<'a>,
    ) -> Result<(), AuditError> {
        match self.audit_ready()? {
            Some(log) => log.event(event()),
            None => Ok(()),
        }
    }

    /// The audit log, once the free-space floor admits a record; `None`
    /// when this host keeps no log.
    fn audit_ready(&self) -> Result<Option<&Arc<AuditLog>>, AuditError> {
        if self.audit.is_some()
            && let Some(floor) = &self.audit_floor
        {
            floor.check()?;
        }
        Ok(self.audit.as_ref())
    }

    /// From now on, runs dropped mid-flight are audited as `interrupted`
    /// (the shutdown's grace period ended), not `cancelled`.
    pub fn interrupting_runs(&self) {
        self.interrupting.store(true, Ordering::Relaxed);
    }

    /// The limits a run of `request` would get.
    pub fn limits_for(&self, request: &RunRequest) -> Result<Limits, StartError> {
        Limits::resolve(
            &self.caps,
            &request.policy.limits_request(),
            &request.limits,
        )
        .map_err(|source| StartError::Limits {
            policy: request.policy.name.clone(),
            source,
        })
    }

    /// Checks the policy admits this module and caller, resolves the limits,
    /// and runs `module`.
    pub async fn run(&self, module: &Module, request: RunRequest) -> Result<RunReport, StartError> {
        let policy = &request.policy;
        if !policy.allows_caller(&request.caller) {
            return Err(StartError::Denied {
                policy: policy.name.clone(),
                reason: format!("caller `{}` is not among its callers", request.caller),
            });
        }
        if !policy.allows_module(module.id()) {
            return Err(StartError::Denied {
                policy: policy.name.clone(),
                reason: format!("module {} is not pinned by it", module.id()),
            });
        }
        let limits = self.limits_for(&request)?;
        let id = new_run_id();
        let run_id = id.to_string();
        // What every record of this run shares, written once per log file
        // and referenced by number (see `audit::context`).
        let context = self.audit.as_ref().map(|_| {
            self.contexts.get_or_build(
                |k| {
                    k.module == module.serial()
                        && k.limits == limits
                        && k.caller[..] == *request.caller.as_bytes()
                        && (std::ptr::eq(k.policy_ref.as_ptr(), Arc::as_ptr(policy))
                            || (k.policy[..] == *policy.name.as_bytes()
                                && k.policy_sha256[..] == *policy.sha256.as_bytes()))
                },
                || {
                    let context = RunContext::new(&ContextFields {
                        caller: &request.caller,
                        limits: &limits,
                        module: module.id(),
                        policy: &policy.name,
                        policy_sha256: &policy.sha256,
                        world: module.world(),
                    });
                    let key = ContextKey {
                        module: module.serial(),
                        limits: limits.clone(),
                        policy_ref: Arc::downgrade(policy),
                        policy: SmallVec::from_slice(policy.name.as_bytes()),
                        policy_sha256: SmallVec::from_slice(policy.sha256.as_bytes()),
                        caller: SmallVec::from_slice(request.caller.as_bytes()),
                    };
                    (key, context)
                },
            )
        });
        let audit_id = context.as_ref().map(|_| id);
        let start = match (self.audit_ready()?, context) {
            (Some(log), Some(context)) if log.holds_starts() => {
                log.admit_run()?;
                Some(context)
            }
            (Some(log), Some(context)) => {
                log.run_started(id, context)?;
                None
            }
            _ => None,
        };
        // From here on, exactly one end is recorded, even if this future is
        // dropped before the run finishes.
        let mut end = RunEnd {
            host: self,
            run_id: &run_id,
            audit_id,
            start,
            // Replaced once the secrets are read, by one that redacts them.
            denials: self.runner.denial_log(Default::default()).for_run(id),
            ended: false,
        };
        if !request.policy.secrets.is_empty() {
            // Its secrets' records name the run, so they follow its start.
            end.start()?;
        }
        let (granted, leases) = match self.resolve_secrets(&run_id, &request, &limits).await {
            Ok(resolved) => resolved,
            Err(e) => {
                // run.started is on record, so the refusal is too.
                let _ = end.refused(&e);
                return Err(e);
            }
        };
        end.denials = self
            .runner
            .denial_log(granted.redactor().clone())
            .for_run(id);
        let span = tracing::info_span!(
            crate::telemetry::traces::RUN_SPAN,
            run_id = %run_id,
            module = %module.id(),
            policy = %policy.name,
            caller = %request.caller,
            outcome = tracing::field::Empty,
            fuel = tracing::field::Empty,
            peak_memory_bytes = tracing::field::Empty,
            wall_us = tracing::field::Empty,
        );
        let mut run = std::pin::pin!(tracing::Instrument::instrument(
            self.runner.run_recording(
                module,
                request.input,
                &limits,
                policy,
                request.tap,
                granted,
                end.denials.clone(),
            ),
            span.clone(),
        ));
        let mut report = std::future::poll_fn(|cx| {
            let polled = run.as_mut().poll(cx);
            if polled.is_pending() {
                // Waiting, the run may outlive a batch: its start goes now.
                // This fails only once the writer has stopped, which the
                // run's end reports.
                let _ = end.start();
            }
            polled
        })
        .await;
        report.run_id = run_id.clone();
        if crate::telemetry::traces::exporting() {
            span.record("outcome", report.outcome_name());
            span.record("fuel", report.usage.fuel_consumed);
            span.record("peak_memory_bytes", report.usage.peak_memory_bytes);
            span.record("wall_us", report.usage.wall_time_us);
        }
        // The sandbox is gone, whatever ended it: its leases go now.
        if let Some(leases) = leases {
            leases.finish().await;
        }
        crate::telemetry::record_run(
            crate::telemetry::RunFigures {
                outcome: report.outcome_name(),
                module_id: module.id(),
                fuel_consumed: report.usage.fuel_consumed,
                peak_memory_bytes: report.usage.peak_memory_bytes,
                wall_time_us: report.usage.wall_time_us,
            },
            report.denials.iter().map(|d| d.kind.as_str()),
            self.slo_target_us,
        );
        end.finished(&report)?;
        drop(end);
        // A run that went well is the audit log's to record; at INFO it
        // cost each served run a formatted line of ~500 bytes. The line
        // names its run: the text log leaves the run's span out.
        span.in_scope(|| match &report.result {
            Ok(_) => tracing::debug!(
                run_id = %run_id,
                module = %module.id(),
                policy = %policy.name,
                caller = %request.caller,
                outcome = "ok",
                wall_us = report.usage.wall_time_us,
                fuel = report.usage.fuel_consumed,
                "run finished"
            ),
            Err(e) => tracing::info!(
                run_id = %run_id,
                module = %module.id(),
                policy = %policy.name,
                caller = %request.caller,
                outcome = e.kind().as_str(),
                error = %e,
                wall_us = report.usage.wall_time_us,
                fuel = report.usage.fuel_consumed,
                peak_memory_bytes = report.usage.peak_memory_bytes,
                "run finished"
            ),
        });
        Ok(report)
    }
}

/// A random 128-bit run id, hex, from the thread's CSPRNG (seeded from
/// the OS, reseeded as it goes): no system call per run.
fn new_run_id() -> RunId {
    use rand::Rng;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut hex = [0u8; RunId::MAX];
    hex::encode_to_slice(bytes, &mut hex).expect("16 bytes are 32 hex digits");
    RunId::new(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
        .expect("32 hex digits fit a run id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditOptions, log_files, record::Record};
    use crate::sandbox::DenialKind;

    fn records(dir: &std::path::Path) -> Vec<Record> {
        crate::audit::tests::records(&log_files(&dir.join("audit")).unwrap())
    }

    /// Drops the end guard of run `run_id` mid-flight, after the sandbox
    /// recorded one denial.
    fn drop_with_a_denial(host: &Host, run_id: &str, id: RunId) {
        let end = RunEnd {
            host,
            run_id,
            audit_id: Some(id),
            start: None,
            denials: host.runner.denial_log(Default::default()),
            ended: false,
        };
        end.denials
            .record(DenialKind::Secret, "root-password", "not granted");
        drop(end);
    }

    fn context() -> RunContext {
        RunContext::new(&serde_json::json!({"module": "m", "caller": "c"}))
    }

    /// A run dropped before its start was sent (it never waited) is still
    /// told whole: alone, as one `run` record naming its context; with a
    /// denial, as its start, the denial and its end, in that order.
    #[test]
    fn a_run_dropped_before_its_start_was_sent_is_told_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(AuditOptions::in_data_dir(dir.path())).unwrap();
        assert!(log.holds_starts());
        let host = Host::builder().audit(log.clone()).build().unwrap();
        for (run_id, denied) in [("quiet", false), ("denied", true)] {
            let end = RunEnd {
                host: &host,
                run_id,
                audit_id: RunId::new(run_id),
                start: Some(context()),
                denials: host.runner.denial_log(Default::default()),
                ended: false,
            };
            if denied {
                end.denials
                    .record(DenialKind::Secret, "root-password", "not granted");
            }
            drop(end);
        }
        log.close().unwrap();
        let all = records(dir.path());
        let kinds = |run: &str| -> Vec<(String, serde_json::Value)> {
            all.iter()
                .filter(|r| r.fields["run_id"] == run)
                .map(|r| (r.kind.clone(), r.fields["outcome"].clone()))
                .collect()
        };
        assert_eq!(
            kinds("quiet"),
            [("run".to_string(), serde_json::json!("cancelled"))]
        );
        assert_eq!(
            kinds("denied"),
            [
                ("run.started".to_string(), serde_json::Value::Null),
                ("capability.denied".to_string(), serde_json::Value::Null),
                ("run.ended".to_string(), serde_json::json!("cancelled")),
            ]
        );
        let quiet = all.iter().find(|r| r.fields["run_id"] == "quiet").unwrap();
        assert!(quiet.fields["ctx"].is_u64(), "{quiet:?}");
    }

    #[test]
    fn a_run_dropped_mid_flight_is_ended_once_with_its_denials() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(AuditOptions::in_data_dir(dir.path())).unwrap();
        let host = Host::builder().audit(log.clone()).build().unwrap();
        for interrupted in [false, true] {
            if interrupted {
                host.interrupting_runs();
            }
            let run_id = if interrupted { "r2" } else { "r1" };
            let id = RunId::new(run_id).unwrap();
            log.run_started(id, context()).unwrap();
            drop_with_a_denial(&host, run_id, id);
        }
        log.close().unwrap();
        let all = records(dir.path());
        for (run, outcome) in [("r1", "cancelled"), ("r2", "interrupted")] {
            let mine: Vec<&Record> = all.iter().filter(|r| r.fields["run_id"] == run).collect();
            // The denial names the run, so its held-back start comes first.
            assert_eq!(mine.len(), 3, "{mine:?}");
            assert_eq!(mine[0].kind, "run.started");
            assert_eq!(mine[1].kind, "capability.denied");
            assert_eq!(mine[1].fields["target"], "root-password");
            assert_eq!(mine[2].kind, "run.ended");
            assert_eq!(mine[2].fields["outcome"], outcome);
            assert_eq!(mine[2].fields["denials"], 1);
            // The end names the context the run started under.
            assert_eq!(mine[2].fields["ctx"], mine[0].fields["ctx"]);
            assert!(mine[0].fields["ctx"].is_u64());
        }
    }

    /// A log that fails closed refuses new records while it cannot write,
    /// but not the denials and end of a run it already admitted: those wait
    /// in the writer's queue and reach the file once it recovers, so the
    /// run is not left half told.
    #[test]
    fn a_run_that_ends_while_the_log_is_failing_still_gets_its_denials_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = AuditOptions::in_data_dir(dir.path());
        options.max_file_bytes = 2048;
        assert!(!options.fail_open);
        let log = AuditLog::open(options).unwrap();
        let host = Host::builder().audit(log.clone()).build().unwrap();
        let id = RunId::new("r-failing").unwrap();
        log.run_started(id, context()).unwrap();
        // The next file cannot be opened: a directory holds its name.
        let next = dir.path().join("audit/audit-000002.jsonl");
        std::fs::create_dir(&next).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.is_healthy() {
            assert!(
                std::time::Instant::now() < deadline,
                "the rotation never failed"
            );
            let _ = log.record("test.filler", serde_json::json!({ "pad": "x".repeat(64) }));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            matches!(
                log.record("test.filler", serde_json::json!({})),
                Err(AuditError::Unavailable(_))
            ),
            "a failing log refuses new records"
        );
        drop_with_a_denial(&host, "r-failing", id);
        std::fs::remove_dir(&next).unwrap();
        while log.flush().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the log never recovered"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        log.close().unwrap();
        let all = records(dir.path());
        let mine: Vec<&Record> = all
            .iter()
            .filter(|r| r.fields["run_id"] == "r-failing")
            .collect();
        let kinds: Vec<&str> = mine.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["run.started", "capability.denied", "run.ended"]);
        assert_eq!(mine[2].fields["outcome"], "cancelled");
        assert_eq!(mine[2].fields["denials"], 1);
    }

    #[test]
    fn a_fuel_cap_on_a_host_that_meters_no_fuel_is_refused_at_build() {
        let caps = HostCaps {
            metering: crate::limits::Metering::Epoch,
            max_fuel: Some(1_000),
            ..HostCaps::default()
        };
        let err = Host::builder()
            .caps(caps)
            .pool_slots(1)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, HostError::FuelCapNotMetered { cap: 1_000 }),
            "{err}"
        );
    }
}
