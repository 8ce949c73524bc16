//! Prometheus metrics under the `if_chassis_*` names the shipped alerts and
//! dashboard use, the run log line, and the
//! metrics port's `/health` (see [`health`]).
//!
//! Recording goes through the `metrics` facade, so it costs next to nothing
//! when no exporter is installed (the CLI); `chassis serve` installs the
//! Prometheus exporter on the metrics port.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `if_chassis_sandbox_count` | gauge | sandboxes running now |
//! | `if_chassis_memory_usage_mb` | gauge | linear memory of running sandboxes |
//! | `if_chassis_memory_limit_mb` | gauge | `max_memory_mb` x `sandbox_pool.max_size` |
//! | `if_chassis_sandbox_escapes` | counter | runs that ended `internal`: the host, not the guest, failed while a guest ran |
//! | `if_chassis_slo_violations` | counter | runs slower than `slo.target_latency_p95_ms` |
//! | `if_chassis_runs_total{outcome}` | counter | finished runs by outcome kind |
//! | `if_chassis_run_duration_seconds` | histogram | wall time per run |
//! | `if_chassis_run_fuel` | histogram | fuel per run |
//! | `if_chassis_denials_total{kind}` | counter | capabilities refused, by kind |
//! | `if_chassis_overloaded_total` | counter | requests refused because every slot was busy |
//! | `if_chassis_slo_target_latency_ms` | gauge | the configured objective |
//! | `if_chassis_slo_target_availability_percent` | gauge | `slo.target_availability_percent` |
//! | `if_chassis_module_fuel_total{module}` | counter | fuel burnt per module (first 12 hex digits of its id) |
//! | `if_chassis_module_peak_memory_mb{module}` | gauge | peak linear memory of the module's last run |
//! | `if_chassis_claim_duration_seconds` | histogram | time to acquire a step claim from the claim store |
//! | `if_chassis_claims_total{result}` | counter | claim attempts: `acquired`, `contended` (another host holds it), `error` (store unreachable or failed) |
//! | `if_chassis_fence_rejections_total` | counter | step results refused because the claim's fence no longer held |
//! | `if_chassis_runbook_steps_total{state}` | counter | step transitions: `completed`, `failed`, `retried`, `skipped` |
//! | `if_chassis_coordinator_up` | gauge | 1 while the claim store answers, 0 while it does not |
//! | `if_chassis_secret_reads_total{result}` | counter | secret reads: `granted`, `denied`, `error` |
//! | `if_chassis_secret_revoke_failures_total` | counter | dynamic-secret lease revocations that failed (they are retried) |
//! | `if_chassis_secret_leases_pending` | gauge | leases whose revocation is still being retried |
//! | `if_chassis_requests_refused_total{reason}` | counter | requests refused before they ran, by [`Refusal`] reason |
//! | `if_chassis_stream_events_dropped_total` | counter | RunStream events dropped because the client did not read them |
//! | `if_chassis_audit_records_total`, `if_chassis_audit_write_failures_total` | counter | see [`crate::audit`] |

mod handles;
pub mod health;
mod http;
pub mod traces;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Sandboxes running now.
pub const SANDBOX_COUNT: &str = "if_chassis_sandbox_count";
/// Linear memory of running sandboxes, MiB.
pub const MEMORY_USAGE_MB: &str = "if_chassis_memory_usage_mb";
/// Memory all sandboxes could use, MiB.
pub const MEMORY_LIMIT_MB: &str = "if_chassis_memory_limit_mb";
/// Sandbox boundary failures.
pub const SANDBOX_ESCAPES: &str = "if_chassis_sandbox_escapes";
/// Runs over the latency objective.
pub const SLO_VIOLATIONS: &str = "if_chassis_slo_violations";
/// Finished runs by outcome.
pub const RUNS_TOTAL: &str = "if_chassis_runs_total";
/// Wall time per run.
pub const RUN_DURATION: &str = "if_chassis_run_duration_seconds";
/// Fuel per run.
pub const RUN_FUEL: &str = "if_chassis_run_fuel";
/// Denials by kind.
pub const DENIALS_TOTAL: &str = "if_chassis_denials_total";
/// Requests refused at capacity.
pub const OVERLOADED_TOTAL: &str = "if_chassis_overloaded_total";
/// The configured latency objective.
pub const SLO_TARGET_MS: &str = "if_chassis_slo_target_latency_ms";
/// The configured availability objective.
pub const SLO_TARGET_AVAILABILITY: &str = "if_chassis_slo_target_availability_percent";

