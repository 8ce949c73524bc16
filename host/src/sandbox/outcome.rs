//! How a run ended: the typed error, the usage report, what was captured.

use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use super::denial::Denial;
use super::limiter::LimitHit;
use super::log::LogRecord;
use super::output::Captured;
use crate::error::ErrorKind;

/// Raised from the epoch callback when a run passes its wall-clock deadline.
#[derive(Debug, Clone, Copy, Error)]
#[error("wall-clock deadline exceeded")]
pub(crate) struct DeadlineHit;

/// Why a run did not produce output.
#[derive(Debug, Error)]
pub enum RunError {
    /// The guest burnt its whole fuel budget.
    #[error("out of fuel: the guest used its whole budget of {budget} units")]
    OutOfFuel {
        /// The budget it was given.
        budget: u64,
    },
    /// The guest ran past its wall-clock deadline.
    #[error("deadline exceeded: the run took longer than {}", humantime::format_duration(*timeout))]
    DeadlineExceeded {
        /// The deadline it was given.
        timeout: Duration,
    },
    /// The guest asked for more memory or table space than allowed and then failed.
    #[error("memory limit: {detail}")]
    MemoryLimit {
        /// Which limit, and what was asked.
        detail: String,
    },
    /// The guest trapped.
    #[error("trap: {message}")]
    Trap {
        /// wasmtime's description of the trap.
        message: String,
        /// The wasm call stack at the trap, innermost frame first.
        backtrace: Option<String>,
    },
    /// The agent returned an error on purpose.
    #[error("guest error `{code}`: {message}")]
    GuestError {
        /// The agent's code.
        code: String,
        /// The agent's message.
        message: String,
    },
    /// A WASI command exited with a non-zero status.
    #[error("guest exited with status {status}")]
    Exit {
        /// The exit status.
        status: i32,
    },
    /// The guest's result is larger than the run's output limit.
    #[error("output of {size} bytes is over the limit of {limit} bytes")]
    OutputLimit {
        /// Bytes returned.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The sandbox could not be set up as the policy asks (e.g. a mapped
    /// directory is missing on this host).
    #[error("cannot set up the sandbox: {message}")]
    Setup {
        /// What failed.
        message: String,
    },
    /// Every sandbox slot of the host is in use.
    #[error("host at capacity: {0}")]
    Overloaded(String),
    /// The host failed while setting up or tearing down the run.
    #[error("host error while {context}: {message}")]
    Internal {
        /// What the host was doing.
        context: &'static str,
        /// The underlying error.
        message: String,
    },
}

impl RunError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RunError::OutOfFuel { .. } => ErrorKind::OutOfFuel,
            RunError::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            RunError::MemoryLimit { .. } => ErrorKind::MemoryLimit,
            RunError::Trap { .. } => ErrorKind::Trap,
            RunError::GuestError { .. } | RunError::Exit { .. } => ErrorKind::GuestError,
            RunError::OutputLimit { .. } => ErrorKind::OutputLimit,
            RunError::Overloaded(_) => ErrorKind::Overloaded,
            RunError::Setup { .. } => ErrorKind::InvalidRequest,
            RunError::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// Turns a wasmtime error from instantiating or calling the guest into
    /// a typed outcome. `hit` is the limit the limiter saw, if any: a guest
    /// that failed after being refused memory failed *because* of the limit.
    pub(crate) fn classify(
        err: wasmtime::Error,
        hit: Option<LimitHit>,
        budget: Option<u64>,
        timeout: Duration,
    ) -> RunError {
        if err.downcast_ref::<DeadlineHit>().is_some() {
            return RunError::DeadlineExceeded { timeout };
        }
        if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return RunError::Exit { status: exit.0 };
        }
        if let Some(pool) = err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
            return RunError::Overloaded(pool.to_string());
        }
        if crate::engine::maps::is_out_of_mappings(&err) {
            return RunError::Overloaded(crate::engine::maps::out_of_mappings_message());
        }
        if let Some(detail) = host_limit(&err) {
            return RunError::MemoryLimit { detail };
        }
        let trap = err.downcast_ref::<wasmtime::Trap>().copied();
        match trap {
            Some(wasmtime::Trap::OutOfFuel) => {
                return RunError::OutOfFuel {
                    budget: budget.unwrap_or(u64::MAX),
                };
            }
            Some(wasmtime::Trap::Interrupt) => return RunError::DeadlineExceeded { timeout },
            _ => {}
        }
        if let Some(hit) = hit {
            return RunError::MemoryLimit {
                detail: match hit {
                    LimitHit::Memory { requested } => format!(
                        "the guest asked for {requested} bytes of linear memory and failed when refused"
                    ),
                    LimitHit::Table { requested } => format!(
                        "the guest asked for a table of {requested} elements and failed when refused"
                    ),
                },
            };
        }
        let backtrace = err
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|bt| bt.to_string());
        let message = match trap {
            Some(t) => t.to_string(),
            None => format!("{err:#}"),
        };
        RunError::Trap { message, backtrace }
    }
}

/// The host-memory limits a guest can hit through host calls, recognised by
/// wasmtime's messages (its error types for them are private; the version is
/// pinned, and a unit test holds the texts).
fn host_limit(err: &wasmtime::Error) -> Option<String> {
    let text = format!("{err:#}");
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        return Some(format!(
            "the guest passed more than {} bytes to the host in one call (a host call's arguments, or the run's result past the output cap)",
            super::HOSTCALL_BYTES
        ));
    }
    if text.contains("resource table has no free keys")
        || text.contains("store handle limit exceeded")
    {
        return Some(format!(
            "the guest holds more than {} host resources or handles at once",
            super::MAX_HANDLES
        ));
    }
    None
}

/// What a run consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Fuel units burnt.
    pub fuel_consumed: u64,
    /// Largest total linear memory, in bytes.
    pub peak_memory_bytes: u64,
    /// Wall time from store creation to the end of the call, in microseconds.
    pub wall_time_us: u64,
    /// Time the guest held a thread (wall time less pauses and yields), in microseconds.
    pub cpu_time_us: u64,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct RunReport {
    /// The run's id (set by [`Host::run`](crate::Host::run); empty for bare runner calls).
    pub run_id: String,
    /// The guest's output, or why there is none.
    pub result: Result<Vec<u8>, RunError>,
    /// What the run consumed.
    pub usage: Usage,
    /// What the guest wrote to stdout (for a command, this is also the output).
    pub stdout: Captured,
    /// What the guest wrote to stderr.
    pub stderr: Captured,
    /// Structured log records.
    pub logs: Vec<LogRecord>,
    /// Log records dropped over the cap.
    pub logs_dropped: u64,
    /// Capabilities the guest reached for and was refused.
    pub denials: Vec<Denial>,
    /// Denials past the kept ones, only counted.
    pub denials_dropped: u64,
}

impl RunReport {
    /// A report for a run that failed before the guest started.
    pub(crate) fn failed(error: RunError, started: std::time::Instant) -> Self {
        Self {
            run_id: String::new(),
            result: Err(error),
            usage: Usage {
                wall_time_us: started.elapsed().as_micros() as u64,
                ..Usage::default()
            },
            stdout: Captured::default(),
            stderr: Captured::default(),
            logs: Vec::new(),
            logs_dropped: 0,
            denials: Vec::new(),
            denials_dropped: 0,
        }
    }

    /// The outcome's kind name: `ok` or an [`ErrorKind`] name.
    pub fn outcome_name(&self) -> &'static str {
        match &self.result {
            Ok(_) => "ok",
            Err(e) => e.kind().as_str(),
        }
    }
}
