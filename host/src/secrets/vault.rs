//! Secrets from HashiCorp Vault, through `vaultrs`.
//!
//! KV v2 reads, token lookup and renewal and AppRole login go through
//! `vaultrs`; the calls it has no function for (reading a lease-bearing
//! path with its lease, renewing and revoking a lease under `sys/leases`)
//! use the same HTTP client it built, so TLS, CA, namespace and timeout
//! settings apply to every request.
//!
//! Authentication: a token from `credentials.vault_token_path` or
//! `VAULT_TOKEN`, or an AppRole login. The token is renewed once half its
//! TTL has passed; when it has lapsed (Vault answers 403 and `lookup-self`
//! is refused too) the provider logs in again, with AppRole or by reading
//! the token file again, and retries once.
//!
//! A policy path's first segment is the KV mount: `secret/app/db` reads
//! `GET /v1/secret/data/app/db`; `secret/data/app/db` means the same.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::{BoxFuture, Fetched, Lease, SecretError, SecretProvider, SecretValue};
use crate::policy::SecretGrant;

/// Where the provider's first token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A token given directly (`VAULT_TOKEN`).
    Value(SecretValue),
    /// A file holding the token (`credentials.vault_token_path`), read again
    /// whenever the token has lapsed, so a rotated file is picked up.
    File(PathBuf),
}

/// AppRole credentials (`credentials.approle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRole {
    /// The auth mount, `approle` by default.
    pub mount: String,
    /// The role id (not secret on its own).
    pub role_id: String,
    /// A file holding the secret id.
    pub secret_id_path: PathBuf,
}

/// How to reach and authenticate to Vault.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    /// `https://vault.example:8200`.
    pub addr: String,
    /// Enterprise namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// PEM CA bundle to trust for Vault's certificate.
    pub cacert: Option<PathBuf>,
    /// Bound on each secret read, lease call and login.
    pub timeout: Duration,
    /// The first token; without one, AppRole logs in.
    pub token: Option<TokenSource>,
    /// AppRole, used to log in without a token and whenever a token lapses.
    pub approle: Option<AppRole>,
}

/// A logged-in client and when its token needs renewing.
struct Session {
    client: VaultClient,
    timing: StdMutex<Timing>,
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Renew at or after this instant (`None`: never, e.g. a root token).
    renew_at: Option<Instant>,
}

impl Timing {
    fn from_ttl(ttl_s: u64, renewable: bool) -> Self {
        let renew_at = (renewable && ttl_s > 0)
            .then(|| Instant::now() + Duration::from_millis(ttl_s * 1000 / 2));
        Self { renew_at }
    }
}

/// Reads grants from Vault; see the module docs.
pub struct VaultProvider {
    options: VaultOptions,
    /// The address without a trailing `/`.
    addr: String,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// When the current session's token is due for renewal, readable
    /// without the session lock, for [`SecretProvider::renewal_due_in`].
    renew_at: StdMutex<Option<Instant>>,
}

impl std::fmt::Debug for VaultProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultProvider")
            .field("addr", &self.addr)
            .field("namespace", &self.options.namespace)
            .field("approle", &self.options.approle.is_some())
            .finish_non_exhaustive()
    }
}

