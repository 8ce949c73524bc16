//! TLS and mTLS with certificates generated here: the caller is the client
//! certificate's SAN, checked against the policy's `callers`; a client
//! without a certificate, or without TLS at all, is refused.

mod common;

use chassis::config::{Config, Tls};
use chassis::grpc::proto::chassis_client::ChassisClient;
use chassis_tests::programs::*;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "chassis test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self {
            dir,
            ca_pem: ca.pem(),
            ca_params,
            ca_key,
        }
    }

    /// A leaf certificate for `names`, written as `<file>.pem` / `<file>.key`.
    fn leaf(&self, file: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.path(&format!("{file}.pem")), &cert_pem).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), &key_pem).unwrap();
        (cert_pem, key_pem)
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }
}

fn tls_config(pki: &Pki, require_client_cert: bool) -> Config {
    pki.leaf("server", &["localhost"]);
    let mut config = Config::default();
    config.server.tls = Some(Tls {
        cert_file: pki.path("server.pem"),
        key_file: pki.path("server.key"),
        client_ca_file: Some(pki.path("ca.pem")),
        require_client_cert,
    });
    config
}

async fn tls_client(
    server: &TestServer,
    pki: &Pki,
    identity: Option<(String, String)>,
) -> Result<ChassisClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(ChassisClient::new(channel))
}

const OPS_POLICY: &str = "name = \"ops\"\ncallers = [\"ops.example\"]\n";

#[tokio::test]
async fn the_client_certificate_names_the_caller_checked_against_the_policy() {
    let pki = Pki::new();
    let server = TestServer::start(tls_config(&pki, true), &[OPS_POLICY]).await;
    let ops = pki.leaf("ops", &["ops.example"]);
    let intruder = pki.leaf("intruder", &["intruder.example"]);

    let mut client = tls_client(&server, &pki, Some(ops)).await.unwrap();
    let hello = register(&mut client, HELLO_COMPONENT).await;
    let out = client
        .run(run_request(&hello.id, "ops", "mtls"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, mtls!");

    let mut other = tls_client(&server, &pki, Some(intruder)).await.unwrap();
    let status = assert_status(
        other.run(run_request(&hello.id, "ops", "")).await,
        Code::PermissionDenied,
        "policy-denied",
    );
    assert!(
        status.message().contains("caller `intruder.example`"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn without_a_client_certificate_the_handshake_fails() {
    let pki = Pki::new();
    let server = TestServer::start(tls_config(&pki, true), &[OPS_POLICY]).await;
    let result = match tls_client(&server, &pki, None).await {
        Err(_) => None,
        Ok(mut client) => Some(
            client
                .list_modules(chassis::grpc::proto::ListModulesRequest {})
                .await,
        ),
    };
    match result {
        None => {}
        Some(Err(status)) => assert!(
            format!("{status:?}").contains("CertificateRequired"),
            "{status:?}"
        ),
        Some(Ok(_)) => panic!("a client without a certificate was served"),
    }
}

#[tokio::test]
async fn a_plaintext_client_is_refused_on_a_tls_listener() {
    let pki = Pki::new();
    let server = TestServer::start(tls_config(&pki, true), &[]).await;
    let result = match Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
    {
        Err(_) => None,
        Ok(channel) => Some(
            ChassisClient::new(channel)
                .list_modules(chassis::grpc::proto::ListModulesRequest {})
                .await,
        ),
    };
    assert!(
        !matches!(result, Some(Ok(_))),
        "plaintext was served: {result:?}"
    );
}

#[tokio::test]
async fn with_mtls_off_a_certless_loopback_caller_is_local() {
    let pki = Pki::new();
    let server = TestServer::start(tls_config(&pki, false), &[OPS_POLICY, "name = \"open\""]).await;
    let mut client = tls_client(&server, &pki, None).await.unwrap();
    let hello = register(&mut client, HELLO_COMPONENT).await;
    // Over loopback without a certificate the caller is `local`, which every policy admits.
    let out = client
        .run(run_request(&hello.id, "ops", "tls"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, tls!");
}

#[test]
fn a_non_loopback_listener_refuses_to_start_without_tls() {
    let mut config = Config::default();
    config.server.listen = "0.0.0.0:50051".parse().unwrap();
    let err = config.validate("test").unwrap_err();
    assert!(err.to_string().contains("server.tls"), "{err}");
}
