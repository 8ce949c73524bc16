//! The capability half of the hostile corpus: filesystem escapes, host
//! environment, network egress, secrets and tables, each under a real policy,
//! with a canary file outside the preopens that must never be read or changed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chassis::policy::Policy;
use chassis::sandbox::{DenialKind, RunError};

use super::*;

const CANARY: &str = "canary: the host's own file";

/// A temp tree: `canary.txt` outside, `jail/` to preopen (with `hello.txt`,
/// a relative and an absolute symlink to the canary), `out/` to preopen rw.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("canary.txt"), CANARY).unwrap();
        std::fs::create_dir(root.join("jail")).unwrap();
        std::fs::create_dir(root.join("out")).unwrap();
        std::fs::write(root.join("jail/hello.txt"), "inside").unwrap();
        std::os::unix::fs::symlink("../canary.txt", root.join("jail/escape")).unwrap();
        std::os::unix::fs::symlink(root.join("canary.txt"), root.join("jail/abs-escape")).unwrap();
        std::os::unix::fs::symlink(root.join("canary.txt"), root.join("out/abs-escape")).unwrap();
        Self { dir }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn policy(&self, extra: &str) -> Arc<Policy> {
        let text = format!(
            "name = \"jail\"\n[env]\nGREETING = \"hi\"\n\
             [[filesystem]]\nhost = \"{}\"\nguest = \"/jail\"\nmode = \"ro\"\n\
             [[filesystem]]\nhost = \"{}\"\nguest = \"/out\"\nmode = \"rw\"\n{extra}",
            self.path("jail").display(),
            self.path("out").display()
        );
        Arc::new(Policy::parse(&text, Path::new("jail.toml")).unwrap())
    }

    pub(crate) fn assert_canary_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(self.path("canary.txt")).unwrap(),
            CANARY
        );
    }
}

/// Runs an escape request through the agent or its command twin; returns the
/// guest-error code (or `ok`) and the text it came with.
pub(crate) async fn attempt(
    host: &Host,
    guest: &str,
    policy: &Arc<Policy>,
    request: &str,
) -> (String, String, RunReport) {
    let module = host.modules().register(&wasm(guest)).unwrap();
    let report = host
        .run(
            &module,
            RunRequest::new(request)
                .policy(policy.clone())
                .limits(quick()),
        )
        .await
        .unwrap();
    let (code, text) = match &report.result {
        Ok(out) => ("ok".to_string(), String::from_utf8_lossy(out).into_owned()),
        Err(RunError::GuestError { code, message }) => (code.clone(), message.clone()),
        Err(RunError::Exit { status: 1 }) => {
            let stderr = String::from_utf8_lossy(&report.stderr.bytes).into_owned();
            let (code, message) = stderr.trim().split_once(": ").unwrap_or(("?", &stderr));
            (code.to_string(), message.to_string())
        }
        Err(other) => panic!("unexpected outcome {other:?}"),
    };
    (code, text, report)
}

/// The filesystem and environment attacks, with the exact code each must
/// end in. Shared by the agent and the command twin.
pub(crate) const FS_ATTACKS: &[(&str, &str, &str)] = &[
    (
        "a benign read inside the preopen works",
        "read /jail/hello.txt",
        "ok",
    ),
    (
        "`..` traversal out of a preopen is refused",
        "read /jail/../canary.txt",
        "PermissionDenied",
    ),
    (
        "`..` traversal to a host path is refused",
        "read /jail/../../../../etc/passwd",
        "PermissionDenied",
    ),
    (
        "an absolute path outside every preopen is not found",
        "read /etc/passwd",
        "NotFound",
    ),
    (
        "a relative symlink out of a preopen is refused",
        "read /jail/escape",
        "PermissionDenied",
    ),
    (
        "an absolute symlink out of a preopen is refused",
        "read /jail/abs-escape",
        "PermissionDenied",
    ),
    (
        "writing into a read-only preopen is refused",
        "write /jail/new.txt owned",
        "PermissionDenied",
    ),
    (
        "overwriting a file in a read-only preopen is refused",
        "write /jail/hello.txt owned",
        "PermissionDenied",
    ),
    (
        "writing through a symlink out of a rw preopen is refused",
        "write /out/abs-escape owned",
        "PermissionDenied",
    ),
    (
        "listing the root finds nothing of the host",
        "list /",
        "NotFound",
    ),
];

async fn run_fs_attacks(guest: &str) {
    run_fs_attacks_on(&host(), guest).await;
}

