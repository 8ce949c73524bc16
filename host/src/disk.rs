//! The disk the host needs for itself, kept out of guests' reach.
//!
//! Every run writes audit records under the data dir, and with the audit
//! log failing closed a full filesystem there refuses every run on the
//! host. A guest with a `rw` preopen on that same filesystem could fill it
//! on purpose. So:
//!
//! - at start, a `rw` preopen root on the filesystem (`st_dev`) of the data
//!   dir is refused ([`check_shared_filesystem`]) unless the operator
//!   accepts the risk with `runtime.allow_shared_filesystem = true`;
//! - before each audit record, the free space of the audit directory's
//!   filesystem is compared with a floor (`audit.min_free_mb`,
//!   [`FreeSpaceFloor`]); below it the record, and so the run, is refused
//!   with [`LowDisk`] while there is still room to write the refusal
//!   elsewhere, and `if_chassis_audit_free_bytes` shows the level.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::policy::{Mode, Policy};

/// Free bytes on the audit log's filesystem, as last measured.
pub const AUDIT_FREE_BYTES: &str = "if_chassis_audit_free_bytes";

/// The floor below which audit records (and so runs) are refused.
pub const AUDIT_MIN_FREE_BYTES: &str = "if_chassis_audit_min_free_bytes";

/// Free space is measured at most this often; between measurements the
/// last answer stands.
const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// Bytes an unprivileged process may still write on `path`'s filesystem.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A `rw` preopen root shares the data dir's filesystem.
#[derive(Debug, Error)]
#[error(
    "policy `{policy}` ({}) maps `{root}` read-write on the filesystem that holds the data dir \
     {} (device {device}): a guest could fill it, and with the audit log failing closed every run \
     on this host would then fail; give the preopen its own filesystem, or accept the risk with \
     `runtime.allow_shared_filesystem = true`",
    source_file.display(),
    data_dir.display()
)]
pub struct SharedFilesystem {
    /// The policy's name.
    pub policy: String,
    /// The file it came from.
    pub source_file: PathBuf,
    /// The `rw` root.
    pub root: String,
    /// The data dir.
    pub data_dir: PathBuf,
    /// The shared `st_dev`.
    pub device: u64,
}

/// Refuses any `rw` preopen root of `policies` on the same filesystem as
/// `data_dir`, unless `allow`. A root that does not exist yet is skipped
/// (its runs fail until it does); the data dir must exist.
pub fn check_shared_filesystem<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    data_dir: &Path,
    allow: bool,
) -> Result<(), SharedFilesystem> {
    if allow {
        return Ok(());
    }
    let Ok(data) = std::fs::metadata(data_dir) else {
        return Ok(());
    };
    for policy in policies {
        for root in policy.preopens.iter().filter(|p| p.mode == Mode::ReadWrite) {
            let Ok(meta) = std::fs::metadata(&root.host) else {
                continue;
            };
            if meta.dev() == data.dev() {
                return Err(SharedFilesystem {
                    policy: policy.name.clone(),
                    source_file: policy.source.clone().unwrap_or_default(),
                    root: root.host.clone(),
                    data_dir: data_dir.to_path_buf(),
                    device: data.dev(),
                });
            }
        }
    }
    Ok(())
}

/// The audit log's filesystem is below its free-space floor.
#[derive(Debug, Error)]
#[error(
    "the audit log's filesystem ({}) has {free_bytes} bytes free, below the floor of \
     {min_free_bytes} (audit.min_free_mb): runs are refused until space is freed",
    dir.display()
)]
pub struct LowDisk {
    /// The audit directory.
    pub dir: PathBuf,
    /// Free bytes measured.
    pub free_bytes: u64,
    /// The floor.
    pub min_free_bytes: u64,
}

/// The free-space floor under the audit log, checked before each record.
///
/// Each run checks it twice, from every worker thread, so the check reads
/// the last measurement from atomics (no lock, no metric lookup); one
/// caller re-measures once it is [`MEASURE_EVERY`] old, and publishes the
/// gauges then.
#[derive(Debug)]
pub struct FreeSpaceFloor {
    dir: PathBuf,
    min_free_bytes: u64,
    /// What times are counted from.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last measurement, plus one (0:
    /// never measured).
    measured_at: AtomicU64,
    /// Free bytes at the last measurement.
    free: AtomicU64,
    /// Held by the caller re-measuring, so one `statvfs` runs at a time.
    measuring: Mutex<()>,
}

