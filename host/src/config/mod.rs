//! The host configuration file (`chassis.production.yaml`).
//!
//! The `chassis:` document: `runtime`, `credentials`, `slo`, `metrics`,
//! `logging` and `sandbox_pool` as IF.chassis deployments already write
//! them, plus what serving needs (listen address, TLS files, data and
//! policy dirs) in the same style under `server`, `data_dir` and
//! `policies_dir`; the coordinator keys (`etcd.endpoints`, `timeout_seconds`, `ca_cert`,
//! `cert_file`, `key_file`, `task_claim_ttl_seconds`) live under
//! `coordinator`. Unknown
//! keys are errors. `CHASSIS_*` environment variables override the file
//! (see [`ENV_OVERRIDES`]).

mod env;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use env::ENV_OVERRIDES;

use crate::error::ErrorKind;
use crate::limits::HostCaps;

/// Why a configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or has an unknown key or a wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("{source_name}: `{key}`: {message}")]
    Invalid {
        /// The file, or the environment variable, the value came from.
        source_name: String,
        /// The dotted key, e.g. `chassis.sandbox_pool.min_size`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidRequest
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    chassis: Config,
}

/// The whole configuration; every default is a production value
/// (`deploy/chassis.production.yaml` spells them out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The wasm runtime and per-sandbox caps.
    pub runtime: Runtime,
    /// Where secrets come from.
    pub credentials: Credentials,
    /// Latency objective.
    pub slo: Slo,
    /// Prometheus exporter.
    pub metrics: Metrics,
    /// Log level, format and destination.
    pub logging: Logging,
    /// Concurrency cap and warm slots.
    pub sandbox_pool: SandboxPool,
    /// The gRPC listener.
    pub server: Server,
    /// Compiled artifacts and keys.
    pub data_dir: PathBuf,
    /// Directory of policy files (`*.toml`) served by name.
    pub policies_dir: Option<PathBuf>,
    /// The tamper-evident audit log.
    pub audit: Audit,
    /// Where runbook step claims live: etcd or the in-process store.
    pub coordinator: Coordinator,
    /// OpenTelemetry traces.
    pub telemetry: Telemetry,
}

/// `chassis.telemetry`: OpenTelemetry traces, off unless an endpoint is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// OTLP/gRPC collector to send spans to, e.g. `http://127.0.0.1:4317`;
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` sets it when this is empty.
    pub otlp_endpoint: Option<String>,
}

impl Telemetry {
    /// The collector to use: this file's, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty())
    }
}

/// `chassis.coordinator`: the claim store and how this host takes part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Coordinator {
    /// `in-process` (one host, the embedded default) or `etcd`.
    pub backend: CoordinatorBackend,
    /// The etcd cluster (`backend: etcd`).
    pub etcd: Option<Etcd>,
    /// How long a dead host's step claims outlive it.
    pub task_claim_ttl_seconds: u64,
    /// Steps this host runs at once; 0 means `sandbox_pool.max_size`.
    pub max_concurrent_steps: u32,
    /// This host's name in claims; default `<hostname>-<pid>`.
    pub host_id: Option<String>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self {
            backend: CoordinatorBackend::InProcess,
            etcd: None,
            task_claim_ttl_seconds: 300,
            max_concurrent_steps: 0,
            host_id: None,
        }
    }
}

/// `chassis.coordinator.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoordinatorBackend {
    /// Claims kept in this process.
    InProcess,
    /// Claims kept in etcd, shared by every host.
    Etcd,
}

/// `chassis.coordinator.etcd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// Client URLs (`https://etcd-1:2379`) or `host:port`.
    pub endpoints: Vec<String>,
    /// Bound on connecting and on each request.
    #[serde(default = "five")]
    pub timeout_seconds: u64,
    /// CA for the servers' certificates; enables TLS.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (mTLS).
    pub cert_file: Option<PathBuf>,
    /// Client key (mTLS).
    pub key_file: Option<PathBuf>,
}

