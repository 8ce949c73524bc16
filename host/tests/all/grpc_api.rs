//! The chassis.v1 API over a real loopback socket: every RPC and every
//! error code, with the machine-readable kind.

use crate::common;

use chassis::config::Config;
use chassis::grpc::proto::{self, run_event::Event};
use chassis_tests::programs::*;
use common::*;
use tonic::Code;

#[tokio::test]
async fn register_list_run_and_remove() {
    let server = TestServer::start(Config::default(), &[]).await;
    let mut client = server.client().await;
    let hello = register(&mut client, HELLO_COMPONENT).await;
    assert_eq!(hello.id.len(), 64);
    assert_eq!(hello.world, proto::World::Agent as i32);
    let wc = register(&mut client, WORDCOUNT_COMPONENT).await;
    assert_eq!(wc.world, proto::World::Command as i32);

    let listed = client
        .list_modules(proto::ListModulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.modules.len(), 2);
    assert!(
        listed
            .modules
            .iter()
            .any(|m| m.id == wc.id && m.world == proto::World::Command as i32)
    );

    let out = client
        .run(run_request(&hello.id, "", "grpc"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, grpc!");
    assert_eq!(out.run_id.len(), 32);
    assert_eq!(out.logs[0].message, "greeting");
    assert!(out.usage.unwrap().fuel_consumed > 0);

    // A plain WASI command runs over gRPC with stdin as input.
    let out = client
        .run(run_request(&wc.id, "", "a b\nc\n"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"2 3 6\n");

    client
        .remove_module(proto::RemoveModuleRequest {
            id: hello.id.clone(),
        })
        .await
        .unwrap();
    assert_status(
        client.run(run_request(&hello.id, "", "")).await,
        Code::NotFound,
        "not-found",
    );
    assert_status(
        client
            .remove_module(proto::RemoveModuleRequest {
                id: hello.id.clone(),
            })
            .await,
        Code::NotFound,
        "not-found",
    );
}

#[tokio::test]
async fn run_stream_sends_logs_then_the_outcome() {
    let server = TestServer::start(Config::default(), &[]).await;
    let mut client = server.client().await;
    let hello = register(&mut client, HELLO_COMPONENT).await;
    let mut stream = client
        .run_stream(run_request(&hello.id, "", "stream"))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        events.push(event.event.unwrap());
    }
    assert!(
        matches!(&events[0], Event::Log(l) if l.message == "greeting"),
        "{events:?}"
    );
    match events.last().unwrap() {
        Event::Outcome(o) => {
            assert_eq!(o.kind, "ok");
            assert_eq!(o.output, b"Hello, stream!");
        }
        other => panic!("{other:?}"),
    }

    // Guest failures arrive as the outcome, with stderr streamed before it.
    let panic = register(&mut client, HOSTILE_PANIC_COMPONENT).await;
    let mut stream = client
        .run_stream(run_request(&panic.id, "", "x"))
        .await
        .unwrap()
        .into_inner();
    let mut stderr = Vec::new();
    let mut outcome = None;
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            Event::Stderr(b) => stderr.extend(b),
            Event::Outcome(o) => outcome = Some(o),
            _ => {}
        }
    }
    assert!(String::from_utf8_lossy(&stderr).contains("agent gave up"));
    assert_eq!(outcome.unwrap().kind, "trap");

    // A WASI command streams too: its stdout is streamed and is the output.
    let wc = register(&mut client, WORDCOUNT_COMPONENT).await;
    let mut stream = client
        .run_stream(run_request(&wc.id, "", "a b c\n"))
        .await
        .unwrap()
        .into_inner();
    let mut stdout = Vec::new();
    let mut outcome = None;
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            Event::Stdout(b) => stdout.extend(b),
            Event::Outcome(o) => outcome = Some(o),
            _ => {}
        }
    }
    let outcome = outcome.unwrap();
    assert_eq!(outcome.kind, "ok");
    assert_eq!(outcome.output, b"1 3 6\n");
    assert_eq!(stdout, b"1 3 6\n");
}

