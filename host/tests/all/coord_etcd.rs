//! Coordination against a real `etcd`: the conformance suite, fencing of a
//! stale host, three `chassis serve` processes sharing a 50-step runbook
//! while one is SIGKILLed, a host SIGSTOPped past its lease cancelling its
//! step when it thaws, a three-member cluster losing a member, and etcd
//! going away and coming back mid-runbook.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chassis::coord::{
    ClaimStore, CoordError, Coordinator, CoordinatorOptions, EtcdOptions, EtcdStore, RunbookState,
    StepOutcome, StepRecord, conformance, wait_closed,
};
use chassis::grpc::proto;
use chassis::policy::PolicySet;
use chassis_tests::etcd::{Etcd, free_port};
use chassis_tests::programs::SLEEPER_COMPONENT;

fn options(endpoints: Vec<String>) -> EtcdOptions {
    EtcdOptions {
        endpoints,
        timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    }
}

async fn connect(etcd: &Etcd) -> Arc<dyn ClaimStore> {
    Arc::new(
        EtcdStore::connect(&options(etcd.endpoints()))
            .await
            .unwrap(),
    )
}

/// A runbook of `n` sleeper steps in chains of `n / 10`: step `i` depends
/// on step `i - 10`.
fn chains(n: usize, sleep_ms: u32) -> String {
    let mut text = String::from("name = \"chains\"\ndescription = \"sleeper chains\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[steps.s{i:02}]\nmodule = \"sleeper.wasm\"\ninput = \"{sleep_ms}\"\ntimeout = \"20s\"\n"
        ));
        if i >= 10 {
            text.push_str(&format!("depends_on = [\"s{:02}\"]\n", i - 10));
        }
    }
    text
}

fn sleeper() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([(
        "sleeper.wasm".to_string(),
        chassis_tests::wasm(SLEEPER_COMPONENT),
    )])
}

