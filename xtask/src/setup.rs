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
