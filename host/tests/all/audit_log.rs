//! A real audit log, tampered with in every way `chassis audit verify` must
//! catch; the log a running server writes; a server refusing a log whose
//! tail was cut while it was down; what a plain run costs in log bytes;
//! retention pruning; and runs whose callers hang up.

use crate::common;

use common::assert_success;
use common::served::Served;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use chassis::audit::record::Record;
use chassis::audit::{AuditLog, AuditOptions, FsyncPolicy, log_files};
use chassis::grpc::proto::chassis_client::ChassisClient;
use chassis_tests::programs::*;

fn options(data: &Path) -> AuditOptions {
    let mut options = AuditOptions::in_data_dir(data);
    options.host_id = "audit-test".into();
    options.fsync = FsyncPolicy::Batch {
        records: 4096,
        interval_ms: 100,
    };
    options.max_file_bytes = 1 << 30;
    options
}

fn write_with(options: AuditOptions, records: u64) {
    let log = AuditLog::open(options).unwrap();
    for i in 1..=records {
        log.record(
            "run.ended",
            serde_json::json!({ "run_id": format!("run-{i}"), "module": "m", "caller": "local", "outcome": "ok" }),
        )
        .unwrap();
    }
    log.close().unwrap();
}

fn write_log(data: &Path, records: u64) -> PathBuf {
    write_with(options(data), records);
    data.join("audit").join("audit-000001.jsonl")
}

/// A copy of the log's public keys as they are now, as an operator keeps
/// one off the host (verify is given it by path; `keys/audit.pub` may be
/// tampered with after).
fn out_of_band_keys(data: &Path) -> PathBuf {
    let copy = data.join("off-host-trusted.pub");
    std::fs::copy(data.join("keys/audit.pub"), &copy).unwrap();
    copy
}

fn chassis(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

/// `chassis audit verify` trusting the out-of-band copy of the keys.
fn verify(data: &Path, extra: &[&str]) -> Output {
    let keys = out_of_band_keys(data);
    let mut args = vec!["audit", "verify", "--pubkey", keys.to_str().unwrap()];
    args.extend_from_slice(extra);
    chassis(&args, data)
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

/// Index of the line holding `needle`.
fn line_of(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in the log"))
}

fn seq(line: &str) -> u64 {
    serde_json::from_str::<Record>(line).unwrap().seq
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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_untouched_log_of_100000_records_verifies() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 100_000);
    let total = lines(&file).len();
    let checkpoints = lines(&file)
        .iter()
        .filter(|l| l.contains("\"kind\":\"checkpoint\""))
        .count();
    assert!(checkpoints >= 2, "signed in batches");
    assert!(
        checkpoints < 2_000,
        "{checkpoints} checkpoints: one per batch, not per record"
    );
    let out = verify(data.path(), &["--require-signed-tail"]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.contains(&format!("ok: {total} records")), "{text}");
    assert!(text.contains("matches the checkpoint"), "{text}");
    assert!(text.contains("unsigned tail: 0 records"), "{text}");
}

#[test]
fn an_edited_record_is_named() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    let i = line_of(&l, "\"run-5\"");
    let s = seq(&l[i]);
    l[i] = l[i].replace("\"outcome\":\"ok\"", "\"outcome\":\"trap\"");
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        &format!("audit-000001.jsonl:{}: record {s}: edited", i + 1),
    );
}

#[test]
fn a_deleted_record_is_named() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    let i = line_of(&l, "\"run-5\"");
    let s = seq(&l[i]);
    l.remove(i);
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        &format!("record {}: deleted: record {s} is missing", s + 1),
    );
}

#[test]
fn an_inserted_record_is_named() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    let copy = l[line_of(&l, "\"run-3\"")].clone();
    let at = line_of(&l, "\"run-7\"") + 1;
    l.insert(at, copy.clone());
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        &format!(
            "audit-000001.jsonl:{}: record {}: inserted",
            at + 1,
            seq(&copy)
        ),
    );
}

#[test]
fn reordered_records_are_named() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    let (a, b) = (line_of(&l, "\"run-4\""), line_of(&l, "\"run-5\""));
    let expected = seq(&l[a]);
    let moved = seq(&l[b]);
    l.swap(a, b);
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        &format!(
            "audit-000001.jsonl:{}: record {moved}: reordered: expected record {expected}",
            a + 1
        ),
    );
}