/// One thing to do with a logged-in session.
enum Op<'g> {
    /// Read a grant, bounding a lease by the duration.
    Read(&'g SecretGrant, Duration),
    /// Revoke a lease.
    Revoke(&'g str),
}

/// What one HTTP call to Vault came back with.
enum Reply {
    Ok(serde_json::Value),
    Status(u16, String),
}

impl VaultProvider {
    /// A provider for `options`. Checks the address and that some way to
    /// authenticate is configured; logs in at the first read, so a host can
    /// start while Vault is down (its runs then fail UNAVAILABLE).
    pub fn new(options: VaultOptions) -> Result<Self, SecretError> {
        let parsed = url::Url::parse(&options.addr).map_err(|e| SecretError::Config {
            message: format!("vault address `{}`: {e}", options.addr),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SecretError::Config {
                message: format!("vault address `{}` is not http(s)", options.addr),
            });
        }
        if options.token.is_none() && options.approle.is_none() {
            return Err(SecretError::Config {
                message: format!(
                    "vault at {} is configured but there is no way to authenticate: set \
                     credentials.vault_token_path, VAULT_TOKEN or credentials.approle",
                    options.addr
                ),
            });
        }
        // reqwest is built without a bundled crypto provider; chassis uses
        // ring everywhere (as tonic does), so make it the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            addr: options.addr.trim_end_matches('/').to_string(),
            options,
            session: tokio::sync::Mutex::new(None),
            renew_at: StdMutex::new(None),
        })
    }

    /// The address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn client_for(&self, token: &str) -> Result<VaultClient, SecretError> {
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&self.addr)
            .token(token)
            // A little past our own bound, so ours fires first and the
            // error names the timeout.
            .timeout(Some(self.options.timeout + Duration::from_secs(1)));
        if let Some(ns) = &self.options.namespace {
            settings.set_namespace(ns.clone());
        }
        if let Some(ca) = &self.options.cacert {
            settings.ca_certs(vec![ca.display().to_string()]);
        }
        let settings = settings.build().map_err(|e| SecretError::Config {
            message: format!("vault client for {}: {e}", self.addr),
        })?;
        VaultClient::new(settings).map_err(|e| SecretError::Config {
            message: format!("vault client for {}: {}", self.addr, chain(&e)),
        })
    }

    /// A session with a live token: logs in if there is none, renews the
    /// token if half its TTL has passed.
    async fn session(&self) -> Result<Arc<Session>, SecretError> {
        let mut current = self.session.lock().await;
        let session = match current.as_ref() {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(self.login(false).await?);
                *current = Some(s.clone());
                return Ok(s);
            }
        };
        let due = session
            .timing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .renew_at
            .is_some_and(|at| Instant::now() >= at);
        if due {
            match vaultrs::token::renew_self(&session.client, None).await {
                Ok(auth) => {
                    tracing::debug!(addr = %self.addr, ttl_s = auth.lease_duration, "renewed the vault token");
                    let timing = Timing::from_ttl(auth.lease_duration, auth.renewable);
                    *session.timing.lock().unwrap_or_else(|p| p.into_inner()) = timing;
                    self.note(timing);
                }
                Err(ClientError::APIError { code: 403, .. }) => {
                    tracing::info!(addr = %self.addr, "vault token lapsed; logging in again");
                    let s = Arc::new(self.login(true).await?);
                    *current = Some(s.clone());
                    return Ok(s);
                }
                Err(e) => return Err(self.map_err(e, "auth/token/renew-self")),
            }
        }
        Ok(session)
    }

    /// Drops `failed` (if still current) and logs in again.
    async fn relogin(&self, failed: &Arc<Session>) -> Result<Arc<Session>, SecretError> {
        let mut current = self.session.lock().await;
        if let Some(s) = current.as_ref()
            && !Arc::ptr_eq(s, failed)
        {
            return Ok(s.clone());
        }
        let s = Arc::new(self.login(true).await?);
        *current = Some(s.clone());
        Ok(s)
    }

    fn can_relogin(&self) -> bool {
        self.options.approle.is_some() || matches!(self.options.token, Some(TokenSource::File(_)))
    }

    /// Remembers when the current token is due for renewal.
    fn note(&self, timing: Timing) {
        *self.renew_at.lock().unwrap_or_else(|p| p.into_inner()) = timing.renew_at;
    }

    /// Logs in (see [`Self::authenticate`]) and notes the new token's
    /// renewal time.
    async fn login(&self, after_lapse: bool) -> Result<Session, SecretError> {
        let session = self.authenticate(after_lapse).await?;
        self.note(*session.timing.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(session)
    }

    /// A new session from the token source or AppRole.
    async fn authenticate(&self, after_lapse: bool) -> Result<Session, SecretError> {
        // After a lapse, AppRole is preferred: a token from a file or the
        // environment may simply be the same dead token again.
        let token_first = match (&self.options.token, &self.options.approle) {
            (Some(_), None) => true,
            (Some(_), Some(_)) => !after_lapse,
            _ => false,
        };
        if let (true, Some(source)) = (token_first, &self.options.token) {
            match self.token_login(source).await {
                Err(e @ SecretError::Auth { .. }) if self.options.approle.is_some() => {
                    tracing::warn!(addr = %self.addr, error = %e, "the vault token was refused; logging in with AppRole");
                }
                other => return other,
            }
        }
        self.approle_login().await
    }

    fn auth_err(&self, message: String) -> SecretError {
        SecretError::Auth {
            addr: self.addr.clone(),
            message,
        }
    }

    async fn token_login(&self, source: &TokenSource) -> Result<Session, SecretError> {
        let token = match source {
            TokenSource::Value(v) => Zeroizing::new(v.expose().to_string()),
            TokenSource::File(path) => read_trimmed(path).map_err(|e| {
                self.auth_err(format!("reading token file {}: {e}", path.display()))
            })?,
        };
        let client = self.client_for(&token)?;
        let info = match vaultrs::token::lookup_self(&client).await {
            Ok(info) => info,
            Err(ClientError::APIError { code: 403, .. }) => {
                return Err(self.auth_err("the token was refused (expired or revoked)".into()));
            }
            Err(e) => return Err(self.map_err(e, "auth/token/lookup-self")),
        };
        Ok(Session {
            client,
            timing: StdMutex::new(Timing::from_ttl(info.ttl, info.renewable.unwrap_or(false))),
        })
    }

    async fn approle_login(&self) -> Result<Session, SecretError> {
        let Some(role) = &self.options.approle else {
            return Err(self.auth_err("no token and no AppRole configured".into()));
        };
        let secret_id = read_trimmed(&role.secret_id_path).map_err(|e| {
            self.auth_err(format!(
                "reading AppRole secret id file {}: {e}",
                role.secret_id_path.display()
            ))
        })?;
        let anonymous = self.client_for("")?;
        let auth =
            match vaultrs::auth::approle::login(&anonymous, &role.mount, &role.role_id, &secret_id)
                .await
            {
                Ok(auth) => auth,
                Err(ClientError::APIError { code, errors }) if (400..500).contains(&code) => {
                    return Err(self.auth_err(format!(
                        "AppRole login at auth/{}/login refused ({code}): {}",
                        role.mount,
                        errors.join("; ")
                    )));
                }
                Err(e) => return Err(self.map_err(e, &format!("auth/{}/login", role.mount))),
            };
        tracing::info!(addr = %self.addr, mount = %role.mount, ttl_s = auth.lease_duration, "logged in to vault with AppRole");
        let client = self.client_for(&Zeroizing::new(auth.client_token))?;
        Ok(Session {
            client,
            timing: StdMutex::new(Timing::from_ttl(auth.lease_duration, auth.renewable)),
        })
    }

    /// Performs `op` with a live session. When it is refused with 403 and
    /// the token itself turns out to be dead (`lookup-self` refused too),
    /// logs in again and retries once, or, with no way to log in again,
    /// fails as an authentication error: the host's credentials are
    /// broken (UNAVAILABLE naming the address), not the policy's path.
    async fn with_session(&self, op: Op<'_>) -> Result<Option<Fetched>, SecretError> {
        let session = self.session().await?;
        match self.perform(&session, &op).await {
            Err(SecretError::Forbidden { path, source_name }) => {
                match vaultrs::token::lookup_self(&session.client).await {
                    Err(ClientError::APIError { code: 403, .. }) if self.can_relogin() => {
                        tracing::info!(addr = %self.addr, "vault token lapsed; logging in again");
                        let session = self.relogin(&session).await?;
                        self.perform(&session, &op).await
                    }
                    Err(ClientError::APIError { code: 403, .. }) => Err(self.dead_token()),
                    _ => Err(SecretError::Forbidden { path, source_name }),
                }
            }
            other => other,
        }
    }

    /// The token is expired or revoked and nothing can replace it.
    fn dead_token(&self) -> SecretError {
        self.auth_err(
            "the token was refused (expired or revoked) and there is no AppRole or token file \
             to log in again with"
                .into(),
        )
    }

    /// Checks the session's token with `lookup-self` (after renewing it when
    /// due), so a token revoked or expired between runs is noticed by the
    /// keep-alive rather than by the next run; logs in again when it can.
    async fn check(&self) -> Result<(), SecretError> {
        let session = self.session().await?;
        match vaultrs::token::lookup_self(&session.client).await {
            Ok(_) => Ok(()),
            Err(ClientError::APIError { code: 403, .. }) if self.can_relogin() => {
                tracing::info!(addr = %self.addr, "vault token lapsed; logging in again");
                self.relogin(&session).await.map(|_| ())
            }
            Err(ClientError::APIError { code: 403, .. }) => Err(self.dead_token()),
            Err(e) => Err(self.map_err(e, "auth/token/lookup-self")),
        }
    }

    async fn perform(
        &self,
        session: &Session,
        op: &Op<'_>,
    ) -> Result<Option<Fetched>, SecretError> {
        match *op {
            Op::Read(grant, _) if !grant.dynamic => self.read_kv(session, grant).await.map(Some),
            Op::Read(grant, max_ttl) => self.read_dynamic(session, grant, max_ttl).await.map(Some),
            Op::Revoke(lease_id) => self.revoke_with(session, lease_id).await.map(|()| None),
        }
    }

    async fn read_kv(
        &self,
        session: &Session,
        grant: &SecretGrant,
    ) -> Result<Fetched, SecretError> {
        let key = grant.key.as_deref().unwrap_or_default();
        let (mount, rest) = split_kv_path(&grant.path);
        let data: HashMap<String, serde_json::Value> =
            match vaultrs::kv2::read(&session.client, mount, rest).await {
                Ok(data) => data,
                Err(ClientError::APIError { code: 404, .. }) => return Err(self.not_found(grant)),
                Err(e) => return Err(self.map_err(e, &grant.path)),
            };
        let value = match data.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => return Err(self.not_found(grant)),
        };
        Ok(Fetched::plain(SecretValue::new(value)))
    }

    async fn read_dynamic(
        &self,
        session: &Session,
        grant: &SecretGrant,
        max_ttl: Duration,
    ) -> Result<Fetched, SecretError> {
        let body = match self
            .call(session, http::Method::GET, &grant.path, None)
            .await?
        {
            Reply::Ok(body) => body,
            Reply::Status(404, _) => return Err(self.not_found(grant)),
            Reply::Status(status, message) => {
                return Err(self.status_err(status, &grant.path, message));
            }
        };
        let data = body.get("data").and_then(|d| d.as_object());
        let mut parts = Vec::new();
        let mut fields = std::collections::BTreeMap::new();
        for (k, v) in data.into_iter().flatten() {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let text = SecretValue::new(text);
            parts.push(text.clone());
            fields.insert(k.as_str(), text);
        }
        let shown: std::collections::BTreeMap<&str, &str> =
            fields.iter().map(|(k, v)| (*k, v.expose())).collect();
        let value = SecretValue::new(serde_json::to_string(&shown).unwrap_or_default());
        let lease_id = body
            .get("lease_id")
            .and_then(|l| l.as_str())
            .unwrap_or_default()
            .to_string();
        let ttl = Duration::from_secs(
            body.get("lease_duration")
                .and_then(|d| d.as_u64())
                .unwrap_or(0),
        );
        let lease = if lease_id.is_empty() {
            None
        } else {
            Some(
                self.bound_lease(session, &grant.path, lease_id, ttl, max_ttl)
                    .await?,
            )
        };
        Ok(Fetched {
            value,
            parts,
            lease,
        })
    }

    /// Makes `lease` live no longer than `max`: renews it with `increment =
    /// max` (Vault sets the TTL to the increment, capped by the role's max
    /// TTL), and revokes it if Vault still gives more.
    async fn bound_lease(
        &self,
        session: &Session,
        path: &str,
        lease_id: String,
        ttl: Duration,
        max: Duration,
    ) -> Result<Lease, SecretError> {
        let max_s = max.as_secs_f64().ceil().max(1.0) as u64;
        if ttl.as_secs() <= max_s {
            return Ok(Lease { id: lease_id, ttl });
        }
        let body = serde_json::json!({ "increment": max_s });
        let renewed = match self
            .call(
                session,
                http::Method::PUT,
                &format!("sys/leases/renew/{lease_id}"),
                Some(body),
            )
            .await
        {
            Ok(Reply::Ok(b)) => b.get("lease_duration").and_then(|d| d.as_u64()),
            _ => None,
        };
        match renewed {
            Some(new_ttl) if new_ttl <= max_s => Ok(Lease {
                id: lease_id,
                ttl: Duration::from_secs(new_ttl),
            }),
            other => {
                let _ = self.revoke_with(session, &lease_id).await;
                Err(SecretError::LeaseTooLong {
                    path: path.to_string(),
                    lease_id,
                    ttl: Duration::from_secs(other.unwrap_or(ttl.as_secs())),
                    max,
                })
            }
        }
    }

    async fn revoke_with(&self, session: &Session, lease_id: &str) -> Result<(), SecretError> {
        let path = format!("sys/leases/revoke/{lease_id}");
        match self.call(session, http::Method::PUT, &path, None).await? {
            Reply::Ok(_) => Ok(()),
            Reply::Status(status, message) => Err(self.status_err(status, &path, message)),
        }
    }

    /// One request on the session's HTTP client, for the endpoints vaultrs
    /// has no function for.
    async fn call(
        &self,
        session: &Session,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Reply, SecretError> {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let mut request = session
            .client
            .http
            .http
            .request(method, url)
            .header("X-Vault-Token", session.client.settings.token.as_str());
        if let Some(ns) = &self.options.namespace {
            request = request.header("X-Vault-Namespace", ns.as_str());
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                self.timeout_err()
            } else {
                SecretError::Unreachable {
                    addr: self.addr.clone(),
                    reason: chain(&e),
                }
            }
        })?;
        let status = response.status().as_u16();
        let bytes = Zeroizing::new(
            response
                .bytes()
                .await
                .map_err(|e| SecretError::Unreachable {
                    addr: self.addr.clone(),
                    reason: chain(&e),
                })?
                .to_vec(),
        );
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                return Ok(Reply::Ok(serde_json::Value::Null));
            }
            let value = serde_json::from_slice(&bytes).map_err(|_| SecretError::Server {
                addr: self.addr.clone(),
                path: path.to_string(),
                status,
                message: "the response is not JSON".into(),
            })?;
            return Ok(Reply::Ok(value));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("errors").and_then(|e| e.as_array()).map(|errors| {
                    errors
                        .iter()
                        .filter_map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            })
            .unwrap_or_default();
        Ok(Reply::Status(status, message))
    }

    fn not_found(&self, grant: &SecretGrant) -> SecretError {
        SecretError::NotFound {
            path: grant.path.clone(),
            key: grant.key.clone().unwrap_or_else(|| "*".into()),
            source_name: self.describe(),
        }
    }

    fn timeout_err(&self) -> SecretError {
        SecretError::Timeout {
            addr: self.addr.clone(),
            after: self.options.timeout,
        }
    }

    fn status_err(&self, status: u16, path: &str, message: String) -> SecretError {
        match status {
            403 => SecretError::Forbidden {
                path: path.to_string(),
                source_name: self.describe(),
            },
            _ => SecretError::Server {
                addr: self.addr.clone(),
                path: path.to_string(),
                status,
                message,
            },
        }
    }

    fn map_err(&self, e: ClientError, path: &str) -> SecretError {
        match e {
            ClientError::APIError { code, errors } => {
                self.status_err(code, path, errors.join("; "))
            }
            ClientError::RestClientError { .. } => {
                let reason = chain(&e);
                if reason.contains("timed out") {
                    self.timeout_err()
                } else {
                    SecretError::Unreachable {
                        addr: self.addr.clone(),
                        reason,
                    }
                }
            }
            other => SecretError::Server {
                addr: self.addr.clone(),
                path: path.to_string(),
                status: 0,
                message: chain(&other),
            },
        }
    }
}

