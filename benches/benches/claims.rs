//! Step claims against a local etcd (acquire, then release under the
//! fence), next to the same two compare-and-swap transactions issued raw
//! through `etcd-client` in the same run; plus sustained claims/s with 16
//! hosts' worth of concurrent claimers. Writes
//! target/bench-results/claims.json for `cargo xtask bench`.
#![allow(missing_docs, reason = "a bench binary")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chassis::coord::conformance::spec;
use chassis::coord::{ClaimStore, EtcdOptions, EtcdStore};
use chassis_tests::etcd::Etcd;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

#[derive(serde::Serialize)]
struct Latency {
    pairs: usize,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
}

#[derive(serde::Serialize)]
struct Figures {
    etcd_version: String,
    chassis: Latency,
    raw: Latency,
    sustained_concurrency: usize,
    sustained_claims_per_s: f64,
    raw_sustained_pairs_per_s: f64,
}

fn latency(mut samples: Vec<u64>) -> Latency {
    samples.sort_unstable();
    let pct = |p: f64| {
        samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    Latency {
        pairs: samples.len(),
        p50_us: pct(0.50),
        p95_us: pct(0.95),
        p99_us: pct(0.99),
    }
}

/// Claim then release one step for `duration`; returns each pair's time.
async fn chassis_pairs(store: Arc<EtcdStore>, step: String, duration: Duration) -> Vec<u64> {
    let session = store
        .join(&format!("bench-{step}"), Duration::from_secs(60))
        .await
        .unwrap();
    // Each pair records one more failed attempt; carry on from earlier rounds.
    let view = store.runbook("bench").await.unwrap().unwrap();
    let mut attempt = view.steps[&step].failures + 1;
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let claim = store
            .claim(&session, "bench", &step, attempt)
            .await
            .unwrap()
            .expect("the step is free");
        store.release(&claim, attempt).await.unwrap();
        samples.push(t.elapsed().as_nanos() as u64);
        attempt += 1;
    }
    store.leave(&session).await.unwrap();
    samples
}

/// The peer: a create-if-absent transaction on a leased key, then a
/// delete guarded by its create revision, through etcd-client directly.
async fn raw_pairs(client: etcd_client::Client, key: String, duration: Duration) -> Vec<u64> {
    let mut kv = client.kv_client();
    let lease = client.lease_client().grant(60, None).await.unwrap().id();
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let acquired = kv
            .txn(
                Txn::new()
                    .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        "holder",
                        Some(PutOptions::new().with_lease(lease)),
                    )]),
            )
            .await
            .unwrap();
        assert!(acquired.succeeded());
        let fence = acquired.header().unwrap().revision();
        let released = kv
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        fence,
                    )])
                    .and_then([TxnOp::delete(key.clone(), None)]),
            )
            .await
            .unwrap();
        assert!(released.succeeded());
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples
}

fn main() {
    let quick =
        std::env::args().any(|a| a == "--quick") || !std::env::args().any(|a| a == "--bench");
    let (round, rounds, sustained) = if quick {
        (Duration::from_millis(200), 1, Duration::from_millis(300))
    } else {
        (Duration::from_secs(2), 4, Duration::from_secs(5))
    };
    let etcd = Etcd::start();
    let version = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let figures = runtime.block_on(async {
        let store = Arc::new(
            EtcdStore::connect(&EtcdOptions {
                endpoints: etcd.endpoints(),
                timeout: Duration::from_secs(5),
                ..EtcdOptions::default()
            })
            .await
            .unwrap(),
        );
        let concurrency = 16;
        store
            .submit("bench", &spec(concurrency + 1), &[])
            .await
            .unwrap();
        // Alternate rounds so both see the same machine and etcd state.
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.extend(chassis_pairs(store.clone(), "s000".into(), round).await);
            raw.extend(raw_pairs(store.client(), "/bench/raw".into(), round).await);
        }
        let start = Instant::now();
        let tasks: Vec<_> = (1..=concurrency)
            .map(|i| tokio::spawn(chassis_pairs(store.clone(), format!("s{i:03}"), sustained)))
            .collect();
        let mut claims = 0;
        for t in tasks {
            claims += t.await.unwrap().len();
        }
        let sustained_claims_per_s = claims as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        let tasks: Vec<_> = (1..=concurrency)
            .map(|i| {
                tokio::spawn(raw_pairs(
                    store.client(),
                    format!("/bench/raw-{i}"),
                    sustained,
                ))
            })
            .collect();
        let mut pairs = 0;
        for t in tasks {
            pairs += t.await.unwrap().len();
        }
        let raw_sustained_pairs_per_s = pairs as f64 / start.elapsed().as_secs_f64();
        Figures {
            etcd_version: version,
            chassis: latency(ours),
            raw: latency(raw),
            sustained_concurrency: concurrency,
            sustained_claims_per_s,
            raw_sustained_pairs_per_s,
        }
    });
    println!(
        "claim+release  chassis p50 {:.0} µs p95 {:.0} µs p99 {:.0} µs | raw p50 {:.0} µs p95 {:.0} µs p99 {:.0} µs | sustained {:.0} claims/s (raw {:.0} pairs/s)",
        figures.chassis.p50_us,
        figures.chassis.p95_us,
        figures.chassis.p99_us,
        figures.raw.p50_us,
        figures.raw.p95_us,
        figures.raw.p99_us,
        figures.sustained_claims_per_s,
        figures.raw_sustained_pairs_per_s
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("claims.json"),
        serde_json::to_string_pretty(&figures).unwrap(),
    )
    .unwrap();
}
