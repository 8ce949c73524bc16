//! The composition root: the one place a [`Config`] becomes a host.
//!
//! [`assemble`] opens what a config names (the data dir, the policies, the
//! secret provider, the audit log) and builds the [`Host`] from its limits
//! and pool settings; [`run`] adds what a served host needs besides
//! (metrics and `/health`, the secret keep-alive, the claim store and its
//! coordinator) and serves `chassis.v1` until its shutdown future resolves.
//! `chassis serve`, `chassis runbook run` and the in-process test server
//! build their hosts here, so a setting means the same thing whichever way
//! a host starts.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::Host;
use crate::audit::{AuditError, AuditLog};
use crate::config::{AuditFsync, Config, ConfigError, CoordinatorBackend};
use crate::grpc::ServeError;
use crate::policy::{PolicyError, PolicySet};
use crate::secrets::{
    AppRole, DEFAULT_LOCAL_FILE, LocalFileProvider, SecretError, SecretProvider, SecretValue,
    TokenSource, VaultOptions, VaultProvider,
};
use crate::telemetry::TelemetryError;
use crate::telemetry::health::{self, PartState};

/// Why a host could not be assembled or served.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A policy file in `policies_dir` is invalid.
    #[error(transparent)]
    Policies(#[from] PolicyError),
    /// The data dir could not be created.
    #[error("creating the data dir {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A policy's `rw` preopen shares the data dir's filesystem.
    #[error(transparent)]
    SharedFilesystem(#[from] crate::disk::SharedFilesystem),
    /// `credentials` names a secret provider that cannot be used.
    #[error("chassis.credentials: {0}")]
    Secrets(#[source] SecretError),
    /// The audit log could not be opened.
    #[error("opening the audit log in {}: {source}", dir.display())]
    Audit {
        /// Its directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: AuditError,
    },
    /// A policy sets a fuel budget on a host that meters no fuel
    /// (`runtime.metering = "epoch"`): every run under it would be refused,
    /// so the host refuses to start instead.
    #[error(
        "policy `{policy}` ({}) sets limits.fuel = {fuel}, but runtime.metering = \"epoch\" meters no fuel, so every run under it would be refused: remove the limit or meter \"fuel\"",
        file.display()
    )]
    FuelNotMetered {
        /// The policy's name.
        policy: String,
        /// Its file.
        file: PathBuf,
        /// The budget it sets.
        fuel: u64,
    },
    /// The host could not start (engine, pool, data dir).
    #[error("starting the host (data dir {}): {source}", data_dir.display())]
    Host {
        /// The data dir it was given.
        data_dir: PathBuf,
        /// Why.
        #[source]
        source: crate::HostError,
    },
    /// The metrics port could not be served.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The gRPC server could not start or failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// What a config opens before anything is served: the host and what it
/// was built from.
pub struct Assembled {
    /// The host, with the config's caps, pool, compile limits, data dir,
    /// audit log and secret provider.
    pub host: Host,
    /// The policies of `policies_dir` (none without one).
    pub policies: PolicySet,
    /// The secret provider `credentials` names, if any.
    pub secrets: Option<Arc<dyn SecretProvider>>,
}

impl std::fmt::Debug for Assembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembled")
            .field("policies", &self.policies.len())
            .field("secrets", &self.secrets.as_ref().map(|s| s.describe()))
            .finish_non_exhaustive()
    }
}

impl Host {
    /// The host `config` describes (see [`assemble`]), for callers that
    /// need only the host.
    pub fn from_config(
        config: &Config,
        vault_token: Option<SecretValue>,
    ) -> Result<Host, ServerError> {
        Ok(assemble(config, vault_token)?.host)
    }
}

