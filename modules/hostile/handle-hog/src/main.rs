//! Hostile (command): creates wasi:http `fields` resources and keeps every
//! one, as many as stdin says (default 100,000). Each lives in the host's
//! resource table and costs host memory outside the guest's linear memory;
//! the host caps the table per run, so the run ends as `memory-limit`
//! instead of growing the host.
use std::io::Read;

fn main() {
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    let count: usize = input.trim().parse().unwrap_or(100_000);
    let mut kept = Vec::new();
    for _ in 0..count {
        kept.push(wasi::http::types::Fields::new());
    }
    println!("held {} fields", kept.len());
}
