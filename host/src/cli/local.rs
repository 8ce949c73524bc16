//! What the commands that run modules on this machine share: the data
//! dir, a one-shot host, the secret provider, the fuel flag.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use chassis::Host;
use chassis::sandbox::FuelRequest;
use chassis::secrets::{SecretError, SecretProvider, SecretValue};

/// `--data-dir`, the same flag and default on every command that keeps
/// compiled artifacts, keys or an audit log.
#[derive(Debug, Args)]
pub(crate) struct DataDirArg {
    /// Where compiled artifacts and keys live [default: $CHASSIS_DATA_DIR,
    /// else $XDG_DATA_HOME/chassis, else ~/.local/share/chassis].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Parses `--fuel`: a whole number (underscores allowed) or `off`.
pub(crate) fn parse_fuel(text: &str) -> Result<FuelRequest, String> {
    match text {
        "off" | "unmetered" => Ok(FuelRequest::Unmetered),
        n => n
            .replace('_', "")
            .parse::<u64>()
            .map(FuelRequest::Budget)
            .map_err(|_| format!("`{n}` is not a whole number or `off`")),
    }
}

/// `$CHASSIS_DATA_DIR`, else `$XDG_DATA_HOME/chassis`, else
/// `~/.local/share/chassis`, else `./.chassis`.
pub(crate) fn default_data_dir() -> PathBuf {
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
    /// The directory given, else the default.
    pub(crate) fn resolve(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// A small host for one command's runs: two pool slots, none kept warm.
pub(crate) fn one_shot_host(
    data_dir: &Path,
    secrets: Option<Arc<dyn SecretProvider>>,
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
pub(crate) fn vault_token_from_env() -> Option<SecretValue> {
    std::env::var("VAULT_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| SecretValue::new(t.trim().to_string()))
}

/// The secret provider `chassis run` uses: `--secrets`, else the
/// environment's Vault, else `<data-dir>/secrets.toml`.
pub(crate) fn run_secrets(
    file: Option<&Path>,
    data_dir: &Path,
) -> Result<Option<Arc<dyn SecretProvider>>, SecretError> {
    if let Some(file) = file {
        return Ok(Some(Arc::new(chassis::secrets::LocalFileProvider::open(
            file,
        )?)));
    }
    let mut credentials = chassis::config::Credentials::default();
    vault_from_env(&mut credentials);
    chassis::server::secret_provider(&credentials, data_dir, vault_token_from_env())
}

/// Points `credentials` at the Vault the environment names
/// (`VAULT_ADDR`, `VAULT_NAMESPACE`, `VAULT_CACERT`), as the `vault` CLI
/// reads them.
pub(crate) fn vault_from_env(credentials: &mut chassis::config::Credentials) {
    for (var, value) in std::env::vars() {
        match var.as_str() {
            "VAULT_ADDR" => credentials.vault_addr = Some(value),
            "VAULT_NAMESPACE" => credentials.vault_namespace = Some(value),
            "VAULT_CACERT" => credentials.vault_cacert = Some(value.into()),
            _ => {}
        }
    }
}
