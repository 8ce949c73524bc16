//! Which world a component implements, decided once at registration.

use std::fmt;

use std::any::Any;
use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::Component;

use super::ModuleError;

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
    /// Whether `export` is the entry point the host calls for this world.
    /// Every other export of a module is never called by the host, and no
    /// request can name one: toolchains add such exports (componentize-py's
    /// `exports` interface with `init`, componentize-qjs's `init`), and
    /// they are listed as the module's `ignored_exports`.
    pub fn is_entry(self, export: &str) -> bool {
        match self {
            World::Agent => export == "run",
            World::Command => export.starts_with("wasi:cli/run@"),
        }
    }

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

/// Turns a compiled component into the form a run instantiates: imports
/// resolved against the host's linker, exports type-checked for a world,
/// once, at registration (so a module with an unknown import or the wrong
/// world is refused when it is registered). The sandbox implements it: it
/// owns the linker and the state a store holds, which this module need not
/// know.
pub trait Preparer: Send + Sync {
    /// `component` prepared, or why it cannot run here
    /// ([`ModuleError::UnknownImport`], [`ModuleError::WrongWorld`]).
    fn prepare(&self, component: &Component) -> Result<Prepared, ModuleError>;
}

/// A module ready to instantiate, as its [`Preparer`] made it: opaque
/// here, read back by the sandbox with [`Prepared::get`].
#[derive(Clone)]
pub struct Prepared {
    world: World,
    inner: Arc<dyn Any + Send + Sync>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prepared({})", self.world)
    }
}

impl Prepared {
    /// `inner`, prepared for `world`.
    pub fn new<T: Any + Send + Sync>(world: World, inner: T) -> Self {
        Self {
            world,
            inner: Arc::new(inner),
        }
    }

    /// The world this preparation is for.
    pub fn world(&self) -> World {
        self.world
    }

    /// What the preparer made, when it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }
}

/// The names a component exports, for error messages.
pub fn export_names(component: &Component) -> Vec<String> {
    let engine = component.engine();
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}
