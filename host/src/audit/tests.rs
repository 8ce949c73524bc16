use std::path::{Path, PathBuf};

use super::record::{CHECKPOINT_KIND, GENESIS_KIND, Record};
use super::verify::{Checkpoint, Reason, VerifyOptions, verify};
use super::*;

fn options(dir: &Path) -> AuditOptions {
    let mut o = AuditOptions::in_data_dir(dir);
    o.host_id = "test-host".into();
    o
}

fn trusted(dir: &Path) -> Vec<ed25519_dalek::VerifyingKey> {
    keys::read_public_keys(&dir.join("keys").join(keys::PUBLIC_KEYS_FILE)).unwrap()
}

fn write_log(dir: &Path, n: u64) -> Vec<PathBuf> {
    let log = AuditLog::open(options(dir)).unwrap();
    for i in 0..n {
        log.record(
            "run.ended",
            serde_json::json!({"run_id": format!("r{i}"), "outcome": "ok"}),
        )
        .unwrap();
    }
    log.close().unwrap();
    log_files(&dir.join("audit")).unwrap()
}

fn checkpoint(dir: &Path) -> Checkpoint {
    Checkpoint::read(&dir.join("audit").join(verify::CHECKPOINT_FILE)).unwrap()
}

fn records(files: &[PathBuf]) -> Vec<Record> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Record>>()
        })
        .collect()
}

fn check(dir: &Path, files: &[PathBuf]) -> Result<verify::Verified, verify::Problem> {
    let keys = trusted(dir);
    let cp = checkpoint(dir);
    verify(
        files,
        &VerifyOptions {
            trusted: &keys,
            checkpoint: Some(&cp),
            ..Default::default()
        },
    )
}

#[test]
fn a_log_starts_with_its_genesis_and_ends_signed() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_log(dir.path(), 10);
    let all = records(&files);
    assert_eq!(all[0].seq, 0);
    assert_eq!(all[0].kind, GENESIS_KIND);
    let key = keys::load_or_create(&dir.path().join("keys/audit.ed25519")).unwrap();
    assert_eq!(
        all[0].fields["public_key"],
        hex::encode(key.verifying_key().as_bytes())
    );
    assert_eq!(
        all.last().unwrap().kind,
        CHECKPOINT_KIND,
        "closed with a checkpoint"
    );
    let ok = check(dir.path(), &files).unwrap();
    assert_eq!(ok.unsigned_tail, 0);
    assert!(ok.checkpoint_matched);
}

#[test]
fn an_untouched_log_verifies_and_the_chain_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10);
    let files = write_log(dir.path(), 5);
    let ok = check(dir.path(), &files).unwrap();
    let events = records(&files)
        .iter()
        .filter(|r| r.kind == "run.ended")
        .count();
    assert_eq!(events, 15);
    assert_eq!(ok.records, records(&files).len() as u64);
    assert_eq!(ok.unsigned_tail, 0);
}

#[test]
fn checkpoints_come_once_per_batch_not_once_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.fsync = FsyncPolicy::Batch {
        records: 100,
        interval_ms: 60_000,
    };
    let log = AuditLog::open(o).unwrap();
    for i in 0..1000 {
        log.record("run.ended", serde_json::json!({ "i": i }))
            .unwrap();
    }
    log.close().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    let checkpoints = records(&files)
        .iter()
        .filter(|r| r.kind == CHECKPOINT_KIND)
        .count();
    // One at creation (covering the genesis), then one per 100 records.
    assert_eq!(checkpoints, 11, "one checkpoint per batch of 100");
    check(dir.path(), &files).unwrap();
}

#[test]
fn size_rotation_keeps_one_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.max_file_bytes = 4096;
    let log = AuditLog::open(o).unwrap();
    for i in 0..100 {
        log.record("run.ended", serde_json::json!({ "i": i }))
            .unwrap();
    }
    log.close().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    assert!(files.len() > 3, "{files:?}");
    for f in &files {
        let last: Record =
            serde_json::from_str(std::fs::read_to_string(f).unwrap().lines().last().unwrap())
                .unwrap();
        assert_eq!(last.kind, CHECKPOINT_KIND, "{} ends signed", f.display());
    }
    check(dir.path(), &files).unwrap();
    // Dropping a whole middle file is a deletion.
    let mut gap = files.clone();
    gap.remove(1);
    let problem = check(dir.path(), &gap).unwrap_err();
    assert!(
        matches!(problem.reason, Reason::Deleted { .. }),
        "{problem}"
    );
    // Dropping the first is caught by the missing genesis.
    let problem = check(dir.path(), &files[1..]).unwrap_err();
    assert!(
        matches!(problem.reason, Reason::NoGenesis { .. }),
        "{problem}"
    );
}

#[test]
fn a_second_writer_is_refused_while_the_log_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = AuditLog::open(options(dir.path())).unwrap();
    let second = AuditLog::open(options(dir.path())).unwrap_err();
    assert!(matches!(second, AuditError::Locked { .. }), "{second}");
    first.close().unwrap();
}

