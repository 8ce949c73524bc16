//! `chassis new` for each language, run as a user runs it: the binary
//! writes the project, its `build.sh` builds it with the upstream toolchain
//! (the copies `cargo xtask` installs under the target dir stand in for the
//! user's own, put on PATH as the printed install step would), and the
//! printed `chassis run` command runs it. Also the Python and JavaScript
//! builds the host cannot run, refused as `invalid-module` by name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chassis_tests::programs::HELLO_PY_COMPONENT;

/// The cargo target dir (the guests are built under it).
fn target_dir() -> PathBuf {
    Path::new(HELLO_PY_COMPONENT)
        .ancestors()
        .nth(3)
        .expect("guests live in <target>/guests/agents")
        .to_path_buf()
}

/// PATH with the installed agent toolchains first.
fn toolchain_path() -> String {
    let target = target_dir();
    format!(
        "{}:{}:{}",
        target.join("agents-py/bin").display(),
        target.join("agents-js/node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn chassis(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(args)
        .current_dir(cwd)
        .env_remove("CHASSIS_LOG")
        .output()
        .expect("chassis runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `chassis new NAME --lang LANG` in a fresh dir, then the printed steps:
/// `./build.sh` (with `env`) and `chassis run NAME.wasm --input world`.
fn scaffold_builds_and_runs(lang: &str, env: &[(&str, &str)]) {
    let work = tempfile::tempdir().unwrap();
    let name = format!("hello-{lang}");
    let out = chassis(&["new", &name, "--lang", lang], work.path());
    assert_ok(&out);
    let printed = text(&out.stdout);
    assert!(printed.contains(&format!("cd ./{name}")), "{printed}");
    assert!(printed.contains("./build.sh"), "{printed}");
    let run_line = format!("chassis run {name}.wasm --input world");
    assert!(printed.contains(&run_line), "{printed}");

    let project = work.path().join(&name);
    let build = Command::new("./build.sh")
        .current_dir(&project)
        .env("PATH", toolchain_path())
        .envs(env.iter().copied())
        .output()
        .expect("build.sh runs");
    assert_ok(&build);
    assert!(project.join(format!("{name}.wasm")).is_file());

    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let wasm = format!("{name}.wasm");
    let run = chassis(
        &["run", &wasm, "--input", "world", "--data-dir", data_dir],
        &project,
    );
    assert_ok(&run);
    assert_eq!(text(&run.stdout), "Hello, world!\n");
    assert!(
        text(&run.stderr).contains("greeting name=world"),
        "{}",
        text(&run.stderr)
    );
}

#[test]
fn a_python_scaffold_builds_and_runs_with_the_printed_commands() {
    scaffold_builds_and_runs("python", &[]);
}

#[test]
fn a_javascript_scaffold_builds_and_runs_with_the_printed_commands() {
    scaffold_builds_and_runs("js", &[]);
}

#[test]
fn a_javascript_scaffold_builds_and_runs_on_quickjs_too() {
    scaffold_builds_and_runs("js", &[("ENGINE", "quickjs")]);
}

#[test]
fn a_rust_scaffold_builds_and_runs_with_the_printed_commands() {
    // A target dir of its own, kept between runs: the scaffold's
    // dependencies (wit-bindgen) compile once.
    let target = target_dir().join("scaffold-rust");
    scaffold_builds_and_runs("rust", &[("CARGO_TARGET_DIR", target.to_str().unwrap())]);
}

#[test]
fn chassis_new_refuses_bad_names_and_existing_directories() {
    let work = tempfile::tempdir().unwrap();
    for bad in ["Hello", "1st", "a_b", "../up", "a-"] {
        let out = chassis(&["new", bad], work.path());
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("not a valid agent name"),
            "{}",
            text(&out.stderr)
        );
    }
    std::fs::create_dir(work.path().join("taken")).unwrap();
    std::fs::write(work.path().join("taken/keep.txt"), "mine").unwrap();
    let out = chassis(&["new", "taken", "--lang", "python"], work.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(work.path().join("taken"))
            .unwrap()
            .count(),
        1,
        "nothing was written into the existing directory"
    );
}

/// `chassis run WASM` in `cwd` on a fresh data dir: must exit 10
/// `invalid-module`, naming each of `names`.
fn assert_invalid_module_naming(wasm: &str, cwd: &Path, names: &[&str]) {
    let data = tempfile::tempdir().unwrap();
    let out = chassis(
        &["run", wasm, "--data-dir", data.path().to_str().unwrap()],
        cwd,
    );
    assert_eq!(out.status.code(), Some(10), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("invalid-module"), "{stderr}");
    for name in names {
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

/// Builds `app.py` against `world` in `wit` with componentize-py.
fn build_python(dir: &Path, wit: &str, world: &str, app: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("wit")).unwrap();
    std::fs::write(dir.join("wit/world.wit"), wit).unwrap();
    std::fs::write(dir.join("app.py"), app).unwrap();
    let out = dir.join("app.wasm");
    let build = Command::new(target_dir().join("agents-py/bin/componentize-py"))
        .args([
            "-d",
            "wit",
            "-w",
            world,
            "componentize",
            "-p",
            ".",
            "app",
            "-o",
        ])
        .arg(&out)
        .current_dir(dir)
        .env_remove("VIRTUAL_ENV")
        .output()
        .expect("componentize-py runs");
    assert_ok(&build);
    out
}

#[test]
fn a_python_build_importing_what_the_host_lacks_is_invalid_module_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let wasm = build_python(
        work.path(),
        "package example:kv@0.1.0;\n\
         interface store { get: func(key: string) -> option<string>; }\n\
         world kv-agent { import store; export run: func(input: list<u8>) -> list<u8>; }\n",
        "kv-agent",
        "import wit_world\nfrom wit_world.imports import store\n\n\
         class WitWorld(wit_world.WitWorld):\n    def run(self, input: bytes) -> bytes:\n        \
         return (store.get(input.decode()) or '').encode()\n",
    );
    assert_invalid_module_naming(wasm.to_str().unwrap(), work.path(), &["example:kv/store"]);
}

#[test]
fn a_javascript_build_for_another_world_is_invalid_module_naming_its_exports() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("wit")).unwrap();
    std::fs::write(
        work.path().join("wit/world.wit"),
        "package example:other@0.1.0;\nworld other { export handle: func(input: string) -> string; }\n",
    )
    .unwrap();
    std::fs::write(
        work.path().join("agent.js"),
        "export function handle(input) { return input; }\n",
    )
    .unwrap();
    let build = Command::new(target_dir().join("agents-js/node_modules/.bin/componentize-qjs"))
        .args([
            "--wit",
            "wit",
            "-n",
            "other",
            "--sync",
            "--js",
            "agent.js",
            "-o",
            "other.wasm",
        ])
        .current_dir(work.path())
        .output()
        .expect("componentize-qjs runs");
    assert_ok(&build);
    assert_invalid_module_naming("other.wasm", work.path(), &["handle", "init"]);
}
