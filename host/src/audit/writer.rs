//! The writer thread: writes records in order, appends them, syncs, signs a
//! checkpoint per batch, rotates files, and at open checks the log's tail
//! against the last signed checkpoint.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde_json::Value;

use super::context::{
    CONTEXT_KIND, Contexts, ENDED_KIND, Interner, RUN_KIND, RUNS_KIND, RunContext, RunId,
    RunOutcome, RunUsage, STARTED_KIND,
};
use super::line::{self, Clock};
use super::record::{
    CHECKPOINT_KIND, FORMAT, GENESIS_KIND, HexHash, PRUNED_KIND, RECOVERED_KIND, ROTATION_KIND,
    Record, checkpoint_fields, is_format_1, key_id,
};
use super::retention;
use super::verify::{CHECKPOINT_FILE, Checkpoint};
use super::{
    AuditError, AuditOptions, FsyncPolicy, Health, Message, RECORDS_TOTAL, TailProblem,
    WRITE_FAILURES_TOTAL, keys,
};

/// Checkpoint cadence when every record is synced on its own.
const EVERY_CHECKPOINT: (u32, u64) = (256, 50);

/// While records keep coming, the writer sleeps this long between rounds
/// (or the batch interval, if shorter) and takes what queued up meanwhile,
/// instead of blocking on the queue: a sender then never has to wake it
/// (no futex call on the run's thread), and the round's records go to the
/// file in one write and one sync. It blocks again after a round that
/// found nothing. Each round costs a sync, a replaced checkpoint file and
/// a wake-up whatever it holds: at 1 ms those were a quarter of what the
/// log cost the machine per run under load (about 0.4 of 2.0 µs), at
/// 10 ms they are a tenth of that, while a power cut can lose at most
/// this much more than the queue held.
const BUSY_POLL: Duration = Duration::from_millis(10);

/// Most messages one round takes off the queue (as many as the default
/// queue holds), so a round's end (held-back starts, a due checkpoint, the
/// write and the sync) comes however fast messages arrive. A round that
/// reaches it starts the next without sleeping.
const ROUND_MESSAGES: usize = 65_536;

/// Messages between readings of the clock for [`Writer::taken_at`]: a
/// reading per message was a measurable share of the writer's time, one
/// per round could date a start a whole long round early (and so write
/// a short run's start on its own).
const TAKEN_AT_EVERY: usize = 256;

/// Most runs one `runs` record holds. A run in one is ~70 bytes against a
/// ~270-byte `run` record of its own, and the envelope, its hash and its
/// write are paid once for them all; 64 keeps a line under ~5 KB.
const GROUP_RUNS: usize = 64;

/// Buffered record bytes that are written out before the round ends.
const WRITE_BUFFER: usize = 32 * 1024;

/// Attempts at the log's lock, [`LOCK_RETRY`] apart, before it counts as
/// held by another writer (about one second in all).
const LOCK_TRIES: u32 = 20;

/// Time between attempts at the log's lock.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// File name of the `n`th log file.
pub(crate) fn file_name(n: u32) -> String {
    format!("audit-{n:06}.jsonl")
}

