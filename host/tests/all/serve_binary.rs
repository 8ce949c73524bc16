//! `chassis serve` as a process: config from the seed, /metrics scraped and
//! parsed, SIGTERM drains in-flight runs.

use crate::common;

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
    // A module the host does not have is `not-found`, exit 22.
    let out = served.client(&["run", &"0".repeat(64)]);
    assert_eq!(
        out.status.code(),
        Some(22),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
    let value = |name: &str| present(&text, name);
    for name in chassis::telemetry::ALL_METRICS {
        // A histogram has no series until its first sample: claim latency
        // appears once a runbook step is claimed (host/tests/all/deploy.rs).
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

/// The free-space gauges are set when the floor is measured, which a run
/// does at most once a second: a host that has served nothing yet still
/// exports them, measured once the exporter is up, so the disk alert
/// never reads a missing or zero level.
#[test]
fn the_audit_free_space_gauges_are_exported_before_any_run() {
    let served = Served::start("");
    let text = served.scrape_until(|t| t.contains("if_chassis_audit_free_bytes "));
    let value = |name: &str| present(&text, name);
    assert!(value("if_chassis_audit_free_bytes") > 0.0, "{text}");
    assert_eq!(
        value("if_chassis_audit_min_free_bytes"),
        256.0 * 1024.0 * 1024.0,
        "the default audit.min_free_mb"
    );
}

#[test]
fn a_host_metering_epochs_only_stops_a_spin_by_its_deadline_and_refuses_a_fuel_budget() {
    let served = Served::start("  runtime:\n    metering: epoch\n");
    let hello = served.register(HELLO_COMPONENT);
    let spin = served.register(HOSTILE_SPIN_COMPONENT);
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).to_string();
    // A budget cannot be honoured without fuel: invalid-request (exit 11),
    // naming the setting, before any sandbox starts.
    let out = served.client(&["run", &spin, "--fuel", "100000"]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("runtime.metering"),
        "{}",
        stderr(&out)
    );
    // Without one, the deadline stops the endless loop: deadline-exceeded (14).
    let out = served.client(&["run", &spin, "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(14), "{}", stderr(&out));
    let out = served.client(&["--json", "run", &hello, "--input", "epoch"]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["output"], "Hello, epoch!", "{report}");
    assert_eq!(report["usage"]["fuel_consumed"], 0, "{report}");
}

#[test]
fn sigterm_lets_an_in_flight_run_finish_then_exits() {
    let served = Served::start("    shutdown_grace_seconds: 10\n");
    let spin = served.register(HOSTILE_SPIN_COMPONENT);
    let addr = served.addr.clone();
    let module = spin.clone();
    let run = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args([
                "client",
                "--addr",
                &format!("http://{addr}"),
                "--json",
                "run",
                &module,
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
    // The line of a run that failed names the run itself: the log leaves
    // the per-RPC and per-run spans out, so no line carries them.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "run finished")
        .unwrap_or_else(|| panic!("no `run finished` line: {logs}"));
    let fields = &finished["fields"];
    assert_eq!(fields["outcome"], "deadline-exceeded", "{finished}");
    assert_eq!(fields["module"], spin.as_str(), "{finished}");
    assert_eq!(fields["caller"], "local", "{finished}");
    assert!(fields["policy"].is_string(), "{finished}");
    let run_id = fields["run_id"].as_str().unwrap_or_default();
    assert!(
        run_id.len() == 32 && run_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{finished}"
    );
    for line in &lines {
        let spans = [&line["span"]]
            .into_iter()
            .chain(line["spans"].as_array().into_iter().flatten());
        for span in spans {
            assert!(
                span["name"] != "run" && span["name"] != "rpc",
                "a per-run span reached the log: {line}"
            );
        }
    }
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
    // One `run` record, or started and ended when the run outlived a batch.
    let kinds: Vec<&str> = mine.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert!(
        kinds == ["run"] || kinds == ["run.started", "run.ended"],
        "{kinds:?}"
    );
    let end = mine.last().unwrap();
    assert_eq!(end["fields"]["outcome"], "ok");
    assert_eq!(end["fields"]["caller"], "local");
    let denied = records
        .iter()
        .find(|r| r["kind"] == "capability.denied")
        .unwrap();
    assert_eq!(denied["fields"]["target"], "root-password");
}

/// OpenTelemetry traces from a served host into a real OTLP/gRPC receiver:
/// the caller's `traceparent` continues into the RPC span, the run is its
/// child with module, policy, caller, outcome and fuel, a secret read and a
/// module compile have spans of their own, a runbook's steps join the trace
/// of its submission, and no span or event carries a secret's value.
#[tokio::test(flavor = "multi_thread")]
async fn traces_follow_a_request_into_runs_secret_reads_and_runbook_steps() {
    use chassis::grpc::proto;
    use std::os::unix::fs::PermissionsExt;

    const VALUE: &str = "otel-smtp-Pa55word-91ab";
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let collector = chassis_tests::otlp::Collector::start().await;
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir.path().join("secrets.toml");
    std::fs::write(
        &secrets,
        format!("[\"secret/reports\"]\nsmtp_password = \"{VALUE}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let served = Served::start(&format!(
        "  telemetry:\n    otlp_endpoint: {}\n  credentials:\n    local_file: {}\n  policies_dir: {}\n",
        collector.endpoint(),
        secrets.display(),
        policies.display()
    ));
    let mut client =
        proto::chassis_client::ChassisClient::connect(format!("http://{}", served.addr))
            .await
            .unwrap();
    let reader = common::register(&mut client, SECRET_READER_COMPONENT).await;
    let mut request = tonic::Request::new(common::run_request(&reader.id, "secret-reader", "smtp"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    let reply = client.run(request).await.unwrap().into_inner();
    assert!(!format!("{reply:?}").contains(VALUE));

    let echo = std::fs::read(ECHO_COMPONENT).unwrap();
    let mut submit = tonic::Request::new(proto::SubmitRunbookRequest {
        runbook: "name = \"traced\"\n[steps.a]\nmodule = \"echo.wasm\"\ninput = \"x\"\n[steps.b]\nmodule = \"echo.wasm\"\ndepends_on = [\"a\"]\ninput = \"{{a}}\"\n".into(),
        file_name: "traced.toml".into(),
        modules: [("echo.wasm".to_string(), echo)].into_iter().collect(),
        id: "traced".into(),
    });
    const RUNBOOK_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    submit.metadata_mut().insert(
        "traceparent",
        format!("00-{RUNBOOK_TRACE}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    client.submit_runbook(submit).await.unwrap();
    let mut watch = client
        .watch_runbook(proto::WatchRunbookRequest {
            runbook_id: "traced".into(),
            from_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    while watch.message().await.unwrap().is_some() {}

    // SIGTERM flushes the exporter's queue before the host exits.
    served.sigterm();
    let spans = collector
        .wait_for(std::time::Duration::from_secs(30), |spans| {
            spans.iter().filter(|s| s.name == "runbook.step").count() >= 2
                && spans.iter().any(|s| s.name == "secret.read")
        })
        .await;
    let named = |name: &str| -> Vec<&chassis_tests::otlp::Span> {
        spans.iter().filter(|s| s.name == name).collect()
    };
    let rpc = spans
        .iter()
        .find(|s| s.trace_id == TRACE && s.name == "/chassis.v1.Chassis/Run")
        .unwrap_or_else(|| panic!("no Run span in the caller's trace: {spans:#?}"));
    assert_eq!(
        rpc.parent_span_id, PARENT,
        "the RPC span continues the caller's"
    );
    let run = named("run")
        .into_iter()
        .find(|s| s.trace_id == TRACE)
        .expect("a run span in the caller's trace");
    assert_eq!(
        run.parent_span_id, rpc.span_id,
        "the run is a child of the RPC"
    );
    assert_eq!(run.attr("module"), Some(reader.id.as_str()));
    assert_eq!(run.attr("policy"), Some("secret-reader"));
    assert_eq!(run.attr("caller"), Some("local"));
    assert_eq!(run.attr("outcome"), Some("ok"));
    assert!(run.attr("fuel").unwrap().parse::<u64>().unwrap() > 0);
    let read = named("secret.read")
        .into_iter()
        .find(|s| s.trace_id == TRACE)
        .expect("a secret.read span in the caller's trace");
    assert_eq!(read.attr("secret"), Some("smtp"));
    assert!(!named("module.register").is_empty());
    let steps = named("runbook.step");
    assert_eq!(steps.len(), 2, "{steps:#?}");
    for step in &steps {
        assert_eq!(
            step.trace_id, RUNBOOK_TRACE,
            "steps join the submitter's trace"
        );
    }
    assert!(!named("claim.acquire").is_empty());
    assert!(
        named("run")
            .iter()
            .filter(|s| s.trace_id == RUNBOOK_TRACE)
            .count()
            >= 2,
        "the steps' runs are in the runbook's trace"
    );
    let everything = format!("{spans:?}");
    assert!(
        !everything.contains(VALUE),
        "a span carries the secret's value"
    );
}

#[test]
fn a_rw_preopen_on_the_data_dirs_filesystem_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out, policies) = (
        dir.path().join("data"),
        dir.path().join("out"),
        dir.path().join("policies"),
    );
    for d in [&data, &out, &policies] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        policies.join("filler.toml"),
        format!(
            "name = \"filler\"\n[[filesystem]]\nhost = \"{}\"\nguest = \"/out\"\nmode = \"rw\"\n",
            out.display()
        ),
    )
    .unwrap();
    let err = serve_refuses_to_start(&policies, &data, &[]);
    assert!(
        err.contains("policy `filler`")
            && err.contains(&format!(
                "maps `{}` read-write on the filesystem that holds the data dir",
                out.display()
            ))
            && err.contains("runtime.allow_shared_filesystem = true"),
        "{err}"
    );
}

#[test]
fn a_policy_with_a_fuel_budget_refuses_to_start_a_host_that_meters_no_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let (data, policies, config) = (
        dir.path().join("data"),
        dir.path().join("policies"),
        dir.path().join("chassis.yaml"),
    );
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("metered.toml"),
        "name = \"metered\"\n[limits]\nfuel = 5000000\n",
    )
    .unwrap();
    std::fs::write(&config, "chassis:\n  runtime:\n    metering: epoch\n").unwrap();
    let err = serve_refuses_to_start(
        &policies,
        &data,
        &[std::ffi::OsStr::new("--config"), config.as_os_str()],
    );
    assert!(
        err.contains("policy `metered`")
            && err.contains("sets limits.fuel = 5000000")
            && err.contains("runtime.metering = \"epoch\" meters no fuel"),
        "{err}"
    );
}

/// Runs `chassis serve` on `policies` and `data` (with `extra` arguments),
/// which must exit 1 without serving; returns its stderr.
fn serve_refuses_to_start(
    policies: &std::path::Path,
    data: &std::path::Path,
    extra: &[&std::ffi::OsStr],
) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
        .arg(policies)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env_remove("CHASSIS_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value of one series in a scrape, which must be there.
fn present(text: &str, name: &str) -> f64 {
    samples(text)
        .into_iter()
        .find(|(s, _)| s == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

/// The value of one series in a scrape, or 0 when it is absent.
fn series(text: &str, name: &str) -> f64 {
    samples(text)
        .into_iter()
        .find(|(s, _)| s == name)
        .map_or(0.0, |(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stream_client_that_never_reads_holds_neither_its_run_nor_the_host() {
    use chassis::grpc::proto::{self, chassis_client::ChassisClient, run_event::Event};
    use std::time::{Duration, Instant};

    // One slot, so a run that kept it would refuse the next run.
    let mut served = Served::start(
        "    shutdown_grace_seconds: 2\n  sandbox_pool:\n    min_size: 1\n    max_size: 1\n    queue_timeout_ms: 500\n",
    );
    let flood = served.register(HOSTILE_STDOUT_FLOOD_COMPONENT);
    let hello = served.register(HELLO_COMPONENT);
    // HTTP/2's default windows (64 KiB), not hyper's 2 MiB: a client that
    // does not read stops the server's sends after 64 KiB.
    let connect = || async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", served.addr))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        ChassisClient::new(channel)
    };
    // The flood writes 1 GiB to each of stdout and stderr in 1 KiB lines
    // (two million host calls); at 3% of a core it cannot finish within
    // seconds however fast the build, so it ends at its deadline with
    // thousands of events captured on the way.
    let chatty = |timeout_ms: u64| proto::RunRequest {
        module_id: flood.clone(),
        policy: String::new(),
        input: b"1024".to_vec(),
        limits: Some(proto::Limits {
            fuel: 1_000_000_000_000,
            timeout_ms,
            cpu_percent: 3,
            ..Default::default()
        }),
    };

    // The stalled client: it takes the response and never reads the
    // stream, so its HTTP/2 window closes after the first 64 KiB.
    let mut stalled = connect().await;
    let started = Instant::now();
    let mut stream = stalled.run_stream(chatty(1500)).await.unwrap().into_inner();

    // The run ends by its own deadline all the same.
    let deadline_hit =
        |t: &str| series(t, "if_chassis_runs_total{outcome=\"deadline-exceeded\"}") >= 1.0;
    let text = tokio::task::block_in_place(|| served.scrape_until(deadline_hit));
    let ended = started.elapsed();
    assert!(
        deadline_hit(&text),
        "the run did not end by its deadline:\n{text}"
    );
    assert!(ended < Duration::from_secs(5), "ended after {ended:?}");
    let text = tokio::task::block_in_place(|| {
        served.scrape_until(|t| series(t, "if_chassis_stream_events_dropped_total") > 0.0)
    });
    let dropped = series(&text, "if_chassis_stream_events_dropped_total");
    assert!(dropped > 0.0, "{text}");

    // Its slot is free: the next run gets it at once.
    let mut other = connect().await;
    let out = other
        .run(proto::RunRequest {
            module_id: hello.clone(),
            policy: String::new(),
            input: b"next".to_vec(),
            limits: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, next!");

    // Read late, the stream still ends with the outcome, which says how
    // many events the client missed.
    let mut events = Vec::new();
    let outcome = loop {
        match stream.message().await.unwrap() {
            Some(proto::RunEvent {
                event: Some(Event::Outcome(o)),
            }) => break o,
            Some(proto::RunEvent { event: Some(e) }) => events.push(e),
            other => panic!("the stream ended without an outcome: {other:?}"),
        }
    };
    assert_eq!(outcome.kind, "deadline-exceeded");
    // What the server buffered, what was in flight in a 64 KiB window,
    // and the notice.
    assert!(
        events.len() > chassis::grpc::STREAM_BUFFER_EVENTS
            && events.len() < chassis::grpc::STREAM_BUFFER_EVENTS + 400,
        "{} events",
        events.len()
    );
    let Some(Event::Log(notice)) = events.last() else {
        panic!("no dropped-events notice: {:?}", events.last());
    };
    assert_eq!(
        notice.fields[chassis::grpc::DROPPED_FIELD],
        (dropped as u64).to_string(),
        "{notice:?}"
    );

    // A second stalled client whose run outlives the grace period: SIGTERM
    // interrupts the run and the server exits though the client never reads.
    let mut stalled = connect().await;
    let _held = stalled
        .run_stream(chatty(60_000))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term = Instant::now();
    served.sigterm();
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            term.elapsed() < Duration::from_secs(8),
            "the server did not exit within the grace period (2 s) and the force-close margin"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited = term.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(exited >= Duration::from_secs(2), "exited after {exited:?}");
    assert!(exited < Duration::from_secs(5), "exited after {exited:?}");
    eprintln!(
        "run ended after {ended:?}; {} events read late, {dropped} dropped; server exited {exited:?} after SIGTERM",
        events.len()
    );
}