impl SecretProvider for VaultProvider {
    fn describe(&self) -> String {
        format!("vault at {}", self.addr)
    }

    fn read<'a>(
        &'a self,
        grant: &'a SecretGrant,
        max_ttl: Duration,
    ) -> BoxFuture<'a, Result<Fetched, SecretError>> {
        Box::pin(async move {
            let read = self.with_session(Op::Read(grant, max_ttl));
            match tokio::time::timeout(self.options.timeout, read).await {
                Err(_) => Err(self.timeout_err()),
                Ok(Err(e)) => Err(e),
                Ok(Ok(Some(fetched))) => Ok(fetched),
                Ok(Ok(None)) => Err(self.not_found(grant)),
            }
        })
    }

    fn renewal_due_in(&self) -> Option<Duration> {
        let at = (*self.renew_at.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(at.saturating_duration_since(Instant::now()))
    }

    fn keep_alive(&self) -> BoxFuture<'_, Result<(), SecretError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.options.timeout, self.check()).await {
                Err(_) => Err(self.timeout_err()),
                Ok(result) => result,
            }
        })
    }

    fn revoke<'a>(&'a self, lease_id: &'a str) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            let revoke = self.with_session(Op::Revoke(lease_id));
            match tokio::time::timeout(self.options.timeout, revoke).await {
                Err(_) => Err(self.timeout_err()),
                Ok(result) => result.map(|_| ()),
            }
        })
    }
}