/// Opens what `config` names and builds its host. `vault_token` is the
/// token for `credentials.vault_addr` when no `vault_token_path` is set
/// (the binary passes `VAULT_TOKEN`). Creates the data dir; refuses a
/// policy whose `rw` root shares its filesystem unless
/// `runtime.allow_shared_filesystem`.
pub fn assemble(
    config: &Config,
    vault_token: Option<SecretValue>,
) -> Result<Assembled, ServerError> {
    config.validate("the configuration")?;
    let policies = match &config.policies_dir {
        Some(dir) => PolicySet::load_dir(dir)?,
        None => PolicySet::default(),
    };
    if config.runtime.metering == crate::limits::Metering::Epoch {
        if let Some((policy, fuel)) = policies
            .iter()
            .find_map(|p| p.limits.fuel.map(|fuel| (p, fuel)))
        {
            return Err(ServerError::FuelNotMetered {
                policy: policy.name.clone(),
                file: policy.source.clone().unwrap_or_default(),
                fuel,
            });
        }
        // Under `fuel` a run that asks for nothing still stops after the
        // default budget (about 10 s of busy guest code); here only its
        // deadline and CPU share stop it.
        tracing::warn!(
            max_execution_time_seconds = config.runtime.max_execution_time_seconds,
            max_cpu_percent = config.runtime.max_cpu_percent,
            "runtime.metering = \"epoch\": runs have no fuel budget, so a busy guest runs until its timeout at its CPU share; keep policy timeouts tight"
        );
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    crate::disk::check_shared_filesystem(
        policies.iter().map(|p| p.as_ref()),
        &config.data_dir,
        config.runtime.allow_shared_filesystem,
    )?;
    let mut builder = Host::builder();
    let secrets = secret_provider(&config.credentials, &config.data_dir, vault_token)
        .map_err(ServerError::Secrets)?;
    match &secrets {
        Some(provider) => {
            tracing::info!(source = %provider.describe(), "secrets");
            builder = builder.secrets(provider.clone());
        }
        None => tracing::info!("no secret provider: runs whose policy grants a secret are refused"),
    }
    if let Some(options) = audit_options(config) {
        let dir = options.dir.clone();
        let log = AuditLog::open(options).map_err(|source| ServerError::Audit { dir, source })?;
        builder = builder.audit(log);
        if let Some(floor) = audit_floor(config) {
            tracing::info!(free_bytes = floor.free_bytes(), "audit log free space");
            builder = builder.audit_floor(floor);
        }
    }
    let host = builder
        .caps(config.host_caps())
        .pool_slots(config.sandbox_pool.max_size)
        .warm_slots(if config.sandbox_pool.enabled {
            config.sandbox_pool.min_size
        } else {
            0
        })
        .keep_resident(config.sandbox_pool.keep_resident_kib * 1024)
        .slo_target(Duration::from_millis(config.slo.target_latency_p95_ms))
        .max_module_bytes(config.runtime.max_module_mb * 1024 * 1024)
        .compile_limits(compile_limits(config))
        .data_dir(&config.data_dir)
        .build()
        .map_err(|source| ServerError::Host {
            data_dir: config.data_dir.clone(),
            source,
        })?;
    Ok(Assembled {
        host,
        policies,
        secrets,
    })
}

/// Serves `assembled` on `listener` (see [`crate::grpc::bind`]) as
/// `config` says until `shutdown` resolves: metrics and `/health` on the
/// metrics port when enabled (reporting the claim store as connecting
/// until it is joined), the secret provider kept logged in, then
/// `announce(address)`, then the claim store joined and `chassis.v1`
/// served with graceful shutdown ([`crate::grpc::serve`]). Whoever waits
/// for the announcement finds `/health` already answering for every part.
pub async fn run(
    config: &Config,
    assembled: Assembled,
    listener: TcpListener,
    announce: impl FnOnce(std::net::SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Assembled {
        host,
        policies,
        secrets,
    } = assembled;
    if config.metrics.enabled {
        let addr = std::net::SocketAddr::new(config.metrics.address, config.metrics.port);
        crate::telemetry::install_prometheus(
            addr,
            config.memory_limit_mb(),
            config.slo.target_latency_p95_ms,
            config.slo.target_availability_percent,
        )?;
        if config.audit.enabled {
            // The audit log opened before the exporter existed, so the
            // zero it registered went nowhere: register its counters now,
            // or the audit alert would miss the first failure.
            metrics::counter!(crate::audit::WRITE_FAILURES_TOTAL).increment(0);
            metrics::counter!(crate::audit::RECORDS_TOTAL).increment(0);
            // Its free-space gauges are set when it is measured: measure now.
            if let Some(floor) = host.audit_floor() {
                floor.publish();
            }
        }
        tracing::info!(%addr, "metrics on /metrics");
    }
    tracing::info!(policies = policies.len(), "loaded policies");
    // Unhealthy until the server has joined its claim store and serves.
    health::register("claim_store", || PartState::down("connecting"));
    match secrets {
        Some(provider) => {
            // Log in now and renew before expiry even when no run reads a
            // secret for a while; a failure only warns (runs report it) and
            // shows on /health until the next keep-alive works.
            let reachable = Arc::new(AtomicBool::new(true));
            let shown = reachable.clone();
            health::register("secrets", move || {
                if shown.load(Ordering::Relaxed) {
                    PartState::up("reachable")
                } else {
                    PartState::down("unreachable")
                }
            });
            tokio::spawn(crate::secrets::keep_alive(provider, move |result| {
                reachable.store(result.is_ok(), Ordering::Relaxed);
                if let Err(e) = result {
                    tracing::warn!(error = %e, "secret provider keep-alive");
                }
            }));
        }
        None => health::register("secrets", || PartState::up("none")),
    }
    if let Ok(addr) = listener.local_addr() {
        announce(addr);
    }
    let store = open_claim_store(config)
        .await
        .map_err(ServeError::Coordinator)?;
    crate::grpc::serve(
        config,
        host,
        policies,
        store,
        coordinator_options(config),
        listener,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Opens the claim store the config names: etcd, or the in-process store.
pub async fn open_claim_store(
    config: &Config,
) -> Result<Arc<dyn crate::coord::ClaimStore>, crate::coord::CoordError> {
    Ok(match etcd_options(config) {
        Some(options) => Arc::new(crate::coord::EtcdStore::connect(&options).await?),
        None => Arc::new(crate::coord::MemoryStore::new()),
    })
}

/// How to open the audit log, or `None` when it is disabled.
pub fn audit_options(config: &Config) -> Option<crate::audit::AuditOptions> {
    if !config.audit.enabled {
        return None;
    }
    let mut options = crate::audit::AuditOptions::in_data_dir(&config.data_dir);
    if let Some(dir) = &config.audit.dir {
        options.dir = dir.clone();
    }
    if let Some(key) = &config.audit.key_file {
        options.key_file = key.clone();
    }
    options.fsync = match config.audit.fsync {
        AuditFsync::Every => crate::audit::FsyncPolicy::Every,
        AuditFsync::Batch => crate::audit::FsyncPolicy::Batch {
            records: config.audit.batch_records,
            interval_ms: config.audit.batch_interval_ms,
        },
    };
    options.max_file_bytes = config.audit.max_file_mb.max(1) * 1024 * 1024;
    options.fail_open = config.audit.fail_open;
    options.retain = (config.audit.retain_days > 0)
        .then(|| Duration::from_secs(config.audit.retain_days.saturating_mul(86_400)));
    options.archive_dir = config.audit.archive_dir.clone();
    Some(options)
}

/// The free-space floor under the audit log, when it is on and set.
/// With `fail_open` the level is still measured and exported, but no
/// record is refused for it.
pub fn audit_floor(config: &Config) -> Option<crate::disk::FreeSpaceFloor> {
    let options = audit_options(config)?;
    let floor = match config.audit.fail_open {
        true => 0,
        false => config.audit.min_free_mb.saturating_mul(1024 * 1024),
    };
    (config.audit.min_free_mb > 0).then(|| crate::disk::FreeSpaceFloor::new(options.dir, floor))
}

/// How to reach etcd, when the backend is etcd.
pub fn etcd_options(config: &Config) -> Option<crate::coord::EtcdOptions> {
    if config.coordinator.backend != CoordinatorBackend::Etcd {
        return None;
    }
    let etcd = config.coordinator.etcd.as_ref()?;
    Some(crate::coord::EtcdOptions {
        endpoints: etcd.endpoints.clone(),
        timeout: Duration::from_secs(etcd.timeout_seconds.max(1)),
        ca_cert: etcd.ca_cert.clone(),
        cert_file: etcd.cert_file.clone(),
        key_file: etcd.key_file.clone(),
    })
}

/// How this host takes part in runbooks.
pub fn coordinator_options(config: &Config) -> crate::coord::CoordinatorOptions {
    let mut options = crate::coord::CoordinatorOptions::new(
        config
            .coordinator
            .host_id
            .clone()
            .unwrap_or_else(crate::coord::default_holder),
    );
    options.claim_ttl = Duration::from_secs(config.coordinator.task_claim_ttl_seconds);
    options.max_concurrent_steps = match config.coordinator.max_concurrent_steps {
        0 => config.sandbox_pool.max_size as usize,
        n => n as usize,
    };
    options
}

/// How compiles for callers are bounded (`runtime.max_concurrent_compiles`,
/// `runtime.compile_queue_timeout_ms`).
pub fn compile_limits(config: &Config) -> crate::modules::CompileLimits {
    crate::modules::CompileLimits {
        concurrency: match config.runtime.max_concurrent_compiles {
            0 => crate::modules::default_compile_concurrency(),
            n => n as usize,
        },
        queue_timeout: Duration::from_millis(config.runtime.compile_queue_timeout_ms),
    }
}

/// The provider `credentials` describes:
///
/// - `vault_addr` set: Vault, authenticated by `vault_token_path`, else
///   `vault_token` (the `VAULT_TOKEN` variable), else `approle`;
/// - otherwise `local_file`, which must exist and be private;
/// - otherwise `<data_dir>/secrets.toml` if it exists;
/// - otherwise none: runs whose policy grants a secret are refused.
pub fn secret_provider(
    credentials: &crate::config::Credentials,
    data_dir: &std::path::Path,
    vault_token: Option<SecretValue>,
) -> Result<Option<Arc<dyn SecretProvider>>, SecretError> {
    if let Some(addr) = &credentials.vault_addr {
        let token = match (&credentials.vault_token_path, vault_token) {
            (Some(path), _) => Some(TokenSource::File(path.clone())),
            (None, Some(value)) => Some(TokenSource::Value(value)),
            (None, None) => None,
        };
        let provider = VaultProvider::new(VaultOptions {
            addr: addr.clone(),
            namespace: credentials.vault_namespace.clone(),
            cacert: credentials.vault_cacert.clone(),
            timeout: Duration::from_secs(credentials.timeout_seconds),
            token,
            approle: credentials.approle.as_ref().map(|a| AppRole {
                mount: a.mount.clone(),
                role_id: a.role_id.clone(),
                secret_id_path: a.secret_id_path.clone(),
            }),
        })?;
        return Ok(Some(Arc::new(provider)));
    }
    if let Some(path) = &credentials.local_file {
        return Ok(Some(Arc::new(LocalFileProvider::open(path)?)));
    }
    let default = data_dir.join(DEFAULT_LOCAL_FILE);
    if default.exists() {
        return Ok(Some(Arc::new(LocalFileProvider::open(default)?)));
    }
    Ok(None)
}
