//! Installing what builds and tests need, only when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where `guests()` puts the built `.wasm` files (the same place the tests
/// crate's build script uses, so nothing is built twice).
pub(crate) fn guest_dir() -> PathBuf {
    root().join("target/guests/wasm32-wasip2/release")
}

/// Adds the wasm32-wasip2 target through rustup unless it is installed.
pub(crate) fn wasm_target() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if Path::new(&sysroot)
        .join("lib/rustlib/wasm32-wasip2")
        .is_dir()
    {
        return Ok(());
    }
    eprintln!("xtask: installing the wasm32-wasip2 target");
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
        .context("running rustup (is Rust installed through rustup?)")?;
    if !status.success() {
        bail!("rustup target add wasm32-wasip2 failed ({status})");
    }
    Ok(())
}

/// Builds the guests under modules/ for wasm32-wasip2.
pub(crate) fn guests() -> Result<()> {
    let root = root();
    crate::cargo(&[
        "build",
        "--quiet",
        "--release",
        "--target=wasm32-wasip2",
        "--manifest-path",
        root.join("modules/Cargo.toml").to_str().unwrap(),
        "--target-dir",
        root.join("target/guests").to_str().unwrap(),
    ])
}

/// Installs Debian packages for the commands that are missing, e.g.
/// `[("protoc", "protobuf-compiler")]`. Uses apt-get directly as root,
/// through sudo otherwise.
pub(crate) fn debian_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(command, _)| !on_path(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} with apt-get", missing.join(", "));
    let apt = |args: &[&str]| -> Result<()> {
        let status = as_root("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

/// `program` run directly as root, through sudo otherwise.
fn as_root(program: &str) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

/// promtool, for the alert rule tests (host/tests/deploy.rs). Debian ships
/// it only in `prometheus`, whose installation starts a Prometheus server
/// on port 9090 where systemd runs; when this call installed the package,
/// that server is stopped and disabled again, since only the tool is wanted.
pub(crate) fn promtool() -> Result<()> {
    let had = on_path("promtool");
    debian_tools(&[("promtool", "prometheus")])?;
    if !had && Path::new("/run/systemd/system").is_dir() {
        eprintln!(
            "xtask: stopping the Prometheus server the package started (only promtool is needed)"
        );
        let stopped = as_root("systemctl")
            .args(["disable", "--now", "prometheus.service"])
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            eprintln!(
                "xtask: could not stop prometheus.service; stop it with `systemctl disable --now prometheus`"
            );
        }
    }
    Ok(())
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
        .unwrap_or(false)
}

/// What building chassis needs beyond Rust: protoc for the gRPC code.
pub(crate) fn build_tools() -> Result<()> {
    wasm_target()?;
    debian_tools(&[("protoc", "protobuf-compiler")])
}
