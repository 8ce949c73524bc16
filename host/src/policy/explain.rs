//! `chassis policy explain`: what a module under a policy can do, in plain words.

use std::fmt::Write as _;

use super::{Mode, Policy};

fn bytes_mb(mb: u64) -> String {
    if mb >= 1024 && mb.is_multiple_of(1024) {
        format!("{} GiB", mb / 1024)
    } else {
        format!("{mb} MiB")
    }
}

/// A plain-language account of everything `policy` grants, for a reviewer
/// who has never seen the code.
pub fn explain(policy: &Policy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Policy `{}`", policy.name);
    if let Some(src) = &policy.source {
        let _ = writeln!(
            out,
            "  from {} (sha256 {})",
            src.display(),
            &policy.sha256[..16.min(policy.sha256.len())]
        );
    }
    if !policy.description.is_empty() {
        let _ = writeln!(out, "  \"{}\"", policy.description.trim());
    }

    let _ = writeln!(out, "\nWhich modules may run under it:");
    if policy.modules.is_empty() {
        let _ = writeln!(out, "  - any module");
    } else {
        for m in &policy.modules {
            let _ = writeln!(out, "  - only the module with sha256 {m}");
        }
    }

    let _ = writeln!(out, "\nWho may run it:");
    let _ = writeln!(
        out,
        "  - local runs (the chassis CLI, or gRPC over loopback without TLS)"
    );
    if policy.callers.is_empty() {
        let _ = writeln!(out, "  - no remote caller");
    }
    for c in &policy.callers {
        let _ = writeln!(out, "  - the caller whose client certificate names `{c}`");
    }

    let _ = writeln!(out, "\nFiles:");
    if policy.preopens.is_empty() {
        let _ = writeln!(
            out,
            "  - none: it cannot see any file or directory of the host"
        );
    }
    for p in &policy.preopens {
        let what = match p.mode {
            Mode::ReadOnly => "can read, but not change,",
            Mode::ReadWrite => "can read, create, change and delete",
        };
        let _ = writeln!(
            out,
            "  - {what} everything under {} (it sees the directory as {}); nothing outside it, symlinks included",
            p.host, p.guest
        );
    }

    let _ = writeln!(out, "\nNetwork:");
    if policy.network.is_empty() {
        let _ = writeln!(out, "  - none: it cannot open any connection");
    }
    for e in &policy.network.allow {
        match e.literal_ip() {
            Some(ip) => match super::network::special_range(ip) {
                Some(range) => {
                    let _ = writeln!(
                        out,
                        "  - may open TCP connections to {e} (a {range} address, listed on purpose)"
                    );
                }
                None => {
                    let _ = writeln!(out, "  - may open TCP connections to {e}");
                }
            },
            None => {
                let _ = writeln!(
                    out,
                    "  - may open TCP connections to {e}, at whatever public address the name resolves to at connect time"
                );
            }
        }
    }
    if !policy.network.is_empty() {
        let _ = writeln!(
            out,
            "  - may look up DNS names; loopback, private, link-local and metadata addresses stay refused unless listed as an IP"
        );
    }

    let _ = writeln!(out, "\nEnvironment variables:");
    if policy.env.is_empty() && policy.secrets.values().all(|s| s.env.is_none()) {
        let _ = writeln!(out, "  - none: it sees an empty environment");
    }
    for (k, v) in &policy.env {
        let _ = writeln!(out, "  - {k}={v}");
    }

    let _ = writeln!(out, "\nSecrets:");
    if policy.secrets.is_empty() {
        let _ = writeln!(out, "  - none: every secret it asks for is denied");
    }
    for (name, g) in &policy.secrets {
        let source = match (&g.key, g.dynamic) {
            (_, true) => format!(
                "fresh credentials from {} created for each run and revoked when the run ends",
                g.path
            ),
            (Some(key), false) => format!("field `{key}` of {}", g.path),
            (None, false) => g.path.clone(),
        };
        let env = g
            .env
            .as_ref()
            .map(|e| format!("; also visible as environment variable {e}"))
            .unwrap_or_default();
        let _ = writeln!(out, "  - `{name}`: {source}{env}");
    }

    let _ = writeln!(
        out,
        "\nLimits (the host's caps apply where none is set; a request can only tighten):"
    );
    let l = &policy.limits;
    let line = |out: &mut String, what: &str, v: Option<String>| {
        let _ = writeln!(
            out,
            "  - {what}: {}",
            v.unwrap_or_else(|| "host default".into())
        );
    };
    line(
        &mut out,
        "fuel",
        l.fuel
            .map(|f| format!("{f} units (about one per wasm instruction)")),
    );
    line(&mut out, "memory", l.memory_mb.map(bytes_mb));
    line(
        &mut out,
        "wall-clock time",
        l.timeout.map(|t| humantime::format_duration(t).to_string()),
    );
    line(
        &mut out,
        "CPU",
        l.cpu_percent.map(|p| format!("{p}% of one core")),
    );
    line(&mut out, "output", l.output_kb.map(|k| format!("{k} KiB")));
    line(
        &mut out,
        "runs at once",
        l.concurrent_runs.map(|n| format!("{n} on each server")),
    );
    out
}
