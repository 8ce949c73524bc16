//! Project automation, run as `cargo xtask <command>`.
//!
//! The README's two commands are `cargo xtask demo` and `cargo xtask test`;
//! both install what they need (the wasm32-wasip2 target, Debian packages
//! when missing), so a fresh machine with only Rust can run them.

mod bench;
mod setup;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the demo on the embedded default and print its results.
    Demo,
    /// Install what the tests need, then run every test.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check` and `cargo clippy -D warnings` on everything.
    Lint,
    /// Build the guests under modules/ for wasm32-wasip2.
    Guests,
    /// Run the benchmarks and regenerate BENCHMARKS.md.
    Bench {
        /// Shorter measurement (for a quick look; the report says so).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Demo => demo(),
        Task::Test { args } => test(&args),
        Task::Lint => lint(),
        Task::Guests => {
            setup::wasm_target()?;
            setup::agent_toolchains()?;
            setup::guests()
        }
        Task::Bench { quick } => {
            setup::build_tools()?;
            setup::agent_toolchains()?;
            bench::run(quick)
        }
    }
}

/// Runs `cargo` with `args` in the workspace root, failing on a non-zero exit.
pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

/// [`cargo`] with environment variables set for it (and the tests it runs).
pub(crate) fn cargo_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(setup::root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    setup::phase("[1/5] installing what the tests need (skipping what is there)");
    setup::build_tools()?;
    // The Python and JavaScript guests are built with these.
    setup::agent_toolchains()?;
    // The coordination tests start real etcd servers.
    setup::debian_tools(&[("etcd", "etcd-server")])?;
    // The alert rules are unit-tested with promtool.
    setup::promtool()?;
    // The secret tests start real OpenBao servers and PostgreSQL clusters.
    setup::postgresql()?;
    let bao = setup::openbao()?;
    setup::phase(
        "[2/5] building the host, the tests and the guests (the first build takes about 12 minutes on 2 cores)",
    );
    let mut args = vec!["test", "--workspace", "--all-targets", "--no-run"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;
    setup::phase("[3/5] running every test");
    let mut args = vec!["test", "--workspace", "--all-targets"];
    args.extend(extra.iter().map(String::as_str));
    cargo_env(&args, &[("CHASSIS_BAO", bao.as_os_str())])?;
    // Doc examples compile too (all-targets leaves doctests out).
    setup::phase("[4/5] running the doc examples");
    cargo(&["test", "--workspace", "--doc"])?;
    // The Python client against a real `chassis serve` (the binary the
    // tests above built).
    setup::phase("[5/5] the Python client's tests against chassis serve");
    let python = setup::python_client_venv()?;
    let status = Command::new(python)
        .args(["-m", "pytest", "-q", "clients/python/tests"])
        .current_dir(setup::root())
        .env("CHASSIS_BIN", setup::target_dir().join("debug/chassis"))
        .env("CHASSIS_GUESTS", setup::guest_dir())
        .status()
        .context("running pytest")?;
    if !status.success() {
        bail!("the Python client's tests failed ({status})");
    }
    Ok(())
}

fn lint() -> Result<()> {
    setup::build_tools()?;
    // clippy runs the tests crate's build script, which builds the
    // Python and JavaScript guests.
    setup::agent_toolchains()?;
    setup::phase("cargo fmt --check");
    cargo(&["fmt", "--all", "--", "--check"])?;
    setup::phase("cargo clippy --workspace --all-targets -D warnings");
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn demo() -> Result<()> {
    setup::phase("[1/4] installing what the build needs (skipping what is there)");
    setup::build_tools()?;
    setup::phase("[2/4] building the guests");
    setup::guests()?;
    setup::phase(
        "[3/4] building the chassis binary (the first build takes about 8 minutes on 2 cores)",
    );
    cargo(&["build", "-p", "chassis"])?;
    setup::phase("[4/4] running the demo");
    let root = setup::root();
    let chassis = setup::target_dir().join("debug/chassis");
    let guests = setup::guest_dir();
    let data = setup::target_dir().join("demo-data");
    println!(
        "chassis demo: embedded default host (in-process claims), data dir {}\n",
        data.display()
    );
    // The embedded default reads secrets from a local file only its owner
    // can read; the demo's holds the example SMTP password.
    std::fs::create_dir_all(&data)?;
    let secrets = data.join("secrets.toml");
    std::fs::copy(
        root.join("modules/secret-reader/secrets.example.toml"),
        &secrets,
    )?;
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let runbook = root.join("runbooks/incident-digest.toml");
    println!(
        "== the example runbook, every step a sandboxed module run:\n   chassis runbook run {}\n",
        runbook.display()
    );
    let status = Command::new(&chassis)
        .args(["runbook", "run"])
        .arg(&runbook)
        .arg("--modules")
        .arg(&guests)
        .arg("--policies")
        .arg(root.join("policies"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--secrets")
        .arg(&secrets)
        .status()
        .context("running chassis runbook run")?;
    if !status.success() {
        bail!("the example runbook did not complete ({status})");
    }
    println!(
        "\n== the `notify` step again, by hand: what the guest printed of its secret (stdout, stderr, logs)\n   chassis run secret_reader.wasm --policy policies/secret-reader.toml --secrets {} --input smtp\n",
        secrets.display()
    );
    let status = Command::new(&chassis)
        .arg("run")
        .arg(guests.join("secret_reader.wasm"))
        .arg("--policy")
        .arg(root.join("policies/secret-reader.toml"))
        .arg("--secrets")
        .arg(&secrets)
        .args(["--input", "smtp"])
        .arg("--data-dir")
        .arg(&data)
        .status()
        .context("running chassis run")?;
    if !status.success() {
        bail!("the secret reader failed ({status})");
    }
    println!("\n== the sandbox holds hostile guests to their limits:\n");
    let steps: [(&str, &str, &[&str]); 5] = [
        (
            "an SDK agent greets its input",
            "hello.wasm",
            &["--input", "chassis"],
        ),
        (
            "a plain WASI command counts words on stdin",
            "wordcount.wasm",
            &["--input", "the quick brown fox\njumps over\n"],
        ),
        (
            "a guest that loops forever runs out of fuel",
            "spin.wasm",
            &["--fuel", "100000000"],
        ),
        (
            "a guest that hoards memory hits its cap",
            "memory_bomb.wasm",
            &["--memory-mb", "32"],
        ),
        (
            "a guest that panics is a trap, with a wasm backtrace",
            "panic.wasm",
            &[],
        ),
    ];
    for (what, file, args) in steps {
        println!("== {what}: chassis run {file} {args:?}");
        let out = Command::new(&chassis)
            .arg("run")
            .arg(guests.join(file))
            .args(args)
            .arg("--json")
            .arg("--data-dir")
            .arg(&data)
            .output()
            .context("running chassis")?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "chassis printed no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let outcome = report["outcome"].as_str().unwrap_or("?");
        match outcome {
            "ok" => println!(
                "   outcome: ok, output: {:?}",
                report["output"]["utf8"].as_str().unwrap_or("")
            ),
            kind => println!(
                "   outcome: {kind} (exit {}): {}",
                out.status.code().unwrap_or(-1),
                report["error"]["message"].as_str().unwrap_or("")
            ),
        }
        let usage = &report["usage"];
        println!(
            "   usage: fuel {}, peak memory {} KiB, wall {} µs\n",
            usage["fuel_consumed"],
            usage["peak_memory_bytes"].as_u64().unwrap_or(0) / 1024,
            usage["wall_time_us"]
        );
    }
    Ok(())
}
