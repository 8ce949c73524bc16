//! Preparing components against the sandbox's linker, once, at
//! registration: the module store asks through [`Preparer`], and a run
//! reads back the [`WorldPre`] it made.

use std::sync::Arc;

use wasmtime::component::{Component, Linker};
use wasmtime_wasi::p2::bindings::CommandPre;

use super::SandboxState;
use super::bindings::AgentPre;
use crate::modules::{ModuleError, Prepared, Preparer, World, export_names};

/// A component ready to instantiate in a sandbox, by world.
#[derive(Clone)]
pub(crate) enum WorldPre {
    /// An agent.
    Agent(AgentPre<SandboxState>),
    /// A command.
    Command(CommandPre<SandboxState>),
}

/// Prepares components against one linker.
pub(crate) struct LinkerPreparer(pub(crate) Arc<Linker<SandboxState>>);

impl Preparer for LinkerPreparer {
    /// Decides the world from the exports and type-checks them.
    fn prepare(&self, component: &Component) -> Result<Prepared, ModuleError> {
        let pre = self
            .0
            .instantiate_pre(component)
            .map_err(|e| ModuleError::UnknownImport {
                detail: format!("{e:#}"),
            })?;
        let exports = export_names(component);
        let has_run = exports.iter().any(|e| e == "run");
        let has_cli_run = exports.iter().any(|e| e.starts_with("wasi:cli/run@"));
        if has_run {
            return AgentPre::new(pre)
                .map(|pre| Prepared::new(World::Agent, WorldPre::Agent(pre)))
                .map_err(|e| ModuleError::WrongWorld {
                    exports,
                    detail: format!("its `run` export does not match `chassis:agent/agent`: {e:#}"),
                });
        }
        if has_cli_run {
            return CommandPre::new(pre)
                .map(|pre| Prepared::new(World::Command, WorldPre::Command(pre)))
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
}
