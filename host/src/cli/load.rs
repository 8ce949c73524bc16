//! `chassis load`: a module run many times, in this process or against a
//! server, with throughput, latency percentiles and errors by kind.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use chassis::limits::Metering;
use chassis::policy::Policy;
use chassis::sandbox::{FuelRequest, LimitsRequest};
use chassis::{Host, RunRequest};

use super::local::{DataDirArg, parse_fuel};
use super::output::fail;
use super::remote::TlsArgs;

#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
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
    /// Load a server instead of this process, e.g. http://127.0.0.1:50051
    /// or https://chassis.example:50051 (with --ca, and --cert/--key for mTLS).
    #[arg(long, value_name = "ADDR")]
    remote: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
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
    /// Keep the audit log (local load only), at the shipped settings in
    /// the data dir's `audit/`, to price auditing; the report then says how
    /// many bytes of log each run cost.
    #[arg(long, conflicts_with = "remote")]
    audit: bool,
    /// How the local host meters busy guest code (`runtime.metering`):
    /// `fuel` (a budget per run, and epoch deadlines) or `epoch` (deadlines
    /// and CPU share only); a remote host meters as its config says.
    #[arg(long, default_value = "fuel", conflicts_with = "remote")]
    metering: Metering,
    /// Also say why each warm run over 10x p50 was slow (local load only):
    /// preempted, blocked, suspended, stolen by the hypervisor, page faults,
    /// or on the CPU. Reads the thread polling each run around each poll,
    /// four system calls per poll, so throughput drops (~1 µs per run).
    #[arg(long, conflicts_with = "remote")]
    explain_tail: bool,
    #[command(flatten)]
    data_dir: DataDirArg,
}

impl LoadArgs {
    /// Drives the load and prints its report.
    pub(crate) fn run(self) -> Result<ExitCode> {
        use chassis::load::{Progress, Stop, Target};
        let stop = match (self.runs, self.duration) {
            (Some(n), _) => Stop::Runs(n),
            (None, Some(d)) => Stop::Duration(d),
            (None, None) => anyhow::bail!("say how much load: --runs N or --duration D"),
        };
        let input = self.input.clone().into_bytes();
        let data_dir = self.data_dir.resolve();
        let bytes = std::fs::read(&self.module)
            .with_context(|| format!("reading module {}", self.module.display()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let target = match &self.remote {
            None => {
                // A pool the mapping limit cannot hold is warned about by the
                // engine as it starts (on stderr, through the log).
                let host = local_host(
                    self.memory_mb,
                    self.concurrency,
                    self.audit,
                    self.metering,
                    data_dir.clone(),
                )?;
                let module = match host.modules().register(&bytes) {
                    Ok(m) => m,
                    Err(e) => return Ok(fail(self.json, &self.module, e.kind(), &e.to_string())),
                };
                let mut request = RunRequest::new(input).limits(LimitsRequest {
                    fuel: self.fuel,
                    timeout: self.timeout,
                    ..Default::default()
                });
                if let Some(policy) = &self.policy {
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
                let mut client = super::remote::connect(addr, &self.tls).await?;
                let module = client
                    .register_module(tokio_stream::iter(vec![proto::RegisterModuleChunk {
                        data: bytes.clone(),
                    }]))
                    .await
                    .map_err(|s| anyhow::anyhow!("registering the module: {}", s.message()))?
                    .into_inner();
                let fuel = match self.fuel {
                    Some(FuelRequest::Budget(n)) => n,
                    _ => 0,
                };
                anyhow::Ok(Target::Remote {
                    client,
                    request: proto::RunRequest {
                        module_id: module.id,
                        policy: self.policy.clone().unwrap_or_default(),
                        input: input.clone(),
                        limits: Some(proto::Limits {
                            fuel,
                            timeout_ms: self.timeout.map_or(0, |t| t.as_millis() as u64),
                            ..Default::default()
                        }),
                    },
                })
            })?,
        };
        // The log's size before, to report its growth per run.
        let audit = match &target {
            Target::Local { host, .. } => host.audit().cloned(),
            Target::Remote { .. } => None,
        };
        let audit_dir = data_dir.join("audit");
        let audit_before = audit.as_ref().map(|_| dir_bytes(&audit_dir));
        let progress = std::sync::Arc::new(Progress::default());
        let bar = if self.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            indicatif::ProgressBar::hidden()
        } else {
            match stop {
                Stop::Runs(n) => indicatif::ProgressBar::new(n),
                Stop::Duration(d) => indicatif::ProgressBar::new(d.as_secs().max(1)),
            }
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
            )
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
            let report =
                chassis::load::run(target, self.concurrency, stop, progress, self.explain_tail)
                    .await;
            watcher.abort();
            report
        });
        bar.finish_and_clear();
        let mut report = report;
        if let (Some(log), Some(before)) = (&audit, audit_before) {
            log.close().context("closing the audit log")?;
            let grown = dir_bytes(&audit_dir).saturating_sub(before);
            report.audit_bytes_per_run = Some(grown as f64 / report.runs.max(1) as f64);
        }
        if let Some(path) = &self.plot {
            chassis::load::write_svg(&report, path)
                .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
            if let Some(path) = &self.plot {
                println!("plot            {}", path.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Bytes in the regular files directly under `dir` (0 when it is absent).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The in-process host a local load runs on, assembled by the composition
/// root like `chassis serve`'s: one pool slot per run in flight, and never
/// fewer than `chassis serve`'s default pool (up to 1,000 kept warm),
/// `memory_mb` of linear memory each, no metrics port, and the audit log
/// at its shipped settings only with `audit` (a load measures the sandbox
/// unless asked to price the log), metered as `metering` says.
fn local_host(
    memory_mb: u64,
    concurrency: usize,
    audit: bool,
    metering: Metering,
    data_dir: PathBuf,
) -> Result<Host> {
    // Never smaller than the pool `chassis serve` starts with: wasmtime
    // shards a pool's slot index only from 128 slots of a kind, so a pool
    // of one slot per run in flight (2 at concurrency 2: 4 memories, 32
    // core instances) put both cores on one lock per allocation and free
    // (concurrency 2 ran 1.57x concurrency 1; 1.93x with 100 slots).
    let slots = u32::try_from(concurrency)
        .unwrap_or(u32::MAX)
        .max(chassis::config::SandboxPool::default().max_size);
    let mut config = chassis::config::Config {
        data_dir,
        ..Default::default()
    };
    config.runtime.max_memory_mb = memory_mb;
    config.sandbox_pool.max_size = slots;
    config.sandbox_pool.min_size = slots.min(1000);
    config.audit.enabled = audit;
    config.metrics.enabled = false;
    config.runtime.metering = metering;
    Host::from_config(&config, None).with_context(|| {
        format!("a local host for --concurrency {concurrency} and --memory-mb {memory_mb}")
    })
}
