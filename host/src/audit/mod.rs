//! The tamper-evident audit log.
//!
//! Format 2. One JSON record per line (see [`record::Record`]): each
//! carries the hash of the previous line, and a signed `checkpoint` record
//! every batch (at most `batch_records` or `batch_interval_ms`, and at file
//! rotation, key rotation and shutdown) signs the chain so far, so an edit,
//! deletion, insertion, reordering or truncation is detected by `chassis
//! audit verify`. The log starts with a genesis record (`seq` 0,
//! `log.created`) naming its public key, and the writer refuses to continue
//! a log whose tail is behind the last signed checkpoint
//! ([`AuditError::Tail`]) until `chassis audit recover` records the loss.
//! Records are written by one writer thread, off the run's hot path; the
//! queue is bounded and blocks rather than drops. When
//! the log cannot be written, [`AuditLog::record`] fails (and runs fail
//! closed) unless the log was opened with `fail_open`, and every failure is
//! counted in `if_chassis_audit_write_failures_total`.

pub mod context;
mod event;
pub mod keys;
mod line;
pub mod record;
mod retention;
pub mod verify;
mod writer;

pub use context::{ContextCache, RunContext, RunId, RunOutcome, RunUsage};
pub use event::Event;
pub use writer::{Recovery, log_files};

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
    /// The log ends before its last signed checkpoint (or has none): it is
    /// not continued until `chassis audit recover` records the loss.
    #[error(
        "audit log {}: {problem}; refusing to continue it. If the loss is known and accepted, run \
         `chassis audit recover --data-dir <DIR>` with the server stopped: it records the loss in the log",
        dir.display()
    )]
    Tail {
        /// The log directory.
        dir: PathBuf,
        /// What is missing.
        problem: TailProblem,
    },
    /// The directory holds a format 1 log (a signature on every record),
    /// which this version neither continues nor verifies.
    #[error(
        "{} is a format 1 audit log (one signature per record); this chassis writes and verifies \
         format 2 only. Verify it with the release that wrote it, archive it, and move the audit \
         directory aside to start a new log",
        path.display()
    )]
    Format1 {
        /// The file.
        path: PathBuf,
    },
}

/// How the end of a log falls short of its last signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailProblem {
    /// Records `from..=to` were signed by a checkpoint but are gone.
    Missing {
        /// First missing sequence number.
        from: u64,
        /// Last missing one (the checkpoint's).
        to: u64,
    },
    /// The log has records but `audit.checkpoint` is gone, so a cut tail
    /// cannot be ruled out.
    NoCheckpoint,
}

impl std::fmt::Display for TailProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailProblem::Missing { from, to } if from == to => write!(
                f,
                "record {from} is missing from the end of the log, though the last signed checkpoint covers it"
            ),
            TailProblem::Missing { from, to } => write!(
                f,
                "records {from} to {to} are missing from the end of the log, though the last signed checkpoint covers them"
            ),
            TailProblem::NoCheckpoint => write!(
                f,
                "audit.checkpoint is missing, so a cut tail cannot be ruled out"
            ),
        }
    }
}

impl AuditError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuditError::Unavailable(_)
            | AuditError::Locked { .. }
            | AuditError::LowDisk(_)
            | AuditError::Tail { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

/// When the writer calls fsync. A signed checkpoint closes every batch
/// (with `Every`: every 256 records or 50 ms).
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
    /// Prune closed (rotated) files last written longer ago than this, at
    /// open and at each rotation, recording each pruning in the log
    /// (`log.pruned`). `None` keeps every file: the CLI's own opens
    /// (`audit recover`, `audit rotate-key`) never prune.
    pub retain: Option<Duration>,
    /// Move pruned files here instead of deleting them.
    pub archive_dir: Option<PathBuf>,
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
            retain: None,
            archive_dir: None,
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
    Event {
        kind: &'static str,
        fields: Value,
    },
    RunStarted {
        run_id: RunId,
        context: RunContext,
    },
    /// The writer knows the run's context from its start.
    RunEnded {
        run_id: RunId,
        outcome: RunOutcome,
    },
    /// A whole run about which nothing else was recorded: its start and
    /// end in one message (see [`AuditLog::run_completed`]).
    RunCompleted {
        run_id: RunId,
        context: RunContext,
        outcome: RunOutcome,
    },
    Flush(SyncSender<Result<(), String>>),
    RotateKey(Box<SigningKey>, SyncSender<Result<(), String>>),
    Stop,
}