/// Fuel burnt per module.
pub const MODULE_FUEL: &str = "if_chassis_module_fuel_total";
/// Peak linear memory of a module's last run, MiB.
pub const MODULE_PEAK_MEMORY_MB: &str = "if_chassis_module_peak_memory_mb";
/// Time to acquire a step claim.
pub const CLAIM_DURATION: &str = "if_chassis_claim_duration_seconds";
/// Claim attempts by result.
pub const CLAIMS_TOTAL: &str = "if_chassis_claims_total";
/// Step results refused by fencing.
pub const FENCE_REJECTIONS: &str = "if_chassis_fence_rejections_total";
/// Step runs cancelled because this host's session lease lapsed mid-run.
pub const STEPS_ABANDONED: &str = "if_chassis_steps_abandoned_total";
/// Runbook step transitions by state.
pub const RUNBOOK_STEPS_TOTAL: &str = "if_chassis_runbook_steps_total";
/// Whether the claim store answers.
pub const COORDINATOR_UP: &str = "if_chassis_coordinator_up";
/// Secret reads by result.
pub const SECRET_READS_TOTAL: &str = "if_chassis_secret_reads_total";
/// Failed lease revocations.
pub const SECRET_REVOKE_FAILURES: &str = "if_chassis_secret_revoke_failures_total";
/// Leases whose revocation is being retried.
pub const SECRET_LEASES_PENDING: &str = "if_chassis_secret_leases_pending";

/// Requests refused before they ran, by reason.
pub const REQUESTS_REFUSED_TOTAL: &str = "if_chassis_requests_refused_total";
/// RunStream events dropped because the client did not read them.
pub const STREAM_EVENTS_DROPPED: &str = "if_chassis_stream_events_dropped_total";

/// Why a request was refused before it ran: the `reason` label of
/// `if_chassis_requests_refused_total`, and the `reason` field of the
/// `request.refused` audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A module id that is not 64 lower-case hex digits.
    ModuleId,
    /// A client certificate naming a reserved identity (`local`, `anonymous`).
    ReservedIdentity,
    /// A management call from a caller not in `server.admins`.
    NotAdmin,
    /// A runbook read by a caller who neither submitted it nor is an admin.
    NotSubmitter,
    /// A runbook step whose rendered input could exceed the request cap.
    InputTooLarge,
    /// A call that needs an identity (SubmitRunbook) from `anonymous`.
    Anonymous,
    /// A compile (RegisterModule, module files with SubmitRunbook) that
    /// waited out `runtime.compile_queue_timeout_ms` for its turn.
    CompileBusy,
    /// A run from a caller holding its whole `sandbox_pool.per_caller_max_size`
    /// for the queue timeout.
    CallerQuota,
    /// A run under a policy whose `limits.concurrent_runs` stayed busy for
    /// the queue timeout.
    PolicyQuota,
}

