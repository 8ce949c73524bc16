//! Every guest under `modules/` run through the library API, in one host
//! process: each ends with its exact outcome kind, and the host runs `hello`
//! successfully right after each one.

use std::time::Duration;

use chassis::sandbox::{FuelRequest, LimitsRequest, RunReport};
use chassis::{ErrorKind, Host, RunRequest};
use chassis_tests::programs::*;
use chassis_tests::wasm;

/// Requires a test module named after every guest (wasmtime's
/// `assert_test_exists` trick): adding a guest without a test fails the build.
macro_rules! assert_test_exists {
    ($name:ident) => {
        #[expect(unused_imports, reason = "only checks that the module exists")]
        use self::$name as _;
    };
}
chassis_tests::foreach_program!(assert_test_exists);

#[path = "sandbox/agents.rs"]
mod agents;
use agents::{
    hello_js, hello_py, hello_qjs, hostile_twin_js, hostile_twin_py, hostile_twin_qjs, http_js,
    http_py,
};
#[path = "sandbox/boundary.rs"]
mod boundary;
use boundary::{
    hostile_handle_hog, hostile_host_call_bomb, hostile_instance_hog, hostile_instance_max,
    hostile_secret_leak, hostile_socket_hog,
};
#[path = "sandbox/capabilities.rs"]
mod capabilities;
use capabilities::{
    Fixture, SecretsFile, hostile_dns_probe, hostile_escape, hostile_escape_cmd,
    hostile_preopen_plant, hostile_preopen_plant_cmd, hostile_secret_dribble, hostile_secret_thief,
    hostile_table_grow,
};

fn host() -> Host {
    Host::builder().pool_slots(8).build().expect("host starts")
}

fn quick() -> LimitsRequest {
    LimitsRequest {
        fuel: Some(FuelRequest::Budget(200_000_000)),
        memory_bytes: Some(32 << 20),
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }
}

async fn run(host: &Host, path: &str, input: &[u8], request: &LimitsRequest) -> RunReport {
    let module = host
        .modules()
        .register(&wasm(path))
        .expect("module registers");
    host.run(&module, RunRequest::new(input).limits(request.clone()))
        .await
        .expect("run starts")
}

/// The host still serves a benign run after whatever came before.
async fn hello_still_works(host: &Host) {
    let report = run(host, HELLO_COMPONENT, b"again", &quick()).await;
    assert_eq!(report.result.expect("hello succeeds"), b"Hello, again!");
}

fn kind(report: &RunReport) -> ErrorKind {
    match &report.result {
        Ok(out) => panic!(
            "expected an error, got output {:?}",
            String::from_utf8_lossy(out)
        ),
        Err(e) => e.kind(),
    }
}

mod hello {
    use super::*;

    #[tokio::test]
    async fn greets_the_name_it_is_given_and_logs_it() {
        let host = host();
        let report = run(&host, HELLO_COMPONENT, b"chassis", &quick()).await;
        assert_eq!(report.result.unwrap(), b"Hello, chassis!");
        assert_eq!(report.logs.len(), 1);
        assert_eq!(report.logs[0].message, "greeting");
        assert_eq!(
            report.logs[0].fields,
            vec![("name".to_string(), "chassis".to_string())]
        );
        assert!(report.usage.fuel_consumed > 0);
        assert!(report.usage.peak_memory_bytes >= 65536);
    }

    #[tokio::test]
    async fn rejects_non_utf8_input_as_a_guest_error() {
        let host = host();
        let report = run(&host, HELLO_COMPONENT, &[0xff, 0xfe], &quick()).await;
        match report.result {
            Err(chassis::sandbox::RunError::GuestError { code, .. }) => {
                assert_eq!(code, "bad-input")
            }
            other => panic!("expected guest-error, got {other:?}"),
        }
    }
}

mod echo {
    use super::*;

