//! The writer thread: seals records in order, appends them, syncs, rotates
//! files and keeps the checkpoint.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use serde_json::Value;

use super::record::{GENESIS, Record};
use super::verify::Checkpoint;
use super::{
    AuditError, AuditOptions, FsyncPolicy, Health, Message, RECORDS_TOTAL, WRITE_FAILURES_TOTAL,
    keys,
};

/// File name of the `n`th log file.
pub(crate) fn file_name(n: u32) -> String {
    format!("audit-{n:06}.jsonl")
}

/// The log files in `dir`, in order.
pub fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<(u32, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(n) = name
            .strip_prefix("audit-")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .and_then(|n| n.parse().ok())
        {
            files.push((n, path));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

pub(super) struct Writer {
    dir: PathBuf,
    keys_dir: PathBuf,
    host: String,
    key: SigningKey,
    fsync: FsyncPolicy,
    max_file_bytes: u64,
    file: File,
    file_index: u32,
    file_bytes: u64,
    next_seq: u64,
    last_hash: String,
    written: (u64, String),
    unsynced: u32,
    last_sync: Instant,
    pending: VecDeque<Record>,
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The last record of the newest non-empty file, if any.
fn last_record(files: &[PathBuf]) -> Result<Option<Record>, AuditError> {
    for path in files.iter().rev() {
        let file = File::open(path).map_err(io(path))?;
        if !file.metadata().map_err(io(path))?.is_file() {
            return Err(AuditError::Corrupt {
                path: path.clone(),
                message: "is not a regular file".into(),
            });
        }
        let mut last = None;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io(path))?;
            if !line.trim().is_empty() {
                last = Some(line);
            }
        }
        if let Some(line) = last {
            let record: Record = serde_json::from_str(&line).map_err(|e| AuditError::Corrupt {
                path: path.clone(),
                message: format!(
                    "its last line is not a complete record ({e}); run `chassis audit verify` before writing more"
                ),
            })?;
            return Ok(Some(record));
        }
    }
    Ok(None)
}

impl Writer {
    pub(super) fn open(options: &AuditOptions, key: SigningKey) -> Result<Self, AuditError> {
        std::fs::create_dir_all(&options.dir).map_err(io(&options.dir))?;
        let lock_path = options.dir.join("audit.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(AuditError::Locked { path: lock_path });
        }
        let files = log_files(&options.dir).map_err(io(&options.dir))?;
        let (next_seq, last_hash) = match last_record(&files)? {
            Some(r) => (r.seq + 1, r.hash),
            None => (1, GENESIS.to_string()),
        };
        let file_index = files
            .last()
            .and_then(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_prefix("audit-")?
                    .strip_suffix(".jsonl")?
                    .parse()
                    .ok()
            })
            .unwrap_or(1);
        let path = options.dir.join(file_name(file_index));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let file_bytes = file.metadata().map_err(io(&path))?.len();
        Ok(Self {
            dir: options.dir.clone(),
            keys_dir: options.keys_dir.clone(),
            host: options.host_id.clone(),
            key,
            fsync: options.fsync,
            max_file_bytes: options.max_file_bytes.max(1024),
            file,
            file_index,
            file_bytes,
            next_seq,
            written: (next_seq - 1, last_hash.clone()),
            last_hash,
            unsynced: 0,
            last_sync: Instant::now(),
            pending: VecDeque::new(),
            _lock: lock,
        })
    }

    fn seal(&mut self, kind: &str, fields: Value) {
        let mut record = Record {
            seq: self.next_seq,
            ts: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            host: self.host.clone(),
            kind: kind.to_string(),
            fields,
            prev: self.last_hash.clone(),
            hash: String::new(),
            sig: String::new(),
            key: String::new(),
        };
        record.seal(&self.key);
        self.next_seq += 1;
        self.last_hash = record.hash.clone();
        self.pending.push_back(record);
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(file_name(self.file_index))
    }

    /// Writes pending records; on failure keeps them for the next attempt.
    fn drain(&mut self, health: &Health) {
        while let Some(record) = self.pending.front() {
            let mut line = serde_json::to_string(record).expect("records always serialise");
            line.push('\n');
            let result = (|| -> std::io::Result<()> {
                if self.file_bytes > 0 && self.file_bytes + line.len() as u64 > self.max_file_bytes
                {
                    self.file.sync_data()?;
                    let next = self.dir.join(file_name(self.file_index + 1));
                    self.file = OpenOptions::new().create(true).append(true).open(&next)?;
                    self.file_index += 1;
                    self.file_bytes = 0;
                }
                if let Err(e) = self.file.write_all(line.as_bytes()) {
                    // Never leave half a record behind.
                    let _ = self.file.set_len(self.file_bytes);
                    return Err(e);
                }
                Ok(())
            })();
            match result {
                Ok(()) => {
                    self.file_bytes += line.len() as u64;
                    self.unsynced += 1;
                    self.written = (record.seq, record.hash.clone());
                    self.pending.pop_front();
                    metrics::counter!(RECORDS_TOTAL).increment(1);
                    if self.fsync == FsyncPolicy::Every
                        && let Err(e) = self.sync()
                    {
                        self.fail(health, e);
                        return;
                    }
                }
                Err(e) => {
                    self.fail(
                        health,
                        format!("writing {}: {e}", self.current_path().display()),
                    );
                    return;
                }
            }
        }
        health.healthy.store(true, Ordering::Relaxed);
    }

    fn fail(&self, health: &Health, message: String) {
        if health.healthy.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %message, "audit log write failed; runs fail closed until it recovers");
        }
        health.failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(WRITE_FAILURES_TOTAL).increment(1);
        *health.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    fn sync(&mut self) -> Result<(), String> {
        if self.unsynced == 0 {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| format!("syncing {}: {e}", self.current_path().display()))?;
        self.unsynced = 0;
        self.last_sync = Instant::now();
        let checkpoint = Checkpoint {
            seq: self.written.0,
            hash: self.written.1.clone(),
            file: file_name(self.file_index),
        };
        checkpoint
            .write(&self.dir.join(super::verify::CHECKPOINT_FILE))
            .map_err(|e| format!("writing the checkpoint: {e}"))
    }

    fn batch_due(&self) -> bool {
        match self.fsync {
            FsyncPolicy::Every => false,
            FsyncPolicy::Batch {
                records,
                interval_ms,
            } => {
                self.unsynced >= records.max(1)
                    || (self.unsynced > 0
                        && self.last_sync.elapsed() >= Duration::from_millis(interval_ms))
            }
        }
    }

    fn rotate_key(&mut self, new: SigningKey, health: &Health) -> Result<(), String> {
        let new_public = new.verifying_key();
        let mut message = hex::decode(&self.last_hash).unwrap_or_default();
        message.extend_from_slice(new_public.as_bytes());
        let endorsement = new.sign(&message);
        self.seal(
            "key.rotated",
            serde_json::json!({
                "old_key": super::record::key_id(&self.key.verifying_key()),
                "new_key": super::record::key_id(&new_public),
                "new_public_key": hex::encode(new_public.as_bytes()),
                "endorsement": hex::encode(endorsement.to_bytes()),
            }),
        );
        self.drain(health);
        if !self.pending.is_empty() {
            return Err("the rotation record could not be written".into());
        }
        self.sync()?;
        keys::remember_public_key(&self.keys_dir, &new_public).map_err(|e| e.to_string())?;
        self.key = new;
        Ok(())
    }

    pub(super) fn run(mut self, rx: Receiver<Message>, health: Arc<Health>) {
        loop {
            let wait = match self.fsync {
                FsyncPolicy::Batch { interval_ms, .. } if self.unsynced > 0 => {
                    Duration::from_millis(interval_ms)
                }
                _ if !self.pending.is_empty() => Duration::from_millis(500),
                _ => Duration::from_secs(3600),
            };
            match rx.recv_timeout(wait) {
                Ok(Message::Event { kind, fields }) => self.seal(kind, fields),
                Ok(Message::Flush(reply)) => {
                    self.drain(&health);
                    let result = if self.pending.is_empty() {
                        self.sync()
                    } else {
                        Err(health
                            .last_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone()
                            .unwrap_or_default())
                    };
                    let _ = reply.send(result);
                }
                Ok(Message::RotateKey(new, reply)) => {
                    let _ = reply.send(self.rotate_key(*new, &health));
                }
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.drain(&health);
                    if let Err(e) = self.sync() {
                        self.fail(&health, e);
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.drain(&health);
            if self.batch_due()
                && let Err(e) = self.sync()
            {
                self.fail(&health, e);
            }
        }
    }
}
