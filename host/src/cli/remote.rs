//! Reaching a chassis server: its address, and TLS or mTLS to it. One
//! connect for every command that talks to a server (`client`,
//! `runbook submit|status|watch`, `load --remote`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use chassis::grpc::proto::chassis_client::ChassisClient;

/// Largest message a command sends or accepts (module uploads, outputs).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A server address, and how to trust it and prove who we are.
#[derive(Debug, Args)]
pub(crate) struct RemoteArgs {
    /// Server address, e.g. http://127.0.0.1:50051 or https://chassis.example:50051.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:50051",
        env = "CHASSIS_ADDR"
    )]
    pub(crate) addr: String,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

impl RemoteArgs {
    /// A client of the server at `--addr`.
    pub(crate) async fn connect(&self) -> Result<ChassisClient<Channel>> {
        connect(&self.addr, &self.tls).await
    }
}

/// TLS to a server: the CA that signed it, our certificate for mTLS.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// CA bundle to verify the server (https).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate for mTLS.
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Client key for mTLS.
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Server name to verify, when it differs from the address's host.
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) server_name: Option<String>,
}

/// A client of the server at `addr`: TLS when the address is `https://` or
/// a CA is given, with our identity when a certificate and key are.
pub(crate) async fn connect(addr: &str, tls: &TlsArgs) -> Result<ChassisClient<Channel>> {
    let mut endpoint =
        Endpoint::from_shared(addr.to_string()).with_context(|| format!("bad address {addr}"))?;
    if addr.starts_with("https://") || tls.ca.is_some() {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &tls.ca {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &tls.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(config)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(ChassisClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}
