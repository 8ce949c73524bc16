//! The guest/host boundary under a hostile guest: what host calls may make
//! the host copy and keep, host resources a run may hold, and what a pool
//! slot provides. Each attack ends in its exact outcome, the harm is
//! measured as absent, and the host serves `hello` right after.

use chassis::sandbox::{
    DenialKind, MAX_DENIAL_REASON, MAX_DENIAL_TARGET, MAX_LOG_BYTES_PER_RUN, MAX_LOG_TEXT, RunError,
};

use super::*;

/// Bytes an ellipsis adds to clipped text.
const CUT: usize = '…'.len_utf8();

fn deny_all_64mib() -> LimitsRequest {
    LimitsRequest {
        memory_bytes: Some(64 << 20),
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    }
}

fn memory_limit_detail(report: &RunReport) -> String {
    match &report.result {
        Err(RunError::MemoryLimit { detail }) => detail.clone(),
        other => panic!("expected memory-limit, got {other:?}"),
    }
}

pub(crate) mod hostile_host_call_bomb {
    use super::*;

    #[tokio::test]
    async fn a_log_call_carrying_more_than_a_host_call_may_copy_ends_as_memory_limit() {
        let host = host();
        // 8 MiB three times per call: 24 MiB copied per call, 1,000 calls.
        let report = run(
            &host,
            HOSTILE_HOST_CALL_BOMB_COMPONENT,
            b"log 8192 1000",
            &deny_all_64mib(),
        )
        .await;
        let detail = memory_limit_detail(&report);
        assert!(detail.contains("to the host in one call"), "{detail}");
        assert!(report.logs.is_empty());
        hello_still_works(&host).await;
    }

    #[tokio::test]
    async fn logs_under_the_call_limit_are_kept_clipped_within_the_run_budget() {
        let host = host();
        // 256 KiB three times per call (768 KiB, under the 1 MiB a call may
        // copy), 1,000 calls: 750 MiB if the host kept what it was given.
        let report = run(
            &host,
            HOSTILE_HOST_CALL_BOMB_COMPONENT,
            b"log 256 1000",
            &deny_all_64mib(),
        )
        .await;
        assert_eq!(report.result.as_deref().unwrap(), b"done");
        let kept: usize = report
            .logs
            .iter()
            .map(|r| {
                r.message.capacity()
                    + r.fields
                        .iter()
                        .map(|(k, v)| k.capacity() + v.capacity())
                        .sum::<usize>()
            })
            .sum();
        assert!(kept <= MAX_LOG_BYTES_PER_RUN, "kept {kept} bytes of logs");
        assert!(
            report
                .logs
                .iter()
                .all(|r| r.message.len() <= MAX_LOG_TEXT + CUT)
        );
        assert_eq!(report.logs.len() as u64 + report.logs_dropped, 1000);
        assert!(report.logs_dropped > 0);
        hello_still_works(&host).await;
    }

    #[tokio::test]
    async fn a_secret_name_over_the_call_limit_ends_as_memory_limit() {
        let host = host();
        let report = run(
            &host,
            HOSTILE_HOST_CALL_BOMB_COMPONENT,
            b"secret 4096 2000",
            &deny_all_64mib(),
        )
        .await;
        memory_limit_detail(&report);
        assert!(report.denials.is_empty());
        hello_still_works(&host).await;
    }

    #[tokio::test]
    async fn many_denials_of_long_names_keep_a_bounded_record() {
        let host = host();
        let report = run(
            &host,
            HOSTILE_HOST_CALL_BOMB_COMPONENT,
            b"secret 512 2000",
            &deny_all_64mib(),
        )
        .await;
        assert_eq!(report.result.as_deref().unwrap(), b"done");
        assert_eq!(report.denials.len(), 100);
        assert_eq!(report.denials_dropped, 1900);
        for d in &report.denials {
            assert_eq!(d.kind, DenialKind::Secret);
            assert!(
                d.target.len() <= MAX_DENIAL_TARGET + CUT,
                "{}",
                d.target.len()
            );
            assert!(
                d.reason.len() <= MAX_DENIAL_REASON + CUT,
                "{}",
                d.reason.len()
            );
        }
        assert_eq!(
            host.runner().denial_counters().get(DenialKind::Secret),
            2000
        );
        hello_still_works(&host).await;
    }

    #[tokio::test]
    async fn a_huge_guest_error_is_clipped_before_it_is_reported_or_audited() {
        let host = host();
        let report = run(
            &host,
            HOSTILE_HOST_CALL_BOMB_COMPONENT,
            b"error 256 1",
            &deny_all_64mib(),
        )
        .await;
        match &report.result {
            Err(RunError::GuestError { code, message }) => {
                assert_eq!(code.len(), chassis::sandbox::MAX_ERROR_CODE + CUT);
                assert_eq!(message.len(), chassis::sandbox::MAX_ERROR_MESSAGE + CUT);
            }
            other => panic!("{other:?}"),
        }
    }
}

pub(crate) mod hostile_secret_leak {
    use super::*;

