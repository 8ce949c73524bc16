//! instantiate + `run` + drop of the trivial `echo` agent: chassis with every
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]
//! limit on, next to raw wasmtime doing the same on the same engine config.

use criterion::{Criterion, criterion_group, criterion_main};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use chassis::Host;
use chassis_tests::programs::{
    ECHO_COMPONENT, HELLO_COMPONENT, HELLO_JS_COMPONENT, HELLO_PY_COMPONENT, HELLO_QJS_COMPONENT,
};

mod raw {
    //! The peer: the least a wasmtime embedder must write to run an agent.
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        world: "agent",
        exports: { default: async },
    });
}

struct RawState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl raw::chassis::agent::types::Host for RawState {}

impl raw::chassis::agent::host::Host for RawState {
    fn log(
        &mut self,
        _: raw::chassis::agent::host::Level,
        _: String,
        _: Vec<raw::chassis::agent::host::Field>,
    ) {
    }

    fn secret(&mut self, name: String) -> Result<String, raw::chassis::agent::host::SecretError> {
        Err(raw::chassis::agent::host::SecretError::Denied(name))
    }
}

/// The peer's pre-instantiated agent on `engine`.
fn raw_pre(engine: &wasmtime::Engine, wasm: &[u8]) -> raw::AgentPre<RawState> {
    let mut linker: Linker<RawState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    raw::Agent::add_to_linker::<_, HasSelf<RawState>>(&mut linker, |s| s).unwrap();
    let component = wasmtime::component::Component::new(engine, wasm).unwrap();
    raw::AgentPre::new(linker.instantiate_pre(&component).unwrap()).unwrap()
}

/// One run by the peer: a default WASI context, fuel and epoch deadline when
/// the engine meters them, instantiate, call, drop.
async fn raw_run(
    engine: &wasmtime::Engine,
    pre: &raw::AgentPre<RawState>,
    input: &[u8],
    metered: bool,
) {
    let state = RawState {
        wasi: WasiCtx::builder().build(),
        table: ResourceTable::new(),
    };
    let mut store = Store::new(engine, state);
    if metered {
        store.set_fuel(u64::MAX / 2).unwrap();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
    }
    let agent = pre.instantiate_async(&mut store).await.unwrap();
    let out = agent.call_run(&mut store, input).await.unwrap();
    assert!(out.is_ok());
}

/// What both groups measure chassis with: a current-thread runtime, the
/// guest's bytes, a host with it registered, and the default policy and limits.
struct Chassis {
    runtime: tokio::runtime::Runtime,
    wasm: Vec<u8>,
    host: Host,
    module: std::sync::Arc<chassis::modules::Module>,
    policy: std::sync::Arc<chassis::policy::Policy>,
    limits: chassis::sandbox::Limits,
}

impl Chassis {
    fn new(guest: &str, slots: u32) -> Self {
        Self::with_caps(guest, slots, chassis::sandbox::HostCaps::default())
    }

    fn with_caps(guest: &str, slots: u32, caps: chassis::sandbox::HostCaps) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let wasm = std::fs::read(guest).unwrap();
        let host = Host::builder()
            .caps(caps)
            .pool_slots(slots)
            .build()
            .unwrap();
        let module = host.modules().register(&wasm).unwrap();
        let policy = std::sync::Arc::new(chassis::policy::Policy::deny_all());
        let limits = host.limits_for(&chassis::RunRequest::new(vec![])).unwrap();
        Self {
            runtime,
            wasm,
            host,
            module,
            policy,
            limits,
        }
    }

    /// One `Runner::run` of the module on `input`, which must succeed.
    fn run_once(&self, input: &[u8]) {
        let report = self.runtime.block_on(self.host.runner().run(
            &self.module,
            input.to_vec(),
            &self.limits,
            &self.policy,
            None,
            chassis::secrets::Granted::none(),
        ));
        assert!(report.result.is_ok());
    }
}

/// Alternated pairs of `Host::run` without and with the audit log.
const AUDIT_PAIRS: usize = 3;

