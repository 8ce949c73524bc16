//! The `chassis.v1.Chassis` service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::identity::{ANONYMOUS_CALLER, IdentityRules, caller_identity};
use super::proto::{self, chassis_server::Chassis};
use super::refusal::{check_module_id, refuse};
use super::status::{not_found, status};
use crate::coord::Coordinator;
use crate::modules::{Module, World};
use crate::policy::{Policy, PolicySet};
use crate::sandbox::{FuelRequest, LimitsRequest, RunError, RunReport, TapEvent};
use crate::slots::{FairSlots, Slot, SlotsBusy};
use crate::telemetry::Refusal;
use crate::{ErrorKind, Host, RunRequest};

const QUOTA_SETTING: &str = "sandbox_pool.per_caller_max_size";

/// Serves runs with at most `max_size` sandboxes at once, shared fairly
/// among callers ([`crate::slots`]).
#[derive(Debug, Clone)]
pub struct ChassisService {
    host: Host,
    policies: Arc<PolicySet>,
    default_policy: Arc<Policy>,
    slots: FairSlots,
    /// Slots of the policies with `limits.concurrent_runs`, by name.
    policy_slots: Arc<std::collections::HashMap<String, FairSlots>>,
    queue_timeout: Duration,
    max_module_bytes: u64,
    interrupt: watch::Receiver<bool>,
    coordinator: Coordinator,
    identity: IdentityRules,
    admins: Arc<Vec<String>>,
}

impl ChassisService {
    /// A service over `host` offering `policies` and runbooks through
    /// `coordinator`; `interrupt` turning true ends every in-flight run
    /// with UNAVAILABLE (end of shutdown grace).
    pub fn new(
        host: Host,
        policies: Arc<PolicySet>,
        max_size: u32,
        queue_timeout: Duration,
        max_module_bytes: u64,
        interrupt: watch::Receiver<bool>,
        coordinator: Coordinator,
    ) -> Self {
        let policy_slots = policies
            .iter()
            .filter_map(|p| {
                let n = p.limits.concurrent_runs? as usize;
                Some((
                    p.name.clone(),
                    FairSlots::new("policy", n, n, "limits.concurrent_runs"),
                ))
            })
            .collect();
        Self {
            host,
            coordinator,
            policies,
            policy_slots: Arc::new(policy_slots),
            default_policy: Arc::new(Policy::deny_all()),
            slots: FairSlots::new(
                "sandbox",
                max_size as usize,
                max_size as usize,
                QUOTA_SETTING,
            ),
            queue_timeout,
            max_module_bytes,
            interrupt,
            identity: IdentityRules::default(),
            admins: Arc::new(vec![crate::policy::LOCAL_CALLER.to_string()]),
        }
    }

    /// Holds each caller to at most `quota` sandboxes at once (0: no quota
    /// below `max_size`).
    pub fn with_caller_quota(mut self, quota: u32) -> Self {
        let capacity = self.slots.capacity();
        let quota = if quota == 0 { capacity } else { quota as usize };
        self.slots = FairSlots::new("sandbox", capacity, quota, QUOTA_SETTING);
        self
    }

    /// Derive callers by `rules` (TLS or not, CN fallback) and let
    /// `admins` manage modules, read policies and read every runbook.
    pub fn with_identity(mut self, rules: IdentityRules, admins: Vec<String>) -> Self {
        self.identity = rules;
        self.admins = Arc::new(admins);
        self
    }

    /// The caller of `request`; a certificate naming a reserved identity
    /// is refused (PERMISSION_DENIED, `policy-denied`).
    fn caller<T>(&self, rpc: &'static str, request: &Request<T>) -> Result<String, Status> {
        caller_identity(
            self.identity,
            request.remote_addr(),
            request.peer_certs().as_deref().map(|c| c.as_slice()),
        )
        .map_err(|e| {
            refuse(
                &self.host,
                rpc,
                &e.0,
                Refusal::ReservedIdentity,
                ErrorKind::PolicyDenied,
                e.to_string(),
            )
        })
    }

