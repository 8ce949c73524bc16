//! A real audit log, tampered with in every way `chassis audit verify` must
//! catch; and the log a running server writes.

mod common;

use common::assert_success;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chassis::audit::{AuditLog, AuditOptions, FsyncPolicy};

fn write_log(data: &Path, records: u64) -> PathBuf {
    let mut options = AuditOptions::in_data_dir(data);
    options.host_id = "audit-test".into();
    options.fsync = FsyncPolicy::Batch {
        records: 4096,
        interval_ms: 100,
    };
    options.max_file_bytes = 1 << 30;
    let log = AuditLog::open(options).unwrap();
    for i in 1..=records {
        log.record(
            "run.ended",
            serde_json::json!({ "run_id": format!("run-{i}"), "module": "m", "caller": "local", "outcome": "ok" }),
        )
        .unwrap();
    }
    log.close().unwrap();
    data.join("audit").join("audit-000001.jsonl")
}

fn verify(data: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap()
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn rewrite(file: &Path, lines: &[String]) {
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
}

#[track_caller]
fn assert_refused(out: &Output, needle: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn an_untouched_log_of_100000_records_verifies() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 100_000);
    let out = verify(data.path(), &[]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok: 100000 records"), "{text}");
    assert!(text.contains("matches the checkpoint"), "{text}");
}

#[test]
fn an_edited_record_is_named() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    l[4] = l[4].replace("\"outcome\":\"ok\"", "\"outcome\":\"trap\"");
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        "audit-000001.jsonl:5: record 5: edited",
    );
}

#[test]
fn a_deleted_record_is_named() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    l.remove(4);
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        "record 6: deleted: record 5 is missing",
    );
}

#[test]
fn an_inserted_record_is_named() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    let copy = l[2].clone();
    l.insert(7, copy);
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        "audit-000001.jsonl:8: record 3: inserted",
    );
}

#[test]
fn reordered_records_are_named() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    l.swap(3, 4);
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        "audit-000001.jsonl:4: record 5: reordered: expected record 4",
    );
}

#[test]
fn truncation_at_the_end_is_caught_by_the_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    l.truncate(8);
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        "truncated: the log ends at record 8 but the checkpoint says 10",
    );
}

#[test]
fn a_record_signed_by_an_unknown_key_is_named() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 3);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let out = verify(
        data.path(),
        &[
            "--pubkey",
            &hex::encode(stranger.verifying_key().as_bytes()),
        ],
    );
    assert_refused(&out, "record 1: signed by unknown key");

    // A forger who rewrites the whole log with their own key is caught too.
    let other = tempfile::tempdir().unwrap();
    let mut options = AuditOptions::in_data_dir(other.path());
    options.keys_dir = other.path().join("their-keys");
    options.key_file = other.path().join("their-keys/audit.ed25519");
    let log = AuditLog::open(options).unwrap();
    log.record("run.ended", serde_json::json!({"forged": true}))
        .unwrap();
    log.close().unwrap();
    let forged = other.path().join("audit/audit-000001.jsonl");
    let out = verify(data.path(), &[forged.to_str().unwrap()]);
    assert_refused(&out, "signed by unknown key");
}

#[test]
fn key_rotation_from_the_cli_keeps_the_log_verifiable() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 3);
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["audit", "rotate-key", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_success(&out);
    write_log(data.path(), 2);
    let out = verify(data.path(), &[]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 6 records"));
    let show = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args([
            "audit",
            "show",
            "--kind",
            "key.rotated",
            "--json",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(record["seq"], 4);
    assert!(record["fields"]["endorsement"].as_str().unwrap().len() == 128);
}

#[test]
fn key_rotation_against_a_running_log_fails_cleanly_and_can_be_retried() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 2);
    let held = AuditLog::open(AuditOptions::in_data_dir(data.path())).unwrap();
    let rotate = || {
        Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args(["audit", "rotate-key", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap()
    };
    let out = rotate();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lock"), "{stderr}");
    assert!(
        !data.path().join("keys/audit.new").exists(),
        "a refused rotation stages nothing"
    );
    held.close().unwrap();
    drop(held);
    assert_success(&rotate());
}

#[test]
fn audit_show_filters_by_run_caller_and_kind() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 20);
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["audit", "show", "--run", "run-7", "--json", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"run-7\""));
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["audit", "show", "--caller", "nobody", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty());
}
