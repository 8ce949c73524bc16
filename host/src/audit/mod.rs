//! The tamper-evident audit log.
//!
//! One JSON record per line (see [`record::Record`]): each carries the
//! previous record's hash and an Ed25519 signature, so an edit, deletion,
//! insertion, reordering or truncation is detected by `chassis audit
//! verify`. Records are sealed and written by one writer thread, off the
//! run's hot path; the queue is bounded and blocks rather than drops. When
//! the log cannot be written, [`AuditLog::record`] fails (and runs fail
//! closed) unless the log was opened with `fail_open`, and every failure is
//! counted in `if_chassis_audit_write_failures_total`.

pub mod keys;
pub mod record;
pub mod verify;
mod writer;

pub use writer::log_files;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::error::ErrorKind;

/// Records the writer thread has sealed and written.
pub const RECORDS_TOTAL: &str = "if_chassis_audit_records_total";
/// Failed attempts to write the audit log.
pub const WRITE_FAILURES_TOTAL: &str = "if_chassis_audit_write_failures_total";

/// Why the audit log could not be opened, written or verified.
#[derive(Debug, Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key is missing, malformed or unsafe.
    #[error("audit key: {0}")]
    Key(String),
    /// The existing log cannot be continued.
    #[error("audit log {}: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Another process holds the log.
    #[error("audit log {} is in use by another chassis process", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The log cannot be written now, so the run is refused (fail closed).
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// The log's filesystem is below its free-space floor (see `crate::disk`).
    #[error(transparent)]
    LowDisk(#[from] crate::disk::LowDisk),
}

impl AuditError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuditError::Unavailable(_) | AuditError::Locked { .. } | AuditError::LowDisk(_) => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Internal,
        }
    }
}

/// When the writer calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum FsyncPolicy {
    /// After every record: nothing acknowledged is ever lost.
    Every,
    /// After `records` records or `interval_ms`, whichever comes first: at
    /// most that much is lost on a power cut, never silently reordered.
    Batch {
        /// Records per fsync.
        records: u32,
        /// Longest time between fsyncs.
        interval_ms: u64,
    },
}

/// How an audit log is opened.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Directory of `audit-NNNNNN.jsonl` files and the checkpoint.
    pub dir: PathBuf,
    /// The signing key file (created, mode 0600, if absent).
    pub key_file: PathBuf,
    /// Where the list of public keys is kept (`audit.pub`).
    pub keys_dir: PathBuf,
    /// The host id written into every record.
    pub host_id: String,
    /// fsync policy.
    pub fsync: FsyncPolicy,
    /// Start a new file past this size; the chain continues across files.
    pub max_file_bytes: u64,
    /// Keep accepting records (queued, counted) when the log cannot be written.
    pub fail_open: bool,
    /// Records that may wait for the writer before `record` blocks.
    pub queue: usize,
}

impl AuditOptions {
    /// The defaults under a data dir: `DATA/audit`, key `DATA/keys/audit.ed25519`.
    pub fn in_data_dir(data_dir: &std::path::Path) -> Self {
        Self {
            dir: data_dir.join("audit"),
            key_file: keys::keys_dir(data_dir).join(keys::SIGNING_KEY_FILE),
            keys_dir: keys::keys_dir(data_dir),
            host_id: host_id(),
            fsync: FsyncPolicy::Batch {
                records: 256,
                interval_ms: 50,
            },
            max_file_bytes: 64 * 1024 * 1024,
            fail_open: false,
            queue: 65_536,
        }
    }
}

/// This machine's host name, or `unknown-host`.
pub fn host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

pub(crate) enum Message {
    Event { kind: &'static str, fields: Value },
    Flush(SyncSender<Result<(), String>>),
    RotateKey(Box<SigningKey>, SyncSender<Result<(), String>>),
    Stop,
}

#[derive(Debug, Default)]
pub(crate) struct Health {
    pub(crate) healthy: AtomicBool,
    pub(crate) failures: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

/// A running audit log; cheap to share.
#[derive(Debug)]
pub struct AuditLog {
    tx: SyncSender<Message>,
    health: Arc<Health>,
    fail_open: bool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// Opens (or starts) the log in `options.dir`, continuing the chain from
    /// its last record, and starts the writer thread.
    pub fn open(options: AuditOptions) -> Result<Arc<Self>, AuditError> {
        let key = keys::load_or_create(&options.key_file)?;
        keys::remember_public_key(&options.keys_dir, &key.verifying_key())?;
        let state = writer::Writer::open(&options, key)?;
        let (tx, rx): (SyncSender<Message>, Receiver<Message>) = sync_channel(options.queue.max(1));
        let health = Arc::new(Health::default());
        health.healthy.store(true, Ordering::Relaxed);
        metrics::counter!(WRITE_FAILURES_TOTAL).absolute(0);
        let thread = {
            let health = health.clone();
            std::thread::Builder::new()
                .name("chassis-audit".into())
                .spawn(move || state.run(rx, health))
                .map_err(|source| AuditError::Io {
                    path: options.dir.clone(),
                    source,
                })?
        };
        Ok(Arc::new(Self {
            tx,
            health,
            fail_open: options.fail_open,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Queues one event. Fails (fail closed) while the log cannot be
    /// written, unless opened with `fail_open`.
    pub fn record(&self, kind: &'static str, fields: Value) -> Result<(), AuditError> {
        if !self.fail_open && !self.health.healthy.load(Ordering::Relaxed) {
            let why = self
                .health
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(AuditError::Unavailable(why));
        }
        self.tx
            .send(Message::Event { kind, fields })
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))
    }

    /// Waits until every queued record is written and synced to disk.
    pub fn flush(&self) -> Result<(), AuditError> {
        let (tx, rx) = sync_channel(1);
        self.tx
            .send(Message::Flush(tx))
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| AuditError::Unavailable("the audit writer did not answer".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Switches to `new` for signing: writes a `key.rotated` record signed by
    /// the old key and endorsed by the new one, then signs with `new`.
    pub fn rotate_key(&self, new: SigningKey) -> Result<(), AuditError> {
        let (tx, rx) = sync_channel(1);
        self.tx
            .send(Message::RotateKey(Box::new(new), tx))
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| AuditError::Unavailable("the audit writer did not answer".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Whether the last write succeeded.
    pub fn is_healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Relaxed)
    }

    /// Write failures so far.
    pub fn failures(&self) -> u64 {
        self.health.failures.load(Ordering::Relaxed)
    }

    /// Flushes and stops the writer.
    pub fn close(&self) -> Result<(), AuditError> {
        let flushed = self.flush();
        let _ = self.tx.send(Message::Stop);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
        flushed
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.tx.send(Message::Stop);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
