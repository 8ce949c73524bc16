//! `chassis audit verify`: checks a format 2 log's files record by record
//! and names the first bad record and why.
//!
//! What it proves: the log starts at its genesis (or right after a
//! checkpoint verified earlier, `--from-checkpoint`), every record's `prev`
//! is the hash of the line before it, sequence numbers run without gaps
//! (except a loss `chassis audit recover` recorded), every checkpoint is
//! signed for its place by the key in force there, and one of those keys is
//! trusted out of band. Records after the last trusted checkpoint are the
//! unsigned tail: reported, and refused with `require_signed_tail`.
//!
//! A log whose first files were pruned by retention starts right after the
//! checkpoint its `log.pruned` record names, and verifies only when that
//! record is itself covered by a trusted checkpoint; the pruned range is
//! reported ([`Verified::pruned`]).

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};

use rayon::prelude::*;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::keys::parse_public_key;
use super::record::{
    CHECKPOINT_KIND, CheckpointFault, FORMAT, GENESIS, GENESIS_KIND, HexHash, PRUNED_KIND,
    RECOVERED_KIND, ROTATION_KIND, Record, is_format_1, key_id,
};

/// File in the log dir holding the last signed checkpoint record (its exact
/// line), replaced after every checkpoint.
pub const CHECKPOINT_FILE: &str = "audit.checkpoint";

/// A signed checkpoint record, as kept in [`CHECKPOINT_FILE`] or given to
/// `--from-checkpoint`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The checkpoint record.
    pub record: Record,
    /// Its exact line, which is what its successor's `prev` hashes.
    pub line: String,
}

impl Checkpoint {
    /// Reads a checkpoint file (one checkpoint record line).
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(text.trim_end_matches('\n'))
            .map_err(|e| format!("{}: not a format {FORMAT} checkpoint: {e}", path.display()))
    }

    /// Parses a checkpoint record's line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let record: Record = serde_json::from_str(line).map_err(|e| e.to_string())?;
        if record.kind != CHECKPOINT_KIND {
            return Err(format!("its kind is `{}`", record.kind));
        }
        Ok(Self {
            record,
            line: line.to_string(),
        })
    }

    /// The hash of its line: what the record after it names as `prev`.
    pub fn hash(&self) -> HexHash {
        HexHash::of(&self.line)
    }

    /// Writes `line` to `path` atomically and durably.
    pub fn write(path: &Path, line: &str) -> std::io::Result<()> {
        let tmp = path.with_extension("checkpoint.tmp");
        {
            use std::io::Write;
            let mut file = File::create(&tmp)?;
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
        std::fs::rename(tmp, path)
    }
}

