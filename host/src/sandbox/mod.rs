//! One run of one module in its own sandbox.
//!
//! Each run gets a fresh wasmtime `Store` holding: a WASI context built from
//! nothing (no env, args, preopens or sockets; stdout and stderr captured
//! with a byte cap), a resource limiter for memory and tables, a fuel budget,
//! and an epoch deadline. The outcome is a [`RunReport`] whose error, if any,
//! has a stable [`ErrorKind`](crate::error::ErrorKind). Nothing a guest does
//! can make the host panic or stop serving.

pub mod bindings;
mod bounded;
mod cpu;
mod denial;
mod http;
mod limiter;
pub use crate::limits;
mod log;
mod lookup;
mod outcome;
mod output;
mod preopen;
mod prepare;
mod sockets;
mod state;

use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

pub use denial::{Denial, DenialCounters, DenialKind, MAX_DENIAL_REASON, MAX_DENIAL_TARGET};
pub use limiter::{LimitHit, MAX_TABLE_ELEMENTS};
pub use limits::{FuelRequest, HostCaps, Limits, LimitsError, LimitsRequest};
pub use log::{LogRecord, MAX_LOG_BYTES_PER_RUN, MAX_LOG_FIELDS, MAX_LOG_KEY, MAX_LOG_TEXT};
pub use lookup::{
    LOOKUP_TIMEOUT, MAX_LOOKUPS_IN_FLIGHT, NameResolver, ResolveFuture, SystemResolver,
};
pub use outcome::{RunError, RunReport, Usage};
pub use output::{CappedPipe, Captured, Tap, TapEvent};
pub use sockets::MAX_SOCKETS_PER_RUN;
pub use state::SandboxState;

use crate::engine::Engine;
use crate::modules::{Module, World};
use crate::policy::{Mode, Policy};
use crate::secrets::Granted;
use cpu::CpuMeter;
pub(crate) use denial::DenialLog;
use limiter::Limiter;
use log::LogBuffer;
use outcome::DeadlineHit;
use prepare::{LinkerPreparer, WorldPre};

/// The linker could not be built (a wasmtime or WASI version mismatch).
#[derive(Debug, Error)]
#[error("building the host linker: {0}")]
pub struct LinkerError(String);

/// Builds the imports every sandbox may link against: WASI 0.2 (with
/// chassis's own `wasi:sockets/ip-name-lookup`), `wasi:http` and the
/// `chassis:agent/host` interface. What a guest can actually *do* with WASI
/// is decided per run by its WASI context and policy, not here.
pub fn linker(engine: &Engine) -> Result<Linker<SandboxState>, LinkerError> {
    let mut linker = Linker::new(engine.wasmtime());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| LinkerError(format!("{e:#}")))?;
    sockets::add_to_linker(&mut linker).map_err(|e| LinkerError(format!("{e:#}")))?;
    lookup::add_to_linker(&mut linker).map_err(|e| LinkerError(format!("{e:#}")))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| LinkerError(format!("{e:#}")))?;
    bindings::Agent::add_to_linker::<_, HasSelf<SandboxState>>(&mut linker, |s| s)
        .map_err(|e| LinkerError(format!("{e:#}")))?;
    Ok(linker)
}

/// Runs modules in fresh sandboxes on one engine.
#[derive(Clone)]
pub struct Runner {
    engine: Engine,
    linker: Arc<Linker<SandboxState>>,
    denials: Arc<DenialCounters>,
    resolver: Arc<dyn NameResolver>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner on `engine` with the standard linker.
    pub fn new(engine: Engine) -> Result<Self, LinkerError> {
        let linker = Arc::new(linker(&engine)?);
        Ok(Self {
            engine,
            linker,
            denials: Arc::new(DenialCounters::default()),
            resolver: Arc::new(SystemResolver),
        })
    }