impl Refusal {
    /// Every reason, for registering the series at zero.
    pub const ALL: [Refusal; 9] = [
        Refusal::ModuleId,
        Refusal::ReservedIdentity,
        Refusal::NotAdmin,
        Refusal::NotSubmitter,
        Refusal::InputTooLarge,
        Refusal::Anonymous,
        Refusal::CompileBusy,
        Refusal::CallerQuota,
        Refusal::PolicyQuota,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ModuleId => "module-id",
            Refusal::ReservedIdentity => "reserved-identity",
            Refusal::NotAdmin => "not-admin",
            Refusal::NotSubmitter => "not-submitter",
            Refusal::InputTooLarge => "input-too-large",
            Refusal::Anonymous => "anonymous",
            Refusal::CompileBusy => "compile-busy",
            Refusal::CallerQuota => "caller-quota",
            Refusal::PolicyQuota => "policy-quota",
        }
    }
}

/// Counts one refused request.
pub fn record_refused(reason: Refusal) {
    metrics::counter!(REQUESTS_REFUSED_TOTAL, "reason" => reason.as_str()).increment(1);
}

/// Every metric name chassis exports, for dashboards and alert tests.
pub const ALL_METRICS: &[&str] = &[
    MODULE_FUEL,
    MODULE_PEAK_MEMORY_MB,
    CLAIM_DURATION,
    CLAIMS_TOTAL,
    FENCE_REJECTIONS,
    STEPS_ABANDONED,
    RUNBOOK_STEPS_TOTAL,
    COORDINATOR_UP,
    SECRET_READS_TOTAL,
    SECRET_REVOKE_FAILURES,
    SECRET_LEASES_PENDING,
    REQUESTS_REFUSED_TOTAL,
    STREAM_EVENTS_DROPPED,
    crate::audit::RECORDS_TOTAL,
    crate::audit::WRITE_FAILURES_TOTAL,
    crate::disk::AUDIT_FREE_BYTES,
    crate::disk::AUDIT_MIN_FREE_BYTES,
    SANDBOX_COUNT,
    MEMORY_USAGE_MB,
    MEMORY_LIMIT_MB,
    SANDBOX_ESCAPES,
    SLO_VIOLATIONS,
    RUNS_TOTAL,
    RUN_DURATION,
    RUN_FUEL,
    DENIALS_TOTAL,
    OVERLOADED_TOTAL,
    SLO_TARGET_MS,
    SLO_TARGET_AVAILABILITY,
];

/// An exporter could not start.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// The Prometheus exporter (the metrics port).
    #[error("starting the Prometheus exporter on {addr}: {message}")]
    Metrics {
        /// The metrics port's address.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// The OTLP trace exporter.
    #[error("starting the OTLP trace exporter to {endpoint}: {message}")]
    Traces {
        /// The collector's address.
        endpoint: String,
        /// What failed.
        message: String,
    },
}

