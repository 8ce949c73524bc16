//! `chassis load` with small numbers: it runs, the report adds up, errors
//! are counted by kind, `--json` parses, `--plot` draws, `--remote` works,
//! and runs past the kernel's mapping limit are `overloaded`, not `trap`.

use crate::common;

use common::assert_success;

use std::process::Command;

use chassis::config::Config;
use chassis_tests::programs::*;
use common::TestServer;

fn load(args: &[&str]) -> (serde_json::Value, std::process::Output) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .arg("load")
        .args(args)
        .arg("--json")
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_success(&out);
    (serde_json::from_slice(&out.stdout).unwrap(), out)
}

#[test]
fn a_local_load_reports_runs_latency_memory_and_fuel() {
    let (r, _) = load(&[
        "--module",
        ECHO_COMPONENT,
        "--concurrency",
        "4",
        "--runs",
        "200",
        "--input",
        "x",
    ]);
    assert_eq!(r["runs"], 200);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["outcomes"]["ok"], 200);
    assert!(r["throughput_per_s"].as_f64().unwrap() > 0.0);
    let l = &r["latency_us"];
    assert!(l["p50"].as_f64().unwrap() <= l["p95"].as_f64().unwrap());
    assert!(l["p95"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
    assert!(l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap());
    assert!(r["peak_live_sandboxes"].as_u64().unwrap() >= 1);
    assert!(r["peak_live_sandboxes"].as_u64().unwrap() <= 4);
    assert!(r["fuel"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["peak_memory_bytes"]["max"].as_f64().unwrap() >= 65536.0);
    let per_second: u64 = r["throughput_by_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_second, 200);
    // The slowest runs, slowest first: the worst is the report's max, each
    // names one of the 4 workers and its place in that worker's runs, and
    // started within the load.
    let slowest = r["slowest"].as_array().unwrap();
    assert_eq!(slowest.len(), 10);
    assert_eq!(slowest[0]["latency_us"], l["max"]);
    let duration_ms = r["duration_s"].as_f64().unwrap() * 1e3;
    let mut seen = std::collections::HashSet::new();
    for pair in slowest.windows(2) {
        assert!(pair[0]["latency_us"].as_f64().unwrap() >= pair[1]["latency_us"].as_f64().unwrap());
    }
    for run in slowest {
        assert!(run["worker"].as_u64().unwrap() < 4);
        assert!(run["nth"].as_u64().unwrap() < 200);
        assert!((0.0..=duration_ms).contains(&run["started_ms"].as_f64().unwrap()));
        assert_eq!(run["outcome"], "ok");
        assert!(seen.insert((run["worker"].as_u64(), run["nth"].as_u64())));
    }
    assert!(r["warm_over_10x_p50"].as_u64().unwrap() <= l["over_10x_p50"].as_u64().unwrap());
    // Not asked why the tail was slow: the report does not say.
    assert!(r.get("tail_causes").is_none(), "{r}");
}

/// The first CPU this process may run on (CPU 0 may be outside a
/// container's cpuset).
fn first_allowed_cpu() -> usize {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity
    // fills the valid set it is given, and CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .find(|cpu| libc::CPU_ISSET(*cpu, &set))
            .unwrap()
    }
}

/// Pins the calling thread (or, before `exec`, the child) to `cpu`. Only
/// zeroes a set, sets one bit and makes one system call, so it may run
/// between fork and exec.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity get a valid pointer to it and its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A thread that keeps one CPU busy until dropped (also when the test
/// fails, so it never holds a core for the rest of the test binary).
struct Spinner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn on(cpu: usize) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin_to(cpu).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `--explain-tail` on a load whose CPU is shared with a thread that never
/// yields it: the load and a spinning thread are pinned to the same CPU,
/// so the scheduler takes the CPU from the load's threads every few
/// milliseconds, and the runs in flight then are in the tail. The report
/// must say so: every warm run over 10x p50 has one cause, and some are
/// `preempted`. (Not all: on a VM, runs that kept their CPU yet took 10x
/// are as common, see `TailCause::OnCpu`.)
#[test]
fn explain_tail_names_preemption_when_another_thread_shares_the_cpu() {
    use std::os::unix::process::CommandExt;
    let cpu = first_allowed_cpu();
    let spinner = Spinner::on(cpu);
    let data = tempfile::tempdir().unwrap();
    let mut load = Command::new(env!("CARGO_BIN_EXE_chassis"));
    load.args([
        "load",
        "--module",
        ECHO_COMPONENT,
        "--concurrency",
        "2",
        "--runs",
        "10000",
        "--explain-tail",
        "--json",
        "--data-dir",
    ])
    .arg(data.path());
    // SAFETY: `pin_to` is safe between fork and exec (see there).
    unsafe { load.pre_exec(move || pin_to(cpu)) };
    let out = load.output().unwrap();
    drop(spinner);
    assert_success(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["runs"], 10000);
    let causes = r["tail_causes"].as_object().unwrap();
    let names: Vec<&str> = causes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "blocked",
            "on-cpu",
            "page-faults",
            "preempted",
            "stolen",
            "suspended",
            "unexplained"
        ]
    );
    let counted: u64 = causes.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(counted, r["warm_over_10x_p50"].as_u64().unwrap(), "{r}");
    assert!(causes["preempted"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(causes["unexplained"], 0, "{r}");
}

#[test]
fn explain_tail_is_for_local_loads_only() {
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args([
            "load",
            "--module",
            ECHO_COMPONENT,
            "--runs",
            "1",
            "--explain-tail",
        ])
        .args(["--remote", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn errors_are_counted_by_kind() {
    let (r, _) = load(&[
        "--module",
        HOSTILE_SPIN_COMPONENT,
        "--concurrency",
        "2",
        "--runs",
        "6",
        "--fuel",
        "1000000",
    ]);
    assert_eq!(r["runs"], 6);
    assert_eq!(r["errors"], 6);
    assert_eq!(r["outcomes"]["out-of-fuel"], 6);
}

#[test]
fn an_epoch_metered_load_stops_a_spinning_guest_by_its_deadline_and_refuses_a_fuel_budget() {
    let (r, _) = load(&[
        "--module",
        HOSTILE_SPIN_COMPONENT,
        "--concurrency",
        "2",
        "--runs",
        "4",
        "--timeout",
        "150ms",
        "--metering",
        "epoch",
    ]);
    assert_eq!(r["runs"], 4);
    assert_eq!(r["outcomes"]["deadline-exceeded"], 4, "{r}");
    assert_eq!(
        r["fuel"]["max"].as_f64().unwrap(),
        0.0,
        "no fuel is metered"
    );
    let (r, _) = load(&[
        "--module",
        HOSTILE_SPIN_COMPONENT,
        "--runs",
        "2",
        "--fuel",
        "1000000",
        "--metering",
        "epoch",
    ]);
    assert_eq!(r["outcomes"]["invalid-request"], 2, "{r}");
    let first = r["first_errors"]["invalid-request"].as_str().unwrap();
    assert!(first.contains("runtime.metering"), "{first}");
    for bad in [
        vec!["--metering", "instructions", "--runs", "1"],
        vec![
            "--metering",
            "epoch",
            "--remote",
            "http://127.0.0.1:1",
            "--runs",
            "1",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args(["load", "--module", ECHO_COMPONENT])
            .args(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: a usage error");
    }
}

#[test]
fn sleepers_stay_live_at_once_and_the_plot_is_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("load.svg");
    let (r, _) = load(&[
        "--module",
        SLEEPER_COMPONENT,
        "--concurrency",
        "50",
        "--runs",
        "50",
        "--input",
        "300",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(r["outcomes"]["ok"], 50);
    assert_eq!(
        r["peak_live_sandboxes"], 50,
        "every sleeper was live at once"
    );
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawn.starts_with("<svg") && drawn.contains("latency per run"),
        "{}",
        &drawn[..200.min(drawn.len())]
    );
}

#[test]
fn an_audited_load_records_every_run_once_and_reports_the_log_per_run() {
    let data = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args([
                "load",
                "--module",
                ECHO_COMPONENT,
                "--concurrency",
                "4",
                "--runs",
                "300",
                "--json",
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert_success(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Without --audit there is no log and no figure.
    let plain = run(&[]);
    assert!(plain.get("audit_bytes_per_run").is_none(), "{plain}");
    assert!(!data.path().join("audit").exists());

    let r = run(&["--audit"]);
    assert_eq!(r["outcomes"]["ok"], 300);
    let per_run = r["audit_bytes_per_run"].as_f64().unwrap();
    assert!((20.0..=400.0).contains(&per_run), "{per_run} bytes per run");
    // Every run is in the log exactly once, signed, and the log verifies
    // against an out-of-band copy of its key.
    let mut ids = std::collections::BTreeSet::new();
    for file in chassis::audit::log_files(&data.path().join("audit")).unwrap() {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let record: chassis::audit::record::Record = serde_json::from_str(line).unwrap();
            // A `runs` record stands for the `run` record of each of its runs.
            for record in chassis::audit::context::unfold(&record) {
                if record.kind != "run" && record.kind != "run.ended" {
                    continue;
                }
                assert_eq!(record.fields["outcome"], "ok");
                assert!(ids.insert(record.fields["run_id"].as_str().unwrap().to_string()));
            }
        }
    }
    assert_eq!(ids.len(), 300);
    let keys = data.path().join("off-host.pub");
    std::fs::copy(data.path().join("keys/audit.pub"), &keys).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["audit", "verify", "--require-signed-tail", "--pubkey"])
        .arg(&keys)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_success(&out);
    // A remote load has no log of its own to price.
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["load", "--module", ECHO_COMPONENT, "--runs", "1", "--audit"])
        .args(["--remote", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
}

#[test]
fn a_duration_bounded_load_stops_by_itself() {
    let (r, _) = load(&[
        "--module",
        ECHO_COMPONENT,
        "--concurrency",
        "2",
        "--duration",
        "300ms",
    ]);
    assert!(r["runs"].as_u64().unwrap() > 0);
    assert!(r["duration_s"].as_f64().unwrap() >= 0.3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_load_goes_through_the_server() {
    let server = TestServer::start(Config::default(), &[]).await;
    let addr = format!("http://{}", server.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args([
                "load",
                "--module",
                HELLO_COMPONENT,
                "--concurrency",
                "3",
                "--runs",
                "30",
                "--json",
                "--remote",
                &addr,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_success(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcomes"]["ok"], 30);
    assert!(r["fuel"]["p50"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_load_without_a_stop_condition_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["load", "--module", ECHO_COMPONENT])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--runs N or --duration D"));
}

/// Host memory a hostile guest can make the host spend through host calls
/// (which cost it no fuel and live outside its linear memory), measured on
/// the `chassis` process: under deny-all with 64 MiB of linear memory, the
/// host's RSS grows by less than 64 MiB beyond that memory, whatever the
/// guest passes to `log` or `secret`. Before the bound a `log` bomb of
/// 256 KiB strings x 1,000 calls kept ~750 MiB, 8 MiB strings ~16 GB.
#[test]
fn host_call_bombs_leave_the_host_rss_bounded() {
    const BOUND: u64 = (64 + 64) << 20;
    for input in [
        "log 256 1000",
        "log 8192 1000",
        "secret 512 2000",
        "secret 4096 2000",
    ] {
        let (r, _) = load(&[
            "--module",
            HOSTILE_HOST_CALL_BOMB_COMPONENT,
            "--runs",
            "2",
            "--memory-mb",
            "64",
            "--input",
            input,
        ]);
        assert_eq!(r["runs"], 2, "{input}: {r}");
        let outcomes = &r["outcomes"];
        let expected = if input.contains("8192") || input.contains("4096") {
            "memory-limit"
        } else {
            "ok"
        };
        assert_eq!(outcomes[expected], 2, "{input}: {outcomes}");
        let grew =
            r["peak_rss_bytes"].as_u64().unwrap() - r["baseline_rss_bytes"].as_u64().unwrap();
        assert!(grew < BOUND, "{input}: the host grew by {grew} bytes");
    }
}

/// `chassis run --json` of a guest that is denied 2,000 secrets with 512 KiB
/// names stays small: 100 denials are kept (the rest counted), each target
/// and reason clipped (256 and 512 bytes), so the report is under 256 KiB
/// (it was ~1 GB).
#[test]
fn a_denial_flood_keeps_the_json_report_small() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args([
            "run",
            HOSTILE_HOST_CALL_BOMB_COMPONENT,
            "--input",
            "secret 512 2000",
            "--json",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_success(&out);
    assert!(out.stdout.len() < 256 * 1024, "{} bytes", out.stdout.len());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["denials"].as_array().unwrap().len(), 100);
    assert_eq!(r["denials_dropped"], 1900);
}

/// More live sandboxes than the kernel's mapping limit (`vm.max_map_count`)
/// allows: the runs past it are the host's failure, so they end
/// `overloaded` naming the setting, never `trap` (which would blame the
/// guest), the others complete, and the load warned at start.
#[test]
fn sandboxes_past_the_mapping_limit_are_overloaded_not_trapped() {
    let Some(limit) = chassis::engine::maps::max_map_count() else {
        panic!("this test needs /proc/sys/vm/max_map_count");
    };
    let ceiling = chassis::engine::maps::live_sandbox_ceiling(limit);
    if ceiling > 15_000 {
        // 40% past the ceiling would need more memory than a test may take.
        eprintln!("skipped: vm.max_map_count is {limit} here (about {ceiling} live sandboxes fit)");
        return;
    }
    let concurrency = (ceiling * 14 / 10).to_string();
    let (r, out) = load(&[
        "--module",
        SLEEPER_COMPONENT,
        "--concurrency",
        &concurrency,
        "--runs",
        &concurrency,
        "--input",
        "15000",
        "--memory-mb",
        "16",
    ]);
    let outcomes = r["outcomes"].as_object().unwrap();
    assert!(!outcomes.contains_key("trap"), "{outcomes:?}");
    assert!(outcomes["overloaded"].as_u64().unwrap() > 0, "{outcomes:?}");
    assert!(outcomes["ok"].as_u64().unwrap() > 0, "{outcomes:?}");
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    let message = r["first_errors"]["overloaded"].as_str().unwrap();
    assert!(
        message.contains(&format!("vm.max_map_count is {limit}")),
        "{message}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARN") && stderr.contains("sysctl -w vm.max_map_count="),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("sysctl -w vm.max_map_count=").count(),
        1,
        "the warning is printed once: {stderr}"
    );
}

#[test]
fn a_local_load_past_the_pool_limit_names_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args([
            "load",
            "--module",
            ECHO_COMPONENT,
            "--runs",
            "1",
            "--concurrency",
            "200000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--concurrency 200000") && stderr.contains("must be from 1 to 100000"),
        "{stderr}"
    );
}
