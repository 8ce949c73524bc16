//! TLS and mTLS with certificates generated here: the caller is the client
//! certificate's SAN, checked against the policy's `callers`; a client
//! without a certificate, or without TLS at all, is refused; no
//! certificate can be `local` or `anonymous`; management calls and
//! runbook reads check the caller against `server.admins`; one caller
//! flooding the pool cannot starve another.

use crate::common;

use std::time::Duration;

use chassis::config::{Config, Tls};
use chassis::grpc::proto::chassis_client::ChassisClient;
use chassis_tests::pki::Pki;
use chassis_tests::programs::*;
use common::*;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn tls_config(pki: &Pki, require_client_cert: bool) -> Config {
    pki.leaf("server", &["localhost"]);
    let mut config = Config::default();
    config.server.tls = Some(Tls {
        cert_file: pki.path("server.pem"),
        key_file: pki.path("server.key"),
        client_ca_file: Some(pki.path("ca.pem")),
        require_client_cert,
        identity_from_cn: false,
    });
    config.server.admins = vec!["ops.example".into()];
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
async fn with_mtls_off_a_certless_caller_is_anonymous_even_on_loopback() {
    let pki = Pki::new();
    let anon = "name = \"anon\"\ncallers = [\"anonymous\"]\n";
    let server = TestServer::start(tls_config(&pki, false), &[OPS_POLICY, anon]).await;
    let ops = pki.leaf("ops", &["ops.example"]);
    let hello = register(
        &mut tls_client(&server, &pki, Some(ops)).await.unwrap(),
        HELLO_COMPONENT,
    )
    .await;
    let mut client = tls_client(&server, &pki, None).await.unwrap();
    // Over TLS without a certificate the caller is `anonymous`, not
    // `local`: only policies naming `anonymous` admit it.
    let status = assert_status(
        client.run(run_request(&hello.id, "ops", "tls")).await,
        Code::PermissionDenied,
        "policy-denied",
    );
    assert!(
        status.message().contains("caller `anonymous`"),
        "{}",
        status.message()
    );
    let out = client
        .run(run_request(&hello.id, "anon", "tls"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, tls!");
}

/// A TLS server whose host writes an audit log in `data`.
async fn audited_tls_server(
    config: Config,
    policies: &[&str],
    data: &std::path::Path,
) -> TestServer {
    let audit =
        chassis::audit::AuditLog::open(chassis::audit::AuditOptions::in_data_dir(data)).unwrap();
    let host = chassis::Host::builder()
        .caps(config.host_caps())
        .pool_slots(4)
        .audit(audit)
        .build()
        .unwrap();
    TestServer::start_with_host(config, policies, host).await
}

/// Stops `server` (which closes its audit log) and returns the
/// `request.refused` records in `data`.
async fn refusals(mut server: TestServer, data: &std::path::Path) -> Vec<serde_json::Value> {
    server.shutdown();
    server.done.await.unwrap().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args([
            "audit",
            "show",
            "--json",
            "--kind",
            "request.refused",
            "--data-dir",
        ])
        .arg(data)
        .output()
        .unwrap();
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn no_certificate_gets_the_privileges_of_local() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let x_only = "name = \"x-only\"\ncallers = [\"x\"]\n";
    let server = audited_tls_server(tls_config(&pki, true), &[x_only], data.path()).await;
    let ops = pki.leaf("ops", &["ops.example"]);
    let hello = register(
        &mut tls_client(&server, &pki, Some(ops)).await.unwrap(),
        HELLO_COMPONENT,
    )
    .await;

    // CN = `local` and no SAN: without the CN fallback it is no identity,
    // so the caller is `anonymous`, which `x-only` does not admit.
    let cn_local = pki.leaf_with_cn("cn-local", &[], "local");
    let mut client = tls_client(&server, &pki, Some(cn_local)).await.unwrap();
    let status = assert_status(
        client.run(run_request(&hello.id, "x-only", "")).await,
        Code::PermissionDenied,
        "policy-denied",
    );
    assert!(
        status.message().contains("caller `anonymous`"),
        "{status:?}"
    );

    // SAN = `local` (in any case): a reserved name, refused on every call.
    for (file, san) in [("san-local", "local"), ("san-upper", "LOCAL")] {
        let cert = pki.leaf_with_cn(file, &[san], "whatever");
        let mut client = tls_client(&server, &pki, Some(cert)).await.unwrap();
        let status = assert_status(
            client.run(run_request(&hello.id, "x-only", "")).await,
            Code::PermissionDenied,
            "policy-denied",
        );
        assert!(status.message().contains("reserved identity"), "{status:?}");
        assert_status(
            client
                .list_modules(chassis::grpc::proto::ListModulesRequest {})
                .await,
            Code::PermissionDenied,
            "policy-denied",
        );
    }

    // No SAN, CN = `x`: the CN is not an identity unless configured.
    let cn_x = pki.leaf_with_cn("cn-x", &[], "x");
    let mut client = tls_client(&server, &pki, Some(cn_x.clone())).await.unwrap();
    assert_status(
        client.run(run_request(&hello.id, "x-only", "")).await,
        Code::PermissionDenied,
        "policy-denied",
    );
    // The host still serves a real `x`.
    let x = pki.leaf("x", &["x"]);
    let mut client = tls_client(&server, &pki, Some(x)).await.unwrap();
    let out = client
        .run(run_request(&hello.id, "x-only", "x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, x!");

    let refused = refusals(server, data.path()).await;
    assert_eq!(refused.len(), 4, "{refused:?}");
    for r in &refused {
        assert_eq!(r["fields"]["reason"], "reserved-identity");
        assert_eq!(r["fields"]["kind"], "policy-denied");
    }
    assert!(refused.iter().any(|r| r["fields"]["caller"] == "LOCAL"));

    // With `identity_from_cn` on, CN = `x` is `x`, and CN = `local` is
    // refused as reserved.
    let mut config = tls_config(&pki, true);
    config.server.tls.as_mut().unwrap().identity_from_cn = true;
    let server = TestServer::start(config, &[x_only]).await;
    let ops = pki.leaf("ops", &["ops.example"]);
    let hello = register(
        &mut tls_client(&server, &pki, Some(ops)).await.unwrap(),
        HELLO_COMPONENT,
    )
    .await;
    let mut client = tls_client(&server, &pki, Some(cn_x)).await.unwrap();
    assert!(
        client
            .run(run_request(&hello.id, "x-only", ""))
            .await
            .is_ok()
    );
    let cn_local = pki.leaf_with_cn("cn-local", &[], "local");
    let mut client = tls_client(&server, &pki, Some(cn_local)).await.unwrap();
    let status = assert_status(
        client.run(run_request(&hello.id, "x-only", "")).await,
        Code::PermissionDenied,
        "policy-denied",
    );
    assert!(status.message().contains("reserved identity"), "{status:?}");
}

#[test]
fn a_non_loopback_listener_refuses_to_start_without_tls() {
    let mut config = Config::default();
    config.server.listen = "0.0.0.0:50051".parse().unwrap();
    let err = config.validate("test").unwrap_err();
    assert!(err.to_string().contains("server.tls"), "{err}");
}

/// Asserts PERMISSION_DENIED with kind `policy-denied`.
#[track_caller]
fn denied<T>(result: Result<T, tonic::Status>) -> tonic::Status {
    assert_status(result.map(|_| ()), Code::PermissionDenied, "policy-denied")
}

#[tokio::test]
async fn management_calls_and_runbook_reads_check_the_caller() {
    use chassis::grpc::proto;
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    // mTLS optional so `anonymous` can connect at all.
    let mut config = tls_config(&pki, false);
    config.server.admins = vec!["admin.example".into()];
    let runs =
        "name = \"runs\"\ncallers = [\"user.example\", \"other.example\", \"admin.example\"]\n";
    let server = audited_tls_server(config, &[runs], data.path()).await;
    let mut admin = tls_client(&server, &pki, Some(pki.leaf("admin", &["admin.example"])))
        .await
        .unwrap();
    let mut user = tls_client(&server, &pki, Some(pki.leaf("user", &["user.example"])))
        .await
        .unwrap();
    let mut other = tls_client(&server, &pki, Some(pki.leaf("other", &["other.example"])))
        .await
        .unwrap();
    let mut anonymous = tls_client(&server, &pki, None).await.unwrap();
    let wasm = std::fs::read(HELLO_COMPONENT).unwrap();
    let chunks = || tokio_stream::iter(vec![proto::RegisterModuleChunk { data: wasm.clone() }]);

    // RegisterModule: admins only.
    let status = denied(user.register_module(chunks()).await);
    assert!(status.message().contains("server.admins"), "{status:?}");
    denied(anonymous.register_module(chunks()).await);
    let hello = admin.register_module(chunks()).await.unwrap().into_inner();

    // ListPolicies (secret paths, preopens): admins only.
    denied(user.list_policies(proto::ListPoliciesRequest {}).await);
    denied(anonymous.list_policies(proto::ListPoliciesRequest {}).await);
    let policies = admin
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policies.policies.len(), 1);

    // ListModules (ids and worlds) and Run stay open to any caller the
    // policy admits.
    for client in [&mut user, &mut anonymous] {
        let listed = client
            .list_modules(proto::ListModulesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.modules.len(), 1);
    }
    let out = user
        .run(run_request(&hello.id, "runs", "user"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, user!");

    // SubmitRunbook: by reference for anyone with an identity; module
    // files (a registration) for admins only; never for `anonymous`.
    let text = format!(
        "name = \"greet\"\n[steps.a]\nmodule = \"sha256:{}\"\npolicy = \"runs\"\ninput = \"rb\"\n",
        hello.id
    );
    let by_ref = |id: &str| proto::SubmitRunbookRequest {
        runbook: text.clone(),
        file_name: "greet.toml".into(),
        modules: Default::default(),
        id: id.into(),
    };
    let with_file = proto::SubmitRunbookRequest {
        runbook: "name = \"greet\"\n[steps.a]\nmodule = \"hello.wasm\"\n".into(),
        file_name: "greet.toml".into(),
        modules: [("hello.wasm".to_string(), wasm.clone())].into(),
        id: String::new(),
    };
    let status = denied(user.submit_runbook(with_file.clone()).await);
    assert!(status.message().contains("sha256:"), "{status:?}");
    denied(anonymous.submit_runbook(by_ref("anon-rb")).await);
    admin.submit_runbook(with_file).await.unwrap();
    let mine = user
        .submit_runbook(by_ref("user-rb"))
        .await
        .unwrap()
        .into_inner()
        .runbook_id;

    // GetRunbook / WatchRunbook: the submitter and admins only.
    let get = |id: &str| proto::GetRunbookRequest {
        runbook_id: id.into(),
    };
    let watch = |id: &str| proto::WatchRunbookRequest {
        runbook_id: id.into(),
        from_revision: 0,
    };
    assert_eq!(
        user.get_runbook(get(&mine))
            .await
            .unwrap()
            .into_inner()
            .runbook_id,
        mine
    );
    admin.get_runbook(get(&mine)).await.unwrap();
    let status = denied(other.get_runbook(get(&mine)).await);
    assert!(status.message().contains("submitter"), "{status:?}");
    denied(anonymous.get_runbook(get(&mine)).await);
    user.watch_runbook(watch(&mine)).await.unwrap();
    admin.watch_runbook(watch(&mine)).await.unwrap();
    denied(other.watch_runbook(watch(&mine)).await);
    denied(anonymous.watch_runbook(watch(&mine)).await);

    // RemoveModule: admins only; then it is gone.
    let remove = || proto::RemoveModuleRequest {
        id: hello.id.clone(),
    };
    denied(user.remove_module(remove()).await);
    denied(anonymous.remove_module(remove()).await);
    admin.remove_module(remove()).await.unwrap();

    let refused = refusals(server, data.path()).await;
    let seen: Vec<(String, String, String)> = refused
        .iter()
        .map(|r| {
            let f = &r["fields"];
            (
                f["rpc"].as_str().unwrap().to_string(),
                f["caller"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("RegisterModule", "user.example", "not-admin"),
        ("RegisterModule", "anonymous", "not-admin"),
        ("ListPolicies", "user.example", "not-admin"),
        ("ListPolicies", "anonymous", "not-admin"),
        ("SubmitRunbook", "user.example", "not-admin"),
        ("SubmitRunbook", "anonymous", "anonymous"),
        ("GetRunbook", "other.example", "not-submitter"),
        ("GetRunbook", "anonymous", "not-submitter"),
        ("WatchRunbook", "other.example", "not-submitter"),
        ("WatchRunbook", "anonymous", "not-submitter"),
        ("RemoveModule", "user.example", "not-admin"),
        ("RemoveModule", "anonymous", "not-admin"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(seen, want);
}

/// Two tenants on a TLS server with `max_size` slots: the server (keep it
/// alive), `spin` and `hello` registered by an admin, and a client each for
/// callers `a.example` and `b.example`, both admitted by policy `tenants`.
struct Tenants {
    _server: TestServer,
    spin: String,
    hello: String,
    a: ChassisClient<Channel>,
    b: ChassisClient<Channel>,
}

async fn tenants(pki: &Pki, max_size: u32, queue_timeout_ms: u64, quota: u32) -> Tenants {
    let mut config = tls_config(pki, true);
    config.sandbox_pool.max_size = max_size;
    config.sandbox_pool.min_size = 0;
    config.sandbox_pool.queue_timeout_ms = queue_timeout_ms;
    config.sandbox_pool.per_caller_max_size = quota;
    config.runtime.max_fuel = None;
    let policy = "name = \"tenants\"\ncallers = [\"a.example\", \"b.example\"]\n";
    let server = TestServer::start(config, &[policy]).await;
    let mut ops = tls_client(&server, pki, Some(pki.leaf("ops", &["ops.example"])))
        .await
        .unwrap();
    let spin = register(&mut ops, HOSTILE_SPIN_COMPONENT).await.id;
    let hello = register(&mut ops, HELLO_COMPONENT).await.id;
    let a = tls_client(&server, pki, Some(pki.leaf("a", &["a.example"])))
        .await
        .unwrap();
    let b = tls_client(&server, pki, Some(pki.leaf("b", &["b.example"])))
        .await
        .unwrap();
    Tenants {
        _server: server,
        spin,
        hello,
        a,
        b,
    }
}

/// One caller flooding the pool cannot starve another: with 2 slots, A
/// keeps 20 spinning runs (1 s each) queued, and every one of B's runs is
/// served at the next slot turnover instead of behind A's backlog (which
/// would take ~9 turnovers, past the 2.5 s queue timeout, and be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_caller_does_not_starve_another() {
    let pki = Pki::new();
    let Tenants {
        spin,
        hello,
        a,
        mut b,
        _server,
    } = tenants(&pki, 2, 2500, 0).await;

    let mut flood = Vec::new();
    for _ in 0..20 {
        let mut a = a.clone();
        let mut request = run_request(&spin, "tenants", "");
        request.limits = Some(chassis::grpc::proto::Limits {
            timeout_ms: 1000,
            cpu_percent: 10,
            ..Default::default()
        });
        flood.push(tokio::spawn(async move { a.run(request).await }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut waits = Vec::new();
    for i in 0..4 {
        let started = std::time::Instant::now();
        let out = b
            .run(run_request(&hello, "tenants", &format!("b{i}")))
            .await
            .unwrap_or_else(|s| panic!("B's run {i} was refused: {s:?}"))
            .into_inner();
        assert_eq!(out.output, format!("Hello, b{i}!").as_bytes());
        waits.push(started.elapsed());
    }
    eprintln!("B's runs while A floods: {waits:?}");

    // A's runs each ended by their deadline or waited out the queue; none
    // failed any other way.
    let (mut ran, mut refused) = (0, 0);
    for run in flood {
        match run.await.unwrap() {
            Err(s) if s.code() == Code::DeadlineExceeded => ran += 1,
            Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
            other => panic!("unexpected outcome of A's run: {other:?}"),
        }
    }
    assert_eq!(ran + refused, 20);
    assert!(ran >= 2, "A's runs got slots too ({ran} ran)");
    assert!(refused > 0, "A's backlog outlasted the queue timeout");
}

/// `sandbox_pool.per_caller_max_size` holds one caller to its quota while
/// slots stay free for others: A's second run waits out the queue and is
/// refused naming the quota, and B runs at once meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_is_held_to_its_quota_while_others_run() {
    let pki = Pki::new();
    let Tenants {
        spin,
        hello,
        mut a,
        mut b,
        _server,
    } = tenants(&pki, 4, 300, 1).await;
    let mut long = run_request(&spin, "tenants", "");
    long.limits = Some(chassis::grpc::proto::Limits {
        timeout_ms: 1500,
        cpu_percent: 10,
        ..Default::default()
    });
    let holding = tokio::spawn({
        let mut a = a.clone();
        let long = long.clone();
        async move { a.run(long).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = assert_status(a.run(long).await, Code::ResourceExhausted, "overloaded");
    assert!(
        status.message().contains("caller `a.example`")
            && status
                .message()
                .contains("sandbox_pool.per_caller_max_size"),
        "{}",
        status.message()
    );
    let out = b
        .run(run_request(&hello, "tenants", "b"))
        .await
        .expect("B is not held to A's quota")
        .into_inner();
    assert_eq!(out.output, b"Hello, b!");
    assert_status(
        holding.await.unwrap(),
        Code::DeadlineExceeded,
        "deadline-exceeded",
    );
}

/// `chassis load --remote https://...` reaches an mTLS server with the same
/// TLS flags as `chassis client`: the CA that signed the server, and a
/// client certificate naming the caller (an admin here, so it may
/// register the module it loads, and runs under the policy naming it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_load_reaches_an_mtls_server() {
    let pki = Pki::new();
    let server = TestServer::start(tls_config(&pki, true), &[OPS_POLICY]).await;
    pki.leaf("ops", &["ops.example"]);
    let addr = format!("https://localhost:{}", server.addr.port());
    let load = |identity: bool| {
        let mut args = vec![
            "load".to_string(),
            "--module".into(),
            HELLO_COMPONENT.into(),
            "--concurrency".into(),
            "2".into(),
            "--runs".into(),
            "20".into(),
            "--json".into(),
            "--policy".into(),
            "ops".into(),
            "--remote".into(),
            addr.clone(),
            "--ca".into(),
            pki.path("ca.pem").display().to_string(),
        ];
        if identity {
            for (flag, file) in [("--cert", "ops.pem"), ("--key", "ops.key")] {
                args.push(flag.into());
                args.push(pki.path(file).display().to_string());
            }
        }
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_chassis"))
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let out = load(true).await.unwrap();
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcomes"]["ok"], 20, "{report:#}");
    // Without a client certificate the server refuses the handshake, and
    // the command says it could not connect.
    let out = load(false).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chassis: error:"), "{stderr}");
}