fn sandbox(c: &mut Criterion) {
    let Chassis {
        runtime,
        wasm,
        host,
        module,
        policy,
        limits,
    } = Chassis::new(ECHO_COMPONENT, 16);
    let input = b"sixteen bytes!!!".to_vec();

    // The peer shares the chassis engine, so pooling, fuel and epoch
    // settings are identical by construction.
    let engine = host.runner().engine().wasmtime().clone();
    let pre = raw_pre(&engine, &wasm);

    let mut group = c.benchmark_group("sandbox");
    group.bench_function("chassis", |b| {
        b.iter(|| {
            let report = runtime.block_on(host.runner().run(
                &module,
                input.clone(),
                &limits,
                &policy,
                None,
                chassis::secrets::Granted::none(),
            ));
            assert!(report.result.is_ok());
        })
    });
    group.bench_function("raw-wasmtime", |b| {
        b.iter(|| runtime.block_on(raw_run(&engine, &pre, &input, true)))
    });
    // Through `Host::run` (policy checks, run id, metrics, tracing span),
    // without and with the audit log at its shipped settings (batch fsync,
    // 64 MiB files, retention), to price auditing alone.
    let audit_dir = tempfile::tempdir().unwrap();
    let config = chassis::config::Config {
        data_dir: audit_dir.path().to_path_buf(),
        ..Default::default()
    };
    let audit =
        chassis::audit::AuditLog::open(chassis::server::audit_options(&config).unwrap()).unwrap();
    let audited = Host::builder()
        .pool_slots(16)
        .audit(audit.clone())
        .build()
        .unwrap();
    let audited_module = audited.modules().register(&wasm).unwrap();
    // Three alternated pairs, the audited run first in the second, so the
    // ratio does not ride on one stretch of this machine's speed, which
    // drifts by more than the gap between the two (`cargo xtask bench`
    // reports the median pair, and each pair's ratio).
    let plain = ("host-run", &host, &module);
    let logged = ("host-run-audited", &audited, &audited_module);
    for round in 1..=AUDIT_PAIRS {
        let order = if round % 2 == 1 {
            [plain, logged]
        } else {
            [logged, plain]
        };
        for (name, host, module) in order {
            group.bench_function(format!("{name}-{round}"), |b| {
                b.iter(|| {
                    let report = runtime
                        .block_on(host.run(module, chassis::RunRequest::new(input.clone())))
                        .unwrap();
                    assert!(report.result.is_ok());
                })
            });
        }
    }
    group.finish();
    audit.close().unwrap();
}

/// A CPU-bound guest (FNV over 1 MiB, 16 rounds): chassis with fuel and
/// epoch interruption, and chassis metering epochs only
/// (`runtime.metering = "epoch"`), next to the same guest on an engine with
/// neither.
fn cpu(c: &mut Criterion) {
    use chassis_tests::programs::HASHER_COMPONENT;
    let fuel = Chassis::new(HASHER_COMPONENT, 4);
    let input = b"1048576".to_vec();

    // The chassis engine's exact configuration with fuel and epochs off, so
    // the ratio prices those two alone (bounds checks, pooling: identical).
    let mut config = chassis::engine::EngineConfig::new()
        .with_pool_slots(4)
        .wasmtime_config();
    config.consume_fuel(false).epoch_interruption(false);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let pre = raw_pre(&engine, &fuel.wasm);

    let mut group = c.benchmark_group("cpu");
    group.sample_size(20);
    group.bench_function("chassis", |b| b.iter(|| fuel.run_once(&input)));
    let epoch = Chassis::with_caps(
        HASHER_COMPONENT,
        4,
        chassis::sandbox::HostCaps {
            metering: chassis::limits::Metering::Epoch,
            ..Default::default()
        },
    );
    group.bench_function("chassis-epoch", |b| b.iter(|| epoch.run_once(&input)));
    group.bench_function("uninstrumented", |b| {
        b.iter(|| fuel.runtime.block_on(raw_run(&engine, &pre, &input, false)))
    });
    group.finish();
}

/// `Host::run` of the `hello` agent in each language (Rust as the
/// reference), each registered on a fresh host first: the registration is
/// the first compile, timed and written with each component's size to
/// target/bench-results/agents.json for `cargo xtask bench`.
fn agents(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("agents");
    let mut compiles = serde_json::Map::new();
    for (name, path) in [
        ("rust", HELLO_COMPONENT),
        ("python", HELLO_PY_COMPONENT),
        ("starlingmonkey", HELLO_JS_COMPONENT),
        ("quickjs", HELLO_QJS_COMPONENT),
    ] {
        let wasm = std::fs::read(path).unwrap();
        let host = Host::builder().pool_slots(16).build().unwrap();
        let started = std::time::Instant::now();
        let module = host.modules().register(&wasm).unwrap();
        let compile = started.elapsed();
        compiles.insert(
            name.to_string(),
            serde_json::json!({
                "bytes": wasm.len(),
                "compile_ms": compile.as_secs_f64() * 1e3,
            }),
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                let report = runtime
                    .block_on(host.run(&module, chassis::RunRequest::new("chassis")))
                    .unwrap();
                assert_eq!(report.result.unwrap(), b"Hello, chassis!");
            })
        });
    }
    group.finish();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("agents.json"),
        serde_json::to_vec_pretty(&compiles).unwrap(),
    )
    .unwrap();
}

criterion_group!(benches, sandbox, cpu, agents);
criterion_main!(benches);
