//! Shared pieces of chassis's end-to-end tests and benchmarks: the guest
//! programs under `modules/`, built for `wasm32-wasip2` by this crate's build
//! script and named by constant.

pub mod etcd;
pub mod openbao;
pub mod otlp;
pub mod postgres;

/// Paths of the built guests, one constant per guest.
pub mod programs {
    include!(concat!(env!("OUT_DIR"), "/programs.rs"));
}

/// Reads a built guest's bytes.
pub fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading guest {path}: {e}"))
}

pub mod vault_double;
