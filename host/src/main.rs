//! The `chassis` command: parses the command line and hands it to the
//! command's module under [`cli`]; the library does the work.

mod cli;

/// The binary's allocator. Under glibc's malloc a served run spent ~12%
/// of the server's samples in malloc and free, much of it in
/// `malloc_consolidate` (buffers over 1 KiB taken and freed per run);
/// mimalloc's per-thread pages make a served run 10-15% cheaper. Built
/// `no_thp`: with huge pages its arenas fault in 2 MiB at a time, and each
/// purge and refault cleared a whole huge page (~10% of an audited load's
/// samples). The library leaves the allocator to its embedder.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