    #[tokio::test]
    async fn returns_its_input_unchanged() {
        let host = host();
        let input: Vec<u8> = (0..=255).cycle().take(100_000).collect();
        let report = run(&host, ECHO_COMPONENT, &input, &quick()).await;
        assert_eq!(report.result.unwrap(), input);
    }

    #[tokio::test]
    async fn output_over_the_limit_is_refused() {
        let host = host();
        let request = LimitsRequest {
            output_bytes: Some(10),
            ..quick()
        };
        let report = run(&host, ECHO_COMPONENT, &[7; 11], &request).await;
        assert_eq!(kind(&report), ErrorKind::OutputLimit);
        hello_still_works(&host).await;
    }
}

mod wordcount {
    use super::*;

    #[tokio::test]
    async fn a_plain_command_reads_stdin_and_writes_stdout() {
        let host = host();
        let module = host.modules().register(&wasm(WORDCOUNT_COMPONENT)).unwrap();
        assert_eq!(module.world(), chassis::modules::World::Command);
        let report = host
            .run(
                &module,
                RunRequest::new(b"one two\nthree\n".to_vec()).limits(quick()),
            )
            .await
            .unwrap();
        assert_eq!(report.result.unwrap(), b"2 3 14\n");
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_a_guest_error_with_its_status() {
        let host = host();
        let report = run(&host, WORDCOUNT_COMPONENT, &[0xff], &quick()).await;
        match &report.result {
            // WASI 0.2 `exit` carries only ok/err, so `exit(2)` arrives as
            // status 1, exactly as under `wasmtime run`.
            Err(chassis::sandbox::RunError::Exit { status }) => assert_eq!(*status, 1),
            other => panic!("expected exit 1, got {other:?}"),
        }
        assert_eq!(kind(&report), ErrorKind::GuestError);
        assert!(String::from_utf8_lossy(&report.stderr.bytes).contains("not UTF-8"));
        hello_still_works(&host).await;
    }
}

mod sleeper {
    use super::*;

    #[tokio::test]
    async fn sleeps_without_burning_fuel_and_many_share_one_thread() {
        let host = host();
        let mut tasks = Vec::new();
        // As many as the pool has slots: all live at once on one thread.
        for _ in 0..8 {
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                run(&host, SLEEPER_COMPONENT, b"200", &quick()).await
            }));
        }
        let mut reports = Vec::new();
        for t in tasks {
            reports.push(t.await.unwrap());
        }
        for r in &reports {
            assert_eq!(r.result.as_deref().unwrap(), b"slept 200 ms");
            assert!(
                r.usage.fuel_consumed < 1_000_000,
                "parked, not spinning: {}",
                r.usage.fuel_consumed
            );
        }
    }

    #[tokio::test]
    async fn a_sleep_past_the_deadline_is_deadline_exceeded() {
        let host = host();
        let request = LimitsRequest {
            timeout: Some(Duration::from_millis(100)),
            ..quick()
        };
        let report = run(&host, SLEEPER_COMPONENT, b"5000", &request).await;
        assert_eq!(kind(&report), ErrorKind::DeadlineExceeded);
    }
}

mod hasher {
    use super::*;

    #[tokio::test]
    async fn hashes_a_generated_buffer_deterministically() {
        let host = host();
        let a = run(&host, HASHER_COMPONENT, b"65536", &quick()).await;
        let b = run(&host, HASHER_COMPONENT, b"65536", &quick()).await;
        assert_eq!(a.result.as_deref().unwrap(), b.result.as_deref().unwrap());
        assert_eq!(
            a.usage.fuel_consumed, b.usage.fuel_consumed,
            "fuel is deterministic"
        );
        assert!(
            a.usage.fuel_consumed > 16 * 65536,
            "{}",
            a.usage.fuel_consumed
        );
    }
}

mod hostile_spin {
    use super::*;

    /// A host started with `runtime.metering = "epoch"`: no fuel compiled in.
    fn epoch_host() -> Host {
        Host::builder()
            .caps(chassis::sandbox::HostCaps {
                metering: chassis::limits::Metering::Epoch,
                ..Default::default()
            })
            .pool_slots(8)
            .build()
            .expect("host starts")
    }

