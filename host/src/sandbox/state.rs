//! What a sandbox's wasmtime `Store` holds, and the host imports it serves.

use std::time::Instant;

use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::bindings::chassis::agent::{host, types};
use super::limiter::Limiter;
use super::log::LogBuffer;

/// The per-run state behind every host import.
pub struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) logs: LogBuffer,
    started: Instant,
}

impl SandboxState {
    /// State for one run: its WASI context, memory limit and log budget.
    pub(crate) fn new(wasi: WasiCtx, memory_limit: u64, log_records: u64) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(memory_limit),
            logs: LogBuffer::new(log_records),
            started: Instant::now(),
        }
    }
}

impl std::fmt::Debug for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxState")
            .field("limiter", &self.limiter)
            .field("logs", &self.logs)
            .finish_non_exhaustive()
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

impl types::Host for SandboxState {}

impl host::Host for SandboxState {
    fn log(&mut self, level: host::Level, message: String, fields: Vec<host::Field>) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let fields = fields.into_iter().map(|f| (f.key, f.value)).collect();
        self.logs.push(at_ms, level, message, fields);
    }

    fn secret(&mut self, name: String) -> Result<String, host::SecretError> {
        // Deny by default: no secret is granted unless a policy names it.
        Err(host::SecretError::Denied(format!(
            "no secret named `{name}` is granted to this run"
        )))
    }
}
