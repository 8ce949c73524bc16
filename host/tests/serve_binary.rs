//! `chassis serve` as a process: config from the seed, /metrics scraped and
//! parsed, SIGTERM drains in-flight runs.

mod common;

use common::assert_success;
use common::served::{Served, samples};

use std::io::Read;
use std::process::Command;

use chassis_tests::programs::*;

#[test]
fn metrics_are_exported_with_the_seed_names_and_move_with_runs() {
    let served = Served::start("");
    let hello = served.register(HELLO_COMPONENT);
    let spin = served.register(HOSTILE_SPIN_COMPONENT);
    assert!(
        served
            .client(&["run", &hello, "--input", "m"])
            .status
            .success()
    );
    let out = served.client(&["run", &spin, "--fuel", "100000"]);
    assert_eq!(
        out.status.code(),
        Some(13),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = served.client(&[
        "run",
        &spin,
        "--timeout",
        "2s",
        "--fuel",
        "1000000000000",
        "--cpu-percent",
        "10",
    ]);
    assert_eq!(
        out.status.code(),
        Some(14),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = served.scrape_until(|t| t.contains("if_chassis_sandbox_count 0"));
    let s = samples(&text);
    let value = |name: &str| {
        s.iter()
            .find(|(series, _)| series == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    for name in chassis::telemetry::ALL_METRICS {
        // A histogram has no series until its first sample: claim latency
        // appears once a runbook step is claimed (host/tests/deploy.rs).
        if *name == chassis::telemetry::CLAIM_DURATION {
            continue;
        }
        assert!(text.contains(name), "{name} not exported:\n{text}");
    }
    assert_eq!(value("if_chassis_sandbox_count"), 0.0);
    assert_eq!(value("if_chassis_sandbox_escapes"), 0.0);
    assert_eq!(value("if_chassis_memory_limit_mb"), 512.0 * 100.0);
    assert_eq!(value("if_chassis_runs_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(
        value("if_chassis_runs_total{outcome=\"deadline-exceeded\"}"),
        1.0
    );
    assert_eq!(value("if_chassis_runs_total{outcome=\"out-of-fuel\"}"), 1.0);
    assert!(
        value("if_chassis_slo_violations") >= 1.0,
        "the spin run was slower than 10 ms"
    );
    assert!(value("if_chassis_run_duration_seconds_count") >= 3.0);
}

#[test]
fn sigterm_lets_an_in_flight_run_finish_then_exits() {
    let served = Served::start("    shutdown_grace_seconds: 10\n");
    let spin = served.register(HOSTILE_SPIN_COMPONENT);
    let addr = served.addr.clone();
    let run = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args([
                "client",
                "--addr",
                &format!("http://{addr}"),
                "--json",
                "run",
                &spin,
                "--timeout",
                "1500ms",
            ])
            .args(["--fuel", "1000000000000", "--cpu-percent", "20"])
            .output()
            .unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(400));
    served.sigterm();
    let out = run.join().unwrap();
    // The run was not cut off: it ended on its own deadline.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("deadline-exceeded"),
        "{text} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut served = served;
    let status = served.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    served
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(
        logs.contains("\"run_id\""),
        "JSON logs carry the run span: {logs}"
    );
    assert!(logs.contains("chassis stopped"), "{logs}");
}

#[test]
fn config_check_accepts_the_seed_and_names_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(
        &seed,
        "chassis:\n  # WASM runtime\n  runtime:\n    engine: wasmtime  # or wasmer\n    max_memory_mb: 512\n    max_cpu_percent: 50\n    max_execution_time_seconds: 300\n\n  # Scoped credentials\n  credentials:\n    vault_addr: https://vault.prod.infrafabric.io:8200\n    vault_token_path: /etc/infrafabric/vault-token\n\n  # SLO tracking\n  slo:\n    target_latency_p95_ms: 10\n    target_availability_percent: 99.9\n\n  # Metrics\n  metrics:\n    enabled: true\n    port: 9092\n\n  logging:\n    level: INFO\n    format: json\n    output: /var/log/infrafabric/chassis.log\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["config", "check"])
        .arg(&seed)
        .output()
        .unwrap();
    assert_success(&out);
    let deploy =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/chassis.production.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["config", "check"])
        .arg(&deploy)
        .output()
        .unwrap();
    assert_success(&out);

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "chassis:\n  sandbox_pool:\n    max_sise: 4\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(11));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:3:5: ") && err.contains("unknown field `max_sise`"),
        "{err}"
    );
}

#[test]
fn a_served_host_audits_what_ran_and_the_log_verifies_after_shutdown() {
    let mut served = Served::start("");
    let hello = served.register(HELLO_COMPONENT);
    let thief = served.register(HOSTILE_SECRET_THIEF_COMPONENT);
    let out = served.client(&["--json", "run", &hello, "--input", "audited"]);
    assert!(out.status.success());
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let _ = served.client(&["run", &thief, "--input", "root-password"]);
    served.sigterm();
    assert!(served.child.wait().unwrap().success());

    let data = served.data_dir();
    let chassis = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    // The operator's copy of the public key, taken off the host.
    let trusted = served.dir.path().join("trusted-audit.pub");
    std::fs::copy(data.join("keys/audit.pub"), &trusted).unwrap();
    let out = chassis(&[
        "audit",
        "verify",
        "--require-signed-tail",
        "--pubkey",
        trusted.to_str().unwrap(),
    ]);
    assert_success(&out);
    let out = chassis(&["audit", "show", "--json"]);
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "host.start",
        "module.registered",
        "run.started",
        "run.ended",
        "capability.denied",
        "host.stop",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let out = chassis(&["audit", "show", "--json", "--run", &run_id]);
    let mine: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(mine.len(), 2, "started and ended");
    assert_eq!(mine[1]["fields"]["outcome"], "ok");
    assert_eq!(mine[1]["fields"]["caller"], "local");
    let denied = records
        .iter()
        .find(|r| r["kind"] == "capability.denied")
        .unwrap();
    assert_eq!(denied["fields"]["target"], "root-password");
}