    #[tokio::test]
    async fn under_epoch_metering_an_endless_loop_hits_its_deadline_and_reports_no_fuel() {
        let host = epoch_host();
        let request = LimitsRequest {
            fuel: None,
            timeout: Some(Duration::from_millis(300)),
            ..quick()
        };
        let report = run(&host, HOSTILE_SPIN_COMPONENT, b"", &request).await;
        assert_eq!(kind(&report), ErrorKind::DeadlineExceeded);
        assert_eq!(report.usage.fuel_consumed, 0);
        assert!(report.usage.cpu_time_us > 0);
        // The CPU share is still enforced at epoch ticks without fuel.
        let shared = LimitsRequest {
            cpu_percent: Some(20),
            timeout: Some(Duration::from_millis(400)),
            ..request
        };
        let report = run(&host, HOSTILE_SPIN_COMPONENT, b"", &shared).await;
        assert_eq!(kind(&report), ErrorKind::DeadlineExceeded);
        let (cpu, wall) = (
            report.usage.cpu_time_us as f64,
            report.usage.wall_time_us as f64,
        );
        assert!(cpu <= wall * 0.5, "cpu {cpu} µs of wall {wall} µs");
        let hello = run(
            &host,
            HELLO_COMPONENT,
            b"epoch",
            &LimitsRequest {
                fuel: None,
                ..quick()
            },
        )
        .await;
        assert_eq!(hello.result.unwrap(), b"Hello, epoch!");
        assert_eq!(hello.usage.fuel_consumed, 0);
    }

    #[tokio::test]
    async fn under_epoch_metering_a_fuel_budget_is_refused_before_the_sandbox_starts() {
        let host = epoch_host();
        let module = host
            .modules()
            .register(&wasm(HOSTILE_SPIN_COMPONENT))
            .expect("module registers");
        let err = host
            .run(&module, RunRequest::new(Vec::new()).limits(quick()))
            .await
            .expect_err("a fuel budget cannot be honoured without fuel");
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        assert!(
            matches!(
                err,
                chassis::StartError::Limits {
                    source: chassis::sandbox::LimitsError::FuelNotMetered { asked: 200_000_000 },
                    ..
                }
            ),
            "{err:?}"
        );
        hello_still_works_unmetered(&host).await;
    }

    #[tokio::test]
    async fn an_epoch_runner_given_limits_with_a_budget_refuses_them_rather_than_run_unbounded() {
        let host = epoch_host();
        let module = host
            .modules()
            .register(&wasm(HOSTILE_SPIN_COMPONENT))
            .expect("module registers");
        let mut limits = host
            .limits_for(&RunRequest::new(Vec::new()).limits(LimitsRequest {
                fuel: None,
                ..quick()
            }))
            .unwrap();
        limits.fuel = Some(1_000_000);
        let report = host
            .runner()
            .run(
                &module,
                Vec::new(),
                &limits,
                &std::sync::Arc::new(chassis::policy::Policy::deny_all()),
                None,
                chassis::secrets::Granted::none(),
            )
            .await;
        assert_eq!(kind(&report), ErrorKind::Internal);
        let message = report.result.unwrap_err().to_string();
        assert!(message.contains("meters no fuel"), "{message}");
        hello_still_works_unmetered(&host).await;
    }

    async fn hello_still_works_unmetered(host: &Host) {
        let request = LimitsRequest {
            fuel: None,
            ..quick()
        };
        let report = run(host, HELLO_COMPONENT, b"again", &request).await;
        assert_eq!(report.result.expect("hello succeeds"), b"Hello, again!");
    }

    #[tokio::test]
    async fn an_endless_loop_runs_out_of_fuel() {
        let host = host();
        let report = run(&host, HOSTILE_SPIN_COMPONENT, b"", &quick()).await;
        assert_eq!(kind(&report), ErrorKind::OutOfFuel);
        assert!(report.usage.fuel_consumed >= 200_000_000);
        hello_still_works(&host).await;
    }

