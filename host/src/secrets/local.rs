//! Secrets from a local TOML file: the embedded default, for one machine.
//!
//! The file maps the same paths and keys a policy names, so one policy works
//! against Vault and against this file:
//!
//! ```toml
//! ["secret/reports"]
//! smtp_password = "..."
//!
//! # A dynamic grant gets the whole table, as JSON, with no lease.
//! ["database/creds/orders-migrator"]
//! username = "migrator"
//! password = "..."
//! ```
//!
//! A KV v2 path may also be written as Vault's API spells it
//! (`secret/data/reports`). The file is refused if its group or others may
//! read or write it (mode & 0o077), like ssh refuses a private key. It is
//! read again for every run, so edits apply without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use super::{BoxFuture, Fetched, SecretError, SecretProvider, SecretValue};
use crate::policy::SecretGrant;

/// Reads secrets from a TOML file only its owner can read.
#[derive(Debug, Clone)]
pub struct LocalFileProvider {
    path: PathBuf,
}

type Tables = BTreeMap<String, BTreeMap<String, SecretValue>>;

impl LocalFileProvider {
    /// Opens `path`, checking now that it is private and well-formed, so a
    /// bad file stops the host at start rather than at the first run.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SecretError> {
        let provider = Self { path: path.into() };
        provider.load()?;
        Ok(provider)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<Tables, SecretError> {
        let path = self.path.display();
        let meta = std::fs::metadata(&self.path).map_err(|e| SecretError::Config {
            message: format!("local secrets file {path}: {e}"),
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecretError::Config {
                    message: format!(
                        "local secrets file {path} has mode {mode:04o}: group or others can \
                         access it; run `chmod 600 {path}`"
                    ),
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = Zeroizing::new(std::fs::read_to_string(&self.path).map_err(|e| {
            SecretError::Config {
                message: format!("local secrets file {path}: {e}"),
            }
        })?);
        // toml's messages quote the offending line, which could hold a
        // value: report only where the error is.
        toml::from_str::<Tables>(&text).map_err(|e| {
            let at = e.span().map_or(String::new(), |s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" at line {line}")
            });
            SecretError::Config {
                message: format!(
                    "local secrets file {path}{at}: not a table of paths to tables of string keys"
                ),
            }
        })
    }

    fn lookup(&self, grant: &SecretGrant) -> Result<Fetched, SecretError> {
        let tables = self.load()?;
        let plain = kv2_plain_path(&grant.path);
        let table = tables
            .get(&grant.path)
            .or_else(|| tables.get(&plain))
            .or_else(|| tables.get(&kv2_api_path(&plain)))
            .ok_or_else(|| self.not_found(grant))?;
        match &grant.key {
            Some(key) => {
                let value = table.get(key).ok_or_else(|| self.not_found(grant))?;
                Ok(Fetched::plain(value.clone()))
            }
            None => {
                let map: BTreeMap<&str, &str> = table
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.expose()))
                    .collect();
                let json = serde_json::to_string(&map).unwrap_or_default();
                Ok(Fetched {
                    value: SecretValue::new(json),
                    parts: table.values().cloned().collect(),
                    lease: None,
                })
            }
        }
    }

    fn not_found(&self, grant: &SecretGrant) -> SecretError {
        SecretError::NotFound {
            path: grant.path.clone(),
            key: grant.key.clone().unwrap_or_else(|| "*".into()),
            source_name: self.describe(),
        }
    }
}

/// `secret/data/app/db` (Vault's KV v2 API spelling) as a policy usually
/// writes it: `secret/app/db`.
fn kv2_plain_path(path: &str) -> String {
    match path.split_once("/data/") {
        Some((mount, rest)) if !mount.contains('/') => format!("{mount}/{rest}"),
        _ => path.to_string(),
    }
}

/// `secret/app/db` as Vault's KV v2 API spells it: `secret/data/app/db`.
fn kv2_api_path(path: &str) -> String {
    match path.split_once('/') {
        Some((mount, rest)) => format!("{mount}/data/{rest}"),
        None => path.to_string(),
    }
}

impl SecretProvider for LocalFileProvider {
    fn describe(&self) -> String {
        format!("local secrets file {}", self.path.display())
    }

    fn read<'a>(
        &'a self,
        grant: &'a SecretGrant,
        _max_ttl: Duration,
    ) -> BoxFuture<'a, Result<Fetched, SecretError>> {
        Box::pin(async move { self.lookup(grant) })
    }

    fn revoke<'a>(&'a self, _lease_id: &'a str) -> BoxFuture<'a, Result<(), SecretError>> {
        // The file hands out no leases.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    fn grant(path: &str, key: Option<&str>) -> SecretGrant {
        SecretGrant {
            path: path.into(),
            key: key.map(str::to_string),
            dynamic: key.is_none(),
            env: None,
        }
    }

    const TEXT: &str = "[\"secret/reports\"]\nsmtp_password = \"pa55\"\n\
                        [\"secret/data/other\"]\ntoken = \"tok\"\n\
                        [\"database/creds/ro\"]\nusername = \"u1\"\npassword = \"p1\"\n";

    #[tokio::test]
    async fn reads_a_key_by_the_policy_path_or_the_kv2_api_path() {
        let (_d, path) = file(TEXT, 0o600);
        let p = LocalFileProvider::open(&path).unwrap();
        let v = p
            .read(
                &grant("secret/reports", Some("smtp_password")),
                Duration::MAX,
            )
            .await
            .unwrap();
        assert_eq!(v.value.expose(), "pa55");
        assert!(v.lease.is_none());
        let v = p
            .read(&grant("secret/other", Some("token")), Duration::MAX)
            .await
            .unwrap();
        assert_eq!(v.value.expose(), "tok");
        let v = p
            .read(
                &grant("secret/data/reports", Some("smtp_password")),
                Duration::MAX,
            )
            .await
            .unwrap();
        assert_eq!(v.value.expose(), "pa55");
    }

    #[tokio::test]
    async fn a_dynamic_grant_gets_the_whole_table_as_json_and_each_field_is_redacted() {
        let (_d, path) = file(TEXT, 0o600);
        let p = LocalFileProvider::open(&path).unwrap();
        let v = p
            .read(&grant("database/creds/ro", None), Duration::MAX)
            .await
            .unwrap();
        assert_eq!(v.value.expose(), r#"{"password":"p1","username":"u1"}"#);
        assert_eq!(v.parts.len(), 2);
    }

    #[tokio::test]
    async fn a_missing_key_is_not_found_naming_path_and_key() {
        let (_d, path) = file(TEXT, 0o600);
        let p = LocalFileProvider::open(&path).unwrap();
        let e = p
            .read(&grant("secret/reports", Some("nope")), Duration::MAX)
            .await
            .unwrap_err();
        assert!(matches!(e, SecretError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("`nope` at `secret/reports`"), "{e}");
    }

    #[test]
    fn a_group_or_world_readable_file_is_refused_naming_path_and_mode() {
        let (_d, path) = file(TEXT, 0o644);
        let e = LocalFileProvider::open(&path).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("mode 0644"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable);
    }

    #[test]
    fn a_malformed_file_is_refused_without_quoting_it() {
        let (_d, path) = file("[\"secret/x\"]\nk = \"leaky\" junk\n", 0o600);
        let text = LocalFileProvider::open(&path).unwrap_err().to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("leaky"), "{text}");
    }
}
