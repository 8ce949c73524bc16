//! `chassis run`: one module, once, on a one-shot host; its output on
//! stdout, its logs and denials on stderr, or the whole report as JSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use chassis::RunRequest;
use chassis::modules::artifact::MAGIC;
use chassis::policy::Policy;
use chassis::sandbox::{FuelRequest, LimitsRequest, RunReport};

use super::local::{DataDirArg, one_shot_host, parse_fuel, run_secrets};
use super::output::{exit_for, fail};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
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

impl RunArgs {
    /// Runs the module once and prints its output or its typed failure.
    pub(crate) fn run(self) -> Result<ExitCode> {
        let input = match (&self.input, &self.input_file) {
            (Some(s), _) => s.clone().into_bytes(),
            (None, Some(p)) if p.as_os_str() == "-" => {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .context("reading stdin")?;
                buf
            }
            (None, Some(p)) => {
                std::fs::read(p).with_context(|| format!("reading input file {}", p.display()))?
            }
            (None, None) => Vec::new(),
        };
        let limits = LimitsRequest {
            fuel: self.fuel,
            memory_bytes: self.memory_mb.map(|m| m.saturating_mul(1024 * 1024)),
            timeout: self.timeout,
            output_bytes: self.output_kb.map(|k| k.saturating_mul(1024)),
            log_records: None,
            cpu_percent: self.cpu_percent,
        };
        let policy = match &self.policy {
            Some(path) => match Policy::load(path) {
                Ok(p) => p,
                Err(e) => return Ok(fail(self.json, path, e.kind(), &e.to_string())),
            },
            None => Policy::deny_all(),
        };
        let data_dir = self.data_dir.resolve();
        let secrets = if policy.secrets.is_empty() {
            None
        } else {
            match run_secrets(self.secrets.as_deref(), &data_dir) {
                Ok(provider) => provider,
                Err(e) => {
                    let source = self.secrets.as_deref().unwrap_or(&self.module);
                    return Ok(fail(self.json, source, e.kind(), &e.to_string()));
                }
            }
        };
        let request = RunRequest::new(input)
            .policy(std::sync::Arc::new(policy))
            .limits(limits);
        let host = one_shot_host(&data_dir, secrets)?;
        let bytes = std::fs::read(&self.module)
            .with_context(|| format!("reading module {}", self.module.display()))?;
        let registered = if bytes.starts_with(MAGIC) {
            host.modules().load_artifact(&self.module)
        } else {
            host.modules().register(&bytes)
        };
        let module = match registered {
            Ok(m) => m,
            Err(e) => return Ok(fail(self.json, &self.module, e.kind(), &e.to_string())),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let limits = match host.limits_for(&request) {
            Ok(l) => l,
            Err(e) => return Ok(fail(self.json, &self.module, e.kind(), &e.to_string())),
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
            Err(e) => return Ok(fail(self.json, &self.module, e.kind(), &e.to_string())),
        };
        if self.json {
            let json = report_json(&self.module, &module, &policy_name, &limits, &report);
            println!("{}", serde_json::to_string_pretty(&json)?);
        } else {
            print_human(&module, &report)?;
        }
        Ok(match &report.result {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => exit_for(e.kind()),
        })
    }
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