    #[tokio::test]
    async fn with_fuel_off_an_endless_loop_hits_the_deadline() {
        let host = host();
        let request = LimitsRequest {
            fuel: Some(FuelRequest::Unmetered),
            timeout: Some(Duration::from_millis(200)),
            ..quick()
        };
        let report = run(&host, HOSTILE_SPIN_COMPONENT, b"", &request).await;
        assert_eq!(kind(&report), ErrorKind::DeadlineExceeded);
        hello_still_works(&host).await;
    }

    #[tokio::test]
    async fn a_cpu_share_pauses_a_busy_guest() {
        let host = host();
        let request = LimitsRequest {
            fuel: Some(FuelRequest::Unmetered),
            timeout: Some(Duration::from_millis(400)),
            cpu_percent: Some(20),
            ..quick()
        };
        let report = run(&host, HOSTILE_SPIN_COMPONENT, b"", &request).await;
        assert_eq!(kind(&report), ErrorKind::DeadlineExceeded);
        let (cpu, wall) = (
            report.usage.cpu_time_us as f64,
            report.usage.wall_time_us as f64,
        );
        // Unthrottled it would hold the thread ~100% of the time; at a 20%
        // share it is paused most of it (generous slack for a loaded machine).
        assert!(cpu <= wall * 0.5, "cpu {cpu} µs of wall {wall} µs");
        assert!(cpu > 0.0);
    }

    #[tokio::test]
    async fn busy_guests_share_one_thread() {
        // Two spinning guests on a current-thread runtime: epoch yields let
        // both reach their own deadline instead of the first starving the second.
        let host = host();
        let request = LimitsRequest {
            fuel: Some(FuelRequest::Unmetered),
            timeout: Some(Duration::from_millis(150)),
            ..quick()
        };
        let (a, b) = tokio::join!(
            run(&host, HOSTILE_SPIN_COMPONENT, b"", &request),
            run(&host, HOSTILE_SPIN_COMPONENT, b"", &request)
        );
        assert_eq!(kind(&a), ErrorKind::DeadlineExceeded);
        assert_eq!(kind(&b), ErrorKind::DeadlineExceeded);
    }
}

mod hostile_memory_bomb {
    use super::*;

    #[tokio::test]
    async fn growing_past_the_memory_limit_ends_in_memory_limit() {
        let host = host();
        let report = run(&host, HOSTILE_MEMORY_BOMB_COMPONENT, b"", &quick()).await;
        assert_eq!(kind(&report), ErrorKind::MemoryLimit);
        assert!(report.usage.peak_memory_bytes <= 32 << 20);
        assert!(report.usage.peak_memory_bytes > 16 << 20);
        hello_still_works(&host).await;
    }
}

mod hostile_panic {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_a_trap_with_a_wasm_backtrace() {
        let host = host();
        let report = run(&host, HOSTILE_PANIC_COMPONENT, b"abc", &quick()).await;
        assert_eq!(kind(&report), ErrorKind::Trap);
        match &report.result {
            Err(chassis::sandbox::RunError::Trap { backtrace, message }) => {
                assert!(message.contains("unreachable"), "{message}");
                let bt = backtrace.as_deref().expect("a backtrace");
                assert!(bt.contains("explode"), "{bt}");
            }
            other => panic!("{other:?}"),
        }
        assert!(String::from_utf8_lossy(&report.stderr.bytes).contains("agent gave up on 3 bytes"));
        hello_still_works(&host).await;
    }
}

mod hostile_stack_overflow {
    use super::*;

    #[tokio::test]
    async fn unbounded_recursion_is_a_trap_not_a_crash() {
        let host = host();
        let report = run(&host, HOSTILE_STACK_OVERFLOW_COMPONENT, b"", &quick()).await;
        assert_eq!(kind(&report), ErrorKind::Trap);
        let text = report.result.unwrap_err().to_string();
        assert!(text.contains("call stack exhausted"), "{text}");
        hello_still_works(&host).await;
    }
}