fn five() -> u64 {
    5
}

/// `chassis.audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Write the audit log (`chassis serve`).
    pub enabled: bool,
    /// Directory of log files; default `<data_dir>/audit`.
    pub dir: Option<PathBuf>,
    /// Signing key; default `<data_dir>/keys/audit.ed25519`, created if absent.
    pub key_file: Option<PathBuf>,
    /// `every` record, or `batch` (at most `batch_records` or `batch_interval_ms` unsynced).
    pub fsync: AuditFsync,
    /// Records per signed checkpoint in batch mode (the writer syncs once
    /// per round, which under load covers several batches).
    pub batch_records: u32,
    /// Longest time between checkpoints (and so fsyncs) in batch mode.
    pub batch_interval_ms: u64,
    /// Start a new file past this size.
    pub max_file_mb: u64,
    /// Keep running when the log cannot be written (counted); default: fail closed.
    pub fail_open: bool,
    /// Refuse runs while the audit log's filesystem has less than this free
    /// (MiB), before it is full; 0 turns the floor off. Default 256.
    pub min_free_mb: u64,
    /// Public keys `chassis audit verify --config` trusts: hex keys or files
    /// of them, kept apart from the log (not `keys/audit.pub` beside it).
    pub trusted_keys: Vec<String>,
    /// Prune closed (rotated) log files last written more than this many
    /// days ago, at start-up and at each rotation, recording each pruning
    /// in the log; 0 keeps every file. Default 90.
    pub retain_days: u64,
    /// Move pruned files here instead of deleting them.
    pub archive_dir: Option<PathBuf>,
}

/// `chassis.audit.fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFsync {
    /// fsync after every record.
    Every,
    /// fsync in bounded batches.
    Batch,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            key_file: None,
            fsync: AuditFsync::Batch,
            batch_records: 256,
            batch_interval_ms: 50,
            max_file_mb: 64,
            fail_open: false,
            min_free_mb: 256,
            trusted_keys: Vec::new(),
            retain_days: 90,
            archive_dir: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runtime: Runtime::default(),
            credentials: Credentials::default(),
            slo: Slo::default(),
            metrics: Metrics::default(),
            logging: Logging::default(),
            sandbox_pool: SandboxPool::default(),
            server: Server::default(),
            data_dir: PathBuf::from(".chassis"),
            policies_dir: None,
            audit: Audit::default(),
            coordinator: Coordinator::default(),
            telemetry: Telemetry::default(),
        }
    }
}

/// The wasm engine chassis runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineName {
    /// wasmtime, the only engine chassis embeds.
    Wasmtime,
    /// Named in older configs' comments; refused with an explanation
    /// (chassis embeds wasmtime only).
    Wasmer,
}

/// `chassis.runtime`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Must be `wasmtime`.
    pub engine: EngineName,
    /// Per-sandbox linear memory cap.
    pub max_memory_mb: u64,
    /// Share of one core a sandbox may use.
    pub max_cpu_percent: u8,
    /// Wall-clock cap per run.
    pub max_execution_time_seconds: u64,
    /// Fuel cap per run; absent lets a run be unmetered.
    pub max_fuel: Option<u64>,
    /// How busy guest code is metered: `fuel` (default: a fuel budget per
    /// run and epoch deadlines) or `epoch` (deadlines and CPU share only,
    /// no fuel budget; cheaper for CPU-bound guests). Changing it
    /// recompiles every module, and under `epoch` a policy or request that
    /// asks for a fuel budget is refused.
    pub metering: crate::limits::Metering,
    /// Largest `.wasm` accepted by RegisterModule.
    pub max_module_mb: u64,
    /// Allow a policy's `rw` preopen on the data dir's filesystem. A guest
    /// can then fill the disk the audit log needs and stop every run on
    /// the host; off by default, so such a policy refuses to start.
    pub allow_shared_filesystem: bool,
    /// Modules compiled at once for callers (RegisterModule, runbook module
    /// files, steps fetching a module), and compile threads they share; 0
    /// means half the cores, at least one, so compiles never take every
    /// core from running sandboxes.
    pub max_concurrent_compiles: u32,
    /// How long a compile waits for its turn before RESOURCE_EXHAUSTED.
    pub compile_queue_timeout_ms: u64,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            engine: EngineName::Wasmtime,
            max_memory_mb: 512,
            max_cpu_percent: 100,
            max_execution_time_seconds: 300,
            max_fuel: None,
            metering: crate::limits::Metering::Fuel,
            max_module_mb: 64,
            allow_shared_filesystem: false,
            max_concurrent_compiles: 0,
            compile_queue_timeout_ms: 60_000,
        }
    }
}

