//! How a command reports a typed failure, as text on stderr or as JSON on
//! stdout with `--json`, and the exit code each [`ErrorKind`] maps to.

use std::path::Path;
use std::process::ExitCode;

use chassis::ErrorKind;

/// The exit code for `kind`.
pub(crate) fn exit_for(kind: ErrorKind) -> ExitCode {
    ExitCode::from(kind.exit_code() as u8)
}

/// Reports a failure about the file at `path` and returns its exit code.
pub(crate) fn fail(json: bool, path: &Path, kind: ErrorKind, message: &str) -> ExitCode {
    if json {
        let value = serde_json::json!({
            "module_path": path.display().to_string(),
            "outcome": kind.as_str(),
            "error": { "kind": kind.as_str(), "message": message },
        });
        println!("{value:#}");
    } else {
        eprintln!("chassis: {kind}: {}: {message}", path.display());
    }
    exit_for(kind)
}

/// Reports a refusal made on this side of the connection, as
/// [`status_exit`] reports the server's.
pub(crate) fn typed_exit(kind: ErrorKind, message: &str, json: bool) -> ExitCode {
    let code = chassis::grpc::status::code_for(kind);
    if json {
        println!(
            "{}",
            serde_json::json!({ "code": format!("{code:?}"), "kind": kind.as_str(), "message": message })
        );
    } else {
        eprintln!("chassis: {code:?} ({}): {message}", kind.as_str());
    }
    exit_for(kind)
}

/// Reports a server's error status (its `chassis-error-kind` names the
/// kind) and returns the exit code for that kind.
pub(crate) fn status_exit(status: &tonic::Status, json: bool) -> ExitCode {
    let kind = chassis::grpc::status::kind_of(status).unwrap_or_else(|| "unknown".into());
    if json {
        println!(
            "{}",
            serde_json::json!({ "code": format!("{:?}", status.code()), "kind": kind, "message": status.message() })
        );
    } else {
        eprintln!(
            "chassis: {:?} ({kind}): {}",
            status.code(),
            status.message()
        );
    }
    kind.parse::<ErrorKind>()
        .map(exit_for)
        .unwrap_or(ExitCode::from(1))
}