#[tokio::test]
async fn every_error_maps_to_its_code_and_kind() {
    let pinned = format!("name = \"pinned\"\nmodules = [\"{}\"]\n", "0".repeat(64));
    let server = TestServer::start(Config::default(), &["name = \"open\"", &pinned]).await;
    let mut client = server.client().await;
    let hello = register(&mut client, HELLO_COMPONENT).await;
    let spin = register(&mut client, HOSTILE_SPIN_COMPONENT).await;
    let bomb = register(&mut client, HOSTILE_MEMORY_BOMB_COMPONENT).await;
    let panic = register(&mut client, HOSTILE_PANIC_COMPONENT).await;
    let refuse = register(&mut client, HOSTILE_GUEST_ERROR_COMPONENT).await;

    // INVALID_ARGUMENT: bad module bytes, a bad request.
    let junk = vec![proto::RegisterModuleChunk {
        data: b"\0asm\x0d\x00\x01\x00junk".to_vec(),
    }];
    assert_status(
        client.register_module(tokio_stream::iter(junk)).await,
        Code::InvalidArgument,
        "invalid-module",
    );
    let unknown_import = std::fs::read(HOSTILE_UNKNOWN_IMPORT_COMPONENT).unwrap();
    let chunks = vec![proto::RegisterModuleChunk {
        data: unknown_import,
    }];
    let status = assert_status(
        client.register_module(tokio_stream::iter(chunks)).await,
        Code::InvalidArgument,
        "invalid-module",
    );
    assert!(
        status.message().contains("telepathy"),
        "{}",
        status.message()
    );
    let mut bad = run_request(&hello.id, "", "");
    bad.limits = Some(proto::Limits {
        cpu_percent: 150,
        ..Default::default()
    });
    assert_status(
        client.run(bad).await,
        Code::InvalidArgument,
        "invalid-request",
    );
    let mut greedy = run_request(&hello.id, "", "");
    greedy.limits = Some(proto::Limits {
        memory_mb: 1 << 20,
        ..Default::default()
    });
    assert_status(
        client.run(greedy).await,
        Code::InvalidArgument,
        "invalid-request",
    );
    assert_status(
        client.run(run_request("", "", "")).await,
        Code::InvalidArgument,
        "invalid-request",
    );

    // NOT_FOUND: module, policy.
    assert_status(
        client.run(run_request(&"f".repeat(64), "", "")).await,
        Code::NotFound,
        "not-found",
    );
    assert_status(
        client
            .run(run_request(&hello.id, "no-such-policy", ""))
            .await,
        Code::NotFound,
        "not-found",
    );

    // PERMISSION_DENIED: the policy does not pin this module.
    assert_status(
        client.run(run_request(&hello.id, "pinned", "")).await,
        Code::PermissionDenied,
        "policy-denied",
    );

    // RESOURCE_EXHAUSTED: fuel, memory.
    let mut fuel = run_request(&spin.id, "open", "");
    fuel.limits = Some(proto::Limits {
        fuel: 10_000_000,
        ..Default::default()
    });
    let status = assert_status(
        client.run(fuel).await,
        Code::ResourceExhausted,
        "out-of-fuel",
    );
    assert!(status.metadata().get("chassis-usage").is_some());
    let mut memory = run_request(&bomb.id, "", "");
    memory.limits = Some(proto::Limits {
        memory_mb: 16,
        ..Default::default()
    });
    assert_status(
        client.run(memory).await,
        Code::ResourceExhausted,
        "memory-limit",
    );

    // DEADLINE_EXCEEDED: from the request's limit, and from the call's own deadline.
    let mut slow = run_request(&spin.id, "", "");
    slow.limits = Some(proto::Limits {
        timeout_ms: 150,
        ..Default::default()
    });
    assert_status(
        client.run(slow).await,
        Code::DeadlineExceeded,
        "deadline-exceeded",
    );
    let mut call = tonic::Request::new(run_request(&spin.id, "", ""));
    call.set_timeout(std::time::Duration::from_millis(300));
    assert_status(
        client.run(call).await,
        Code::DeadlineExceeded,
        "deadline-exceeded",
    );

    // ABORTED: the guest trapped or refused.
    let status = assert_status(
        client.run(run_request(&panic.id, "", "")).await,
        Code::Aborted,
        "trap",
    );
    assert!(status.metadata().get("chassis-run-id").is_some());
    assert_status(
        client.run(run_request(&refuse.id, "", "")).await,
        Code::Aborted,
        "guest-error",
    );

    // After all of that, the server still serves.
    let out = client
        .run(run_request(&hello.id, "open", "still here"))
        .await
        .unwrap();
    assert_eq!(out.into_inner().output, b"Hello, still here!");
}

#[tokio::test]
async fn list_policies_shows_what_each_grants() {
    let server = TestServer::start(
        Config::default(),
        &["name = \"web\"\ndescription = \"one API\"\n[network]\nallow = [\"api.example.com:443\"]\n"],
    )
    .await;
    let mut client = server.client().await;
    let policies = client
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].name, "web");
    assert_eq!(policies[0].description, "one API");
    let json: serde_json::Value = serde_json::from_str(&policies[0].json).unwrap();
    assert_eq!(json["network"]["allow"][0]["host"], "api.example.com");
}

