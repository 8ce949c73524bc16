//! Runs the criterion benches and writes BENCHMARKS.md from their results.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// One comparison in the report: our figure, the peer's, and the target ratio.
struct Pair {
    what: &'static str,
    ours: &'static str,
    peer: &'static str,
    peer_name: &'static str,
    /// Largest acceptable ours/peer time ratio.
    max_ratio: f64,
    why_missed: &'static str,
}

const PAIRS: &[Pair] = &[
    Pair {
        what: "trivial run (instantiate + `run` + drop of `echo`, every limit on)",
        ours: "sandbox/chassis",
        peer: "sandbox/raw-wasmtime",
        peer_name: "raw wasmtime, same engine config",
        max_ratio: 1.5,
        why_missed: "per-run setup chassis adds on top of raw wasmtime: capped stdout/stderr pipes, \
                     the resource limiter, the epoch callback and the usage report",
    },
    Pair {
        what: "auditing: `Host::run` of `echo` with the audit log vs without",
        ours: "sandbox/host-run-audited",
        peer: "sandbox/host-run",
        peer_name: "the same host without an audit log",
        max_ratio: 1.05,
        why_missed: "every run writes two records (run.started, run.ended), each Ed25519-signed \
                     (~15-20 µs a signature) on the writer thread; for a ~15 µs run the writer is \
                     the bottleneck and the bounded queue pushes back on the runs instead of \
                     dropping records. Runs that take milliseconds do not notice it",
    },
];

