//! Secrets from Vault, end to end, against a real OpenBao server (Vault's
//! API; `chassis_tests::openbao`) and, for dynamic credentials, a real
//! PostgreSQL cluster behind OpenBao's `database` engine
//! (`chassis_tests::postgres`).
//!
//! The host authenticates with a token (or AppRole role) holding only
//! `deploy/vault/chassis-host.hcl`, so every case also proves that policy
//! is enough. Each case asserts the exact outcome: the value's length
//! reaches the guest, every echo of it is redacted, and each lease is
//! revoked in OpenBao (`sys/leases/lookup` refuses it) and its PostgreSQL
//! role dropped by the time the run is over, whatever ended it.
//!
//! The Vault test double (`chassis_tests::vault_double`) is left only for
//! the faults a real server cannot be told to produce; each such case says
//! which.

use crate::common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis::config::Config;
use chassis::policy::{Policy, SecretGrant};
use chassis::sandbox::{FuelRequest, LimitsRequest, RunError, RunReport};
use chassis::secrets::{
    AppRole, BoxFuture, Fetched, SecretError, SecretProvider, SecretValue, TokenSource,
    VaultOptions, VaultProvider,
};
use chassis::{ErrorKind, Host, RunRequest, StartError};
use chassis_tests::openbao::{DB_USER_PREFIX, OpenBao};
use chassis_tests::postgres::Postgres;
use chassis_tests::programs::*;
use chassis_tests::vault_double::{ROOT_TOKEN, VaultDouble};
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

fn host_with(provider: Arc<dyn SecretProvider>) -> Host {
    Host::builder()
        .pool_slots(8)
        .secrets(provider)
        .lease_retry_backoff(Duration::from_millis(20))
        .build()
        .unwrap()
}