/// The filesystem attacks of `guest` (any twin speaking `probe`'s
/// requests) on `host`, each with its exact code, the canary untouched.
pub(crate) async fn run_fs_attacks_on(host: &Host, guest: &str) {
    let host = host.clone();
    let fixture = Fixture::new();
    let policy = fixture.policy("");
    for (what, request, want) in FS_ATTACKS {
        let (code, text, _) = attempt(&host, guest, &policy, request).await;
        assert_eq!(&code, want, "{what}: `{request}` gave {code}: {text}");
        if *want == "ok" {
            assert_eq!(text, "inside");
        }
        fixture.assert_canary_untouched();
    }
    // The rw preopen really is writable: the refusals above are the policy's.
    let (code, _, _) = attempt(&host, guest, &policy, "write /out/report.txt done").await;
    assert_eq!(code, "ok");
    assert_eq!(
        std::fs::read_to_string(fixture.path("out/report.txt")).unwrap(),
        "done"
    );
    assert!(!fixture.path("jail/new.txt").exists());
    fixture.assert_canary_untouched();
    hello_still_works(&host).await;
}

async fn run_env_attack(guest: &str) {
    let host = host();
    let fixture = Fixture::new();
    let (code, text, _) = attempt(&host, guest, &fixture.policy(""), "env").await;
    assert_eq!(code, "ok");
    assert_eq!(
        text, "GREETING=hi",
        "only the policy's variables, nothing of the host"
    );
    let (_, text, _) = attempt(&host, guest, &Arc::new(Policy::deny_all()), "env").await;
    assert_eq!(text, "");
}

