//! A plain `fn main()` WASI command (no SDK) gives the same output under
//! `chassis run` and over gRPC as under wasmtime's own command runner, which
//! is what `wasmtime run` does: stdin in, stdout out.

use crate::common;

use std::process::Command;

use chassis::config::Config;
use chassis_tests::programs::WORDCOUNT_COMPONENT;
use common::*;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config as EngineConfig, Engine, Store};
use wasmtime_wasi::p2::bindings::Command as WasiCommand;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct Plain {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Plain {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Runs the command the way `wasmtime run` does; returns (stdout, success).
async fn wasmtime_run(wasm: &[u8], stdin: &[u8]) -> (Vec<u8>, bool) {
    let engine = Engine::new(&EngineConfig::new()).unwrap();
    let component = Component::new(&engine, wasm).unwrap();
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    let stdout = MemoryOutputPipe::new(1 << 20);
    let ctx = WasiCtx::builder()
        .stdin(MemoryInputPipe::new(stdin.to_vec()))
        .stdout(stdout.clone())
        .arg("wordcount.wasm")
        .build();
    let mut store = Store::new(
        &engine,
        Plain {
            ctx,
            table: ResourceTable::new(),
        },
    );
    let command = WasiCommand::instantiate_async(&mut store, &component, &linker)
        .await
        .unwrap();
    let ok = match command.wasi_cli_run().call_run(&mut store).await {
        Ok(result) => result.is_ok(),
        Err(e) => e
            .downcast_ref::<wasmtime_wasi::I32Exit>()
            .is_some_and(|x| x.0 == 0),
    };
    drop(store);
    (stdout.contents().to_vec(), ok)
}

const INPUTS: &[&[u8]] = &[
    b"",
    b"one\n",
    b"the quick brown fox\njumps over\n\nthe lazy dog",
    "naïve café — ünïcödé\nzwei\n".as_bytes(),
    b"   spaced    out   \n\t tabs\t\n",
];

#[tokio::test]
async fn chassis_run_and_grpc_match_wasmtime_run_on_the_same_artifact() {
    let wasm = std::fs::read(WORDCOUNT_COMPONENT).unwrap();
    let server = TestServer::start(Config::default(), &[]).await;
    let mut client = server.client().await;
    let module = register(&mut client, WORDCOUNT_COMPONENT).await;
    let data = tempfile::tempdir().unwrap();
    for input in INPUTS {
        let (expected, ok) = wasmtime_run(&wasm, input).await;
        assert!(ok);
        let cli = Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args([
                "run",
                WORDCOUNT_COMPONENT,
                "--input-file",
                "-",
                "--data-dir",
            ])
            .arg(data.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(input)?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(cli.status.success());
        assert_eq!(
            cli.stdout,
            expected,
            "chassis run, input {:?}",
            String::from_utf8_lossy(input)
        );
        let request = chassis::grpc::proto::RunRequest {
            module_id: module.id.clone(),
            policy: String::new(),
            input: input.to_vec(),
            limits: None,
        };
        let grpc = client.run(request).await.unwrap().into_inner();
        assert_eq!(
            grpc.output,
            expected,
            "gRPC, input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[tokio::test]
async fn a_failing_command_fails_everywhere_with_the_same_status() {
    let wasm = std::fs::read(WORDCOUNT_COMPONENT).unwrap();
    let (_, ok) = wasmtime_run(&wasm, &[0xff, 0xfe]).await;
    assert!(!ok);
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args([
            "run",
            WORDCOUNT_COMPONENT,
            "--json",
            "--input-file",
            "/dev/stdin",
            "--data-dir",
        ])
        .arg(data.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    // Empty input is valid UTF-8, so that one succeeds; feed invalid bytes via a file.
    assert!(out.status.success());
    let bad = data.path().join("bad.bin");
    std::fs::write(&bad, [0xff, 0xfe]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["run", WORDCOUNT_COMPONENT, "--json", "--input-file"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(17));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"]["kind"], "guest-error");
    assert_eq!(report["error"]["exit_status"], 1);
    assert!(
        report["stderr"]["bytes"]
            .as_str()
            .unwrap()
            .contains("not UTF-8")
    );
}