/// `chassis.credentials`: where the secrets that policies grant come from.
///
/// With `vault_addr`, Vault (the provider in `secrets::vault`);
/// without it, a local secrets file (`local_file`, by default
/// `<data_dir>/secrets.toml` when it exists). The Vault token itself is
/// never part of the configuration: it comes from `vault_token_path`,
/// `VAULT_TOKEN` or an AppRole login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Credentials {
    /// Vault's address (`VAULT_ADDR`).
    pub vault_addr: Option<String>,
    /// File holding the Vault token.
    pub vault_token_path: Option<PathBuf>,
    /// Vault Enterprise namespace (`VAULT_NAMESPACE`).
    pub vault_namespace: Option<String>,
    /// PEM CA bundle for Vault's certificate (`VAULT_CACERT`).
    pub vault_cacert: Option<PathBuf>,
    /// AppRole login, used when there is no token and whenever it lapses.
    pub approle: Option<AppRoleConfig>,
    /// Bound on each secret read, lease revocation and login.
    pub timeout_seconds: u64,
    /// Local secrets file (mode 0600) when there is no Vault.
    pub local_file: Option<PathBuf>,
}

impl Default for Credentials {
    fn default() -> Self {
        Self {
            vault_addr: None,
            vault_token_path: None,
            vault_namespace: None,
            vault_cacert: None,
            approle: None,
            timeout_seconds: 5,
            local_file: None,
        }
    }
}

/// `chassis.credentials.approle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoleConfig {
    /// The role id.
    pub role_id: String,
    /// File holding the secret id.
    pub secret_id_path: PathBuf,
    /// Where the AppRole auth method is mounted.
    #[serde(default = "approle_mount")]
    pub mount: String,
}

fn approle_mount() -> String {
    "approle".into()
}

/// `chassis.slo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    /// Runs slower than this count as `if_chassis_slo_violations`.
    pub target_latency_p95_ms: u64,
    /// Availability objective, reported as a gauge for dashboards.
    pub target_availability_percent: f64,
}

impl Default for Slo {
    fn default() -> Self {
        Self {
            target_latency_p95_ms: 10,
            target_availability_percent: 99.9,
        }
    }
}

/// `chassis.metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Port of the Prometheus endpoint.
    pub port: u16,
    /// Address it binds (with `port`, which older configs give alone).
    pub address: IpAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 9092,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// `chassis.logging`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// `TRACE`, `DEBUG`, `INFO`, `WARN` or `ERROR` (any case).
    pub level: String,
    /// `json` or `text`.
    pub format: LogFormat,
    /// `stdout`, `stderr` or a file path (appended to).
    pub output: String,
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            level: "INFO".into(),
            format: LogFormat::Text,
            output: "stderr".into(),
        }
    }
}

impl Logging {
    /// The level as a tracing filter directive.
    pub fn filter(&self) -> String {
        self.level.to_ascii_lowercase()
    }
}

