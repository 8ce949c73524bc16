//! The `chassis` command: parses the command line and hands it to the
//! command's module under [`cli`]; the library does the work.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