mod hostile_stdout_flood {
    use super::*;

    #[tokio::test]
    async fn output_past_the_cap_is_dropped_and_counted() {
        let host = host();
        let request = LimitsRequest {
            output_bytes: Some(4096),
            ..quick()
        };
        let report = run(&host, HOSTILE_STDOUT_FLOOD_COMPONENT, b"", &request).await;
        assert_eq!(report.result.as_deref().unwrap(), b"flooded");
        assert_eq!(report.stdout.bytes.len(), 4096);
        assert_eq!(report.stdout.dropped, 8 * 1024 * 1024 - 4096);
        assert_eq!(report.stderr.bytes.len(), 4096);
        hello_still_works(&host).await;
    }
}

mod hostile_guest_error {
    use super::*;

    #[tokio::test]
    async fn an_agent_error_passes_code_and_message_through() {
        let host = host();
        let report = run(&host, HOSTILE_GUEST_ERROR_COMPONENT, b"xyz", &quick()).await;
        match report.result {
            Err(chassis::sandbox::RunError::GuestError { code, message }) => {
                assert_eq!(code, "refused");
                assert_eq!(message, "will not handle 3 bytes");
            }
            other => panic!("{other:?}"),
        }
    }
}

fn register_error(host: &Host, bytes: &[u8]) -> chassis::modules::ModuleError {
    host.modules()
        .register(bytes)
        .expect_err("module is refused")
}

mod hostile_wrong_world {
    use super::*;

    #[tokio::test]
    async fn a_run_export_of_the_wrong_type_is_an_invalid_module() {
        let host = host();
        let err = register_error(&host, &wasm(HOSTILE_WRONG_WORLD_COMPONENT));
        assert_eq!(err.kind(), ErrorKind::InvalidModule);
        let text = err.to_string();
        assert!(text.contains("`run` export does not match"), "{text}");
        hello_still_works(&host).await;
    }
}

mod hostile_unknown_import {
    use super::*;

    #[tokio::test]
    async fn an_import_the_host_lacks_is_an_invalid_module_naming_it() {
        let host = host();
        let err = register_error(&host, &wasm(HOSTILE_UNKNOWN_IMPORT_COMPONENT));
        assert_eq!(err.kind(), ErrorKind::InvalidModule);
        assert!(err.to_string().contains("chassis:agent/telepathy"), "{err}");
        hello_still_works(&host).await;
    }
}

mod hostile_no_export {
    use super::*;

    #[tokio::test]
    async fn a_component_without_run_is_an_invalid_module_listing_exports() {
        let host = host();
        let err = register_error(&host, &wasm(HOSTILE_NO_EXPORT_COMPONENT));
        assert_eq!(err.kind(), ErrorKind::InvalidModule);
        let text = err.to_string();
        assert!(
            text.contains("exports neither `run` nor `wasi:cli/run`"),
            "{text}"
        );
        assert!(text.contains("exports found: []"), "{text}");
        hello_still_works(&host).await;
    }
}

