//! Which world a component implements, decided once at registration.

use std::fmt;

use serde::Serialize;
use wasmtime::component::{Component, InstancePre};
use wasmtime_wasi::p2::bindings::CommandPre;

use super::ModuleError;
use crate::sandbox::SandboxState;
use crate::sandbox::bindings::AgentPre;

/// The worlds chassis runs, as named in errors and listings.
pub const ACCEPTED_WORLDS: &str =
    "`chassis:agent/agent` (exports `run`) or `wasi:cli/command` (exports `wasi:cli/run`)";

/// The contract a module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// An SDK agent: exports `run(input) -> result<output, agent-error>`.
    Agent,
    /// A WASI command (`fn main`): input on stdin, output on stdout.
    Command,
}

impl World {
    /// The name used in listings and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Agent => "agent",
            World::Command => "command",
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A module ready to instantiate: imports resolved, exports type-checked.
#[derive(Clone)]
pub enum Prepared {
    /// An agent.
    Agent(AgentPre<SandboxState>),
    /// A command.
    Command(CommandPre<SandboxState>),
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prepared::Agent(_) => f.write_str("Prepared::Agent"),
            Prepared::Command(_) => f.write_str("Prepared::Command"),
        }
    }
}

impl Prepared {
    /// The world this preparation is for.
    pub fn world(&self) -> World {
        match self {
            Prepared::Agent(_) => World::Agent,
            Prepared::Command(_) => World::Command,
        }
    }
}

/// The names a component exports, for error messages.
pub(super) fn export_names(component: &Component) -> Vec<String> {
    let engine = component.engine();
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Decides the world from the exports and type-checks them.
pub(super) fn prepare(pre: InstancePre<SandboxState>) -> Result<Prepared, ModuleError> {
    let exports = export_names(pre.component());
    let has_run = exports.iter().any(|e| e == "run");
    let has_cli_run = exports.iter().any(|e| e.starts_with("wasi:cli/run@"));
    if has_run {
        return AgentPre::new(pre)
            .map(Prepared::Agent)
            .map_err(|e| ModuleError::WrongWorld {
                exports,
                detail: format!("its `run` export does not match `chassis:agent/agent`: {e:#}"),
            });
    }
    if has_cli_run {
        return CommandPre::new(pre)
            .map(Prepared::Command)
            .map_err(|e| ModuleError::WrongWorld {
                exports,
                detail: format!(
                    "its `wasi:cli/run` export does not match `wasi:cli/command`: {e:#}"
                ),
            });
    }
    Err(ModuleError::WrongWorld {
        exports,
        detail: "it exports neither `run` nor `wasi:cli/run`".into(),
    })
}
