//! A chassis host: the engine, the module store and the runner, with the
//! host's caps applied to every run.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::engine::{Engine, EngineConfig, EngineError};
use crate::error::ErrorKind;
use crate::modules::{Module, ModuleError, ModuleStore};
use crate::policy::Policy;
use crate::sandbox::{
    HostCaps, Limits, LimitsError, LimitsRequest, LinkerError, RunReport, Runner,
};

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
}

impl HostError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// Builds a [`Host`]; the defaults are the seed's production caps with an
/// in-memory module store.
#[derive(Debug, Clone, Default)]
pub struct HostBuilder {
    caps: HostCaps,
    engine: EngineConfig,
    data_dir: Option<PathBuf>,
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

    /// Keep compiled artifacts and keys under `dir` instead of in memory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Starts the host.
    pub fn build(self) -> Result<Host, HostError> {
        let engine = Engine::new(
            self.engine
                .with_max_memory_bytes(self.caps.max_memory_bytes),
        )?;
        let runner = Runner::new(engine.clone())?;
        let modules = match &self.data_dir {
            Some(dir) => ModuleStore::open(engine, runner.linker(), dir)?,
            None => ModuleStore::in_memory(engine, runner.linker())?,
        };
        Ok(Host {
            caps: self.caps,
            runner,
            modules: Arc::new(modules),
        })
    }
}

/// A running chassis host.
#[derive(Debug, Clone)]
pub struct Host {
    caps: HostCaps,
    runner: Runner,
    modules: Arc<ModuleStore>,
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
    /// The policy does not allow this module or this caller.
    #[error("policy `{policy}` denies this run: {reason}")]
    Denied {
        /// The policy in force.
        policy: String,
        /// Why.
        reason: String,
    },
}

impl StartError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StartError::Limits { .. } => ErrorKind::InvalidRequest,
            StartError::Denied { .. } => ErrorKind::PolicyDenied,
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
}

impl RunRequest {
    /// A local run of `input` under the deny-all policy and host limits.
    pub fn new(input: impl Into<Vec<u8>>) -> Self {
        Self {
            input: input.into(),
            policy: Arc::new(Policy::deny_all()),
            caller: crate::policy::LOCAL_CALLER.into(),
            limits: LimitsRequest::default(),
        }
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
    pub fn modules(&self) -> &ModuleStore {
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
        Ok(self
            .runner
            .run(module, request.input, &limits, policy)
            .await)
    }
}
