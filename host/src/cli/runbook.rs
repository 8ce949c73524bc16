//! `chassis runbook check|run|submit|status|watch`: runbooks validated,
//! run on an embedded host, or submitted to and followed on a server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chassis::coord::{
    Coordinator, MemoryStore, RunbookFile, RunbookView, StepOutcome, wait_closed,
};
use chassis::grpc::proto;
use chassis::policy::PolicySet;
use clap::{Args, Subcommand};
use tokio_stream::StreamExt;

use super::local::DataDirArg;
use super::output::status_exit;
use super::remote::RemoteArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum RunbookCommand {
    /// Validate a runbook: syntax, dependencies, cycles, module files and
    /// policies. Names the step and field of the first problem.
    Check {
        /// The runbook file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// Run a runbook on an embedded host (in-process claims) and print each
    /// step's result. Exits 0 when every step completed, 1 otherwise.
    Run {
        /// The runbook file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        local: LocalArgs,
        #[command(flatten)]
        data_dir: DataDirArg,
        /// Print the final state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Submit a runbook to a server; prints its id.
    Submit {
        /// The runbook file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Directory the runbook's module files are relative to [default: the runbook's].
        #[arg(long, value_name = "DIR")]
        modules: Option<PathBuf>,
        /// Use this id instead of `<name>-<random>`.
        #[arg(long)]
        id: Option<String>,
        /// Then follow it until it finishes (exit 0 only if it completed).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// A runbook's state and every step's.
    Status {
        /// The runbook id.
        id: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Follow a runbook's step transitions until it finishes.
    Watch {
        /// The runbook id.
        id: String,
        /// Resume after an earlier watch: the last revision seen plus one.
        #[arg(long, default_value_t = 0)]
        from_revision: i64,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct LocalArgs {
    /// Directory the runbook's module files are relative to [default: the runbook's].
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Directory of policy files the steps name [default: ./policies when it exists].
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Local secrets file (mode 0600) for the grants of the steps' policies
    /// [default: Vault from VAULT_ADDR/VAULT_TOKEN, else <data-dir>/secrets.toml].
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
}

impl LocalArgs {
    /// `--policies`, else `./policies` when it is a directory.
    fn policies_dir(&self) -> Option<PathBuf> {
        match &self.policies {
            Some(d) => Some(d.clone()),
            None if Path::new("policies").is_dir() => Some(PathBuf::from("policies")),
            None => None,
        }
    }

    fn policies(&self) -> Result<PolicySet> {
        match self.policies_dir() {
            Some(dir) => PolicySet::load_dir(&dir).map_err(|e| anyhow::anyhow!("{e}")),
            None => Ok(PolicySet::default()),
        }
    }
}

/// Reads and parses the runbook, and reads the module files it names.
fn read(
    file: &Path,
    modules: Option<&Path>,
) -> Result<(String, RunbookFile, BTreeMap<String, Vec<u8>>)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading runbook {}", file.display()))?;
    let parsed = RunbookFile::parse(&text, &file.display().to_string())?;
    let base = modules
        .map(Path::to_path_buf)
        .or_else(|| file.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut bytes = BTreeMap::new();
    for reference in parsed.module_files() {
        let path = base.join(reference);
        let step = parsed
            .steps
            .iter()
            .find(|(_, s)| s.module == reference)
            .map(|(n, _)| n.as_str())
            .unwrap_or_default();
        let data = std::fs::read(&path).with_context(|| {
            format!(
                "{}: step `{step}`, field `module`: cannot read {}",
                file.display(),
                path.display()
            )
        })?;
        bytes.insert(reference.to_string(), data);
    }
    Ok((text, parsed, bytes))
}

impl RunbookCommand {
    /// Runs the runbook command.
    pub(crate) fn run(self) -> Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async move {
            match self {
                RunbookCommand::Check { file, local } => {
                    let (_, parsed, modules) = read(&file, local.modules.as_deref())?;
                    // Validating modules needs an engine, not a coordinator.
                    let host = chassis::Host::builder()
                        .pool_slots(2)
                        .warm_slots(0)
                        .build()
                        .context("starting a host to validate modules")?;
                    let host_modules = host.modules();
                    let policies = local.policies()?;
                    parsed.resolve(
                        chassis::policy::LOCAL_CALLER,
                        |reference| match modules.get(reference) {
                            Some(bytes) => host_modules
                                .register(bytes)
                                .map(|m| m.id().to_string())
                                .map_err(|e| format!("`{reference}` is not a usable module: {e}")),
                            None => Err(format!("`{reference}` names a module id; check it against the server with `chassis client list`")),
                        },
                        |name| match policies.get(name) {
                            Some(_) => Ok(()),
                            None => Err(format!("no policy `{name}` in the policies directory")),
                        },
                    )?;
                    println!("{}: ok ({} steps)", file.display(), parsed.steps.len());
                    Ok(ExitCode::SUCCESS)
                }
                RunbookCommand::Run {
                    file,
                    local,
                    data_dir,
                    json,
                } => {
                    let (text, _, modules) = read(&file, local.modules.as_deref())?;
                    let coordinator = embedded(&local, &data_dir.resolve())?;
                    let task = coordinator.start();
                    let (id, _) = coordinator
                        .submit(
                            &text,
                            &file.display().to_string(),
                            &modules,
                            chassis::policy::LOCAL_CALLER,
                            None,
                        )
                        .await?;
                    let view = wait_closed(&**coordinator.store(), &id).await?;
                    task.stop(Duration::from_secs(5)).await;
                    print_view(&view, json)?;
                    Ok(if view.state() == chassis::coord::RunbookState::Completed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
                RunbookCommand::Submit {
                    file,
                    modules,
                    id,
                    watch,
                    remote,
                } => {
                    let (text, _, modules) = read(&file, modules.as_deref())?;
                    let mut client = remote.connect().await?;
                    let response = client
                        .submit_runbook(proto::SubmitRunbookRequest {
                            runbook: text,
                            file_name: file.display().to_string(),
                            modules: modules.into_iter().collect(),
                            id: id.unwrap_or_default(),
                        })
                        .await;
                    let response = match response {
                        Ok(r) => r.into_inner(),
                        Err(s) => return Ok(status_exit(&s, false)),
                    };
                    println!("{}", response.runbook_id);
                    if watch {
                        follow(&remote, &response.runbook_id, response.revision, false).await
                    } else {
                        Ok(ExitCode::SUCCESS)
                    }
                }
                RunbookCommand::Status { id, json, remote } => {
                    let mut client = remote.connect().await?;
                    match client
                        .get_runbook(proto::GetRunbookRequest { runbook_id: id })
                        .await
                    {
                        Ok(r) => {
                            print_status(&r.into_inner(), json);
                            Ok(ExitCode::SUCCESS)
                        }
                        Err(s) => Ok(status_exit(&s, json)),
                    }
                }
                RunbookCommand::Watch {
                    id,
                    from_revision,
                    json,
                    remote,
                } => follow(&remote, &id, from_revision, json).await,
            }
        })
    }
}

/// An embedded host, assembled from a config as `chassis serve` does,
/// with the in-process claim store: eight pool slots, none kept warm, no
/// audit log, the policies of `--policies` and the local secrets.
fn embedded(local: &LocalArgs, data_dir: &Path) -> Result<Coordinator> {
    let mut config = chassis::config::Config {
        data_dir: data_dir.to_path_buf(),
        policies_dir: local.policies_dir(),
        ..Default::default()
    };
    config.sandbox_pool.enabled = false;
    config.sandbox_pool.min_size = 0;
    config.sandbox_pool.max_size = 8;
    config.metrics.enabled = false;
    config.audit.enabled = false;
    // Without an audit log there is no log a guest could stop by filling
    // the data dir's filesystem through a `rw` preopen.
    config.runtime.allow_shared_filesystem = true;
    match &local.secrets {
        Some(file) => config.credentials.local_file = Some(file.clone()),
        None => super::local::vault_from_env(&mut config.credentials),
    }
    let assembled = chassis::server::assemble(&config, super::local::vault_token_from_env())
        .context("starting the embedded host")?;
    let mut options = chassis::coord::CoordinatorOptions::new(chassis::coord::default_holder());
    options.max_concurrent_steps = 4;
    options.poll_interval = Duration::from_millis(200);
    Ok(Coordinator::new(
        Arc::new(MemoryStore::new()),
        assembled.host,
        Arc::new(assembled.policies),
        options,
    ))
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end().to_string()
}

/// Output for a terminal: continuation lines indented under the first.
fn indented(bytes: &[u8]) -> String {
    text_of(bytes).replace('\n', &format!("\n{}", " ".repeat(39)))
}

fn print_view(view: &RunbookView, json: bool) -> Result<()> {
    if json {
        let steps: serde_json::Map<String, serde_json::Value> = view
            .spec
            .topological_order()
            .into_iter()
            .map(|name| {
                let v = &view.steps[name];
                let mut o = serde_json::json!({ "state": v.state().as_str() });
                if let Some(r) = &v.result {
                    o["host"] = r.host.clone().into();
                    o["attempts"] = r.attempts.into();
                    o["fence"] = r.fence.into();
                    match &r.outcome {
                        StepOutcome::Completed { output } => o["output"] = text_of(output).into(),
                        StepOutcome::Failed { kind, error } => {
                            o["error_kind"] = kind.as_str().into();
                            o["error"] = error.clone().into();
                        }
                        StepOutcome::Skipped { because } => {
                            o["skipped_because"] = because.clone().into()
                        }
                    }
                }
                (name.to_string(), o)
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "runbook": view.id, "name": view.spec.name, "state": view.state().as_str(), "steps": steps,
            }))?
        );
        return Ok(());
    }
    println!(
        "runbook {} ({}): {}",
        view.spec.name,
        view.id,
        view.state().as_str()
    );
    for name in view.spec.topological_order() {
        let v = &view.steps[name];
        match &v.result {
            Some(r) => match &r.outcome {
                StepOutcome::Completed { output } => println!(
                    "  {name:<14} completed  attempt {}  {}",
                    r.attempts,
                    indented(output)
                ),
                StepOutcome::Failed { kind, error } => {
                    println!(
                        "  {name:<14} failed     attempt {}  {kind}: {error}",
                        r.attempts
                    )
                }
                StepOutcome::Skipped { because } => {
                    println!("  {name:<14} skipped    `{because}` did not complete")
                }
            },
            None => println!("  {name:<14} {}", v.state().as_str()),
        }
    }
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    match proto::StepState::try_from(state) {
        Ok(proto::StepState::Pending) => "pending",
        Ok(proto::StepState::Running) => "running",
        Ok(proto::StepState::Completed) => "completed",
        Ok(proto::StepState::Failed) => "failed",
        Ok(proto::StepState::Skipped) => "skipped",
        _ => "unknown",
    }
}

fn runbook_state_name(state: i32) -> &'static str {
    match proto::RunbookState::try_from(state) {
        Ok(proto::RunbookState::Running) => "running",
        Ok(proto::RunbookState::Completed) => "completed",
        Ok(proto::RunbookState::Failed) => "failed",
        _ => "unknown",
    }
}

fn print_status(status: &proto::RunbookStatus, json: bool) {
    if json {
        let steps: Vec<serde_json::Value> = status
            .steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "state": state_name(s.state), "host": s.host,
                    "attempts": s.attempts, "fence": s.fence, "output": text_of(&s.output),
                    "error_kind": s.error_kind, "error": s.error, "run_id": s.run_id,
                    "depends_on": s.depends_on,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "runbook": status.runbook_id, "name": status.name,
                "state": runbook_state_name(status.state), "closed": status.closed,
                "revision": status.revision, "steps": steps,
            })
        );
        return;
    }
    println!(
        "runbook {} ({}): {} at revision {}",
        status.name,
        status.runbook_id,
        runbook_state_name(status.state),
        status.revision
    );
    for s in &status.steps {
        let detail = match proto::StepState::try_from(s.state) {
            Ok(proto::StepState::Completed) => text_of(&s.output),
            Ok(proto::StepState::Failed | proto::StepState::Skipped) => s.error.clone(),
            Ok(proto::StepState::Running) => format!("on {} (fence {})", s.host, s.fence),
            _ => String::new(),
        };
        println!(
            "  {:<14} {:<10} attempt {}  {detail}",
            s.name,
            state_name(s.state),
            s.attempts
        );
    }
}

