use std::path::{Path, PathBuf};
use std::time::Duration;

use super::record::{CHECKPOINT_KIND, GENESIS_KIND, ROTATION_KIND, Record};
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

/// Every record in `files`, in order (shared with the host's tests).
pub(crate) fn records(files: &[PathBuf]) -> Vec<Record> {
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
fn a_key_rotation_that_cannot_trust_the_new_key_leaves_no_trace_and_the_old_key_signs_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(options(dir.path())).unwrap();
    log.record("host.start", serde_json::json!({})).unwrap();
    log.flush().unwrap();
    let old = trusted(dir.path());
    assert_eq!(old.len(), 1);
    // The trusted-keys file cannot be appended to while a directory holds
    // its name, so the new key cannot be remembered.
    let pub_file = dir.path().join("keys").join(keys::PUBLIC_KEYS_FILE);
    std::fs::remove_file(&pub_file).unwrap();
    std::fs::create_dir_all(pub_file.join("blocker")).unwrap();
    let new = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let err = log.rotate_key(new.clone()).unwrap_err();
    assert!(err.to_string().contains(keys::PUBLIC_KEYS_FILE), "{err}");
    log.record("run.ended", serde_json::json!({"after": "failed rotation"}))
        .unwrap();
    log.flush().unwrap();
    assert!(log.is_healthy(), "a refused rotation does not stop the log");
    log.close().unwrap();
    std::fs::remove_dir_all(&pub_file).unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    let all = records(&files);
    assert!(
        all.iter().all(|r| r.kind != ROTATION_KIND),
        "a rotation record names a key nobody trusts"
    );
    assert!(
        all.iter().any(|r| r.kind == "run.ended"),
        "the record after it is kept"
    );
    // The old key alone verifies everything, tail included: it kept signing.
    let cp = checkpoint(dir.path());
    let ok = verify(
        &files,
        &VerifyOptions {
            trusted: &old,
            checkpoint: Some(&cp),
            require_signed_tail: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ok.keys.len(), 1);
    assert_eq!(ok.unsigned_tail, 0);
    // The new key signed nothing.
    let only_new = [new.verifying_key()];
    let refused = verify(
        &files,
        &VerifyOptions {
            trusted: &only_new,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(refused.reason, Reason::UnknownKey(_)), "{refused}");
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
    // Its context, read from the run.started the crash left open, is on
    // file beside it.
    assert_eq!(expanded(&files, &ended[0]).fields["module"], "m");
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

#[test]
fn a_checkpoint_the_file_could_not_name_stays_owed_and_the_log_unhealthy_until_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.fsync = FsyncPolicy::Batch {
        records: 10,
        interval_ms: 20,
    };
    let log = AuditLog::open(o).unwrap();
    for i in 0..5 {
        log.record("run.ended", serde_json::json!({ "i": i }))
            .unwrap();
    }
    log.flush().unwrap();
    // The checkpoint file cannot be replaced while a directory holds its name.
    let cp = dir.path().join("audit").join(verify::CHECKPOINT_FILE);
    std::fs::remove_file(&cp).unwrap();
    std::fs::create_dir_all(cp.join("blocker")).unwrap();
    for i in 5..30 {
        let _ = log.record("run.ended", serde_json::json!({ "i": i }));
    }
    // Rounds with nothing new to write come and go (the writer retries
    // every 500 ms): the unwritten checkpoint file keeps the log unhealthy,
    // so runs keep failing closed instead of flapping.
    std::thread::sleep(Duration::from_millis(1_200));
    assert!(!log.is_healthy());
    assert!(log.flush().is_err());
    std::fs::remove_dir_all(&cp).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !log.is_healthy() {
        assert!(
            std::time::Instant::now() < deadline,
            "the owed checkpoint is written on a retry"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    log.close().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    let last = records(&files)
        .into_iter()
        .rfind(|r| r.kind == CHECKPOINT_KIND)
        .unwrap();
    assert_eq!(checkpoint(dir.path()).record.seq, last.seq);
    check(dir.path(), &files).unwrap();
}

/// `record` with the context its file defined filled in.
fn expanded(files: &[PathBuf], record: &Record) -> Record {
    let mut contexts = context::Contexts::default();
    for file in files {
        contexts.new_file();
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let r: Record = serde_json::from_str(line).unwrap();
            contexts.learn(&r);
            if r.seq == record.seq {
                return contexts.expand(&r);
            }
        }
    }
    panic!("record {} is not in the log", record.seq)
}

/// Options whose batch never closes on time, so only a flush, a record
/// about a run, or the close writes a held-back start.
fn slow_batches(dir: &Path) -> AuditOptions {
    let mut o = options(dir);
    o.fsync = FsyncPolicy::Batch {
        records: 256,
        interval_ms: 600_000,
    };
    o
}

fn rid(id: &str) -> RunId {
    RunId::new(id).unwrap()
}

fn run_context(module: &str) -> RunContext {
    RunContext::new(&serde_json::json!({"module": module, "policy": "default", "caller": "local"}))
}

/// A run's usage: `n` fuel, the rest fixed.
fn usage(n: u64) -> RunUsage {
    RunUsage {
        fuel: n,
        mem: 65_536,
        wall_us: 40,
        cpu_us: 35,
    }
}

/// How a plain run ends: `ok`, with its usage, no error, no denials.
fn plain(n: u64) -> RunOutcome {
    RunOutcome {
        usage: Some(usage(n)),
        ..RunOutcome::new("ok")
    }
}

/// Every record in `files` as `chassis audit show` reads it: a `runs`
/// record unfolded into the `run` record of each of its runs.
fn unfolded(files: &[PathBuf]) -> Vec<Record> {
    records(files).iter().flat_map(context::unfold).collect()
}

#[test]
fn a_short_plain_run_is_one_record_naming_a_context_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(slow_batches(dir.path())).unwrap();
    for i in 0..2 {
        let id = format!("r{i}");
        log.run_started(rid(id.as_str()), run_context("m")).unwrap();
        log.run_ended(rid(&id), RunOutcome::new("ok")).unwrap();
    }
    // A run that never waited sends its start with its end: the same record.
    log.admit_run().unwrap();
    log.run_completed(rid("r2"), run_context("m"), RunOutcome::new("ok"))
        .unwrap();
    log.close().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    let all = records(&files);
    let fields = |id: &str| {
        let mut run = all
            .iter()
            .find(|r| r.kind == "run" && r.fields["run_id"] == id)
            .unwrap()
            .fields
            .clone();
        run.as_object_mut().unwrap().remove("run_id");
        run
    };
    assert_eq!(fields("r2"), fields("r0"));
    let kinds: Vec<&str> = all
        .iter()
        .map(|r| r.kind.as_str())
        .filter(|k| *k != CHECKPOINT_KIND)
        .collect();
    assert_eq!(
        kinds,
        ["log.created", "run.context", "run", "run", "run"],
        "one context, one record per run"
    );
    let run = all.iter().find(|r| r.kind == "run").unwrap();
    assert_eq!(run.fields.get("error"), None, "nulls are left out");
    let full = expanded(&files, run);
    assert_eq!(full.fields["module"], "m");
    assert_eq!(full.fields["outcome"], "ok");
    check(dir.path(), &files).unwrap();
}

/// A writer run on this thread over `messages`, all queued before it
/// starts so that it takes them in one round, then stopped: the log's files.
fn in_one_round(dir: &Path, messages: Vec<Message>) -> Vec<PathBuf> {
    in_one_round_with(&slow_batches(dir), messages)
}

/// [`in_one_round`] with the writer's options `o` (its `dir`'s log).
fn in_one_round_with(o: &AuditOptions, messages: Vec<Message>) -> Vec<PathBuf> {
    let dir = o.dir.parent().unwrap().to_path_buf();
    let key = keys::load_or_create(&o.key_file).unwrap();
    keys::remember_public_key(&o.keys_dir, &key.verifying_key()).unwrap();
    let (writer, _) = writer::Writer::open(o, key, writer::OpenMode::Normal).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(messages.len() + 1);
    for m in messages {
        tx.send(m).unwrap();
    }
    tx.send(Message::Stop).unwrap();
    let health = Arc::new(Health::default());
    health.healthy.store(true, Ordering::Relaxed);
    writer.run(rx, health.clone());
    assert_eq!(health.failures.load(Ordering::Relaxed), 0);
    log_files(&dir.join("audit")).unwrap()
}

/// A group open when the file fills is written into that file, under the
/// context number that file defined: across many rotations in one round
/// every run is on record once, in order, under its own module, and the
/// log verifies.
#[test]
fn short_runs_grouped_across_rotations_keep_their_file_s_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = slow_batches(dir.path());
    o.max_file_bytes = 2048;
    let messages = (0..300)
        .map(|i| {
            completed(
                &format!("r{i}"),
                if i % 100 < 50 { "m" } else { "n" },
                plain(i),
            )
        })
        .collect();
    let files = in_one_round_with(&o, messages);
    assert!(files.len() > 2, "{} files", files.len());

    let seen = run_modules(&files);
    let grouped_files = files
        .iter()
        .filter(|f| {
            records(std::slice::from_ref(f))
                .iter()
                .any(|r| r.kind == "runs")
        })
        .count();
    let expected: Vec<(String, String)> = (0..300)
        .map(|i| {
            (
                format!("r{i}"),
                if i % 100 < 50 { "m" } else { "n" }.to_string(),
            )
        })
        .collect();
    assert_eq!(seen, expected, "every run once, in order, under its module");
    assert!(grouped_files > 1, "groups in {grouped_files} files");
    check(dir.path(), &files).unwrap();
}

/// Each run on record in `files`, in order, as (run id, module), read the
/// way `chassis audit show` reads them: each file's contexts, `runs`
/// records unfolded.
fn run_modules(files: &[PathBuf]) -> Vec<(String, String)> {
    let mut contexts = context::Contexts::default();
    let mut seen = Vec::new();
    for file in files {
        contexts.new_file();
        for r in records(std::slice::from_ref(file)) {
            contexts.learn(&r);
            for run in contexts.expand_all(&r) {
                if run.kind == "run" {
                    let field = |name: &str| run.fields[name].as_str().unwrap().to_string();
                    seen.push((field("run_id"), field("module")));
                }
            }
        }
    }
    seen
}

fn completed(id: &str, module: &str, outcome: RunOutcome) -> Message {
    Message::RunCompleted {
        run_id: rid(id),
        context: run_context(module),
        outcome,
    }
}

/// The plain short runs of one round that share a context are one `runs`
/// record, at most 64 to a record; a run with an error or denials, a change
/// of context and any other record close the group, so records keep the
/// order their messages came in; read back unfolded, each run is the `run`
/// record it would have had alone, and the log verifies.
#[test]
fn the_plain_short_runs_of_a_round_that_share_a_context_are_one_runs_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut messages = Vec::new();
    for i in 0..70 {
        messages.push(completed(&format!("a{i}"), "m", plain(i)));
    }
    messages.push(completed(
        "failed",
        "m",
        RunOutcome {
            error: Some("wasm trap: unreachable".into()),
            usage: Some(usage(1)),
            ..RunOutcome::new("trap")
        },
    ));
    for i in 0..3 {
        messages.push(completed(&format!("b{i}"), "m", plain(i)));
    }
    messages.push(completed(
        "denied",
        "m",
        RunOutcome {
            denials: Some(2),
            usage: Some(usage(1)),
            ..RunOutcome::new("ok")
        },
    ));
    messages.push(completed("c0", "m", plain(0)));
    messages.push(Message::Event {
        kind: "policy.loaded",
        fields: serde_json::json!({"policy": "default"}),
    });
    messages.push(completed("c1", "n", plain(0)));
    messages.push(completed("c2", "n", plain(0)));
    messages.push(completed("d0", "m", plain(0)));
    // Started and ended within the round: its start was held back.
    messages.push(Message::RunStarted {
        run_id: rid("d1"),
        context: run_context("m"),
    });
    messages.push(Message::RunEnded {
        run_id: rid("d1"),
        outcome: plain(7),
    });
    let files = in_one_round(dir.path(), messages);

    let all = records(&files);
    let kinds: Vec<&str> = all
        .iter()
        .map(|r| r.kind.as_str())
        .filter(|k| *k != CHECKPOINT_KIND)
        .collect();
    assert_eq!(
        kinds,
        [
            "log.created",
            "run.context",
            "runs",
            "runs",
            "run",
            "runs",
            "run",
            "run",
            "policy.loaded",
            "run.context",
            "runs",
            "runs",
        ]
    );
    let sizes: Vec<usize> = all
        .iter()
        .filter(|r| r.kind == "runs")
        .map(|r| r.fields["runs"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [64, 6, 3, 2, 2], "64 at most to a record");

    let runs: Vec<Record> = unfolded(&files)
        .into_iter()
        .filter(|r| r.kind == "run")
        .collect();
    let ids: Vec<&str> = runs
        .iter()
        .map(|r| r.fields["run_id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<String> = (0..70).map(|i| format!("a{i}")).collect();
    expected.push("failed".into());
    expected.extend((0..3).map(|i| format!("b{i}")));
    expected.extend(["denied", "c0", "c1", "c2", "d0", "d1"].map(String::from));
    assert_eq!(ids, expected, "every run once, in the order it ended");
    let a5 = runs.iter().find(|r| r.fields["run_id"] == "a5").unwrap();
    assert_eq!(
        a5.fields,
        serde_json::json!({
            "run_id": "a5",
            "ctx": 1,
            "outcome": "ok",
            "usage": {"fuel": 5, "mem": 65_536, "wall_us": 40, "cpu_us": 35},
        }),
        "a grouped run reads as the run record it would have had alone"
    );
    let alone = runs
        .iter()
        .find(|r| r.fields["run_id"] == "failed")
        .unwrap();
    assert_eq!(alone.fields["error"], "wasm trap: unreachable");
    let grouped = all.iter().find(|r| r.kind == "runs").unwrap();
    assert_eq!(
        runs.iter().filter(|r| r.seq == grouped.seq).count(),
        64,
        "a grouped run is shown under its record's seq"
    );

    // Contexts fill in as for a `run` record: c1 and c2 ran under n.
    let modules = run_modules(&files);
    let of = |id: &str| modules.iter().find(|(r, _)| r == id).unwrap().1.clone();
    assert_eq!(
        (of("c0"), of("c1"), of("c2"), of("d1")),
        ("m".into(), "n".into(), "n".into(), "m".into())
    );
    check(dir.path(), &files).unwrap();
}

/// A run inside a `runs` record is covered by the chain like any record:
/// changing one figure of one run is an edit `verify` names at that line.
#[test]
fn an_edit_inside_a_runs_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let messages = (0..10)
        .map(|i| completed(&format!("r{i}"), "m", plain(1_000 + i)))
        .collect();
    let files = in_one_round(dir.path(), messages);
    check(dir.path(), &files).unwrap();
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains(r#""kind":"runs""#))
        .unwrap();
    let edited = text.replacen(r#"["r4","ok",1004,"#, r#"["r4","ok",4,"#, 1);
    assert_ne!(edited, text, "the run's figures are in the line as written");
    std::fs::write(&files[0], edited).unwrap();
    let problem = check(dir.path(), &files).unwrap_err();
    assert_eq!(problem.reason, Reason::Edited);
    assert_eq!(problem.line, line + 1);
}

#[test]
fn a_run_that_outlives_its_batch_or_has_records_of_its_own_keeps_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(slow_batches(dir.path())).unwrap();
    // Still going when the batch is signed: its start is written then.
    log.run_started(rid("long"), run_context("m")).unwrap();
    log.flush().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    assert!(
        records(&files)
            .iter()
            .any(|r| r.kind == "run.started" && r.fields["run_id"] == "long"),
        "a run in flight at a checkpoint is on disk before it ends"
    );
    // A record about a run comes after its start.
    log.run_started(rid("secret"), run_context("n")).unwrap();
    log.record(
        "secret.granted",
        serde_json::json!({"run_id": "secret", "name": "db"}),
    )
    .unwrap();
    for id in ["long", "secret"] {
        log.run_ended(rid(id), RunOutcome::new("ok")).unwrap();
    }
    log.close().unwrap();
    let all = records(&files);
    for id in ["long", "secret"] {
        let kinds: Vec<&str> = all
            .iter()
            .filter(|r| r.fields["run_id"] == id)
            .map(|r| r.kind.as_str())
            .collect();
        let expected: &[&str] = if id == "long" {
            &["run.started", "run.ended"]
        } else {
            &["run.started", "secret.granted", "run.ended"]
        };
        assert_eq!(kinds, expected, "{id}");
    }
    check(dir.path(), &files).unwrap();
}

#[test]
fn with_fsync_every_nothing_is_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.fsync = FsyncPolicy::Every;
    let log = AuditLog::open(o).unwrap();
    log.run_started(rid("r"), run_context("m")).unwrap();
    log.run_ended(rid("r"), RunOutcome::new("ok")).unwrap();
    log.close().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    let kinds: Vec<String> = records(&files)
        .into_iter()
        .filter(|r| r.fields["run_id"] == "r")
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["run.started", "run.ended"]);
}

#[test]
fn contexts_are_defined_again_in_each_file_and_after_a_restart_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = slow_batches(dir.path());
    o.max_file_bytes = 2048;
    let log = AuditLog::open(o.clone()).unwrap();
    for i in 0..40 {
        log.run_started(rid(format!("r{i}").as_str()), run_context("m"))
            .unwrap();
        log.run_ended(rid(&format!("r{i}")), RunOutcome::new("ok"))
            .unwrap();
    }
    log.close().unwrap();
    drop(log);
    let log = AuditLog::open(o).unwrap();
    log.run_started(rid("after"), run_context("m")).unwrap();
    log.run_ended(rid("after"), RunOutcome::new("ok")).unwrap();
    log.close().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        let mut contexts = context::Contexts::default();
        let mut defined = 0;
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let r: Record = serde_json::from_str(line).unwrap();
            if contexts.learn(&r) {
                defined += 1;
            }
            if r.kind == "run" {
                assert_eq!(
                    contexts.expand(&r).fields["module"],
                    "m",
                    "{}",
                    file.display()
                );
            }
        }
        assert!(defined <= 1, "{}: {defined} contexts", file.display());
    }
    check(dir.path(), &files).unwrap();
}

