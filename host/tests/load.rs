//! `chassis load` with small numbers: it runs, the report adds up, errors
//! are counted by kind, `--json` parses, `--plot` draws, `--remote` works.

mod common;

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
