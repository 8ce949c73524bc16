//! `chassis audit verify`: checks a log's files record by record and names
//! the first bad record and why.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::keys::parse_public_key;
use super::record::{GENESIS, Record, key_id};

/// File in the log dir holding the last synced sequence number and hash.
pub const CHECKPOINT_FILE: &str = "audit.checkpoint";

/// The last record known to be on disk: verify compares the log's end with
/// it to detect truncation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the last synced record.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// The file it is in.
    pub file: String,
}

impl Checkpoint {
    /// Reads a checkpoint file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes it atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("checkpoint.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }
}

/// Why a record is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Not a record at all.
    Malformed(String),
    /// Its content does not match its hash.
    Edited,
    /// Its signature does not verify under the key it names.
    BadSignature,
    /// Signed by a key the verifier does not trust.
    UnknownKey(String),
    /// Records are missing before this one.
    Deleted {
        /// The first missing sequence number.
        from: u64,
        /// The last missing one.
        to: u64,
    },
    /// A record appears again, or one not of this log was put in.
    Inserted,
    /// Records are out of order.
    Reordered {
        /// The sequence number expected here.
        expected: u64,
    },
    /// Its `prev` is not the hash of the record before it.
    ChainBroken,
    /// The log ends before the checkpoint's last record.
    Truncated {
        /// The checkpoint's last sequence number.
        checkpoint_seq: u64,
        /// The log's last sequence number.
        last_seq: u64,
    },
    /// A key rotation record whose new key did not endorse it.
    BadRotation(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Malformed(e) => write!(f, "malformed: not an audit record ({e})"),
            Reason::Edited => write!(f, "edited: its content does not match its hash"),
            Reason::BadSignature => write!(
                f,
                "forged: its signature does not verify under the key it names"
            ),
            Reason::UnknownKey(k) => write!(f, "signed by unknown key {k}"),
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
            Reason::ChainBroken => write!(
                f,
                "inserted or replaced: its prev is not the hash of the record before it"
            ),
            Reason::Truncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "truncated: the log ends at record {last_seq} but the checkpoint says {checkpoint_seq} were written"
            ),
            Reason::BadRotation(e) => write!(f, "bad key rotation: {e}"),
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

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Files checked.
    pub files: usize,
    /// Last sequence number.
    pub last_seq: u64,
    /// Last hash.
    pub last_hash: String,
    /// Ids of the keys that signed records.
    pub keys: Vec<String>,
}

/// Verifies `files` (in order) against `trusted` keys and, if given, the
/// checkpoint. Keys introduced by a verified `key.rotated` record become
/// trusted from then on, and the old key is retired.
pub fn verify(
    files: &[PathBuf],
    trusted: &[VerifyingKey],
    checkpoint: Option<&Checkpoint>,
) -> Result<Verified, Problem> {
    let mut keys: Vec<VerifyingKey> = trusted.to_vec();
    let mut retired: HashSet<String> = HashSet::new();
    let mut used: Vec<String> = Vec::new();
    let mut expected_seq: Option<u64> = None;
    let mut last_hash = GENESIS.to_string();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut count = 0u64;
    let mut last_seq = 0u64;
    let mut last_place = (files.first().cloned().unwrap_or_default(), 0usize);

    // Records ahead of the current one, to tell reordering from deletion.
    let mut all: Vec<(PathBuf, usize, Result<Record, String>)> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| Problem {
            file: file.clone(),
            line: 0,
            seq: None,
            reason: Reason::Malformed(e.to_string()),
        })?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            all.push((
                file.clone(),
                i + 1,
                serde_json::from_str::<Record>(line).map_err(|e| e.to_string()),
            ));
        }
    }
    let all_seqs: HashSet<u64> = all
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok().map(|r| r.seq))
        .collect();

    for (file, line, parsed) in &all {
        let bad = |seq: Option<u64>, reason: Reason| Problem {
            file: file.clone(),
            line: *line,
            seq,
            reason,
        };
        let record = parsed
            .as_ref()
            .map_err(|e| bad(None, Reason::Malformed(e.clone())))?;
        let seq = Some(record.seq);
        if !record.hash_matches() {
            return Err(bad(seq, Reason::Edited));
        }
        let Some(key) = keys.iter().find(|k| key_id(k) == record.key).copied() else {
            let why = if retired.contains(&record.key) {
                format!("{} (retired by an earlier key rotation)", record.key)
            } else {
                record.key.clone()
            };
            return Err(bad(seq, Reason::UnknownKey(why)));
        };
        if !record.signature_valid(&key) {
            return Err(bad(seq, Reason::BadSignature));
        }
        if seen.contains(&record.seq) {
            return Err(bad(seq, Reason::Inserted));
        }
        let expected = expected_seq.unwrap_or(record.seq);
        if record.seq < expected {
            return Err(bad(seq, Reason::Reordered { expected }));
        }
        if record.seq > expected {
            if all_seqs.contains(&expected) {
                return Err(bad(seq, Reason::Reordered { expected }));
            }
            return Err(bad(
                seq,
                Reason::Deleted {
                    from: expected,
                    to: record.seq - 1,
                },
            ));
        }
        if expected_seq.is_some() && record.prev != last_hash {
            return Err(bad(seq, Reason::ChainBroken));
        }
        if expected_seq.is_none() && record.seq == 1 && record.prev != GENESIS {
            return Err(bad(seq, Reason::ChainBroken));
        }
        if record.kind == "key.rotated" {
            let new =
                rotation_key(record, &last_hash).map_err(|e| bad(seq, Reason::BadRotation(e)))?;
            retired.insert(key_id(&key));
            keys.retain(|k| k != &key);
            keys.push(new);
        }
        if !used.contains(&record.key) {
            used.push(record.key.clone());
        }
        seen.insert(record.seq);
        expected_seq = Some(record.seq + 1);
        last_hash = record.hash.clone();
        last_seq = record.seq;
        last_place = (file.clone(), *line);
        count += 1;
    }
    if let Some(cp) = checkpoint
        && (last_seq < cp.seq || (last_seq == cp.seq && last_hash != cp.hash))
    {
        return Err(Problem {
            file: last_place.0,
            line: last_place.1,
            seq: (last_seq > 0).then_some(last_seq),
            reason: Reason::Truncated {
                checkpoint_seq: cp.seq,
                last_seq,
            },
        });
    }
    Ok(Verified {
        records: count,
        files: files.len(),
        last_seq,
        last_hash,
        keys: used,
    })
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