fn estimate_ns(root: &Path, id: &str) -> Result<f64> {
    let path = root
        .join("target/criterion")
        .join(id)
        .join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    json["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no median in {}", path.display()))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, {rustc}")
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// One gRPC figure from target/bench-results/grpc.json.
#[derive(Debug)]
struct GrpcFigure {
    runs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn grpc_figures(root: &Path) -> Result<Vec<(String, usize, GrpcFigure)>> {
    let path = root.join("target/bench-results/grpc.json");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let mut out = Vec::new();
    for f in json.as_array().context("grpc.json is a list")? {
        out.push((
            f["server"].as_str().unwrap_or_default().to_string(),
            f["concurrency"].as_u64().unwrap_or_default() as usize,
            GrpcFigure {
                runs_per_s: f["runs_per_s"].as_f64().unwrap_or_default(),
                p50_us: f["p50_us"].as_f64().unwrap_or_default(),
                p99_us: f["p99_us"].as_f64().unwrap_or_default(),
            },
        ));
    }
    Ok(out)
}

/// Runs the benches (criterion's own timing) and regenerates BENCHMARKS.md.
pub(crate) fn run(quick: bool) -> Result<()> {
    let root = crate::setup::root();
    let mut args = vec!["bench", "-p", "chassis-benches", "--bench", "sandbox", "--"];
    if quick {
        args.extend(["--warm-up-time", "1", "--measurement-time", "3"]);
    }
    crate::cargo(&args)?;
    let mut grpc_args = vec!["bench", "-p", "chassis-benches", "--bench", "grpc", "--"];
    if quick {
        grpc_args.push("--quick");
    }
    crate::cargo(&grpc_args)?;

    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Regenerated by `cargo xtask bench`{}; do not edit by hand. Each figure is criterion's \
         median time per iteration; every ratio compares two figures measured in the same run on \
         the same machine, so it travels better than the absolute numbers.\n",
        if quick {
            " --quick (short measurement)"
        } else {
            ""
        }
    )?;
    writeln!(md, "- Machine: {}", machine())?;
    writeln!(md, "- Date: {}\n", today())?;
    writeln!(
        md,
        "| what | chassis | peer | ratio (chassis / peer) | target | met |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    let mut misses: Vec<String> = Vec::new();
    for pair in PAIRS {
        let ours = estimate_ns(&root, pair.ours)?;
        let peer = estimate_ns(&root, pair.peer)?;
        let ratio = ours / peer;
        let met = ratio <= pair.max_ratio;
        writeln!(
            md,
            "| {} | {} | {} ({}) | {ratio:.2}x | ≤ {:.2}x | {} |",
            pair.what,
            human(ours),
            human(peer),
            pair.peer_name,
            pair.max_ratio,
            if met { "yes" } else { "**no**" }
        )?;
        if !met {
            misses.push(format!(
                "- {}: {ratio:.2}x against a target of {:.2}x ({:.0}% over). Where the time goes: {}.",
                pair.what,
                pair.max_ratio,
                (ratio / pair.max_ratio - 1.0) * 100.0,
                pair.why_missed
            ));
        }
    }
    let grpc = grpc_figures(&root)?;
    let find = |server: &str, c: usize| {
        grpc.iter()
            .find(|(s, n, _)| s == server && *n == c)
            .map(|(_, _, f)| f)
    };
    if let (Some(c1), Some(b1), Some(c64), Some(b64)) = (
        find("chassis", 1),
        find("bare", 1),
        find("chassis", 64),
        find("bare", 64),
    ) {
        writeln!(
            md,
            "\n## gRPC `Run` of `echo` over loopback, next to a bare tonic echo of the same RPC\n"
        )?;
        writeln!(md, "| what | chassis | bare tonic | ratio | target | met |")?;
        writeln!(md, "|---|---|---|---|---|---|")?;
        let mut row = |what: &str,
                       ours: String,
                       peer: String,
                       ratio: String,
                       target: &str,
                       met: bool,
                       why: &str|
         -> Result<()> {
            writeln!(
                md,
                "| {what} | {ours} | {peer} | {ratio} | {target} | {} |",
                if met { "yes" } else { "**no**" }
            )?;
            if !met {
                misses.push(format!("- {what}: {ours} against {target}. {why}"));
            }
            Ok(())
        };
        row(
            "p50 latency, concurrency 1",
            format!("{:.0} µs", c1.p50_us),
            format!("{:.0} µs", b1.p50_us),
            format!("{:.2}x", c1.p50_us / b1.p50_us),
            "< 200 µs",
            c1.p50_us < 200.0,
            "Per-run sandbox setup plus HTTP/2 round trip on a loaded 2-core machine.",
        )?;
        row(
            "p99 latency, concurrency 1",
            format!("{:.0} µs", c1.p99_us),
            format!("{:.0} µs", b1.p99_us),
            format!("{:.2}x", c1.p99_us / b1.p99_us),
            "< 1 ms",
            c1.p99_us < 1000.0,
            "Tail from the tokio scheduler and the epoch ticker on 2 cores.",
        )?;
        row(
            "throughput, concurrency 64",
            format!("{:.0} runs/s", c64.runs_per_s),
            format!("{:.0} runs/s", b64.runs_per_s),
            format!("{:.2}x", b64.runs_per_s / c64.runs_per_s),
            "≥ 10,000 runs/s",
            c64.runs_per_s >= 10_000.0,
            "Client and server share the same 2 cores in this bench, so each run pays for both.",
        )?;
        row(
            "latency vs bare echo, concurrency 1 (p50)",
            format!("{:.0} µs", c1.p50_us),
            format!("{:.0} µs", b1.p50_us),
            format!("{:.2}x", c1.p50_us / b1.p50_us),
            "≤ 2x",
            c1.p50_us / b1.p50_us <= 2.0,
            "The sandbox run (instantiate, call, teardown) is added to the bare RPC.",
        )?;
    }
    if !misses.is_empty() {
        writeln!(md, "\n## Missed targets\n")?;
        for m in misses {
            writeln!(md, "{m}")?;
        }
    }
    writeln!(
        md,
        "\n## What is measured\n\n\
         - `sandbox/chassis`: `Runner::run` of the `echo` agent on 16 bytes: a fresh store with \
         capped stdout/stderr, resource limiter, fuel budget, epoch deadline, instantiation from \
         the cached `InstancePre`, the call, the usage report, and teardown.\n\
         - `sandbox/raw-wasmtime`: the same guest on the same engine (pooling allocator, fuel, \
         epoch interruption) with the least a host must do: a default WASI context, fuel set, \
         instantiate from an `InstancePre`, call `run`, drop.\n\
         - `sandbox/host-run` and `sandbox/host-run-audited`: the same run through `Host::run` (policy \
         checks, run id, metrics, tracing span), without and with the audit log (batch fsync, \
         two signed records per run).\n\
         - gRPC (`benches/benches/grpc.rs`): a chassis server and a bare tonic server implementing \
         the same `chassis.v1.Chassis/Run` as an echo, both in the bench process on loopback; \
         clients on the same runtime issue unary `Run` of `echo` with 16 bytes for 5 s per point \
         (0.5 s with --quick) after a 0.5 s warm-up; percentiles come from every sample."
    )?;
    std::fs::write(root.join("BENCHMARKS.md"), md)?;
    println!("wrote {}", root.join("BENCHMARKS.md").display());
    Ok(())
}
