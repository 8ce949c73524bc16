//! `chassis policy check|explain|diff`: capability policies validated,
//! said in plain words, and compared.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use chassis::ErrorKind;
use chassis::policy::Policy;

use super::output::{exit_for, fail};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
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

impl PolicyCommand {
    /// Runs the policy command.
    pub(crate) fn run(self) -> Result<ExitCode> {
        match self {
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
}