async fn follow(remote: &RemoteArgs, id: &str, from_revision: i64, json: bool) -> Result<ExitCode> {
    let mut client = remote.connect().await?;
    let mut stream = match client
        .watch_runbook(proto::WatchRunbookRequest {
            runbook_id: id.to_string(),
            from_revision,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return Ok(status_exit(&s, json)),
    };
    while let Some(event) = stream.next().await {
        let e = match event {
            Ok(e) => e,
            Err(s) => return Ok(status_exit(&s, json)),
        };
        if e.step.is_empty() {
            let state = runbook_state_name(e.runbook_state);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "revision": e.revision, "runbook_state": state })
                );
            } else {
                println!("[{}] runbook {state}", e.revision);
            }
            return Ok(
                if e.runbook_state == proto::RunbookState::Completed as i32 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                },
            );
        }
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "revision": e.revision, "step": e.step, "state": state_name(e.state),
                    "host": e.host, "attempt": e.attempt, "fence": e.fence,
                    "output": text_of(&e.output), "error": e.error,
                })
            );
        } else {
            let detail = match proto::StepState::try_from(e.state) {
                Ok(proto::StepState::Completed) => text_of(&e.output),
                Ok(proto::StepState::Running) => format!("on {} (fence {})", e.host, e.fence),
                _ => e.error.clone(),
            };
            println!(
                "[{}] {:<14} {:<10} {detail}",
                e.revision,
                e.step,
                state_name(e.state)
            );
        }
    }
    eprintln!("chassis: the watch ended before the runbook finished; resume with --from-revision");
    Ok(ExitCode::from(1))
}