/// Serves `/metrics` and `/health` on `addr` and registers every metric at
/// zero, so alerts and dashboards see each series from the first scrape.
/// Must be called on a tokio runtime, which then serves the port.
pub fn install_prometheus(
    addr: SocketAddr,
    memory_limit_mb: u64,
    slo_target_ms: u64,
    availability_target_percent: f64,
) -> Result<(), TelemetryError> {
    let listener = http::bind(addr).map_err(|e| TelemetryError::Metrics {
        addr,
        message: e.to_string(),
    })?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(RUN_DURATION.into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 5.0, 30.0, 300.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(RUN_FUEL.into()),
                &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(CLAIM_DURATION.into()),
                &[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
                ],
            )
        })
        .map_err(|e| TelemetryError::Metrics {
            addr,
            message: e.to_string(),
        })?
        .install_recorder()
        .map_err(|e| TelemetryError::Metrics {
            addr,
            message: e.to_string(),
        })?;
    handles::recorder_installed();
    http::spawn(listener, handle);
    metrics::describe_gauge!(SANDBOX_COUNT, "Sandboxes running now");
    metrics::describe_gauge!(
        MEMORY_USAGE_MB,
        metrics::Unit::Mebibytes,
        "Linear memory of running sandboxes"
    );
    metrics::describe_gauge!(
        MEMORY_LIMIT_MB,
        metrics::Unit::Mebibytes,
        "max_memory_mb times sandbox_pool.max_size"
    );
    metrics::describe_counter!(
        SANDBOX_ESCAPES,
        "Runs where the host, not the guest, failed while a guest ran"
    );
    metrics::describe_counter!(SLO_VIOLATIONS, "Runs slower than slo.target_latency_p95_ms");
    metrics::describe_counter!(RUNS_TOTAL, "Finished runs by outcome");
    metrics::describe_histogram!(RUN_DURATION, metrics::Unit::Seconds, "Wall time per run");
    metrics::describe_histogram!(RUN_FUEL, "Fuel consumed per run");
    metrics::describe_counter!(DENIALS_TOTAL, "Capabilities refused, by kind");
    metrics::describe_counter!(
        OVERLOADED_TOTAL,
        "Requests refused because every sandbox slot was busy"
    );
    metrics::describe_counter!(MODULE_FUEL, "Fuel burnt per module");
    metrics::describe_gauge!(
        MODULE_PEAK_MEMORY_MB,
        metrics::Unit::Mebibytes,
        "Peak linear memory of the module's last run"
    );
    metrics::describe_histogram!(
        CLAIM_DURATION,
        metrics::Unit::Seconds,
        "Time to acquire a runbook step claim"
    );
    metrics::describe_counter!(CLAIMS_TOTAL, "Claim attempts by result");
    metrics::describe_counter!(
        FENCE_REJECTIONS,
        "Step results refused because the claim's fence no longer held"
    );
    metrics::describe_counter!(
        STEPS_ABANDONED,
        "Step runs cancelled because this host's session lease lapsed before they finished"
    );
    metrics::describe_counter!(RUNBOOK_STEPS_TOTAL, "Runbook step transitions by state");
    metrics::describe_gauge!(COORDINATOR_UP, "1 while the claim store answers");
    metrics::describe_counter!(SECRET_READS_TOTAL, "Secret reads by result");
    metrics::describe_counter!(
        SECRET_REVOKE_FAILURES,
        "Dynamic-secret lease revocations that failed and are retried"
    );
    metrics::describe_gauge!(
        SECRET_LEASES_PENDING,
        "Leases whose revocation is still being retried"
    );
    metrics::describe_counter!(
        REQUESTS_REFUSED_TOTAL,
        "Requests refused before they ran, by reason"
    );
    metrics::describe_counter!(
        STREAM_EVENTS_DROPPED,
        "RunStream events dropped because the client did not read them"
    );
    for reason in Refusal::ALL {
        metrics::counter!(REQUESTS_REFUSED_TOTAL, "reason" => reason.as_str()).absolute(0);
    }
    metrics::counter!(STREAM_EVENTS_DROPPED).absolute(0);
    for result in ["acquired", "contended", "error"] {
        metrics::counter!(CLAIMS_TOTAL, "result" => result).absolute(0);
    }
    for state in ["completed", "failed", "retried", "skipped"] {
        metrics::counter!(RUNBOOK_STEPS_TOTAL, "state" => state).absolute(0);
    }
    for result in ["granted", "denied", "error"] {
        metrics::counter!(SECRET_READS_TOTAL, "result" => result).absolute(0);
    }
    metrics::counter!(FENCE_REJECTIONS).absolute(0);
    metrics::counter!(STEPS_ABANDONED).absolute(0);
    metrics::counter!(SECRET_REVOKE_FAILURES).absolute(0);
    metrics::gauge!(SECRET_LEASES_PENDING).set(0.0);
    metrics::gauge!(COORDINATOR_UP).set(1.0);
    metrics::gauge!(SANDBOX_COUNT).set(0.0);
    metrics::gauge!(MEMORY_USAGE_MB).set(0.0);
    metrics::gauge!(MEMORY_LIMIT_MB).set(memory_limit_mb as f64);
    metrics::gauge!(SLO_TARGET_MS).set(slo_target_ms as f64);
    metrics::gauge!(SLO_TARGET_AVAILABILITY).set(availability_target_percent);
    metrics::counter!(SANDBOX_ESCAPES).absolute(0);
    metrics::counter!(SLO_VIOLATIONS).absolute(0);
    metrics::counter!(OVERLOADED_TOTAL).absolute(0);
    for kind in DENIAL_KINDS {
        metrics::counter!(DENIALS_TOTAL, "kind" => kind).absolute(0);
    }
    for kind in crate::ErrorKind::ALL {
        metrics::counter!(RUNS_TOTAL, "outcome" => kind.as_str()).absolute(0);
    }
    metrics::counter!(RUNS_TOTAL, "outcome" => "ok").absolute(0);
    Ok(())
}

