//! The `chassis` command: a thin shell over the `chassis` library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use chassis::modules::artifact::MAGIC;
use chassis::policy::Policy;
use chassis::sandbox::{FuelRequest, LimitsRequest, RunReport};
use chassis::{ErrorKind, Host, RunRequest};

/// Run untrusted WebAssembly components in sandboxes with fuel, memory,
/// wall-clock and capability limits.
///
/// Exit codes of `chassis run`: 0 success; 1 usage or host failure; 2 bad
/// arguments; 10 invalid-module, 11 invalid-request, 12 policy-denied,
/// 13 out-of-fuel, 14 deadline-exceeded, 15 memory-limit, 16 trap,
/// 17 guest-error, 18 unavailable, 19 internal, 20 overloaded, 21 output-limit.
#[derive(Debug, Parser)]
#[command(name = "chassis", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a module once and print its output.
    ///
    /// MODULE is a component (`.wasm`, an SDK agent or a WASI command) or an
    /// artifact made by `chassis compile` with the same data dir. The output
    /// goes to stdout; guest logs, stdout (agents) and stderr go to stderr.
    Run(RunArgs),
    /// Compile a component ahead of time into a sealed `.cwasm`.
    ///
    /// The artifact loads only on hosts sharing this data dir's sealing key,
    /// and is also kept in the data dir's cache so later runs skip compiling.
    Compile(CompileArgs),
    /// Check, explain and compare capability policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate policy files; exits non-zero naming file, line and column of
    /// the first problem in each.
    Check {
        /// Policy files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Say in plain words what a module under this policy can do.
    Explain {
        /// The policy file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print the validated policy as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Capabilities added and removed from OLD to NEW, riskiest first.
    ///
    /// Exits 0 when nothing changed, 3 when something did (like `diff`).
    Diff {
        /// The policy before.
        #[arg(value_name = "OLD")]
        old: PathBuf,
        /// The policy after.
        #[arg(value_name = "NEW")]
        new: PathBuf,
        /// Print the changes as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct DataDirArg {
    /// Where compiled artifacts and keys live [default: $CHASSIS_DATA_DIR,
    /// else $XDG_DATA_HOME/chassis, else ~/.local/share/chassis].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The module to run.
    #[arg(value_name = "MODULE")]
    module: PathBuf,
    /// Input bytes, given as a string.
    #[arg(long, conflicts_with = "input_file", value_name = "STR")]
    input: Option<String>,
    /// Read the input from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// Fuel budget (about one unit per wasm instruction), or `off` for none.
    #[arg(long, value_name = "N|off", value_parser = parse_fuel)]
    fuel: Option<FuelRequest>,
    /// Linear memory cap in MiB.
    #[arg(long, value_name = "MIB")]
    memory_mb: Option<u64>,
    /// Wall-clock deadline, e.g. `500ms`, `2s`, `1m`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Cap on captured stdout/stderr and on the output, in KiB.
    #[arg(long, value_name = "KIB")]
    output_kb: Option<u64>,
    /// Share of one core the guest may use, 1-100.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    cpu_percent: Option<u8>,
    /// Run under this capability policy (default: no capabilities at all).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Print the whole report (outcome, usage, limits, logs) as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data_dir: DataDirArg,
}

#[derive(Debug, Args)]
struct CompileArgs {
    /// The component to compile.
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// Where to write the sealed artifact.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    #[command(flatten)]
    data_dir: DataDirArg,
}

fn parse_fuel(text: &str) -> Result<FuelRequest, String> {
    match text {
        "off" | "unmetered" => Ok(FuelRequest::Unmetered),
        n => n
            .replace('_', "")
            .parse::<u64>()
            .map(FuelRequest::Budget)
            .map_err(|_| format!("`{n}` is not a whole number or `off`")),
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHASSIS_DATA_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("chassis");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/chassis"),
        None => PathBuf::from(".chassis"),
    }
}

impl DataDirArg {
    fn resolve(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHASSIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Compile(args) => compile(args),
        Command::Policy(command) => policy(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chassis: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn one_shot_host(data_dir: &Path) -> Result<Host> {
    Host::builder()
        .pool_slots(2)
        .warm_slots(0)
        .data_dir(data_dir)
        .build()
        .with_context(|| format!("starting a host with data dir {}", data_dir.display()))
}

fn exit_for(kind: ErrorKind) -> ExitCode {
    ExitCode::from(kind.exit_code() as u8)
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let input = match (&args.input, &args.input_file) {
        (Some(s), _) => s.clone().into_bytes(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
            buf
        }
        (None, Some(p)) => {
            std::fs::read(p).with_context(|| format!("reading input file {}", p.display()))?
        }
        (None, None) => Vec::new(),
    };
    let limits = LimitsRequest {
        fuel: args.fuel,
        memory_bytes: args.memory_mb.map(|m| m.saturating_mul(1024 * 1024)),
        timeout: args.timeout,
        output_bytes: args.output_kb.map(|k| k.saturating_mul(1024)),
        log_records: None,
        cpu_percent: args.cpu_percent,
    };
    let policy = match &args.policy {
        Some(path) => match Policy::load(path) {
            Ok(p) => p,
            Err(e) => return Ok(fail(args.json, path, e.kind(), &e.to_string())),
        },
        None => Policy::deny_all(),
    };
    let request = RunRequest::new(input)
        .policy(std::sync::Arc::new(policy))
        .limits(limits);
    let host = one_shot_host(&args.data_dir.resolve())?;
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("reading module {}", args.module.display()))?;
    let registered = if bytes.starts_with(MAGIC) {
        host.modules().load_artifact(&args.module)
    } else {
        host.modules().register(&bytes)
    };
    let module = match registered {
        Ok(m) => m,
        Err(e) => return Ok(fail(args.json, &args.module, e.kind(), &e.to_string())),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let limits = match host.limits_for(&request) {
        Ok(l) => l,
        Err(e) => return Ok(fail(args.json, &args.module, e.kind(), &e.to_string())),
    };
    let policy_name = request.policy.name.clone();
    let report = match runtime.block_on(host.run(&module, request)) {
        Ok(report) => report,
        Err(e) => return Ok(fail(args.json, &args.module, e.kind(), &e.to_string())),
    };
    if args.json {
        let json = report_json(&args.module, &module, &policy_name, &limits, &report);
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print_human(&module, &report)?;
    }
    Ok(match &report.result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => exit_for(e.kind()),
    })
}

fn fail(json: bool, path: &Path, kind: ErrorKind, message: &str) -> ExitCode {
    if json {
        let value = serde_json::json!({
            "module_path": path.display().to_string(),
            "outcome": kind.as_str(),
            "error": { "kind": kind.as_str(), "message": message },
        });
        println!("{value:#}");
    } else {
        eprintln!("chassis: {kind}: {}: {message}", path.display());
    }
    exit_for(kind)
}

fn print_human(module: &chassis::modules::Module, report: &RunReport) -> Result<()> {
    let mut err = std::io::stderr().lock();
    for log in &report.logs {
        let fields: Vec<String> = log.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            err,
            "[{:>5}] {} {}",
            log.level,
            log.message,
            fields.join(" ")
        )?;
    }
    for d in &report.denials {
        writeln!(
            err,
            "[ deny] {} {}: {}",
            d.kind.as_str(),
            d.target,
            d.reason
        )?;
    }
    if report.logs_dropped > 0 {
        writeln!(
            err,
            "[ note] {} more log records dropped over the cap",
            report.logs_dropped
        )?;
    }
    if module.world() == chassis::modules::World::Agent && !report.stdout.bytes.is_empty() {
        err.write_all(&report.stdout.bytes)?;
    }
    err.write_all(&report.stderr.bytes)?;
    match &report.result {
        Ok(output) => {
            let mut out = std::io::stdout().lock();
            out.write_all(output)?;
            if !output.ends_with(b"\n") && !output.is_empty() {
                out.write_all(b"\n")?;
            }
        }
        Err(e) => {
            writeln!(err, "chassis: {}: {e}", e.kind())?;
            if let chassis::sandbox::RunError::Trap {
                backtrace: Some(bt),
                ..
            } = e
            {
                writeln!(err, "{bt}")?;
            }
            let u = &report.usage;
            writeln!(
                err,
                "chassis: usage: fuel {} | peak memory {} KiB | wall {} µs",
                u.fuel_consumed,
                u.peak_memory_bytes / 1024,
                u.wall_time_us
            )?;
        }
    }
    Ok(())
}

fn report_json(
    path: &Path,
    module: &chassis::modules::Module,
    policy: &str,
    limits: &chassis::sandbox::Limits,
    report: &RunReport,
) -> serde_json::Value {
    let (output, error) = match &report.result {
        Ok(out) => match std::str::from_utf8(out) {
            Ok(text) => (serde_json::json!({ "utf8": text }), serde_json::Value::Null),
            Err(_) => (
                serde_json::json!({ "hex": hex::encode(out) }),
                serde_json::Value::Null,
            ),
        },
        Err(e) => {
            let mut err =
                serde_json::json!({ "kind": e.kind().as_str(), "message": e.to_string() });
            match e {
                chassis::sandbox::RunError::Trap {
                    backtrace: Some(bt),
                    ..
                } => err["backtrace"] = bt.clone().into(),
                chassis::sandbox::RunError::Exit { status } => {
                    err["exit_status"] = (*status).into()
                }
                chassis::sandbox::RunError::GuestError { code, .. } => {
                    err["code"] = code.clone().into()
                }
                _ => {}
            }
            (serde_json::Value::Null, err)
        }
    };
    serde_json::json!({
        "module_path": path.display().to_string(),
        "module": module.info(),
        "policy": policy,
        "outcome": report.outcome_name(),
        "output": output,
        "error": error,
        "usage": report.usage,
        "limits": limits,
        "stdout": report.stdout,
        "stderr": report.stderr,
        "logs": report.logs,
        "logs_dropped": report.logs_dropped,
        "denials": report.denials,
        "denials_dropped": report.denials_dropped,
    })
}

fn compile(args: CompileArgs) -> Result<ExitCode> {
    let host = one_shot_host(&args.data_dir.resolve())?;
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    match host.modules().compile_to(&bytes, &args.output) {
        Ok(info) => {
            println!(
                "compiled {} ({}, sha256 {}) -> {}",
                args.input.display(),
                info.world,
                info.id,
                args.output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(fail(false, &args.input, e.kind(), &e.to_string())),
    }
}

fn policy(command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Check { files, json } => {
            let mut failed = false;
            let mut results = Vec::new();
            for file in &files {
                match Policy::load(file) {
                    Ok(p) => {
                        if !json {
                            println!("ok: {} (policy `{}`)", file.display(), p.name);
                        }
                        results.push(
                            serde_json::json!({ "file": file, "ok": true, "policy": p.name }),
                        );
                    }
                    Err(e) => {
                        failed = true;
                        if !json {
                            eprintln!("error: {e}");
                        }
                        let mut entry = serde_json::json!({ "file": file, "ok": false, "error": e.to_string() });
                        if let chassis::policy::PolicyError::Invalid {
                            line,
                            column,
                            message,
                            ..
                        } = &e
                        {
                            entry["line"] = (*line).into();
                            entry["column"] = (*column).into();
                            entry["message"] = message.clone().into();
                        }
                        results.push(entry);
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            }
            Ok(if failed {
                exit_for(ErrorKind::InvalidRequest)
            } else {
                ExitCode::SUCCESS
            })
        }
        PolicyCommand::Explain { file, json } => {
            let policy = match Policy::load(&file) {
                Ok(p) => p,
                Err(e) => return Ok(fail(json, &file, e.kind(), &e.to_string())),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&policy)?);
            } else {
                print!("{}", chassis::policy::explain(&policy));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Diff { old, new, json } => {
            let load = |p: &Path| Policy::load(p);
            let (before, after) = match (load(&old), load(&new)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) => return Ok(fail(json, &old, e.kind(), &e.to_string())),
                (_, Err(e)) => return Ok(fail(json, &new, e.kind(), &e.to_string())),
            };
            let changes = chassis::policy::diff(&before, &after);
            if json {
                println!("{}", serde_json::to_string_pretty(&changes)?);
            } else if changes.is_empty() {
                println!(
                    "no capability changes from {} to {}",
                    old.display(),
                    new.display()
                );
            } else {
                println!(
                    "capability changes from {} to {}:",
                    old.display(),
                    new.display()
                );
                for change in &changes {
                    println!("  {change}");
                }
                let high = changes
                    .iter()
                    .filter(|c| c.risk == chassis::policy::Risk::High)
                    .count();
                if high > 0 {
                    println!("\n{high} high-risk change(s): review these before merging.");
                }
            }
            Ok(if changes.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}
