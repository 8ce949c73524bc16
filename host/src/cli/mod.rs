//! The command line: one module per `chassis` command, each a clap
//! struct or enum with `run(self) -> Result<ExitCode>`. What several share
//! lives beside them: [`local`] (the data dir, a one-shot host, the secret
//! provider), [`remote`] (reaching a server, with TLS and mTLS) and
//! [`output`] (typed failures as text or JSON, and their exit codes).

mod audit;
mod client;
mod compile;
mod config;
mod load;
mod local;
mod new;
mod output;
mod policy;
mod remote;
mod run;
mod runbook;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chassis::ErrorKind;

/// Run untrusted WebAssembly components in sandboxes with fuel, memory,
/// wall-clock and capability limits.
///
/// Exit codes: 0 success; 1 usage or host failure; 2 bad arguments;
/// 10 invalid-module, 11 invalid-request, 12 policy-denied, 13 out-of-fuel,
/// 14 deadline-exceeded, 15 memory-limit, 16 trap, 17 guest-error,
/// 18 unavailable, 19 internal, 20 overloaded, 21 output-limit, 22 not-found
/// (the same kinds a server names in `chassis-error-kind`).
#[derive(Debug, Parser)]
#[command(name = "chassis", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a module once and print its output.
    ///
    /// MODULE is a component (`.wasm`, an SDK agent or a WASI command) or an
    /// artifact made by `chassis compile` with the same data dir. The output
    /// goes to stdout; guest logs, stdout (agents) and stderr go to stderr.
    Run(run::RunArgs),
    /// Compile a component ahead of time into a sealed `.cwasm`.
    ///
    /// The artifact loads only on hosts sharing this data dir's sealing key,
    /// and is also kept in the data dir's cache so later runs skip compiling.
    Compile(compile::CompileArgs),
    /// Check, explain and compare capability policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Serve the chassis.v1 gRPC API (health, reflection, metrics).
    ///
    /// With no config: 127.0.0.1:50051 plaintext, metrics on 127.0.0.1:9092,
    /// data under ./.chassis. SIGTERM or Ctrl-C stops accepting, lets runs
    /// finish for `server.shutdown_grace_seconds`, then interrupts the rest.
    Serve(serve::ServeArgs),
    /// Validate a configuration file.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Drive a chassis server from the shell.
    Client(client::ClientArgs),
    /// Check and run runbooks locally, or submit and follow them on a server.
    #[command(subcommand)]
    Runbook(runbook::RunbookCommand),
    /// Verify, read and re-key the tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run a module many times, in this process or against a server, and
    /// report throughput, latency percentiles, errors by kind, RSS per live
    /// sandbox, and fuel and memory per run.
    Load(load::LoadArgs),
    /// Start a new agent project in Rust, Python or JavaScript.
    ///
    /// Writes NAME/ with the agent (the `hello` example in that language),
    /// its SDK, the WIT it is built against and a `build.sh`, then prints
    /// the commands that build it and run it.
    New(new::NewArgs),
}

/// Parses the command line, runs the command, and turns its result into
/// the process's exit code.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("CHASSIS_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let result = match cli.command {
        Command::Run(args) => args.run(),
        Command::Compile(args) => args.run(),
        Command::Policy(command) => command.run(),
        Command::Serve(args) => args.run(),
        Command::Config(command) => command.run(),
        Command::Client(args) => args.run(),
        Command::Runbook(command) => command.run(),
        Command::Audit(command) => command.run(),
        Command::Load(args) => args.run(),
        Command::New(args) => args.run(),
    };
    match result {
        Ok(code) => code,
        // An invalid runbook is the typed `invalid-request` (exit 11),
        // as the server answers it.
        Err(e) if e.downcast_ref::<chassis::coord::RunbookError>().is_some() => {
            eprintln!("chassis: invalid-request: {}", causes(&e));
            output::exit_for(ErrorKind::InvalidRequest)
        }
        Err(e) => {
            eprintln!("chassis: error: {}", causes(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes joined by `: ` (as `{:#}` does), leaving out a
/// cause whose text the cause before it already contains: many library
/// errors name their source in their own message, and `{:#}` would print
/// it again. Only the cause just before is compared, so a short cause is
/// never dropped for appearing somewhere unrelated earlier in the chain.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if previous.is_empty() || !previous.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        previous = text;
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn an_error_that_names_its_source_prints_it_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("creating the engine: {source}")]
        struct Engine {
            #[source]
            source: std::io::Error,
        }
        let io = std::io::Error::other("Cannot allocate memory");
        let e = anyhow::Error::new(Engine { source: io }).context("a local host");
        assert_eq!(
            super::causes(&e),
            "a local host: creating the engine: Cannot allocate memory"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::causes(&plain), "outer: inner");
        // A cause that only happens to appear further up is kept.
        let unrelated = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::TimedOut))
            .context("reading the config")
            .context("the step `timed out` (a name) failed");
        assert_eq!(
            super::causes(&unrelated),
            "the step `timed out` (a name) failed: reading the config: timed out"
        );
    }

    #[test]
    fn the_help_names_every_exit_code() {
        let command = super::Cli::command();
        let about = command
            .get_long_about()
            .map(ToString::to_string)
            .unwrap_or_default();
        let about = about.split_whitespace().collect::<Vec<_>>().join(" ");
        for kind in chassis::ErrorKind::ALL {
            let named = format!("{} {}", kind.exit_code(), kind.as_str());
            assert!(
                about.contains(&named),
                "the help does not name `{named}`: {about}"
            );
        }
    }
}
