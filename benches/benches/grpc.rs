//! Unary `Run` of the trivial `echo` agent over loopback, at concurrency 1
#![allow(missing_docs, reason = "a bench binary")]
//! and 64, next to a bare tonic server answering the same RPC with an echo
//! in the same process and run, and `Run` at concurrency 1 again while 8
//! registrations of a large module compile. Writes target/bench-results/grpc.json for
//! `cargo xtask bench`; latency percentiles need every sample, which
//! criterion does not keep, so this bench measures them itself.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use chassis::config::Config;
use chassis::grpc::proto::chassis_client::ChassisClient;
use chassis::grpc::proto::chassis_server::ChassisServer;
use chassis::grpc::proto::{self, RegisterModuleChunk};
use chassis::policy::PolicySet;
use chassis_benches::BareEcho;
use chassis_tests::programs::ECHO_COMPONENT;

async fn start_chassis() -> SocketAddr {
    let mut config = Config::default();
    // Served as the composition root serves it, without the metrics port
    // (a bench process may serve several hosts).
    config.metrics.enabled = false;
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.sandbox_pool.max_size = 128;
    config.slo.target_latency_p95_ms = 10;
    let host = chassis::Host::builder()
        .pool_slots(128)
        .compile_limits(chassis::server::compile_limits(&config))
        .build()
        .unwrap();
    let listener = chassis::grpc::bind(&config).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let assembled = chassis::server::Assembled {
            host,
            policies: PolicySet::default(),
            secrets: None,
        };
        chassis::server::run(&config, assembled, listener, |_| {}, std::future::pending()).await
    });
    addr
}

async fn start_bare() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ChassisServer::new(BareEcho))
            .serve_with_incoming(chassis::grpc::accepted(listener))
            .await
    });
    addr
}

#[derive(serde::Serialize)]
struct Figure {
    server: &'static str,
    concurrency: usize,
    runs: usize,
    runs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn measure(
    server: &'static str,
    addr: SocketAddr,
    module_id: &str,
    concurrency: usize,
    duration: Duration,
) -> Figure {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = proto::RunRequest {
        module_id: module_id.into(),
        policy: String::new(),
        input: b"sixteen bytes!!!".to_vec(),
        limits: None,
    };
    // Warm up, then measure.
    for phase in [Duration::from_millis(500), duration] {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let mut client = ChassisClient::new(channel.clone());
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                while start.elapsed() < phase {
                    let t = Instant::now();
                    client.run(request.clone()).await.expect("run succeeds");
                    samples.push(t.elapsed().as_nanos() as u64);
                }
                samples
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = start.elapsed();
        if phase == duration {
            all.sort_unstable();
            let pct =
                |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
            let figure = Figure {
                server,
                concurrency,
                runs: all.len(),
                runs_per_s: all.len() as f64 / elapsed.as_secs_f64(),
                p50_us: pct(0.50),
                p99_us: pct(0.99),
            };
            println!(
                "{server:>8} c={concurrency:<3} {:>9.0} runs/s  p50 {:>8.1} µs  p99 {:>8.1} µs  ({} runs)",
                figure.runs_per_s, figure.p50_us, figure.p99_us, figure.runs
            );
            return figure;
        }
    }
    unreachable!("the loop returns in its measuring phase")
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this in test mode: keep it short then.
    let quick =
        std::env::args().any(|a| a == "--quick") || !std::env::args().any(|a| a == "--bench");
    let duration = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let figures = runtime.block_on(async {
        let chassis_addr = start_chassis().await;
        let bare_addr = start_bare().await;
        let mut client = ChassisClient::connect(format!("http://{chassis_addr}"))
            .await
            .unwrap();
        let wasm = std::fs::read(ECHO_COMPONENT).unwrap();
        let module = client
            .register_module(tokio_stream::iter(vec![RegisterModuleChunk { data: wasm }]))
            .await
            .unwrap()
            .into_inner();
        let mut figures = Vec::new();
        for concurrency in [1, 64] {
            figures.push(measure("chassis", chassis_addr, &module.id, concurrency, duration).await);
            figures.push(measure("bare", bare_addr, &module.id, concurrency, duration).await);
        }
        // The same runs while 8 callers' registrations of a large module
        // keep the compile queue full.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut compiling = Vec::new();
        for caller in 0..8_u32 {
            let mut client = client.clone();
            let stop = stop.clone();
            compiling.push(tokio::spawn(async move {
                let mut tag = caller * 1_000_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tag += 1;
                    let wasm = chassis_tests::slow_to_compile(2000, tag);
                    // Refused as no world after the compile: that is the point.
                    let _ = client
                        .register_module(tokio_stream::iter(vec![RegisterModuleChunk {
                            data: wasm,
                        }]))
                        .await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        figures.push(measure("chassis-compiling", chassis_addr, &module.id, 1, duration).await);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in compiling {
            task.abort();
        }
        figures
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("grpc.json"),
        serde_json::to_string_pretty(&figures).unwrap(),
    )
    .unwrap();
}
