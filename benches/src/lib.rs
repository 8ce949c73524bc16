//! Benchmarks of chassis next to peers measured in the same run; see
//! `benches/` and `cargo xtask bench`, which writes BENCHMARKS.md.