#[test]
fn truncation_at_the_end_is_caught_by_the_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    let mut l = lines(&file);
    let last = seq(l.last().unwrap());
    l.truncate(l.len() - 2);
    let kept = seq(l.last().unwrap());
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        &format!(
            "truncated: the log ends at record {kept} but the checkpoint says {last} were written"
        ),
    );
}

#[test]
fn deleting_the_first_file_is_caught_by_the_missing_genesis() {
    let data = tempfile::tempdir().unwrap();
    let mut o = options(data.path());
    o.max_file_bytes = 4096;
    write_with(o, 200);
    let first = data.path().join("audit/audit-000001.jsonl");
    assert!(data.path().join("audit/audit-000003.jsonl").exists());
    assert_success(&verify(data.path(), &[]));
    std::fs::remove_file(&first).unwrap();
    let out = verify(data.path(), &[]);
    assert_refused(&out, "audit-000002.jsonl:1: record ");
    assert_refused(&out, "deleted: the log does not start with its genesis");
}

#[test]
fn an_archived_first_file_verifies_only_from_the_checkpoint_it_ended_at() {
    let data = tempfile::tempdir().unwrap();
    let mut o = options(data.path());
    o.max_file_bytes = 4096;
    write_with(o, 200);
    let first = data.path().join("audit/audit-000001.jsonl");
    let second = data.path().join("audit/audit-000002.jsonl");
    // Every file ends with a checkpoint: the archive keeps the first file's.
    let archived = data.path().join("archived.checkpoint");
    std::fs::write(&archived, lines(&first).last().unwrap().clone() + "\n").unwrap();
    std::fs::remove_file(&first).unwrap();
    let archived = archived.to_str().unwrap().to_string();
    let out = verify(data.path(), &["--from-checkpoint", &archived]);
    assert_success(&out);
    let from = seq(lines(&second).first().unwrap()) - 1;
    assert!(
        stdout(&out).contains(&format!("starts after checkpoint {from}")),
        "{}",
        stdout(&out)
    );
    // A checkpoint from elsewhere in the log does not vouch for this start.
    let elsewhere = data.path().join("elsewhere.checkpoint");
    std::fs::write(&elsewhere, lines(&second).last().unwrap().clone() + "\n").unwrap();
    assert_refused(
        &verify(
            data.path(),
            &["--from-checkpoint", elsewhere.to_str().unwrap()],
        ),
        "does not follow the --from-checkpoint checkpoint",
    );
}

#[test]
fn a_tail_after_the_last_checkpoint_is_reported_unsigned_and_refused_on_request() {
    let data = tempfile::tempdir().unwrap();
    let file = write_log(data.path(), 10);
    // As a crash leaves it: records after the last checkpoint, which the
    // checkpoint file names. (The batch's own checkpoint never came.)
    let mut l = lines(&file);
    l.pop();
    let cp = l
        .iter()
        .rposition(|l| l.contains("\"kind\":\"checkpoint\""))
        .unwrap();
    let tail = (l.len() - cp - 1) as u64;
    assert!(tail >= 1, "{tail}");
    std::fs::write(
        data.path().join("audit/audit.checkpoint"),
        format!("{}\n", l[cp]),
    )
    .unwrap();
    rewrite(&file, &l);
    let out = verify(data.path(), &[]);
    assert_success(&out);
    assert!(
        stdout(&out).contains(&format!("unsigned tail: {tail} records")),
        "{}",
        stdout(&out)
    );
    assert_refused(
        &verify(data.path(), &["--require-signed-tail"]),
        &format!("unsigned tail: {tail} records after the last signed checkpoint"),
    );
}

#[test]
fn an_older_checkpoint_in_place_of_the_newest_is_caught() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 5);
    let cp_file = data.path().join("audit/audit.checkpoint");
    let old = std::fs::read_to_string(&cp_file).unwrap();
    let file = write_log(data.path(), 5);
    assert_success(&verify(data.path(), &[]));

    // The checkpoint file put back to an older one.
    let new = std::fs::read_to_string(&cp_file).unwrap();
    std::fs::write(&cp_file, &old).unwrap();
    assert_refused(
        &verify(data.path(), &[]),
        &format!(
            "stale checkpoint: audit.checkpoint signs record {}",
            seq(old.trim())
        ),
    );
    std::fs::write(&cp_file, &new).unwrap();

    // The log's last checkpoint replaced by the older one.
    let mut l = lines(&file);
    let n = l.len();
    l[n - 1] = old.trim().to_string();
    rewrite(&file, &l);
    assert_refused(&verify(data.path(), &[]), "inserted");

    // An older checkpoint re-numbered to sit at the end: its signature
    // covers another place.
    let mut moved: serde_json::Value = serde_json::from_str(old.trim()).unwrap();
    let last: serde_json::Value = serde_json::from_str(new.trim()).unwrap();
    moved["seq"] = last["seq"].clone();
    moved["prev"] = last["prev"].clone();
    moved["fields"]["count"] = last["seq"].clone();
    moved["fields"]["chain"] = last["prev"].clone();
    l[n - 1] = moved.to_string();
    rewrite(&file, &l);
    assert_refused(
        &verify(data.path(), &[]),
        "forged checkpoint: its signature does not verify",
    );
}