fn vault_host(options: VaultOptions) -> Host {
    host_with(Arc::new(VaultProvider::new(options).unwrap()))
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

/// For a run that holds its credential while the test acts: a deadline
/// (and so a lease) far longer than the test, so OpenBao's own expiry of
/// the lease cannot stand in for the host's revocation.
fn long() -> LimitsRequest {
    LimitsRequest {
        fuel: Some(FuelRequest::Unmetered),
        timeout: Some(Duration::from_secs(300)),
        ..quick()
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The chassis host's Vault policy, as shipped for operators.
fn host_policy() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/vault/chassis-host.hcl");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The database role the dynamic grants read (inside the host policy's
/// `database/creds/chassis-*`).
const DB_ROLE: &str = "chassis-ro";
const DYNAMIC: &str = "[secrets.db]\npath = \"database/creds/chassis-ro\"\ndynamic = true\n";
const KV: &str = "[secrets.app]\npath = \"secret/chassis/app\"\nkey = \"password\"\n";

/// A real OpenBao (and PostgreSQL, for dynamic credentials) and a token
/// holding only the host policy.
struct Real {
    bao: OpenBao,
    pg: Option<Arc<Postgres>>,
    token: String,
}

impl Real {
    /// OpenBao with the host policy loaded and a token of it.
    fn start() -> Self {
        let bao = OpenBao::start();
        bao.put_policy("chassis-host", &host_policy());
        let token = bao.token(&["chassis-host"], "1h", true);
        Self {
            bao,
            pg: None,
            token,
        }
    }

    /// As [`Real::start`], with a PostgreSQL cluster behind the `database`
    /// engine and role [`DB_ROLE`].
    fn with_database() -> Self {
        let mut real = Self::start();
        let pg = Arc::new(Postgres::start());
        real.bao.enable_database(&pg, DB_ROLE);
        real.pg = Some(pg);
        real
    }

    fn pg(&self) -> &Postgres {
        self.pg.as_ref().expect("started with_database")
    }

    /// A recording provider on the host token, logging in to PostgreSQL
    /// with each credential as it is issued.
    fn recording(&self) -> Arc<Recording> {
        Arc::new(Recording {
            inner: VaultProvider::new(options(&self.bao.addr(), &self.token)).unwrap(),
            pg: self.pg.as_ref().map(Arc::downgrade),
            issued: Mutex::new(Vec::new()),
        })
    }

    /// Asserts that every credential `recording` saw worked while its run
    /// lived, and that now its lease is revoked in OpenBao, its role is gone
    /// from PostgreSQL and it can no longer log in.
    fn assert_used_then_revoked(&self, recording: &Recording, runs: usize) {
        let issued = recording.issued();
        assert_eq!(issued.len(), runs, "one credential per run: {issued:?}");
        for credential in &issued {
            assert_eq!(
                credential.login_during_run,
                Ok(()),
                "{} logged in while its run lived",
                credential.username
            );
            assert!(
                !self.bao.lease_exists(&credential.lease_id),
                "lease {} is revoked",
                credential.lease_id
            );
            assert!(
                self.pg()
                    .can_log_in(&credential.username, &credential.password)
                    .is_err(),
                "{} can no longer log in",
                credential.username
            );
        }
        assert_eq!(
            self.pg().roles_starting_with(DB_USER_PREFIX),
            Vec::<String>::new(),
            "every dynamic role was dropped"
        );
    }
}

/// One dynamic credential as the provider handed it to the host.
#[derive(Debug, Clone)]
struct Credential {
    lease_id: String,
    ttl: Duration,
    username: String,
    password: String,
    /// Logging in to PostgreSQL with it right after OpenBao issued it, in
    /// the run (before the sandbox starts): proof that the run was handed a
    /// working login, checked against the same login refused afterwards.
    login_during_run: Result<(), String>,
}

/// The host's Vault provider, recording each dynamic credential it reads
/// and trying it against PostgreSQL at once.
///
/// Why prove the credential from here rather than from the guest: the
/// guests have no PostgreSQL client, and what the cases are about is the
/// lease's life (issued for the run, dead when it ends); a login made with
/// the exact username and password the run received, while the run holds
/// the lease, shows it was live, and the same login failing afterwards
/// shows it was revoked.
///
/// It holds the cluster weakly: a gRPC server registers its host on the
/// process-wide health board, which keeps the last one (and so this
/// provider) alive past its test, and the cluster must still stop when the
/// test's [`Real`] is dropped.
#[derive(Debug)]
struct Recording {
    inner: VaultProvider,
    pg: Option<std::sync::Weak<Postgres>>,
    issued: Mutex<Vec<Credential>>,
}

impl Recording {
    fn issued(&self) -> Vec<Credential> {
        self.issued.lock().unwrap().clone()
    }
}

impl SecretProvider for Recording {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn read<'a>(
        &'a self,
        grant: &'a SecretGrant,
        max_ttl: Duration,
    ) -> BoxFuture<'a, Result<Fetched, SecretError>> {
        Box::pin(async move {
            let fetched = self.inner.read(grant, max_ttl).await?;
            if let Some(lease) = &fetched.lease {
                let creds: serde_json::Value =
                    serde_json::from_str(fetched.value.expose()).unwrap();
                let username = creds["username"].as_str().unwrap().to_string();
                let password = creds["password"].as_str().unwrap().to_string();
                let login_during_run = match self.pg.as_ref().and_then(std::sync::Weak::upgrade) {
                    Some(pg) => {
                        let (pg, user, pass) = (pg.clone(), username.clone(), password.clone());
                        tokio::task::spawn_blocking(move || pg.can_log_in(&user, &pass))
                            .await
                            .unwrap()
                    }
                    None => Err("no PostgreSQL to try".into()),
                };
                self.issued.lock().unwrap().push(Credential {
                    lease_id: lease.id.clone(),
                    ttl: lease.ttl,
                    username,
                    password,
                    login_during_run,
                });
            }
            Ok(fetched)
        })
    }

    fn revoke<'a>(&'a self, lease_id: &'a str) -> BoxFuture<'a, Result<(), SecretError>> {
        self.inner.revoke(lease_id)
    }

    fn keep_alive(&self) -> BoxFuture<'_, Result<(), SecretError>> {
        self.inner.keep_alive()
    }
}

