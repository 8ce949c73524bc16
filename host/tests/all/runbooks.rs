//! Runbooks on the embedded default (in-process claims) through the real
//! gRPC API and the real CLI: submission errors name the step and field,
//! outputs flow between steps, failing steps retry then fail and their
//! dependents are skipped, the watch resumes from a revision, and
//! `chassis runbook run` prints the example runbook's results.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chassis::config::Config;
use chassis::grpc::proto;
use chassis_tests::programs::*;
use common::{TestServer, assert_status, assert_success};
use tokio_stream::StreamExt;
use tonic::Code;

fn guests() -> &'static Path {
    Path::new(ECHO_COMPONENT).parent().unwrap()
}

fn modules(names: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
    names
        .iter()
        .map(|(reference, path)| (reference.to_string(), chassis_tests::wasm(path)))
        .collect()
}

fn submit(text: &str, modules: HashMap<String, Vec<u8>>, id: &str) -> proto::SubmitRunbookRequest {
    proto::SubmitRunbookRequest {
        runbook: text.into(),
        file_name: "test.toml".into(),
        modules,
        id: id.into(),
    }
}

type Client = proto::chassis_client::ChassisClient<tonic::transport::Channel>;

/// Module files sent with a runbook, by reference.
type Modules = HashMap<String, Vec<u8>>;