#[test]
fn keys_are_trusted_only_from_outside_the_log_directory() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 3);
    let keys = out_of_band_keys(data.path());

    // No key given: refused, naming the flags.
    let out = chassis(&["audit", "verify"], data.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no trusted keys: pass --pubkey"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The key beside the log only with the loud flag.
    let out = chassis(&["audit", "verify", "--trust-local-key"], data.path());
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARNING: --trust-local-key"));
    // audit.trusted_keys in a config file.
    let config = data.path().join("verify.yaml");
    std::fs::write(
        &config,
        format!(
            "chassis:\n  audit:\n    trusted_keys: [\"{}\"]\n",
            keys.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    assert_success(&chassis(
        &["audit", "verify", "--config", &config],
        data.path(),
    ));

    // A substituted keys/audit.pub: the log's genesis still names the real key.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let stranger_hex = hex::encode(stranger.verifying_key().as_bytes());
    std::fs::write(
        data.path().join("keys/audit.pub"),
        format!("{stranger_hex}\n"),
    )
    .unwrap();
    assert_refused(
        &chassis(&["audit", "verify", "--trust-local-key"], data.path()),
        "record 0: signed by unknown key: no checkpoint is signed by a trusted key",
    );
    assert_refused(
        &chassis(&["audit", "verify", "--pubkey", &stranger_hex], data.path()),
        "signed by unknown key",
    );

    // A forger who rewrites the whole log with their own key (and their
    // own keys/audit.pub) is caught by the key kept off the host.
    let forged = tempfile::tempdir().unwrap();
    write_log(forged.path(), 3);
    assert_success(&chassis(
        &["audit", "verify", "--trust-local-key"],
        forged.path(),
    ));
    let out = chassis(
        &["audit", "verify", "--pubkey", keys.to_str().unwrap()],
        forged.path(),
    );
    assert_refused(&out, "signed by unknown key");
}

#[test]
fn a_format_1_log_is_refused_clearly() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 1);
    let keys = out_of_band_keys(data.path());
    let v1 = tempfile::tempdir().unwrap();
    let file = v1.path().join("audit-000001.jsonl");
    std::fs::write(
        &file,
        "{\"seq\":1,\"ts\":\"2026-01-01T00:00:00Z\",\"host\":\"h\",\"kind\":\"host.start\",\"fields\":{},\"prev\":\"00\",\"hash\":\"ab\",\"sig\":\"cd\",\"key\":\"ef\"}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["audit", "verify", "--pubkey"])
        .arg(&keys)
        .arg(&file)
        .output()
        .unwrap();
    assert_refused(&out, "audit-000001.jsonl:1: format 1 record");
}

#[test]
fn key_rotation_from_the_cli_keeps_the_log_verifiable() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 3);
    // Only the key from before the rotation is trusted out of band.
    let before = out_of_band_keys(data.path());
    let out = chassis(&["audit", "rotate-key"], data.path());
    assert_success(&out);
    write_log(data.path(), 2);
    let out = chassis(
        &[
            "audit",
            "verify",
            "--require-signed-tail",
            "--pubkey",
            before.to_str().unwrap(),
        ],
        data.path(),
    );
    assert_success(&out);
    assert!(
        stdout(&out).contains("unsigned tail: 0 records"),
        "{}",
        stdout(&out)
    );
    let show = chassis(
        &["audit", "show", "--kind", "key.rotated", "--json"],
        data.path(),
    );
    let record: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert!(record["seq"].as_u64().unwrap() > 3);
    assert!(record["fields"]["endorsement"].as_str().unwrap().len() == 128);
}

