//! A TEST DOUBLE of HashiCorp Vault's HTTP API, for the secret tests a real
//! server cannot stage.
//!
//! Most secret tests run against a real OpenBao server
//! ([`crate::openbao`]). This double stays for the faults no real server
//! can be told to produce: answering slowly, and failing revocations with
//! a 5xx while everything else works. It is not Vault and not a mock of
//! one: it implements only the endpoints chassis uses, with Vault's JSON
//! shapes, on a loopback port per test:
//!
//! - `GET /v1/<mount>/data/<path>`: KV v2 read
//! - `GET /v1/auth/token/lookup-self`, `POST /v1/auth/token/renew-self`
//! - `POST /v1/auth/approle/login`
//! - `GET /v1/database/creds/<role>`: dynamic credentials with a fresh lease
//! - `PUT /v1/sys/leases/renew/<lease id>`, `PUT /v1/sys/leases/revoke/<lease id>`
//!
//! Tests steer it: put KV secrets, refuse a path with 403, answer slowly,
//! expire every token (forcing a re-login), fail revocations, or stop
//! listening (Vault down). It records logins, token renewals, issued and
//! revoked leases so tests can assert what chassis did. HTTP/1.1 with
//! `Connection: close`, one request per connection: enough for reqwest.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The token every double accepts until [`VaultDouble::expire_tokens`]:
/// like a dev server's root token, it never expires.
pub const ROOT_TOKEN: &str = "double-root-token";

#[derive(Debug)]
struct Token {
    /// 0: never expires.
    ttl_s: u64,
    expires: Option<Instant>,
    renewable: bool,
}

#[derive(Debug, Default)]
struct State {
    kv: BTreeMap<String, BTreeMap<String, String>>,
    tokens: BTreeMap<String, Token>,
    approle: Option<(String, String, u64)>,
    forbidden: BTreeSet<String>,
    delay: Duration,
    creds_ttl_s: u64,
    fail_revokes: bool,
    next: u64,
    logins: u32,
    token_renewals: u32,
    issued: Vec<String>,
    revoked: Vec<String>,
    lease_renewals: Vec<(String, u64)>,
}

/// A running test double; see the module docs. Stops when dropped.
#[derive(Debug)]
pub struct VaultDouble {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for VaultDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl VaultDouble {
    /// Starts a double on an ephemeral loopback port accepting
    /// [`ROOT_TOKEN`], with dynamic credentials leased for an hour.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the double");
        let addr = listener.local_addr().expect("the double's address");
        let mut state = State {
            creds_ttl_s: 3600,
            ..State::default()
        };
        state.tokens.insert(
            ROOT_TOKEN.into(),
            Token {
                ttl_s: 0,
                expires: None,
                renewable: false,
            },
        );
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, state).await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stores `key = value` in the KV v2 secret `<mount>/<path>`.
    pub fn put_kv(&self, mount: &str, path: &str, key: &str, value: &str) {
        self.state()
            .kv
            .entry(format!("{mount}/data/{path}"))
            .or_default()
            .insert(key.into(), value.into());
    }

    /// Accepts AppRole logins with these ids, issuing renewable tokens that
    /// live `token_ttl`.
    pub fn enable_approle(&self, role_id: &str, secret_id: &str, token_ttl: Duration) {
        self.state().approle = Some((role_id.into(), secret_id.into(), token_ttl.as_secs()));
    }

    /// Answers 403 for the API path `path` (e.g. `secret/data/app` or
    /// `database/creds/ro`), as Vault does when the token's policy lacks it.
    pub fn forbid(&self, path: &str) {
        self.state().forbidden.insert(path.into());
    }

    /// Waits this long before answering anything.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Leases dynamic credentials for this long.
    pub fn set_creds_ttl(&self, ttl: Duration) {
        self.state().creds_ttl_s = ttl.as_secs();
    }

    /// Makes lease revocations fail with 503 (or succeed again).
    pub fn fail_revokes(&self, fail: bool) {
        self.state().fail_revokes = fail;
    }

    /// Invalidates every token, including the root token: the next request
    /// with one gets 403 until someone logs in again.
    pub fn expire_tokens(&self) {
        self.state().tokens.clear();
    }

    /// Stops listening: Vault is down.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// AppRole logins so far.
    pub fn logins(&self) -> u32 {
        self.state().logins
    }

    /// Token renewals (`renew-self`) so far.
    pub fn token_renewals(&self) -> u32 {
        self.state().token_renewals
    }

    /// Lease ids issued for dynamic credentials, in order.
    pub fn issued(&self) -> Vec<String> {
        self.state().issued.clone()
    }

    /// Lease ids revoked, in order.
    pub fn revoked(&self) -> Vec<String> {
        self.state().revoked.clone()
    }

    /// `(lease_id, increment)` of every lease renewal.
    pub fn lease_renewals(&self) -> Vec<(String, u64)> {
        self.state().lease_renewals.clone()
    }

    /// The credentials issued with lease `lease_id`: `(username, password)`.
    pub fn creds_of(lease_id: &str) -> (String, String) {
        let n = lease_id.rsplit('-').next().unwrap_or_default();
        (format!("v-user-{n}"), format!("dyn-pass-{n}-Zq8"))
    }
}

struct Request {
    method: String,
    path: String,
    token: Option<String>,
    body: Value,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let mut token = None;
    let mut length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "x-vault-token" => token = Some(v.trim().to_string()),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some(Request {
        method,
        path,
        token: token.filter(|t| !t.is_empty()),
        body,
    })
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let Some(request) = read_request(&mut stream).await else {
        return Ok(());
    };
    let delay = state.lock().unwrap_or_else(|p| p.into_inner()).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, body) = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        answer(&mut state, &request)
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn errors(status: u16, message: &str) -> (u16, Option<Value>) {
    (status, Some(json!({ "errors": [message] })))
}