/// Why a record (or the log) is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Not a record at all.
    Malformed(String),
    /// A format 1 record: this version does not verify those logs.
    Format1,
    /// The first record is not the genesis.
    NoGenesis {
        /// Its sequence number.
        seq: u64,
        /// Its kind.
        kind: String,
    },
    /// The genesis record is malformed.
    BadGenesis(String),
    /// The first record does not follow the `--from-checkpoint` checkpoint.
    NotAfterCheckpoint(String),
    /// Its hash is not the `prev` of the record after it.
    Edited,
    /// No checkpoint is signed by a trusted key.
    UnknownKey(String),
    /// A checkpoint does not hold.
    BadCheckpoint(CheckpointFault),
    /// Records are missing before this one.
    Deleted {
        /// The first missing sequence number.
        from: u64,
        /// The last missing one.
        to: u64,
    },
    /// A record appears again.
    Inserted,
    /// Records are out of order.
    Reordered {
        /// The sequence number expected here.
        expected: u64,
    },
    /// The log ends before the checkpoint file's record.
    Truncated {
        /// The checkpoint's sequence number.
        checkpoint_seq: u64,
        /// The log's last sequence number.
        last_seq: u64,
    },
    /// The checkpoint file is older than the log's last checkpoint.
    StaleCheckpoint {
        /// The checkpoint file's sequence number.
        file_seq: u64,
        /// The log's last checkpoint.
        log_seq: u64,
    },
    /// The checkpoint file is not the record the log holds at its seq, or
    /// is not signed by the log's keys.
    CheckpointMismatch(String),
    /// A key rotation record whose new key did not endorse it.
    BadRotation(String),
    /// The `log.pruned` record the log starts by is not covered by a
    /// trusted checkpoint, or is not the record the log holds.
    BadPruning(String),
    /// Records after the last signed checkpoint, refused on request.
    UnsignedTail {
        /// How many.
        records: u64,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Malformed(e) => write!(f, "malformed: not an audit record ({e})"),
            Reason::Format1 => write!(
                f,
                "format 1 record (one signature per record): this chassis verifies format {FORMAT} logs only; \
                 verify it with the release that wrote it"
            ),
            Reason::NoGenesis { seq, kind } => write!(
                f,
                "deleted: the log does not start with its genesis (record 0, {GENESIS_KIND}); \
                 the first record is {seq} ({kind}), so the records before it were removed, \
                 and no log.pruned record names them (if they were archived by hand, pass \
                 --from-checkpoint with the checkpoint they ended at)"
            ),
            Reason::BadGenesis(e) => write!(f, "bad genesis: {e}"),
            Reason::NotAfterCheckpoint(e) => {
                write!(f, "does not follow the --from-checkpoint checkpoint: {e}")
            }
            Reason::Edited => write!(
                f,
                "edited: its hash is not the prev of the record after it (it was changed, or the next one replaced)"
            ),
            Reason::UnknownKey(k) => write!(f, "signed by unknown key: {k}"),
            Reason::BadCheckpoint(e) => write!(f, "{e}"),
            Reason::Deleted { from, to } if from == to => {
                write!(f, "deleted: record {from} is missing before it")
            }
            Reason::Deleted { from, to } => {
                write!(f, "deleted: records {from} to {to} are missing before it")
            }
            Reason::Inserted => write!(
                f,
                "inserted: a record with this sequence number already appeared"
            ),
            Reason::Reordered { expected } => {
                write!(f, "reordered: expected record {expected} here")
            }
            Reason::Truncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "truncated: the log ends at record {last_seq} but the checkpoint says {checkpoint_seq} were written"
            ),
            Reason::StaleCheckpoint { file_seq, log_seq } => write!(
                f,
                "stale checkpoint: audit.checkpoint signs record {file_seq}, but the log holds a later signed checkpoint \
                 (record {log_seq}): it was replaced with an older one"
            ),
            Reason::CheckpointMismatch(e) => write!(f, "checkpoint file mismatch: {e}"),
            Reason::BadRotation(e) => write!(f, "bad key rotation: {e}"),
            Reason::BadPruning(e) => write!(f, "bad pruning record: {e}"),
            Reason::UnsignedTail { records } => write!(
                f,
                "unsigned tail: {records} records after the last signed checkpoint (--require-signed-tail)"
            ),
        }
    }
}

/// The first bad record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line in the file (0 for the end of the log).
    pub line: usize,
    /// The record's sequence number, when it has one.
    pub seq: Option<u64>,
    /// Why it is bad.
    pub reason: Reason,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(
                f,
                "{}:{}: record {seq}: {}",
                self.file.display(),
                self.line,
                self.reason
            ),
            None => write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason),
        }
    }
}

/// Records lost and recorded by `chassis audit recover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loss {
    /// First lost sequence number (none when the checkpoint file was lost).
    pub from: Option<u64>,
    /// Last lost one.
    pub to: Option<u64>,
    /// The `log.recovered` record.
    pub at: u64,
}

/// Records a retention pruning removed before the files verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// First pruned sequence number in that pruning (earlier prunings
    /// removed the records before it).
    pub from: u64,
    /// Last pruned one: the checkpoint the files ended at.
    pub to: u64,
    /// The `log.pruned` record.
    pub at: u64,
    /// The pruned files' names.
    pub files: Vec<String>,
}

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Files checked.
    pub files: usize,
    /// First sequence number (0 unless `--from-checkpoint`).
    pub first_seq: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Hash of the last record's line.
    pub last_hash: String,
    /// Ids of the keys that signed checkpoints.
    pub keys: Vec<String>,
    /// The last checkpoint signed under a trusted key.
    pub signed_through: Option<u64>,
    /// Records after it, which no signature covers yet.
    pub unsigned_tail: u64,
    /// Whether the checkpoint file was given and matched.
    pub checkpoint_matched: bool,
    /// Losses `chassis audit recover` recorded.
    pub losses: Vec<Loss>,
    /// The pruning the files start after, when they do not start at the
    /// genesis.
    pub pruned: Option<Pruned>,
}