/// `(mount, path)` of a KV v2 policy path; `secret/data/app` is taken as
/// Vault's API spelling of `secret/app`.
fn split_kv_path(path: &str) -> (&str, &str) {
    let (mount, rest) = path.split_once('/').unwrap_or((path, ""));
    (mount, rest.strip_prefix("data/").unwrap_or(rest))
}

fn read_trimmed(path: &std::path::Path) -> std::io::Result<Zeroizing<String>> {
    let text = Zeroizing::new(std::fs::read_to_string(path)?);
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// An error and its sources, `: `-joined. Vault and HTTP errors name URLs
/// and statuses, never a response body.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_segment_is_the_kv_mount_and_data_is_optional() {
        assert_eq!(split_kv_path("secret/app/db"), ("secret", "app/db"));
        assert_eq!(split_kv_path("secret/data/app/db"), ("secret", "app/db"));
        assert_eq!(split_kv_path("kv/reports"), ("kv", "reports"));
    }

    #[test]
    fn an_address_that_is_not_a_url_is_a_config_error_not_a_panic() {
        let e = VaultProvider::new(VaultOptions {
            addr: "vault:8200".into(),
            namespace: None,
            cacert: None,
            timeout: Duration::from_secs(1),
            token: Some(TokenSource::Value(SecretValue::new("t".into()))),
            approle: None,
        })
        .unwrap_err();
        assert!(matches!(e, SecretError::Config { .. }), "{e}");
    }

    #[test]
    fn no_way_to_authenticate_is_a_config_error_naming_the_keys() {
        let e = VaultProvider::new(VaultOptions {
            addr: "http://127.0.0.1:1".into(),
            namespace: None,
            cacert: None,
            timeout: Duration::from_secs(1),
            token: None,
            approle: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("credentials.approle"), "{e}");
    }
}
