//! A chassis host: the engine, the module store and the runner, with the
//! host's caps applied to every run.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::engine::{Engine, EngineConfig, EngineError};
use crate::error::ErrorKind;
use crate::modules::{Module, ModuleError, ModuleStore};
use crate::sandbox::{
    HostCaps, Limits, LimitsError, LimitsRequest, LinkerError, RunError, RunReport, Runner,
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
    /// The request asked for more than the host allows.
    #[error("invalid limits: {0}")]
    Limits(#[from] LimitsError),
}

impl StartError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidRequest
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

    /// The limits a run would get for `request`.
    pub fn limits_for(&self, request: &LimitsRequest) -> Result<Limits, LimitsError> {
        Limits::from_caps(&self.caps, request)
    }

    /// Runs `module` on `input` with the host caps tightened by `request`.
    pub async fn run(
        &self,
        module: &Module,
        input: Vec<u8>,
        request: &LimitsRequest,
    ) -> Result<RunReport, StartError> {
        let limits = self.limits_for(request)?;
        Ok(self.runner.run(module, input, &limits).await)
    }
}

/// Convenience for callers that treat a failed start like a failed run.
impl From<StartError> for RunError {
    fn from(e: StartError) -> Self {
        RunError::Internal {
            context: "starting the run",
            message: e.to_string(),
        }
    }
}