/// `chassis.sandbox_pool`: how many sandboxes run at once and how many
/// are kept instantiated ahead of demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxPool {
    /// Keep freed slots warm for reuse.
    pub enabled: bool,
    /// Warm slots kept (wasmtime's unused warm slots).
    pub min_size: u32,
    /// Sandboxes that may run at once; more requests wait.
    pub max_size: u32,
    /// How long a request waits for a slot before RESOURCE_EXHAUSTED.
    pub queue_timeout_ms: u64,
    /// Sandboxes one caller may hold at once; 0 means `max_size`. Callers
    /// waiting for a slot are served in turn either way, so one caller's
    /// backlog never queues the others behind it.
    pub per_caller_max_size: u32,
    /// KiB of a freed slot's linear memory kept resident and reset in place
    /// for the next run instead of released (see
    /// [`crate::engine::DEFAULT_KEEP_RESIDENT`]); at most `max_size` times
    /// this stays resident. 0 releases every page after each run.
    pub keep_resident_kib: u64,
}

impl Default for SandboxPool {
    fn default() -> Self {
        Self {
            enabled: true,
            min_size: 10,
            max_size: 100,
            queue_timeout_ms: 1000,
            per_caller_max_size: 0,
            keep_resident_kib: crate::engine::DEFAULT_KEEP_RESIDENT / 1024,
        }
    }
}

/// `chassis.server.tls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// Require a client certificate (mTLS). On unless explicitly turned off.
    #[serde(default = "yes")]
    pub require_client_cert: bool,
    /// Take a client certificate's subject CN as its identity when it has
    /// no URI or DNS SAN. Off by default: a name-constrained sub-CA can
    /// issue a SAN-less certificate with any CN.
    #[serde(default)]
    pub identity_from_cn: bool,
}

fn yes() -> bool {
    true
}

/// `chassis.server`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// TLS; required for any non-loopback address.
    pub tls: Option<Tls>,
    /// Largest gRPC message accepted.
    pub max_request_mb: u64,
    /// On SIGTERM, how long in-flight runs may finish before being interrupted.
    pub shutdown_grace_seconds: u64,
    /// Caller identities allowed to register and remove modules, list
    /// policies and read any runbook. The default, `local`, exists only on
    /// a plaintext loopback listener, so a TLS host must name its admins.
    pub admins: Vec<String>,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls: None,
            max_request_mb: 16,
            shutdown_grace_seconds: 30,
            admins: vec![crate::policy::LOCAL_CALLER.to_string()],
        }
    }
}