#[test]
fn key_rotation_against_a_running_log_fails_cleanly_and_can_be_retried() {
    let data = tempfile::tempdir().unwrap();
    write_log(data.path(), 2);
    let held = AuditLog::open(AuditOptions::in_data_dir(data.path())).unwrap();
    let rotate = || chassis(&["audit", "rotate-key"], data.path());
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
    let out = chassis(&["audit", "show", "--run", "run-7", "--json"], data.path());
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"run-7\""));
    let out = chassis(&["audit", "show", "--caller", "nobody"], data.path());
    assert!(out.stdout.is_empty());
}

/// Serves, runs `hello` a few times and stops: a real served log.
fn served_log() -> tempfile::TempDir {
    let served = Served::start("");
    let hello = served.register(HELLO_COMPONENT);
    for i in 0..3 {
        let out = served.client(&["run", &hello, "--input", &format!("audited-{i}")]);
        assert_success(&out);
    }
    served.stop()
}

#[test]
fn deleting_the_first_lines_of_a_served_log_is_caught() {
    let dir = served_log();
    let data = dir.path().join("data");
    let file = data.join("audit/audit-000001.jsonl");
    assert_success(&verify(&data, &[]));
    let l = lines(&file);
    rewrite(&file, &l[1..]);
    let out = verify(&data, &[]);
    assert_refused(
        &out,
        "audit-000001.jsonl:1: record 1: deleted: the log does not start with its genesis",
    );
    rewrite(&file, &l[3..]);
    assert_refused(
        &verify(&data, &[]),
        "record 3: deleted: the log does not start",
    );
}

#[test]
fn a_tail_cut_while_the_host_is_down_is_refused_at_restart_until_recovered() {
    let dir = served_log();
    let data = dir.path().join("data");
    let file = data.join("audit/audit-000001.jsonl");
    let keys = out_of_band_keys(&data);
    let l = lines(&file);
    let cut_from = seq(&l[l.len() - 5]);
    let cut_to = seq(&l[l.len() - 1]);
    rewrite(&file, &l[..l.len() - 5]);

    // The host refuses to continue the log, naming what is missing.
    let (dir, out) = match Served::try_start_in(dir, "") {
        Ok(_) => panic!("chassis serve continued a log with a cut tail"),
        Err(refused) => refused,
    };
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "records {cut_from} to {cut_to} are missing from the end of the log"
        )) && err.contains("chassis audit recover"),
        "{err}"
    );
    assert_eq!(lines(&file).len(), l.len() - 5, "nothing was written");

    // The operator accepts the loss; it is recorded and signed.
    let out = chassis(&["audit", "recover"], &data);
    assert_success(&out);
    assert!(
        stdout(&out).contains("recorded as log.recovered"),
        "{}",
        stdout(&out)
    );
    let served = Served::start_in(dir, "");
    let hello = served.register(HELLO_COMPONENT);
    assert_success(&served.client(&["run", &hello, "--input", "after-recovery"]));
    let dir = served.stop();
    let data = dir.path().join("data");
    let out = chassis(
        &[
            "audit",
            "verify",
            "--require-signed-tail",
            "--pubkey",
            keys.to_str().unwrap(),
        ],
        &data,
    );
    assert_success(&out);
    assert!(
        stdout(&out).contains(&format!(
            "recorded loss: records {cut_from} to {cut_to} were lost"
        )),
        "{}",
        stdout(&out)
    );
    let show = chassis(
        &["audit", "show", "--kind", "log.recovered", "--json"],
        &data,
    );
    let record: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(
        record["seq"].as_u64(),
        Some(cut_to + 1),
        "lost numbers are not reused"
    );
    assert_eq!(record["fields"]["lost_from"].as_u64(), Some(cut_from));
}

/// The sleeper's input for a run that asks for an ungranted secret (a
/// denial on record), then sleeps 20 s: long enough that only a hang-up
/// ends it during the test.
const DENIED_THEN_ASLEEP: &str = "20000 root-password";

/// After the caller of a run of `sleeper` hung up: the run is ended once,
/// as `cancelled`, after its start and its denial, and the log verifies.
fn assert_cancelled_with_its_denial(served: Served, sleeper: &str) {
    let data = served.data_dir();
    let show = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["audit", "show", "--json", "--module", sleeper];
        all.extend_from_slice(args);
        stdout(&chassis(&all, &data))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Ended while the guest would still be sleeping, not at its end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while show(&["--kind", "run.ended"]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no run.ended for the dropped run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = served.stop();
    let data = dir.path().join("data");
    assert_success(&verify(&data, &["--require-signed-tail"]));
    let started = show(&["--kind", "run.started"]);
    assert_eq!(started.len(), 1);
    let run_id = started[0]["fields"]["run_id"].as_str().unwrap();
    let out = chassis(&["audit", "show", "--json", "--run", run_id], &data);
    let mine: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = mine.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["run.started", "capability.denied", "run.ended"],
        "exactly one end, after the denial"
    );
    assert_eq!(mine[1]["fields"]["target"], "root-password");
    assert_eq!(mine[2]["fields"]["outcome"], "cancelled");
    assert_eq!(mine[2]["fields"]["denials"], 1);
    assert_eq!(mine[2]["fields"]["caller"], mine[0]["fields"]["caller"]);
    assert_eq!(mine[2]["fields"]["module"], sleeper);
}