#[test]
fn key_rotation_is_signed_by_the_old_key_and_endorsed_by_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = {
        let log = AuditLog::open(options(dir.path())).unwrap();
        log.record("host.start", serde_json::json!({})).unwrap();
        log.close().unwrap();
        trusted(dir.path())
    };
    let log = AuditLog::open(options(dir.path())).unwrap();
    let new = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    log.rotate_key(new.clone()).unwrap();
    log.record("run.ended", serde_json::json!({"after": "rotation"}))
        .unwrap();
    log.close().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    // Only the first key is given: the rotation record vouches for the new one.
    let ok = verify(
        &files,
        &VerifyOptions {
            trusted: &anchor,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ok.keys.len(), 2);
    assert_eq!(ok.unsigned_tail, 0);
    // Only the new key: its checkpoints sign the whole chain before them.
    let only_new = [new.verifying_key()];
    verify(
        &files,
        &VerifyOptions {
            trusted: &only_new,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        trusted(dir.path()).len(),
        2,
        "the new public key is remembered"
    );
}

#[test]
fn a_cut_tail_is_refused_at_open_until_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_log(dir.path(), 20);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let kept = lines.len() - 3;
    std::fs::write(&files[0], lines[..kept].join("\n") + "\n").unwrap();
    let last_kept: Record = serde_json::from_str(lines[kept - 1]).unwrap();
    let err = AuditLog::open(options(dir.path())).unwrap_err();
    match &err {
        AuditError::Tail {
            problem: TailProblem::Missing { from, to },
            ..
        } => {
            assert_eq!(*from, last_kept.seq + 1);
            assert_eq!(*to, last_kept.seq + 3);
        }
        other => panic!("{other}"),
    }
    assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
    let (log, recovery) = AuditLog::recover(options(dir.path())).unwrap();
    log.close().unwrap();
    assert_eq!(
        recovery.seq,
        Some(last_kept.seq + 4),
        "lost numbers are not reused"
    );
    let ok = check(dir.path(), &files).unwrap();
    assert_eq!(ok.losses.len(), 1);
    assert_eq!(ok.losses[0].from, Some(last_kept.seq + 1));
    // And the log opens normally again.
    AuditLog::open(options(dir.path()))
        .unwrap()
        .close()
        .unwrap();
}

#[test]
fn runs_left_open_by_a_crash_are_ended_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(options(dir.path())).unwrap();
    log.record(
        "run.started",
        serde_json::json!({"run_id": "crashed", "module": "m", "policy": "p", "caller": "c"}),
    )
    .unwrap();
    log.record("run.started", serde_json::json!({"run_id": "finished"}))
        .unwrap();
    log.record(
        "run.ended",
        serde_json::json!({"run_id": "finished", "outcome": "ok"}),
    )
    .unwrap();
    log.close().unwrap();
    drop(log);
    AuditLog::open(options(dir.path()))
        .unwrap()
        .close()
        .unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    let ended: Vec<Record> = records(&files)
        .into_iter()
        .filter(|r| r.kind == "run.ended" && r.fields["run_id"] == "crashed")
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].fields["outcome"], "host-crashed");
    assert_eq!(ended[0].fields["module"], "m");
    check(dir.path(), &files).unwrap();
    // A third start finds nothing left open.
    AuditLog::open(options(dir.path()))
        .unwrap()
        .close()
        .unwrap();
    let again = records(&files)
        .into_iter()
        .filter(|r| r.fields["outcome"] == "host-crashed")
        .count();
    assert_eq!(again, 1);
}

#[test]
fn a_format_1_log_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("audit")).unwrap();
    let v1 = r#"{"seq":1,"ts":"2026-01-01T00:00:00Z","host":"h","kind":"host.start","fields":{},"prev":"0000000000000000000000000000000000000000000000000000000000000000","hash":"ab","sig":"cd","key":"ef"}"#;
    let file = dir.path().join("audit/audit-000001.jsonl");
    std::fs::write(&file, format!("{v1}\n")).unwrap();
    let err = AuditLog::open(options(dir.path())).unwrap_err();
    assert!(matches!(err, AuditError::Format1 { .. }), "{err}");
    let problem = verify(&[file], &VerifyOptions::default()).unwrap_err();
    assert_eq!(problem.reason, Reason::Format1);
}

#[test]
fn a_log_that_cannot_be_written_fails_closed_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.fsync = FsyncPolicy::Every;
    o.max_file_bytes = 1024;
    // The next file the writer rotates into refuses every write.
    std::fs::create_dir_all(dir.path().join("audit")).unwrap();
    std::fs::write(dir.path().join("audit/audit-000001.jsonl"), "").unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join("audit/audit-000002.jsonl")).unwrap();
    // The newest file must be a real one when opening: the symlink comes second.
    let log = AuditLog::open(AuditOptions { ..o.clone() });
    assert!(
        matches!(log, Err(AuditError::Corrupt { .. })),
        "a device as the newest file is refused"
    );
    std::fs::remove_file(dir.path().join("audit/audit-000002.jsonl")).unwrap();
    let log = AuditLog::open(o).unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join("audit/audit-000002.jsonl")).unwrap();
    let mut refused = None;
    for i in 0..200 {
        match log.record(
            "run.ended",
            serde_json::json!({ "i": i, "pad": "x".repeat(100) }),
        ) {
            Ok(()) => {
                let _ = log.flush();
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("records are refused once writing fails");
    assert!(matches!(err, AuditError::Unavailable(_)), "{err}");
    assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
    assert!(!log.is_healthy());
    assert!(log.failures() >= 1);
}
