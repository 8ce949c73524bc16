//! Agents in Python (componentize-py) and JavaScript (componentize-js's
//! StarlingMonkey and componentize-qjs's QuickJS), built by the tests
//! crate's build script from `modules/` with the SDKs in `guest-sdk/`: the
//! same world, limits, policies, secrets and redaction as Rust agents, and
//! the same hostile attacks with the same exact outcomes.
//!
//! Compiling a 12-18 MB interpreter component takes cranelift 10-30 s, so
//! these tests share one data dir of sealed artifacts (under the guests'
//! build dir, kept between runs) and each module is compiled once per
//! process; every test still runs on a host of its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use chassis::modules::World;
use chassis::policy::Policy;
use chassis::sandbox::{DenialKind, RunError};

use super::capabilities::{Fixture, SecretsFile, attempt, http_server, run_fs_attacks_on};
use super::*;

/// The data dir every agent host here shares (artifacts and their key).
fn shared_data_dir() -> PathBuf {
    PathBuf::from(HELLO_PY_COMPONENT)
        .parent()
        .unwrap()
        .join("host-data")
}

/// A host on the shared data dir, with `secrets` when given.
fn agent_host(secrets: Option<&SecretsFile>) -> Host {
    static KEY: OnceLock<()> = OnceLock::new();
    // The first host creates the sealing key; later ones only read it.
    KEY.get_or_init(|| {
        Host::builder()
            .pool_slots(1)
            .data_dir(shared_data_dir())
            .build()
            .expect("the first agent host starts");
    });
    let mut builder = Host::builder().pool_slots(8).data_dir(shared_data_dir());
    if let Some(secrets) = secrets {
        let provider = chassis::secrets::LocalFileProvider::open(&secrets.path).unwrap();
        builder = builder.secrets(Arc::new(provider));
    }
    builder.build().expect("host starts")
}

/// `path`'s bytes, compiled into the shared data dir first (once per
/// process, whichever test asks first; the others wait rather than compile
/// the same module again).
fn compiled(path: &'static str) -> Vec<u8> {
    /// One gate per guest path: `true` once it is compiled.
    type Gates = Mutex<HashMap<&'static str, Arc<Mutex<bool>>>>;
    static DONE: OnceLock<Gates> = OnceLock::new();
    let gate = DONE
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(path)
        .or_default()
        .clone();
    let mut done = gate.lock().unwrap_or_else(|p| p.into_inner());
    let bytes = wasm(path);
    if !*done {
        agent_host(None)
            .modules()
            .register(&bytes)
            .unwrap_or_else(|e| panic!("{path} registers: {e}"));
        *done = true;
    }
    bytes
}

fn limits() -> LimitsRequest {
    LimitsRequest {
        memory_bytes: Some(64 << 20),
        ..quick()
    }
}

async fn run_agent(
    host: &Host,
    path: &'static str,
    input: &str,
    policy: Option<&Arc<Policy>>,
) -> RunReport {
    let module = host.modules().register(&compiled(path)).unwrap();
    let mut request = RunRequest::new(input).limits(limits());
    if let Some(policy) = policy {
        request = request.policy(policy.clone());
    }
    host.run(&module, request).await.expect("run starts")
}

fn guest_error(report: &RunReport) -> (&str, &str) {
    match &report.result {
        Err(RunError::GuestError { code, message }) => (code, message),
        other => panic!("expected guest-error, got {other:?}"),
    }
}

