//! An in-process chassis server on an ephemeral loopback port, and clients.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part; shared by test crates"
)]

use std::net::SocketAddr;
use std::path::Path;

use chassis::Host;
use chassis::config::Config;
use chassis::grpc::proto::chassis_client::ChassisClient;
use chassis::grpc::proto::{self, RegisterModuleChunk};
use chassis::policy::{Policy, PolicySet};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub mod served;

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<Result<(), chassis::server::ServerError>>,
    /// The data dir when the config left it at its default, removed on drop.
    _data: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server the way `chassis serve` does, through the
    /// composition root ([`chassis::server`]), with `config` (its listen
    /// address replaced by an ephemeral loopback port, metrics off, a data
    /// dir of its own unless the config names one) and the given policies
    /// added to those of its `policies_dir`.
    pub async fn start(mut config: Config, policies: &[&str]) -> Self {
        let data = (config.data_dir == Config::default().data_dir).then(|| {
            let dir = tempfile::tempdir().unwrap();
            config.data_dir = dir.path().to_path_buf();
            dir
        });
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics.enabled = false;
        let mut assembled = chassis::server::assemble(&config, None).unwrap();
        add_policies(&mut assembled.policies, policies);
        Self::serve(config, assembled, data).await
    }

    /// Like [`start`](Self::start), serving a host the caller built (e.g.
    /// with a secret provider it staged).
    pub async fn start_with_host(mut config: Config, policies: &[&str], host: Host) -> Self {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics.enabled = false;
        let mut set = PolicySet::default();
        add_policies(&mut set, policies);
        let assembled = chassis::server::Assembled {
            host,
            policies: set,
            secrets: None,
        };
        Self::serve(config, assembled, None).await
    }

    async fn serve(
        config: Config,
        assembled: chassis::server::Assembled,
        data: Option<tempfile::TempDir>,
    ) -> Self {
        let listener = chassis::grpc::bind(&config).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let done = tokio::spawn(async move {
            chassis::server::run(&config, assembled, listener, |_| {}, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            addr,
            stop: Some(stop),
            done,
            _data: data,
        }
    }

    pub async fn client(&self) -> ChassisClient<Channel> {
        ChassisClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Begins graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Parses each policy text and adds it to `set`.
fn add_policies(set: &mut PolicySet, policies: &[&str]) {
    for text in policies {
        set.insert(Policy::parse(text, Path::new("test.toml")).unwrap());
    }
}

pub async fn register(client: &mut ChassisClient<Channel>, path: &str) -> proto::ModuleInfo {
    let bytes = std::fs::read(path).unwrap();
    // Small chunks, to exercise reassembly.
    let chunks: Vec<RegisterModuleChunk> = bytes
        .chunks(16 * 1024)
        .map(|c| RegisterModuleChunk { data: c.to_vec() })
        .collect();
    client
        .register_module(tokio_stream::iter(chunks))
        .await
        .expect("module registers")
        .into_inner()
}

/// RegisterModule of `bytes`, as the server answers it.
pub async fn register_bytes(
    client: &mut ChassisClient<Channel>,
    bytes: &[u8],
) -> Result<proto::ModuleInfo, tonic::Status> {
    let chunks: Vec<RegisterModuleChunk> = bytes
        .chunks(1024 * 1024)
        .map(|c| RegisterModuleChunk { data: c.to_vec() })
        .collect();
    client
        .register_module(tokio_stream::iter(chunks))
        .await
        .map(|r| r.into_inner())
}

pub fn run_request(module_id: &str, policy: &str, input: &str) -> proto::RunRequest {
    proto::RunRequest {
        module_id: module_id.into(),
        policy: policy.into(),
        input: input.as_bytes().to_vec(),
        limits: None,
    }
}

#[track_caller]
pub fn assert_status(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    kind: &str,
) -> tonic::Status {
    let status = result.expect_err("an error status");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        chassis::grpc::status::kind_of(&status).as_deref(),
        Some(kind),
        "{status:?}"
    );
    status
}

/// Asserts a `chassis` process exited 0, showing its stderr when not.
#[track_caller]
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
