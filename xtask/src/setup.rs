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
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        let status = cmd
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
