//! Secrets from Vault, end to end, against the Vault test double in
//! `chassis-tests` (and, for the cases a real server can stage, against a
//! real Vault when `VAULT_ADDR` and `VAULT_TOKEN` are set; see README).
//!
//! Every case asserts the exact outcome: the value's length reaches the
//! guest, every echo of it is redacted, each lease the double issued is
//! revoked by the time the sandbox is gone, whatever ended it.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chassis::config::Config;
use chassis::policy::Policy;
use chassis::sandbox::{FuelRequest, LimitsRequest, RunError, RunReport};
use chassis::secrets::{AppRole, SecretValue, TokenSource, VaultOptions, VaultProvider};
use chassis::{ErrorKind, Host, RunRequest, StartError};
use chassis_tests::programs::*;
use chassis_tests::vault_double::{ROOT_TOKEN, VaultDouble, vault_api};
use chassis_tests::wasm;
use common::{TestServer, assert_status, register, run_request};
use serde_json::json;

fn options(addr: &str, token: &str) -> VaultOptions {
    VaultOptions {
        addr: addr.to_string(),
        namespace: None,
        cacert: None,
        timeout: Duration::from_secs(5),
        token: Some(TokenSource::Value(SecretValue::new(token.to_string()))),
        approle: None,
    }
}

fn vault_host(options: VaultOptions) -> Host {
    Host::builder()
        .pool_slots(8)
        .secrets(Arc::new(VaultProvider::new(options).unwrap()))
        .lease_retry_backoff(Duration::from_millis(20))
        .build()
        .unwrap()
}

fn policy(grants: &str) -> Arc<Policy> {
    let text = format!("name = \"t\"\n{grants}");
    Arc::new(Policy::parse(&text, Path::new("t.toml")).unwrap())
}

fn quick() -> LimitsRequest {
    LimitsRequest {
        fuel: Some(FuelRequest::Budget(500_000_000)),
        memory_bytes: Some(32 << 20),
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }
}