/// `hello` in another language: greets, logs the name as a field, refuses
/// non-UTF-8 input with its own typed error, and lists the exports its
/// toolchain added as ignored.
async fn greets(path: &'static str, ignored: &[&str]) {
    let host = agent_host(None);
    let module = host.modules().register(&compiled(path)).unwrap();
    assert_eq!(module.world(), World::Agent);
    assert_eq!(module.ignored_exports(), ignored);
    let report = run_agent(&host, path, "chassis", None).await;
    assert_eq!(report.result.as_deref().unwrap(), b"Hello, chassis!");
    assert_eq!(report.logs.len(), 1, "{:?}", report.logs);
    assert_eq!(report.logs[0].message, "greeting");
    assert_eq!(
        report.logs[0].fields,
        vec![("name".to_string(), "chassis".to_string())]
    );
    assert!(report.usage.fuel_consumed > 0);
    let report = host
        .run(&module, RunRequest::new(vec![0xff, 0xfe]).limits(limits()))
        .await
        .unwrap();
    assert_eq!(
        guest_error(&report),
        ("bad-input", "the name must be UTF-8")
    );
    hello_still_works(&host).await;
}

pub(crate) mod hello_py {
    use super::*;

    #[tokio::test]
    async fn greets_logs_and_returns_a_typed_error() {
        // componentize-py exports an `exports` interface (its `init`).
        greets(HELLO_PY_COMPONENT, &["exports"]).await;
    }
}

pub(crate) mod hello_js {
    use super::*;

    #[tokio::test]
    async fn greets_logs_and_returns_a_typed_error() {
        greets(HELLO_JS_COMPONENT, &[]).await;
    }
}

pub(crate) mod hello_qjs {
    use super::*;

    #[tokio::test]
    async fn greets_logs_and_returns_a_typed_error() {
        // componentize-qjs exports `init(shim, script, ...)`, which would
        // evaluate any script given: the host never calls it.
        greets(HELLO_QJS_COMPONENT, &["init"]).await;
    }
}

/// The HTTP agent: an allowlisted server answers; any other host is
/// refused by the host before a connection is made, recorded as a network
/// denial, and reported by the agent as `HttpRequestDenied`.
async fn fetches_only_what_the_policy_allows(path: &'static str) {
    let host = agent_host(None);
    let allowed = http_server();
    let other = http_server();
    let fixture = Fixture::new();
    let policy = fixture.policy(&format!(
        "[network]\nallow = [\"127.0.0.1:{}\"]\n",
        allowed.port
    ));
    let url = format!("http://127.0.0.1:{}/status", allowed.port);
    let report = run_agent(&host, path, &url, Some(&policy)).await;
    assert_eq!(report.result.as_deref().unwrap(), b"200 pong");
    assert!(report.denials.is_empty(), "{:?}", report.denials);
    assert_eq!(report.logs.last().unwrap().message, "fetched");
    for target in [
        format!("http://127.0.0.1:{}/", other.port),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "https://example.com/".to_string(),
    ] {
        let report = run_agent(&host, path, &target, Some(&policy)).await;
        let (code, _) = guest_error(&report);
        assert_eq!(code, "HttpRequestDenied", "{target}");
        assert_eq!(report.denials[0].kind, DenialKind::Network, "{target}");
    }
    assert_eq!(allowed.accepted(), 1);
    assert_eq!(other.accepted(), 0);
    hello_still_works(&host).await;
}

pub(crate) mod http_py {
    use super::*;

    #[tokio::test]
    async fn fetches_only_what_the_policy_allows() {
        super::fetches_only_what_the_policy_allows(HTTP_PY_COMPONENT).await;
    }
}

pub(crate) mod http_js {
    use super::*;

    #[tokio::test]
    async fn fetches_only_what_the_policy_allows() {
        super::fetches_only_what_the_policy_allows(HTTP_JS_COMPONENT).await;
    }
}