// ---- KV secrets ----

#[tokio::test]
async fn granted_values_reach_the_guest_redacted_and_ungranted_names_are_denied() {
    let real = Real::start();
    let value = format!("kv-pa55-{}", std::process::id());
    real.bao.put_kv("chassis/app", "password", &value);
    let host = vault_host(options(&real.bao.addr(), &real.token));
    let policy = policy(
        "[secrets.app]\npath = \"secret/chassis/app\"\nkey = \"password\"\nenv = \"APP_PASSWORD\"\n",
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

#[tokio::test]
async fn a_path_outside_the_host_policy_refuses_the_run_naming_the_path() {
    let real = Real::start();
    real.bao
        .put_kv("elsewhere/app", "password", "not-for-chassis");
    let host = vault_host(options(&real.bao.addr(), &real.token));
    let policy = policy("[secrets.x]\npath = \"secret/elsewhere/app\"\nkey = \"password\"\n");
    let e = run(&host, SECRET_READER_COMPONENT, &policy, "x", quick())
        .await
        .expect_err("the sandbox does not start");
    assert_eq!(e.kind(), ErrorKind::PolicyDenied, "{e}");
    assert!(
        e.to_string()
            .contains("permission denied reading `secret/elsewhere/app`"),
        "{e}"
    );
}

#[tokio::test]
async fn a_forbidden_path_is_permission_denied_over_grpc_naming_the_path() {
    let real = Real::start();
    let host = vault_host(options(&real.bao.addr(), &real.token));
    let policy_text = "name = \"t\"\n[secrets.app]\npath = \"secret/elsewhere/app\"\nkey = \"k\"\n";
    let server = TestServer::start_with_host(Config::default(), &[policy_text], host).await;
    let mut client = server.client().await;
    let module = register(&mut client, SECRET_READER_COMPONENT).await;
    let status = assert_status(
        client.run(run_request(&module.id, "t", "app")).await,
        tonic::Code::PermissionDenied,
        "policy-denied",
    );
    assert!(
        status.message().contains("`secret/elsewhere/app`"),
        "{status:?}"
    );
}

// ---- dynamic database credentials: one lease per run, revoked on every exit ----

#[tokio::test]
async fn a_dynamic_credential_works_during_the_run_is_cut_to_its_deadline_and_revoked_on_success() {
    let real = Real::with_database();
    let recording = real.recording();
    let host = host_with(recording.clone());
    let report = run(
        &host,
        SECRET_READER_COMPONENT,
        &policy(DYNAMIC),
        "db",
        quick(),
    )
    .await
    .unwrap();
    let issued = recording.issued();
    let credential = &issued[0];
    assert!(
        credential.username.starts_with(DB_USER_PREFIX),
        "{}",
        credential.username
    );
    let json_len = json!({ "password": credential.password, "username": credential.username })
        .to_string()
        .len();
    assert_eq!(
        text(report.result.as_ref().unwrap()),
        format!("db {json_len}\n")
    );
    assert_eq!(text(&report.stdout.bytes), "db=[REDACTED:db]\n");
    // The role leases for an hour; the run may last 10 s, so the host cut
    // the lease to that.
    assert_eq!(credential.ttl, Duration::from_secs(10));
    real.assert_used_then_revoked(&recording, 1);
    assert_eq!(host.leases().unwrap().pending(), 0);
}

#[tokio::test]
async fn each_run_gets_its_own_credential() {
    let real = Real::with_database();
    let recording = real.recording();
    let host = host_with(recording.clone());
    for _ in 0..2 {
        run(
            &host,
            SECRET_READER_COMPONENT,
            &policy(DYNAMIC),
            "db",
            quick(),
        )
        .await
        .unwrap()
        .result
        .unwrap();
    }
    let issued = recording.issued();
    assert_ne!(issued[0].lease_id, issued[1].lease_id);
    assert_ne!(issued[0].username, issued[1].username);
    real.assert_used_then_revoked(&recording, 2);
}

#[tokio::test]
async fn the_credential_is_revoked_when_the_guest_traps() {
    let real = Real::with_database();
    let recording = real.recording();
    let host = host_with(recording.clone());
    let report = run(
        &host,
        HOSTILE_PANIC_COMPONENT,
        &policy(DYNAMIC),
        "",
        quick(),
    )
    .await
    .unwrap();
    assert_eq!(report.result.unwrap_err().kind(), ErrorKind::Trap);
    real.assert_used_then_revoked(&recording, 1);
}

#[tokio::test]
async fn the_credential_is_revoked_when_the_guest_runs_out_of_fuel() {
    let real = Real::with_database();
    let recording = real.recording();
    let host = host_with(recording.clone());
    let limits = LimitsRequest {
        fuel: Some(FuelRequest::Budget(1_000_000)),
        ..quick()
    };
    let report = run(&host, HOSTILE_SPIN_COMPONENT, &policy(DYNAMIC), "", limits)
        .await
        .unwrap();
    assert_eq!(report.result.unwrap_err().kind(), ErrorKind::OutOfFuel);
    real.assert_used_then_revoked(&recording, 1);
}

#[tokio::test]
async fn the_credential_is_revoked_when_the_guest_times_out() {
    let real = Real::with_database();
    let recording = real.recording();
    let host = host_with(recording.clone());
    let limits = LimitsRequest {
        fuel: Some(FuelRequest::Unmetered),
        timeout: Some(Duration::from_millis(300)),
        ..quick()
    };
    let report = run(&host, HOSTILE_SPIN_COMPONENT, &policy(DYNAMIC), "", limits)
        .await
        .unwrap();
    assert_eq!(
        report.result.unwrap_err().kind(),
        ErrorKind::DeadlineExceeded
    );
    // A 300 ms run gets a lease of at most 1 s (Vault counts whole seconds).
    assert_eq!(recording.issued()[0].ttl, Duration::from_secs(1));
    real.assert_used_then_revoked(&recording, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_is_revoked_when_the_host_shuts_down_mid_run() {
    let real = Real::with_database();
    let recording = real.recording();
    let host = host_with(recording.clone());
    let mut config = Config::default();
    config.server.shutdown_grace_seconds = 0;
    let policy_text = format!("name = \"t\"\n{DYNAMIC}");
    let mut server = TestServer::start_with_host(config, &[&policy_text], host).await;
    let mut client = server.client().await;
    let sleeper = register(&mut client, SLEEPER_COMPONENT).await;
    let call =
        tokio::spawn(async move { client.run(run_request(&sleeper.id, "t", "60000")).await });
    eventually("the run took its credential", || {
        recording.issued().len() == 1
    })
    .await;
    let username = recording.issued()[0].username.clone();
    assert_eq!(real.pg().roles_starting_with(DB_USER_PREFIX), [username]);
    server.shutdown();
    server.done.await.unwrap().unwrap();
    let interrupted = call.await.unwrap();
    assert!(
        interrupted.is_err(),
        "the run was interrupted: {interrupted:?}"
    );
    real.assert_used_then_revoked(&recording, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_is_revoked_when_the_client_cancels_the_run() {
    let real = Real::with_database();
    let recording = real.recording();
    let host = host_with(recording.clone());
    let policy_text = format!("name = \"t\"\n{DYNAMIC}");
    let server = TestServer::start_with_host(Config::default(), &[&policy_text], host).await;
    let mut client = server.client().await;
    let sleeper = register(&mut client, SLEEPER_COMPONENT).await;
    let call =
        tokio::spawn(async move { client.run(run_request(&sleeper.id, "t", "60000")).await });
    eventually("the run took its credential", || {
        recording.issued().len() == 1
    })
    .await;
    let credential = recording.issued()[0].clone();
    // The client goes away: its call (and connection) is dropped, the
    // server drops the run, and the lease goes to the retry queue.
    call.abort();
    let _ = call.await;
    let bao = &real.bao;
    eventually("the dropped run's lease is revoked", || {
        !bao.lease_exists(&credential.lease_id)
    })
    .await;
    real.assert_used_then_revoked(&recording, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_is_revoked_when_the_run_is_dropped() {
    let real = Real::with_database();
    let recording = real.recording();
    let host = Arc::new(host_with(recording.clone()));
    let running = host.clone();
    let run = tokio::spawn(async move {
        run(
            &running,
            SLEEPER_COMPONENT,
            &policy(DYNAMIC),
            "60000",
            long(),
        )
        .await
    });
    eventually("the run took its credential", || {
        recording.issued().len() == 1
    })
    .await;
    let credential = recording.issued()[0].clone();
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    let leases = host.leases().unwrap().clone();
    eventually("the dropped run's lease is revoked", || {
        leases.pending() == 0
    })
    .await;
    assert!(!real.bao.lease_exists(&credential.lease_id));
    real.assert_used_then_revoked(&recording, 1);
}

#[tokio::test]
async fn a_run_refused_for_one_grant_revokes_the_credentials_already_taken() {
    let real = Real::with_database();
    let recording = real.recording();
    let host = host_with(recording.clone());
    // Grants are read in name order: `db` (a lease), then `zz` (403).
    let policy = policy(&format!(
        "{DYNAMIC}[secrets.zz]\npath = \"secret/elsewhere/locked\"\nkey = \"k\"\n"
    ));
    let e = run(&host, SECRET_READER_COMPONENT, &policy, "db", quick())
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::PolicyDenied, "{e}");
    real.assert_used_then_revoked(&recording, 1);
}

// ---- the host's own token: renewal, expiry, revocation, AppRole ----

fn approle_options(addr: &str, dir: &Path, role_id: &str, secret_id: &str) -> VaultOptions {
    let secret_id_path = dir.join("secret-id");
    std::fs::write(&secret_id_path, format!("{secret_id}\n")).unwrap();
    VaultOptions {
        token: None,
        approle: Some(AppRole {
            mount: "approle".into(),
            role_id: role_id.into(),
            secret_id_path,
        }),
        ..options(addr, "")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_renewable_token_outlives_its_ttl_through_the_keep_alive() {
    let real = Real::start();
    real.bao.put_kv("chassis/app", "password", "renewal-value");
    let token = real.bao.token(&["chassis-host"], "10s", true);
    let provider = Arc::new(VaultProvider::new(options(&real.bao.addr(), &token)).unwrap());
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = failures.clone();
    let keep_alive = tokio::spawn(chassis::secrets::keep_alive(provider.clone(), move |r| {
        if let Err(e) = r {
            seen.lock().unwrap().push(e.to_string());
        }
    }));
    // Two and a half TTLs with no run at all: only the keep-alive renews.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let looked_up = real
        .bao
        .lookup_token(&token)
        .expect("the token is still valid after 2.5 TTLs");
    assert!(
        looked_up["last_renewal_time"].as_i64().unwrap_or(0) > 0,
        "the keep-alive renewed it: {looked_up}"
    );
    let host = host_with(provider);
    let report = run(&host, SECRET_READER_COMPONENT, &policy(KV), "app", quick())
        .await
        .unwrap();
    assert_eq!(text(report.result.as_ref().unwrap()), "app 13\n");
    keep_alive.abort();
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn an_expired_token_is_unavailable_naming_the_address_and_approle_recovers() {
    let real = Real::start();
    real.bao.put_kv("chassis/app", "password", "relogin-value");
    let (role_id, secret_id) = real.bao.enable_approle(&["chassis-host"], "1h");
    let token = real.bao.token(&["chassis-host"], "3s", false);
    let addr = real.bao.addr();
    let token_only = vault_host(options(&addr, &token));
    let dir = tempfile::tempdir().unwrap();
    let with_approle = vault_host(VaultOptions {
        token: Some(TokenSource::Value(SecretValue::new(token.clone()))),
        ..approle_options(&addr, dir.path(), &role_id, &secret_id)
    });
    let policy = policy(KV);
    for host in [&token_only, &with_approle] {
        let report = run(host, SECRET_READER_COMPONENT, &policy, "app", quick())
            .await
            .unwrap();
        assert_eq!(text(report.result.as_ref().unwrap()), "app 13\n");
    }
    let bao = &real.bao;
    eventually("the non-renewable token expired", || {
        bao.lookup_token(&token).is_none()
    })
    .await;

    let e = run(
        &token_only,
        SECRET_READER_COMPONENT,
        &policy,
        "app",
        quick(),
    )
    .await
    .expect_err("the host's token is dead");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let message = e.to_string();
    assert!(message.contains(&format!("vault at {addr}")), "{message}");
    assert!(message.contains("expired or revoked"), "{message}");

    let report = run(
        &with_approle,
        SECRET_READER_COMPONENT,
        &policy,
        "app",
        quick(),
    )
    .await
    .unwrap();
    assert_eq!(text(report.result.as_ref().unwrap()), "app 13\n");
}

#[tokio::test]
async fn a_revoked_token_is_noticed_by_the_keep_alive_and_approle_recovers() {
    let real = Real::start();
    real.bao.put_kv("chassis/app", "password", "revoked-value");
    let (role_id, secret_id) = real.bao.enable_approle(&["chassis-host"], "1h");
    let addr = real.bao.addr();
    let token = real.bao.token(&["chassis-host"], "1h", true);
    let token_only = VaultProvider::new(options(&addr, &token)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let with_approle = Arc::new(
        VaultProvider::new(VaultOptions {
            token: Some(TokenSource::Value(SecretValue::new(token.clone()))),
            ..approle_options(&addr, dir.path(), &role_id, &secret_id)
        })
        .unwrap(),
    );
    token_only.keep_alive().await.unwrap();
    with_approle.keep_alive().await.unwrap();
    real.bao
        .root("POST", "auth/token/revoke", Some(json!({ "token": token })));
    // The token's renewal is 30 minutes away, yet the next keep-alive
    // already knows it is gone.
    let e = token_only.keep_alive().await.expect_err("revoked");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains(&format!("vault at {addr}")), "{e}");
    assert!(e.to_string().contains("expired or revoked"), "{e}");
    with_approle.keep_alive().await.unwrap();
    let host = host_with(with_approle);
    let report = run(&host, SECRET_READER_COMPONENT, &policy(KV), "app", quick())
        .await
        .unwrap();
    assert_eq!(text(report.result.as_ref().unwrap()), "app 13\n");
}

#[tokio::test]
async fn a_refused_approle_login_is_unavailable_naming_the_mount() {
    let real = Real::start();
    let (role_id, _) = real.bao.enable_approle(&["chassis-host"], "1h");
    let dir = tempfile::tempdir().unwrap();
    let host = vault_host(approle_options(
        &real.bao.addr(),
        dir.path(),
        &role_id,
        "not-the-secret-id",
    ));
    let e = run(&host, SECRET_READER_COMPONENT, &policy(KV), "app", quick())
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("auth/approle/login refused"), "{e}");
}

// ---- faults ----

#[tokio::test]
async fn vault_down_is_unavailable_over_grpc_naming_the_address() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let host = vault_host(options(&addr, "no-server-here"));
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

/// Double only: a real server cannot be told to answer slowly.
#[tokio::test]
async fn a_slow_vault_is_bounded_by_the_timeout_and_named() {
    let double = VaultDouble::start().await;
    double.put_kv("secret", "chassis/app", "password", "slow-value");
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

/// Double only: a real server cannot be told to fail revocations with a
/// 5xx while it keeps answering everything else.
#[tokio::test]
async fn an_unrevokable_lease_is_retried_and_revoked_once_vault_answers() {
    let double = VaultDouble::start().await;
    let host = vault_host(options(&double.addr(), ROOT_TOKEN));
    let policy = policy("[secrets.db]\npath = \"database/creds/ro\"\ndynamic = true\n");
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

/// One `/metrics` sample from the exporter on `port`.
fn scrape(port: u16, metric: &str) -> f64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == metric).then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// The audit records of `kind` in the log under `data`.
fn audited(audit: &chassis::audit::AuditLog, data: &Path, kind: &str) -> Vec<serde_json::Value> {
    audit.flush().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(data.join("audit"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .filter(|r| r["kind"] == kind)
        .map(|r| r["fields"].clone())
        .collect()
}

/// OpenBao is killed for real (SIGKILL) while a run holds a credential and
/// started again later. It runs on raft storage, not as a dev server, so
/// the restarted server still knows the lease (a dev server would come
/// back empty and the lease, and its PostgreSQL role, would be lost to the
/// test); SIGSTOP would only make it slow, which is a different fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_killed_mid_run_refuses_granted_runs_and_its_leases_are_revoked_once_it_is_back() {
    let mut real = Real::with_database();
    real.bao.put_kv("chassis/app", "password", "fault-value");
    let metrics_port = chassis_tests::etcd::free_port();
    chassis::telemetry::install_prometheus(([127, 0, 0, 1], metrics_port).into(), 256, 100, 99.9)
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let audit =
        chassis::audit::AuditLog::open(chassis::audit::AuditOptions::in_data_dir(data.path()))
            .unwrap();
    let recording = real.recording();
    let host = Arc::new(
        Host::builder()
            .pool_slots(8)
            .secrets(recording.clone())
            .audit(audit.clone())
            .lease_retry_backoff(Duration::from_millis(20))
            .build()
            .unwrap(),
    );
    let running = host.clone();
    let holding = tokio::spawn(async move {
        run(
            &running,
            SLEEPER_COMPONENT,
            &policy(DYNAMIC),
            "3000",
            long(),
        )
        .await
    });
    eventually("the run took its credential", || {
        recording.issued().len() == 1
    })
    .await;
    let credential = recording.issued()[0].clone();
    let failures_before = scrape(metrics_port, chassis::telemetry::SECRET_REVOKE_FAILURES);

    real.bao.kill();
    let addr = real.bao.addr();
    for grants in [KV, DYNAMIC] {
        let e = run(&host, SECRET_READER_COMPONENT, &policy(grants), "", quick())
            .await
            .expect_err("a run with grants is refused while OpenBao is down");
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(e.to_string().contains(&format!("vault at {addr}")), "{e}");
    }
    let report = run(&host, HELLO_COMPONENT, &policy(""), "ops", quick())
        .await
        .unwrap();
    assert_eq!(text(report.result.as_ref().unwrap()), "Hello, ops!");

    // The holding run ends while OpenBao is down: its revocation fails and
    // waits in the retry queue, counted and audited; the role lives on.
    holding.await.unwrap().unwrap().result.unwrap();
    let leases = host.leases().unwrap().clone();
    eventually("the lease is queued for retry", || {
        leases.unrevoked() == [credential.lease_id.clone()]
    })
    .await;
    assert!(scrape(metrics_port, chassis::telemetry::SECRET_REVOKE_FAILURES) > failures_before);
    let failed = audited(&audit, data.path(), "secret.lease_revoke_failed");
    assert!(
        failed
            .iter()
            .any(|f| f["lease_id"] == credential.lease_id.as_str()),
        "{failed:?}"
    );
    assert_eq!(
        real.pg().roles_starting_with(DB_USER_PREFIX),
        std::slice::from_ref(&credential.username)
    );

    real.bao.restart();
    eventually("the retry revoked the lease", || leases.pending() == 0).await;
    let revoked = audited(&audit, data.path(), "secret.lease_revoked");
    let record = revoked
        .iter()
        .find(|f| f["lease_id"] == credential.lease_id.as_str())
        .unwrap_or_else(|| panic!("{revoked:?}"));
    assert!(record["attempts"].as_u64().unwrap() >= 2, "{record}");
    assert_eq!(
        scrape(metrics_port, chassis::telemetry::SECRET_LEASES_PENDING),
        0.0
    );
    real.assert_used_then_revoked(&recording, 1);
}