/// Bytes of linear memory held by running sandboxes, across the process.
static LIVE_MEMORY: AtomicU64 = AtomicU64::new(0);

/// Adds (or, negative, removes) live linear memory.
pub(crate) fn live_memory_delta(delta: i64) {
    let now = if delta >= 0 {
        LIVE_MEMORY.fetch_add(delta as u64, Ordering::Relaxed) + delta as u64
    } else {
        LIVE_MEMORY.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed) - delta.unsigned_abs()
    };
    handles::with(|h| h.memory.set(now as f64 / (1024.0 * 1024.0)));
}

/// Counts one running sandbox for as long as it lives, cancellation included.
#[derive(Debug)]
pub(crate) struct LiveSandbox;

impl LiveSandbox {
    pub(crate) fn start() -> Self {
        handles::with(|h| h.sandboxes.increment(1.0));
        LiveSandbox
    }
}

impl Drop for LiveSandbox {
    fn drop(&mut self) {
        handles::with(|h| h.sandboxes.decrement(1.0));
    }
}

/// The `kind` labels of the denials counter, one per kind of refused
/// capability (the sandbox's `DenialKind` names; a test there keeps the
/// two lists equal).
pub const DENIAL_KINDS: [&str; 2] = ["network", "secret"];

/// What the metrics record of one finished run, as plain values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunFigures<'a> {
    /// `ok` or the error kind.
    pub outcome: &'static str,
    /// The module's id (the label keeps its first 12 characters).
    pub module_id: &'a str,
    /// Fuel the run consumed.
    pub fuel_consumed: u64,
    /// Its linear memory at the peak.
    pub peak_memory_bytes: u64,
    /// Its wall time.
    pub wall_time_us: u64,
}

/// Records a finished run, and one denial per entry of `denials` (their
/// kinds' names).
pub(crate) fn record_run(
    run: RunFigures<'_>,
    denials: impl IntoIterator<Item = &'static str>,
    slo_target_us: u64,
) {
    let id = run.module_id;
    let module = &id[..id.char_indices().nth(12).map_or(id.len(), |(i, _)| i)];
    handles::with(|h| {
        let (fuel, peak) = h.module(module);
        fuel.increment(run.fuel_consumed);
        peak.set(run.peak_memory_bytes as f64 / (1024.0 * 1024.0));
        h.runs(run.outcome).increment(1);
        h.duration.record(run.wall_time_us as f64 / 1e6);
        h.fuel.record(run.fuel_consumed as f64);
        if run.wall_time_us > slo_target_us {
            h.slo_violations.increment(1);
        }
        if run.outcome == crate::ErrorKind::Internal.as_str() {
            h.escapes.increment(1);
        }
        for kind in denials {
            h.denials(kind).increment(1);
        }
    })
}

/// Counts one secret read by `result`: `granted` (read from the provider),
/// `denied` (not granted, or refused by Vault), `error` (could not be read).
pub fn record_secret_read(result: &'static str) {
    metrics::counter!(SECRET_READS_TOTAL, "result" => result).increment(1);
}

/// Records a request refused at capacity.
pub fn record_overloaded() {
    metrics::counter!(OVERLOADED_TOTAL).increment(1);
}