/// The CPU, memory and secret attacks every twin makes, with the outcome
/// each must end in; the host serves a Rust `hello` after each.
async fn holds_the_common_attacks(path: &'static str, has_console: bool) {
    const VALUE: &str = "twin-bait-value-8086";
    let secrets = SecretsFile::new(&format!("[\"secret/app\"]\ntoken = \"{VALUE}\"\n"));
    let host = agent_host(Some(&secrets));
    let module = host.modules().register(&compiled(path)).unwrap();

    // An endless loop: out of fuel under a budget, the deadline without one.
    let report = run_agent(&host, path, "spin", None).await;
    assert_eq!(kind(&report), ErrorKind::OutOfFuel);
    let unmetered = LimitsRequest {
        fuel: Some(FuelRequest::Unmetered),
        timeout: Some(Duration::from_millis(300)),
        ..limits()
    };
    let report = host
        .run(&module, RunRequest::new("spin").limits(unmetered))
        .await
        .unwrap();
    assert_eq!(kind(&report), ErrorKind::DeadlineExceeded);
    hello_still_works(&host).await;

    // Keeping every MiB: the memory cap, never more.
    let report = run_agent(&host, path, "hoard", None).await;
    assert_eq!(kind(&report), ErrorKind::MemoryLimit);
    assert!(report.usage.peak_memory_bytes <= 64 << 20);
    hello_still_works(&host).await;

    // A secret the policy does not grant: denied, named, counted.
    let fixture = Fixture::new();
    let policy = fixture.policy("[secrets.api]\npath = \"secret/app\"\nkey = \"token\"\n");
    let before = host.runner().denial_counters().get(DenialKind::Secret);
    let report = run_agent(&host, path, "secret root-password", Some(&policy)).await;
    let (code, message) = guest_error(&report);
    assert_eq!(code, "denied");
    assert!(
        message.contains("grants no secret named `root-password`"),
        "{message}"
    );
    assert_eq!(report.denials[0].kind, DenialKind::Secret);
    assert_eq!(report.denials[0].target, "root-password");
    assert_eq!(
        host.runner().denial_counters().get(DenialKind::Secret),
        before + 1
    );

    // A granted secret printed to stdout and stderr, logged as message and
    // field, and returned: redacted in every part of the report.
    let report = run_agent(&host, path, "leak api", Some(&policy)).await;
    let everything = format!("{report:?}");
    assert!(!everything.contains(VALUE), "leaked: {everything}");
    assert_eq!(
        report.result.as_deref().unwrap(),
        b"the value is [REDACTED:api]"
    );
    if has_console {
        let stdout = String::from_utf8_lossy(&report.stdout.bytes);
        let stderr = String::from_utf8_lossy(&report.stderr.bytes);
        assert!(stdout.contains("stdout has [REDACTED:api]"), "{stdout}");
        assert!(stderr.contains("stderr has [REDACTED:api]"), "{stderr}");
    }
    assert_eq!(report.logs[0].message, "the log has [REDACTED:api]");
    assert_eq!(
        report.logs[0].fields,
        vec![("value".to_string(), "[REDACTED:api]".to_string())]
    );
    hello_still_works(&host).await;
}

/// A sleep holds the sandbox for its length, but not the thread: on this
/// test's single-threaded runtime, a Rust `hello` started beside it
/// finishes while the agent still sleeps.
async fn sleeps_without_a_thread(path: &'static str) {
    let host = agent_host(None);
    compiled(path);
    let sleeper = async {
        let report = run_agent(&host, path, "sleep 1000", None).await;
        (report, std::time::Instant::now())
    };
    let other = async {
        hello_still_works(&host).await;
        std::time::Instant::now()
    };
    let ((report, slept_at), other_at) = tokio::join!(sleeper, other);
    assert_eq!(report.result.as_deref().unwrap(), b"slept");
    assert!(report.usage.wall_time_us >= 1_000_000, "{:?}", report.usage);
    assert!(
        other_at < slept_at,
        "the other run waited for the sleeping agent"
    );
}

