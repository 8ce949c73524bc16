//! What a sandbox's wasmtime `Store` holds, and the host imports it serves.

use std::sync::Arc;
use std::time::Instant;

use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::chassis::agent::{host, types};
use super::cpu::CpuMeter;
use super::denial::{DenialKind, DenialLog};
use super::http::HttpGate;
use super::limiter::Limiter;
use super::log::LogBuffer;
use super::lookup::NameLookups;
use crate::policy::Policy;
use crate::secrets::Granted;

/// The per-run state behind every host import.
pub struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    http_gate: HttpGate,
    policy: Arc<Policy>,
    pub(crate) limiter: Limiter,
    pub(crate) logs: LogBuffer,
    pub(crate) denials: DenialLog,
    pub(crate) cpu: CpuMeter,
    /// TCP sockets created so far (see `sockets.rs`).
    pub(crate) sockets_created: u32,
    started: Instant,
    secrets: Granted,
    pub(crate) lookups: NameLookups,
}

impl std::fmt::Debug for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxState")
            .field("policy", &self.policy.name)
            .field("limiter", &self.limiter)
            .field("logs", &self.logs)
            .finish_non_exhaustive()
    }
}

impl SandboxState {
    #[expect(clippy::too_many_arguments, reason = "one field each, called once")]
    pub(crate) fn new(
        wasi: WasiCtx,
        http_gate: HttpGate,
        policy: Arc<Policy>,
        limiter: Limiter,
        logs: LogBuffer,
        denials: DenialLog,
        cpu: CpuMeter,
        started: Instant,
        secrets: Granted,
        lookups: NameLookups,
    ) -> Self {
        Self {
            wasi,
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(super::MAX_HANDLES);
                table
            },
            http: WasiHttpCtx::new(),
            http_gate,
            policy,
            limiter,
            logs,
            denials,
            cpu,
            sockets_created: 0,
            started,
            secrets,
            lookups,
        }
    }
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for SandboxState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_gate,
        }
    }
}

impl types::Host for SandboxState {}

impl host::Host for SandboxState {
    fn log(&mut self, level: host::Level, message: String, fields: Vec<host::Field>) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|f| (f.key.as_str(), f.value.as_str()))
            .collect();
        self.logs.push(at_ms, level, &message, &fields);
    }

    fn secret(&mut self, name: String) -> Result<String, host::SecretError> {
        if self.policy.secrets.contains_key(&name) {
            // Every grant was read before the sandbox started; a missing
            // value would be a host bug, reported without failing the run.
            return match self.secrets.get(&name) {
                Some(value) => Ok(value.expose().to_string()),
                None => Err(host::SecretError::Unavailable(format!(
                    "secret `{name}` is granted but was not read for this run"
                ))),
            };
        }
        crate::telemetry::record_secret_read("denied");
        // The name is the guest's: the denial keeps a clipped, redacted copy
        // (it may be a granted value), and the guest is told what it asked.
        let target = self.denials.clip_target(&name);
        let reason = format!(
            "policy `{}` grants no secret named `{target}`",
            self.policy.name
        );
        self.denials.record(DenialKind::Secret, &target, &reason);
        Err(host::SecretError::Denied(reason))
    }
}