    fn is_admin(&self, caller: &str) -> bool {
        self.admins.iter().any(|a| a == caller)
    }

    /// Refuses `caller` unless it is in `server.admins`.
    fn require_admin(&self, rpc: &'static str, caller: &str) -> Result<(), Status> {
        if self.is_admin(caller) {
            return Ok(());
        }
        Err(refuse(
            &self.host,
            rpc,
            caller,
            Refusal::NotAdmin,
            ErrorKind::PolicyDenied,
            format!("{rpc} is for admins; caller `{caller}` is not in server.admins"),
        ))
    }

    /// Refuses `caller` reading runbook `view` unless it submitted it or is
    /// an admin. `anonymous` is nobody in particular, so it owns nothing.
    fn may_read(
        &self,
        rpc: &'static str,
        caller: &str,
        view: &crate::coord::RunbookView,
    ) -> Result<(), Status> {
        if self.is_admin(caller) || (caller == view.spec.caller && caller != ANONYMOUS_CALLER) {
            return Ok(());
        }
        Err(refuse(
            &self.host,
            rpc,
            caller,
            Refusal::NotSubmitter,
            ErrorKind::PolicyDenied,
            format!(
                "runbook `{}` may be read only by its submitter or an admin; caller `{caller}` is neither",
                view.id
            ),
        ))
    }

    /// A sandbox slot for `caller`, waiting at most `queue_timeout` in its
    /// turn among the callers waiting.
    /// A slot of `policy`'s own, if it limits its concurrent runs: waits in
    /// turn among the policy's callers, then is refused (`policy-quota`).
    async fn policy_slot(
        &self,
        rpc: &'static str,
        caller: &str,
        policy: &Policy,
    ) -> Result<Option<Slot>, Status> {
        let Some(slots) = self.policy_slots.get(&policy.name) else {
            return Ok(None);
        };
        slots
            .acquire(caller, self.queue_timeout)
            .await
            .map(Some)
            .map_err(|busy| {
                crate::telemetry::record_overloaded();
                refuse(
                    &self.host,
                    rpc,
                    caller,
                    Refusal::PolicyQuota,
                    ErrorKind::Overloaded,
                    format!(
                        "policy `{}` allows {} runs at once (limits.concurrent_runs): {busy}",
                        policy.name,
                        slots.capacity()
                    ),
                )
            })
    }

    /// A caller held to its quota is refused (audited, `caller-quota`); a
    /// full pool is counted in `if_chassis_overloaded_total` only, since
    /// auditing every shed request would let load fill the audit log.
    async fn slot(&self, rpc: &'static str, caller: &str) -> Result<Slot, Status> {
        self.slots
            .acquire(caller, self.queue_timeout)
            .await
            .map_err(|busy| {
                crate::telemetry::record_overloaded();
                match busy {
                    SlotsBusy::Quota { .. } => refuse(
                        &self.host,
                        rpc,
                        caller,
                        Refusal::CallerQuota,
                        ErrorKind::Overloaded,
                        busy.to_string(),
                    ),
                    SlotsBusy::Full { .. } => status(ErrorKind::Overloaded, busy.to_string()),
                }
            })
    }

    /// Resolves the module, the policy, the caller and the limits of a request.
    fn prepare(
        &self,
        rpc: &'static str,
        request: &Request<proto::RunRequest>,
    ) -> Result<(Arc<Module>, RunRequest), Status> {
        let caller = self.caller(rpc, request)?;
        let deadline = grpc_timeout(request.metadata());
        let body = request.get_ref();
        check_module_id(&self.host, rpc, &caller, &body.module_id)?;
        let module = self
            .host
            .modules()
            .get(&body.module_id)
            .ok_or_else(|| not_found("module", &body.module_id))?;
        let policy = if body.policy.is_empty() {
            self.default_policy.clone()
        } else {
            self.policies
                .get(&body.policy)
                .ok_or_else(|| not_found("policy", &body.policy))?
        };
        let mut limits = limits_request(body.limits.as_ref())?;
        if let Some(deadline) = deadline {
            // End the run a little before the caller gives up, so the caller
            // hears `deadline-exceeded` from the run rather than its own timer.
            let margin = (deadline / 10).min(Duration::from_millis(50));
            let deadline = deadline
                .saturating_sub(margin)
                .max(Duration::from_millis(1));
            limits.timeout = Some(limits.timeout.map_or(deadline, |t| t.min(deadline)));
        }
        let run = RunRequest::under(body.input.clone(), policy)
            .caller(caller)
            .limits(limits);
        Ok((module, run))
    }

