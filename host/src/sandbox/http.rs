//! Outbound `wasi:http` requests, checked against the policy's allowlist.
//!
//! The request's host and port must be listed, and what the name resolves to
//! must be outside the special ranges (see `policy::network`). Plain-HTTP
//! requests are then sent to the vetted address itself, so a DNS answer
//! that changes between the check and the connect cannot redirect them;
//! HTTPS keeps the name for certificate checks and re-resolves in the TLS
//! client, a window of milliseconds documented in docs/architecture.md.

use std::future::Future;
use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::denial::{DenialKind, DenialLog};
use crate::policy::NetworkPolicy;

/// The per-run `wasi:http` hooks.
pub(crate) struct HttpGate {
    network: Arc<NetworkPolicy>,
    denials: DenialLog,
}

impl HttpGate {
    pub(crate) fn new(network: Arc<NetworkPolicy>, denials: DenialLog) -> Self {
        Self { network, denials }
    }
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        drop(fut);
        let network = self.network.clone();
        let denials = self.denials.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let Some(host) = uri.host() else {
                return Err(Error::HttpRequestUriInvalid);
            };
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let vetted = match network.check_http(host, port).await {
                Ok(addr) => addr,
                Err(reason) => {
                    denials.record(
                        DenialKind::Network,
                        &format!("{}://{host}:{port}", if https { "https" } else { "http" }),
                        &reason,
                    );
                    return Err(Error::HttpRequestDenied);
                }
            };
            if !https {
                let mut parts = uri.into_parts();
                parts.authority = Some(
                    vetted
                        .to_string()
                        .parse()
                        .map_err(|_| Error::HttpRequestUriInvalid)?,
                );
                *request.uri_mut() =
                    http::Uri::from_parts(parts).map_err(|_| Error::HttpRequestUriInvalid)?;
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}
