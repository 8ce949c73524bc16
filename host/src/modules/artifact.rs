//! Sealed compiled artifacts (`.cwasm`) on disk.
//!
//! Deserializing compiled code is memory-unsafe if the bytes are not what
//! wasmtime wrote, so the host only loads artifacts it sealed itself: each
//! file carries an HMAC-SHA256 over its whole content under a key kept in the
//! host's data dir (mode 0600). A file edited, truncated, copied from another
//! host or built by another engine version fails the check and is never
//! handed to wasmtime.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// First bytes of every sealed artifact.
pub const MAGIC: &[u8; 8] = b"CHSCWASM";
const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
const ID_LEN: usize = 32;

/// Bytes of the sealing key.
pub const KEY_LEN: usize = 32;

/// A sealing key, wiped from memory when dropped.
#[derive(Clone)]
pub struct SealKey(zeroize::Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A fresh random key, for hosts with no data dir.
    pub fn random() -> std::io::Result<Self> {
        let mut key = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut()).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self(key))
    }

    /// Reads the key at `path`, creating it (mode 0600) if absent. A key file
    /// readable by group or others is refused: anyone who can read it can
    /// forge artifacts the host will execute.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match fs::read(path).map(zeroize::Zeroizing::new) {
            Ok(bytes) => {
                let mode = fs::metadata(path)
                    .map_err(|e| e.to_string())?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{} is readable by group or others (mode {:o}); chmod 600 it",
                        path.display(),
                        mode & 0o777
                    ));
                }
                let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                    format!(
                        "{} holds {} bytes, expected {KEY_LEN}",
                        path.display(),
                        bytes.len()
                    )
                })?;
                Ok(Self(zeroize::Zeroizing::new(key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::random().map_err(|e| e.to_string())?;
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                file.write_all(key.0.as_ref())
                    .and_then(|_| file.sync_all())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(key)
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(self.0.as_ref()).expect("HMAC accepts any key length")
    }
}

/// A verified artifact's contents.
#[derive(Debug)]
pub struct Unsealed<'a> {
    /// sha256 of the source `.wasm`.
    pub source_sha256: [u8; ID_LEN],
    /// The engine compatibility hash it was built with.
    pub compat: &'a str,
    /// wasmtime's serialized component.
    pub payload: &'a [u8],
}

/// Wraps a serialized component with its source hash, engine hash and seal.
pub fn seal(key: &SealKey, source_sha256: &[u8; ID_LEN], compat: &str, payload: &[u8]) -> Vec<u8> {
    let compat = compat.as_bytes();
    let mut out = Vec::with_capacity(payload.len() + 128);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(source_sha256);
    out.extend_from_slice(&(compat.len() as u16).to_le_bytes());
    out.extend_from_slice(compat);
    out.extend_from_slice(payload);
    let mut mac = key.mac();
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&tag);
    out
}

/// Checks the seal and the engine hash; returns the payload only if both hold.
pub fn unseal<'a>(
    key: &SealKey,
    bytes: &'a [u8],
    expect_compat: &str,
) -> Result<Unsealed<'a>, String> {
    let header = MAGIC.len() + 1 + ID_LEN + 2;
    if bytes.len() < header + TAG_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a chassis compiled artifact (bad header)".into());
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let mut mac = key.mac();
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| {
        "seal does not verify: the file was changed, or sealed by another host".to_string()
    })?;
    if body[MAGIC.len()] != VERSION {
        return Err(format!(
            "artifact format version {} is not {VERSION}",
            body[MAGIC.len()]
        ));
    }
    let mut at = MAGIC.len() + 1;
    let source_sha256: [u8; ID_LEN] = body[at..at + ID_LEN].try_into().expect("length checked");
    at += ID_LEN;
    let compat_len = u16::from_le_bytes([body[at], body[at + 1]]) as usize;
    at += 2;
    let compat = body
        .get(at..at + compat_len)
        .and_then(|c| std::str::from_utf8(c).ok())
        .ok_or("truncated header")?;
    if compat != expect_compat {
        return Err(format!(
            "built by an incompatible engine ({compat}, this host is {expect_compat}); recompile it"
        ));
    }
    Ok(Unsealed {
        source_sha256,
        compat,
        payload: &body[at + compat_len..],
    })
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the
/// whole new one, never a partial write. Concurrent writers (two runbook
/// steps registering the same module at once) each use their own temporary
/// file; the last rename wins with identical bytes.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp{}-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact"),
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writers_of_one_path_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m").join("a.cwasm");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        write_atomic(&path, b"same bytes").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fs::read(&path).unwrap(), b"same bytes");
        assert_eq!(
            fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temporary files left"
        );
    }

    #[test]
    fn a_sealed_artifact_unseals_with_the_same_key_only() {
        let key = SealKey::random().unwrap();
        let sealed = seal(&key, &[7; 32], "abc", b"payload");
        let open = unseal(&key, &sealed, "abc").unwrap();
        assert_eq!(open.payload, b"payload");
        assert_eq!(open.source_sha256, [7; 32]);
        let other = SealKey::random().unwrap();
        assert!(unseal(&other, &sealed, "abc").unwrap_err().contains("seal"));
    }

    #[test]
    fn any_flipped_byte_breaks_the_seal() {
        let key = SealKey::random().unwrap();
        let sealed = seal(&key, &[1; 32], "abc", b"some compiled code");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(unseal(&key, &bad, "abc").is_err(), "byte {i}");
        }
        assert!(unseal(&key, &sealed[..sealed.len() - 1], "abc").is_err());
    }

    #[test]
    fn another_engine_is_refused() {
        let key = SealKey::random().unwrap();
        let sealed = seal(&key, &[1; 32], "abc", b"x");
        assert!(
            unseal(&key, &sealed, "def")
                .unwrap_err()
                .contains("incompatible")
        );
    }

    #[test]
    fn a_group_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        SealKey::load_or_create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        SealKey::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            SealKey::load_or_create(&path)
                .unwrap_err()
                .contains("chmod 600")
        );
    }
}