/// A request to the metadata address, and one to an allowlisted port by
/// the name `localhost` (a name never unlocks loopback): both refused as
/// `HttpRequestDenied` with a network denial, and nothing reaches the
/// server.
async fn refuses_requests_off_the_allowlist(guest: &'static str) {
    let host = agent_host(None);
    let server = http_server();
    let fixture = Fixture::new();
    let policy = fixture.policy(&format!(
        "[network]\nallow = [\"127.0.0.1:{}\"]\n",
        server.port
    ));
    for target in [
        "http://169.254.169.254/".to_string(),
        format!("http://localhost:{}/", server.port),
    ] {
        let report = run_agent(&host, guest, &format!("get {target}"), Some(&policy)).await;
        assert_eq!(guest_error(&report).0, "HttpRequestDenied", "{target}");
        assert_eq!(report.denials[0].kind, DenialKind::Network, "{target}");
    }
    assert_eq!(server.accepted(), 0);
    hello_still_works(&host).await;
}

pub(crate) mod hostile_twin_py {
    use super::*;

    #[tokio::test]
    async fn a_sleep_holds_its_sandbox_but_no_thread() {
        sleeps_without_a_thread(HOSTILE_TWIN_PY_COMPONENT).await;
    }

    #[tokio::test]
    async fn cpu_memory_and_secret_attacks_end_as_in_rust() {
        holds_the_common_attacks(HOSTILE_TWIN_PY_COMPONENT, true).await;
    }

    #[tokio::test]
    async fn filesystem_escapes_end_as_in_rust_and_the_canary_is_untouched() {
        let guest = HOSTILE_TWIN_PY_COMPONENT;
        compiled(guest);
        let host = agent_host(None);
        run_fs_attacks_on(&host, guest).await;
        // Only the policy's environment, nothing of the host's.
        let (code, text, _) = attempt(&host, guest, &Fixture::new().policy(""), "env").await;
        assert_eq!((code.as_str(), text.as_str()), ("ok", "GREETING=hi"));
    }

    #[tokio::test]
    async fn requests_off_the_allowlist_are_refused_by_the_host() {
        refuses_requests_off_the_allowlist(HOSTILE_TWIN_PY_COMPONENT).await;
    }
}

pub(crate) mod hostile_twin_js {
    use super::*;

    #[tokio::test]
    async fn a_sleep_holds_its_sandbox_but_no_thread() {
        sleeps_without_a_thread(HOSTILE_TWIN_JS_COMPONENT).await;
    }

    #[tokio::test]
    async fn cpu_memory_and_secret_attacks_end_as_in_rust() {
        holds_the_common_attacks(HOSTILE_TWIN_JS_COMPONENT, true).await;
    }

    #[tokio::test]
    async fn requests_off_the_allowlist_are_refused_by_the_host() {
        refuses_requests_off_the_allowlist(HOSTILE_TWIN_JS_COMPONENT).await;
    }
}

pub(crate) mod hostile_twin_qjs {
    use super::*;

    #[tokio::test]
    async fn cpu_memory_and_secret_attacks_end_as_in_rust() {
        // QuickJS's runtime has no console.
        holds_the_common_attacks(HOSTILE_TWIN_QJS_COMPONENT, false).await;
    }

    #[tokio::test]
    async fn quickjs_has_no_fetch_so_a_request_reaches_nothing() {
        let host = agent_host(None);
        let report = run_agent(
            &host,
            HOSTILE_TWIN_QJS_COMPONENT,
            "get http://169.254.169.254/",
            None,
        )
        .await;
        assert_eq!(
            guest_error(&report),
            ("Unsupported", "this engine has no fetch")
        );
        assert!(report.denials.is_empty());
    }
}

mod bad_input {
    use super::*;

    #[tokio::test]
    async fn a_component_over_the_size_cap_is_invalid_module_naming_both_sizes() {
        let host = Host::builder()
            .pool_slots(2)
            .max_module_bytes(8 << 20)
            .build()
            .unwrap();
        let bytes = wasm(HELLO_PY_COMPONENT);
        let e = host.modules().register(&bytes).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidModule);
        let text = e.to_string();
        assert!(text.contains(&bytes.len().to_string()), "{text}");
        assert!(text.contains(&(8u64 << 20).to_string()), "{text}");
        hello_still_works(&host).await;
    }
}
