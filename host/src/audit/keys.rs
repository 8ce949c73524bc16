//! The audit signing key: generated on first start into the data dir
//! (mode 0600) or read from a configured path, and the list of every public
//! key the log has used, which `verify` trusts.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::AuditError;
use super::record::key_id;

/// File name of the signing key in the keys dir.
pub const SIGNING_KEY_FILE: &str = "audit.ed25519";
/// File listing every public key used, one hex key per line.
pub const PUBLIC_KEYS_FILE: &str = "audit.pub";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the signing key at `path`, refusing one readable by others.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(io(path))?);
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(AuditError::Key(format!(
            "{} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        AuditError::Key(format!(
            "{} holds {} bytes, expected 32",
            path.display(),
            bytes.len()
        ))
    })?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes a fresh key to `path` (mode 0600, never overwriting).
pub fn generate_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut()).map_err(|e| AuditError::Key(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(secret.as_ref())
        .and_then(|_| file.sync_all())
        .map_err(io(path))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// The key at `path`, created if absent.
pub fn load_or_create(path: &Path) -> Result<SigningKey, AuditError> {
    if path.exists() {
        read_signing_key(path)
    } else {
        generate_signing_key(path)
    }
}

/// Appends `key` to the public key list next to the signing key.
pub fn remember_public_key(keys_dir: &Path, key: &VerifyingKey) -> Result<(), AuditError> {
    let path = keys_dir.join(PUBLIC_KEYS_FILE);
    let known = read_public_keys(&path).unwrap_or_default();
    if known.iter().any(|k| k == key) {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    writeln!(file, "{}", hex::encode(key.as_bytes())).map_err(io(&path))
}

/// Reads public keys, one hex key per line (`#` comments allowed).
pub fn read_public_keys(path: &Path) -> Result<Vec<VerifyingKey>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, line)| {
            parse_public_key(line)
                .map_err(|e| AuditError::Key(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// Parses a hex Ed25519 public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|_| "not hex".to_string())?;
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| "not 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// Where the keys of a data dir live.
pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// A human label for a key.
pub fn describe(key: &VerifyingKey) -> String {
    format!("{} ({})", key_id(key), hex::encode(key.as_bytes()))
}
