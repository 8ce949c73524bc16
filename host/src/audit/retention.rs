//! Retention: closed (rotated) log files last written more than
//! `audit.retain_days` ago are moved to `audit.archive_dir` or deleted.
//!
//! Each pruning is a `log.pruned` record in the live log naming the files,
//! their sequence range and the checkpoint they ended at (its exact line),
//! written and covered by a signed checkpoint before any file goes. `chassis
//! audit verify` then starts where the pruned range ended, chained to that
//! checkpoint's hash, and accepts the missing start only because a signed
//! record says so: files that vanish without one still fail as deleted.
//! Pruning runs in the writer thread at open and at each file rotation,
//! never on a run's path; it reads two lines of each file it prunes.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::record::{CHECKPOINT_KIND, Record, key_id};

/// One file to prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PrunedFile {
    pub(super) path: PathBuf,
    pub(super) first: u64,
    pub(super) last: u64,
}

/// The files one pruning removes, oldest first, and the checkpoint line the
/// last of them ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) files: Vec<PrunedFile>,
    pub(super) checkpoint: String,
}

/// The first and last non-empty lines of `path` (the last read from its
/// final 16 KiB, which always holds a whole checkpoint line).
fn first_and_last(path: &Path) -> std::io::Result<Option<(String, String)>> {
    let mut file = File::open(path)?;
    let mut first = String::new();
    {
        let mut reader = BufReader::new(&mut file);
        while first.trim().is_empty() {
            first.clear();
            if reader.read_line(&mut first)? == 0 {
                return Ok(None);
            }
        }
    }
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))?;
    let mut end = String::new();
    file.read_to_string(&mut end)?;
    let last = end
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_string();
    Ok(Some((first.trim_end().to_string(), last)))
}

/// What to prune: the oldest files of `files` (in order) before `current`,
/// each last modified before `cutoff`. Stops at the first file that is
/// younger, empty, or does not end with a checkpoint, so only a contiguous
/// start of the log is ever pruned.
pub(super) fn plan(
    files: &[PathBuf],
    current: &Path,
    cutoff: SystemTime,
) -> std::io::Result<Option<Plan>> {
    let mut pruned = Vec::new();
    let mut checkpoint = None;
    for path in files {
        if path == current {
            break;
        }
        let modified = std::fs::metadata(path)?.modified()?;
        if modified >= cutoff {
            break;
        }
        let Some((first, last)) = first_and_last(path)? else {
            break;
        };
        let (Ok(first), Ok(end)) = (
            serde_json::from_str::<Record>(&first),
            serde_json::from_str::<Record>(&last),
        ) else {
            break;
        };
        if end.kind != CHECKPOINT_KIND {
            break;
        }
        pruned.push(PrunedFile {
            path: path.clone(),
            first: first.seq,
            last: end.seq,
        });
        checkpoint = Some(last);
    }
    Ok(checkpoint.map(|checkpoint| Plan {
        files: pruned,
        checkpoint,
    }))
}

/// The key that signs the first checkpoint of `file` (the first file kept),
/// among `known`; `fallback` when it has none yet.
pub(super) fn key_after(
    file: Option<&Path>,
    known: &[VerifyingKey],
    fallback: VerifyingKey,
) -> VerifyingKey {
    let named = file
        .and_then(|f| File::open(f).ok())
        .and_then(|f| {
            BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.contains(CHECKPOINT_KIND))
                .filter_map(|l| serde_json::from_str::<Record>(&l).ok())
                .find(|r| r.kind == CHECKPOINT_KIND)
        })
        .and_then(|r| r.checkpoint_key().map(str::to_string));
    named
        .and_then(|id| known.iter().find(|k| key_id(k) == id).copied())
        .unwrap_or(fallback)
}

impl Plan {
    /// The fields of the `log.pruned` record: the files, the range, the
    /// checkpoint the range ended at, and the key that signs the first
    /// checkpoint after it (so verify can continue from there).
    pub(super) fn fields(
        &self,
        key: &VerifyingKey,
        retain: Duration,
        archive_dir: Option<&Path>,
    ) -> Value {
        let files: Vec<Value> = self
            .files
            .iter()
            .map(|f| {
                serde_json::json!({
                    "file": f.path.file_name().map(|n| n.to_string_lossy().into_owned()),
                    "first": f.first,
                    "last": f.last,
                })
            })
            .collect();
        serde_json::json!({
            "files": files,
            "first": self.files.first().map(|f| f.first),
            "last": self.files.last().map(|f| f.last),
            "checkpoint": self.checkpoint,
            "public_key": hex::encode(key.as_bytes()),
            "action": if archive_dir.is_some() { "archived" } else { "deleted" },
            "archive_dir": archive_dir,
            "retain_secs": retain.as_secs(),
        })
    }

    /// Moves the files to `archive_dir` (copying across filesystems) or
    /// deletes them.
    pub(super) fn apply(&self, archive_dir: Option<&Path>) -> std::io::Result<()> {
        for file in &self.files {
            match archive_dir {
                Some(dir) => {
                    std::fs::create_dir_all(dir)?;
                    let to = dir.join(file.path.file_name().unwrap_or_default());
                    if std::fs::rename(&file.path, &to).is_err() {
                        std::fs::copy(&file.path, &to)?;
                        File::open(&to)?.sync_all()?;
                        std::fs::remove_file(&file.path)?;
                    }
                }
                None => std::fs::remove_file(&file.path)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, kind: &str) -> String {
        format!(r#"{{"seq":{seq},"ts":"t","kind":"{kind}","fields":{{}},"prev":"p"}}"#)
    }

    fn age(path: &Path, days: u64) {
        let then = SystemTime::now() - Duration::from_secs(days * 86_400);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }

    #[test]
    fn only_an_old_closed_start_of_the_log_is_planned() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (1..=4)
            .map(|n| dir.path().join(format!("audit-{n:06}.jsonl")))
            .collect();
        std::fs::write(
            &files[0],
            [line(0, "log.created"), line(1, "checkpoint")].join("\n") + "\n",
        )
        .unwrap();
        std::fs::write(
            &files[1],
            [line(2, "x"), line(3, "checkpoint")].join("\n") + "\n",
        )
        .unwrap();
        std::fs::write(
            &files[2],
            [line(4, "x"), line(5, "checkpoint")].join("\n") + "\n",
        )
        .unwrap();
        std::fs::write(&files[3], line(6, "x") + "\n").unwrap();
        for (f, days) in files.iter().zip([100, 95, 10, 200]) {
            age(f, days);
        }
        let cutoff = SystemTime::now() - Duration::from_secs(90 * 86_400);
        let plan = plan(&files, &files[3], cutoff).unwrap().unwrap();
        assert_eq!(
            plan.files
                .iter()
                .map(|f| (f.first, f.last))
                .collect::<Vec<_>>(),
            [(0, 1), (2, 3)]
        );
        assert_eq!(plan.checkpoint, line(3, "checkpoint"));
        // The current file is never pruned, however old.
        assert_eq!(plan_of_current(&files), None);
    }

    fn plan_of_current(files: &[PathBuf]) -> Option<Plan> {
        plan(&files[..1], &files[0], SystemTime::now()).unwrap()
    }
}
