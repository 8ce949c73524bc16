//! Write chassis agents in Rust.
//!
//! An agent is a WebAssembly component that a chassis host runs in a sandbox:
//! it receives the request body as bytes and returns the response body, or an
//! [`Error`] that the host reports as the `guest-error` outcome. This crate
//! hides the component-model bindings: implement [`Agent`] and call
//! [`export_agent!`] once.
//!
//! # The author loop
//!
//! 1. Write the agent (a `cdylib` crate depending on `chassis-guest`):
//!
//! ```ignore
//! use chassis_guest::{Agent, Error, export_agent, log};
//!
//! struct Hello;
//!
//! impl Agent for Hello {
//!     fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
//!         let name = String::from_utf8(input).map_err(|_| Error::new("bad-input", "name must be UTF-8"))?;
//!         log::info("greeting", &[("name", &name)]);
//!         Ok(format!("Hello, {name}!").into_bytes())
//!     }
//! }
//!
//! export_agent!(Hello);
//! ```
//!
//! 2. Build it: `cargo build --release --target wasm32-wasip2` (once:
//!    `rustup target add wasm32-wasip2`).
//! 3. Run it: `chassis run target/wasm32-wasip2/release/hello.wasm --input world`.
//!
//! The guest may use the Rust standard library as usual; filesystem, network
//! and environment are empty unless the run's policy grants them.

#[doc(hidden)]
pub mod bindings {
    //! Generated component-model bindings; use the crate root instead.
    wit_bindgen::generate!({
        world: "agent",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_agent_world",
        default_bindings_module: "chassis_guest::bindings",
        generate_all,
    });
}

/// An error returned by an agent on purpose.
///
/// The host reports it as the `guest-error` outcome and passes `code` and
/// `message` to the caller unchanged, so choose a stable `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// A short machine-readable code, e.g. `bad-input`.
    pub code: String,
    /// A message for the person who submitted the run.
    pub message: String,
}

impl Error {
    /// Makes an error from a stable `code` and a human-readable `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<Error> for bindings::chassis::agent::types::AgentError {
    fn from(e: Error) -> Self {
        Self {
            code: e.code,
            message: e.message,
        }
    }
}

/// The one trait an agent implements.
pub trait Agent {
    /// Handles one request. `input` is the request body; the returned bytes
    /// are the response body.
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error>;
}

/// Why [`secret`] returned no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The run's policy grants no secret of this name.
    Denied(String),
    /// The secret is granted but could not be read right now.
    Unavailable(String),
}

/// Returns the secret the run's policy grants under `name`.
///
/// Anything the policy does not name is [`SecretError::Denied`]. If the
/// agent writes the value to stdout, stderr or the log, the host redacts it.
pub fn secret(name: &str) -> Result<String, SecretError> {
    use bindings::chassis::agent::host;
    host::secret(name).map_err(|e| match e {
        host::SecretError::Denied(m) => SecretError::Denied(m),
        host::SecretError::Unavailable(m) => SecretError::Unavailable(m),
    })
}

/// Structured logging through the host, attributed to the current run.
pub mod log {
    use crate::bindings::chassis::agent::host::{self, Field, Level};

    fn emit(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<Field> = fields
            .iter()
            .map(|(k, v)| Field {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect();
        host::log(level, message, &fields);
    }

    /// Logs at trace level.
    pub fn trace(message: &str, fields: &[(&str, &str)]) {
        emit(Level::Trace, message, fields)
    }
    /// Logs at debug level.
    pub fn debug(message: &str, fields: &[(&str, &str)]) {
        emit(Level::Debug, message, fields)
    }
    /// Logs at info level.
    pub fn info(message: &str, fields: &[(&str, &str)]) {
        emit(Level::Info, message, fields)
    }
    /// Logs at warn level.
    pub fn warn(message: &str, fields: &[(&str, &str)]) {
        emit(Level::Warn, message, fields)
    }
    /// Logs at error level.
    pub fn error(message: &str, fields: &[(&str, &str)]) {
        emit(Level::Error, message, fields)
    }
}

/// Exports an [`Agent`] implementation as this component's `run`.
///
/// Call it once, at the crate root of a `cdylib` built for `wasm32-wasip2`.
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        #[doc(hidden)]
        struct __ChassisAgentExport;

        impl $crate::bindings::Guest for __ChassisAgentExport {
            fn run(
                input: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                $crate::bindings::chassis::agent::types::AgentError,
            > {
                <$agent as $crate::Agent>::run(input).map_err(::core::convert::Into::into)
            }
        }

        $crate::bindings::__export_agent_world!(__ChassisAgentExport with_types_in $crate::bindings);
    };
}