/// What to verify a log against.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// Keys trusted out of band: one of them must sign a checkpoint.
    pub trusted: &'a [VerifyingKey],
    /// The log's checkpoint file, to detect truncation and replacement.
    pub checkpoint: Option<&'a Checkpoint>,
    /// Where a verified earlier segment ended: the log then starts right
    /// after it instead of at its genesis.
    pub from: Option<&'a Checkpoint>,
    /// Fail when records follow the last signed checkpoint.
    pub require_signed_tail: bool,
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// A record's envelope, its fields skipped unread: what verify needs of
/// every record but the few whose fields it checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    seq: u64,
    #[serde(rename = "ts", borrow)]
    _ts: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(rename = "fields")]
    _fields: serde::de::IgnoredAny,
    #[serde(borrow)]
    prev: std::borrow::Cow<'a, str>,
}

/// A non-empty line's parse and hash, worked out in parallel.
type Worked<'a> = (Result<Parsed<'a>, serde_json::Error>, HexHash);

/// What reading a line gave, worked out in parallel: its text and, unless
/// it is blank, its parse and hash; `Err` when it is not UTF-8.
type Read<'a> = Result<(&'a str, Option<Worked<'a>>), std::str::Utf8Error>;

/// Why a line that is not UTF-8 is not a record (the words `read_line`
/// used when verify read lines as text).
const NOT_UTF8: &str = "stream did not contain valid UTF-8";

/// How one [`fill`] ended.
#[derive(Default)]
struct Filled {
    /// Lines read into the chunk.
    lines: usize,
    /// The file ended (or failed) within them.
    at_end: bool,
    /// Why it failed, if it did.
    unreadable: Option<std::io::Error>,
}

/// Reads up to [`CHUNK_LINES`] lines of `reader` into `chunk`, reusing
/// its buffers.
fn fill(reader: &mut impl BufRead, chunk: &mut Vec<Vec<u8>>) -> Filled {
    let mut filled = Filled::default();
    while filled.lines < CHUNK_LINES {
        if chunk.len() == filled.lines {
            chunk.push(Vec::new());
        }
        let buf = &mut chunk[filled.lines];
        buf.clear();
        match reader.read_until(b'\n', buf) {
            Ok(0) => {
                filled.at_end = true;
                break;
            }
            Ok(_) => filled.lines += 1,
            Err(e) => {
                filled.unreadable = Some(e);
                filled.at_end = true;
                break;
            }
        }
    }
    filled
}

/// Works out one line read by [`fill`].
fn work(buf: &[u8]) -> Read<'_> {
    let line = buf.strip_suffix(b"\n").unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line)?;
    let worked = (!line.trim().is_empty()).then(|| (parse(line, false), HexHash::of(line)));
    Ok((line, worked))
}

/// Lines verify reads, parses and hashes at a time (about 1 MiB of a log
/// of run records).
const CHUNK_LINES: usize = 4096;

/// Kinds whose fields verify reads.
const CHECKED_KINDS: &[&str] = &[
    GENESIS_KIND,
    CHECKPOINT_KIND,
    ROTATION_KIND,
    RECOVERED_KIND,
    PRUNED_KIND,
];

/// A line as verify reads it: its envelope, borrowed from the line, and
/// the whole record only for the first line and the kinds whose fields
/// verify checks ([`CHECKED_KINDS`]).
struct Parsed<'a> {
    seq: u64,
    kind: std::borrow::Cow<'a, str>,
    prev: std::borrow::Cow<'a, str>,
    full: Option<Record>,
}

