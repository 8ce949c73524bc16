use std::path::PathBuf;

use super::verify::{Checkpoint, Reason, verify};
use super::*;

fn options(dir: &std::path::Path) -> AuditOptions {
    let mut o = AuditOptions::in_data_dir(dir);
    o.host_id = "test-host".into();
    o
}

fn trusted(dir: &std::path::Path) -> Vec<ed25519_dalek::VerifyingKey> {
    keys::read_public_keys(&dir.join("keys").join(keys::PUBLIC_KEYS_FILE)).unwrap()
}

fn write_log(dir: &std::path::Path, n: u64) -> Vec<PathBuf> {
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

fn checkpoint(dir: &std::path::Path) -> Checkpoint {
    Checkpoint::read(&dir.join("audit").join(verify::CHECKPOINT_FILE)).unwrap()
}

#[test]
fn an_untouched_log_verifies_and_the_chain_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10);
    let files = write_log(dir.path(), 5);
    let ok = verify(&files, &trusted(dir.path()), Some(&checkpoint(dir.path()))).unwrap();
    assert_eq!(ok.records, 15);
    assert_eq!(ok.last_seq, 15);
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
    let ok = verify(&files, &trusted(dir.path()), Some(&checkpoint(dir.path()))).unwrap();
    assert_eq!(ok.records, 100);
    // Dropping a whole middle file is a deletion.
    let mut gap = files.clone();
    gap.remove(1);
    let problem = verify(&gap, &trusted(dir.path()), None).unwrap_err();
    assert!(
        matches!(problem.reason, Reason::Deleted { .. }),
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
    log.rotate_key(new).unwrap();
    log.record("run.ended", serde_json::json!({"after": "rotation"}))
        .unwrap();
    log.close().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    // Only the first key is given: the rotation record vouches for the new one.
    let ok = verify(&files, &anchor, None).unwrap();
    assert_eq!(ok.records, 3);
    assert_eq!(ok.keys.len(), 2);
    assert_eq!(
        trusted(dir.path()).len(),
        2,
        "the new public key is remembered"
    );
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