    async fn interrupted(mut interrupt: watch::Receiver<bool>) {
        while !*interrupt.borrow() {
            if interrupt.changed().await.is_err() {
                // The server is gone; nothing will interrupt us.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn run_guarded(&self, module: &Module, run: RunRequest) -> Result<RunReport, Status> {
        tokio::select! {
            report = self.host.run(module, run) => report.map_err(|e| status(e.kind(), e.to_string())),
            () = Self::interrupted(self.interrupt.clone()) => Err(status(
                ErrorKind::Unavailable,
                "the host is shutting down and the grace period ended; the run was interrupted",
            )),
        }
    }
}

/// Parses the `grpc-timeout` header (`100m`, `2S`, ...).
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn limits_request(limits: Option<&proto::Limits>) -> Result<LimitsRequest, Status> {
    let Some(l) = limits else {
        return Ok(LimitsRequest::default());
    };
    let nonzero = |v: u64| (v != 0).then_some(v);
    let cpu = match l.cpu_percent {
        0 => None,
        p @ 1..=100 => Some(p as u8),
        p => {
            return Err(status(
                ErrorKind::InvalidRequest,
                format!("limits.cpu_percent {p} is not from 1 to 100"),
            ));
        }
    };
    Ok(LimitsRequest {
        fuel: nonzero(l.fuel).map(FuelRequest::Budget),
        memory_bytes: nonzero(l.memory_mb).map(|m| m.saturating_mul(1024 * 1024)),
        timeout: nonzero(l.timeout_ms).map(Duration::from_millis),
        output_bytes: nonzero(l.output_kb).map(|k| k.saturating_mul(1024)),
        log_records: None,
        cpu_percent: cpu,
    })
}

fn usage(report: &RunReport) -> proto::Usage {
    proto::Usage {
        fuel_consumed: report.usage.fuel_consumed,
        peak_memory_bytes: report.usage.peak_memory_bytes,
        wall_time_us: report.usage.wall_time_us,
        cpu_time_us: report.usage.cpu_time_us,
    }
}

fn denials(report: &RunReport) -> Vec<proto::Denial> {
    report
        .denials
        .iter()
        .map(|d| proto::Denial {
            kind: d.kind.as_str().into(),
            target: d.target.clone(),
            reason: d.reason.clone(),
        })
        .collect()
}

fn log_record(r: &crate::sandbox::LogRecord) -> proto::LogRecord {
    proto::LogRecord {
        at_ms: r.at_ms,
        level: r.level.into(),
        message: r.message.clone(),
        fields: r.fields.iter().cloned().collect(),
    }
}

fn run_failed(report: &RunReport, error: &RunError) -> Status {
    let mut s = status(error.kind(), error.to_string());
    if let Ok(v) = report.run_id.parse() {
        s.metadata_mut().insert("chassis-run-id", v);
    }
    if let Ok(v) = format!(
        "fuel={} peak_memory_bytes={} wall_time_us={}",
        report.usage.fuel_consumed, report.usage.peak_memory_bytes, report.usage.wall_time_us
    )
    .parse()
    {
        s.metadata_mut().insert("chassis-usage", v);
    }
    s
}

fn world(w: World) -> i32 {
    match w {
        World::Agent => proto::World::Agent as i32,
        World::Command => proto::World::Command as i32,
    }
}

/// Events a RunStream buffers for a client that reads slower than its
/// run writes; the rest are dropped and counted (the outcome says how many).
pub const STREAM_BUFFER_EVENTS: usize = 256;

/// The field of the host's log record, sent just before the outcome, that
/// counts the events a slow RunStream client missed.
pub const DROPPED_FIELD: &str = "chassis.events_dropped";

/// Queues `event` for the client without waiting: a full buffer drops it
/// and counts it. False when the client has gone.
fn forward(
    events: &mpsc::Sender<Result<proto::RunEvent, Status>>,
    event: TapEvent,
    dropped: &mut u64,
) -> bool {
    let event = match event {
        TapEvent::Stdout(b) => proto::run_event::Event::Stdout(b),
        TapEvent::Stderr(b) => proto::run_event::Event::Stderr(b),
        TapEvent::Log(r) => proto::run_event::Event::Log(log_record(&r)),
    };
    match events.try_send(Ok(proto::RunEvent { event: Some(event) })) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            *dropped += 1;
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::RunEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Chassis for ChassisService {
    async fn register_module(
        &self,
        request: Request<Streaming<proto::RegisterModuleChunk>>,
    ) -> Result<Response<proto::ModuleInfo>, Status> {
        let caller = self.caller("RegisterModule", &request)?;
        self.require_admin("RegisterModule", &caller)?;
        let mut chunks = request.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            if (bytes.len() + chunk.data.len()) as u64 > self.max_module_bytes {
                return Err(status(
                    ErrorKind::InvalidModule,
                    format!(
                        "module of more than {} bytes is larger than the limit of {} bytes (runtime.max_module_mb)",
                        bytes.len() + chunk.data.len(),
                        self.max_module_bytes
                    ),
                ));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        if bytes.is_empty() {
            return Err(status(
                ErrorKind::InvalidModule,
                "no module bytes were sent",
            ));
        }
        let module = self
            .host
            .modules()
            .register_for(bytes, &caller)
            .await
            .map_err(|e| match e {
                crate::modules::ModuleError::Busy(_) => {
                    crate::telemetry::record_overloaded();
                    refuse(
                        &self.host,
                        "RegisterModule",
                        &caller,
                        Refusal::CompileBusy,
                        e.kind(),
                        e.to_string(),
                    )
                }
                e => status(e.kind(), e.to_string()),
            })?;
        tracing::info!(module = %module.id(), world = %module.world(), %caller, "module registered");
        self.host
            .audit_event(|| crate::audit::Event::ModuleRegistered {
                module: module.id(),
                world: module.world().as_str(),
                size_bytes: module.size_bytes(),
                caller: &caller,
            })
            .map_err(|e| status(e.kind(), e.to_string()))?;
        Ok(Response::new(proto::ModuleInfo {
            id: module.id().into(),
            world: world(module.world()),
            size_bytes: module.size_bytes(),
            ignored_exports: module.ignored_exports().to_vec(),
        }))
    }

    async fn list_modules(
        &self,
        request: Request<proto::ListModulesRequest>,
    ) -> Result<Response<proto::ListModulesResponse>, Status> {
        self.caller("ListModules", &request)?;
        let modules = self
            .host
            .modules()
            .list()
            .into_iter()
            .map(|m| proto::ModuleInfo {
                id: m.id,
                world: world(m.world),
                size_bytes: m.size_bytes,
                ignored_exports: m.ignored_exports,
            })
            .collect();
        Ok(Response::new(proto::ListModulesResponse { modules }))
    }

    async fn remove_module(
        &self,
        request: Request<proto::RemoveModuleRequest>,
    ) -> Result<Response<proto::RemoveModuleResponse>, Status> {
        let caller = self.caller("RemoveModule", &request)?;
        self.require_admin("RemoveModule", &caller)?;
        let id = &request.get_ref().id;
        check_module_id(&self.host, "RemoveModule", &caller, id)?;
        match self.host.modules().remove(id) {
            Ok(true) => {
                tracing::info!(module = %id, %caller, "module removed");
                self.host
                    .audit_event(|| crate::audit::Event::ModuleRemoved {
                        module: id,
                        caller: &caller,
                    })
                    .map_err(|e| status(e.kind(), e.to_string()))?;
                Ok(Response::new(proto::RemoveModuleResponse {}))
            }
            Ok(false) => Err(not_found("module", id)),
            Err(e) => Err(status(e.kind(), e.to_string())),
        }
    }

    async fn list_policies(
        &self,
        request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        // Policies show secret paths and preopens.
        let caller = self.caller("ListPolicies", &request)?;
        self.require_admin("ListPolicies", &caller)?;
        let policies = self
            .policies
            .iter()
            .map(|p| proto::PolicyInfo {
                name: p.name.clone(),
                description: p.description.clone(),
                sha256: p.sha256.clone(),
                json: serde_json::to_string(p.as_ref()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(proto::ListPoliciesResponse { policies }))
    }

    async fn run(
        &self,
        request: Request<proto::RunRequest>,
    ) -> Result<Response<proto::RunResponse>, Status> {
        let (module, run) = self.prepare("Run", &request)?;
        let _policy_slot = self.policy_slot("Run", &run.caller, &run.policy).await?;
        let _slot = self.slot("Run", &run.caller).await?;
        let report = self.run_guarded(&module, run).await?;
        match &report.result {
            Ok(output) => Ok(Response::new(proto::RunResponse {
                run_id: report.run_id.clone(),
                output: output.clone(),
                usage: Some(usage(&report)),
                stdout: report.stdout.bytes.clone(),
                stderr: report.stderr.bytes.clone(),
                logs: report.logs.iter().map(log_record).collect(),
                denials: denials(&report),
            })),
            Err(e) => Err(run_failed(&report, e)),
        }
    }

    type WatchRunbookStream = super::runbooks::RunbookEventStream;

    async fn submit_runbook(
        &self,
        request: Request<proto::SubmitRunbookRequest>,
    ) -> Result<Response<proto::SubmitRunbookResponse>, Status> {
        let caller = self.caller("SubmitRunbook", &request)?;
        if caller == ANONYMOUS_CALLER {
            return Err(refuse(
                &self.host,
                "SubmitRunbook",
                &caller,
                Refusal::Anonymous,
                ErrorKind::PolicyDenied,
                "a runbook's steps run as its submitter and only it may read it back; present a client certificate",
            ));
        }
        if !request.get_ref().modules.is_empty() && !self.is_admin(&caller) {
            return Err(refuse(
                &self.host,
                "SubmitRunbook",
                &caller,
                Refusal::NotAdmin,
                ErrorKind::PolicyDenied,
                format!(
                    "module files sent with a runbook are registered, which is for admins; caller `{caller}` is not in server.admins: refer to registered modules as sha256:<id>"
                ),
            ));
        }
        super::runbooks::submit(&self.coordinator, request.into_inner(), &caller)
            .await
            .map(Response::new)
    }

    async fn get_runbook(
        &self,
        request: Request<proto::GetRunbookRequest>,
    ) -> Result<Response<proto::RunbookStatus>, Status> {
        let caller = self.caller("GetRunbook", &request)?;
        let view = super::runbooks::read(&self.coordinator, &request.get_ref().runbook_id).await?;
        self.may_read("GetRunbook", &caller, &view)?;
        Ok(Response::new(super::runbooks::to_status(&view)))
    }

    async fn watch_runbook(
        &self,
        request: Request<proto::WatchRunbookRequest>,
    ) -> Result<Response<Self::WatchRunbookStream>, Status> {
        let caller = self.caller("WatchRunbook", &request)?;
        let body = request.into_inner();
        super::runbooks::watch(
            &self.coordinator,
            &body.runbook_id,
            body.from_revision,
            self.interrupt.clone(),
            |view| self.may_read("WatchRunbook", &caller, view),
        )
        .await
        .map(Response::new)
    }

    type RunStreamStream = EventStream;

    async fn run_stream(
        &self,
        request: Request<proto::RunRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (module, run) = self.prepare("RunStream", &request)?;
        let policy_slot = self
            .policy_slot("RunStream", &run.caller, &run.policy)
            .await?;
        let slot = self.slot("RunStream", &run.caller).await?;
        // Two slots more than the events may fill: they are reserved for
        // the dropped-events notice and the outcome, so those are delivered
        // however far behind the client is.
        let (events, rx) =
            mpsc::channel::<Result<proto::RunEvent, Status>>(STREAM_BUFFER_EVENTS + 2);
        let (tap, mut taps) = mpsc::unbounded_channel::<TapEvent>();
        let service = self.clone();
        tokio::spawn(async move {
            let (Ok(notice), Ok(outcome)) = (
                events.clone().reserve_owned().await,
                events.clone().reserve_owned().await,
            ) else {
                return;
            };
            let mut dropped = 0_u64;
            let mut run = Box::pin(service.run_guarded(&module, run.tap(tap)));
            // Forward live events while the run goes, never waiting for the
            // client: the run, its deadline and the shutdown interrupt are
            // polled whatever the client reads. A caller that hangs up
            // cancels its run.
            let report = loop {
                tokio::select! {
                    biased;
                    Some(event) = taps.recv() => {
                        if !forward(&events, event, &mut dropped) {
                            return;
                        }
                    }
                    report = &mut run => break report,
                    () = events.closed() => return,
                }
            };
            // The run is over: its tap is dropped with it and its slot is free.
            drop(run);
            drop(slot);
            drop(policy_slot);
            while let Some(event) = taps.recv().await {
                if !forward(&events, event, &mut dropped) {
                    return;
                }
            }
            if dropped > 0 {
                metrics::counter!(crate::telemetry::STREAM_EVENTS_DROPPED).increment(dropped);
                tracing::warn!(
                    dropped,
                    buffer = STREAM_BUFFER_EVENTS,
                    "RunStream client fell behind; events beyond its buffer were dropped"
                );
                notice.send(Ok(proto::RunEvent {
                    event: Some(proto::run_event::Event::Log(proto::LogRecord {
                        at_ms: 0,
                        level: "warn".into(),
                        message: format!(
                            "chassis: the client read slower than the run wrote; {dropped} events beyond the stream's buffer of {STREAM_BUFFER_EVENTS} were dropped"
                        ),
                        fields: [(DROPPED_FIELD.to_string(), dropped.to_string())].into(),
                    })),
                }));
            }
            let last = match report {
                Ok(report) => {
                    let (kind, message, output) = match &report.result {
                        Ok(out) => ("ok".to_string(), String::new(), out.clone()),
                        Err(e) => (e.kind().as_str().to_string(), e.to_string(), Vec::new()),
                    };
                    Ok(proto::RunEvent {
                        event: Some(proto::run_event::Event::Outcome(proto::Outcome {
                            kind,
                            message,
                            output,
                            usage: Some(usage(&report)),
                            denials: denials(&report),
                        })),
                    })
                }
                Err(mut status) => {
                    if let Ok(v) = dropped.to_string().parse() {
                        status.metadata_mut().insert("chassis-events-dropped", v);
                    }
                    Err(status)
                }
            };
            outcome.send(last);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let mut m = tonic::metadata::MetadataMap::new();
        for (text, want) in [
            ("100m", Duration::from_millis(100)),
            ("2S", Duration::from_secs(2)),
            ("1M", Duration::from_secs(60)),
            ("5u", Duration::from_micros(5)),
        ] {
            m.insert("grpc-timeout", text.parse().unwrap());
            assert_eq!(grpc_timeout(&m), Some(want));
        }
        m.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }

    #[test]
    fn zero_limits_mean_unset_and_bad_cpu_is_invalid() {
        let l = limits_request(Some(&proto::Limits {
            memory_mb: 8,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(l.memory_bytes, Some(8 << 20));
        assert_eq!(l.fuel, None);
        let err = limits_request(Some(&proto::Limits {
            cpu_percent: 101,
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
