//! chassis: run untrusted WebAssembly components in sandboxes with fuel,
//! memory, wall-clock and capability limits.
//!
//! The library is the product; the `chassis` binary is a thin shell over it.
//! Start with [`Host::builder`], register a component with
//! [`ModuleStore::register`](modules::ModuleStore::register), and call
//! [`Host::run`].
//!
//! Dependencies point one way: `host` -> `sandbox` -> `policy`/`modules` -> `engine`.

pub mod audit;
pub mod config;
pub mod coord;
pub mod disk;
pub mod engine;
pub mod error;
pub mod grpc;
mod host;
#[cfg(test)]
mod layering;
pub mod limits;
pub mod load;
pub mod modules;
pub mod policy;
pub mod sandbox;
pub mod secrets;
pub mod server;
pub mod slots;
pub mod telemetry;

pub use error::ErrorKind;
pub use host::{Host, HostBuilder, HostError, RunRequest, StartError};