#[derive(Debug, Default)]
pub(crate) struct Health {
    pub(crate) healthy: AtomicBool,
    /// Set once the writer thread has returned or unwound: from then on
    /// nothing sent is written, so no run may start (fail closed).
    pub(crate) stopped: AtomicBool,
    pub(crate) failures: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

/// Marks the log stopped when the writer thread ends, by returning or by
/// unwinding from a panic: held by the thread, so a writer that dies takes
/// admission with it rather than leaving runs to start whose records
/// nothing will write.
struct StoppedOnExit(Arc<Health>);

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        self.0.healthy.store(false, Ordering::Relaxed);
        self.0.stopped.store(true, Ordering::Release);
    }
}

/// A running audit log; cheap to share.
#[derive(Debug)]
pub struct AuditLog {
    tx: SyncSender<Message>,
    health: Arc<Health>,
    fail_open: bool,
    /// Whether the writer holds `run.started` back (not with `fsync:
    /// every`), so a run's start may also be sent late or with its end.
    holds_starts: bool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// Opens (or starts, with a genesis record) the log in `options.dir`,
    /// continuing the chain from its last record, and starts the writer
    /// thread. Refuses a log whose tail is behind its last signed
    /// checkpoint ([`AuditError::Tail`]). Runs the tail shows started but
    /// never ended get `run.ended` with outcome `host-crashed`.
    pub fn open(options: AuditOptions) -> Result<Arc<Self>, AuditError> {
        Ok(Self::open_with(options, writer::OpenMode::Normal)?.0)
    }

    /// `chassis audit recover`: opens the log even when its tail is behind
    /// the last signed checkpoint, recording the loss in a signed
    /// `log.recovered` record (the lost sequence numbers are never reused).
    pub fn recover(options: AuditOptions) -> Result<(Arc<Self>, Recovery), AuditError> {
        Self::open_with(options, writer::OpenMode::Recover)
    }

    fn open_with(
        options: AuditOptions,
        mode: writer::OpenMode,
    ) -> Result<(Arc<Self>, Recovery), AuditError> {
        let key = keys::load_or_create(&options.key_file)?;
        keys::remember_public_key(&options.keys_dir, &key.verifying_key())?;
        let (state, recovery) = writer::Writer::open(&options, key, mode)?;
        let (tx, rx): (SyncSender<Message>, Receiver<Message>) = sync_channel(options.queue.max(1));
        let health = Arc::new(Health::default());
        health.healthy.store(true, Ordering::Relaxed);
        metrics::counter!(WRITE_FAILURES_TOTAL).absolute(0);
        let thread = {
            let health = health.clone();
            std::thread::Builder::new()
                .name("chassis-audit".into())
                .spawn(move || {
                    let _stopped = StoppedOnExit(health.clone());
                    state.run(rx, health)
                })
                .map_err(|source| AuditError::Io {
                    path: options.dir.clone(),
                    source,
                })?
        };
        Ok((
            Arc::new(Self {
                tx,
                health,
                fail_open: options.fail_open,
                holds_starts: options.fsync != FsyncPolicy::Every,
                thread: Mutex::new(Some(thread)),
            }),
            recovery,
        ))
    }

    /// Queues one event. Fails (fail closed) while the log cannot be
    /// written, unless opened with `fail_open`.
    pub fn event(&self, event: Event<'_>) -> Result<(), AuditError> {
        self.record(event.kind(), event.fields())
    }

    /// Queues `event`, a record of a run already admitted (its denials),
    /// even while the log is failing: refused, it would be lost from the
    /// story of a run whose start is on record. The writer queues it behind
    /// whatever failed, and writes it once the log recovers.
    pub fn run_event(&self, event: Event<'_>) -> Result<(), AuditError> {
        self.send_admitted(Message::Event {
            kind: event.kind(),
            fields: event.fields(),
        })
    }

    /// Queues a record of any `kind` with any `fields`: for tools and
    /// tests writing kinds the host does not define. The host records
    /// only [`Event`]s (and runs, through the run calls below).
    pub fn record(&self, kind: &'static str, fields: Value) -> Result<(), AuditError> {
        self.send(Message::Event { kind, fields })
    }

