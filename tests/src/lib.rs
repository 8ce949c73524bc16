//! Shared pieces of chassis's end-to-end tests and benchmarks: the guest
//! programs under `modules/`, built for `wasm32-wasip2` by this crate's build
//! script and named by constant.

pub mod etcd;
pub mod openbao;
pub mod otlp;
pub mod pki;
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

/// A component that takes cranelift a long time to compile (`functions`
/// functions of straight-line arithmetic each) and does nothing else: it
/// implements no world chassis runs, so registering it compiles it and is
/// then refused `invalid-module`. `tag` makes distinct bytes, so each copy
/// is compiled afresh. For exercising how compiles share the machine.
pub fn slow_to_compile(functions: usize, tag: u32) -> Vec<u8> {
    let mut text = String::from("(component (core module\n");
    for f in 0..functions {
        text.push_str(&format!(
            "(func (export \"f{f}\") (param i32) (result i32) local.get 0\n"
        ));
        for i in 0..64 {
            text.push_str(&format!(
                "i32.const {} i32.add i32.const {} i32.mul\n",
                i + tag,
                f + 3
            ));
        }
        text.push_str(")\n");
    }
    text.push_str("))");
    wat::parse_str(&text).expect("generated WAT parses")
}