/// Parses `line`: in full when it is the first record or one whose fields
/// verify checks, else only its envelope (building the fields of a million
/// run records was most of verify's time, more than hashing them). The
/// chain is over the line's bytes either way.
fn parse(line: &str, first: bool) -> Result<Parsed<'_>, serde_json::Error> {
    let envelope: Envelope<'_> = serde_json::from_str(line)?;
    let full = if first || CHECKED_KINDS.contains(&envelope.kind.as_ref()) {
        Some(serde_json::from_str(line)?)
    } else {
        None
    };
    Ok(Parsed {
        seq: envelope.seq,
        kind: envelope.kind,
        prev: envelope.prev,
        full,
    })
}

/// Whether some line of `files` carries `seq` (to tell reordering from
/// deletion; only read when a gap is found).
fn appears(files: &[PathBuf], seq: u64) -> bool {
    files.iter().any(|path| {
        File::open(path).is_ok_and(|f| {
            BufReader::new(f).lines().any(|l| {
                l.ok()
                    .and_then(|l| serde_json::from_str::<SeqOnly>(&l).ok())
                    .is_some_and(|r| r.seq == seq)
            })
        })
    })
}

/// The first record of `files`.
fn first_record(files: &[PathBuf]) -> Option<Record> {
    files.iter().find_map(|path| {
        let file = File::open(path).ok()?;
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .find(|l| !l.trim().is_empty())
            .and_then(|l| serde_json::from_str(&l).ok())
    })
}

/// Where files that do not start at the genesis resume after a pruning:
/// the `log.pruned` record (and its line's hash) whose range ends right
/// before `first`, whose checkpoint `first` chains to; and the key it names.
struct Resume {
    pruned: Pruned,
    hash: HexHash,
    checkpoint: Checkpoint,
    key: VerifyingKey,
}

impl Resume {
    /// The first sequence number the files hold.
    fn to_resume(&self) -> u64 {
        self.checkpoint.record.seq + 1
    }
}

fn find_pruning(files: &[PathBuf], first: &Record) -> Option<Resume> {
    let mut found = None;
    for path in files {
        let Ok(file) = File::open(path) else { continue };
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if !line.contains(PRUNED_KIND) {
                continue;
            }
            let Ok(record) = serde_json::from_str::<Record>(&line) else {
                continue;
            };
            if record.kind != PRUNED_KIND
                || record.fields["last"].as_u64() != first.seq.checked_sub(1)
            {
                continue;
            }
            let Some(checkpoint) = record.fields["checkpoint"]
                .as_str()
                .and_then(|l| Checkpoint::parse(l).ok())
            else {
                continue;
            };
            let Some(key) = record.fields["public_key"]
                .as_str()
                .and_then(|k| parse_public_key(k).ok())
            else {
                continue;
            };
            if checkpoint.hash() != *first.prev || checkpoint.record.seq + 1 != first.seq {
                continue;
            }
            let files = record.fields["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["file"].as_str().map(str::to_string))
                .collect();
            found = Some(Resume {
                pruned: Pruned {
                    from: record.fields["first"].as_u64().unwrap_or(0),
                    to: checkpoint.record.seq,
                    at: record.seq,
                    files,
                },
                hash: HexHash::of(&line),
                checkpoint,
                key,
            });
        }
    }
    found
}