/// Follows the watch to its last event; returns every event.
async fn watch_to_end(client: &mut Client, id: &str, from: i64) -> Vec<proto::RunbookEvent> {
    let mut stream = client
        .watch_runbook(proto::WatchRunbookRequest {
            runbook_id: id.into(),
            from_revision: from,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("an event within 60 s");
        match next {
            Some(Ok(e)) => {
                let last = e.step.is_empty();
                events.push(e);
                if last {
                    return events;
                }
            }
            Some(Err(s)) => panic!("watch failed: {s:?}"),
            None => panic!("the watch ended without the runbook's final event: {events:?}"),
        }
    }
}

const PIPELINE: &str = r#"
name = "pipeline"
[steps.greet]
module = "hello.wasm"
input = "runbooks"
[steps.shout]
module = "echo.wasm"
depends_on = ["greet"]
input = "<{{greet}}>"
[steps.count]
module = "wordcount.wasm"
depends_on = ["shout"]
input = "{{shout}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_runbook_runs_its_steps_in_order_passing_outputs() {
    let server = TestServer::start(Config::default(), &[]).await;
    let mut client = server.client().await;
    let m = modules(&[
        ("hello.wasm", HELLO_COMPONENT),
        ("echo.wasm", ECHO_COMPONENT),
        ("wordcount.wasm", WORDCOUNT_COMPONENT),
    ]);
    let response = client
        .submit_runbook(submit(PIPELINE, m, "pipe-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.runbook_id, "pipe-1");
    assert!(response.revision > 0);
    let events = watch_to_end(&mut client, "pipe-1", response.revision).await;
    let done: Vec<&str> = events
        .iter()
        .filter(|e| e.state == proto::StepState::Completed as i32)
        .map(|e| e.step.as_str())
        .collect();
    assert_eq!(done, ["greet", "shout", "count"], "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.state != proto::StepState::Pending as i32),
        "a finished step goes from running to completed, with no pending between: {events:?}"
    );
    assert_eq!(
        events.last().unwrap().runbook_state,
        proto::RunbookState::Completed as i32
    );
    let status = client
        .get_runbook(proto::GetRunbookRequest {
            runbook_id: "pipe-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, proto::RunbookState::Completed as i32);
    assert!(status.closed);
    let outputs: HashMap<&str, String> = status
        .steps
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                String::from_utf8_lossy(&s.output).into_owned(),
            )
        })
        .collect();
    assert_eq!(outputs["greet"], "Hello, runbooks!");
    assert_eq!(outputs["shout"], "<Hello, runbooks!>");
    assert_eq!(outputs["count"], "1 2 18\n");
    assert!(
        status
            .steps
            .iter()
            .all(|s| s.fence > 0 && s.attempts == 1 && !s.run_id.is_empty())
    );

    // Watching from the start replays the same history; from 0 the current
    // state comes first, one event per step, then the end.
    let replay = watch_to_end(&mut client, "pipe-1", response.revision).await;
    assert_eq!(replay, events);
    let snapshot = watch_to_end(&mut client, "pipe-1", 0).await;
    assert_eq!(snapshot.len(), 4, "{snapshot:?}");
    assert!(
        snapshot[..3]
            .iter()
            .all(|e| e.state == proto::StepState::Completed as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_is_retried_then_fails_and_its_dependents_are_skipped() {
    let server = TestServer::start(Config::default(), &[]).await;
    let mut client = server.client().await;
    let text = r#"
name = "doomed"
[steps.boom]
module = "panic.wasm"
retries = 2
[steps.after]
module = "echo.wasm"
depends_on = ["boom"]
[steps.later]
module = "echo.wasm"
depends_on = ["after"]
[steps.independent]
module = "echo.wasm"
input = "fine"
"#;
    let m = modules(&[
        ("panic.wasm", HOSTILE_PANIC_COMPONENT),
        ("echo.wasm", ECHO_COMPONENT),
    ]);
    let r = client
        .submit_runbook(submit(text, m, "doomed"))
        .await
        .unwrap()
        .into_inner();
    let events = watch_to_end(&mut client, "doomed", r.revision).await;
    assert_eq!(
        events.last().unwrap().runbook_state,
        proto::RunbookState::Failed as i32
    );
    let claims_of_boom = events
        .iter()
        .filter(|e| e.step == "boom" && e.state == proto::StepState::Running as i32)
        .count();
    assert_eq!(claims_of_boom, 3, "one try and two retries: {events:?}");
    let status = client
        .get_runbook(proto::GetRunbookRequest {
            runbook_id: "doomed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let by_name: HashMap<&str, &proto::StepStatus> =
        status.steps.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(by_name["boom"].state, proto::StepState::Failed as i32);
    assert_eq!(by_name["boom"].attempts, 3);
    assert_eq!(by_name["boom"].error_kind, "trap");
    assert_eq!(by_name["after"].state, proto::StepState::Skipped as i32);
    assert!(
        by_name["after"].error.contains("`boom`"),
        "{:?}",
        by_name["after"]
    );
    assert_eq!(by_name["later"].state, proto::StepState::Skipped as i32);
    assert_eq!(
        by_name["independent"].state,
        proto::StepState::Completed as i32
    );
    // The host kept serving: a new runbook still runs.
    let again = client
        .submit_runbook(submit(
            "name = \"ok\"\n[steps.one]\nmodule = \"echo.wasm\"\ninput = \"x\"\n",
            modules(&[("echo.wasm", ECHO_COMPONENT)]),
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.runbook_id.starts_with("ok-"), "{}", again.runbook_id);
    let events = watch_to_end(&mut client, &again.runbook_id, again.revision).await;
    assert_eq!(
        events.last().unwrap().runbook_state,
        proto::RunbookState::Completed as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_runbooks_are_refused_naming_the_step_and_field() {
    let server = TestServer::start(Config::default(), &[]).await;
    let mut client = server.client().await;
    let echo = || modules(&[("echo.wasm", ECHO_COMPONENT)]);
    // (runbook text, module files sent, what the error must say)
    let cases: &[(&str, Modules, &str)] = &[
        (
            "name = \"x\"\n[steps.a]\nmodule = \"echo.wasm\"\ndepends_on = [\"b\"]\n",
            echo(),
            "test.toml:4:15: step `a`, field `depends_on`: there is no step `b`",
        ),
        (
            "name = \"x\"\n[steps.a]\nmodule = \"echo.wasm\"\ndepends_on = [\"b\"]\n[steps.b]\nmodule = \"echo.wasm\"\ndepends_on = [\"a\"]\n",
            echo(),
            "depend on each other in a cycle",
        ),
        (
            "name = \"x\"\n[steps.a]\nmodule = \"missing.wasm\"\n",
            echo(),
            "step `a`, field `module`: module file `missing.wasm` was not sent",
        ),
        (
            "name = \"x\"\n[steps.a]\nmodule = \"echo.wasm\"\n",
            HashMap::from([("echo.wasm".to_string(), b"not wasm".to_vec())]),
            "step `a`, field `module`: `echo.wasm` is not a usable module",
        ),
        (
            "name = \"x\"\n[steps.a]\nmodule = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n",
            HashMap::new(),
            "step `a`, field `module`: no module 0000",
        ),
        (
            "name = \"x\"\n[steps.a]\nmodule = \"echo.wasm\"\npolicy = \"nope\"\n",
            echo(),
            "step `a`, field `policy`: no policy `nope` on this host",
        ),
        (
            "name = \"x\"\n[steps.a]\nmodule = \"echo.wasm\"\nretry = 3\n",
            echo(),
            "unknown field `retry`",
        ),
        ("name = \"x\"\n", echo(), "it has no steps"),
        ("", echo(), "runbook is empty"),
    ];
    for (text, m, expected) in cases {
        let status = assert_status(
            client.submit_runbook(submit(text, m.clone(), "")).await,
            Code::InvalidArgument,
            "invalid-request",
        );
        assert!(
            status.message().contains(expected),
            "{expected:?} not in {:?}",
            status.message()
        );
    }
    let bad_id = assert_status(
        client
            .submit_runbook(submit(
                "name = \"x\"\n[steps.a]\nmodule = \"echo.wasm\"\n",
                echo(),
                "no spaces",
            ))
            .await,
        Code::InvalidArgument,
        "invalid-request",
    );
    assert!(bad_id.message().contains("runbook id"), "{bad_id:?}");
    let text = "name = \"x\"\n[steps.a]\nmodule = \"echo.wasm\"\n";
    client
        .submit_runbook(submit(text, echo(), "twice"))
        .await
        .unwrap();
    let dup = assert_status(
        client.submit_runbook(submit(text, echo(), "twice")).await,
        Code::InvalidArgument,
        "invalid-request",
    );
    assert!(dup.message().contains("already exists"), "{dup:?}");
    let missing = client
        .get_runbook(proto::GetRunbookRequest {
            runbook_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing = client
        .watch_runbook(proto::WatchRunbookRequest {
            runbook_id: "nope".into(),
            from_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[test]
fn the_cli_runs_checks_submits_and_watches_the_example_runbook() {
    let chassis = env!("CARGO_BIN_EXE_chassis");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let runbook = root.join("runbooks/incident-digest.toml");
    let data = tempfile::tempdir().unwrap();
    let secrets = data.path().join("secrets.toml");
    std::fs::copy(
        root.join("modules/secret-reader/secrets.example.toml"),
        &secrets,
    )
    .unwrap();
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let policies = root.join("policies");

    let check = std::process::Command::new(chassis)
        .args(["runbook", "check"])
        .arg(&runbook)
        .arg("--modules")
        .arg(guests())
        .arg("--policies")
        .arg(&policies)
        .output()
        .unwrap();
    assert_success(&check);

    let run = std::process::Command::new(chassis)
        .args(["runbook", "run", "--json"])
        .arg(&runbook)
        .arg("--modules")
        .arg(guests())
        .arg("--data-dir")
        .arg(data.path())
        .arg("--policies")
        .arg(&policies)
        .arg("--secrets")
        .arg(&secrets)
        .output()
        .unwrap();
    assert_success(&run);
    // The secret reached the step (its length) and was never printed.
    let everything = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        !everything.contains("demo-smtp-password-change-me"),
        "{everything}"
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(report["steps"]["count"]["output"], "5 43 345");
    let summary = report["steps"]["summary"]["output"].as_str().unwrap();
    assert!(
        summary.starts_with("incident INC-2041: 5 43 345 (lines words bytes), log fingerprint "),
        "{summary}"
    );

    // A broken runbook: the CLI names the step and field, and exits non-zero.
    let broken = data.path().join("broken.toml");
    std::fs::write(
        &broken,
        "name = \"b\"\n[steps.a]\nmodule = \"echo.wasm\"\ndepends_on = [\"zz\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(chassis)
        .args(["runbook", "check"])
        .arg(&broken)
        .arg("--modules")
        .arg(guests())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step `a`, field `depends_on`: there is no step `zz`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_amplifying_runbook_is_refused_at_submit() {
    // Step `b` splices a 400 KB output 100,000 times (~40 GB): the host
    // that claimed it used to be OOM-killed, then the next, and so on.
    let server = TestServer::start(Config::default(), &[]).await;
    let mut client = server.client().await;
    let text = format!(
        "name = \"amplify\"\n[steps.a]\nmodule = \"echo.wasm\"\ninput = \"{}\"\n[steps.b]\nmodule = \"echo.wasm\"\ndepends_on = [\"a\"]\ninput = \"{}\"\n",
        "x".repeat(400_000),
        "{{a}}".repeat(100_000)
    );
    let status = assert_status(
        client
            .submit_runbook(submit(
                &text,
                modules(&[("echo.wasm", ECHO_COMPONENT)]),
                "amp",
            ))
            .await,
        Code::InvalidArgument,
        "invalid-request",
    );
    assert!(
        status
            .message()
            .contains("step `b`, field `input`: 100000 references"),
        "{}",
        status.message()
    );
    assert_status(
        client
            .get_runbook(proto::GetRunbookRequest {
                runbook_id: "amp".into(),
            })
            .await,
        Code::NotFound,
        "not-found",
    );
    // `chassis runbook check` refuses it the same way.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(ECHO_COMPONENT, dir.path().join("echo.wasm")).unwrap();
    let file = dir.path().join("amplify.toml");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["runbook", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("field `input`"));
}

#[tokio::test]
async fn a_stored_step_that_renders_past_the_cap_fails_typed_and_is_not_retried() {
    use chassis::coord::{Coordinator, CoordinatorOptions, MemoryStore, StepState};
    // A spec that bypassed validation (stored by another version or
    // another writer): `a` outputs 512 KiB, `b` splices it 40 times (20
    // MiB, over the 16 MiB cap) and asks for retries.
    let host = chassis::Host::builder().pool_slots(4).build().unwrap();
    let echo = host
        .modules()
        .register(&chassis_tests::wasm(ECHO_COMPONENT))
        .unwrap();
    let store = std::sync::Arc::new(MemoryStore::new());
    let mut options = CoordinatorOptions::new("test-host");
    options.poll_interval = Duration::from_millis(50);
    let coordinator = Coordinator::new(
        store.clone(),
        host,
        std::sync::Arc::new(Default::default()),
        options,
    );
    let task = coordinator.start();
    let step = |input: String, depends_on: Vec<String>, retries| chassis::coord::StepSpec {
        module: echo.id().to_string(),
        policy: None,
        input,
        depends_on,
        retries,
        timeout_ms: None,
    };
    let spec = chassis::coord::RunbookSpec {
        name: "amplify".into(),
        description: String::new(),
        caller: "local".into(),
        traceparent: None,
        steps: [
            ("a".to_string(), step("y".repeat(512 * 1024), vec![], 0)),
            (
                "b".to_string(),
                step("{{a}}".repeat(40), vec!["a".into()], 3),
            ),
        ]
        .into(),
    };
    use chassis::coord::ClaimStore;
    store.submit("amp", &spec, &[]).await.unwrap();
    let view = tokio::time::timeout(
        Duration::from_secs(60),
        chassis::coord::wait_closed(store.as_ref(), "amp"),
    )
    .await
    .expect("the runbook closes")
    .unwrap();
    assert_eq!(view.steps["a"].state(), StepState::Completed);
    assert_eq!(view.steps["b"].state(), StepState::Failed);
    let record = view.steps["b"].result.as_ref().unwrap();
    assert_eq!(record.attempts, 1, "not retried: {record:?}");
    assert_eq!(view.steps["b"].failures, 0);
    match &record.outcome {
        chassis::coord::StepOutcome::Failed { kind, error } => {
            assert_eq!(*kind, chassis::ErrorKind::InvalidRequest);
            assert!(error.contains("would render 20971520 bytes"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // The host still runs steps.
    let ok = chassis::coord::RunbookSpec {
        name: "after".into(),
        description: String::new(),
        caller: "local".into(),
        traceparent: None,
        steps: [("a".to_string(), step("still here".into(), vec![], 0))].into(),
    };
    store.submit("after", &ok, &[]).await.unwrap();
    let view = tokio::time::timeout(
        Duration::from_secs(60),
        chassis::coord::wait_closed(store.as_ref(), "after"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(view.steps["a"].state(), StepState::Completed);
    task.stop(Duration::from_secs(5)).await;
}

/// A runbook that names a policy the host does not have is refused before
/// any of its module files is compiled: compiling is the expensive part of
/// a submission, and an invalid runbook must not cost it.
#[tokio::test]
async fn an_invalid_runbook_is_refused_before_its_modules_are_compiled() {
    use chassis::coord::{Coordinator, CoordinatorOptions, MemoryStore};
    let host = chassis::Host::builder().pool_slots(2).build().unwrap();
    let coordinator = Coordinator::new(
        std::sync::Arc::new(MemoryStore::new()),
        host.clone(),
        std::sync::Arc::new(Default::default()),
        CoordinatorOptions::new("test-host"),
    );
    let text = "name = \"bad\"\ndescription = \"names a missing policy\"\n\n[steps.a]\nmodule = \"echo.wasm\"\npolicy = \"nowhere\"\n";
    let modules = std::collections::BTreeMap::from([(
        "echo.wasm".to_string(),
        chassis_tests::wasm(ECHO_COMPONENT),
    )]);
    let refused = coordinator
        .submit(text, "bad.toml", &modules, "local", None)
        .await
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        chassis::ErrorKind::InvalidRequest,
        "{refused}"
    );
    assert!(
        refused.to_string().contains("no policy `nowhere`"),
        "{refused}"
    );
    let compiled = host
        .modules()
        .stats()
        .compiled
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        compiled, 0,
        "the module was compiled for a runbook that was refused"
    );
    assert!(host.modules().list().is_empty());
}
