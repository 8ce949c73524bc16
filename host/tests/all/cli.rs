//! The `chassis` binary, run as a user would run it.

use std::path::Path;
use std::process::{Command, Output};

use chassis_tests::programs::*;

struct Cli {
    data: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        Self {
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args(args)
            .arg("--data-dir")
            .arg(self.data.path())
            .env_remove("CHASSIS_LOG")
            .output()
            .expect("chassis runs")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

#[test]
fn run_hello_prints_its_greeting() {
    let cli = Cli::new();
    let out = cli.run(&["run", HELLO_COMPONENT, "--input", "world"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "Hello, world!\n");
    assert!(stderr(&out).contains("greeting name=world"));
}

#[test]
fn an_endless_loop_exits_with_the_out_of_fuel_code() {
    let cli = Cli::new();
    let out = cli.run(&["run", HOSTILE_SPIN_COMPONENT, "--fuel", "50000000"]);
    assert_exit(&out, 13);
    assert!(stderr(&out).contains("out-of-fuel"), "{}", stderr(&out));
}

#[test]
fn with_fuel_off_an_endless_loop_exits_with_the_deadline_code() {
    let cli = Cli::new();
    let out = cli.run(&[
        "run",
        HOSTILE_SPIN_COMPONENT,
        "--fuel",
        "off",
        "--timeout",
        "300ms",
    ]);
    assert_exit(&out, 14);
    assert!(stderr(&out).contains("deadline-exceeded"));
}

#[test]
fn a_memory_bomb_exits_with_the_memory_limit_code() {
    let cli = Cli::new();
    let out = cli.run(&["run", HOSTILE_MEMORY_BOMB_COMPONENT, "--memory-mb", "16"]);
    assert_exit(&out, 15);
    assert!(stderr(&out).contains("memory-limit"));
}

#[test]
fn a_panic_exits_with_the_trap_code_and_a_backtrace() {
    let cli = Cli::new();
    let out = cli.run(&["run", HOSTILE_PANIC_COMPONENT]);
    assert_exit(&out, 16);
    assert!(stderr(&out).contains("wasm backtrace"), "{}", stderr(&out));
    assert!(stderr(&out).contains("explode"));
}

#[test]
fn malformed_and_exportless_modules_exit_with_the_invalid_module_code() {
    let cli = Cli::new();
    let junk = cli.data.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\x00\x01\x00\xff\xff").unwrap();
    let out = cli.run(&["run", junk.to_str().unwrap()]);
    assert_exit(&out, 10);
    assert!(
        stderr(&out).contains("malformed WebAssembly"),
        "{}",
        stderr(&out)
    );
    let out = cli.run(&["run", HOSTILE_NO_EXPORT_COMPONENT]);
    assert_exit(&out, 10);
    assert!(stderr(&out).contains("exports neither"), "{}", stderr(&out));
}

#[test]
fn json_reports_outcome_usage_and_limits() {
    let cli = Cli::new();
    let out = cli.run(&[
        "run",
        HELLO_COMPONENT,
        "--input",
        "json",
        "--json",
        "--memory-mb",
        "64",
    ]);
    assert_exit(&out, 0);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "ok");
    assert_eq!(report["output"]["utf8"], "Hello, json!");
    assert_eq!(report["module"]["world"], "agent");
    assert_eq!(report["limits"]["memory_bytes"], 64 << 20);
    assert!(report["usage"]["fuel_consumed"].as_u64().unwrap() > 0);
    assert_eq!(report["logs"][0]["message"], "greeting");

    let out = cli.run(&["run", HOSTILE_SPIN_COMPONENT, "--json", "--fuel", "1000000"]);
    assert_exit(&out, 13);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "out-of-fuel");
    assert_eq!(report["error"]["kind"], "out-of-fuel");
}

#[test]
fn asking_for_more_than_the_host_allows_exits_with_the_invalid_request_code() {
    let cli = Cli::new();
    let out = cli.run(&["run", HELLO_COMPONENT, "--memory-mb", "100000"]);
    assert_exit(&out, 11);
    assert!(
        stderr(&out).contains("above the allowed 512 MiB"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wasi_command_reads_input_from_stdin_like_wasmtime_run() {
    let cli = Cli::new();
    let out = cli.run(&["run", WORDCOUNT_COMPONENT, "--input", "a b c\nd\n"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "2 4 8\n");
}

#[test]
fn compile_writes_an_artifact_that_runs() {
    let cli = Cli::new();
    let cwasm = cli.data.path().join("hello.cwasm");
    let out = cli.run(&["compile", HELLO_COMPONENT, "-o", cwasm.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("(agent, sha256 "));
    let out = cli.run(&["run", cwasm.to_str().unwrap(), "--input", "artifact"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "Hello, artifact!\n");
}

#[test]
fn a_tampered_artifact_is_refused_never_loaded() {
    let cli = Cli::new();
    let cwasm = cli.data.path().join("hello.cwasm");
    assert_exit(
        &cli.run(&["compile", HELLO_COMPONENT, "-o", cwasm.to_str().unwrap()]),
        0,
    );
    let mut bytes = std::fs::read(&cwasm).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&cwasm, &bytes).unwrap();
    let out = cli.run(&["run", cwasm.to_str().unwrap()]);
    assert_exit(&out, 10);
    assert!(
        stderr(&out).contains("seal does not verify"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_artifact_from_another_host_is_refused() {
    let ours = Cli::new();
    let theirs = Cli::new();
    let cwasm = theirs.data.path().join("hello.cwasm");
    assert_exit(
        &theirs.run(&["compile", HELLO_COMPONENT, "-o", cwasm.to_str().unwrap()]),
        0,
    );
    let out = ours.run(&["run", cwasm.to_str().unwrap()]);
    assert_exit(&out, 10);
    assert!(
        stderr(&out).contains("sealed by another host"),
        "{}",
        stderr(&out)
    );
}

fn cached_artifacts(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for module in std::fs::read_dir(dir.join("modules")).unwrap() {
        for file in std::fs::read_dir(module.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "cwasm") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_tampered_cache_entry_is_detected_and_recompiled() {
    let cli = Cli::new();
    assert_exit(&cli.run(&["run", HELLO_COMPONENT]), 0);
    let cached = cached_artifacts(cli.data.path());
    assert_eq!(cached.len(), 1);
    let mut bytes = std::fs::read(&cached[0]).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    std::fs::write(&cached[0], &bytes).unwrap();
    let out = cli.run(&["run", HELLO_COMPONENT, "--input", "again"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "Hello, again!\n");
    assert!(
        stderr(&out).contains("failed verification"),
        "{}",
        stderr(&out)
    );
    // The recompiled artifact replaced the bad one and verifies again.
    let out = cli.run(&["run", HELLO_COMPONENT]);
    assert_exit(&out, 0);
    assert!(!stderr(&out).contains("failed verification"));
}

#[test]
fn help_documents_every_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .arg("--help")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    for command in ["run", "compile"] {
        assert!(text.contains(command), "{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    for flag in [
        "--input",
        "--input-file",
        "--fuel",
        "--memory-mb",
        "--timeout",
        "--json",
    ] {
        assert!(stdout(&out).contains(flag), "{flag}");
    }
}

fn policies_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

#[test]
fn policy_check_accepts_the_shipped_examples() {
    let cli = Cli::new();
    let files: Vec<String> = std::fs::read_dir(policies_dir())
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let mut args = vec!["policy", "check"];
    args.extend(files.iter().map(String::as_str));
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(&args)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("ok:"));
    drop(cli);
}

#[test]
fn policy_check_rejects_a_typo_naming_file_and_line() {
    let cli = Cli::new();
    let bad = cli.data.path().join("typo.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\n\n[limits]\nmemory_mb = 64\nfuell = 100\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["policy", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_exit(&out, 11);
    let err = stderr(&out);
    assert!(
        err.contains("typo.toml:5:1: unknown field `fuell`"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["policy", "check", "--json", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_exit(&out, 11);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["ok"], false);
    assert_eq!(json[0]["line"], 5);
    assert_eq!(json[0]["column"], 1);
}

#[test]
fn policy_check_refuses_a_root_nested_in_another_policys_rw_root() {
    let cli = Cli::new();
    let dir = cli.data.path();
    let write = |file: &str, name: &str, host: &str, guest: &str, mode: &str| {
        let path = dir.join(file);
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\n[[filesystem]]\nhost = \"{host}\"\nguest = \"{guest}\"\nmode = \"{mode}\"\n"
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let work = write("work.toml", "work", "/tmp/x", "/work", "rw");
    let reader = write("reader.toml", "reader", "/tmp/x/in", "/in", "ro");
    // Each is valid alone...
    for file in [&work, &reader] {
        let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args(["policy", "check", file])
            .output()
            .unwrap();
        assert_exit(&out, 0);
    }
    // ...but not as one host's set.
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["policy", "check", &work, &reader])
        .output()
        .unwrap();
    assert_exit(&out, 11);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{reader}: `/tmp/x/in (ro)` (policy `reader`) lies inside `/tmp/x (rw)`, a root of policy `work` ({work})"
        )),
        "{err}"
    );
    // Within one policy the same nesting is refused at its line.
    let both = dir.join("both.toml");
    std::fs::write(
        &both,
        "name = \"both\"\n[[filesystem]]\nhost = \"/tmp/x\"\nguest = \"/work\"\nmode = \"rw\"\n\
         [[filesystem]]\nhost = \"/tmp/x/in\"\nguest = \"/in\"\nmode = \"ro\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["policy", "check", both.to_str().unwrap()])
        .output()
        .unwrap();
    assert_exit(&out, 11);
    let err = stderr(&out);
    assert!(
        err.contains("both.toml:7:8: `/tmp/x/in` (ro) lies inside `/tmp/x` (rw)"),
        "{err}"
    );
}

#[test]
fn policy_explain_reads_as_plain_words() {
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["policy", "explain"])
        .arg(policies_dir().join("http-fetcher.toml"))
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("may open TCP connections to api.github.com:443"),
        "{text}"
    );
    assert!(text.contains("none: it cannot see any file"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["policy", "explain", "--json"])
        .arg(policies_dir().join("db-migrate.toml"))
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["secrets"]["db"]["dynamic"], true);
}

#[test]
fn policy_diff_flags_new_reach_for_review() {
    let cli = Cli::new();
    let old = policies_dir().join("reporter.toml");
    let new = cli.data.path().join("reporter-v2.toml");
    let text = std::fs::read_to_string(&old)
        .unwrap()
        .replace("mode = \"ro\"", "mode = \"rw\"")
        + "\n[network]\nallow = [\"hooks.slack.com:443\"]\n";
    std::fs::write(&new, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["policy", "diff"])
        .arg(&old)
        .arg(&new)
        .output()
        .unwrap();
    assert_exit(&out, 3);
    let text = stdout(&out);
    assert!(
        text.contains("+ [  HIGH] network: hooks.slack.com:443"),
        "{text}"
    );
    assert!(
        text.contains(
            "~ [  HIGH] filesystem: /var/lib/infrafabric/reports (ro as /reports -> rw as /reports)"
        ),
        "{text}"
    );
    assert!(text.contains("2 high-risk change(s)"), "{text}");
    let same = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["policy", "diff", "--json"])
        .arg(&old)
        .arg(&old)
        .output()
        .unwrap();
    assert_exit(&same, 0);
    assert_eq!(stdout(&same).trim(), "[]");
}

#[test]
fn run_under_a_policy_grants_what_it_lists() {
    let cli = Cli::new();
    let jail = cli.data.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    std::fs::write(jail.join("note.txt"), "from the policy").unwrap();
    let policy = cli.data.path().join("p.toml");
    std::fs::write(
        &policy,
        format!(
            "name = \"p\"\n[[filesystem]]\nhost = \"{}\"\nguest = \"/data\"\nmode = \"ro\"\n",
            jail.display()
        ),
    )
    .unwrap();
    let out = cli.run(&[
        "run",
        HOSTILE_ESCAPE_COMPONENT,
        "--policy",
        policy.to_str().unwrap(),
        "--input",
        "read /data/note.txt",
    ]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "from the policy\n");
    // Without the policy the same request finds nothing.
    let out = cli.run(&[
        "run",
        HOSTILE_ESCAPE_COMPONENT,
        "--input",
        "read /data/note.txt",
    ]);
    assert_exit(&out, 17);
}

#[test]
fn a_pinned_policy_refuses_other_modules() {
    let cli = Cli::new();
    let policy = cli.data.path().join("pinned.toml");
    std::fs::write(
        &policy,
        format!("name = \"pinned\"\nmodules = [\"{}\"]\n", "0".repeat(64)),
    )
    .unwrap();
    let out = cli.run(&["run", HELLO_COMPONENT, "--policy", policy.to_str().unwrap()]);
    assert_exit(&out, 12);
    assert!(
        stderr(&out).contains("is not pinned by it"),
        "{}",
        stderr(&out)
    );
}
