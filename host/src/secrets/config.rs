//! Choosing the provider from `chassis.credentials`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::vault::{AppRole, TokenSource};
use super::{
    LocalFileProvider, SecretError, SecretProvider, SecretValue, VaultOptions, VaultProvider,
};
use crate::config::Credentials;

/// The file the embedded default reads secrets from, under the data dir.
pub const DEFAULT_LOCAL_FILE: &str = "secrets.toml";

/// The provider `credentials` describes:
///
/// - `vault_addr` set: Vault, authenticated by `vault_token_path`, else
///   `vault_token` (the `VAULT_TOKEN` variable), else `approle`;
/// - otherwise `local_file`, which must exist and be private;
/// - otherwise `<data_dir>/secrets.toml` if it exists;
/// - otherwise none: runs whose policy grants a secret are refused.
pub fn from_config(
    credentials: &Credentials,
    data_dir: &Path,
    vault_token: Option<SecretValue>,
) -> Result<Option<Arc<dyn SecretProvider>>, SecretError> {
    if let Some(addr) = &credentials.vault_addr {
        let token = match (&credentials.vault_token_path, vault_token) {
            (Some(path), _) => Some(TokenSource::File(path.clone())),
            (None, Some(value)) => Some(TokenSource::Value(value)),
            (None, None) => None,
        };
        let provider = VaultProvider::new(VaultOptions {
            addr: addr.clone(),
            namespace: credentials.vault_namespace.clone(),
            cacert: credentials.vault_cacert.clone(),
            timeout: Duration::from_secs(credentials.timeout_seconds),
            token,
            approle: credentials.approle.as_ref().map(|a| AppRole {
                mount: a.mount.clone(),
                role_id: a.role_id.clone(),
                secret_id_path: a.secret_id_path.clone(),
            }),
        })?;
        return Ok(Some(Arc::new(provider)));
    }
    if let Some(path) = &credentials.local_file {
        return Ok(Some(Arc::new(LocalFileProvider::open(path)?)));
    }
    let default = data_dir.join(DEFAULT_LOCAL_FILE);
    if default.exists() {
        return Ok(Some(Arc::new(LocalFileProvider::open(default)?)));
    }
    Ok(None)
}
