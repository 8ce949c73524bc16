//! `chassis audit verify` throughput: a log of 1,000,000 run records
//! (each run names one denial, so that none shares a `runs` record and the
//! per-record cost is what is measured) written by the real writer with the shipped settings (a checkpoint per
//! 256 records), verified by `audit::verify::verify`, next to the floor of
//! the same pass, SHA-256 of every line alone. Verify should be bound by
//! hashing (one SHA-256 per record), not by Ed25519 (one signature per 256).
//! Writes target/bench-results/audit.json for `cargo xtask bench`.
//!
//! `--bench` runs 1,000,000 records, `--quick` 100,000; `cargo test
//! --benches` (neither flag) 10,000, to check the bench runs.
#![allow(missing_docs, reason = "a bench binary")]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chassis::audit::verify::{Checkpoint, VerifyOptions, verify};
use chassis::audit::{AuditLog, keys, log_files};

#[derive(serde::Serialize)]
struct Figures {
    records: u64,
    bytes: u64,
    checkpoints: u64,
    verify_s: f64,
    verify_records_per_s: f64,
    sha256_s: f64,
    sha256_records_per_s: f64,
    /// verify time / SHA-256-alone time.
    ratio: f64,
}

/// Writes `runs` short runs (one `run` record each: a denial keeps a run
/// out of the writer's `runs` records) through the writer.
fn write_log(data: &Path, runs: u64) -> Vec<PathBuf> {
    let config = chassis::config::Config {
        data_dir: data.to_path_buf(),
        ..Default::default()
    };
    let log = AuditLog::open(chassis::server::audit_options(&config).unwrap()).unwrap();
    let context = chassis::audit::RunContext::new(&serde_json::json!({
        "module": "9f2c6a3e1b7d4c5a8e0f2b1d3c4e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4",
        "world": "agent",
        "policy": "default",
        "policy_sha256": "1d3c4e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c49f2c6a3e1b7d4c5a8e0f2b",
        "caller": "local",
        "limits": {"fuel": null, "memory_bytes": 536870912, "timeout": "5m", "output_bytes": 1048576, "log_records": 1000, "cpu_percent": 100},
    }));
    for i in 0..runs {
        let id = chassis::audit::RunId::new(&format!("{i:032x}")).unwrap();
        log.run_started(id, context.clone()).unwrap();
        log.run_ended(
            id,
            chassis::audit::RunOutcome {
                usage: Some(chassis::audit::RunUsage {
                    fuel: 12_345,
                    mem: 1_114_112,
                    wall_us: 210,
                    cpu_us: 190,
                }),
                denials: Some(1),
                ..chassis::audit::RunOutcome::new("ok")
            },
        )
        .unwrap();
    }
    log.close().unwrap();
    log_files(&data.join("audit")).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: u64 = if args.iter().any(|a| a == "--quick") {
        100_000
    } else if args.iter().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    };
    let data = tempfile::tempdir().unwrap();
    let files = write_log(data.path(), runs);
    let trusted = keys::read_public_keys(&data.path().join("keys/audit.pub")).unwrap();
    let checkpoint = Checkpoint::read(&data.path().join("audit/audit.checkpoint")).unwrap();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();

    // Warm the page cache so both passes read from memory.
    let mut lines = 0u64;
    let mut checkpoints = 0u64;
    for f in &files {
        for line in std::io::BufReader::new(std::fs::File::open(f).unwrap()).lines() {
            let line = line.unwrap();
            lines += 1;
            checkpoints += u64::from(line.contains(r#""kind":"checkpoint""#));
        }
    }

    let start = Instant::now();
    let mut floor = [0u8; 32];
    for f in &files {
        for line in std::io::BufReader::new(std::fs::File::open(f).unwrap()).lines() {
            let hash = chassis::audit::record::line_hash(line.unwrap());
            floor[0] ^= hash[0];
        }
    }
    let sha256_s = start.elapsed().as_secs_f64();
    std::hint::black_box(floor);

    let start = Instant::now();
    let ok = verify(
        &files,
        &VerifyOptions {
            trusted: &trusted,
            checkpoint: Some(&checkpoint),
            ..Default::default()
        },
    )
    .unwrap();
    let verify_s = start.elapsed().as_secs_f64();
    assert_eq!(ok.records, lines);
    assert_eq!(ok.unsigned_tail, 0);

    let figures = Figures {
        records: lines,
        bytes,
        checkpoints,
        verify_s,
        verify_records_per_s: lines as f64 / verify_s,
        sha256_s,
        sha256_records_per_s: lines as f64 / sha256_s,
        ratio: verify_s / sha256_s,
    };
    println!(
        "audit verify  {} records ({} MB, {} checkpoints): {:.0} records/s ({:.2} s); SHA-256 alone {:.0} records/s ({:.2} s); ratio {:.2}x",
        figures.records,
        figures.bytes / 1_000_000,
        figures.checkpoints,
        figures.verify_records_per_s,
        figures.verify_s,
        figures.sha256_records_per_s,
        figures.sha256_s,
        figures.ratio
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("audit.json"),
        serde_json::to_string_pretty(&figures).unwrap(),
    )
    .unwrap();
}
