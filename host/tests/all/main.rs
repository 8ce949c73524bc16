//! The integration tests of the `chassis` crate, in one binary: each area
//! is a module, and they share one harness (`common`). One binary links
//! wasmtime, tonic and etcd-client once instead of once per area.

mod common;

mod audit_log;
mod cli;
mod command_parity;
mod coord_etcd;
mod deploy;
mod grpc_api;
mod grpc_overload;
mod grpc_tls;
mod load;
mod new_agent;
mod runbooks;
mod secrets_cli;
mod secrets_vault;
mod serve_binary;