    /// Resolves the names policies list with `resolver` instead of the
    /// system's (tests use this to see exactly which names are asked).
    pub fn with_name_resolver(mut self, resolver: Arc<dyn NameResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Capability denials so far, by kind, across every run.
    pub fn denial_counters(&self) -> &DenialCounters {
        &self.denials
    }

    /// What the module store prepares components with: this runner's
    /// linker.
    pub fn preparer(&self) -> Arc<dyn crate::modules::Preparer> {
        Arc::new(LinkerPreparer(self.linker.clone()))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs `module` once on `input` under `limits`, with exactly the
    /// capabilities `policy` grants.
    ///
    /// An agent receives `input` as the argument of `run`; a command receives
    /// it on stdin and its stdout becomes the output. Never panics on guest
    /// behaviour: every failure is in the report's `result`.
    ///
    /// With a `tap`, guest logs and kept stdout/stderr are also sent there as
    /// they happen.
    ///
    /// `secrets` are the values read for the policy's grants: the guest gets
    /// them from `secret(name)` (and as environment variables where a grant
    /// says `env`), and every one of them is redacted from its stdout,
    /// stderr, logs, output and error.
    pub async fn run(
        &self,
        module: &Module,
        input: Vec<u8>,
        limits: &Limits,
        policy: &Arc<Policy>,
        tap: Option<Tap>,
        secrets: Granted,
    ) -> RunReport {
        let denials = self.denial_log(secrets.redactor().clone());
        self.run_recording(module, input, limits, policy, tap, secrets, denials)
            .await
    }

    /// A fresh per-run denial log, counted in this runner's counters, that
    /// redacts the run's secret values from what it keeps.
    pub(crate) fn denial_log(&self, redactor: Arc<crate::secrets::Redactor>) -> DenialLog {
        DenialLog::new(self.denials.clone(), redactor)
    }

    /// [`run`](Self::run), recording denials into `denials`, which the
    /// caller keeps: if the run is dropped mid-flight (the caller hung up),
    /// the denials so far are still there to audit.
    #[expect(
        clippy::too_many_arguments,
        reason = "run's arguments and the denial log"
    )]
    pub(crate) async fn run_recording(
        &self,
        module: &Module,
        input: Vec<u8>,
        limits: &Limits,
        policy: &Arc<Policy>,
        tap: Option<Tap>,
        secrets: Granted,
        denials: DenialLog,
    ) -> RunReport {
        let started = Instant::now();
        let _admitted = match self.engine.admit() {
            Ok(admitted) => admitted,
            Err(message) => return RunReport::failed(RunError::Overloaded(message), started),
        };
        let _live = crate::telemetry::LiveSandbox::start();
        let redactor = secrets.redactor().clone();
        let stdout = CappedPipe::new(limits.output_bytes)
            .with_tap(tap.clone(), TapEvent::Stdout)
            .with_redactor(&redactor);
        let stderr = CappedPipe::new(limits.output_bytes)
            .with_tap(tap.clone(), TapEvent::Stderr)
            .with_redactor(&redactor);
        let Some(prepared) = module.prepared().get::<WorldPre>() else {
            // Only a store opened with this runner's preparer hands it
            // modules; one from elsewhere is the host's mistake.
            return RunReport::failed(
                RunError::Internal {
                    context: "reading the module's preparation",
                    message: "the module was prepared by another host's linker".into(),
                },
                started,
            );
        };
        // One copy of the allowlist per run, shared by wasi:sockets and wasi:http.
        let network = Arc::new(policy.network.clone());
        let (wasi, input) = match wasi_context(
            module, policy, &secrets, &network, &stdout, &stderr, &denials, input,
        ) {
            Ok(built) => built,
            Err(e) => return RunReport::failed(e, started),
        };
        let lookups = lookup::NameLookups::new(&network, self.resolver.clone(), denials.clone());
        let gate = http::HttpGate::new(network, denials.clone());
        let state = SandboxState::new(
            wasi,
            gate,
            policy.clone(),
            Limiter::new(limits.memory_bytes),
            LogBuffer::new(limits.log_records)
                .with_tap(tap)
                .with_redactor(&redactor),
            denials.clone(),
            CpuMeter::new(started, limits.cpu_percent),
            started,
            secrets,
            lookups,
        );
        let mut store = Store::new(self.engine.wasmtime(), state);
        store.limiter(|s| &mut s.limiter);
        // Host memory a guest can make the host spend: what one call may copy
        // out of the guest (its arguments, or the run's result: room for the
        // output cap), and how many host resources and component handles it
        // may hold at once.
        store.set_hostcall_fuel(hostcall_bytes(limits.output_bytes));
        store.set_max_component_handles(MAX_HANDLES);
        // Without fuel metering (`runtime.metering = "epoch"`) the store has
        // no fuel to set, and the run's report says it used none.
        let metered = self.engine.config().metering() == crate::limits::Metering::Fuel;
        let budget = limits.fuel.unwrap_or(u64::MAX);
        let deadline = started + limits.timeout;
        let setup = match (metered, limits.fuel) {
            (true, _) => store.set_fuel(budget).map_err(|e| RunError::Internal {
                context: "setting the fuel budget",
                message: format!("{e:#}"),
            }),
            (false, None) => Ok(()),
            // `Host::run` never gets here (`Limits::resolve` refuses the
            // budget); a caller of the runner with limits of its own is
            // refused rather than run without the budget it asked for.
            (false, Some(asked)) => Err(RunError::Internal {
                context: "setting the fuel budget",
                message: format!(
                    "a budget of {asked} was asked of an engine that meters no fuel (runtime.metering = \"epoch\")"
                ),
            }),
        };
        // Every epoch tick the guest yields to other sandboxes on this
        // thread (pausing longer if over its CPU share) or, past its
        // deadline, stops; one that has held its thread for less than
        // `cpu::MIN_SLICE` runs on to the next tick.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let now = Instant::now();
            if now >= deadline {
                return Err(DeadlineHit.into());
            }
            let cpu = &mut ctx.data_mut().cpu;
            if cpu.slice(now) < cpu::MIN_SLICE {
                return Ok(UpdateDeadline::Continue(1));
            }
            let pause = cpu.tick(now).map(|p| p.min(deadline - now));
            Ok(UpdateDeadline::YieldCustom(1, cpu.yield_then_resume(pause)))
        });

        let raw = match setup {
            Err(e) => Err(e),
            Ok(()) => {
                let call = call_guest(&mut store, prepared, input);
                // The epoch callback stops busy guests; this stops guests
                // parked in a host call (a sleep, a blocked read).
                match tokio::time::timeout(limits.timeout, call).await {
                    Ok(Ok(result)) => Ok(result),
                    Ok(Err(e)) => Err(RunError::classify(
                        e,
                        store.data().limiter.hit(),
                        limits.fuel,
                        limits.timeout,
                    )),
                    Err(_) => Err(RunError::DeadlineExceeded {
                        timeout: limits.timeout,
                    }),
                }
            }
        };
        let remaining = if metered {
            store.get_fuel().unwrap_or(0)
        } else {
            budget
        };
        let wall = started.elapsed();
        let cpu_time = store.data().cpu.busy_until(Instant::now());
        let peak = store.data().limiter.peak_memory();
        let stdout_captured = stdout.take();
        let result = match raw {
            Err(e) => Err(e),
            Ok(GuestResult::Agent(Ok(output))) => {
                check_output(redact_output(&redactor, output), limits.output_bytes)
            }
            // The error is the guest's text and goes to the caller, the
            // audit log and the host's log: clipped and redacted like logs.
            Ok(GuestResult::Agent(Err(e))) => Err(RunError::GuestError {
                code: bounded::bounded(&e.code, MAX_ERROR_CODE, Some(&redactor)),
                message: bounded::bounded(&e.message, MAX_ERROR_MESSAGE, Some(&redactor)),
            }),
            Ok(GuestResult::CommandExited(true)) => Ok(stdout_captured.bytes.clone()),
            Ok(GuestResult::CommandExited(false)) => Err(RunError::Exit { status: 1 }),
        };
        let result = match (result, module.world()) {
            (Ok(out), crate::modules::World::Command) if stdout_captured.dropped > 0 => {
                Err(RunError::OutputLimit {
                    size: out.len() as u64 + stdout_captured.dropped,
                    limit: limits.output_bytes,
                })
            }
            (other, _) => other,
        };
        let state = store.into_data();
        let (logs, logs_dropped) = state.logs.into_parts();
        let (denials, denials_dropped) = denials.take();
        RunReport {
            run_id: String::new(),
            result,
            usage: Usage {
                fuel_consumed: budget - remaining.min(budget),
                peak_memory_bytes: peak,
                wall_time_us: wall.as_micros() as u64,
                cpu_time_us: cpu_time.as_micros() as u64,
            },
            stdout: stdout_captured,
            stderr: stderr.take(),
            logs,
            logs_dropped,
            denials,
            denials_dropped,
        }
    }
}