/// Vault's envelope around `data` or `auth`.
fn envelope(data: Value, auth: Value, lease_id: &str, lease_s: u64) -> Value {
    json!({
        "request_id": "double",
        "lease_id": lease_id,
        "lease_duration": lease_s,
        "renewable": !lease_id.is_empty(),
        "data": data,
        "auth": auth,
        "warnings": null,
        "wrap_info": null,
    })
}

fn auth_info(token: &str, ttl_s: u64, renewable: bool) -> Value {
    json!({
        "client_token": token,
        "accessor": format!("accessor-{token}"),
        "policies": ["default"],
        "token_policies": ["default"],
        "metadata": null,
        "lease_duration": ttl_s,
        "renewable": renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
    })
}

fn answer(state: &mut State, request: &Request) -> (u16, Option<Value>) {
    let path = request
        .path
        .strip_prefix("/v1/")
        .unwrap_or(&request.path)
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    if path == "auth/approle/login" && request.method == "POST" {
        let Some((role, secret, ttl_s)) = state.approle.clone() else {
            return errors(400, "no handler for route \"auth/approle/login\"");
        };
        if request.body["role_id"] != role.as_str() || request.body["secret_id"] != secret.as_str()
        {
            return errors(400, "invalid role or secret ID");
        }
        state.logins += 1;
        state.next += 1;
        let token = format!("double-approle-token-{}", state.next);
        state.tokens.insert(
            token.clone(),
            Token {
                ttl_s,
                expires: (ttl_s > 0).then(|| Instant::now() + Duration::from_secs(ttl_s)),
                renewable: true,
            },
        );
        return (
            200,
            Some(envelope(Value::Null, auth_info(&token, ttl_s, true), "", 0)),
        );
    }
    // Everything else needs a live token.
    let now = Instant::now();
    state
        .tokens
        .retain(|_, t| t.expires.is_none_or(|at| now < at));
    let Some(token) = request
        .token
        .clone()
        .filter(|t| state.tokens.contains_key(t))
    else {
        return errors(403, "permission denied");
    };
    if state.forbidden.contains(&path) {
        return errors(403, "permission denied");
    }
    match (request.method.as_str(), path.as_str()) {
        ("GET", "auth/token/lookup-self") => {
            let t = &state.tokens[&token];
            let ttl = t
                .expires
                .map_or(0, |at| at.saturating_duration_since(now).as_secs());
            let data = json!({
                "accessor": format!("accessor-{token}"),
                "creation_time": 0,
                "creation_ttl": t.ttl_s,
                "display_name": "double",
                "entity_id": "",
                "expire_time": null,
                "explicit_max_ttl": 0,
                "id": token,
                "identity_policies": null,
                "issue_time": null,
                "meta": null,
                "num_uses": 0,
                "orphan": true,
                "path": "auth/token/create",
                "policies": ["default"],
                "renewable": t.renewable,
                "role": null,
                "ttl": ttl,
            });
            (200, Some(envelope(data, Value::Null, "", 0)))
        }
        ("POST" | "PUT", "auth/token/renew-self") => {
            let t = state.tokens.get_mut(&token).expect("checked above");
            if !t.renewable {
                return errors(400, "token is not renewable");
            }
            t.expires = (t.ttl_s > 0).then(|| now + Duration::from_secs(t.ttl_s));
            let (ttl_s, renewable) = (t.ttl_s, t.renewable);
            state.token_renewals += 1;
            (
                200,
                Some(envelope(
                    Value::Null,
                    auth_info(&token, ttl_s, renewable),
                    "",
                    0,
                )),
            )
        }
        ("POST" | "PUT", p) if p.starts_with("sys/leases/renew/") => {
            let id = p["sys/leases/renew/".len()..].to_string();
            let increment = request.body["increment"]
                .as_u64()
                .unwrap_or(state.creds_ttl_s);
            if !state.issued.contains(&id) || state.revoked.contains(&id) {
                return errors(400, "lease not found");
            }
            state.lease_renewals.push((id.clone(), increment));
            // Like Vault's database engine: the new TTL is the increment.
            (
                200,
                Some(json!({ "lease_id": id, "lease_duration": increment, "renewable": true })),
            )
        }
        ("POST" | "PUT", p) if p.starts_with("sys/leases/revoke/") => {
            if state.fail_revokes {
                return errors(503, "the double was told to fail revocations");
            }
            let id = p["sys/leases/revoke/".len()..].to_string();
            state.revoked.push(id);
            (204, None)
        }
        ("GET", p) if p.starts_with("database/creds/") => {
            let role = &p["database/creds/".len()..];
            state.next += 1;
            let lease_id = format!("database/creds/{role}/lease-{}", state.next);
            let (username, password) = VaultDouble::creds_of(&lease_id);
            state.issued.push(lease_id.clone());
            let data = json!({ "username": username, "password": password });
            (
                200,
                Some(envelope(data, Value::Null, &lease_id, state.creds_ttl_s)),
            )
        }
        ("GET", p) if p.contains("/data/") => match state.kv.get(p) {
            Some(fields) => {
                let data = json!({
                    "data": fields,
                    "metadata": {
                        "created_time": "2026-01-01T00:00:00Z",
                        "deletion_time": "",
                        "custom_metadata": null,
                        "destroyed": false,
                        "version": 1,
                    },
                });
                (200, Some(envelope(data, Value::Null, "", 0)))
            }
            None => (404, Some(json!({ "errors": [] }))),
        },
        _ => errors(404, "the double does not implement this endpoint"),
    }
}