async fn run(
    host: &Host,
    guest: &str,
    policy: &Arc<Policy>,
    input: &str,
    limits: LimitsRequest,
) -> Result<RunReport, StartError> {
    let module = host.modules().register(&wasm(guest)).unwrap();
    host.run(
        &module,
        RunRequest::new(input).policy(policy.clone()).limits(limits),
    )
    .await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits (up to a generous bound, for a loaded machine) until `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < give_up, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const DYNAMIC: &str = "[secrets.db]\npath = \"database/creds/ro\"\ndynamic = true\n";

// ---- the cases both the double and a real Vault can stage ----

/// A Vault to run the shared cases against.
struct Backend {
    addr: String,
    token: String,
    double: Option<VaultDouble>,
}

impl Backend {
    async fn double() -> Self {
        let double = VaultDouble::start().await;
        Self {
            addr: double.addr(),
            token: ROOT_TOKEN.into(),
            double: Some(double),
        }
    }

    /// A real Vault from `VAULT_ADDR`/`VAULT_TOKEN`, or `None` (printed).
    fn real(case: &str) -> Option<Self> {
        match (std::env::var("VAULT_ADDR"), std::env::var("VAULT_TOKEN")) {
            (Ok(addr), Ok(token)) if !addr.is_empty() && !token.is_empty() => Some(Self {
                addr,
                token,
                double: None,
            }),
            _ => {
                println!(
                    "skipped: set VAULT_ADDR and VAULT_TOKEN to run `{case}` against a real Vault \
                     (see README: vault server -dev)"
                );
                None
            }
        }
    }

    async fn put_kv(&self, path: &str, key: &str, value: &str) {
        match &self.double {
            Some(d) => d.put_kv("secret", path, key, value),
            None => {
                let (status, body) = vault_api(
                    &self.addr,
                    "POST",
                    &format!("secret/data/{path}"),
                    &self.token,
                    Some(json!({ "data": { key: value } })),
                )
                .await;
                assert!(status == 200 || status == 204, "{status} {body}");
            }
        }
    }

    /// A token that may read `secret/chassis-test/app` and is refused
    /// (403) `secret/chassis-test/forbidden`.
    async fn limited_token(&self) -> String {
        if let Some(d) = &self.double {
            d.forbid("secret/data/chassis-test/forbidden");
            return self.token.clone();
        }
        let rules = "path \"secret/data/chassis-test/app\" { capabilities = [\"read\"] }";
        let (status, body) = vault_api(
            &self.addr,
            "PUT",
            "sys/policies/acl/chassis-test-limited",
            &self.token,
            Some(json!({ "policy": rules })),
        )
        .await;
        assert!(status == 200 || status == 204, "{status} {body}");
        let (status, body) = vault_api(
            &self.addr,
            "POST",
            "auth/token/create",
            &self.token,
            Some(json!({ "policies": ["chassis-test-limited"], "ttl": "10m" })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["auth"]["client_token"].as_str().unwrap().to_string()
    }
}

async fn granted_values_reach_the_guest_redacted_and_ungranted_names_are_denied(b: Backend) {
    let value = format!("kv-pa55-{}", std::process::id());
    b.put_kv("chassis-test/app", "password", &value).await;
    let host = vault_host(options(&b.addr, &b.token));
    let policy = policy(
        "[secrets.app]\npath = \"secret/chassis-test/app\"\nkey = \"password\"\nenv = \"APP_PASSWORD\"\n",
    );
    let report = run(
        &host,
        SECRET_READER_COMPONENT,
        &policy,
        "app env:APP_PASSWORD",
        quick(),
    )
    .await
    .unwrap();
    let len = value.len();
    assert_eq!(
        text(report.result.as_ref().unwrap()),
        format!("app {len}\nenv:APP_PASSWORD {len}\n")
    );
    assert_eq!(
        text(&report.stdout.bytes),
        "app=[REDACTED:app]\nenv:APP_PASSWORD=[REDACTED:app]\n"
    );
    assert!(text(&report.stderr.bytes).contains("read app: [REDACTED:app]"));
    assert_eq!(report.logs[0].fields[1].1, "[REDACTED:app]");

    let report = run(&host, SECRET_READER_COMPONENT, &policy, "other", quick())
        .await
        .unwrap();
    match report.result {
        Err(RunError::GuestError { code, message }) => {
            assert_eq!(code, "denied");
            assert!(
                message.contains("grants no secret named `other`"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

async fn a_forbidden_path_refuses_the_run_naming_the_path(b: Backend) {
    let token = b.limited_token().await;
    let host = vault_host(options(&b.addr, &token));
    let policy =
        policy("[secrets.x]\npath = \"secret/chassis-test/forbidden\"\nkey = \"password\"\n");
    let e = run(&host, SECRET_READER_COMPONENT, &policy, "x", quick())
        .await
        .expect_err("the sandbox does not start");
    assert_eq!(e.kind(), ErrorKind::PolicyDenied, "{e}");
    assert!(
        e.to_string()
            .contains("permission denied reading `secret/chassis-test/forbidden`"),
        "{e}"
    );
}

#[tokio::test]
async fn double_granted_values_reach_the_guest_redacted_and_ungranted_names_are_denied() {
    granted_values_reach_the_guest_redacted_and_ungranted_names_are_denied(Backend::double().await)
        .await;
}

#[tokio::test]
async fn real_vault_granted_values_reach_the_guest_redacted_and_ungranted_names_are_denied() {
    if let Some(b) = Backend::real("granted values reach the guest") {
        granted_values_reach_the_guest_redacted_and_ungranted_names_are_denied(b).await;
    }
}

#[tokio::test]
async fn double_a_forbidden_path_refuses_the_run_naming_the_path() {
    a_forbidden_path_refuses_the_run_naming_the_path(Backend::double().await).await;
}

#[tokio::test]
async fn real_vault_a_forbidden_path_refuses_the_run_naming_the_path() {
    if let Some(b) = Backend::real("a forbidden path") {
        a_forbidden_path_refuses_the_run_naming_the_path(b).await;
    }
}

// ---- dynamic secrets: one lease per sandbox, revoked on every exit ----

/// A host on a fresh double, and the dynamic-grant policy.
async fn dynamic() -> (VaultDouble, Host, Arc<Policy>) {
    let double = VaultDouble::start().await;
    let host = vault_host(options(&double.addr(), ROOT_TOKEN));
    (double, host, policy(DYNAMIC))
}

#[tokio::test]
async fn a_dynamic_lease_is_bounded_by_the_deadline_and_revoked_when_the_run_succeeds() {
    let (double, host, policy) = dynamic().await;
    let report = run(&host, SECRET_READER_COMPONENT, &policy, "db", quick())
        .await
        .unwrap();
    let issued = double.issued();
    assert_eq!(issued.len(), 1);
    let (user, pass) = VaultDouble::creds_of(&issued[0]);
    let json_len = format!(r#"{{"password":"{pass}","username":"{user}"}}"#).len();
    assert_eq!(
        text(report.result.as_ref().unwrap()),
        format!("db {json_len}\n")
    );
    assert_eq!(text(&report.stdout.bytes), "db=[REDACTED:db]\n");
    // Vault gave an hour; the run may last 10 s, so the lease was cut to that.
    assert_eq!(double.lease_renewals(), vec![(issued[0].clone(), 10)]);
    assert_eq!(double.revoked(), issued);
    assert_eq!(host.leases().unwrap().pending(), 0);
}

#[tokio::test]
async fn each_run_gets_its_own_lease() {
    let (double, host, policy) = dynamic().await;
    for _ in 0..2 {
        run(&host, SECRET_READER_COMPONENT, &policy, "db", quick())
            .await
            .unwrap();
    }
    let issued = double.issued();
    assert_eq!(issued.len(), 2);
    assert_ne!(issued[0], issued[1]);
    assert_eq!(double.revoked(), issued);
}

#[tokio::test]
async fn the_lease_is_revoked_when_the_guest_traps() {
    let (double, host, policy) = dynamic().await;
    let report = run(&host, HOSTILE_PANIC_COMPONENT, &policy, "", quick())
        .await
        .unwrap();
    assert_eq!(report.result.unwrap_err().kind(), ErrorKind::Trap);
    assert_eq!(double.issued().len(), 1);
    assert_eq!(double.revoked(), double.issued());
}

#[tokio::test]
async fn the_lease_is_revoked_when_the_guest_runs_out_of_fuel() {
    let (double, host, policy) = dynamic().await;
    let limits = LimitsRequest {
        fuel: Some(FuelRequest::Budget(1_000_000)),
        ..quick()
    };
    let report = run(&host, HOSTILE_SPIN_COMPONENT, &policy, "", limits)
        .await
        .unwrap();
    assert_eq!(report.result.unwrap_err().kind(), ErrorKind::OutOfFuel);
    assert_eq!(double.issued().len(), 1);
    assert_eq!(double.revoked(), double.issued());
}

#[tokio::test]
async fn the_lease_is_revoked_when_the_guest_times_out() {
    let (double, host, policy) = dynamic().await;
    let limits = LimitsRequest {
        fuel: Some(FuelRequest::Unmetered),
        timeout: Some(Duration::from_millis(300)),
        ..quick()
    };
    let report = run(&host, HOSTILE_SPIN_COMPONENT, &policy, "", limits)
        .await
        .unwrap();
    assert_eq!(
        report.result.unwrap_err().kind(),
        ErrorKind::DeadlineExceeded
    );
    assert_eq!(double.issued().len(), 1);
    // A 300 ms run gets a lease of at most 1 s (Vault counts whole seconds).
    assert_eq!(double.lease_renewals()[0].1, 1);
    assert_eq!(double.revoked(), double.issued());
}

#[tokio::test]
async fn the_lease_is_revoked_when_the_host_shuts_down_mid_run() {
    let double = VaultDouble::start().await;
    let host = vault_host(options(&double.addr(), ROOT_TOKEN));
    let mut config = Config::default();
    config.server.shutdown_grace_seconds = 0;
    let policy_text = format!("name = \"t\"\n{DYNAMIC}");
    let mut server = TestServer::start_with_host(config, &[&policy_text], host).await;
    let mut client = server.client().await;
    let sleeper = register(&mut client, SLEEPER_COMPONENT).await;
    let call =
        tokio::spawn(async move { client.run(run_request(&sleeper.id, "t", "60000")).await });
    eventually("the run took its lease", || double.issued().len() == 1).await;
    server.shutdown();
    server.done.await.unwrap().unwrap();
    let interrupted = call.await.unwrap();
    assert!(
        interrupted.is_err(),
        "the run was interrupted: {interrupted:?}"
    );
    assert_eq!(double.revoked(), double.issued());
}

#[tokio::test]
async fn an_unrevokable_lease_is_retried_and_revoked_once_vault_answers() {
    let (double, host, policy) = dynamic().await;
    double.fail_revokes(true);
    run(&host, SECRET_READER_COMPONENT, &policy, "db", quick())
        .await
        .unwrap()
        .result
        .unwrap();
    let issued = double.issued();
    let leases = host.leases().unwrap().clone();
    assert_eq!(leases.unrevoked(), issued, "queued, not forgotten");
    assert!(double.revoked().is_empty());
    double.fail_revokes(false);
    eventually("the retry revoked the lease", || double.revoked() == issued).await;
    eventually("nothing is pending", || leases.pending() == 0).await;
}

#[tokio::test]
async fn a_run_refused_for_one_grant_revokes_the_leases_already_taken() {
    let double = VaultDouble::start().await;
    double.forbid("secret/data/locked");
    let host = vault_host(options(&double.addr(), ROOT_TOKEN));
    // Grants are read in name order: `db` (a lease), then `zz` (403).
    let policy = policy(&format!(
        "{DYNAMIC}[secrets.zz]\npath = \"secret/locked\"\nkey = \"k\"\n"
    ));
    let e = run(&host, SECRET_READER_COMPONENT, &policy, "db", quick())
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::PolicyDenied);
    assert_eq!(double.issued().len(), 1);
    assert_eq!(double.revoked(), double.issued());
}

// ---- authentication: renewal and re-login ----

fn approle_options(double: &VaultDouble, dir: &Path) -> VaultOptions {
    let secret_id = dir.join("secret-id");
    std::fs::write(&secret_id, "sid-123\n").unwrap();
    VaultOptions {
        token: None,
        approle: Some(AppRole {
            mount: "approle".into(),
            role_id: "role-abc".into(),
            secret_id_path: secret_id,
        }),
        ..options(&double.addr(), "")
    }
}

const KV: &str = "[secrets.app]\npath = \"secret/app\"\nkey = \"password\"\n";

#[tokio::test]
async fn the_token_is_renewed_once_half_its_ttl_has_passed() {
    let double = VaultDouble::start().await;
    double.put_kv("secret", "app", "password", "renewal-value");
    double.enable_approle("role-abc", "sid-123", Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let host = vault_host(approle_options(&double, dir.path()));
    let policy = policy(KV);
    run(&host, SECRET_READER_COMPONENT, &policy, "app", quick())
        .await
        .unwrap();
    assert_eq!((double.logins(), double.token_renewals()), (1, 0));
    // Past half of the token's 2 s TTL, the next read renews it first.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = run(&host, SECRET_READER_COMPONENT, &policy, "app", quick())
        .await
        .unwrap();
    assert_eq!(text(report.result.as_ref().unwrap()), "app 13\n");
    assert_eq!((double.logins(), double.token_renewals()), (1, 1));
}

#[tokio::test]
async fn a_lapsed_token_leads_to_a_new_approle_login_and_the_read_succeeds() {
    let double = VaultDouble::start().await;
    double.put_kv("secret", "app", "password", "relogin-value");
    double.enable_approle("role-abc", "sid-123", Duration::from_secs(3600));
    let dir = tempfile::tempdir().unwrap();
    let host = vault_host(approle_options(&double, dir.path()));
    let policy = policy(KV);
    run(&host, SECRET_READER_COMPONENT, &policy, "app", quick())
        .await
        .unwrap();
    double.expire_tokens();
    let report = run(&host, SECRET_READER_COMPONENT, &policy, "app", quick())
        .await
        .unwrap();
    assert_eq!(text(report.result.as_ref().unwrap()), "app 13\n");
    assert_eq!(double.logins(), 2);
}

#[tokio::test]
async fn keep_alive_logs_in_and_renews_without_any_run() {
    use chassis::secrets::SecretProvider;
    let double = VaultDouble::start().await;
    double.enable_approle("role-abc", "sid-123", Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let provider = VaultProvider::new(approle_options(&double, dir.path())).unwrap();
    provider.keep_alive().await.unwrap();
    assert_eq!((double.logins(), double.token_renewals()), (1, 0));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    provider.keep_alive().await.unwrap();
    assert_eq!((double.logins(), double.token_renewals()), (1, 1));
}

#[tokio::test]
async fn a_refused_token_falls_back_to_approle() {
    let double = VaultDouble::start().await;
    double.put_kv("secret", "app", "password", "fallback-value");
    double.enable_approle("role-abc", "sid-123", Duration::from_secs(3600));
    let dir = tempfile::tempdir().unwrap();
    let options = VaultOptions {
        token: Some(TokenSource::Value(SecretValue::new("stale-token".into()))),
        ..approle_options(&double, dir.path())
    };
    let host = vault_host(options);
    let report = run(&host, SECRET_READER_COMPONENT, &policy(KV), "app", quick())
        .await
        .unwrap();
    assert_eq!(text(report.result.as_ref().unwrap()), "app 14\n");
    assert_eq!(double.logins(), 1);
}

#[tokio::test]
async fn a_refused_approle_login_is_unavailable_naming_the_mount() {
    let double = VaultDouble::start().await;
    double.enable_approle("role-abc", "another-secret-id", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let host = vault_host(approle_options(&double, dir.path()));
    let e = run(&host, SECRET_READER_COMPONENT, &policy(KV), "app", quick())
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("auth/approle/login refused"), "{e}");
}

// ---- faults ----

#[tokio::test]
async fn a_slow_vault_is_bounded_by_the_timeout_and_named() {
    let double = VaultDouble::start().await;
    double.put_kv("secret", "app", "password", "slow-value");
    double.set_delay(Duration::from_secs(30));
    let host = vault_host(VaultOptions {
        timeout: Duration::from_millis(300),
        ..options(&double.addr(), ROOT_TOKEN)
    });
    let started = Instant::now();
    let e = run(&host, SECRET_READER_COMPONENT, &policy(KV), "app", quick())
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    let message = e.to_string();
    assert!(message.contains(&double.addr()), "{message}");
    assert!(message.contains("did not answer within 300ms"), "{message}");
    // Not a timed assertion on speed: only that the 30 s delay was not waited out.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn vault_down_is_unavailable_over_grpc_naming_the_address() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let host = vault_host(options(&addr, ROOT_TOKEN));
    let policy_text = format!("name = \"t\"\n{KV}");
    let server = TestServer::start_with_host(Config::default(), &[&policy_text], host).await;
    let mut client = server.client().await;
    let module = register(&mut client, SECRET_READER_COMPONENT).await;
    let status = assert_status(
        client.run(run_request(&module.id, "t", "app")).await,
        tonic::Code::Unavailable,
        "unavailable",
    );
    assert!(
        status
            .message()
            .contains(&format!("vault at {addr} is unreachable")),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_forbidden_path_is_permission_denied_over_grpc_naming_the_path() {
    let double = VaultDouble::start().await;
    double.forbid("secret/data/app");
    let host = vault_host(options(&double.addr(), ROOT_TOKEN));
    let policy_text = format!("name = \"t\"\n{KV}");
    let server = TestServer::start_with_host(Config::default(), &[&policy_text], host).await;
    let mut client = server.client().await;
    let module = register(&mut client, SECRET_READER_COMPONENT).await;
    let status = assert_status(
        client.run(run_request(&module.id, "t", "app")).await,
        tonic::Code::PermissionDenied,
        "policy-denied",
    );
    assert!(status.message().contains("`secret/app`"), "{status:?}");
}