/// The most bytes one guest-to-host call may copy out of the guest
/// (wasmtime's "hostcall fuel", 128 MiB by default): 1 MiB for host calls,
/// or room for the run's whole result when the output cap is larger. A call
/// past it stops the run as `memory-limit`. Logs, secret names and stream
/// writes need far less: log text is clipped at 4 KiB, and WASI streams
/// write at most 4 KiB a call.
pub const HOSTCALL_BYTES: usize = 1024 * 1024;

/// Most resources (files, sockets, streams, HTTP fields...) and component
/// handles one run may hold at once (wasmtime's defaults: 1,000,000 and
/// 100,000). Each costs host memory outside the guest's linear memory.
pub const MAX_HANDLES: usize = 10_000;

/// Longest `guest-error` code kept from an agent's error.
pub const MAX_ERROR_CODE: usize = 128;
/// Longest `guest-error` message kept from an agent's error.
pub const MAX_ERROR_MESSAGE: usize = 4096;

fn hostcall_bytes(output_bytes: u64) -> usize {
    let result = usize::try_from(output_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024);
    HOSTCALL_BYTES.max(result)
}

/// Builds the guest's WASI context from the policy alone: nothing is
/// inherited from the host process. Returns the input left for `run`
/// (a command gets its input on stdin instead).
#[expect(clippy::too_many_arguments, reason = "one per source of the context")]
fn wasi_context(
    module: &Module,
    policy: &Policy,
    secrets: &Granted,
    network: &Arc<crate::policy::NetworkPolicy>,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
    denials: &DenialLog,
    input: Vec<u8>,
) -> Result<(wasmtime_wasi::WasiCtx, Vec<u8>), RunError> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_udp(false);
    wasi.envs(&policy.env.iter().collect::<Vec<_>>());
    // A granted secret becomes an environment variable only when its grant
    // names one; policy validation keeps these apart from `[env]`.
    for (name, grant) in &policy.secrets {
        if let (Some(var), Some(value)) = (&grant.env, secrets.get(name)) {
            wasi.env(var, value.expose());
        }
    }
    for p in &policy.preopens {
        let perms = match p.mode {
            Mode::ReadOnly => wasmtime_wasi::FsPerms::ReadOnly,
            Mode::ReadWrite => wasmtime_wasi::FsPerms::ReadWrite,
        };
        let setup = |e: String| RunError::Setup {
            message: format!(
                "policy `{}` maps {} to {}, but it cannot be opened: {e}",
                policy.name, p.host, p.guest
            ),
        };
        // Opened here without following symlinks, then handed over by fd:
        // a guest that replaced a root with a symlink cannot redirect it.
        let root = preopen::Root::open(&p.host).map_err(setup)?;
        wasi.preopened_dir(root.reopen_path(), &p.guest, perms)
            .map_err(|e| setup(format!("{e:#}")))?;
    }
    let network = network.clone();
    // Name lookups are served by `lookup` (listed names only), never by
    // wasmtime-wasi's resolver, which would answer any name.
    wasi.allow_tcp(!network.is_empty())
        .allow_ip_name_lookup(false);
    let denials = denials.clone();
    wasi.socket_addr_check(move |addr, usage| {
        let network = network.clone();
        let denials = denials.clone();
        Box::pin(async move {
            let verdict = match usage {
                wasmtime_wasi::sockets::SocketAddrUse::TcpConnect => {
                    network.check_connect(addr).await.map_err(|d| d.reason)
                }
                // A connect first binds the local end to an ephemeral port;
                // that is all a guest may bind.
                wasmtime_wasi::sockets::SocketAddrUse::TcpBind
                    if addr.ip().is_unspecified() && addr.port() == 0 =>
                {
                    Ok(())
                }
                other => Err(format!(
                    "{other:?} is never allowed; only outbound TCP connections can be granted"
                )),
            };
            match verdict {
                Ok(()) => true,
                Err(reason) => {
                    denials.record(DenialKind::Network, &addr.to_string(), &reason);
                    false
                }
            }
        })
    });
    match module.world() {
        World::Command => {
            wasi.stdin(MemoryInputPipe::new(input)).arg(module.id());
            Ok((wasi.build(), Vec::new()))
        }
        World::Agent => Ok((wasi.build(), input)),
    }
}