/// Verifies `files` (in order) under `options`. Keys introduced by a
/// verified `key.rotated` record sign from the checkpoint after it on.
pub fn verify(files: &[PathBuf], options: &VerifyOptions<'_>) -> Result<Verified, Problem> {
    let trusted = options.trusted;
    let start = options.from.map_or(0, |c| c.record.seq + 1);
    let mut expected = start;
    let mut last_hash = options.from.map_or(HexHash::genesis(), Checkpoint::hash);
    let mut active: Option<VerifyingKey> = None;
    let mut pending_key: Option<VerifyingKey> = None;
    let mut anchored = false;
    let mut used: Vec<String> = Vec::new();
    let mut signed_through = None;
    let mut unsigned = 0u64;
    let mut last_checkpoint: Option<u64> = None;
    let mut checkpoint_matched = false;
    let mut losses = Vec::new();
    let mut count = 0u64;
    let mut first_place: Option<(PathBuf, usize)> = None;
    // The last record read: its file's index in `files`, line and seq.
    let mut prev_place: Option<(usize, usize, u64)> = None;

    if let Some(from) = options.from {
        let named = from.record.checkpoint_key().unwrap_or_default();
        let key = trusted.iter().find(|k| key_id(k) == named).copied();
        let ok = key.is_some_and(|k| from.record.check_checkpoint(&k).is_ok());
        if !ok {
            return Err(Problem {
                file: files.first().cloned().unwrap_or_default(),
                line: 0,
                seq: None,
                reason: Reason::NotAfterCheckpoint(format!(
                    "the checkpoint (record {}) is not signed by a trusted key (it names {named:?})",
                    from.record.seq
                )),
            });
        }
        active = key;
        anchored = true;
        signed_through = Some(from.record.seq);
    }
    // Files whose start was pruned resume after the checkpoint the pruning
    // names; the pruning record must then be signed by a trusted key.
    let resume = match options.from {
        None => first_record(files)
            .filter(|r| r.seq != 0)
            .and_then(|first| find_pruning(files, &first)),
        Some(_) => None,
    };
    let start = match &resume {
        Some(r) => {
            last_hash = r.checkpoint.hash();
            active = Some(r.key);
            expected = r.to_resume();
            expected
        }
        None => start,
    };

    // Lines are read a chunk at a time into buffers reused for the whole
    // log (a million records read through `lines()` were a million
    // allocations), and each chunk's lines are checked for UTF-8, parsed
    // and hashed in parallel while the next chunk is read: all of that is
    // per line, and only the checks below, in order, depend on the line
    // before.
    let (mut current, mut next): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
    for (index, file) in files.iter().enumerate() {
        let mut reader = File::open(file).map(BufReader::new).map_err(|e| Problem {
            file: file.clone(),
            line: 0,
            seq: None,
            reason: Reason::Malformed(e.to_string()),
        })?;
        let mut read_lines = 0;
        let mut filled = fill(&mut reader, &mut current);
        loop {
            let base = read_lines;
            read_lines += filled.lines;
            let at_end = filled.at_end;
            let (next_filled, lines) = rayon::join(
                || {
                    if at_end {
                        Filled::default()
                    } else {
                        fill(&mut reader, &mut next)
                    }
                },
                || {
                    current[..filled.lines]
                        .par_iter()
                        .map(|buf| work(buf))
                        .collect::<Vec<Read<'_>>>()
                },
            );
            for (i, read) in lines.into_iter().enumerate() {
                let lineno = base + i + 1;
                let bad = |seq: Option<u64>, reason: Reason| Problem {
                    file: file.clone(),
                    line: lineno,
                    seq,
                    reason,
                };
                let (line, worked) =
                    read.map_err(|_| bad(None, Reason::Malformed(NOT_UTF8.into())))?;
                let Some((parsed, hash)) = worked else {
                    continue;
                };
                let malformed = |e: serde_json::Error| {
                    if is_format_1(line) {
                        bad(None, Reason::Format1)
                    } else {
                        bad(None, Reason::Malformed(e.to_string()))
                    }
                };
                let mut parsed = parsed.map_err(malformed)?;
                if first_place.is_none() && parsed.full.is_none() {
                    // The first record is read in full, whatever its kind.
                    parsed = parse(line, true).map_err(malformed)?;
                }
                let Parsed {
                    seq: this,
                    kind,
                    prev,
                    full,
                } = parsed;
                let seq = Some(this);
                if first_place.is_none() {
                    first_place = Some((file.clone(), lineno));
                    match options.from {
                        None if resume.is_some() => {}
                        None => {
                            if this != 0 || kind != GENESIS_KIND {
                                return Err(bad(
                                    seq,
                                    Reason::NoGenesis {
                                        seq: this,
                                        kind: kind.into_owned(),
                                    },
                                ));
                            }
                            if prev != GENESIS {
                                return Err(bad(
                                    seq,
                                    Reason::BadGenesis("its prev is not all zeros".into()),
                                ));
                            }
                            let key = full
                                .as_ref()
                                .ok_or_else(|| "not parsed".to_string())
                                .and_then(genesis_key)
                                .map_err(|e| bad(seq, Reason::BadGenesis(e)))?;
                            anchored = trusted.contains(&key);
                            active = Some(key);
                        }
                        Some(_) => {
                            if this != start || last_hash != *prev {
                                return Err(bad(
                                    seq,
                                    Reason::NotAfterCheckpoint(format!(
                                        "expected record {start} chained to the checkpoint's hash {}",
                                        &last_hash.as_str()[..16]
                                    )),
                                ));
                            }
                        }
                    }
                } else if kind == GENESIS_KIND {
                    return Err(bad(seq, Reason::Inserted));
                }
                if this < expected {
                    return Err(bad(seq, Reason::Inserted));
                }
                // Only the kinds verify checks are parsed in full.
                let recovered = full.as_ref().filter(|r| r.kind == RECOVERED_KIND);
                if this > expected {
                    let recorded = recovered.is_some_and(|r| {
                        r.fields["lost_from"].as_u64() == Some(expected)
                            && r.fields["lost_to"].as_u64() == Some(this - 1)
                    });
                    if recorded {
                        losses.push(Loss {
                            from: Some(expected),
                            to: Some(this - 1),
                            at: this,
                        });
                    } else if appears(files, expected) {
                        return Err(bad(seq, Reason::Reordered { expected }));
                    } else {
                        return Err(bad(
                            seq,
                            Reason::Deleted {
                                from: expected,
                                to: this - 1,
                            },
                        ));
                    }
                } else if recovered.is_some() {
                    losses.push(Loss {
                        from: None,
                        to: None,
                        at: this,
                    });
                }
                if last_hash != *prev {
                    return Err(match prev_place {
                        Some((pfile, pline, pseq)) => Problem {
                            file: files[pfile].clone(),
                            line: pline,
                            seq: Some(pseq),
                            reason: Reason::Edited,
                        },
                        None => bad(seq, Reason::Edited),
                    });
                }
                if let Some(r) = &resume
                    && r.pruned.at == this
                    && r.hash != hash
                {
                    return Err(bad(
                        seq,
                        Reason::BadPruning(
                            "the log.pruned record the log starts by is not the one here".into(),
                        ),
                    ));
                }
                match (kind.as_ref(), &full) {
                    (CHECKPOINT_KIND, Some(record)) => {
                        let key = active.expect("the genesis or --from-checkpoint set the key");
                        record
                            .check_checkpoint(&key)
                            .map_err(|e| bad(seq, Reason::BadCheckpoint(e)))?;
                        anchored |= trusted.contains(&key);
                        let id = key_id(&key);
                        if !used.contains(&id) {
                            used.push(id);
                        }
                        if anchored {
                            signed_through = Some(this);
                            unsigned = 0;
                        }
                        if let Some(new) = pending_key.take() {
                            active = Some(new);
                        }
                        last_checkpoint = Some(this);
                    }
                    (ROTATION_KIND, Some(record)) => {
                        pending_key = Some(
                            rotation_key(record, last_hash.as_str())
                                .map_err(|e| bad(seq, Reason::BadRotation(e)))?,
                        );
                        unsigned += 1;
                    }
                    _ => unsigned += 1,
                }
                if let Some(cp) = options.checkpoint
                    && cp.record.seq == this
                {
                    if cp.hash() != hash {
                        return Err(bad(
                        seq,
                        Reason::CheckpointMismatch(
                            "audit.checkpoint is not the record the log holds at its sequence number"
                                .into(),
                        ),
                    ));
                    }
                    checkpoint_matched = true;
                }
                expected = this + 1;
                last_hash = hash;
                prev_place = Some((index, lineno, this));
                count += 1;
            }
            if let Some(e) = filled.unreadable {
                return Err(Problem {
                    file: file.clone(),
                    line: read_lines + 1,
                    seq: None,
                    reason: Reason::Malformed(e.to_string()),
                });
            }
            if at_end {
                break;
            }
            std::mem::swap(&mut current, &mut next);
            filled = next_filled;
        }
    }
    let end = |seq: Option<u64>, reason: Reason| {
        let (file, line) = prev_place
            .map(|(f, l, _)| (files[f].clone(), l))
            .unwrap_or_else(|| (files.first().cloned().unwrap_or_default(), 0));
        Problem {
            file,
            line,
            seq,
            reason,
        }
    };
    let Some((_, _, last_seq)) = prev_place else {
        return Err(end(
            None,
            Reason::NoGenesis {
                seq: start,
                kind: "nothing: the log is empty".into(),
            },
        ));
    };
    if let Some(cp) = options.checkpoint {
        if cp.record.seq > last_seq {
            // Only a checkpoint the log's own keys signed proves records are missing.
            let named = cp.record.checkpoint_key().unwrap_or_default();
            let signed = trusted
                .iter()
                .chain(active.iter())
                .find(|k| key_id(k) == named)
                .is_some_and(|k| cp.record.check_checkpoint(k).is_ok());
            if !signed {
                return Err(end(
                    Some(last_seq),
                    Reason::CheckpointMismatch(format!(
                        "audit.checkpoint (record {}) is not signed by a key of this log",
                        cp.record.seq
                    )),
                ));
            }
            return Err(end(
                Some(last_seq),
                Reason::Truncated {
                    checkpoint_seq: cp.record.seq,
                    last_seq,
                },
            ));
        }
        if let Some(log_seq) = last_checkpoint
            && log_seq > cp.record.seq
        {
            return Err(end(
                Some(last_seq),
                Reason::StaleCheckpoint {
                    file_seq: cp.record.seq,
                    log_seq,
                },
            ));
        }
    }
    if !anchored {
        let (file, line) = first_place.unwrap_or_default();
        return Err(Problem {
            file,
            line,
            seq: Some(start),
            reason: Reason::UnknownKey(format!(
                "no checkpoint is signed by a trusted key (the log's keys: {})",
                if used.is_empty() {
                    "none yet".to_string()
                } else {
                    used.join(", ")
                }
            )),
        });
    }
    if let Some(r) = &resume
        && signed_through.is_none_or(|s| s < r.pruned.at)
    {
        return Err(end(
            Some(r.pruned.at),
            Reason::BadPruning(format!(
                "the log starts after records {} to {} pruned by record {}, but no trusted checkpoint signs that record yet",
                r.pruned.from, r.pruned.to, r.pruned.at
            )),
        ));
    }
    if signed_through.is_none() {
        unsigned = count;
    }
    if options.require_signed_tail && unsigned > 0 {
        return Err(end(
            Some(last_seq),
            Reason::UnsignedTail { records: unsigned },
        ));
    }
    Ok(Verified {
        records: count,
        files: files.len(),
        first_seq: start,
        last_seq,
        last_hash: last_hash.as_str().to_string(),
        keys: used,
        signed_through,
        unsigned_tail: unsigned,
        checkpoint_matched,
        losses,
        pruned: resume.map(|r| r.pruned),
    })
}

