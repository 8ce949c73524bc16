//! The `chassis` command: a thin shell over the `chassis` library.

mod runbook_cli;

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
    /// Serve the chassis.v1 gRPC API (health, reflection, metrics).
    ///
    /// With no config: 127.0.0.1:50051 plaintext, metrics on 127.0.0.1:9092,
    /// data under ./.chassis. SIGTERM or Ctrl-C stops accepting, lets runs
    /// finish for `server.shutdown_grace_seconds`, then interrupts the rest.
    Serve(ServeArgs),
    /// Validate a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Drive a chassis server from the shell.
    Client(ClientArgs),
    /// Check and run runbooks locally, or submit and follow them on a server.
    #[command(subcommand)]
    Runbook(runbook_cli::RunbookCommand),
    /// Verify, read and re-key the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run a module many times, in this process or against a server, and
    /// report throughput, latency percentiles, errors by kind, RSS per live
    /// sandbox, and fuel and memory per run.
    Load(LoadArgs),
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// The module (.wasm) to run.
    #[arg(long, value_name = "FILE")]
    module: PathBuf,
    /// Runs in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Stop after this many runs.
    #[arg(long, conflicts_with = "duration")]
    runs: Option<u64>,
    /// Stop after this long, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Input given to every run.
    #[arg(long, default_value = "")]
    input: String,
    /// Run under this policy file (local) or policy name (remote).
    #[arg(long)]
    policy: Option<String>,
    /// Load a server instead of this process, e.g. http://127.0.0.1:50051.
    #[arg(long, value_name = "ADDR")]
    remote: Option<String>,
    /// Linear memory cap per sandbox in MiB (also sizes the local pool).
    #[arg(long, default_value_t = 64)]
    memory_mb: u64,
    /// Fuel per run.
    #[arg(long, value_parser = parse_fuel)]
    fuel: Option<FuelRequest>,
    /// Deadline per run.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also draw a latency histogram and throughput-over-time chart.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    data_dir: DataDirArg,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the log: it starts at its genesis, every record chains to the
    /// one before, sequence numbers have no gaps, every checkpoint is
    /// signed for its place, a trusted key signed one, and the log reaches
    /// the checkpoint file. Exits 0 when the log is intact (reporting the
    /// unsigned tail); otherwise names the first bad record and why, and
    /// exits 1.
    Verify {
        /// Log files in order [default: every audit-*.jsonl in <data-dir>/audit].
        files: Vec<PathBuf>,
        /// A trusted public key (hex, or a file of hex keys), kept apart
        /// from the log; repeatable. Or `audit.trusted_keys` in --config.
        #[arg(long, value_name = "KEY|FILE")]
        pubkey: Vec<String>,
        /// Read `audit.trusted_keys` from this config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Trust <data-dir>/keys/audit.pub, which sits beside the log it
        /// judges: anyone who can rewrite the log can rewrite it too.
        #[arg(long)]
        trust_local_key: bool,
        /// Checkpoint file to detect truncation [default: <data-dir>/audit/audit.checkpoint when present].
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The files start after this checkpoint (where a verified, archived
        /// earlier segment ended) instead of at the genesis.
        #[arg(long, value_name = "FILE")]
        from_checkpoint: Option<PathBuf>,
        /// Fail when records follow the last signed checkpoint.
        #[arg(long)]
        require_signed_tail: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// With the server stopped: continue a log whose tail is behind its last
    /// signed checkpoint (records cut, or the checkpoint file lost), writing
    /// a signed `log.recovered` record that names the lost records.
    /// `chassis serve` refuses such a log until this is run.
    Recover {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Print records, filtered. A run's records name their context (module,
    /// policy, caller, limits) by number; it is shown filled in from the
    /// file's `run.context` record, also with --json (the files keep the
    /// compact lines the chain hashes).
    Show {
        /// Log files in order [default: every audit-*.jsonl in <data-dir>/audit].
        files: Vec<PathBuf>,
        /// Only this run id.
        #[arg(long)]
        run: Option<String>,
        /// Only this module (sha256).
        #[arg(long)]
        module: Option<String>,
        /// Only this caller.
        #[arg(long)]
        caller: Option<String>,
        /// Only this event kind, e.g. `run.ended`.
        #[arg(long)]
        kind: Option<String>,
        /// Print records as JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Generate a new signing key and record the rotation, signed by the old
    /// key and endorsed by the new one. Run it with the server stopped.
    RotateKey {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The configuration file (the seed's chassis.production.yaml format).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override `server.listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Override `policies_dir`.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Override `data_dir`.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a config file (with CHASSIS_* overrides applied); exits 11 naming the problem.
    Check {
        /// The file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print the effective configuration as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ClientArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print responses as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    call: ClientCall,
}

/// How to reach a chassis server.
#[derive(Debug, Args)]
pub(crate) struct RemoteArgs {
    /// Server address, e.g. http://127.0.0.1:50051 or https://chassis.example:50051.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:50051",
        env = "CHASSIS_ADDR"
    )]
    addr: String,
    /// CA bundle to verify the server (https).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate for mTLS.
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Client key for mTLS.
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Server name to verify, when it differs from the address's host.
    #[arg(long, global = true, value_name = "NAME")]
    server_name: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ClientCall {
    /// Upload a component; prints its sha256 id.
    Register {
        /// The .wasm file.
        file: PathBuf,
    },
    /// List registered modules.
    List,
    /// Remove a module.
    Remove {
        /// Its sha256 id.
        id: String,
    },
    /// List the server's policies.
    Policies,
    /// Run a registered module.
    Run {
        /// Its sha256 id.
        id: String,
        /// Policy name.
        #[arg(long, default_value = "")]
        policy: String,
        /// Input string.
        #[arg(long, default_value = "")]
        input: String,
        /// Stream logs and output as they happen.
        #[arg(long)]
        stream: bool,
        /// Deadline for the call (also bounds the run).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Fuel budget (tighter than the policy's).
        #[arg(long)]
        fuel: Option<u64>,
        /// Memory cap in MiB (tighter than the policy's).
        #[arg(long)]
        memory_mb: Option<u64>,
        /// CPU share, 1-100 (tighter than the policy's).
        #[arg(long)]
        cpu_percent: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate policy files; exits non-zero naming file, line and column of
    /// the first problem in each. Files given together are checked as one
    /// host's set: a root nested with another policy's rw root is refused.
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
    /// Read the secrets the policy grants from this local TOML file (mode
    /// 0600). Without it: Vault if VAULT_ADDR is set (token from
    /// VAULT_TOKEN), else <data-dir>/secrets.toml if it exists.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
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
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("CHASSIS_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Compile(args) => compile(args),
        Command::Policy(command) => policy(command),
        Command::Serve(args) => return serve(args),
        Command::Config(ConfigCommand::Check { file, json }) => config_check(&file, json),
        Command::Client(args) => client(args),
        Command::Runbook(command) => runbook_cli::command(command),
        Command::Audit(command) => audit(command),
        Command::Load(args) => load(args),
    };
    match result {
        Ok(code) => code,
        // An invalid runbook is the typed `invalid-request` (exit 11),
        // as the server answers it.
        Err(e) if e.downcast_ref::<chassis::coord::RunbookError>().is_some() => {
            eprintln!("chassis: invalid-request: {e:#}");
            exit_for(ErrorKind::InvalidRequest)
        }
        Err(e) => {
            eprintln!("chassis: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn one_shot_host(
    data_dir: &Path,
    secrets: Option<std::sync::Arc<dyn chassis::secrets::SecretProvider>>,
) -> Result<Host> {
    let mut builder = Host::builder()
        .pool_slots(2)
        .warm_slots(0)
        .data_dir(data_dir);
    if let Some(provider) = secrets {
        builder = builder.secrets(provider);
    }
    builder
        .build()
        .with_context(|| format!("starting a host with data dir {}", data_dir.display()))
}

/// `VAULT_TOKEN`, if set, held so it is wiped when dropped.
fn vault_token_from_env() -> Option<chassis::secrets::SecretValue> {
    std::env::var("VAULT_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| chassis::secrets::SecretValue::new(t.trim().to_string()))
}

/// The secret provider `chassis run` uses: `--secrets`, else the
/// environment's Vault, else `<data-dir>/secrets.toml`.
pub(crate) fn run_secrets(
    file: Option<&Path>,
    data_dir: &Path,
) -> Result<
    Option<std::sync::Arc<dyn chassis::secrets::SecretProvider>>,
    chassis::secrets::SecretError,
> {
    if let Some(file) = file {
        return Ok(Some(std::sync::Arc::new(
            chassis::secrets::LocalFileProvider::open(file)?,
        )));
    }
    let mut credentials = chassis::config::Credentials::default();
    for (var, value) in std::env::vars() {
        match var.as_str() {
            "VAULT_ADDR" => credentials.vault_addr = Some(value),
            "VAULT_NAMESPACE" => credentials.vault_namespace = Some(value),
            "VAULT_CACERT" => credentials.vault_cacert = Some(value.into()),
            _ => {}
        }
    }
    chassis::secrets::from_config(&credentials, data_dir, vault_token_from_env())
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
    let data_dir = args.data_dir.resolve();
    let secrets = if policy.secrets.is_empty() {
        None
    } else {
        match run_secrets(args.secrets.as_deref(), &data_dir) {
            Ok(provider) => provider,
            Err(e) => {
                let source = args.secrets.as_deref().unwrap_or(&args.module);
                return Ok(fail(args.json, source, e.kind(), &e.to_string()));
            }
        }
    };
    let request = RunRequest::new(input)
        .policy(std::sync::Arc::new(policy))
        .limits(limits);
    let host = one_shot_host(&data_dir, secrets)?;
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
    let report = runtime.block_on(host.run(&module, request));
    // Leases are revoked as the run ends; retry any that failed before exiting.
    let unrevoked = runtime.block_on(host.drain_leases(Duration::from_secs(10)));
    if !unrevoked.is_empty() {
        eprintln!(
            "chassis: warning: could not revoke lease(s) {}; they expire at their TTL",
            unrevoked.join(", ")
        );
    }
    let report = match report {
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
    let host = one_shot_host(&args.data_dir.resolve(), None)?;
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
            let mut loaded = Vec::new();
            for file in &files {
                match Policy::load(file) {
                    Ok(p) => {
                        if !json {
                            println!("ok: {} (policy `{}`)", file.display(), p.name);
                        }
                        results.push(
                            serde_json::json!({ "file": file, "ok": true, "policy": p.name }),
                        );
                        loaded.push(p);
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
            // Files checked together are policies one host would load
            // together: their roots must not nest with a rw root either.
            if let Err(e) = chassis::policy::check_roots(&loaded) {
                failed = true;
                if !json {
                    eprintln!("error: {e}");
                }
                results.push(serde_json::json!({ "ok": false, "error": e.to_string() }));
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

fn config_check(file: &Path, json: bool) -> Result<ExitCode> {
    match chassis::config::Config::load(file) {
        Ok(config) => {
            let secrets = match chassis::secrets::from_config(
                &config.credentials,
                &config.data_dir,
                vault_token_from_env(),
            ) {
                Ok(Some(provider)) => provider.describe(),
                Ok(None) => "none (no credentials.vault_addr and no local secrets file)".into(),
                Err(e) => {
                    // A configuration problem, whatever the provider's kind.
                    let message = format!("chassis.credentials: {e}");
                    return Ok(fail(json, file, ErrorKind::InvalidRequest, &message));
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&config)?);
            } else {
                println!(
                    "ok: {} (listen {}, pool {}..{}, memory {} MiB/sandbox, metrics {}, secrets {})",
                    file.display(),
                    config.server.listen,
                    config.sandbox_pool.min_size,
                    config.sandbox_pool.max_size,
                    config.runtime.max_memory_mb,
                    if config.metrics.enabled {
                        config.metrics.port.to_string()
                    } else {
                        "off".into()
                    },
                    secrets
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(fail(json, file, e.kind(), &e.to_string())),
    }
}

/// Sets up logging from `logging:` and, with an OTLP endpoint, traces
/// (spans of INFO and above from chassis, whatever the log level). Call it
/// inside the runtime that will carry the trace exporter; the returned
/// guard flushes queued spans when dropped.
fn init_logging(
    logging: &chassis::config::Logging,
    otlp_endpoint: Option<&str>,
) -> Result<Option<chassis::telemetry::traces::Traces>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter =
        EnvFilter::try_from_env("CHASSIS_LOG").unwrap_or_else(|_| EnvFilter::new(logging.filter()));
    let writer: tracing_subscriber::fmt::writer::BoxMakeWriter = match logging.output.as_str() {
        "stdout" => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
        "stderr" => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
        path => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {path} (logging.output)"))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match logging.format {
        chassis::config::LogFormat::Json => fmt.json().with_current_span(true).boxed(),
        chassis::config::LogFormat::Text => fmt.boxed(),
    };
    let (traces, otel) = match otlp_endpoint {
        Some(endpoint) => {
            let (traces, layer) = chassis::telemetry::traces::Traces::start(endpoint)?;
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target("chassis", tracing::Level::INFO);
            (Some(traces), Some(layer.with_filter(spans)))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    Ok(traces)
}

fn serve(args: ServeArgs) -> ExitCode {
    match serve_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        // An invalid runbook is the typed `invalid-request` (exit 11),
        // as the server answers it.
        Err(e) if e.downcast_ref::<chassis::coord::RunbookError>().is_some() => {
            eprintln!("chassis: invalid-request: {e:#}");
            exit_for(ErrorKind::InvalidRequest)
        }
        Err(e) => {
            eprintln!("chassis: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve_inner(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => chassis::config::Config::load(path)?,
        None => chassis::config::Config::from_env()?,
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = args.policies {
        config.policies_dir = Some(dir);
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate("command line")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let otlp = config.telemetry.endpoint();
    let traces = {
        let _enter = runtime.enter();
        init_logging(&config.logging, otlp.as_deref())?
    };
    if let Some(endpoint) = &otlp {
        tracing::info!(%endpoint, "sending traces over OTLP");
    }
    let policies = match &config.policies_dir {
        Some(dir) => chassis::policy::PolicySet::load_dir(dir)?,
        None => chassis::policy::PolicySet::default(),
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    chassis::disk::check_shared_filesystem(
        policies.iter().map(|p| p.as_ref()),
        &config.data_dir,
        config.runtime.allow_shared_filesystem,
    )?;
    let mut builder = Host::builder();
    let secrets = chassis::secrets::from_config(
        &config.credentials,
        &config.data_dir,
        vault_token_from_env(),
    )
    .context("chassis.credentials")?;
    match &secrets {
        Some(provider) => {
            tracing::info!(source = %provider.describe(), "secrets");
            builder = builder.secrets(provider.clone());
        }
        None => tracing::info!("no secret provider: runs whose policy grants a secret are refused"),
    }
    if let Some(options) = config.audit_options() {
        let dir = options.dir.clone();
        let log = chassis::audit::AuditLog::open(options)
            .with_context(|| format!("opening the audit log in {}", dir.display()))?;
        builder = builder.audit(log);
        if let Some(floor) = config.audit_floor() {
            tracing::info!(free_bytes = floor.free_bytes(), "audit log free space");
            builder = builder.audit_floor(floor);
        }
    }
    let host = builder
        .caps(config.host_caps())
        .pool_slots(config.sandbox_pool.max_size)
        .warm_slots(if config.sandbox_pool.enabled {
            config.sandbox_pool.min_size
        } else {
            0
        })
        .slo_target(Duration::from_millis(config.slo.target_latency_p95_ms))
        .max_module_bytes(config.runtime.max_module_mb * 1024 * 1024)
        .compile_limits(config.compile_limits())
        .data_dir(&config.data_dir)
        .build()
        .with_context(|| format!("starting the host (data dir {})", config.data_dir.display()))?;
    let served = runtime.block_on(async move {
        if config.metrics.enabled {
            let addr = std::net::SocketAddr::new(config.metrics.address, config.metrics.port);
            chassis::telemetry::install_prometheus(
                addr,
                config.memory_limit_mb(),
                config.slo.target_latency_p95_ms,
                config.slo.target_availability_percent,
            )?;
            if config.audit.enabled {
                // The audit log opened before the exporter existed, so the
                // zero it registered went nowhere: register its counters now,
                // or the audit alert would miss the first failure.
                metrics::counter!(chassis::audit::WRITE_FAILURES_TOTAL).increment(0);
                metrics::counter!(chassis::audit::RECORDS_TOTAL).increment(0);
            }
            tracing::info!(%addr, "metrics on /metrics");
        }
        tracing::info!(policies = policies.len(), "loaded policies");
        use chassis::telemetry::health::{self, PartState};
        // Unhealthy until the server has joined its claim store and serves.
        health::register("claim_store", || PartState::down("connecting"));
        match secrets {
            Some(provider) => {
                // Log in now and renew before expiry even when no run reads
                // a secret for a while; a failure only warns (runs report
                // it) and shows on /health until the next keep-alive works.
                let reachable = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
                let shown = reachable.clone();
                health::register("secrets", move || {
                    if shown.load(std::sync::atomic::Ordering::Relaxed) {
                        PartState::up("reachable")
                    } else {
                        PartState::down("unreachable")
                    }
                });
                tokio::spawn(chassis::secrets::keep_alive(provider, move |result| {
                    reachable.store(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "secret provider keep-alive");
                    }
                }));
            }
            None => health::register("secrets", || PartState::up("none")),
        }
        let listener = chassis::grpc::bind(&config).await?;
        println!("chassis listening on {}", listener.local_addr()?);
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        chassis::grpc::serve(&config, host, policies, listener, shutdown).await?;
        Ok::<(), anyhow::Error>(())
    });
    // Flush queued spans while the runtime that carries the exporter runs.
    drop(traces);
    served
}

pub(crate) async fn connect(
    args: &RemoteArgs,
) -> Result<chassis::grpc::proto::chassis_client::ChassisClient<tonic::transport::Channel>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut endpoint = Endpoint::from_shared(args.addr.clone())
        .with_context(|| format!("bad address {}", args.addr))?;
    if args.addr.starts_with("https://") || args.ca.is_some() {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.ca {
            tls = tls.ca_certificate(Certificate::from_pem(
                std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?,
            ));
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
                std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
            ));
        }
        if let Some(name) = &args.server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    Ok(
        chassis::grpc::proto::chassis_client::ChassisClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024),
    )
}

/// Reports a refusal made on this side of the connection, as
/// [`status_exit`] reports the server's.
fn typed_exit(kind: ErrorKind, message: &str, json: bool) -> ExitCode {
    let code = chassis::grpc::status::code_for(kind);
    if json {
        println!(
            "{}",
            serde_json::json!({ "code": format!("{code:?}"), "kind": kind.as_str(), "message": message })
        );
    } else {
        eprintln!("chassis: {code:?} ({}): {message}", kind.as_str());
    }
    exit_for(kind)
}

pub(crate) fn status_exit(status: &tonic::Status, json: bool) -> ExitCode {
    let kind = chassis::grpc::status::kind_of(status).unwrap_or_else(|| "unknown".into());
    if json {
        println!(
            "{}",
            serde_json::json!({ "code": format!("{:?}", status.code()), "kind": kind, "message": status.message() })
        );
    } else {
        eprintln!(
            "chassis: {:?} ({kind}): {}",
            status.code(),
            status.message()
        );
    }
    kind.parse::<ErrorKind>()
        .map(exit_for)
        .unwrap_or(ExitCode::from(1))
}

fn client(args: ClientArgs) -> Result<ExitCode> {
    use chassis::grpc::proto;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let json = args.json;
        // Ids name files and keys on the server: refuse a malformed one
        // here, typed as the server would, before connecting.
        if let ClientCall::Remove { id } | ClientCall::Run { id, .. } = &args.call
            && let Err(e) = chassis::modules::check_id(id)
        {
            return Ok(typed_exit(ErrorKind::InvalidRequest, &e.to_string(), json));
        }
        let mut client = connect(&args.remote).await?;
        let world = |w: i32| match proto::World::try_from(w) {
            Ok(proto::World::Agent) => "agent",
            Ok(proto::World::Command) => "command",
            _ => "unknown",
        };
        match &args.call {
            ClientCall::Register { file } => {
                let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                let chunks: Vec<proto::RegisterModuleChunk> = bytes
                    .chunks(1024 * 1024)
                    .map(|c| proto::RegisterModuleChunk { data: c.to_vec() })
                    .collect();
                match client.register_module(tokio_stream::iter(chunks)).await {
                    Ok(r) => {
                        let m = r.into_inner();
                        if json {
                            println!("{}", serde_json::json!({ "id": m.id, "world": world(m.world), "size_bytes": m.size_bytes }));
                        } else {
                            println!("{} {} {} bytes", m.id, world(m.world), m.size_bytes);
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(s) => Ok(status_exit(&s, json)),
                }
            }
            ClientCall::List => match client.list_modules(proto::ListModulesRequest {}).await {
                Ok(r) => {
                    let modules = r.into_inner().modules;
                    if json {
                        let list: Vec<_> = modules
                            .iter()
                            .map(|m| serde_json::json!({ "id": m.id, "world": world(m.world), "size_bytes": m.size_bytes }))
                            .collect();
                        println!("{}", serde_json::Value::Array(list));
                    } else {
                        for m in modules {
                            println!("{} {} {} bytes", m.id, world(m.world), m.size_bytes);
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(s) => Ok(status_exit(&s, json)),
            },
            ClientCall::Remove { id } => match client.remove_module(proto::RemoveModuleRequest { id: id.clone() }).await {
                Ok(_) => {
                    println!("removed {id}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(s) => Ok(status_exit(&s, json)),
            },
            ClientCall::Policies => match client.list_policies(proto::ListPoliciesRequest {}).await {
                Ok(r) => {
                    for p in r.into_inner().policies {
                        if json {
                            println!("{}", p.json);
                        } else {
                            println!("{}: {}", p.name, p.description);
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(s) => Ok(status_exit(&s, json)),
            },
            ClientCall::Run {
                id,
                policy,
                input,
                stream,
                timeout,
                fuel,
                memory_mb,
                cpu_percent,
            } => {
                let mut request = tonic::Request::new(proto::RunRequest {
                    module_id: id.clone(),
                    policy: policy.clone(),
                    input: input.clone().into_bytes(),
                    limits: Some(proto::Limits {
                        fuel: fuel.unwrap_or(0),
                        memory_mb: memory_mb.unwrap_or(0),
                        timeout_ms: 0,
                        cpu_percent: cpu_percent.unwrap_or(0),
                        output_kb: 0,
                    }),
                });
                if let Some(t) = timeout {
                    request.set_timeout(*t);
                }
                if *stream {
                    let mut events = match client.run_stream(request).await {
                        Ok(r) => r.into_inner(),
                        Err(s) => return Ok(status_exit(&s, json)),
                    };
                    loop {
                        match events.message().await {
                            Ok(Some(event)) => match event.event {
                                Some(proto::run_event::Event::Log(l)) => eprintln!("[{:>5}] {} {:?}", l.level, l.message, l.fields),
                                Some(proto::run_event::Event::Stdout(b)) => eprint!("{}", String::from_utf8_lossy(&b)),
                                Some(proto::run_event::Event::Stderr(b)) => eprint!("{}", String::from_utf8_lossy(&b)),
                                Some(proto::run_event::Event::Outcome(o)) => {
                                    if o.kind == "ok" {
                                        println!("{}", String::from_utf8_lossy(&o.output));
                                        return Ok(ExitCode::SUCCESS);
                                    }
                                    eprintln!("chassis: {}: {}", o.kind, o.message);
                                    return Ok(o
                                        .kind
                                        .parse::<ErrorKind>()
                                        .map(exit_for)
                                        .unwrap_or(ExitCode::from(1)));
                                }
                                None => {}
                            },
                            Ok(None) => anyhow::bail!("the stream ended without an outcome"),
                            Err(s) => return Ok(status_exit(&s, json)),
                        }
                    }
                }
                match client.run(request).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({
                                    "run_id": r.run_id,
                                    "output": String::from_utf8_lossy(&r.output),
                                    "usage": r.usage.map(|u| serde_json::json!({
                                        "fuel_consumed": u.fuel_consumed,
                                        "peak_memory_bytes": u.peak_memory_bytes,
                                        "wall_time_us": u.wall_time_us,
                                    })),
                                })
                            );
                        } else {
                            println!("{}", String::from_utf8_lossy(&r.output));
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(s) => Ok(status_exit(&s, json)),
                }
            }
        }
    })
}

fn audit_files(files: Vec<PathBuf>, data_dir: &Path) -> Result<Vec<PathBuf>> {
    if !files.is_empty() {
        return Ok(files);
    }
    let dir = data_dir.join("audit");
    let found =
        chassis::audit::log_files(&dir).with_context(|| format!("listing {}", dir.display()))?;
    anyhow::ensure!(
        !found.is_empty(),
        "no audit-*.jsonl files in {}",
        dir.display()
    );
    Ok(found)
}

fn audit(command: AuditCommand) -> Result<ExitCode> {
    use chassis::audit::{keys, verify};
    match command {
        AuditCommand::Verify {
            files,
            pubkey,
            config,
            trust_local_key,
            checkpoint,
            from_checkpoint,
            require_signed_tail,
            json,
            data_dir,
        } => {
            let data = data_dir.resolve();
            let files = audit_files(files, &data)?;
            let mut sources = pubkey;
            if let Some(path) = &config {
                let config = chassis::config::Config::load(path)?;
                sources.extend(config.audit.trusted_keys.iter().cloned());
            }
            let mut trusted = Vec::new();
            for k in &sources {
                match keys::parse_public_key(k) {
                    Ok(key) => trusted.push(key),
                    Err(_) => {
                        trusted.extend(keys::read_public_keys(Path::new(k)).with_context(|| {
                            format!("--pubkey {k}: neither a hex key nor a key file")
                        })?)
                    }
                }
            }
            if trust_local_key {
                let path = keys::keys_dir(&data).join(keys::PUBLIC_KEYS_FILE);
                eprintln!(
                    "chassis: WARNING: --trust-local-key: trusting {}, which sits beside the log it judges; \
                     whoever can rewrite the log can rewrite that file too. Pass --pubkey with a copy kept off this host.",
                    path.display()
                );
                trusted.extend(keys::read_public_keys(&path)?);
            }
            anyhow::ensure!(
                !trusted.is_empty(),
                "no trusted keys: pass --pubkey HEX|FILE (a copy of keys/audit.pub kept off this host), \
                 or --config with audit.trusted_keys; --trust-local-key trusts the key file beside the log"
            );
            let checkpoint_path = checkpoint.or_else(|| {
                let default = data.join("audit").join(verify::CHECKPOINT_FILE);
                default.exists().then_some(default)
            });
            let checkpoint = match &checkpoint_path {
                Some(p) => Some(verify::Checkpoint::read(p).map_err(anyhow::Error::msg)?),
                None => None,
            };
            let from = match &from_checkpoint {
                Some(p) => Some(verify::Checkpoint::read(p).map_err(anyhow::Error::msg)?),
                None => None,
            };
            let options = verify::VerifyOptions {
                trusted: &trusted,
                checkpoint: checkpoint.as_ref(),
                from: from.as_ref(),
                require_signed_tail,
            };
            match verify::verify(&files, &options) {
                Ok(ok) => {
                    if json {
                        println!("{}", serde_json::json!({ "ok": true, "verified": ok }));
                    } else {
                        println!(
                            "ok: {} records in {} file(s), records {} to {}, last {} ({}), checkpoints signed by {}{}",
                            ok.records,
                            ok.files,
                            ok.first_seq,
                            ok.last_seq,
                            ok.last_seq,
                            &ok.last_hash[..16],
                            ok.keys.join(", "),
                            if ok.checkpoint_matched {
                                "; matches the checkpoint"
                            } else if checkpoint.is_some() {
                                "; the checkpoint file precedes these files"
                            } else {
                                "; no checkpoint file given, truncation at the end not checked"
                            }
                        );
                        if let Some(pruned) = &ok.pruned {
                            println!(
                                "starts at record {}: records {} to {} ({}) were pruned by retention (log.pruned, record {}, signed){}",
                                ok.first_seq,
                                pruned.from,
                                pruned.to,
                                pruned.files.join(", "),
                                pruned.at,
                                if pruned.from > 0 {
                                    "; earlier prunings removed the records before them"
                                } else {
                                    ""
                                }
                            );
                        } else if ok.first_seq > 0 {
                            println!(
                                "starts after checkpoint {} (--from-checkpoint)",
                                ok.first_seq - 1
                            );
                        }
                        for loss in &ok.losses {
                            match (loss.from, loss.to) {
                                (Some(from), Some(to)) => println!(
                                    "recorded loss: records {from} to {to} were lost (log.recovered, record {})",
                                    loss.at
                                ),
                                _ => println!(
                                    "recorded loss: the checkpoint file was lost, so a cut tail before record {} could not be ruled out (log.recovered)",
                                    loss.at
                                ),
                            }
                        }
                        println!("unsigned tail: {} records", ok.unsigned_tail);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(problem) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "ok": false,
                                "file": problem.file,
                                "line": problem.line,
                                "seq": problem.seq,
                                "reason": problem.reason.to_string(),
                            })
                        );
                    } else {
                        eprintln!("chassis: audit log does not verify: {problem}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Recover { data_dir } => {
            let data = data_dir.resolve();
            let options = chassis::audit::AuditOptions::in_data_dir(&data);
            let (log, recovery) = chassis::audit::AuditLog::recover(options)?;
            log.close()?;
            match (recovery.problem, recovery.seq) {
                (Some(problem), Some(seq)) => println!(
                    "recovered the audit log: {problem}; recorded as log.recovered (record {seq}), signed"
                ),
                _ => println!(
                    "the audit log's tail matches its last signed checkpoint: nothing to recover"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Show {
            files,
            run,
            module,
            caller,
            kind,
            json,
            data_dir,
        } => {
            let files = audit_files(files, &data_dir.resolve())?;
            let mut out = std::io::stdout().lock();
            let mut contexts = chassis::audit::context::Contexts::default();
            for file in files {
                contexts.new_file();
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let raw: chassis::audit::record::Record = serde_json::from_str(line)
                        .with_context(|| {
                            format!("{}:{}: not an audit record", file.display(), i + 1)
                        })?;
                    contexts.learn(&raw);
                    // A run's record names its context by number: show it
                    // filled in, so each printed record stands on its own.
                    let record = contexts.expand(&raw);
                    let field = |name: &str| record.fields[name].as_str().map(str::to_string);
                    let keep = run
                        .as_ref()
                        .is_none_or(|r| field("run_id").as_ref() == Some(r))
                        && module
                            .as_ref()
                            .is_none_or(|m| field("module").as_ref() == Some(m))
                        && caller
                            .as_ref()
                            .is_none_or(|c| field("caller").as_ref() == Some(c))
                        && kind.as_ref().is_none_or(|k| &record.kind == k);
                    if !keep {
                        continue;
                    }
                    if json {
                        writeln!(out, "{}", serde_json::to_string(&record)?)?;
                    } else {
                        writeln!(
                            out,
                            "{:>6} {} {:<18} {}",
                            record.seq, record.ts, record.kind, record.fields
                        )?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::RotateKey { data_dir } => {
            let data = data_dir.resolve();
            let options = chassis::audit::AuditOptions::in_data_dir(&data);
            let key_file = options.key_file.clone();
            let mut secret = zeroize_secret();
            getrandom::fill(&mut secret[..]).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let new = ed25519_dalek::SigningKey::from_bytes(&secret);
            let new_public = new.verifying_key();
            // Take the log's lock first: against a running server this
            // fails before anything is written.
            let log = chassis::audit::AuditLog::open(options)?;
            // The new key is on disk before the log names it, so a crash
            // in between never leaves a rotation to a key that is lost.
            let staged = key_file.with_extension("new");
            if staged.exists() {
                anyhow::bail!(
                    "{} is left from an interrupted rotation. If `chassis audit show --kind key.rotated` \
                     names its key as the newest, move it over {}; otherwise delete it. Then run rotate-key again.",
                    staged.display(),
                    key_file.display()
                );
            }
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&staged)
                    .with_context(|| format!("writing {}", staged.display()))?;
                f.write_all(&secret[..])?;
                f.sync_all()?;
            }
            log.rotate_key(new)?;
            log.close()?;
            let retired = key_file.with_extension(format!("retired-{}", chrono_stamp()));
            std::fs::rename(&key_file, &retired)
                .with_context(|| format!("retiring {}", key_file.display()))?;
            std::fs::rename(&staged, &key_file)
                .with_context(|| format!("installing {}", key_file.display()))?;
            println!(
                "rotated the audit key: new key {} ({}); old key kept at {}",
                chassis::audit::record::key_id(&new_public),
                hex::encode(new_public.as_bytes()),
                retired.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn chrono_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "")
}

fn zeroize_secret() -> zeroize::Zeroizing<[u8; 32]> {
    zeroize::Zeroizing::new([0u8; 32])
}

fn load(args: LoadArgs) -> Result<ExitCode> {
    use chassis::load::{Progress, Stop, Target};
    let stop = match (args.runs, args.duration) {
        (Some(n), _) => Stop::Runs(n),
        (None, Some(d)) => Stop::Duration(d),
        (None, None) => anyhow::bail!("say how much load: --runs N or --duration D"),
    };
    let input = args.input.clone().into_bytes();
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("reading module {}", args.module.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let target = match &args.remote {
        None => {
            let caps = chassis::sandbox::HostCaps {
                max_memory_bytes: args.memory_mb * 1024 * 1024,
                ..Default::default()
            };
            if let Some(warning) = chassis::engine::maps::max_map_count().and_then(|limit| {
                chassis::engine::maps::pool_warning(args.concurrency.max(1) as u64, limit)
            }) {
                eprintln!("chassis load: warning: {warning}");
            }
            let host = Host::builder()
                .caps(caps)
                .pool_slots(u32::try_from(args.concurrency.max(1)).unwrap_or(u32::MAX))
                .warm_slots(u32::try_from(args.concurrency.min(1000)).unwrap_or(1000))
                .data_dir(args.data_dir.resolve())
                .build()?;
            let module = match host.modules().register(&bytes) {
                Ok(m) => m,
                Err(e) => return Ok(fail(args.json, &args.module, e.kind(), &e.to_string())),
            };
            let mut request = RunRequest::new(input).limits(LimitsRequest {
                fuel: args.fuel,
                timeout: args.timeout,
                ..Default::default()
            });
            if let Some(policy) = &args.policy {
                request = request.policy(std::sync::Arc::new(Policy::load(Path::new(policy))?));
            }
            Target::Local {
                host,
                module,
                request,
            }
        }
        Some(addr) => runtime.block_on(async {
            use chassis::grpc::proto;
            let channel = tonic::transport::Endpoint::from_shared(addr.clone())?
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let mut client = proto::chassis_client::ChassisClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let module = client
                .register_module(tokio_stream::iter(vec![proto::RegisterModuleChunk {
                    data: bytes.clone(),
                }]))
                .await
                .map_err(|s| anyhow::anyhow!("registering the module: {}", s.message()))?
                .into_inner();
            let fuel = match args.fuel {
                Some(FuelRequest::Budget(n)) => n,
                _ => 0,
            };
            anyhow::Ok(Target::Remote {
                client,
                request: proto::RunRequest {
                    module_id: module.id,
                    policy: args.policy.clone().unwrap_or_default(),
                    input: input.clone(),
                    limits: Some(proto::Limits {
                        fuel,
                        timeout_ms: args.timeout.map_or(0, |t| t.as_millis() as u64),
                        ..Default::default()
                    }),
                },
            })
        })?,
    };
    let progress = std::sync::Arc::new(Progress::default());
    let bar = if args.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        match stop {
            Stop::Runs(n) => indicatif::ProgressBar::new(n),
            Stop::Duration(d) => indicatif::ProgressBar::new(d.as_secs().max(1)),
        }
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = runtime.block_on(async {
        let watcher = {
            let progress = progress.clone();
            let bar = bar.clone();
            let started = std::time::Instant::now();
            tokio::spawn(async move {
                loop {
                    let done = progress.done.load(std::sync::atomic::Ordering::Relaxed);
                    match stop {
                        Stop::Runs(_) => bar.set_position(done),
                        Stop::Duration(_) => bar.set_position(started.elapsed().as_secs()),
                    }
                    bar.set_message(format!(
                        "live {} | errors {}",
                        progress.live.load(std::sync::atomic::Ordering::Relaxed),
                        progress.errors.load(std::sync::atomic::Ordering::Relaxed)
                    ));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let report = chassis::load::run(target, args.concurrency, stop, progress).await;
        watcher.abort();
        report
    });
    bar.finish_and_clear();
    if let Some(path) = &args.plot {
        chassis::load::write_svg(&report, path)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
        if let Some(path) = &args.plot {
            println!("plot            {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
