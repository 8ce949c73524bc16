//! `chassis client ...`: the server's calls from the shell, one
//! subcommand per call.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use chassis::ErrorKind;

use super::output::{exit_for, status_exit, typed_exit};
use super::remote::RemoteArgs;

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print responses as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    call: ClientCall,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCall {
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

impl ClientArgs {
    /// Makes the call and prints the answer.
    pub(crate) fn run(self) -> Result<ExitCode> {
        use chassis::grpc::proto;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async {
            let json = self.json;
            // Ids name files and keys on the server: refuse a malformed one
            // here, typed as the server would, before connecting.
            if let ClientCall::Remove { id } | ClientCall::Run { id, .. } = &self.call
                && let Err(e) = chassis::modules::check_id(id)
            {
                return Ok(typed_exit(ErrorKind::InvalidRequest, &e.to_string(), json));
            }
            let mut client = self.remote.connect().await?;
            let world = |w: i32| match proto::World::try_from(w) {
                Ok(proto::World::Agent) => "agent",
                Ok(proto::World::Command) => "command",
                _ => "unknown",
            };
            match &self.call {
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
}