fn genesis_key(record: &Record) -> Result<VerifyingKey, String> {
    if record.fields["format"].as_u64() != Some(FORMAT) {
        return Err(format!("`format` is not {FORMAT}"));
    }
    let key = parse_public_key(
        record.fields["public_key"]
            .as_str()
            .ok_or("missing `public_key`")?,
    )?;
    if record.fields["key"].as_str() != Some(key_id(&key).as_str()) {
        return Err("`key` is not the id of `public_key`".into());
    }
    Ok(key)
}

fn rotation_key(record: &Record, prev_hash: &str) -> Result<VerifyingKey, String> {
    let field = |name: &str| {
        record.fields[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("missing `{name}`"))
    };
    let new = parse_public_key(&field("new_public_key")?)?;
    let endorsement =
        hex::decode(field("endorsement")?).map_err(|_| "endorsement is not hex".to_string())?;
    let endorsement: [u8; 64] = endorsement
        .as_slice()
        .try_into()
        .map_err(|_| "endorsement is not 64 bytes".to_string())?;
    let mut message = hex::decode(prev_hash).unwrap_or_default();
    message.extend_from_slice(new.as_bytes());
    new.verify(&message, &Signature::from_bytes(&endorsement))
        .map_err(|_| "the new key's endorsement does not verify".to_string())?;
    Ok(new)
}
