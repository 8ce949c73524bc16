//! Caller B's `Run` latency over mTLS, alone and while caller A floods the
//! same server with ten times its slots of spinning runs. The pool hands a
//! freed slot to the waiting caller holding the fewest, so B should wait at
//! most one slot turnover (A's run deadline) however deep A's backlog is.
//! Writes target/bench-results/fairness.json for `cargo xtask bench`.
#![allow(missing_docs, reason = "a bench binary")]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use chassis::config::{Config, Tls};
use chassis::grpc::proto::chassis_client::ChassisClient;
use chassis::grpc::proto::{self, RegisterModuleChunk};
use chassis::policy::{Policy, PolicySet};
use chassis_tests::pki::Pki;
use chassis_tests::programs::{ECHO_COMPONENT, HOSTILE_SPIN_COMPONENT};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Slots of the server under test.
const SLOTS: u32 = 4;
/// A's spinning runs end by this deadline: one slot turnover.
const A_DEADLINE_MS: u64 = 200;

async fn start(pki: &Pki) -> SocketAddr {
    pki.leaf("server", &["localhost"]);
    let mut config = Config::default();
    config.metrics.enabled = false;
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.tls = Some(Tls {
        cert_file: pki.path("server.pem"),
        key_file: pki.path("server.key"),
        client_ca_file: Some(pki.path("ca.pem")),
        require_client_cert: true,
        identity_from_cn: false,
    });
    config.server.admins = vec!["ops.bench".into()];
    config.sandbox_pool.max_size = SLOTS;
    config.sandbox_pool.queue_timeout_ms = 30_000;
    config.runtime.max_fuel = None;
    let mut policies = PolicySet::default();
    policies.insert(
        Policy::parse(
            "name = \"tenants\"\ncallers = [\"a.bench\", \"b.bench\"]\n",
            Path::new("tenants.toml"),
        )
        .unwrap(),
    );
    let host = chassis::Host::builder()
        .pool_slots(SLOTS)
        .compile_limits(chassis::server::compile_limits(&config))
        .build()
        .unwrap();
    let listener = chassis::grpc::bind(&config).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let assembled = chassis::server::Assembled {
            host,
            policies,
            secrets: None,
        };
        chassis::server::run(&config, assembled, listener, |_| {}, std::future::pending()).await
    });
    addr
}

async fn client(addr: SocketAddr, pki: &Pki, name: &str) -> ChassisClient<Channel> {
    let (cert, key) = pki.leaf(name, &[name]);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(cert, key));
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    ChassisClient::new(channel)
}

async fn register(client: &mut ChassisClient<Channel>, path: &str) -> String {
    let data = std::fs::read(path).unwrap();
    client
        .register_module(tokio_stream::iter(vec![RegisterModuleChunk { data }]))
        .await
        .unwrap()
        .into_inner()
        .id
}

#[derive(serde::Serialize)]
struct Figure {
    case: &'static str,
    runs: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    a_deadline_us: f64,
}

async fn measure_b(
    case: &'static str,
    b: &mut ChassisClient<Channel>,
    echo: &str,
    runs: usize,
) -> Figure {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let request = proto::RunRequest {
            module_id: echo.into(),
            policy: "tenants".into(),
            input: b"b".to_vec(),
            limits: None,
        };
        let t = Instant::now();
        b.run(request).await.expect("B's run succeeds");
        samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let figure = Figure {
        case,
        runs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        max_us: samples[samples.len() - 1],
        a_deadline_us: (A_DEADLINE_MS * 1000) as f64,
    };
    println!(
        "{case:>8}: B p50 {:>9.0} µs  p99 {:>9.0} µs  max {:>9.0} µs  ({runs} runs)",
        figure.p50_us, figure.p99_us, figure.max_us
    );
    figure
}

fn main() {
    let quick =
        std::env::args().any(|a| a == "--quick") || !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 20 } else { 200 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let figures = runtime.block_on(async {
        let pki = Pki::new();
        let addr = start(&pki).await;
        let mut ops = client(addr, &pki, "ops.bench").await;
        let echo = register(&mut ops, ECHO_COMPONENT).await;
        let spin = register(&mut ops, HOSTILE_SPIN_COMPONENT).await;
        let a = client(addr, &pki, "a.bench").await;
        let mut b = client(addr, &pki, "b.bench").await;
        let idle = measure_b("idle", &mut b, &echo, runs).await;

        // A keeps ten times the slots in flight, each spinning to its deadline.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut flood = Vec::new();
        for _ in 0..SLOTS * 10 {
            let mut a = a.clone();
            let stop = stop.clone();
            let spin = spin.clone();
            flood.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let request = proto::RunRequest {
                        module_id: spin.clone(),
                        policy: "tenants".into(),
                        input: Vec::new(),
                        limits: Some(proto::Limits {
                            timeout_ms: A_DEADLINE_MS,
                            cpu_percent: 25,
                            ..Default::default()
                        }),
                    };
                    let _ = a.run(request).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let flooded = measure_b("flooded", &mut b, &echo, runs).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in flood {
            task.abort();
        }
        vec![idle, flooded]
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("fairness.json"),
        serde_json::to_string_pretty(&figures).unwrap(),
    )
    .unwrap();
}
