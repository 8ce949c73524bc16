//! `chassis serve`: the `chassis.v1` gRPC API with health, reflection, TLS
//! and mTLS caller identity, backpressure and graceful shutdown.

pub mod identity;
pub mod proto;
mod refusal;
mod runbooks;
mod service;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

pub use service::{ChassisService, DROPPED_FIELD, STREAM_BUFFER_EVENTS};

use crate::Host;
use crate::audit::Event;
use crate::config::Config;
use crate::policy::PolicySet;
use proto::chassis_server::ChassisServer;

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file could not be read.
    #[error("reading TLS file {}: {source}", path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// The claim store could not be opened.
    #[error("coordinator: {0}")]
    Coordinator(#[from] crate::coord::CoordError),
}

/// How long after the shutdown grace period the server waits for the
/// interrupted runs' answers before it stops waiting for connections.
pub const FORCE_CLOSE_AFTER: Duration = Duration::from_secs(1);

fn read(path: &Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::TlsFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Registers the claim store and the audit log with `/health` on the
/// metrics port. Smoke checks read `"etcd": "connected"`, so an
/// etcd-backed host reports the store under that name as well.
fn register_health(
    coordinator: &crate::coord::Coordinator,
    audit: Option<&std::sync::Arc<crate::audit::AuditLog>>,
) {
    use crate::telemetry::health::{self, PartState};
    let store = coordinator.clone();
    let state = move || {
        if store.is_up() {
            PartState::up("connected")
        } else {
            PartState::down("disconnected")
        }
    };
    if coordinator.store().backend() == "etcd" {
        health::register("etcd", state.clone());
    }
    health::register("claim_store", state);
    match audit {
        Some(log) => {
            let log = log.clone();
            health::register("audit", move || {
                if log.is_healthy() {
                    PartState::up("healthy")
                } else {
                    PartState::down("failing")
                }
            });
        }
        None => health::register("audit", || PartState::up("off")),
    }
}

/// Binds the configured listen address. Separate from [`serve`] so callers
/// (and tests using port 0) learn the address before serving.
pub async fn bind(config: &Config) -> Result<TcpListener, ServeError> {
    let addr = config.server.listen;
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The connections `listener` accepts, with Nagle's algorithm off: a
/// response is a few small HTTP/2 frames, and holding one back until the
/// client acknowledges the last (which it may delay by 40 ms) put a 40 ms
/// step into the served p99 under concurrency.
pub fn accepted(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not turn Nagle's algorithm off on a connection");
        }
        Ok(stream)
    })
}

