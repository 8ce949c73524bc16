//! Capability policies: what a module may touch, as a plain TOML file.
//!
//! Deny by default: a run under no policy, or under an empty one, gets no
//! files, no network, no environment and no secrets. A policy can grant
//! each of those explicitly, tighten the host's limits, pin the modules
//! allowed to run under it and name the callers allowed to use it.
//!
//! ```toml
//! name = "reporter"
//! description = "Summarises the nightly reports."
//! callers = ["coordinator.prod.example"]
//!
//! [limits]
//! memory_mb = 64
//! timeout = "30s"
//!
//! [[filesystem]]
//! host = "/var/lib/reports"
//! guest = "/reports"
//! mode = "ro"
//! ```

mod diff;
mod explain;
mod file;
pub mod network;
mod roots;
mod set;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use diff::{Change, ChangeKind, Risk, diff};
pub use explain::explain;
pub use network::{Endpoint, NetworkDenial, NetworkPolicy};
pub use roots::check_roots;
pub use set::PolicySet;

use crate::error::ErrorKind;
use crate::limits::{FuelRequest, LimitsRequest};

/// Access a preopened directory grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Read files and list directories.
    #[serde(rename = "ro")]
    ReadOnly,
    /// Also create, change and delete.
    #[serde(rename = "rw")]
    ReadWrite,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::ReadOnly => "ro",
            Mode::ReadWrite => "rw",
        })
    }
}

/// A host directory the guest sees at `guest`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Preopen {
    /// Absolute path on the host.
    pub host: String,
    /// Absolute path the guest uses.
    pub guest: String,
    /// `ro` or `rw`.
    pub mode: Mode,
}

/// A secret the guest may ask for by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretGrant {
    /// Where the secret lives, e.g. `secret/app/db` (KV v2) or `database/creds/ro`.
    pub path: String,
    /// The field within a KV secret; `None` for dynamic secrets.
    pub key: Option<String>,
    /// A lease-bearing secret created for this run and revoked when it ends.
    pub dynamic: bool,
    /// Also inject the value as this environment variable.
    pub env: Option<String>,
}

/// Limits a policy sets; each can only tighten the host caps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyLimits {
    /// Fuel budget.
    pub fuel: Option<u64>,
    /// Memory cap in MiB.
    pub memory_mb: Option<u64>,
    /// Wall-clock deadline.
    #[serde(serialize_with = "serialize_opt_duration")]
    pub timeout: Option<Duration>,
    /// Share of one core the sandbox may use, 1-100.
    pub cpu_percent: Option<u8>,
    /// Output and captured stream cap in KiB.
    pub output_kb: Option<u64>,
    /// Runs under this policy at once on one server, whoever the callers;
    /// more wait their turn for `sandbox_pool.queue_timeout_ms`.
    pub concurrent_runs: Option<u32>,
}

fn serialize_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

/// A validated capability policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The policy's name, used by requests to select it.
    pub name: String,
    /// What it is for, in the author's words.
    pub description: String,
    /// The file it was loaded from.
    pub source: Option<PathBuf>,
    /// sha256 of the file's bytes, for audit records.
    pub sha256: String,
    /// sha256 ids of the modules allowed to run under it; empty allows any.
    pub modules: Vec<String>,
    /// Caller identities allowed to run under it (besides `local`).
    pub callers: Vec<String>,
    /// Limits.
    pub limits: PolicyLimits,
    /// Directories.
    pub preopens: Vec<Preopen>,
    /// Outbound network.
    pub network: NetworkPolicy,
    /// Environment variables, passed as given.
    pub env: BTreeMap<String, String>,
    /// Secret grants by name.
    pub secrets: BTreeMap<String, SecretGrant>,
}

/// The caller identity of runs started on this machine (CLI, plaintext
/// loopback). Reserved: only the transport grants it, never a certificate.
pub const LOCAL_CALLER: &str = "local";

/// The caller identity of a request without a usable client certificate
/// on a listener that is not plaintext loopback. Reserved like `local`.
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// Why a policy could not be loaded.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A preopen root of one policy lies inside, or contains, a root of
    /// another where either is `rw`: a guest writing one could redirect
    /// the other (replace a directory with a symlink to `/`).
    #[error(transparent)]
    OverlappingRoots(Box<RootOverlap>),
}

/// Two policies' preopen roots that nest where one is `rw` (see
/// [`check_roots`]).
#[derive(Debug, Error)]
#[error(
    "{}: `{root}` (policy `{policy}`) {relation} `{other_root}`, a root of policy \
     `{other_policy}` ({}); a guest that can write one could redirect or read the other: \
     give each policy its own directory",
    path.display(),
    other_path.display()
)]
pub struct RootOverlap {
    /// The file of the policy reported.
    pub path: PathBuf,
    /// Its name.
    pub policy: String,
    /// Its root, with its mode.
    pub root: String,
    /// `lies inside` or `contains`.
    pub relation: &'static str,
    /// The other policy's file.
    pub other_path: PathBuf,
    /// The other policy's name.
    pub other_policy: String,
    /// The other policy's root, with its mode.
    pub other_root: String,
}

impl PolicyError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidRequest
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Policy {
    /// The empty policy: no files, network, environment or secrets; host
    /// limits; any module; local callers only.
    pub fn deny_all() -> Self {
        Self {
            name: "deny-all".into(),
            description: "The default: no capabilities at all.".into(),
            source: None,
            sha256: String::new(),
            modules: Vec::new(),
            callers: Vec::new(),
            limits: PolicyLimits::default(),
            preopens: Vec::new(),
            network: NetworkPolicy::default(),
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }

    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates policy `text`; `path` is used in errors and recorded.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_column(text, span.start);
            PolicyError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let raw: file::RawPolicy = toml::from_str(text).map_err(|e| {
            at(
                e.span().unwrap_or(0..0),
                e.message().trim().replace('\n', " "),
            )
        })?;
        let mut policy = raw.validate().map_err(|e| at(e.span, e.message))?;
        policy.source = Some(path.to_path_buf());
        policy.sha256 = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(policy)
    }

    /// The limits this policy asks for, as a request on top of the host caps.
    pub fn limits_request(&self) -> LimitsRequest {
        LimitsRequest {
            fuel: self.limits.fuel.map(FuelRequest::Budget),
            memory_bytes: self.limits.memory_mb.map(|m| m.saturating_mul(1024 * 1024)),
            timeout: self.limits.timeout,
            output_bytes: self.limits.output_kb.map(|k| k.saturating_mul(1024)),
            log_records: None,
            cpu_percent: self.limits.cpu_percent,
        }
    }

    /// Whether `caller` may run modules under this policy. `local` (the CLI
    /// and loopback without TLS) always may.
    pub fn allows_caller(&self, caller: &str) -> bool {
        caller == LOCAL_CALLER || self.callers.iter().any(|c| c == caller)
    }

    /// Whether the module with sha256 `id` may run under this policy.
    pub fn allows_module(&self, id: &str) -> bool {
        self.modules.is_empty() || self.modules.iter().any(|m| m == id)
    }
}

#[cfg(test)]
mod tests;