#[tokio::test]
async fn malformed_bytes_are_an_invalid_module() {
    let host = host();
    for (bytes, needle) in [
        (&b"not wasm at all"[..], "magic"),
        (&b"\0asm\x0d\x00\x01\x00garbage"[..], "malformed"),
        (&b"\0asm\x01\x00\x00\x00"[..], "core WebAssembly module"),
        (&b""[..], "magic"),
    ] {
        let err = register_error(&host, bytes);
        assert_eq!(err.kind(), ErrorKind::InvalidModule, "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    hello_still_works(&host).await;
}

#[tokio::test]
async fn registering_the_same_bytes_twice_compiles_once() {
    let host = host();
    let a = host.modules().register(&wasm(ECHO_COMPONENT)).unwrap();
    let b = host.modules().register(&wasm(ECHO_COMPONENT)).unwrap();
    assert_eq!(a.id(), b.id());
    let compiled = host
        .modules()
        .stats()
        .compiled
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(compiled, 1);
}

#[tokio::test]
async fn a_request_above_the_host_caps_is_refused_before_running() {
    let host = host();
    let module = host.modules().register(&wasm(ECHO_COMPONENT)).unwrap();
    let request = LimitsRequest {
        memory_bytes: Some(4 << 30),
        ..Default::default()
    };
    let err = host
        .run(&module, RunRequest::new(vec![]).limits(request))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(
        err.to_string()
            .contains("memory of 4096 MiB is above the allowed 512 MiB"),
        "{err}"
    );
}

#[tokio::test]
async fn many_runs_share_the_pool_without_leaking_slots() {
    // More runs than pool slots, in sequence: every slot is returned.
    let host = host();
    for i in 0..40 {
        let report = run(&host, ECHO_COMPONENT, format!("{i}").as_bytes(), &quick()).await;
        assert_eq!(report.result.unwrap(), format!("{i}").as_bytes());
    }
}

mod secret_reader {
    use super::*;
    use chassis::policy::Policy;
    use std::sync::Arc;

    const POLICY: &str = "name = \"reader\"\n\
        [secrets.smtp]\npath = \"secret/reports\"\nkey = \"smtp_password\"\n\
        [secrets.api]\npath = \"secret/data/reports\"\nkey = \"api_key\"\nenv = \"API_KEY\"\n";

    #[tokio::test]
    async fn reads_granted_secrets_and_every_echo_of_them_is_redacted() {
        let secrets = SecretsFile::new(
            "[\"secret/reports\"]\nsmtp_password = \"smtp-pa55-word\"\napi_key = \"key-0123456789\"\n",
        );
        let host = secrets.host();
        let policy = Arc::new(Policy::parse(POLICY, std::path::Path::new("reader.toml")).unwrap());
        let module = host
            .modules()
            .register(&wasm(SECRET_READER_COMPONENT))
            .unwrap();
        let report = host
            .run(
                &module,
                RunRequest::new("smtp api env:API_KEY")
                    .policy(policy)
                    .limits(quick()),
            )
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(report.result.as_ref().unwrap().clone()).unwrap(),
            "smtp 14\napi 14\nenv:API_KEY 14\n"
        );
        let stdout = String::from_utf8(report.stdout.bytes.clone()).unwrap();
        assert_eq!(
            stdout,
            "smtp=[REDACTED:smtp]\napi=[REDACTED:api]\nenv:API_KEY=[REDACTED:api]\n"
        );
        let stderr = String::from_utf8(report.stderr.bytes.clone()).unwrap();
        assert!(stderr.contains("read smtp: [REDACTED:smtp]"), "{stderr}");
        assert_eq!(report.logs[0].fields[1].1, "[REDACTED:smtp]");
        let everything = format!("{stdout}{stderr}{:?}", report.logs);
        assert!(!everything.contains("smtp-pa55-word") && !everything.contains("key-0123456789"));
    }

    #[tokio::test]
    async fn an_environment_variable_is_injected_only_when_the_grant_names_one() {
        let secrets =
            SecretsFile::new("[\"secret/reports\"]\nsmtp_password = \"x1\"\napi_key = \"x2\"\n");
        let host = secrets.host();
        let policy = Arc::new(Policy::parse(POLICY, std::path::Path::new("reader.toml")).unwrap());
        let module = host
            .modules()
            .register(&wasm(SECRET_READER_COMPONENT))
            .unwrap();
        let report = host
            .run(
                &module,
                RunRequest::new("env:SMTP_PASSWORD")
                    .policy(policy)
                    .limits(quick()),
            )
            .await
            .unwrap();
        match report.result {
            Err(chassis::sandbox::RunError::GuestError { code, .. }) => assert_eq!(code, "no-env"),
            other => panic!("{other:?}"),
        }
    }
}
