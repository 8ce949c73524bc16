//! `chassis config check`: a configuration file validated, with the
//! secret provider it names described.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use chassis::ErrorKind;

use super::local::vault_token_from_env;
use super::output::fail;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
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

impl ConfigCommand {
    /// Runs the config command.
    pub(crate) fn run(self) -> Result<ExitCode> {
        match self {
            Self::Check { file, json } => check(&file, json),
        }
    }
}

fn check(file: &Path, json: bool) -> Result<ExitCode> {
    match chassis::config::Config::load(file) {
        Ok(config) => {
            let secrets = match chassis::server::secret_provider(
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