impl Config {
    /// Reads `path`, applies `CHASSIS_*` overrides from the environment, and
    /// validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        config.apply_env(std::env::vars())?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// The defaults with `CHASSIS_*` overrides applied, validated.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut config = Self::default();
        config.apply_env(std::env::vars())?;
        config.validate("defaults")?;
        Ok(config)
    }

    /// Parses YAML text without environment overrides or validation.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e
                    .to_string()
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            }
        })?;
        Ok(file.chassis)
    }

    /// Checks ranges and the rules between keys.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            source_name: source_name.to_string(),
            key: format!("chassis.{key}"),
            message,
        };
        if self.runtime.engine == EngineName::Wasmer {
            return Err(bad(
                "runtime.engine",
                "chassis embeds wasmtime only; set `engine: wasmtime`".into(),
            ));
        }
        if self.runtime.max_memory_mb == 0 || self.runtime.max_memory_mb > 64 * 1024 {
            return Err(bad(
                "runtime.max_memory_mb",
                "must be from 1 to 65536".into(),
            ));
        }
        if !(1..=100).contains(&self.runtime.max_cpu_percent) {
            return Err(bad(
                "runtime.max_cpu_percent",
                "must be from 1 to 100".into(),
            ));
        }
        if self.runtime.max_execution_time_seconds == 0 {
            return Err(bad(
                "runtime.max_execution_time_seconds",
                "must be greater than zero".into(),
            ));
        }
        if self.runtime.max_fuel == Some(0) {
            return Err(bad("runtime.max_fuel", "must be greater than zero".into()));
        }
        if self.runtime.metering == crate::limits::Metering::Epoch
            && let Some(cap) = self.runtime.max_fuel
        {
            return Err(bad(
                "runtime.max_fuel",
                format!(
                    "is {cap}, but runtime.metering = \"epoch\" meters no fuel: remove the cap or meter \"fuel\""
                ),
            ));
        }
        if self.sandbox_pool.max_size == 0 || self.sandbox_pool.max_size > 100_000 {
            return Err(bad(
                "sandbox_pool.max_size",
                "must be from 1 to 100000".into(),
            ));
        }
        if self.sandbox_pool.keep_resident_kib > self.runtime.max_memory_mb * 1024 {
            return Err(bad(
                "sandbox_pool.keep_resident_kib",
                format!(
                    "must be at most runtime.max_memory_mb ({} MiB = {} KiB)",
                    self.runtime.max_memory_mb,
                    self.runtime.max_memory_mb * 1024
                ),
            ));
        }
        if self.runtime.max_concurrent_compiles > 1024 {
            return Err(bad(
                "runtime.max_concurrent_compiles",
                "must be from 0 (half the cores) to 1024".into(),
            ));
        }
        if self.runtime.compile_queue_timeout_ms == 0 {
            return Err(bad(
                "runtime.compile_queue_timeout_ms",
                "must be greater than zero".into(),
            ));
        }
        if self.sandbox_pool.per_caller_max_size > self.sandbox_pool.max_size {
            return Err(bad(
                "sandbox_pool.per_caller_max_size",
                format!(
                    "{} is above max_size ({}); 0 means max_size",
                    self.sandbox_pool.per_caller_max_size, self.sandbox_pool.max_size
                ),
            ));
        }
        if self.sandbox_pool.min_size > self.sandbox_pool.max_size {
            return Err(bad(
                "sandbox_pool.min_size",
                format!(
                    "{} is above max_size ({})",
                    self.sandbox_pool.min_size, self.sandbox_pool.max_size
                ),
            ));
        }
        if !(0.0..=100.0).contains(&self.slo.target_availability_percent) {
            return Err(bad(
                "slo.target_availability_percent",
                "must be from 0 to 100".into(),
            ));
        }
        if self.logging.level.parse::<tracing::Level>().is_err() {
            return Err(bad(
                "logging.level",
                format!(
                    "`{}` is not one of TRACE, DEBUG, INFO, WARN, ERROR",
                    self.logging.level
                ),
            ));
        }
        if let Some(addr) = &self.credentials.vault_addr
            && !(addr.starts_with("https://") || addr.starts_with("http://"))
        {
            return Err(bad(
                "credentials.vault_addr",
                format!("`{addr}` is not an http(s) URL"),
            ));
        }
        let creds = &self.credentials;
        if creds.vault_addr.is_none() {
            for (key, set) in [
                (
                    "credentials.vault_token_path",
                    creds.vault_token_path.is_some(),
                ),
                (
                    "credentials.vault_namespace",
                    creds.vault_namespace.is_some(),
                ),
                ("credentials.vault_cacert", creds.vault_cacert.is_some()),
                ("credentials.approle", creds.approle.is_some()),
            ] {
                if set {
                    return Err(bad(
                        key,
                        "is set but `credentials.vault_addr` is not: set the address too".into(),
                    ));
                }
            }
        } else if creds.local_file.is_some() {
            return Err(bad(
                "credentials.local_file",
                "cannot be used together with `credentials.vault_addr`: choose one source".into(),
            ));
        }
        if !(1..=300).contains(&creds.timeout_seconds) {
            return Err(bad(
                "credentials.timeout_seconds",
                "must be from 1 to 300".into(),
            ));
        }
        if let Some(role) = &creds.approle
            && role.role_id.trim().is_empty()
        {
            return Err(bad(
                "credentials.approle.role_id",
                "must not be empty".into(),
            ));
        }
        if !self.server.listen.ip().is_loopback() && self.server.tls.is_none() {
            return Err(bad(
                "server.listen",
                format!(
                    "{} is not a loopback address, so `server.tls` (cert_file, key_file) is required",
                    self.server.listen
                ),
            ));
        }
        if let Some(tls) = &self.server.tls
            && tls.require_client_cert
            && tls.client_ca_file.is_none()
        {
            return Err(bad(
                "server.tls.client_ca_file",
                "client certificates are required (mTLS), so a CA to check them against is needed; \
                 or set require_client_cert: false"
                    .into(),
            ));
        }
        for admin in &self.server.admins {
            if admin.trim().is_empty() || admin == "*" {
                return Err(bad(
                    "server.admins",
                    format!(
                        "`{admin}` is not a caller identity; list each admin's certificate identity"
                    ),
                ));
            }
            if admin.eq_ignore_ascii_case(crate::policy::ANONYMOUS_CALLER) {
                return Err(bad(
                    "server.admins",
                    "`anonymous` is every caller without a certificate; it cannot be an admin"
                        .into(),
                ));
            }
        }
        if let Some(archive) = &self.audit.archive_dir {
            let dir = self
                .audit
                .dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("audit"));
            if archive == &dir {
                return Err(bad(
                    "audit.archive_dir",
                    "is the audit log's own directory; pruned files must leave it".into(),
                ));
            }
        }
        if self.audit.batch_records == 0 {
            return Err(bad(
                "audit.batch_records",
                "must be greater than zero".into(),
            ));
        }
        if self.server.max_request_mb == 0 {
            return Err(bad(
                "server.max_request_mb",
                "must be greater than zero".into(),
            ));
        }
        if self.coordinator.task_claim_ttl_seconds < 2 {
            return Err(bad(
                "coordinator.task_claim_ttl_seconds",
                "must be at least 2 (etcd's shortest lease)".into(),
            ));
        }
        match (&self.coordinator.backend, &self.coordinator.etcd) {
            (CoordinatorBackend::Etcd, None) => {
                return Err(bad(
                    "coordinator.etcd",
                    "`backend: etcd` needs `etcd.endpoints`".into(),
                ));
            }
            (CoordinatorBackend::Etcd, Some(etcd)) if etcd.endpoints.is_empty() => {
                return Err(bad("coordinator.etcd.endpoints", "is empty".into()));
            }
            (_, Some(etcd)) if etcd.cert_file.is_some() != etcd.key_file.is_some() => {
                return Err(bad(
                    "coordinator.etcd.cert_file",
                    "cert_file and key_file go together".into(),
                ));
            }
            (_, Some(etcd)) if etcd.cert_file.is_some() && etcd.ca_cert.is_none() => {
                return Err(bad(
                    "coordinator.etcd.ca_cert",
                    "a client certificate needs TLS: set ca_cert too".into(),
                ));
            }
            _ => {}
        }
        if self.metrics.enabled
            && self.metrics.port == self.server.listen.port()
            && self.metrics.address == self.server.listen.ip()
        {
            return Err(bad(
                "metrics.port",
                "is the same as the gRPC listen port".into(),
            ));
        }
        Ok(())
    }

    /// The caps every run is held within.
    pub fn host_caps(&self) -> HostCaps {
        HostCaps {
            max_fuel: self.runtime.max_fuel,
            metering: self.runtime.metering,
            max_memory_bytes: self.runtime.max_memory_mb * 1024 * 1024,
            max_timeout: Duration::from_secs(self.runtime.max_execution_time_seconds),
            max_cpu_percent: self.runtime.max_cpu_percent,
            ..HostCaps::default()
        }
    }

    /// Sandboxes all running at once could use this much linear memory: the
    /// denominator of the `ChassisMemoryHigh` alert.
    pub fn memory_limit_mb(&self) -> u64 {
        self.runtime.max_memory_mb * u64::from(self.sandbox_pool.max_size)
    }
}

#[cfg(test)]
mod tests;