/// How many times each step's result key was written, read from the
/// running members of `etcd`.
async fn result_versions(etcd: &Etcd, runbook: &str) -> BTreeMap<String, i64> {
    let live: Vec<String> = etcd
        .members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| m.endpoint())
        .collect();
    let mut client = etcd_client::Client::connect(live, None).await.unwrap();
    let prefix = format!("{}runbooks/{runbook}/steps/", chassis::coord::ETCD_PREFIX);
    let response = client
        .get(
            prefix.clone(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    response
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            let step = key
                .strip_prefix(&prefix)?
                .strip_suffix("/result")?
                .to_string();
            Some((step, kv.version()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_store_passes_the_conformance_suite() {
    let etcd = Etcd::start();
    conformance::run_all(connect(&etcd).await, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_host_whose_lease_expired_cannot_write_a_result() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let spec = chassis::coord::RunbookFile::parse(&chains(1, 1), "t.toml")
        .unwrap()
        .resolve("local", |_| Ok("0".repeat(64)), |_| Ok(()))
        .unwrap();
    store.submit("fencing", &spec, &[]).await.unwrap();
    let stale = store.join("stale", Duration::from_secs(1)).await.unwrap();
    let claim = store
        .claim(&stale, "fencing", "s00", 1)
        .await
        .unwrap()
        .unwrap();
    // The stale host stops renewing (a long GC pause, a partition): wait
    // until etcd has expired its lease and the claim with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while store.runbook("fencing").await.unwrap().unwrap().steps["s00"]
        .claim
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = store.join("fresh", Duration::from_secs(30)).await.unwrap();
    let taken = store
        .claim(&fresh, "fencing", "s00", 1)
        .await
        .unwrap()
        .unwrap();
    let record = |host: &str, fence| StepRecord {
        outcome: StepOutcome::Completed {
            output: host.as_bytes().to_vec(),
        },
        host: host.into(),
        fence,
        attempts: 1,
        run_id: String::new(),
    };
    // The stale host wakes up and tries to record its result: refused.
    assert_eq!(
        store.finish(&claim, &record("stale", claim.fence)).await,
        Err(CoordError::Fenced {
            runbook: "fencing".into(),
            step: "s00".into(),
            fence: claim.fence
        })
    );
    assert!(matches!(
        store.keep_alive(&stale).await,
        Err(CoordError::SessionLost(_))
    ));
    store
        .finish(&taken, &record("fresh", taken.fence))
        .await
        .unwrap();
    let view = store.runbook("fencing").await.unwrap().unwrap();
    assert_eq!(view.outputs()["s00"], b"fresh");
    assert_eq!(
        result_versions(&etcd, "fencing").await["s00"],
        1,
        "written exactly once"
    );
}

#[tokio::test]
async fn an_unreachable_etcd_is_unavailable_naming_its_endpoints() {
    let endpoint = format!("127.0.0.1:{}", free_port());
    let mut o = options(vec![endpoint.clone()]);
    o.timeout = Duration::from_millis(500);
    let err = EtcdStore::connect(&o).await.unwrap_err();
    assert!(matches!(err, CoordError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&endpoint), "{err}");
}

/// A `chassis serve` process coordinating through etcd.
struct HostProcess {
    name: String,
    child: Option<Child>,
    addr: String,
    data: PathBuf,
    log: PathBuf,
}

impl HostProcess {
    fn start(dir: &Path, name: &str, endpoints: &[String], ttl_s: u64) -> Self {
        Self::start_with_metrics(dir, name, endpoints, ttl_s, None)
    }

    /// As [`HostProcess::start`], with the metrics port (`/metrics`,
    /// `/health`) on `metrics_port` when given.
    fn start_with_metrics(
        dir: &Path,
        name: &str,
        endpoints: &[String],
        ttl_s: u64,
        metrics_port: Option<u16>,
    ) -> Self {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let config = data.join("chassis.yaml");
        let endpoints = endpoints
            .iter()
            .map(|e| format!("        - {e}\n"))
            .collect::<String>();
        std::fs::write(
            &config,
            format!(
                "chassis:\n  metrics:\n{}  logging:\n    level: INFO\n    format: json\n    output: stderr\n  server:\n    listen: 127.0.0.1:0\n    shutdown_grace_seconds: 2\n  data_dir: {}\n  audit:\n    enabled: true\n    fsync: every\n  coordinator:\n    backend: etcd\n    etcd:\n      endpoints:\n{endpoints}      timeout_seconds: 3\n    task_claim_ttl_seconds: {ttl_s}\n    max_concurrent_steps: 3\n    host_id: {name}\n",
                match metrics_port {
                    Some(port) => format!("    enabled: true\n    port: {port}\n"),
                    None => "    enabled: false\n".to_string(),
                },
                data.display()
            ),
        )
        .unwrap();
        let log = data.join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("chassis listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "{name} did not start ({line:?}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Self {
            name: name.into(),
            child: Some(child),
            addr,
            data,
            log,
        }
    }

    async fn client(&self) -> proto::chassis_client::ChassisClient<tonic::transport::Channel> {
        proto::chassis_client::ChassisClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Every audit record of `kind`, as (runbook, step, fence).
    fn audited(&self, kind: &str) -> Vec<(String, String, i64)> {
        self.audit_fields(kind)
            .iter()
            .map(|f| {
                (
                    f["runbook"].as_str().unwrap_or_default().into(),
                    f["step"].as_str().unwrap_or_default().into(),
                    f["fence"].as_i64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The fields of every audit record of `kind`, oldest first.
    fn audit_fields(&self, kind: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.data.join("audit")) else {
            return out;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        for path in files {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                // A SIGKILLed writer may leave a torn last line.
                let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if record["kind"] == kind {
                    out.push(record["fields"].clone());
                }
            }
        }
        out
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // SIGTERM first: a clean drain; then make sure.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            std::thread::sleep(Duration::from_millis(200));
        }
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_finish_a_50_step_runbook_exactly_once_while_one_is_killed() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let ttl_s = 2;
    let mut hosts: Vec<HostProcess> = ["h0", "h1", "h2"]
        .iter()
        .map(|n| HostProcess::start(dir.path(), n, &etcd.endpoints(), ttl_s))
        .collect();
    let store = connect(&etcd).await;
    let mut client = hosts[0].client().await;
    let submitted = client
        .submit_runbook(proto::SubmitRunbookRequest {
            runbook: chains(50, 150),
            file_name: "chains.toml".into(),
            modules: sleeper().into_iter().collect(),
            id: "fifty".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(submitted.runbook_id, "fifty");

    // Wait until h1 is running a step (its claim is in etcd and in its own
    // audit log), then kill it without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (killed_step, killed_fence) = loop {
        let view = store.runbook("fifty").await.unwrap().unwrap();
        let audited = hosts[1].audited("step.claimed");
        let running = view.steps.iter().find_map(|(step, v)| {
            let c = v.claim.as_ref().filter(|c| c.holder == "h1")?;
            audited
                .iter()
                .any(|(_, s, f)| s == step && *f == c.fence)
                .then(|| (step.clone(), c.fence))
        });
        if let Some(found) = running {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "h1 never claimed a step"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    hosts[1].kill();

    let view = tokio::time::timeout(Duration::from_secs(120), wait_closed(&*store, "fifty"))
        .await
        .expect("the runbook finished within 120 s")
        .unwrap();
    assert_eq!(view.state(), RunbookState::Completed, "{view:#?}");

    // The killed host's step was redone by another host under a new fence,
    // after the killed host's lease ended.
    let redone = view.steps[&killed_step].result.as_ref().unwrap();
    assert_ne!(
        redone.host, "h1",
        "{killed_step} was recorded by the dead host"
    );
    assert_ne!(redone.fence, killed_fence);
    assert!(redone.fence > killed_fence);

    // Exactly once, from etcd: every result key was written once.
    let versions = result_versions(&etcd, "fifty").await;
    assert_eq!(versions.len(), 50);
    assert!(versions.values().all(|v| *v == 1), "{versions:?}");

    // Exactly once, from the audit logs of all three hosts. The hosts are
    // still running, and a record reaches its file within one writer round
    // (~10 ms) of the step's end, so the last steps' records are waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let finished = loop {
        let mut finished: BTreeMap<String, usize> = BTreeMap::new();
        for host in &hosts {
            for (runbook, step, _) in host.audited("step.finished") {
                assert_eq!(runbook, "fifty");
                *finished.entry(step).or_default() += 1;
            }
        }
        if finished.len() == 50 || std::time::Instant::now() > deadline {
            break finished;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(finished.len(), 50, "{finished:?}");
    assert!(finished.values().all(|n| *n == 1), "{finished:?}");
    assert!(
        hosts[1]
            .audited("step.claimed")
            .iter()
            .any(|(_, s, f)| *s == killed_step && *f == killed_fence),
        "the killed host's audit log shows the claim it died holding"
    );
    // Both survivors did work.
    for host in [&hosts[0], &hosts[2]] {
        assert!(
            !host.audited("step.finished").is_empty(),
            "{} finished nothing: {}",
            host.name,
            std::fs::read_to_string(&host.log).unwrap_or_default()
        );
    }
    // The status over gRPC agrees.
    let status = client
        .get_runbook(proto::GetRunbookRequest {
            runbook_id: "fifty".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, proto::RunbookState::Completed as i32);
    assert_eq!(status.steps.len(), 50);
}

fn in_process_host(
    store: Arc<dyn ClaimStore>,
    name: &str,
) -> (Coordinator, chassis::coord::CoordinatorTask) {
    let host = chassis::Host::builder()
        .pool_slots(4)
        .warm_slots(0)
        .build()
        .unwrap();
    let mut o = CoordinatorOptions::new(name);
    o.claim_ttl = Duration::from_secs(2);
    o.max_concurrent_steps = 3;
    o.poll_interval = Duration::from_millis(200);
    let c = Coordinator::new(store, host, Arc::new(PolicySet::default()), o);
    let task = c.start();
    (c, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_losing_a_member_still_completes_the_runbook() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("chassis=warn")
        .try_init();
    let mut etcd = Etcd::cluster(3);
    let (a, task_a) = in_process_host(connect(&etcd).await, "a");
    let (_b, task_b) = in_process_host(connect(&etcd).await, "b");
    let (id, _) = a
        .submit(
            &chains(30, 100),
            "chains.toml",
            &sleeper(),
            "local",
            Some("quorum"),
        )
        .await
        .unwrap();
    let store = connect(&etcd).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let view = store.runbook(&id).await.unwrap().unwrap();
        if view.outputs().len() >= 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress before the member was killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    etcd.members[0].kill();
    let view = tokio::time::timeout(Duration::from_secs(120), wait_closed(&*store, &id))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the runbook did not finish after losing a member; m1 log:\n{}",
                etcd.log(1)
            )
        })
        .unwrap();
    assert_eq!(view.state(), RunbookState::Completed, "{view:#?}");
    let versions = result_versions(&etcd, &id).await;
    assert_eq!(versions.len(), 30);
    assert!(versions.values().all(|v| *v == 1), "{versions:?}");
    task_a.stop(Duration::from_secs(2)).await;
    task_b.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_going_away_stops_claims_refuses_submissions_and_loses_no_step() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("chassis=warn")
        .try_init();
    let mut etcd = Etcd::start();
    let mut config = chassis::config::Config::default();
    config.coordinator.backend = chassis::config::CoordinatorBackend::Etcd;
    config.coordinator.etcd = Some(chassis::config::Etcd {
        endpoints: etcd.endpoints(),
        timeout_seconds: 1,
        ca_cert: None,
        cert_file: None,
        key_file: None,
    });
    config.coordinator.task_claim_ttl_seconds = 10;
    config.coordinator.max_concurrent_steps = 2;
    config.coordinator.host_id = Some("solo".into());
    config.audit.enabled = false;
    let server = common::TestServer::start(config, &[]).await;
    let mut client = server.client().await;
    let submit = |id: &str| proto::SubmitRunbookRequest {
        runbook: chains(12, 400),
        file_name: "chains.toml".into(),
        modules: sleeper().into_iter().collect(),
        id: id.into(),
    };
    client.submit_runbook(submit("outage")).await.unwrap();
    let store = connect(&etcd).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store
        .runbook("outage")
        .await
        .unwrap()
        .unwrap()
        .steps
        .values()
        .all(|s| s.claim.is_none())
    {
        assert!(std::time::Instant::now() < deadline, "no step was claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // etcd dies while steps run.
    etcd.members[0].kill();
    let refused = client
        .submit_runbook(submit("during-outage"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&etcd.endpoints()[0]),
        "{}",
        refused.message()
    );
    // In-flight steps finish in the sandbox meanwhile; their results wait.
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.members[0].restart();
    let store = connect(&etcd).await;
    let view = tokio::time::timeout(Duration::from_secs(120), wait_closed(&*store, "outage"))
        .await
        .expect("the runbook finished after etcd came back")
        .unwrap();
    assert_eq!(view.state(), RunbookState::Completed, "{view:#?}");
    let versions = result_versions(&etcd, "outage").await;
    assert_eq!(versions.len(), 12);
    assert!(versions.values().all(|v| *v == 1), "{versions:?}");
    assert!(
        store.runbook("during-outage").await.unwrap().is_none(),
        "the refused runbook was not stored"
    );
}

/// `GET /health` on the metrics port, as (HTTP status, JSON body).
fn health(port: u16) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    (
        status,
        serde_json::from_str(body.trim()).unwrap_or_default(),
    )
}

/// The seed's smoke check, `curl /health` expecting `{"status": "healthy",
/// "etcd": "connected"}`, against a served host on real etcd: healthy while
/// etcd answers, 503 naming etcd as disconnected while it is down, healthy
/// again once it is back.
#[tokio::test]
async fn health_on_the_metrics_port_follows_etcd_down_and_back() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _host = HostProcess::start_with_metrics(dir.path(), "h", &etcd.endpoints(), 5, Some(port));
    let wait_for = |want: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = health(port);
            if status == want {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "health stayed {status} {body}, wanted {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let body = wait_for(200);
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["etcd"], "connected", "{body}");
    assert_eq!(body["claim_store"], "connected", "{body}");
    assert_eq!(body["audit"], "healthy", "{body}");
    assert_eq!(body["secrets"], "none", "{body}");
    etcd.members[0].kill();
    let body = wait_for(503);
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(body["etcd"], "disconnected", "{body}");
    etcd.members[0].restart();
    let body = wait_for(200);
    assert_eq!(body["etcd"], "connected", "{body}");
}

/// A host frozen past its lease (SIGSTOP) while running a step must not
/// finish that step once it thaws: another host took the step when the
/// lease lapsed, and two runs of a step at once is what the lease exists to
/// prevent. On SIGCONT the frozen host cancels its run (audited `cancelled`,
/// `step.abandoned`), its hand-back is refused by the fence (`step.fenced`),
/// the step's one result is the other host's, and the thawed host serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_frozen_past_its_lease_cancels_its_step_when_it_thaws() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let ttl_s = 2;
    let frozen = HostProcess::start(dir.path(), "frozen", &etcd.endpoints(), ttl_s);
    let store = connect(&etcd).await;
    let mut client = frozen.client().await;
    let runbook = "name = \"migrate\"\ndescription = \"one long step\"\n\n[steps.migrate]\nmodule = \"sleeper.wasm\"\ninput = \"8000\"\ntimeout = \"30s\"\n";
    client
        .submit_runbook(proto::SubmitRunbookRequest {
            runbook: runbook.into(),
            file_name: "migrate.toml".into(),
            modules: sleeper().into_iter().collect(),
            id: "migrate".into(),
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let fence = loop {
        let view = store.runbook("migrate").await.unwrap().unwrap();
        let claim = view.steps["migrate"].claim.clone();
        if let Some(c) = claim.filter(|c| c.holder == "frozen")
            && !frozen.audit_fields("run.started").is_empty()
        {
            break c.fence;
        }
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    frozen.signal("STOP");

    // The lease lapses in etcd and a second host takes the step over.
    let other = HostProcess::start(dir.path(), "other", &etcd.endpoints(), ttl_s);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let taken = loop {
        let view = store.runbook("migrate").await.unwrap().unwrap();
        if let Some(c) = view.steps["migrate"]
            .claim
            .clone()
            .filter(|c| c.holder == "other")
        {
            break c.fence;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the other host never took the step"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(taken > fence);
    frozen.signal("CONT");

    // The thawed host gives the step up without finishing it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while frozen.audited("step.abandoned").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the thawed host never abandoned its step: {}",
            std::fs::read_to_string(&frozen.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        frozen.audited("step.abandoned"),
        vec![("migrate".to_string(), "migrate".to_string(), fence)]
    );
    let ended = frozen.audit_fields("run.ended");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["outcome"], "cancelled", "{ended:?}");
    assert!(frozen.audited("step.finished").is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while frozen.audited("step.fenced").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the fence never refused the thawed host's hand-back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The step has one result, the other host's.
    let view = tokio::time::timeout(Duration::from_secs(60), wait_closed(&*store, "migrate"))
        .await
        .expect("the runbook finished")
        .unwrap();
    let result = view.steps["migrate"].result.as_ref().unwrap();
    assert_eq!(result.host, "other");
    assert_eq!(result.fence, taken);
    assert_eq!(result_versions(&etcd, "migrate").await["migrate"], 1);
    // The audit writer appends in batches (up to 50 ms, longer on a busy
    // machine), so the record can land just after the result is visible.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while other.audited("step.finished").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the other host never audited its step.finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(other.audited("step.finished").len(), 1);

    // And the thawed host still serves.
    let listed = client
        .list_modules(proto::ListModulesRequest {})
        .await
        .expect("the thawed host answers");
    assert!(!listed.into_inner().modules.is_empty());
}

/// A real etcd store whose first claim is granted by etcd and its answer
/// then lost, as when etcd commits the transaction and dies (or the
/// request times out) before the reply reaches the host. A real etcd
/// cannot be told to drop exactly that reply, hence the wrapper.
#[derive(Debug)]
struct LosesFirstClaimAnswer {
    inner: Arc<dyn ClaimStore>,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl ClaimStore for LosesFirstClaimAnswer {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn join(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<chassis::coord::Session, CoordError> {
        self.inner.join(holder, ttl).await
    }
    async fn keep_alive(&self, session: &chassis::coord::Session) -> Result<(), CoordError> {
        self.inner.keep_alive(session).await
    }
    async fn leave(&self, session: &chassis::coord::Session) -> Result<(), CoordError> {
        self.inner.leave(session).await
    }
    async fn hosts(&self) -> Result<Vec<String>, CoordError> {
        self.inner.hosts().await
    }
    async fn submit(
        &self,
        id: &str,
        spec: &chassis::coord::RunbookSpec,
        modules: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError> {
        self.inner.submit(id, spec, modules).await
    }
    async fn module(&self, id: &str) -> Result<Option<Vec<u8>>, CoordError> {
        self.inner.module(id).await
    }
    async fn runbook(&self, id: &str) -> Result<Option<chassis::coord::RunbookView>, CoordError> {
        self.inner.runbook(id).await
    }
    async fn active(&self) -> Result<Vec<String>, CoordError> {
        self.inner.active().await
    }
    async fn claim(
        &self,
        session: &chassis::coord::Session,
        runbook: &str,
        step: &str,
        attempt: u32,
    ) -> Result<Option<chassis::coord::Claim>, CoordError> {
        let claimed = self.inner.claim(session, runbook, step, attempt).await?;
        if claimed.is_some() && !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(CoordError::Unavailable {
                endpoints: "test".into(),
                message: "the claim's answer was lost".into(),
            });
        }
        Ok(claimed)
    }
    async fn finish(
        &self,
        claim: &chassis::coord::Claim,
        record: &StepRecord,
    ) -> Result<(), CoordError> {
        self.inner.finish(claim, record).await
    }
    async fn release(
        &self,
        claim: &chassis::coord::Claim,
        failures: u32,
    ) -> Result<(), CoordError> {
        self.inner.release(claim, failures).await
    }
    async fn skip(
        &self,
        runbook: &str,
        step: &str,
        record: &StepRecord,
    ) -> Result<bool, CoordError> {
        self.inner.skip(runbook, step, record).await
    }
    async fn close(&self, runbook: &str) -> Result<(), CoordError> {
        self.inner.close(runbook).await
    }
    async fn watch(
        &self,
        runbook: &str,
        from_revision: i64,
    ) -> Result<chassis::coord::EventStream, CoordError> {
        self.inner.watch(runbook, from_revision).await
    }
    async fn changes(&self) -> Result<chassis::coord::EventStream, CoordError> {
        self.inner.changes().await
    }
}

/// The claim was granted but its answer lost: the host must not leave the
/// step held by a claim it does not run (its session stays alive, so the
/// claim would never expire and the runbook would never finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_granted_but_unanswered_is_handed_back_and_the_step_runs_once() {
    let etcd = Etcd::start();
    let lossy = Arc::new(LosesFirstClaimAnswer {
        inner: connect(&etcd).await,
        lost: std::sync::atomic::AtomicBool::new(false),
    });
    let store: Arc<dyn ClaimStore> = lossy.clone();
    // Its 2 s session is renewed throughout, so the granted claim would
    // never expire by itself.
    let (coordinator, task) = in_process_host(store.clone(), "lossy");
    let (id, _) = coordinator
        .submit(
            &chains(3, 50),
            "chains.toml",
            &sleeper(),
            "local",
            Some("unanswered"),
        )
        .await
        .unwrap();
    let view = tokio::time::timeout(Duration::from_secs(60), wait_closed(&*store, &id))
        .await
        .expect("the runbook finished although its first claim's answer was lost")
        .unwrap();
    assert_eq!(view.state(), RunbookState::Completed, "{view:#?}");
    assert!(
        lossy.lost.load(std::sync::atomic::Ordering::SeqCst),
        "no answer was lost"
    );
    let versions = result_versions(&etcd, &id).await;
    assert_eq!(versions.len(), 3);
    assert!(versions.values().all(|v| *v == 1), "{versions:?}");
    for step in view.steps.values() {
        let record = step.result.as_ref().unwrap();
        assert_eq!(record.attempts, 1, "the hand-back counted no attempt");
    }
    task.stop(Duration::from_secs(2)).await;
}