#[test]
fn a_pruning_record_vouches_for_a_missing_start_only_once_signed() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.max_file_bytes = 2048;
    let log = AuditLog::open(o.clone()).unwrap();
    for i in 0..60 {
        log.record("run.ended", serde_json::json!({ "i": i }))
            .unwrap();
    }
    log.close().unwrap();
    drop(log);
    let before = log_files(&dir.path().join("audit")).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(10 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&before[0])
        .unwrap()
        .set_modified(old)
        .unwrap();
    o.retain = Some(Duration::from_secs(86_400));
    AuditLog::open(o).unwrap().close().unwrap();
    let files = log_files(&dir.path().join("audit")).unwrap();
    assert_eq!(files.len(), before.len() - 1, "the old file was pruned");
    let ok = check(dir.path(), &files).unwrap();
    let pruned = ok.pruned.expect("verify names the pruning");
    assert_eq!(pruned.from, 0);
    assert_eq!(ok.first_seq, pruned.to + 1);
    assert_eq!(pruned.files, ["audit-000001.jsonl"]);

    // Cut right after the pruning record, before the checkpoint that signs it.
    let last = files.last().unwrap();
    let text = std::fs::read_to_string(last).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    let at = kept
        .iter()
        .position(|l| l.contains(r#""kind":"log.pruned""#))
        .unwrap();
    std::fs::write(last, kept[..=at].join("\n") + "\n").unwrap();
    let keys = trusted(dir.path());
    let problem = verify(
        &files,
        &VerifyOptions {
            trusted: &keys,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(problem.reason, Reason::BadPruning(_)), "{problem}");
}

/// Verify reads, parses and hashes a chunk of lines at a time
/// (`CHUNK_LINES`, 4,096): a fault past the first chunks is still named at
/// its own line and record, and a line that is not UTF-8 stops it there.
#[test]
fn a_fault_far_into_a_long_log_is_named_at_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_log(dir.path(), 10_000);
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 2 * 4096 + 1000);
    check(dir.path(), &files).unwrap();

    // An edit on line 9,000 (the third chunk): named at that line.
    let target = 9_000;
    let edited: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| match i + 1 == target {
            true => l.replace(r#""outcome":"ok""#, r#""outcome":"no""#),
            false => l.to_string(),
        })
        .collect();
    assert_ne!(edited[target - 1], lines[target - 1]);
    std::fs::write(&files[0], edited.join("\n") + "\n").unwrap();
    let seq: Record = serde_json::from_str(lines[target - 1]).unwrap();
    let problem = check(dir.path(), &files).unwrap_err();
    assert_eq!(problem.reason, Reason::Edited);
    assert_eq!((problem.line, problem.seq), (target, Some(seq.seq)));

    // Bytes that are not UTF-8 on line 4,097 (the second chunk's first).
    let mut bytes = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i + 1 == 4_097 {
            bytes.extend_from_slice(&[0xff, 0xfe]);
        }
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    std::fs::write(&files[0], bytes).unwrap();
    let problem = check(dir.path(), &files).unwrap_err();
    assert!(
        matches!(problem.reason, Reason::Malformed(_)),
        "{:?}",
        problem.reason
    );
    assert_eq!((problem.line, problem.seq), (4_097, None));
}