#[test]
fn a_run_whose_caller_hangs_up_is_ended_as_cancelled() {
    let served = Served::start("");
    let sleeper = served.register(SLEEPER_COMPONENT);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = ChassisClient::connect(format!("http://{}", served.addr))
            .await
            .unwrap();
        let call = client.run(common::run_request(&sleeper, "", DENIED_THEN_ASLEEP));
        // Hang up mid-flight: dropping the call resets its HTTP/2 stream.
        let hung_up = tokio::time::timeout(Duration::from_millis(700), call).await;
        assert!(
            hung_up.is_err(),
            "the 20 s run had not finished: {hung_up:?}"
        );
    });
    drop(runtime);
    assert_cancelled_with_its_denial(served, &sleeper);
}

#[test]
fn a_streamed_run_whose_caller_hangs_up_is_ended_as_cancelled() {
    let served = Served::start("");
    let sleeper = served.register(SLEEPER_COMPONENT);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = ChassisClient::connect(format!("http://{}", served.addr))
            .await
            .unwrap();
        let mut events = client
            .run_stream(common::run_request(&sleeper, "", DENIED_THEN_ASLEEP))
            .await
            .unwrap()
            .into_inner();
        // The sleeper prints nothing: no event comes before the hang-up.
        let next = tokio::time::timeout(Duration::from_millis(700), events.message()).await;
        assert!(next.is_err(), "the 20 s run had not finished: {next:?}");
        // Hang up: dropping the stream resets it.
        drop(events);
        drop(client);
    });
    drop(runtime);
    assert_cancelled_with_its_denial(served, &sleeper);
}

/// Sets `path`'s modification time `days` ago, as if it were closed then.
fn age(path: &Path, days: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(days * 86_400))
        .unwrap();
}

#[test]
fn retention_prunes_old_closed_files_and_verify_names_the_pruned_range() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let mut o = options(data.path());
    o.max_file_bytes = 4096;
    write_with(o.clone(), 200);
    let files = log_files(&dir).unwrap();
    assert!(files.len() >= 5, "{files:?}");
    let keys = out_of_band_keys(data.path());

    // At start-up: the two files closed 100 days ago go to the archive.
    age(&files[0], 100);
    age(&files[1], 100);
    let archive = data.path().join("archive");
    o.retain = Some(Duration::from_secs(90 * 86_400));
    o.archive_dir = Some(archive.clone());
    AuditLog::open(o.clone()).unwrap().close().unwrap();
    assert!(!files[0].exists() && !files[1].exists());
    assert!(archive.join("audit-000001.jsonl").exists());
    assert!(archive.join("audit-000002.jsonl").exists());
    assert!(files[2].exists(), "a file closed recently is kept");
    let first_kept = seq(&lines(&files[2])[0]);
    let out = verify(data.path(), &["--require-signed-tail"]);
    assert_success(&out);
    assert!(
        stdout(&out).contains(&format!(
            "starts at record {first_kept}: records 0 to {} (audit-000001.jsonl, audit-000002.jsonl) were pruned by retention",
            first_kept - 1
        )),
        "{}",
        stdout(&out)
    );
    let show = chassis(
        &["audit", "show", "--kind", "log.pruned", "--json"],
        data.path(),
    );
    let pruned: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(pruned["fields"]["first"], 0);
    assert_eq!(pruned["fields"]["last"], first_kept - 1);
    assert_eq!(pruned["fields"]["action"], "archived");
    assert_eq!(
        pruned["fields"]["checkpoint"].as_str().unwrap(),
        lines(&archive.join("audit-000002.jsonl")).last().unwrap(),
        "it names the checkpoint the pruned files ended at"
    );

    // At a rotation: the next old file goes too (deleted, no archive).
    o.archive_dir = None;
    let log = AuditLog::open(o.clone()).unwrap();
    age(&files[2], 100);
    for i in 0..100 {
        log.record(
            "run.ended",
            serde_json::json!({ "run_id": format!("more-{i}") }),
        )
        .unwrap();
    }
    log.close().unwrap();
    drop(log);
    assert!(!files[2].exists(), "pruned at a rotation");
    assert!(!archive.join("audit-000003.jsonl").exists(), "deleted");
    let next_kept = seq(&lines(&files[3])[0]);
    let out = chassis(
        &[
            "audit",
            "verify",
            "--require-signed-tail",
            "--pubkey",
            keys.to_str().unwrap(),
        ],
        data.path(),
    );
    assert_success(&out);
    assert!(
        stdout(&out).contains(&format!(
            "starts at record {next_kept}: records {first_kept} to {} (audit-000003.jsonl) were pruned by retention",
            next_kept - 1
        )) && stdout(&out).contains("earlier prunings removed the records before them"),
        "{}",
        stdout(&out)
    );

    // A file deleted without a pruning record: refused as deleted.
    std::fs::remove_file(&files[3]).unwrap();
    let out = chassis(
        &["audit", "verify", "--pubkey", keys.to_str().unwrap()],
        data.path(),
    );
    assert_refused(&out, "audit-000005.jsonl:1: record ");
    assert_refused(&out, "deleted: the log does not start with its genesis");
    assert_refused(&out, "no log.pruned record names them");
}