#[tokio::test]
async fn oversized_modules_and_messages_are_refused() {
    let mut config = Config::default();
    config.runtime.max_module_mb = 1;
    let server = TestServer::start(config, &[]).await;
    let mut client = server.client().await;
    let chunks: Vec<proto::RegisterModuleChunk> = (0..3)
        .map(|_| proto::RegisterModuleChunk {
            data: vec![0; 512 * 1024],
        })
        .collect();
    let status = assert_status(
        client.register_module(tokio_stream::iter(chunks)).await,
        Code::InvalidArgument,
        "invalid-module",
    );
    assert!(
        status
            .message()
            .contains("larger than the limit of 1048576 bytes"),
        "{status:?}"
    );
    // A single message over server.max_request_mb is refused by the
    // transport (tonic answers OUT_OF_RANGE) and the server keeps serving.
    let hello = register(&mut client, HELLO_COMPONENT).await;
    let huge = run_request(&hello.id, "", &"x".repeat(17 * 1024 * 1024));
    let err = client.run(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    assert!(client.run(run_request(&hello.id, "", "ok")).await.is_ok());
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = TestServer::start(Config::default(), &[]).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "chassis.v1.Chassis".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // One listing per reflection version, each with its own client.
    macro_rules! list_services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let mut reflection = ServerReflectionClient::new(channel.clone());
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut replies = reflection
                .server_reflection_info(tokio_stream::iter(vec![request]))
                .await
                .unwrap_or_else(|e| panic!("{}: {e:?}", stringify!($version)))
                .into_inner();
            let reply = replies.message().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
                panic!("{reply:?}");
            };
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }};
    }
    for names in [list_services!(v1), list_services!(v1alpha)] {
        assert!(names.iter().any(|n| n == "chassis.v1.Chassis"), "{names:?}");
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    }
}

/// Reads a served host's audit log (`chassis audit show --json`).
fn audit_records(data: &std::path::Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["audit", "show", "--json", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The value of one series in a scrape.
fn metric(text: &str, series: &str) -> f64 {
    common::served::samples(text)
        .into_iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

#[tokio::test]
async fn malformed_module_ids_are_refused_and_delete_nothing() {
    // The built binary with a real data dir: `RemoveModule{id: ""}` used to
    // join to `modules/` itself and delete every cached artifact.
    let served = common::served::Served::start("");
    let mut client = chassis::grpc::proto::chassis_client::ChassisClient::connect(format!(
        "http://{}",
        served.addr
    ))
    .await
    .unwrap();
    let hello = register(&mut client, HELLO_COMPONENT).await;
    let wc = register(&mut client, WORDCOUNT_COMPONENT).await;
    let modules = served.data_dir().join("modules");
    let artifacts = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            for file in std::fs::read_dir(entry.unwrap().path()).unwrap() {
                found.push(file.unwrap().path());
            }
        }
        found.sort();
        found
    };
    let before = artifacts(&modules);
    assert_eq!(before.len(), 2, "{before:?}");

    let bad = [
        String::new(),
        hello.id[..63].to_string(),
        hello.id.to_uppercase(),
        "..".into(),
        "/".into(),
        format!("../{}", &hello.id[3..]),
        format!("{}/..", &hello.id[..61]),
    ];
    for id in &bad {
        let status = assert_status(
            client
                .remove_module(proto::RemoveModuleRequest { id: id.clone() })
                .await,
            Code::InvalidArgument,
            "invalid-request",
        );
        assert!(
            status.message().contains("64 lower-case hex digits"),
            "{id:?}: {}",
            status.message()
        );
        assert_status(
            client.run(run_request(id, "", "x")).await,
            Code::InvalidArgument,
            "invalid-request",
        );
        assert_status(
            client.run_stream(run_request(id, "", "x")).await,
            Code::InvalidArgument,
            "invalid-request",
        );
    }
    // The CLI refuses them too, typed (exit 11), before connecting.
    for id in ["", "..", "/"] {
        let out = served.client(&["remove", id]);
        assert_eq!(out.status.code(), Some(11), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid-request"));
    }

    // Nothing was deleted, and the host still serves both modules.
    assert_eq!(artifacts(&modules), before);
    let out = client
        .run(run_request(&hello.id, "", "still here"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, still here!");
    let out = client
        .run(run_request(&wc.id, "", "a b\n"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"1 2 4\n");

    // Each refusal was counted and audited with its caller.
    let refused = (3 * bad.len()) as f64;
    let text = served.scrape_until(|t| {
        t.contains(&format!(
            "if_chassis_requests_refused_total{{reason=\"module-id\"}} {refused}"
        ))
    });
    assert_eq!(
        metric(
            &text,
            "if_chassis_requests_refused_total{reason=\"module-id\"}"
        ),
        refused
    );
    let mut served = served;
    served.sigterm();
    assert!(served.child.wait().unwrap().success());
    let records = audit_records(&served.data_dir());
    let refusals: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "request.refused")
        .collect();
    assert_eq!(refusals.len(), 3 * bad.len(), "{refusals:?}");
    for r in &refusals {
        assert_eq!(r["fields"]["reason"], "module-id");
        assert_eq!(r["fields"]["kind"], "invalid-request");
        assert_eq!(r["fields"]["caller"], "local");
    }
    assert!(
        refusals
            .iter()
            .any(|r| r["fields"]["rpc"] == "RemoveModule")
    );
    assert!(!records.iter().any(|r| r["kind"] == "module.removed"));
}