/// With `fail_open`, records keep coming while the log cannot be written:
/// the writer then queues them behind the one that failed instead of
/// writing them as they come, and once the file opens again every record
/// is written once, in the order it was sent, and the log verifies.
#[test]
fn records_sent_while_the_log_is_failing_are_written_once_in_order_when_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.fail_open = true;
    o.max_file_bytes = 2048;
    let log = AuditLog::open(o).unwrap();
    // The file the writer rotates into cannot be opened: a directory holds its name.
    let next = dir.path().join("audit").join(writer::file_name(2));
    std::fs::create_dir(&next).unwrap();
    let context = RunContext::new(&serde_json::json!({"module": "m", "caller": "local"}));
    let sent = 60;
    for i in 0..sent {
        log.record(
            "capability.denied",
            serde_json::json!({ "i": i, "pad": "x".repeat(64) }),
        )
        .unwrap();
        let run = RunId::new(&format!("run-{i}")).unwrap();
        log.run_started(run, context.clone()).unwrap();
        log.run_ended(run, RunOutcome::new("ok")).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.is_healthy() {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation never failed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        log.flush().is_err(),
        "nothing is flushed past a record that failed"
    );
    std::fs::remove_dir(&next).unwrap();
    while log.flush().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never recovered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(log.is_healthy());
    log.close().unwrap();

    let files = log_files(&dir.path().join("audit")).unwrap();
    assert!(files.len() >= 2, "{files:?}");
    check(dir.path(), &files).unwrap();
    let all = records(&files);
    let denials: Vec<u64> = all
        .iter()
        .filter(|r| r.kind == "capability.denied")
        .map(|r| r.fields["i"].as_u64().unwrap())
        .collect();
    assert_eq!(
        denials,
        (0..sent).collect::<Vec<_>>(),
        "each once, in order"
    );
    for i in 0..sent {
        let id = format!("run-{i}");
        let of_run: Vec<&str> = all
            .iter()
            .filter(|r| r.fields["run_id"] == id.as_str())
            .map(|r| r.kind.as_str())
            .collect();
        assert!(
            of_run == ["run"] || of_run == ["run.started", "run.ended"],
            "{id}: {of_run:?}"
        );
    }
}

/// A writer thread that dies, returning or unwinding from a panic, takes
/// admission with it: `admit_run` refuses from then on, so no run starts
/// whose records nothing would write.
#[test]
fn a_writer_that_dies_stops_admitting_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(options(dir.path())).unwrap();
    log.admit_run().unwrap();
    log.close().unwrap();
    assert!(!log.is_healthy());
    let err = log.admit_run().unwrap_err();
    assert!(
        matches!(&err, AuditError::Unavailable(why) if why == "the audit writer has stopped"),
        "{err:?}"
    );

    // The same guard on a thread that panics.
    let health = Arc::new(Health::default());
    health.healthy.store(true, Ordering::Relaxed);
    let guard_health = health.clone();
    let died = std::thread::spawn(move || {
        let _stopped = StoppedOnExit(guard_health);
        panic!("the writer fell over");
    })
    .join();
    assert!(died.is_err());
    assert!(health.stopped.load(Ordering::Acquire));
    assert!(!health.healthy.load(Ordering::Relaxed));
}