    #[tokio::test]
    async fn a_granted_value_comes_out_redacted_in_every_part_of_the_report() {
        const VALUE: &str = "leak-bait-value-5150";
        let secrets = SecretsFile::new(&format!("[\"secret/app\"]\ntoken = \"{VALUE}\"\n"));
        let host = secrets.host();
        let fixture = Fixture::new();
        let policy = fixture.policy("[secrets.api]\npath = \"secret/app\"\nkey = \"token\"\n");
        let module = host
            .modules()
            .register(&wasm(HOSTILE_SECRET_LEAK_COMPONENT))
            .unwrap();
        let report = host
            .run(
                &module,
                RunRequest::new("api").policy(policy).limits(quick()),
            )
            .await
            .unwrap();
        let everything = format!("{report:?}");
        assert!(!everything.contains(VALUE), "leaked: {everything}");
        match &report.result {
            Err(RunError::GuestError { code, message }) => {
                assert_eq!(code, "leak");
                assert_eq!(message, "the value is [REDACTED:api]");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(report.denials[0].kind, DenialKind::Secret);
        assert_eq!(report.denials[0].target, "[REDACTED:api]");
        assert!(report.denials[0].reason.contains("[REDACTED:api]"));
        // The host names built from the value: refused without a resolver
        // (no network is granted), and recorded redacted.
        let lookups: Vec<&str> = report
            .denials
            .iter()
            .filter(|d| d.kind == DenialKind::Network)
            .map(|d| d.target.as_str())
            .collect();
        assert_eq!(
            lookups,
            ["[REDACTED:api].invalid", "[REDACTED:api]"],
            "{:?}",
            report.denials
        );
        assert_eq!(report.logs[0].message, "leaking [REDACTED:api]");
        assert_eq!(
            report.logs[0].fields,
            vec![("[REDACTED:api]".to_string(), "[REDACTED:api]".to_string())]
        );
        assert_eq!(report.stdout.bytes, b"stdout [REDACTED:api]\n");
        assert_eq!(report.stderr.bytes, b"stderr [REDACTED:api]\n");
    }
}

pub(crate) mod hostile_handle_hog {
    use super::*;

    #[tokio::test]
    async fn holding_more_host_resources_than_a_run_may_ends_as_memory_limit() {
        let host = host();
        let report = run(&host, HOSTILE_HANDLE_HOG_COMPONENT, b"100000", &quick()).await;
        let detail = memory_limit_detail(&report);
        assert!(detail.contains("10000 host resources"), "{detail}");
        // Under the cap the same guest finishes.
        let report = run(&host, HOSTILE_HANDLE_HOG_COMPONENT, b"5000", &quick()).await;
        assert_eq!(report.result.as_deref().unwrap(), b"held 5000 fields\n");
        hello_still_works(&host).await;
    }
}

pub(crate) mod hostile_instance_hog {
    use super::*;

    #[tokio::test]
    async fn a_component_needing_more_core_instances_than_a_slot_is_refused_at_registration() {
        let host = host();
        let err = host
            .modules()
            .register(&wasm(HOSTILE_INSTANCE_HOG_COMPONENT))
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidModule);
        let text = format!("{err:#}");
        assert!(text.contains("17 core module instances"), "{text}");
        assert!(text.contains("maximum of 16"), "{text}");
        hello_still_works(&host).await;
    }
}

pub(crate) mod hostile_instance_max {
    use super::*;

    #[tokio::test]
    async fn a_component_at_the_per_slot_maximum_runs_on_every_slot_at_once() {
        // Two slots: the pool holds 2 x 16 core instances, so two runs of a
        // 16-instance component fit at once (with 4 per slot, as before, not
        // even one did: it took other tenants' share and failed as
        // overloaded).
        let host = Host::builder().pool_slots(2).build().unwrap();
        let module = host
            .modules()
            .register(&wasm(HOSTILE_INSTANCE_MAX_COMPONENT))
            .unwrap();
        let (a, b) = tokio::join!(
            host.run(&module, RunRequest::new(vec![]).limits(quick())),
            host.run(&module, RunRequest::new(vec![]).limits(quick())),
        );
        for report in [a.unwrap(), b.unwrap()] {
            assert!(report.result.is_ok(), "{:?}", report.result);
        }
        hello_still_works(&host).await;
    }
}

pub(crate) mod hostile_socket_hog {
    use chassis::sandbox::MAX_SOCKETS_PER_RUN;

    use super::*;

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[tokio::test]
    async fn a_run_creates_at_most_its_socket_share_and_the_fds_are_closed_after() {
        let host = host();
        let fixture = Fixture::new();
        let policy = fixture.policy("[network]\nallow = [\"api.github.com:443\"]\n");
        let module = host
            .modules()
            .register(&wasm(HOSTILE_SOCKET_HOG_COMPONENT))
            .unwrap();
        let before = open_fds();
        let report = host
            .run(
                &module,
                RunRequest::new("100000").policy(policy).limits(quick()),
            )
            .await
            .unwrap();
        let out = String::from_utf8(report.result.as_deref().unwrap().to_vec()).unwrap();
        assert_eq!(
            out.trim(),
            format!("created {MAX_SOCKETS_PER_RUN} sockets, stopped by new-socket-limit")
        );
        assert_eq!(report.denials.len(), 1);
        assert_eq!(report.denials[0].kind, DenialKind::Network);
        // Other tests in this process open and close descriptors too: the
        // guest's 128 must be gone, give or take their noise.
        let after = open_fds();
        assert!(after < before + 32, "fds before {before}, after {after}");
        hello_still_works(&host).await;
    }
}