/// Serves `host` on `listener`, running runbook steps from `store`
/// as `coordinator_options` say, until `shutdown` resolves, then stops
/// accepting, reports NOT_SERVING, lets in-flight runs finish for
/// `server.shutdown_grace_seconds`, interrupts the rest with UNAVAILABLE and
/// returns once every request has been answered.
pub async fn serve(
    config: &Config,
    host: Host,
    policies: PolicySet,
    store: std::sync::Arc<dyn crate::coord::ClaimStore>,
    coordinator_options: crate::coord::CoordinatorOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (interrupt_tx, interrupt_rx) = watch::channel(false);
    let audit = host.audit().cloned();
    let leases_host = host.clone();
    let interrupt_host = host.clone();
    if let Some(log) = &audit {
        let _ = log.event(Event::HostStart {
            version: env!("CARGO_PKG_VERSION"),
            listen: listener.local_addr().ok().map(|a| a.to_string()),
            tls: config.server.tls.is_some(),
            policies: policies.len(),
        });
        for p in policies.iter() {
            let _ = log.event(Event::PolicyLoaded {
                policy: &p.name,
                sha256: &p.sha256,
                file: p.source.as_ref().map(|s| s.display().to_string()),
            });
        }
    }
    let policies = std::sync::Arc::new(policies);
    let coordinator =
        crate::coord::Coordinator::new(store, host.clone(), policies.clone(), coordinator_options);
    let claims = coordinator.start();
    register_health(&coordinator, audit.as_ref());
    let service = ChassisService::new(
        host,
        policies,
        config.sandbox_pool.max_size,
        Duration::from_millis(config.sandbox_pool.queue_timeout_ms),
        config.runtime.max_module_mb * 1024 * 1024,
        interrupt_rx.clone(),
        coordinator,
    )
    .with_identity(
        identity::IdentityRules {
            tls: config.server.tls.is_some(),
            cn_fallback: config
                .server
                .tls
                .as_ref()
                .is_some_and(|t| t.identity_from_cn),
        },
        config.server.admins.clone(),
    )
    .with_caller_quota(config.sandbox_pool.per_caller_max_size);
    let max_message = (config.server.max_request_mb * 1024 * 1024) as usize;
    let chassis = ChassisServer::new(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ChassisServer<ChassisService>>()
        .await;
    // Reflection in both versions: grpcurl and current tools speak v1;
    // Python's grpcio-reflection client, older grpcurl, Postman, Evans and
    // grpcui speak v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    // One span per RPC, continuing the caller's trace when its metadata
    // carries a W3C `traceparent`; runs, secret reads, claims and compiles
    // inside it are its children.
    let mut builder = tonic::transport::Server::builder().trace_fn(|request| {
        let span = tracing::info_span!(
            crate::telemetry::traces::RPC_SPAN,
            otel.name = %request.uri().path(),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %request.uri().path(),
        );
        crate::telemetry::traces::continue_from_headers(&span, request.headers());
        span
    });
    if let Some(tls) = &config.server.tls {
        let identity = Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?);
        let mut tls_config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca_file {
            tls_config = tls_config
                .client_ca_root(Certificate::from_pem(read(ca)?))
                .client_auth_optional(!tls.require_client_cert);
        }
        builder = builder.tls_config(tls_config)?;
    }
    let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, tls = config.server.tls.is_some(), "chassis serving gRPC");
    let stop = async move {
        shutdown.await;
        tracing::info!(
            grace_s = grace.as_secs(),
            "shutting down: no new connections, draining runs"
        );
        health_reporter
            .set_not_serving::<ChassisServer<ChassisService>>()
            .await;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tracing::warn!("shutdown grace period over: interrupting the runs still going");
            interrupt_host.interrupting_runs();
            let _ = interrupt_tx.send(true);
        });
    };
    let serving = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(chassis)
        .serve_with_incoming_shutdown(accepted(listener), stop);
    // tonic waits for every connection to close, and a client that stops
    // reading (a zero HTTP/2 window) never lets its response finish. Once
    // the grace period is over and the interrupted runs have had
    // FORCE_CLOSE_AFTER to answer, stop waiting for such connections.
    let mut interrupted = interrupt_rx;
    let forced = async move {
        if interrupted.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(FORCE_CLOSE_AFTER).await;
    };
    tokio::select! {
        served = serving => served?,
        () = forced => tracing::warn!(
            after_grace_ms = FORCE_CLOSE_AFTER.as_millis() as u64,
            "connections still open after the grace period (clients not reading their responses); closing them"
        ),
    }
    // Running steps record their results; claims left are dropped with the
    // session so other hosts take them over at once.
    claims.stop(grace).await;
    // Runs interrupted at shutdown left their leases queued: revoke them
    // (and any still retrying) before the host says it stopped.
    let unrevoked = leases_host
        .drain_leases(grace.max(Duration::from_secs(5)))
        .await;
    if let Some(log) = &audit {
        for lease_id in &unrevoked {
            let _ = log.event(Event::LeaseRevokeFailed {
                run_id: None,
                lease_id,
                attempts: None,
                error: "host stopped before the lease could be revoked; it expires at its TTL",
            });
        }
        let _ = log.event(Event::HostStop {
            reason: "shutdown signal",
        });
        if let Err(e) = log.close() {
            tracing::error!(error = %e, "closing the audit log");
        }
    }
    tracing::info!("chassis stopped");
    Ok(())
}