enum GuestResult {
    Agent(Result<Vec<u8>, bindings::chassis::agent::types::AgentError>),
    /// Whether the command's `run` returned success.
    CommandExited(bool),
}

async fn call_guest(
    store: &mut Store<SandboxState>,
    prepared: &WorldPre,
    input: Vec<u8>,
) -> wasmtime::Result<GuestResult> {
    match prepared {
        WorldPre::Agent(pre) => {
            let agent = pre.instantiate_async(&mut *store).await?;
            let result = agent.call_run(&mut *store, &input).await?;
            Ok(GuestResult::Agent(result))
        }
        WorldPre::Command(pre) => {
            let command = pre.instantiate_async(&mut *store).await?;
            match command.wasi_cli_run().call_run(&mut *store).await {
                Ok(result) => Ok(GuestResult::CommandExited(result.is_ok())),
                Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    Some(wasmtime_wasi::I32Exit(0)) => Ok(GuestResult::CommandExited(true)),
                    _ => Err(e),
                },
            }
        }
    }
}

/// The agent's result with secret values replaced: a caller is not owed a
/// secret just because the guest returned it.
fn redact_output(redactor: &crate::secrets::Redactor, output: Vec<u8>) -> Vec<u8> {
    if redactor.is_empty() {
        return output;
    }
    let output = zeroize::Zeroizing::new(output);
    redactor.redact_bytes(&output)
}

fn check_output(output: Vec<u8>, limit: u64) -> Result<Vec<u8>, RunError> {
    if output.len() as u64 > limit {
        return Err(RunError::OutputLimit {
            size: output.len() as u64,
            limit,
        });
    }
    Ok(output)
}