#[test]
fn a_plain_echo_run_takes_at_most_400_bytes_of_log() {
    const RUNS: usize = 400;
    let data = tempfile::tempdir().unwrap();
    // The shipped audit settings.
    let config = chassis::config::Config {
        data_dir: data.path().to_path_buf(),
        ..Default::default()
    };
    let log = AuditLog::open(chassis::server::audit_options(&config).unwrap()).unwrap();
    let host = chassis::Host::builder()
        .pool_slots(8)
        .audit(log.clone())
        .build()
        .unwrap();
    let module = host
        .modules()
        .register(&chassis_tests::wasm(ECHO_COMPONENT))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Four at a time, as a load generator keeps a host busy.
    let run_ids = runtime.block_on(async {
        let mut runs = tokio::task::JoinSet::new();
        let mut ids = Vec::new();
        for i in 0..RUNS {
            if runs.len() >= 4 {
                ids.push(runs.join_next().await.unwrap().unwrap());
            }
            let (host, module) = (host.clone(), module.clone());
            runs.spawn(async move {
                let report = host
                    .run(&module, chassis::RunRequest::new(format!("echo {i}")))
                    .await
                    .unwrap();
                assert!(report.result.is_ok());
                report.run_id
            });
        }
        while let Some(id) = runs.join_next().await {
            ids.push(id.unwrap());
        }
        ids
    });
    log.close().unwrap();
    drop(host);
    let files = log_files(&data.path().join("audit")).unwrap();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let per_run = bytes / RUNS as u64;
    let all: Vec<Record> = files
        .iter()
        .flat_map(|f| lines(f))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    // A run whose start and end were written as one record: a `run`
    // record, or one of the runs of a `runs` record.
    let folded = all
        .iter()
        .flat_map(chassis::audit::context::unfold)
        .filter(|r| r.kind == "run")
        .count();
    let grouped: usize = all
        .iter()
        .filter(|r| r.kind == "runs")
        .map(|r| r.fields["runs"].as_array().unwrap().len())
        .sum();
    eprintln!(
        "{RUNS} echo runs: {bytes} bytes of log, {per_run} bytes per run \
         (genesis, contexts and checkpoints included); {folded} runs in one \
         record, {grouped} of them sharing one"
    );
    assert!(per_run <= 400, "{per_run} bytes per echo run");
    assert!(folded > 0, "no run was written as one record");

    // Still verifiable and searchable.
    assert_success(&verify(data.path(), &["--require-signed-tail"]));
    let out = chassis(
        &["audit", "show", "--json", "--run", &run_ids[0]],
        data.path(),
    );
    let mine: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let end = mine.last().expect("the run is on record");
    assert_eq!(end["fields"]["outcome"], "ok");
    assert_eq!(end["fields"]["module"], module.id());
    assert_eq!(end["fields"]["caller"], "local");
    assert!(end["fields"]["usage"]["wall_us"].is_u64(), "{end}");
    let by_module = chassis(&["audit", "show", "--module", module.id()], data.path());
    assert!(stdout(&by_module).lines().count() >= RUNS);
}