/// A loopback listener that answers `pong` and counts connections.
pub(crate) struct Listener {
    pub(crate) port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Listener {
    /// A TCP listener that answers each connection's first read with `reply`.
    fn answering(reply: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(reply);
            }
        });
        Self { port, accepted }
    }

    fn start() -> Self {
        Self::answering(b"pong\n")
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn run_network_attacks(guest: &str) {
    let host = host();
    let allowed = Listener::start();
    let forbidden = Listener::start();
    let fixture = Fixture::new();
    let policy = fixture.policy(&format!(
        "[network]\nallow = [\"127.0.0.1:{}\"]\n",
        allowed.port
    ));

    // The listed literal address works: the denials below are the policy's.
    let (code, text, _) = attempt(
        &host,
        guest,
        &policy,
        &format!("connect 127.0.0.1:{}", allowed.port),
    )
    .await;
    assert_eq!((code.as_str(), text.as_str()), ("ok", "pong\n"));
    assert_eq!(allowed.accepted(), 1);

    for (what, target) in [
        (
            "another port on loopback",
            format!("127.0.0.1:{}", forbidden.port),
        ),
        (
            "the cloud metadata address",
            "169.254.169.254:80".to_string(),
        ),
        (
            "the IPv6 metadata address",
            "[fd00:ec2::254]:80".to_string(),
        ),
        ("a private address", "10.0.0.1:443".to_string()),
        (
            "a public host not on the list",
            "93.184.216.34:443".to_string(),
        ),
    ] {
        let (code, text, report) =
            attempt(&host, guest, &policy, &format!("connect {target}")).await;
        assert_eq!(
            code, "PermissionDenied",
            "{what} ({target}): {code}: {text}"
        );
        if !report.denials.is_empty() {
            assert_eq!(report.denials[0].kind, DenialKind::Network);
        }
    }
    assert_eq!(
        forbidden.accepted(),
        0,
        "the forbidden listener was never reached"
    );

    // A name that resolves to loopback does not unlock it, even when listed.
    assert_a_name_never_unlocks_loopback(
        &host,
        guest,
        &fixture,
        allowed.port,
        &format!("connect 127.0.0.1:{}", allowed.port),
        "PermissionDenied",
    )
    .await;
    assert_eq!(allowed.accepted(), 1);

    // With no network in the policy, TCP is off altogether.
    let (code, _, _) = attempt(
        &host,
        guest,
        &fixture.policy(""),
        &format!("connect 127.0.0.1:{}", allowed.port),
    )
    .await;
    assert_eq!(code, "PermissionDenied");
    assert_eq!(allowed.accepted(), 1);
    hello_still_works(&host).await;
}

/// A loopback HTTP server answering every request with `pong`.
pub(crate) fn http_server() -> Listener {
    Listener::answering(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong")
}

/// Listing `localhost:PORT` must not let `request` reach loopback: the guest
/// sees `code` and the denial says why.
async fn assert_a_name_never_unlocks_loopback(
    host: &Host,
    guest: &str,
    fixture: &Fixture,
    port: u16,
    request: &str,
    code: &str,
) {
    let by_name = fixture.policy(&format!("[network]\nallow = [\"localhost:{port}\"]\n"));
    let (got, _, report) = attempt(host, guest, &by_name, request).await;
    assert_eq!(got, code);
    assert!(
        report.denials[0].reason.contains("loopback"),
        "{:?}",
        report.denials
    );
}

async fn run_http_attacks(guest: &str) {
    let host = host();
    let server = http_server();
    let other = http_server();
    let fixture = Fixture::new();
    let policy = fixture.policy(&format!(
        "[network]\nallow = [\"127.0.0.1:{}\"]\n",
        server.port
    ));
    let (code, text, _) = attempt(
        &host,
        guest,
        &policy,
        &format!("get http://127.0.0.1:{}/status", server.port),
    )
    .await;
    assert_eq!((code.as_str(), text.as_str()), ("ok", "pong"));
    for target in [
        format!("http://127.0.0.1:{}/", other.port),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/".to_string(),
        "https://example.com/".to_string(),
    ] {
        let (code, text, report) = attempt(&host, guest, &policy, &format!("get {target}")).await;
        assert_eq!(code, "HttpRequestDenied", "{target}: {text}");
        assert_eq!(report.denials[0].kind, DenialKind::Network, "{target}");
    }
    assert_a_name_never_unlocks_loopback(
        &host,
        guest,
        &fixture,
        server.port,
        &format!("get http://localhost:{}/", server.port),
        "HttpRequestDenied",
    )
    .await;
    assert_eq!(server.accepted(), 1);
    assert_eq!(other.accepted(), 0);
}

pub(crate) mod hostile_escape {
    use super::*;

    #[tokio::test]
    async fn http_requests_off_the_allowlist_are_refused() {
        run_http_attacks(HOSTILE_ESCAPE_COMPONENT).await;
    }

    #[tokio::test]
    async fn filesystem_escapes_are_refused_and_the_canary_is_untouched() {
        run_fs_attacks(HOSTILE_ESCAPE_COMPONENT).await;
    }

    #[tokio::test]
    async fn the_guest_sees_only_the_policys_environment() {
        run_env_attack(HOSTILE_ESCAPE_COMPONENT).await;
    }

    #[tokio::test]
    async fn connections_off_the_allowlist_are_refused() {
        run_network_attacks(HOSTILE_ESCAPE_COMPONENT).await;
    }

    #[tokio::test]
    async fn network_denials_are_counted_per_kind() {
        let host = host();
        let fixture = Fixture::new();
        let policy = fixture.policy("[network]\nallow = [\"127.0.0.1:9\"]\n");
        let before = host.runner().denial_counters().get(DenialKind::Network);
        let (_, _, report) = attempt(
            &host,
            HOSTILE_ESCAPE_COMPONENT,
            &policy,
            "connect 169.254.169.254:9",
        )
        .await;
        assert_eq!(report.denials.len(), 1);
        assert_eq!(report.denials[0].target, "169.254.169.254:9");
        assert!(report.denials[0].reason.contains("metadata"));
        assert_eq!(
            host.runner().denial_counters().get(DenialKind::Network),
            before + 1
        );
    }
}

pub(crate) mod hostile_escape_cmd {
    use super::*;

    #[tokio::test]
    async fn the_command_twin_meets_the_same_http_refusals() {
        run_http_attacks(HOSTILE_ESCAPE_CMD_COMPONENT).await;
    }

    #[tokio::test]
    async fn the_command_twin_meets_the_same_filesystem_refusals() {
        run_fs_attacks(HOSTILE_ESCAPE_CMD_COMPONENT).await;
    }

    #[tokio::test]
    async fn the_command_twin_sees_only_the_policys_environment() {
        run_env_attack(HOSTILE_ESCAPE_CMD_COMPONENT).await;
    }

    #[tokio::test]
    async fn the_command_twin_meets_the_same_network_refusals() {
        run_network_attacks(HOSTILE_ESCAPE_CMD_COMPONENT).await;
    }

    #[tokio::test]
    async fn a_failed_attack_is_a_guest_error_like_its_agent_twin() {
        let host = host();
        let fixture = Fixture::new();
        let policy = fixture.policy("");
        for guest in [HOSTILE_ESCAPE_COMPONENT, HOSTILE_ESCAPE_CMD_COMPONENT] {
            let (_, _, report) = attempt(&host, guest, &policy, "read /jail/escape").await;
            assert_eq!(kind(&report), ErrorKind::GuestError);
        }
    }
}

pub(crate) mod hostile_secret_thief {
    use super::*;

    #[tokio::test]
    async fn an_ungranted_secret_is_denied_and_counted() {
        let secrets = SecretsFile::new("[\"secret/app\"]\ntoken = \"granted-token-9\"\n");
        let host = secrets.host();
        let fixture = Fixture::new();
        let policy = fixture.policy("[secrets.api]\npath = \"secret/app\"\nkey = \"token\"\n");
        let (code, text, report) = attempt(
            &host,
            HOSTILE_SECRET_THIEF_COMPONENT,
            &policy,
            "root-password",
        )
        .await;
        assert_eq!(code, "denied");
        assert!(
            text.contains("grants no secret named `root-password`"),
            "{text}"
        );
        assert_eq!(report.denials[0].kind, DenialKind::Secret);
        assert_eq!(report.denials[0].target, "root-password");
        assert!(host.runner().denial_counters().get(DenialKind::Secret) >= 1);
        hello_still_works(&host).await;
    }

    #[tokio::test]
    async fn a_granted_secret_without_a_provider_refuses_the_run_as_unavailable() {
        let host = host();
        let fixture = Fixture::new();
        let policy = fixture.policy("[secrets.api]\npath = \"secret/app\"\nkey = \"token\"\n");
        let module = host
            .modules()
            .register(&wasm(HOSTILE_SECRET_THIEF_COMPONENT))
            .unwrap();
        let e = host
            .run(
                &module,
                RunRequest::new("api").policy(policy).limits(quick()),
            )
            .await
            .expect_err("the sandbox does not start");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("no secret provider"), "{e}");
    }

    #[tokio::test]
    async fn a_granted_secret_is_handed_over_and_an_ungranted_one_still_denied() {
        let secrets = SecretsFile::new("[\"secret/app\"]\ntoken = \"thief-bait-0042\"\n");
        let host = secrets.host();
        let fixture = Fixture::new();
        let policy = fixture.policy("[secrets.api]\npath = \"secret/app\"\nkey = \"token\"\n");
        let (code, text, _) = attempt(&host, HOSTILE_SECRET_THIEF_COMPONENT, &policy, "api").await;
        assert_eq!((code.as_str(), text.as_str()), ("ok", "got 15 bytes"));
        let (code, _, report) =
            attempt(&host, HOSTILE_SECRET_THIEF_COMPONENT, &policy, "root").await;
        assert_eq!(code, "denied");
        assert_eq!(report.denials[0].target, "root");
    }
}

/// A private (0600) local secrets file and a host reading from it.
pub(crate) struct SecretsFile {
    _dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

impl SecretsFile {
    pub(crate) fn new(text: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { _dir: dir, path }
    }

    pub(crate) fn host(&self) -> Host {
        let provider = chassis::secrets::LocalFileProvider::open(&self.path).unwrap();
        Host::builder()
            .pool_slots(4)
            .secrets(Arc::new(provider))
            .build()
            .unwrap()
    }
}

pub(crate) mod hostile_secret_dribble {
    use super::*;

    #[tokio::test]
    async fn a_value_written_one_byte_at_a_time_is_still_redacted_everywhere() {
        let secrets = SecretsFile::new("[\"secret/app\"]\ntoken = \"dribbled-value-77\"\n");
        let host = secrets.host();
        let fixture = Fixture::new();
        let policy = fixture.policy("[secrets.api]\npath = \"secret/app\"\nkey = \"token\"\n");
        let (code, text, report) =
            attempt(&host, HOSTILE_SECRET_DRIBBLE_COMPONENT, &policy, "api").await;
        assert_eq!(code, "ok");
        assert_eq!(text, "[REDACTED:api]", "the result is redacted too");
        assert_eq!(report.stdout.bytes, b"[REDACTED:api]");
        assert_eq!(report.stderr.bytes, b"[REDACTED:api]");
    }
}

pub(crate) mod hostile_table_grow {
    use super::*;

    #[tokio::test]
    async fn growing_a_table_past_its_limit_ends_in_memory_limit() {
        let host = host();
        let report = run(&host, HOSTILE_TABLE_GROW_COMPONENT, b"", &quick()).await;
        assert_eq!(kind(&report), ErrorKind::MemoryLimit);
        assert!(report.result.unwrap_err().to_string().contains("table"));
        hello_still_works(&host).await;
    }
}

#[tokio::test]
async fn a_policys_limits_tighten_the_host_caps() {
    let host = host();
    let policy = Arc::new(
        Policy::parse(
            "name = \"small\"\n[limits]\nmemory_mb = 8\n",
            Path::new("small.toml"),
        )
        .unwrap(),
    );
    let module = host
        .modules()
        .register(&wasm(HOSTILE_MEMORY_BOMB_COMPONENT))
        .unwrap();
    let report = host
        .run(&module, RunRequest::new(vec![]).policy(policy.clone()))
        .await
        .unwrap();
    assert_eq!(kind(&report), ErrorKind::MemoryLimit);
    assert!(report.usage.peak_memory_bytes <= 8 << 20);
    // A request cannot loosen what the policy set.
    let looser = LimitsRequest {
        memory_bytes: Some(16 << 20),
        ..Default::default()
    };
    let err = host
        .run(
            &module,
            RunRequest::new(vec![]).policy(policy).limits(looser),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(err.to_string().contains("policy `small`"), "{err}");
}

#[tokio::test]
async fn a_caller_not_named_by_the_policy_is_refused() {
    let host = host();
    let policy = Arc::new(
        Policy::parse(
            "name = \"ops\"\ncallers = [\"ops.example\"]\n",
            Path::new("ops.toml"),
        )
        .unwrap(),
    );
    let module = host.modules().register(&wasm(HELLO_COMPONENT)).unwrap();
    let err = host
        .run(
            &module,
            RunRequest::new(vec![])
                .policy(policy.clone())
                .caller("intruder.example"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PolicyDenied);
    let ok = host
        .run(
            &module,
            RunRequest::new(vec![]).policy(policy).caller("ops.example"),
        )
        .await
        .unwrap();
    assert!(ok.result.is_ok());
}

#[tokio::test]
async fn a_missing_preopen_directory_is_a_clear_setup_error() {
    let host = host();
    let policy = Arc::new(
        Policy::parse(
            "name = \"gone\"\n[[filesystem]]\nhost = \"/nonexistent/chassis\"\nguest = \"/d\"\nmode = \"ro\"\n",
            Path::new("gone.toml"),
        )
        .unwrap(),
    );
    let module = host.modules().register(&wasm(HELLO_COMPONENT)).unwrap();
    let report = host
        .run(&module, RunRequest::new(vec![]).policy(policy))
        .await
        .unwrap();
    assert_eq!(kind(&report), ErrorKind::InvalidRequest);
    let text = report.result.unwrap_err().to_string();
    assert!(text.contains("/nonexistent/chassis"), "{text}");
    hello_still_works(&host).await;
}

/// The two-run escape through a nested preopen: `work` has `rw` on `x/`
/// (as `/work`), `reader` maps `x/in` read-only (as `/in`). Each policy is
/// valid alone; a host refuses to load the pair (checked at the end), so
/// the runs here test the wall behind that refusal: roots are opened
/// without following symlinks.
async fn run_two_run_escape(guest: &str) {
    let host = host();
    let fixture = Fixture::new();
    std::fs::create_dir_all(fixture.path("x/in")).unwrap();
    std::fs::write(fixture.path("x/in/inside.txt"), "inside").unwrap();
    let root = |name: &str, host_dir: &str, guest_dir: &str, mode: &str| {
        format!(
            "name = \"{name}\"\n[[filesystem]]\nhost = \"{}\"\nguest = \"{guest_dir}\"\nmode = \"{mode}\"\n",
            fixture.path(host_dir).display()
        )
    };
    let work_text = root("work", "x", "/work", "rw");
    let reader_text = root("reader", "x/in", "/in", "ro");
    let work = Arc::new(Policy::parse(&work_text, Path::new("work.toml")).unwrap());
    let reader = Arc::new(Policy::parse(&reader_text, Path::new("reader.toml")).unwrap());

    let (code, text, _) = attempt(&host, guest, &reader, "list").await;
    assert_eq!((code.as_str(), text.as_str()), ("ok", "inside.txt"));

    // Run 1 plants the link: the rw grant allows exactly that.
    let (code, text, _) = attempt(&host, guest, &work, "plant").await;
    assert_eq!(code, "ok", "{text}");
    let planted = std::fs::read_link(fixture.path("x/in")).unwrap();
    assert_eq!(planted, Path::new("../../../../../../.."));

    // Run 2 is refused before the guest starts: the root is a symlink now.
    let module = host.modules().register(&wasm(guest)).unwrap();
    let report = host
        .run(
            &module,
            RunRequest::new("list")
                .policy(reader.clone())
                .limits(quick()),
        )
        .await
        .unwrap();
    let err = report.result.as_ref().unwrap_err();
    assert!(matches!(err, RunError::Setup { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "`{}` is a symbolic link",
            fixture.path("x/in").display()
        )),
        "{message}"
    );
    // Nothing of the host's root reached the caller.
    assert!(report.stdout.bytes.is_empty() && report.stderr.bytes.is_empty());
    assert!(
        !message.contains("proc") && !message.contains("etc"),
        "{message}"
    );
    fixture.assert_canary_untouched();
    hello_still_works(&host).await;

    // And a host never loads the pair in the first place.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reader.toml"), &reader_text).unwrap();
    std::fs::write(dir.path().join("work.toml"), &work_text).unwrap();
    let err = chassis::policy::PolicySet::load_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, chassis::policy::PolicyError::OverlappingRoots(o)
            if (o.policy.as_str(), o.other_policy.as_str()) == ("work", "reader")),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}

pub(crate) mod hostile_preopen_plant {
    use super::*;

    #[tokio::test]
    async fn a_planted_symlink_cannot_redirect_another_root() {
        run_two_run_escape(HOSTILE_PREOPEN_PLANT_COMPONENT).await;
    }
}

pub(crate) mod hostile_preopen_plant_cmd {
    use super::*;

    #[tokio::test]
    async fn the_command_twin_cannot_redirect_another_root_either() {
        run_two_run_escape(HOSTILE_PREOPEN_PLANT_CMD_COMPONENT).await;
    }
}

pub(crate) mod hostile_dns_probe {
    use std::net::IpAddr;
    use std::sync::Mutex;

    use chassis::sandbox::{MAX_LOOKUPS_IN_FLIGHT, NameResolver, ResolveFuture};

    use super::*;

    /// A resolver the test controls: `listed.test` has two addresses,
    /// `slow.test` never answers, and every name asked is recorded.
    #[derive(Debug, Default)]
    struct TestResolver {
        asked: Mutex<Vec<String>>,
    }

    impl NameResolver for TestResolver {
        fn resolve(&self, name: &str) -> ResolveFuture {
            self.asked.lock().unwrap().push(name.to_string());
            match name {
                "listed.test" => {
                    let addrs: Vec<IpAddr> =
                        vec!["192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap()];
                    Box::pin(async move { Ok(addrs) })
                }
                "slow.test" => Box::pin(std::future::pending()),
                _ => Box::pin(async { Err(std::io::ErrorKind::NotFound.into()) }),
            }
        }
    }

    impl TestResolver {
        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn only_listed_names_resolve_and_every_other_is_a_denial() {
        let resolver = Arc::new(TestResolver::default());
        let host = Host::builder()
            .pool_slots(4)
            .name_resolver(resolver.clone())
            .build()
            .unwrap();
        let fixture = Fixture::new();
        let policy =
            fixture.policy("[network]\nallow = [\"listed.test:443\", \"slow.test:443\"]\n");
        let before = host.runner().denial_counters().get(DenialKind::Network);
        let unlisted = [
            "localhost",
            "metadata.google.internal",
            "exfil-64656d6f2d736d7470.unlisted.invalid",
            "listed.test.attacker.example",
        ];
        let request = format!(
            "resolve listed.test {} LISTED.TEST 127.0.0.1",
            unlisted.join(" ")
        );
        let (code, text, report) =
            attempt(&host, HOSTILE_DNS_PROBE_COMPONENT, &policy, &request).await;
        assert_eq!(code, "ok");
        let mut want = vec!["listed.test 192.0.2.7,2001:db8::7".to_string()];
        want.extend(unlisted.iter().map(|n| format!("{n} !access-denied")));
        want.push("LISTED.TEST 192.0.2.7,2001:db8::7".into());
        want.push("127.0.0.1 127.0.0.1".into());
        assert_eq!(text, want.join("\n"));
        // Each unlisted name is a network denial and never reached a resolver.
        let targets: Vec<&str> = report.denials.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(targets, unlisted);
        assert!(report.denials.iter().all(|d| {
            d.kind == DenialKind::Network
                && d.reason
                    .contains("not a host name on the policy's allowlist")
        }));
        assert_eq!(resolver.asked(), ["listed.test", "listed.test"]);
        assert_eq!(
            host.runner().denial_counters().get(DenialKind::Network),
            before + unlisted.len() as u64
        );

        // A flood of lookups that never finish is capped per run.
        let (code, text, report) = attempt(
            &host,
            HOSTILE_DNS_PROBE_COMPONENT,
            &policy,
            "flood 20 slow.test",
        )
        .await;
        assert_eq!(code, "ok");
        assert_eq!(
            text,
            format!(
                "started {MAX_LOOKUPS_IN_FLIGHT} refused {} temporary-resolver-failure",
                20 - MAX_LOOKUPS_IN_FLIGHT
            )
        );
        assert_eq!(report.denials.len(), 20 - MAX_LOOKUPS_IN_FLIGHT);
        assert!(report.denials[0].reason.contains("in flight"));
        let slow = resolver
            .asked()
            .iter()
            .filter(|n| *n == "slow.test")
            .count();
        assert_eq!(slow, MAX_LOOKUPS_IN_FLIGHT);

        // The next run starts with a fresh allowance; without network, no name resolves.
        let (_, text, _) = attempt(
            &host,
            HOSTILE_DNS_PROBE_COMPONENT,
            &policy,
            "resolve listed.test",
        )
        .await;
        assert_eq!(text, "listed.test 192.0.2.7,2001:db8::7");
        let deny_all = Arc::new(Policy::deny_all());
        let (_, text, report) = attempt(
            &host,
            HOSTILE_DNS_PROBE_COMPONENT,
            &deny_all,
            "resolve listed.test",
        )
        .await;
        assert_eq!(text, "listed.test !access-denied");
        assert!(report.denials[0].reason.contains("grants no network"));
        assert_eq!(resolver.asked().len(), 2 + MAX_LOOKUPS_IN_FLIGHT + 1);
        hello_still_works(&host).await;
    }
}

/// Every `.jsonl` record under `dir`, as one string.
fn audit_text(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            text.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    text
}

/// A host of two slots with an audit log at its shipped settings in a
/// fresh data dir: the dir (kept alive by the caller), the log, its
/// directory and the host.
fn audited_host() -> (
    tempfile::TempDir,
    Arc<chassis::audit::AuditLog>,
    PathBuf,
    Host,
) {
    use chassis::audit::{AuditLog, AuditOptions};

    let data = tempfile::tempdir().unwrap();
    let log = AuditLog::open(AuditOptions::in_data_dir(data.path())).unwrap();
    let audit_dir = data.path().join("audit");
    let host = Host::builder()
        .pool_slots(2)
        .audit(log.clone())
        .build()
        .unwrap();
    (data, log, audit_dir, host)
}

/// A host whose audit log's filesystem is below `audit.min_free_mb` refuses
/// runs as `unavailable` before recording anything (there is still room to
/// write, so nothing is half-written), and the same log serves as soon as
/// the floor is met.
#[tokio::test]
async fn a_full_audit_disk_refuses_runs_as_unavailable() {
    use chassis::audit::{AuditError, AuditLog, AuditOptions};
    use chassis::disk::{FreeSpaceFloor, LowDisk};

    let data = tempfile::tempdir().unwrap();
    let log = AuditLog::open(AuditOptions::in_data_dir(data.path())).unwrap();
    let audit_dir = data.path().join("audit");
    let free = chassis::disk::free_bytes(&audit_dir).unwrap();
    let floor = free + (1 << 40);
    let full = Host::builder()
        .pool_slots(2)
        .audit(log.clone())
        .audit_floor(FreeSpaceFloor::new(&audit_dir, floor))
        .build()
        .unwrap();
    let module = full.modules().register(&wasm(HELLO_COMPONENT)).unwrap();
    for _ in 0..2 {
        let err = full
            .run(&module, RunRequest::new("x").limits(quick()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, chassis::StartError::Audit(AuditError::LowDisk(LowDisk { min_free_bytes, free_bytes, .. }))
                if *min_free_bytes == floor && *free_bytes < floor),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("audit.min_free_mb"), "{err}");
    }
    log.flush().unwrap();
    // No record of any run (`run`, `run.context`, `run.started`).
    assert!(!audit_text(&audit_dir).contains(r#""kind":"run"#));

    let roomy = Host::builder()
        .pool_slots(2)
        .audit(log.clone())
        .audit_floor(FreeSpaceFloor::new(&audit_dir, 1))
        .build()
        .unwrap();
    let module = roomy.modules().register(&wasm(HELLO_COMPONENT)).unwrap();
    let report = roomy
        .run(&module, RunRequest::new("again").limits(quick()))
        .await
        .unwrap();
    assert_eq!(report.result.unwrap(), b"Hello, again!");
    log.flush().unwrap();
    assert!(audit_text(&audit_dir).contains(r#""kind":"run"#));
    log.close().unwrap();
}

/// A log whose writer has stopped refuses every run before the guest
/// starts (fail closed): nothing would write the run's records, so the
/// guest must not get to act. Here the guest would replace a directory
/// under its `rw` preopen with a symlink; refused, the directory is still
/// a directory, and a host with a working log runs the same request.
#[tokio::test]
async fn a_stopped_audit_writer_refuses_runs_before_the_guest_acts() {
    use chassis::audit::AuditError;

    let fixture = Fixture::new();
    std::fs::create_dir_all(fixture.path("x/in")).unwrap();
    let text = format!(
        "name = \"work\"\n[[filesystem]]\nhost = \"{}\"\nguest = \"/work\"\nmode = \"rw\"\n",
        fixture.path("x").display()
    );
    let work = Arc::new(Policy::parse(&text, Path::new("work.toml")).unwrap());
    let (_data, log, _, host) = audited_host();
    let module = host
        .modules()
        .register(&wasm(HOSTILE_PREOPEN_PLANT_COMPONENT))
        .unwrap();
    // The writer thread ends (as it would on a panic); the host keeps the log.
    log.close().unwrap();
    assert!(
        matches!(log.admit_run(), Err(AuditError::Unavailable(why)) if why.contains("stopped"))
    );
    for _ in 0..2 {
        let err = host
            .run(
                &module,
                RunRequest::new("plant")
                    .policy(work.clone())
                    .limits(quick()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, chassis::StartError::Audit(AuditError::Unavailable(why)) if why.contains("audit writer has stopped")),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(
            fixture.path("x/in").symlink_metadata().unwrap().is_dir(),
            "the refused guest acted"
        );
    }
    fixture.assert_canary_untouched();

    // The same request on a host whose writer runs does act, so the
    // refusal above is what kept the directory.
    let (_live_data, log, _, live) = audited_host();
    let (code, text, _) = attempt(&live, HOSTILE_PREOPEN_PLANT_COMPONENT, &work, "plant").await;
    assert_eq!(code, "ok", "{text}");
    assert!(
        fixture
            .path("x/in")
            .symlink_metadata()
            .unwrap()
            .is_symlink()
    );
    log.close().unwrap();
}

/// The audit log's records of `run_id`, in order, as (kind, outcome).
fn run_records(dir: &Path, run_id: &str) -> Vec<(String, serde_json::Value)> {
    audit_text(dir)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|r| r["fields"]["run_id"] == run_id)
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["fields"]["outcome"].clone(),
            )
        })
        .collect()
}

/// A run that never waits sends its start with its end, so it is one
/// `run` record; a run that waits sends its start when it first waits, so
/// a run in flight is on disk within a batch of that, long before it
/// ends, and gets its `run.ended` after.
#[tokio::test]
async fn a_run_that_waits_is_on_record_before_it_ends() {
    let (_data, log, audit_dir, host) = audited_host();
    let echo = host.modules().register(&wasm(ECHO_COMPONENT)).unwrap();
    let report = host
        .run(&echo, RunRequest::new("x").limits(quick()))
        .await
        .unwrap();
    log.flush().unwrap();
    assert_eq!(
        run_records(&audit_dir, &report.run_id),
        [("run".to_string(), serde_json::json!("ok"))]
    );

    let sleeper = host.modules().register(&wasm(SLEEPER_COMPONENT)).unwrap();
    let sleeping = tokio::spawn({
        let host = host.clone();
        async move {
            host.run(&sleeper, RunRequest::new("3000").limits(quick()))
                .await
                .unwrap()
        }
    });
    // No flush: the writer writes a held-back start once it has waited a
    // batch interval (50 ms), within a round (10 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let started = loop {
        let text = audit_text(&audit_dir);
        let started: Vec<String> = text
            .lines()
            .filter(|line| line.contains(r#""kind":"run.started""#))
            .map(|line| {
                let r: serde_json::Value = serde_json::from_str(line).unwrap();
                r["fields"]["run_id"].as_str().unwrap().to_string()
            })
            .collect();
        if let [one] = started.as_slice() {
            break one.clone();
        }
        assert!(
            started.is_empty() && std::time::Instant::now() < deadline,
            "the sleeping run is not on record while it sleeps: {started:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!sleeping.is_finished(), "the run ended before the check");
    let report = sleeping.await.unwrap();
    assert_eq!(report.run_id, started);
    log.flush().unwrap();
    assert_eq!(
        run_records(&audit_dir, &started),
        [
            ("run.started".to_string(), serde_json::Value::Null),
            ("run.ended".to_string(), serde_json::json!("ok")),
        ]
    );
    log.close().unwrap();
}

/// Each run is recorded under its own policy: the host's context cache
/// matches a policy by its `Arc` only while it holds it (weakly), so a
/// policy dropped and another allocated where it was never inherits its
/// context.
#[tokio::test]
async fn each_run_is_recorded_under_its_own_policy() {
    let (_data, log, audit_dir, host) = audited_host();
    let echo = host.modules().register(&wasm(ECHO_COMPONENT)).unwrap();
    let mut runs = Vec::new();
    for i in 0..24 {
        // Half the runs share a name and differ only in their digest.
        let mut policy = Policy::deny_all();
        policy.name = format!("policy-{}", i % 12);
        policy.sha256 = format!("{i:064x}");
        let mut request = RunRequest::new("x").limits(quick());
        request.policy = Arc::new(policy);
        let report = host.run(&echo, request).await.unwrap();
        runs.push((report.run_id, i));
    }
    log.close().unwrap();
    let records: Vec<serde_json::Value> = audit_text(&audit_dir)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let context = |ctx: &serde_json::Value| {
        records
            .iter()
            .find(|r| r["kind"] == "run.context" && r["fields"]["ctx"] == *ctx)
            .map(|r| r["fields"].clone())
            .unwrap()
    };
    for (run_id, i) in runs {
        let run = records
            .iter()
            .find(|r| r["kind"] == "run" && r["fields"]["run_id"] == run_id.as_str())
            .unwrap();
        let context = context(&run["fields"]["ctx"]);
        assert_eq!(context["policy"], format!("policy-{}", i % 12), "run {i}");
        assert_eq!(context["policy_sha256"], format!("{i:064x}"), "run {i}");
    }
}