    /// Records that run `run_id` started under `context` (its module,
    /// world, policy and digest, caller and limits; see [`context`]).
    ///
    /// The writer holds the record back for one batch interval: a run that
    /// ends within it with nothing else recorded about it gets one `run`
    /// record instead of two (or a row of a `runs` record, see
    /// [`context::unfold`]). A run still going after the interval, or one
    /// another record names first (a secret, a denial), gets its
    /// `run.started` then, and the checkpoint that closes the batch signs
    /// it, so a run in flight when the host dies is on disk if it outlived
    /// one batch, the same bound batch fsync puts on every record. With
    /// `fsync: every` nothing is held back.
    pub fn run_started(&self, run_id: RunId, context: RunContext) -> Result<(), AuditError> {
        self.send(Message::RunStarted { run_id, context })
    }

    /// Whether a new run may start: `Err` (fail closed) while the log
    /// cannot be written, unless opened with `fail_open`. A run admitted
    /// here has its start recorded later, with
    /// [`AuditLog::run_started_admitted`] or [`AuditLog::run_completed`].
    pub fn admit_run(&self) -> Result<(), AuditError> {
        if self.fail_open {
            return Ok(());
        }
        if self.health.stopped.load(Ordering::Acquire) {
            return Err(AuditError::Unavailable(
                "the audit writer has stopped".into(),
            ));
        }
        if !self.health.healthy.load(Ordering::Relaxed) {
            let why = self
                .health
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(AuditError::Unavailable(why));
        }
        Ok(())
    }

    /// Whether a run's start may be sent after it started: true unless
    /// every record is synced as it comes (`fsync: every`), where the
    /// writer writes each start at once, and so must get it at once.
    pub fn holds_starts(&self) -> bool {
        self.holds_starts
    }

    /// [`AuditLog::run_started`] for a run [`AuditLog::admit_run`] already
    /// admitted: queued whatever the log's health, like its end.
    pub fn run_started_admitted(
        &self,
        run_id: RunId,
        context: RunContext,
    ) -> Result<(), AuditError> {
        self.send_admitted(Message::RunStarted { run_id, context })
    }

    /// Records a whole run (admitted by [`AuditLog::admit_run`]) in one
    /// message: its context and how it ended, for a run about which
    /// nothing else was recorded and that never waited, so that it had no
    /// reason to be on record before it ended. The writer writes it as
    /// one `run` record (or a row of a `runs` record), as it does a run
    /// whose end came while its start was held back, at the cost of one
    /// queue message instead of two.
    /// Never refused for the log's health.
    pub fn run_completed(
        &self,
        run_id: RunId,
        context: RunContext,
        outcome: RunOutcome,
    ) -> Result<(), AuditError> {
        self.send_admitted(Message::RunCompleted {
            run_id,
            context,
            outcome,
        })
    }

    /// Records how run `run_id` ended (its outcome, error, usage and
    /// denial count). The record names the context the run started under
    /// ([`AuditLog::run_started`]), which the writer keeps until the end.
    ///
    /// Never refused for the log's health (see [`AuditLog::run_event`]):
    /// every `run.started` gets its one end.
    pub fn run_ended(&self, run_id: RunId, outcome: RunOutcome) -> Result<(), AuditError> {
        self.send_admitted(Message::RunEnded { run_id, outcome })
    }

    fn send(&self, message: Message) -> Result<(), AuditError> {
        self.admit_run()?;
        self.send_admitted(message)
    }

    /// Queues `message` whatever the log's health; fails only once the
    /// writer has stopped.
    fn send_admitted(&self, message: Message) -> Result<(), AuditError> {
        self.tx
            .send(message)
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))
    }

    /// Waits until every queued record is written, covered by a signed
    /// checkpoint and synced to disk.
    pub fn flush(&self) -> Result<(), AuditError> {
        let (tx, rx) = sync_channel(1);
        self.tx
            .send(Message::Flush(tx))
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| AuditError::Unavailable("the audit writer did not answer".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Switches to `new` for signing: writes a `key.rotated` record endorsed
    /// by the new key, signs it with the old key in a checkpoint, then signs
    /// checkpoints with `new`.
    pub fn rotate_key(&self, new: SigningKey) -> Result<(), AuditError> {
        let (tx, rx) = sync_channel(1);
        self.tx
            .send(Message::RotateKey(Box::new(new), tx))
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| AuditError::Unavailable("the audit writer did not answer".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Whether the last write succeeded (false once the writer stopped).
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
pub(crate) mod tests;