fn file_number(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_prefix("audit-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The log files in `dir`, in order.
pub fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<(u32, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(n) = file_number(&path) {
            files.push((n, path));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// How [`Writer::open`] treats a tail behind the signed checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpenMode {
    /// Refuse it ([`AuditError::Tail`]).
    Normal,
    /// Record the loss in a `log.recovered` record and continue.
    Recover,
}

/// What the end of the log looks like, read at open.
#[derive(Debug, Default)]
struct Tail {
    /// The last record and the hash of its line.
    last: Option<(Record, HexHash)>,
    /// The last checkpoint record's line, if the files scanned hold one.
    last_checkpoint: Option<(u64, String)>,
    /// Runs with a `run.started` and no `run.ended`, by run id, with the
    /// context they started under.
    open_runs: BTreeMap<String, RunContext>,
    /// The contexts the newest file defines (the one the writer continues).
    contexts: Contexts,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the newest two non-empty files (runs can span a file boundary):
/// the last record, the last checkpoint and the runs left open.
fn read_tail(files: &[PathBuf]) -> Result<Tail, AuditError> {
    let mut tail = Tail::default();
    let mut scanned: Vec<&PathBuf> = Vec::new();
    for path in files.iter().rev() {
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if !meta.is_file() {
            return Err(AuditError::Corrupt {
                path: path.clone(),
                message: "is not a regular file".into(),
            });
        }
        if meta.len() > 0 {
            scanned.push(path);
            if scanned.len() == 2 {
                break;
            }
        }
    }
    let newest = files.last();
    for path in scanned.into_iter().rev() {
        let mut contexts = Contexts::default();
        let file = File::open(path).map_err(io(path))?;
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io(path))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(&line).map_err(|e| {
                if is_format_1(&line) {
                    AuditError::Format1 { path: path.clone() }
                } else {
                    AuditError::Corrupt {
                        path: path.clone(),
                        message: format!(
                            "line {} is not a complete record ({e}); run `chassis audit verify` before writing more",
                            i + 1
                        ),
                    }
                }
            })?;
            contexts.learn(&record);
            match record.kind.as_str() {
                STARTED_KIND => {
                    if let Some(id) = record.fields["run_id"].as_str() {
                        // Logs written before contexts carry these inline.
                        let context = contexts.of(&record).cloned().unwrap_or_else(|| {
                            serde_json::json!({
                                "module": record.fields["module"],
                                "policy": record.fields["policy"],
                                "caller": record.fields["caller"],
                            })
                        });
                        tail.open_runs
                            .insert(id.to_string(), RunContext::new(&context));
                    }
                }
                ENDED_KIND => {
                    if let Some(id) = record.fields["run_id"].as_str() {
                        tail.open_runs.remove(id);
                    }
                }
                CHECKPOINT_KIND => tail.last_checkpoint = Some((record.seq, line.clone())),
                _ => {}
            }
            tail.last = Some((record, HexHash::of(&line)));
        }
        if Some(path) == newest {
            tail.contexts = contexts;
        }
    }
    Ok(tail)
}

pub(super) struct Writer {
    dir: PathBuf,
    keys_dir: PathBuf,
    key: SigningKey,
    fsync: FsyncPolicy,
    checkpoint_every: (u32, Duration),
    max_file_bytes: u64,
    file: File,
    file_index: u32,
    /// Bytes of the current file, those still in `out` included.
    file_bytes: u64,
    /// Records appended but not yet written to `file`: written at the end
    /// of each round, before every sync and when it passes
    /// [`WRITE_BUFFER`]; kept (and retried) when a write fails.
    out: Vec<u8>,
    /// Records in `out`, counted in [`RECORDS_TOTAL`] once written.
    out_records: u64,
    next_seq: u64,
    last_hash: HexHash,
    unsynced: u32,
    /// The line of the last checkpoint record, until it is synced and the
    /// checkpoint file names it: a failed sync or file write is retried
    /// from here (the record itself is already in the chain, never again).
    checkpoint_owed: Option<String>,
    unsigned: u32,
    last_checkpoint: Instant,
    /// Messages waiting for a retry: the one whose write failed, then those
    /// taken after it (written in order once the log recovers). Empty while
    /// the log is healthy: messages are written as they are taken.
    pending: VecDeque<Pending>,
    /// Runs whose `run.started` is held back, with their context and when
    /// they started.
    deferred: HashMap<RunId, (RunContext, Instant), foldhash::fast::RandomState>,
    /// The held-back runs in the order they started (entries of runs
    /// written since are skipped when they come up).
    deferred_order: VecDeque<(Instant, RunId)>,
    /// Runs whose `run.started` is written and whose end is not, with the
    /// context their end names. Bounded by the runs in flight: the host
    /// ends every run it starts, once.
    open: HashMap<RunId, RunContext, foldhash::fast::RandomState>,
    /// Short runs of one context, ended and not yet written: they become
    /// one `runs` record (one `run` record, when alone) before any other
    /// record is appended, at [`GROUP_RUNS`], and before every write-out,
    /// signature and rotation, so records keep the order their messages
    /// came in and a round's runs reach the file with the round.
    group: Vec<(RunId, std::borrow::Cow<'static, str>, RunUsage)>,
    /// The context number (in the current file) of the runs in `group`.
    group_ctx: u64,
    /// Formats each record's `ts`.
    clock: Clock,
    /// When the message being written was taken off the queue, to within
    /// [`TAKEN_AT_EVERY`] messages: a held-back start's time.
    taken_at: Instant,
    /// Hold `run.started` back at all (not with `fsync: every`).
    defer: bool,
    /// Contexts defined in the current file.
    contexts: Interner,
    retain: Option<Duration>,
    archive_dir: Option<PathBuf>,
    _lock: File,
}

/// A message from [`AuditLog`](super::AuditLog) waiting to be written.
#[derive(Debug, Clone)]
enum Pending {
    Event(&'static str, Value),
    Started {
        run_id: RunId,
        context: RunContext,
    },
    Ended {
        run_id: RunId,
        outcome: RunOutcome,
    },
    /// A whole run in one message ([`super::AuditLog::run_completed`]).
    Completed {
        run_id: RunId,
        context: RunContext,
        outcome: RunOutcome,
    },
}

/// What `chassis audit recover` found and recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The problem recorded, or `None` when the tail was intact.
    pub problem: Option<TailProblem>,
    /// Sequence number of the `log.recovered` record.
    pub seq: Option<u64>,
}

impl Writer {
    pub(super) fn open(
        options: &AuditOptions,
        key: SigningKey,
        mode: OpenMode,
    ) -> Result<(Self, Recovery), AuditError> {
        std::fs::create_dir_all(&options.dir).map_err(io(&options.dir))?;
        let lock_path = options.dir.join("audit.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // A lock is tied to the open file, which a child forked by another
        // thread of this process holds too until it execs (the descriptor
        // is close-on-exec, but not yet closed): a log just closed can look
        // held for that instant, so a held lock is tried again for a while
        // before another writer is blamed.
        let mut tries = 0;
        while lock.try_lock().is_err() {
            tries += 1;
            if tries == LOCK_TRIES {
                return Err(AuditError::Locked { path: lock_path });
            }
            std::thread::sleep(LOCK_RETRY);
        }
        let files = log_files(&options.dir).map_err(io(&options.dir))?;
        let tail = read_tail(&files)?;
        let checkpoint_path = options.dir.join(CHECKPOINT_FILE);
        let checkpoint = if checkpoint_path.exists() {
            let cp = Checkpoint::read(&checkpoint_path).map_err(|message| AuditError::Corrupt {
                path: checkpoint_path.clone(),
                message,
            })?;
            check_own_checkpoint(&cp, &key, &options.keys_dir, &checkpoint_path)?;
            Some(cp)
        } else {
            None
        };
        let problem = match (&tail.last, &checkpoint) {
            (None, None) => None,
            (None, Some(cp)) => Some(TailProblem::Missing {
                from: 0,
                to: cp.record.seq,
            }),
            (Some(_), None) => Some(TailProblem::NoCheckpoint),
            (Some((last, _)), Some(cp)) if last.seq < cp.record.seq => Some(TailProblem::Missing {
                from: last.seq + 1,
                to: cp.record.seq,
            }),
            (Some(_), Some(_)) => None,
        };
        if let Some(problem) = &problem
            && mode == OpenMode::Normal
        {
            return Err(AuditError::Tail {
                dir: options.dir.clone(),
                problem: problem.clone(),
            });
        }
        let file_index = files.last().and_then(|p| file_number(p)).unwrap_or(1);
        let path = options.dir.join(file_name(file_index));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let file_bytes = file.metadata().map_err(io(&path))?.len();
        let (next_seq, last_hash) = match &tail.last {
            Some((r, hash)) => (r.seq + 1, *hash),
            None => (0, HexHash::genesis()),
        };
        let checkpoint_every = match options.fsync {
            FsyncPolicy::Batch {
                records,
                interval_ms,
            } => (records.max(1), Duration::from_millis(interval_ms)),
            FsyncPolicy::Every => (
                EVERY_CHECKPOINT.0,
                Duration::from_millis(EVERY_CHECKPOINT.1),
            ),
        };
        let mut writer = Self {
            dir: options.dir.clone(),
            keys_dir: options.keys_dir.clone(),
            key,
            fsync: options.fsync,
            checkpoint_every,
            max_file_bytes: options.max_file_bytes.max(1024),
            file,
            file_index,
            file_bytes,
            out: Vec::with_capacity(WRITE_BUFFER),
            out_records: 0,
            next_seq,
            last_hash,
            unsynced: 0,
            checkpoint_owed: None,
            unsigned: 0,
            last_checkpoint: Instant::now(),
            taken_at: Instant::now(),
            pending: VecDeque::new(),
            deferred: HashMap::default(),
            deferred_order: VecDeque::new(),
            open: HashMap::default(),
            group: Vec::with_capacity(GROUP_RUNS),
            group_ctx: 0,
            clock: Clock::default(),
            defer: options.fsync != FsyncPolicy::Every,
            contexts: Interner::continuing(&tail.contexts),
            retain: options.retain,
            archive_dir: options.archive_dir.clone(),
            _lock: lock,
        };
        let fail = |message: String| AuditError::Corrupt {
            path: path.clone(),
            message,
        };
        if tail.last.is_none() && checkpoint.is_none() {
            let public = writer.key.verifying_key();
            writer.write_record(GENESIS_KIND, |_, _, _| {
                serde_json::json!({
                    "format": FORMAT,
                    "public_key": hex::encode(public.as_bytes()),
                    "key": key_id(&public),
                    "host": options.host_id,
                })
            });
            writer
                .flush_out()
                .map_err(|e| fail(format!("writing the genesis record: {e}")))?;
        } else if problem.is_none() {
            // A crash between appending a checkpoint and replacing the file
            // leaves the file one checkpoint behind: bring it up to date.
            if let (Some((seq, line)), Some(cp)) = (&tail.last_checkpoint, &checkpoint)
                && *seq > cp.record.seq
            {
                Checkpoint::write(&checkpoint_path, line).map_err(io(&checkpoint_path))?;
            }
        }
        let mut recovered_at = None;
        if let Some(problem) = &problem {
            let (lost_from, lost_to) = match problem {
                TailProblem::Missing { from, to } => (Some(*from), Some(*to)),
                TailProblem::NoCheckpoint => (None, None),
            };
            if let Some(to) = lost_to {
                // The lost sequence numbers are never reused.
                writer.next_seq = to + 1;
            }
            recovered_at = Some(writer.next_seq);
            let why = problem.to_string();
            writer.write_record(RECOVERED_KIND, |_, _, _| {
                serde_json::json!({
                    "lost_from": lost_from,
                    "lost_to": lost_to,
                    "problem": why,
                    "by": "chassis audit recover",
                })
            });
            writer
                .flush_out()
                .map_err(|e| fail(format!("writing the recovery record: {e}")))?;
        }
        for (run_id, context) in tail.open_runs {
            let outcome = RunOutcome {
                error: Some(
                    "the host stopped without ending this run; recorded at the next start".into(),
                ),
                ..RunOutcome::new("host-crashed")
            };
            writer
                .rotate_if_full()
                .map(|()| writer.write_end(ENDED_KIND, &run_id, Some(&context), &outcome))
                .and_then(|()| writer.flush_out())
                .map_err(|e| fail(format!("ending a run left open: {e}")))?;
        }
        if problem.is_none() {
            writer
                .prune()
                .map_err(|e| fail(format!("recording a retention pruning: {e}")))?;
        }
        if writer.unsigned > 0 {
            writer
                .checkpoint()
                .map_err(|e| fail(format!("signing a checkpoint: {e}")))?;
        }
        Ok((
            writer,
            Recovery {
                problem,
                seq: recovered_at,
            },
        ))
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(file_name(self.file_index))
    }

    /// Starts a new file if this one is full, closing the old one with a
    /// checkpoint. Called before each event (never between a context and
    /// the record that refers to it, which must share a file).
    fn rotate_if_full(&mut self) -> Result<(), String> {
        if self.file_bytes >= self.max_file_bytes {
            self.rotate_file()?;
        }
        Ok(())
    }

    /// The number of `context` in the current file, defining it first with
    /// a `run.context` record if this file has not yet.
    fn context_id(&mut self, context: &RunContext) -> u64 {
        if let Some(id) = self.contexts.get(context) {
            return id;
        }
        let (id, fields) = self.contexts.define(context);
        self.write_record(CONTEXT_KIND, |_, _, _| fields);
        self.contexts.defined(context, id);
        id
    }

    /// Writes a held-back (or, with `fsync: every`, immediate) `run.started`
    /// (after [`Writer::rotate_if_full`]), and keeps the run's context for
    /// its end.
    fn write_start(&mut self, run_id: RunId, context: RunContext) {
        let ctx = self.context_id(&context);
        self.write_record_with(STARTED_KIND, |out| {
            line::start_fields(out, run_id.as_str(), ctx)
        });
        self.open.insert(run_id, context);
    }

    /// Writes how the run `run_id` ended (after [`Writer::rotate_if_full`]):
    /// one `run` record when its start is still held back, else `run.ended`
    /// naming the context it started under.
    fn write_run_end(&mut self, run_id: RunId, outcome: RunOutcome) {
        match self.deferred.remove(&run_id) {
            Some((context, _)) => self.write_short_run(run_id, context, outcome),
            None => {
                let context = self.open.remove(&run_id);
                self.write_end(ENDED_KIND, run_id.as_str(), context.as_ref(), &outcome);
            }
        }
    }

    /// Writes a run that has no `run.started` on record: into the group of
    /// short runs when it ended plainly (no error, no denials, its usage
    /// known) and starts are held back, else as a `run` record of its own.
    fn write_short_run(&mut self, run_id: RunId, context: RunContext, outcome: RunOutcome) {
        let plain = outcome.error.is_none() && outcome.denials.unwrap_or(0) == 0;
        let usage = match outcome.usage {
            Some(usage) if plain && self.defer => usage,
            _ => return self.write_end(RUN_KIND, run_id.as_str(), Some(&context), &outcome),
        };
        // Defining a new context appends its record, which writes the group
        // (of the context before) first.
        let ctx = self.context_id(&context);
        if !self.group.is_empty() && self.group_ctx != ctx {
            self.write_group();
        }
        self.group_ctx = ctx;
        self.group.push((run_id, outcome.outcome, usage));
        if self.group.len() >= GROUP_RUNS {
            self.write_group();
        }
    }

    /// Appends the group of short runs: a `run` record for one, a `runs`
    /// record for more.
    fn write_group(&mut self) {
        if self.group.is_empty() {
            return;
        }
        // Taken out first: appending writes the group, and it is empty now.
        let mut group = std::mem::take(&mut self.group);
        let ctx = self.group_ctx;
        if let [(run_id, outcome, usage)] = group.as_slice() {
            let end = RunOutcome {
                usage: Some(*usage),
                ..RunOutcome::new(outcome.clone())
            };
            self.write_record_with(RUN_KIND, |out| {
                line::end_fields(out, run_id.as_str(), Some(ctx), &end)
            });
        } else {
            self.write_record_with(RUNS_KIND, |out| {
                line::runs_fields(
                    out,
                    ctx,
                    group
                        .iter()
                        .map(|(id, outcome, usage)| (id.as_str(), outcome.as_ref(), usage)),
                )
            });
        }
        group.clear();
        self.group = group;
    }

    /// Writes a `run` or `run.ended` record (after
    /// [`Writer::rotate_if_full`]); `context` is `None` only for a run the
    /// writer never saw start.
    fn write_end(
        &mut self,
        kind: &str,
        run_id: &str,
        context: Option<&RunContext>,
        outcome: &RunOutcome,
    ) {
        let ctx = context.map(|context| self.context_id(context));
        self.write_record_with(kind, |out| line::end_fields(out, run_id, ctx, outcome));
    }

    /// Whether writing `item` appends a record (and so needs room in the
    /// file, [`Writer::rotate_if_full`]): all but a start held back.
    fn appends(&self, item: &Pending) -> bool {
        !(self.defer && matches!(item, Pending::Started { .. }))
    }

    /// Writes one queued message (after [`Writer::rotate_if_full`] when it
    /// [`Writer::appends`]).
    fn write_pending(&mut self, item: Pending) {
        match item {
            Pending::Event(kind, fields) => {
                // A record about a held-back run comes after its start.
                if let Some(run_id) = fields["run_id"].as_str().and_then(RunId::new)
                    && let Some((context, _)) = self.deferred.remove(&run_id)
                {
                    self.write_start(run_id, context);
                }
                self.write_record(kind, |_, _, _| &fields);
            }
            Pending::Started { run_id, context } if self.defer => {
                // When it was taken stands for when the run was queued
                // (at most one round before), which is when the run first
                // waited, or its first record was due: not when it started.
                let at = self.taken_at;
                self.deferred.insert(run_id, (context, at));
                self.deferred_order.push_back((at, run_id));
            }
            Pending::Started { run_id, context } => self.write_start(run_id, context),
            Pending::Ended { run_id, outcome } => self.write_run_end(run_id, outcome),
            Pending::Completed {
                run_id,
                context,
                outcome,
            } => self.write_short_run(run_id, context, outcome),
        }
    }

    /// Writes the `run.started` of held-back runs: those held for a batch
    /// interval, or all of them.
    /// Oldest first; only the front of the queue is looked at, so this
    /// costs nothing per run in flight.
    fn write_held_starts(&mut self, all: bool) -> Result<(), String> {
        let interval = self.checkpoint_every.1;
        while let Some(&(at, run_id)) = self.deferred_order.front() {
            if !self.deferred.contains_key(&run_id) {
                // Ended (or written) since.
                self.deferred_order.pop_front();
                continue;
            }
            if !all && at.elapsed() < interval {
                break;
            }
            self.rotate_if_full()?;
            if let Some((context, _)) = self.deferred.remove(&run_id) {
                self.write_start(run_id, context);
            }
            self.deferred_order.pop_front();
        }
        Ok(())
    }

    /// When the oldest held-back start is due.
    fn next_held_start(&self) -> Option<Duration> {
        let interval = self.checkpoint_every.1;
        self.deferred_order
            .front()
            .map(|(at, _)| interval.saturating_sub(at.elapsed()))
    }

    /// Appends one record at `next_seq` to the write buffer, its fields
    /// built from its seq, time and prev (a checkpoint signs them). It
    /// reaches the file at the next [`Writer::flush_out`]; a checkpoint
    /// record is synced before the checkpoint file names it
    /// ([`Writer::checkpoint`]).
    fn write_record<V: serde::Serialize>(
        &mut self,
        kind: &str,
        fields: impl FnOnce(u64, &str, &str) -> V,
    ) {
        // The fields may sign seq and prev (a checkpoint, a key's
        // endorsement): the short runs before this record take theirs first.
        self.write_group();
        let (seq, prev) = (self.next_seq, self.last_hash);
        self.append(kind, |out, ts| {
            let fields = fields(seq, ts, prev.as_str());
            serde_json::to_writer(out, &fields).expect("record fields always serialise");
        });
    }

    /// [`Writer::write_record`] for fields the writer spells itself (a
    /// run's, see [`line`]).
    fn write_record_with(&mut self, kind: &str, fields: impl FnOnce(&mut Vec<u8>)) {
        self.append(kind, |out, _| fields(out));
    }

    /// Appends the record at `next_seq` whose fields `fields` writes, and
    /// chains it.
    fn append(&mut self, kind: &str, fields: impl FnOnce(&mut Vec<u8>, &str)) {
        // The short runs taken before this record come before it.
        self.write_group();
        let ts = self.clock.now();
        let start = self.out.len();
        line::open(&mut self.out, self.next_seq, &ts, kind);
        fields(&mut self.out, ts.as_str());
        line::close(&mut self.out, &self.last_hash);
        let hash = HexHash::of(&self.out[start..]);
        if kind == CHECKPOINT_KIND {
            // Owed to the checkpoint file until it is synced ([`Writer::settle`]).
            self.checkpoint_owed = Some(String::from_utf8_lossy(&self.out[start..]).into_owned());
        }
        self.out.push(b'\n');
        self.file_bytes += (self.out.len() - start) as u64;
        self.next_seq += 1;
        self.last_hash = hash;
        self.unsynced += 1;
        self.out_records += 1;
        if kind == CHECKPOINT_KIND {
            self.unsigned = 0;
            self.last_checkpoint = Instant::now();
        } else {
            self.unsigned += 1;
        }
    }

    /// Writes the buffered records to the file. On failure the file is cut
    /// back to its last whole record (never half a record left behind) and
    /// the records stay buffered for the next attempt, so none is lost or
    /// written twice.
    fn flush_out(&mut self) -> Result<(), String> {
        self.write_group();
        if self.out.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.out) {
            let _ = self.file.set_len(self.file_bytes - self.out.len() as u64);
            return Err(format!("writing {}: {e}", self.current_path().display()));
        }
        self.out.clear();
        metrics::counter!(RECORDS_TOTAL).increment(std::mem::take(&mut self.out_records));
        if self.out.capacity() > 4 * WRITE_BUFFER {
            self.out.shrink_to(WRITE_BUFFER);
        }
        Ok(())
    }

    /// Closes the current file with a checkpoint and starts the next one.
    fn rotate_file(&mut self) -> Result<(), String> {
        // The group's context numbers are this file's.
        self.write_group();
        self.checkpoint()?;
        let next = self.dir.join(file_name(self.file_index + 1));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&next)
            .map_err(|e| format!("opening {}: {e}", next.display()))?;
        self.file_index += 1;
        self.file_bytes = 0;
        self.contexts.reset();
        self.prune()
    }

    /// Prunes closed files past `retain`: records which (a `log.pruned`
    /// record, signed by a checkpoint and synced) before moving or deleting
    /// them. Failing to read or remove a file only warns (the files stay,
    /// and the next pruning names them again); failing to write the record
    /// is a write failure like any other.
    fn prune(&mut self) -> Result<(), String> {
        let Some(retain) = self.retain else {
            return Ok(());
        };
        let files = match log_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "audit retention: cannot list the log files");
                return Ok(());
            }
        };
        let current = self.current_path();
        let cutoff = SystemTime::now()
            .checked_sub(retain)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let plan = match retention::plan(&files, &current, cutoff) {
            Ok(Some(plan)) => plan,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "audit retention: cannot read a file to prune");
                return Ok(());
            }
        };
        let kept = files.get(plan.files.len()).map(PathBuf::as_path);
        let mut known =
            keys::read_public_keys(&self.keys_dir.join(keys::PUBLIC_KEYS_FILE)).unwrap_or_default();
        known.push(self.key.verifying_key());
        let key = retention::key_after(kept, &known, self.key.verifying_key());
        let fields = plan.fields(&key, retain, self.archive_dir.as_deref());
        self.write_record(PRUNED_KIND, |_, _, _| fields);
        self.checkpoint()?;
        if let Err(e) = plan.apply(self.archive_dir.as_deref()) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "audit retention: a file recorded as pruned could not be removed; the next pruning names it again");
        } else {
            tracing::info!(
                files = plan.files.len(),
                first = plan.files.first().map(|f| f.first),
                last = plan.files.last().map(|f| f.last),
                "audit retention: pruned closed log files"
            );
        }
        Ok(())
    }

    /// Signs the chain so far in a checkpoint record, syncs it to disk and
    /// replaces the checkpoint file. Nothing to do when every record is
    /// already covered.
    fn checkpoint(&mut self) -> Result<(), String> {
        self.sign();
        self.settle()
    }

    /// Appends a checkpoint record signing the chain so far, if any record
    /// is unsigned. It is synced, and named in the checkpoint file, by the
    /// next [`Writer::settle`].
    fn sign(&mut self) {
        self.write_group();
        if self.unsigned > 0 {
            let key = self.key.clone();
            self.write_record(CHECKPOINT_KIND, |seq, ts, prev| {
                checkpoint_fields(seq, ts, prev, &key)
            });
        }
    }

    /// Writes and syncs everything buffered, then names the last checkpoint
    /// in the checkpoint file if that is still owed. What fails stays owed,
    /// so the next round retries it.
    fn settle(&mut self) -> Result<(), String> {
        self.sync()?;
        if let Some(line) = &self.checkpoint_owed {
            Checkpoint::write(&self.dir.join(CHECKPOINT_FILE), line)
                .map_err(|e| format!("writing the checkpoint file: {e}"))?;
            self.checkpoint_owed = None;
        }
        Ok(())
    }

    /// Whether something written is not yet where it must be: records in
    /// the buffer, a checkpoint the file does not name yet, or (with
    /// `fsync: every`) records not yet synced.
    fn owes(&self) -> bool {
        !self.out.is_empty()
            || !self.group.is_empty()
            || self.checkpoint_owed.is_some()
            || (self.fsync == FsyncPolicy::Every && self.unsynced > 0)
    }

    /// Writes pending events; on failure keeps them for the next attempt.
    /// A batch is signed as soon as it holds its record count, and the
    /// round's records and checkpoints are synced once, at its end, before
    /// the checkpoint file names the last of them: under load a round
    /// holds many batches, and a sync per batch (two, with the checkpoint
    /// file's) made the disk, not the records, the log's limit. With
    /// `fsync: every`, each record is synced before the next is taken. A
    /// failed sync leaves the record buffered, not queued again.
    fn drain(&mut self, health: &Health) {
        while let Some(item) = self.pending.pop_front() {
            if !self.write_one(item, health) {
                return;
            }
        }
        // Healthy again only once nothing is owed: a failed sync or
        // checkpoint file write is retried here, not forgotten.
        let settled = if self.checkpoint_owed.is_some() || self.fsync == FsyncPolicy::Every {
            self.settle()
        } else {
            self.flush_out()
        };
        match settled {
            Ok(()) if !self.owes() => health.healthy.store(true, Ordering::Relaxed),
            Ok(()) => {}
            Err(e) => self.fail(health, e),
        }
    }

    /// Writes one message's records, signing a batch that reached its
    /// record count and writing out a full buffer. `false` after a
    /// failure: a message that could not be written goes back to the front
    /// of `pending`, to be retried before anything after it.
    fn write_one(&mut self, item: Pending, health: &Health) -> bool {
        if self.appends(&item)
            && let Err(e) = self.rotate_if_full()
        {
            // The file is full and the next would not open.
            self.pending.push_front(item);
            self.fail(health, e);
            return false;
        }
        self.write_pending(item);
        // A batch closes at its record count even in a long round.
        if self.unsigned >= self.checkpoint_every.0 {
            self.sign();
        }
        let flushed = if self.fsync == FsyncPolicy::Every {
            self.sync()
        } else if self.out.len() >= WRITE_BUFFER {
            self.flush_out()
        } else {
            Ok(())
        };
        if let Err(e) = flushed {
            self.fail(health, e);
            return false;
        }
        true
    }

    /// Writes a message as it is taken off the queue, unless older ones
    /// wait to be retried or the log is failing (then it queues, and the
    /// round's [`Writer::drain`] retries as before). Written as it
    /// comes, a round's messages are each touched once while still in the
    /// cache, instead of all copied into `pending` and read back: at
    /// thousands of messages per round that copy was megabytes.
    fn write_or_queue(&mut self, item: Pending, health: &Health) {
        if self.pending.is_empty() && health.healthy.load(Ordering::Relaxed) {
            self.write_one(item, health);
        } else {
            self.pending.push_back(item);
        }
    }

    /// Writes everything queued and held back, then signs it.
    fn flush_all(&mut self, health: &Health) -> Result<(), String> {
        self.drain(health);
        if !self.pending.is_empty() {
            return Err(health
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default());
        }
        self.write_held_starts(true)?;
        self.checkpoint()
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
        self.flush_out()?;
        if self.unsynced == 0 {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| format!("syncing {}: {e}", self.current_path().display()))?;
        self.unsynced = 0;
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        let (records, interval) = self.checkpoint_every;
        self.unsigned >= records
            || (self.unsigned > 0 && self.last_checkpoint.elapsed() >= interval)
    }

    /// Records the rotation (endorsed by the new key), signs it with the old
    /// key in a checkpoint, then signs with `new` from the next one on.
    fn rotate_key(&mut self, new: SigningKey, health: &Health) -> Result<(), String> {
        self.drain(health);
        if !self.pending.is_empty() {
            return Err("the records before the rotation could not be written".into());
        }
        self.write_held_starts(true)?;
        let new_public = new.verifying_key();
        // Trusted before any record names it, so a failure here leaves no
        // rotation record behind.
        keys::remember_public_key(&self.keys_dir, &new_public).map_err(|e| e.to_string())?;
        let old = key_id(&self.key.verifying_key());
        let endorse = |prev: &str| {
            let mut message = hex::decode(prev).unwrap_or_default();
            message.extend_from_slice(new_public.as_bytes());
            new.sign(&message)
        };
        self.rotate_if_full()?;
        self.write_record(ROTATION_KIND, |_, _, prev| {
            serde_json::json!({
                "old_key": old,
                "new_key": key_id(&new_public),
                "new_public_key": hex::encode(new_public.as_bytes()),
                "endorsement": hex::encode(endorse(prev).to_bytes()),
            })
        });
        // The rotation record and the old key's checkpoint over it are in
        // the chain once buffered: from here on the new key signs, even if
        // this sync fails (it is retried like any other).
        let settled = self.checkpoint();
        self.key = new;
        settled
    }

    /// Takes one message off the queue; `false` once the log must stop.
    fn take(&mut self, message: Message, health: &Health) -> bool {
        match message {
            Message::Event { kind, fields } => {
                self.write_or_queue(Pending::Event(kind, fields), health)
            }
            Message::RunStarted { run_id, context } => {
                self.write_or_queue(Pending::Started { run_id, context }, health)
            }
            Message::RunEnded { run_id, outcome } => {
                self.write_or_queue(Pending::Ended { run_id, outcome }, health)
            }
            Message::RunCompleted {
                run_id,
                context,
                outcome,
            } => self.write_or_queue(
                Pending::Completed {
                    run_id,
                    context,
                    outcome,
                },
                health,
            ),
            Message::Flush(reply) => {
                let _ = reply.send(self.flush_all(health));
            }
            Message::RotateKey(new, reply) => {
                let _ = reply.send(self.rotate_key(*new, health));
            }
            Message::Stop => return false,
        }
        true
    }

    pub(super) fn run(mut self, rx: Receiver<Message>, health: Arc<Health>) {
        let (mut busy, mut full) = (false, false);
        loop {
            // After a failure, retry every 500 ms rather than spin.
            let wait = if !self.pending.is_empty() || !health.healthy.load(Ordering::Relaxed) {
                Duration::from_millis(500)
            } else {
                let checkpoint = (self.unsigned > 0).then(|| {
                    self.checkpoint_every
                        .1
                        .saturating_sub(self.last_checkpoint.elapsed())
                });
                [checkpoint, self.next_held_start()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(Duration::from_secs(3600))
            };
            // `None`: nothing came; `Some(None)`: every sender is gone.
            let mut next = if busy {
                if !full {
                    std::thread::sleep(BUSY_POLL.min(wait));
                }
                match rx.try_recv() {
                    Ok(m) => Some(Some(m)),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(None),
                }
            } else {
                match rx.recv_timeout(wait) {
                    Ok(m) => Some(Some(m)),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => Some(None),
                }
            };
            busy = next.is_some();
            full = false;
            self.taken_at = Instant::now();
            let mut taken = 0;
            while let Some(message) = next {
                let go_on = match message {
                    Some(m) => self.take(m, &health),
                    None => false,
                };
                if !go_on {
                    if let Err(e) = self.flush_all(&health) {
                        self.fail(&health, e);
                    }
                    return;
                }
                taken += 1;
                if taken % TAKEN_AT_EVERY == 0 {
                    self.taken_at = Instant::now();
                }
                if taken == ROUND_MESSAGES {
                    full = true;
                    break;
                }
                next = match rx.try_recv() {
                    Ok(m) => Some(Some(m)),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(None),
                };
            }
            self.drain(&health);
            if self.pending.is_empty()
                && let Err(e) = self.write_held_starts(false)
            {
                self.fail(&health, e);
            }
            if self.pending.is_empty()
                && self.checkpoint_due()
                && let Err(e) = self.checkpoint()
            {
                self.fail(&health, e);
            }
            if let Err(e) = self.flush_out() {
                self.fail(&health, e);
            }
        }
    }
}

/// The checkpoint file must be signed by this log's current key or one it
/// used before (the writer trusts its own keys dir; `verify` does not).
fn check_own_checkpoint(
    cp: &Checkpoint,
    key: &SigningKey,
    keys_dir: &Path,
    path: &Path,
) -> Result<(), AuditError> {
    let mut known: Vec<VerifyingKey> = vec![key.verifying_key()];
    known
        .extend(keys::read_public_keys(&keys_dir.join(keys::PUBLIC_KEYS_FILE)).unwrap_or_default());
    let named = cp.record.checkpoint_key().unwrap_or_default();
    let signed = known
        .iter()
        .find(|k| key_id(k) == named)
        .is_some_and(|k| cp.record.check_checkpoint(k).is_ok());
    if signed {
        Ok(())
    } else {
        Err(AuditError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "is not a checkpoint signed by this log's keys (it names key {named:?}); it was replaced"
            ),
        })
    }
}