impl FreeSpaceFloor {
    /// A floor of `min_free_bytes` under `dir`.
    pub fn new(dir: impl Into<PathBuf>, min_free_bytes: u64) -> Self {
        Self {
            dir: dir.into(),
            min_free_bytes,
            epoch: Instant::now(),
            measured_at: AtomicU64::new(0),
            free: AtomicU64::new(0),
            measuring: Mutex::new(()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Free bytes now (or as measured within the last second). A
    /// filesystem that cannot be measured counts as full: the check fails
    /// closed.
    pub fn free_bytes(&self) -> u64 {
        let at = self.measured_at.load(Ordering::Acquire);
        if at != 0 && self.now_ms().saturating_sub(at) < MEASURE_EVERY.as_millis() as u64 {
            return self.free.load(Ordering::Relaxed);
        }
        match self.measuring.try_lock() {
            Ok(_guard) => self.measure(),
            // Another caller is measuring: its last answer stands, unless
            // there is none yet.
            Err(_) if at != 0 => self.free.load(Ordering::Relaxed),
            Err(_) => {
                let _guard = self.measuring.lock().unwrap_or_else(|p| p.into_inner());
                self.free.load(Ordering::Relaxed)
            }
        }
    }

    /// Measures now and exports the level as [`AUDIT_FREE_BYTES`] (and the
    /// floor as [`AUDIT_MIN_FREE_BYTES`]): also called once the metrics
    /// exporter is installed, so the gauges never wait for a run.
    pub fn publish(&self) -> u64 {
        let _guard = self.measuring.lock().unwrap_or_else(|p| p.into_inner());
        self.measure()
    }

    fn measure(&self) -> u64 {
        let free = free_bytes(&self.dir).unwrap_or_else(|e| {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot measure the audit log's free space");
            0
        });
        self.free.store(free, Ordering::Relaxed);
        self.measured_at.store(self.now_ms(), Ordering::Release);
        metrics::gauge!(AUDIT_FREE_BYTES).set(free as f64);
        metrics::gauge!(AUDIT_MIN_FREE_BYTES).set(self.min_free_bytes as f64);
        free
    }

    /// Fails when free space is below the floor.
    pub fn check(&self) -> Result<(), LowDisk> {
        let free = self.free_bytes();
        if free < self.min_free_bytes {
            return Err(LowDisk {
                dir: self.dir.clone(),
                free_bytes: free,
                min_free_bytes: self.min_free_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(text, Path::new("p.toml")).unwrap()
    }

    #[test]
    fn a_rw_root_beside_the_data_dir_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let rw = policy(&format!(
            "name = \"filler\"\n[[filesystem]]\nhost = \"{}\"\nguest = \"/out\"\nmode = \"rw\"\n",
            out.display()
        ));
        let err = check_shared_filesystem([&rw], &data, false).unwrap_err();
        assert_eq!(err.policy, "filler");
        let text = err.to_string();
        assert!(text.contains("allow_shared_filesystem = true"), "{text}");
        assert!(text.contains(&out.display().to_string()), "{text}");
        check_shared_filesystem([&rw], &data, true).unwrap();
        // Read-only roots cannot fill anything; missing roots are skipped.
        let ro = policy(&format!(
            "name = \"reader\"\n[[filesystem]]\nhost = \"{}\"\nguest = \"/out\"\nmode = \"ro\"\n\
             [[filesystem]]\nhost = \"{}\"\nguest = \"/m\"\nmode = \"rw\"\n",
            out.display(),
            dir.path().join("missing").display()
        ));
        check_shared_filesystem([&ro], &data, false).unwrap();
    }

    #[test]
    fn a_root_on_another_filesystem_is_fine() {
        // /proc is never the filesystem of a temp dir.
        let dir = tempfile::tempdir().unwrap();
        let rw = policy(
            "name = \"p\"\n[[filesystem]]\nhost = \"/proc\"\nguest = \"/p\"\nmode = \"rw\"\n",
        );
        check_shared_filesystem([&rw], dir.path(), false).unwrap();
    }

    #[test]
    fn the_floor_refuses_below_it_and_reports_what_it_measured() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        FreeSpaceFloor::new(dir.path(), 1).check().unwrap();
        let err = FreeSpaceFloor::new(dir.path(), u64::MAX)
            .check()
            .unwrap_err();
        assert_eq!(err.min_free_bytes, u64::MAX);
        assert!(err.free_bytes > 0);
        assert!(err.to_string().contains("audit.min_free_mb"), "{err}");
        // An unmeasurable filesystem counts as full.
        let gone = FreeSpaceFloor::new(dir.path().join("missing"), 1);
        assert_eq!(gone.check().unwrap_err().free_bytes, 0);
    }
}
