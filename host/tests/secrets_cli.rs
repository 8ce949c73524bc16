//! Secrets through the `chassis` binary: `run --secrets`, `config check`,
//! and a served host with an audit log whose every byte (and the server's
//! own logs) must be free of the secret's value.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chassis_tests::programs::SECRET_READER_COMPONENT;
use common::assert_success;

const VALUE: &str = "cli-smtp-Pa55word-7d1e";

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn secrets_file(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join("secrets.toml");
    std::fs::write(
        &path,
        format!("[\"secret/reports\"]\nsmtp_password = \"{VALUE}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn chassis(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(args)
        .env("CHASSIS_DATA_DIR", data)
        .env_remove("VAULT_ADDR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_with_a_private_secrets_file_hands_the_value_over_and_prints_it_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), 0o600);
    let policy = policies_dir().join("secret-reader.toml");
    let out = chassis(
        &[
            "run",
            SECRET_READER_COMPONENT,
            "--policy",
            policy.to_str().unwrap(),
            "--secrets",
            secrets.to_str().unwrap(),
            "--input",
            "smtp env:SMTP_PASSWORD",
            "--json",
        ],
        dir.path(),
    );
    assert_success(&out);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains(&format!("smtp {}", VALUE.len())), "{all}");
    assert!(all.contains("[REDACTED:smtp]"), "{all}");
    assert!(!all.contains(VALUE), "the value leaked: {all}");
}

#[test]
fn run_refuses_a_group_readable_secrets_file_naming_it_and_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), 0o644);
    let policy = policies_dir().join("secret-reader.toml");
    let out = chassis(
        &[
            "run",
            SECRET_READER_COMPONENT,
            "--policy",
            policy.to_str().unwrap(),
            "--secrets",
            secrets.to_str().unwrap(),
            "--input",
            "smtp",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(18), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("mode 0644"), "{err}");
    assert!(err.contains(&secrets.display().to_string()), "{err}");
}

#[test]
fn config_check_names_an_unsafe_local_secrets_file() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), 0o640);
    let config = dir.path().join("chassis.yaml");
    std::fs::write(
        &config,
        format!(
            "chassis:\n  credentials:\n    local_file: {}\n",
            secrets.display()
        ),
    )
    .unwrap();
    let out = chassis(&["config", "check", config.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(11), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("mode 0640"),
        "{}",
        text(&out.stderr)
    );
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = chassis(&["config", "check", config.to_str().unwrap()], dir.path());
    assert_success(&out);
    assert!(
        text(&out.stdout).contains("secrets local secrets file"),
        "{}",
        text(&out.stdout)
    );
}

/// The test the audit issue left open: a secret read by a served run is in
/// neither the audit log nor the server's logs.
#[test]
fn a_served_run_leaves_its_secret_in_no_audit_record_and_no_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), 0o600);
    let data = dir.path().join("data");
    let config = dir.path().join("chassis.yaml");
    std::fs::write(
        &config,
        format!(
            "chassis:\n  metrics:\n    enabled: false\n  logging:\n    level: DEBUG\n    format: json\n    \
             output: stderr\n  server:\n    listen: 127.0.0.1:0\n  audit:\n    fsync: every\n  \
             credentials:\n    local_file: {}\n  policies_dir: {}\n  data_dir: {}\n",
            secrets.display(),
            policies_dir().display(),
            data.display()
        ),
    )
    .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("VAULT_ADDR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the server's logs as they come: a full pipe would block it.
    let mut server_stderr = server.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        server_stderr.read_to_string(&mut text).unwrap();
        text
    });
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("chassis listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let client = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args(["client", "--addr", &format!("http://{addr}")])
            .args(args)
            .output()
            .unwrap()
    };
    let out = client(&["register", SECRET_READER_COMPONENT]);
    assert_success(&out);
    let id = text(&out.stdout)
        .split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .expect("the module id")
        .to_string();
    let out = client(&[
        "run",
        &id,
        "--policy",
        "secret-reader",
        "--input",
        "smtp env:SMTP_PASSWORD",
        "--stream",
    ]);
    assert_success(&out);
    let client_text = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        client_text.contains(&format!("smtp {}", VALUE.len())),
        "{client_text}"
    );
    assert!(
        !client_text.contains(VALUE),
        "the client saw the value: {client_text}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let server_logs = logs.join().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(server.wait().unwrap().success(), "{server_logs}");

    let mut audit = String::new();
    for entry in std::fs::read_dir(data.join("audit")).unwrap() {
        let path = entry.unwrap().path();
        audit.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
    }
    assert!(audit.contains("\"secret.granted\""), "{audit}");
    assert!(audit.contains("\"name\":\"smtp\""), "{audit}");
    assert!(!audit.contains(VALUE), "the audit log holds the value");
    assert!(
        !server_logs.contains(VALUE),
        "the server's logs hold the value"
    );
    assert!(!rest.contains(VALUE), "the server's stdout holds the value");
}
