//! The etcd claim store: hosts share runbooks through an etcd cluster.
//!
//! Every operation is one etcd request (a range read or a transaction), so
//! a claim costs what a raw compare-and-swap costs. Key layout (version
//! `v1`, under `/chassis/v1/`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `hosts/<holder>` | `{"holder":..}` | the host's session |
//! | `active/<runbook>` | empty: runbooks not yet closed | - |
//! | `modules/<sha256>` | the module's `.wasm` bytes | - |
//! | `runbooks/<id>/spec` | the [`RunbookSpec`] as JSON | - |
//! | `runbooks/<id>/closed` | empty: every step is terminal | - |
//! | `runbooks/<id>/steps/<step>/claim` | `{"holder":..,"attempt":n}`; its create revision is the fence | the holder's session |
//! | `runbooks/<id>/steps/<step>/failures` | failed attempts released for a retry | - |
//! | `runbooks/<id>/steps/<step>/result` | the [`StepRecord`] as JSON, written once | - |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};

use super::runbook::RunbookSpec;
use super::store::{
    Change, Claim, ClaimInfo, ClaimStore, CoordError, EventStream, RunbookView, Session, StepEvent,
    StepRecord, StepView,
};

/// The key prefix, versioned so a future layout can live beside this one.
pub const PREFIX: &str = "/chassis/v1/";

fn host_key(holder: &str) -> String {
    format!("{PREFIX}hosts/{holder}")
}
fn active_key(id: &str) -> String {
    format!("{PREFIX}active/{id}")
}
fn module_key(id: &str) -> String {
    format!("{PREFIX}modules/{id}")
}
fn runbook_prefix(id: &str) -> String {
    format!("{PREFIX}runbooks/{id}/")
}
fn spec_key(id: &str) -> String {
    format!("{PREFIX}runbooks/{id}/spec")
}
fn closed_key(id: &str) -> String {
    format!("{PREFIX}runbooks/{id}/closed")
}
fn step_key(id: &str, step: &str, what: &str) -> String {
    format!("{PREFIX}runbooks/{id}/steps/{step}/{what}")
}

/// How to reach etcd (`coordinator.etcd` in the config).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `host:port` or `http(s)://host:port` endpoints.
    pub endpoints: Vec<String>,
    /// Bound on each request and on connecting.
    pub timeout: Duration,
    /// CA that signed the etcd servers' certificates (enables TLS).
    pub ca_cert: Option<PathBuf>,
    /// Client certificate for mTLS.
    pub cert_file: Option<PathBuf>,
    /// Client key for mTLS.
    pub key_file: Option<PathBuf>,
}

/// The etcd-backed claim store.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: String,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to the cluster. Fails with `Unavailable` naming the
    /// endpoints when none answers within the timeout.
    pub async fn connect(options: &EtcdOptions) -> Result<Self, CoordError> {
        let endpoints = options.endpoints.join(",");
        let unavailable = |message: String| CoordError::Unavailable {
            endpoints: endpoints.clone(),
            message,
        };
        if options.endpoints.is_empty() {
            return Err(CoordError::Invalid(
                "coordinator.etcd.endpoints is empty".into(),
            ));
        }
        let timeout = if options.timeout.is_zero() {
            Duration::from_secs(5)
        } else {
            options.timeout
        };
        let mut connect = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout)
            .with_require_leader(true);
        if let Some(ca) = &options.ca_cert {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| {
                    CoordError::Invalid(format!("reading etcd TLS file {}: {e}", p.display()))
                })
            };
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            match (&options.cert_file, &options.key_file) {
                (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
                (None, None) => {}
                _ => {
                    return Err(CoordError::Invalid(
                        "coordinator.etcd.cert_file and key_file go together".into(),
                    ));
                }
            }
            connect = connect.with_tls(tls);
        }
        let urls: Vec<String> = options
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else if options.ca_cert.is_some() {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let client = tokio::time::timeout(timeout, Client::connect(urls, Some(connect)))
            .await
            .map_err(|_| unavailable(format!("no endpoint answered within {timeout:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        let store = Self {
            client,
            endpoints,
            timeout,
        };
        // Connecting is lazy in places; one read proves the cluster answers.
        store.kv_get(format!("{PREFIX}hosts/"), true, true).await?;
        Ok(store)
    }

    /// The raw client, for benchmarks comparing against raw transactions.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn timed_out(&self, what: &str) -> CoordError {
        CoordError::Unavailable {
            endpoints: self.endpoints.clone(),
            message: format!("{what} took longer than {:?}", self.timeout),
        }
    }

    /// Opens a watch, bounded by the timeout.
    async fn open_watch(
        &self,
        key: String,
        options: WatchOptions,
    ) -> Result<etcd_client::WatchStream, CoordError> {
        let mut watch = self.client.watch_client();
        tokio::time::timeout(self.timeout, watch.watch(key, Some(options)))
            .await
            .map_err(|_| self.timed_out("opening a watch"))?
            .map_err(|e| self.unavailable(e))
    }

    fn unavailable(&self, e: etcd_client::Error) -> CoordError {
        // Not an outage: retrying the same request cannot succeed.
        if e.to_string().contains("request is too large") {
            return CoordError::Invalid(format!(
                "etcd refused the request as too large ({e}); raise its --max-request-bytes or send less"
            ));
        }
        CoordError::Unavailable {
            endpoints: self.endpoints.clone(),
            message: e.to_string(),
        }
    }

    /// Runs `op` again (up to three tries) when it failed before reaching
    /// any server: a refused connection to one member of a cluster means
    /// the request was never sent, so retrying cannot apply it twice, and
    /// the balanced channel moves on to a live member.
    async fn retry_unsent<T, F, Fut>(&self, mut op: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut delay = Duration::from_millis(25);
        for _ in 0..3 {
            match op().await {
                Err(e) if never_sent(&e) => {
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                other => return other,
            }
        }
        op().await
    }

    async fn kv_get(
        &self,
        key: String,
        prefix: bool,
        keys_only: bool,
    ) -> Result<(Vec<KeyValue>, i64), CoordError> {
        let mut options = GetOptions::new();
        if prefix {
            options = options.with_prefix();
        }
        if keys_only {
            options = options.with_keys_only();
        }
        let mut response = self
            .retry_unsent(|| {
                let mut kv = self.client.kv_client();
                let (key, options) = (key.clone(), options.clone());
                async move { kv.get(key, Some(options)).await }
            })
            .await
            .map_err(|e| self.unavailable(e))?;
        let revision = response.header().map_or(0, |h| h.revision());
        Ok((response.take_kvs(), revision))
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, CoordError> {
        self.retry_unsent(|| {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| self.unavailable(e))
    }

    fn fenced(claim: &Claim) -> CoordError {
        CoordError::Fenced {
            runbook: claim.runbook.clone(),
            step: claim.step.clone(),
            fence: claim.fence,
        }
    }
}

/// Whether the request failed before any server saw it.
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("tcp connect error") || text.contains("Connection refused")
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> CoordError {
    CoordError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    }
}

fn json<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, CoordError> {
    serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))
}

/// Turns one etcd event under a runbook's prefix into a step event.
fn to_change(
    kind: EventType,
    kv: &KeyValue,
    runbook_prefix: &str,
) -> Result<Option<Change>, CoordError> {
    let key = String::from_utf8_lossy(kv.key());
    let Some(rest) = key.strip_prefix(runbook_prefix) else {
        return Ok(None);
    };
    let change = match (kind, rest.split('/').collect::<Vec<_>>().as_slice()) {
        (EventType::Put, ["spec"]) => Some(Change::Submitted),
        (EventType::Put, ["closed"]) => Some(Change::Closed),
        (EventType::Put, ["steps", step, "claim"]) => {
            let info: ClaimInfo = json(kv)?;
            Some(Change::Claimed {
                step: step.to_string(),
                holder: info.holder,
                attempt: info.attempt,
                fence: kv.create_revision(),
            })
        }
        (EventType::Delete, ["steps", step, "claim"]) => Some(Change::Unclaimed {
            step: step.to_string(),
        }),
        (EventType::Put, ["steps", step, "failures"]) => Some(Change::Retrying {
            step: step.to_string(),
            failures: std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| corrupt(kv.key(), "not a number"))?,
        }),
        (EventType::Put, ["steps", step, "result"]) => Some(Change::Finished {
            step: step.to_string(),
            record: json(kv)?,
        }),
        _ => None,
    };
    Ok(change)
}

#[async_trait::async_trait]
impl ClaimStore for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn join(&self, holder: &str, ttl: Duration) -> Result<Session, CoordError> {
        let ttl_s = ttl.as_secs().max(1) as i64;
        let lease = self
            .client
            .lease_client()
            .grant(ttl_s, None)
            .await
            .map_err(|e| self.unavailable(e))?
            .id();
        let value = serde_json::json!({ "holder": holder, "ttl_seconds": ttl_s }).to_string();
        self.client
            .kv_client()
            .put(
                host_key(holder),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(Session {
            holder: holder.to_string(),
            lease,
            ttl: Duration::from_secs(ttl_s as u64),
        })
    }

    async fn keep_alive(&self, session: &Session) -> Result<(), CoordError> {
        let lost = |e: etcd_client::Error| {
            if e.to_string().contains("lease not found") {
                CoordError::SessionLost(session.lease)
            } else {
                self.unavailable(e)
            }
        };
        // Opening the keep-alive stream renews the lease once and reads
        // etcd's answer (a TTL of 0: the lease is gone). Streams have no
        // per-request deadline of their own, hence the timeout.
        let renew = async {
            self.client
                .lease_client()
                .keep_alive(session.lease)
                .await
                .map(|_| ())
                .map_err(lost)
        };
        tokio::time::timeout(self.timeout, renew)
            .await
            .unwrap_or_else(|_| Err(self.timed_out("renewing the session lease")))
    }

    async fn leave(&self, session: &Session) -> Result<(), CoordError> {
        match self.client.lease_client().revoke(session.lease).await {
            Ok(_) => Ok(()),
            // Revoking a lease that already expired is what leaving means.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => Ok(()),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn hosts(&self) -> Result<Vec<String>, CoordError> {
        let (kvs, _) = self.kv_get(format!("{PREFIX}hosts/"), true, true).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                String::from_utf8_lossy(kv.key())
                    .strip_prefix(&format!("{PREFIX}hosts/"))
                    .map(str::to_string)
            })
            .collect())
    }

    async fn submit(
        &self,
        id: &str,
        spec: &RunbookSpec,
        modules: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError> {
        let spec_json = serde_json::to_vec(spec).map_err(|e| CoordError::Invalid(e.to_string()))?;
        let mut ops = vec![
            TxnOp::put(spec_key(id), spec_json, None),
            TxnOp::put(active_key(id), "", None),
        ];
        for (mid, bytes) in modules {
            ops.push(TxnOp::put(module_key(mid), bytes.clone(), None));
        }
        let txn = Txn::new()
            .when([Compare::version(spec_key(id), CompareOp::Equal, 0)])
            .and_then(ops);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Err(CoordError::AlreadyExists(id.to_string()));
        }
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    async fn module(&self, id: &str) -> Result<Option<Vec<u8>>, CoordError> {
        let (mut kvs, _) = self.kv_get(module_key(id), false, false).await?;
        Ok(kvs.pop().map(|kv| kv.into_key_value().1))
    }

    async fn runbook(&self, id: &str) -> Result<Option<RunbookView>, CoordError> {
        let prefix = runbook_prefix(id);
        let (kvs, revision) = self.kv_get(prefix.clone(), true, false).await?;
        let mut spec: Option<RunbookSpec> = None;
        let mut closed = false;
        let mut steps: BTreeMap<String, StepView> = BTreeMap::new();
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key());
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            match rest.split('/').collect::<Vec<_>>().as_slice() {
                ["spec"] => spec = Some(json(kv)?),
                ["closed"] => closed = true,
                ["steps", step, "claim"] => {
                    let mut info: ClaimInfo = json(kv)?;
                    info.fence = kv.create_revision();
                    steps.entry(step.to_string()).or_default().claim = Some(info);
                }
                ["steps", step, "failures"] => {
                    steps.entry(step.to_string()).or_default().failures =
                        std::str::from_utf8(kv.value())
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| corrupt(kv.key(), "not a number"))?;
                }
                ["steps", step, "result"] => {
                    steps.entry(step.to_string()).or_default().result = Some(json(kv)?);
                }
                _ => {}
            }
        }
        let Some(spec) = spec else {
            return Ok(None);
        };
        for name in spec.steps.keys() {
            steps.entry(name.clone()).or_default();
        }
        steps.retain(|name, _| spec.steps.contains_key(name));
        Ok(Some(RunbookView {
            id: id.to_string(),
            spec,
            steps,
            revision,
            closed,
        }))
    }

    async fn active(&self) -> Result<Vec<String>, CoordError> {
        let prefix = format!("{PREFIX}active/");
        let (kvs, _) = self.kv_get(prefix.clone(), true, true).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                String::from_utf8_lossy(kv.key())
                    .strip_prefix(&prefix)
                    .map(str::to_string)
            })
            .collect())
    }

    async fn claim(
        &self,
        session: &Session,
        runbook: &str,
        step: &str,
        attempt: u32,
    ) -> Result<Option<Claim>, CoordError> {
        let claim_key = step_key(runbook, step, "claim");
        let result_key = step_key(runbook, step, "result");
        let failures_key = step_key(runbook, step, "failures");
        let failures_seen = if attempt <= 1 {
            Compare::version(failures_key, CompareOp::Equal, 0)
        } else {
            Compare::value(failures_key, CompareOp::Equal, (attempt - 1).to_string())
        };
        let txn = Txn::new()
            .when([
                Compare::version(claim_key.clone(), CompareOp::Equal, 0),
                Compare::version(result_key, CompareOp::Equal, 0),
                Compare::version(spec_key(runbook), CompareOp::Greater, 0),
                failures_seen,
            ])
            .and_then([TxnOp::put(
                claim_key,
                serde_json::json!({ "holder": session.holder, "attempt": attempt }).to_string(),
                Some(PutOptions::new().with_lease(session.lease)),
            )]);
        let response = match self.txn(txn).await {
            Ok(r) => r,
            Err(CoordError::Unavailable { message, .. })
                if message.contains("requested lease not found") =>
            {
                return Err(CoordError::SessionLost(session.lease));
            }
            Err(e) => return Err(e),
        };
        if !response.succeeded() {
            return Ok(None);
        }
        Ok(Some(Claim {
            runbook: runbook.to_string(),
            step: step.to_string(),
            holder: session.holder.clone(),
            fence: response.header().map_or(0, |h| h.revision()),
            attempt,
        }))
    }

    async fn finish(&self, claim: &Claim, record: &StepRecord) -> Result<(), CoordError> {
        let claim_key = step_key(&claim.runbook, &claim.step, "claim");
        let result_key = step_key(&claim.runbook, &claim.step, "result");
        let value = serde_json::to_vec(record).map_err(|e| CoordError::Invalid(e.to_string()))?;
        let txn = Txn::new()
            .when([
                Compare::create_revision(claim_key.clone(), CompareOp::Equal, claim.fence),
                Compare::version(result_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::delete(claim_key, None),
                TxnOp::put(result_key, value, None),
            ]);
        if self.txn(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(Self::fenced(claim))
        }
    }

    async fn release(&self, claim: &Claim, failures: u32) -> Result<(), CoordError> {
        let claim_key = step_key(&claim.runbook, &claim.step, "claim");
        let failures_key = step_key(&claim.runbook, &claim.step, "failures");
        // No failures is no key: a first attempt's claim requires the key
        // to be absent, so writing "0" would make the step unclaimable.
        let failures_op = if failures == 0 {
            TxnOp::delete(failures_key, None)
        } else {
            TxnOp::put(failures_key, failures.to_string(), None)
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                claim_key.clone(),
                CompareOp::Equal,
                claim.fence,
            )])
            .and_then([TxnOp::delete(claim_key, None), failures_op]);
        if self.txn(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(Self::fenced(claim))
        }
    }

    async fn skip(
        &self,
        runbook: &str,
        step: &str,
        record: &StepRecord,
    ) -> Result<bool, CoordError> {
        let value = serde_json::to_vec(record).map_err(|e| CoordError::Invalid(e.to_string()))?;
        let txn = Txn::new()
            .when([
                Compare::version(step_key(runbook, step, "claim"), CompareOp::Equal, 0),
                Compare::version(step_key(runbook, step, "result"), CompareOp::Equal, 0),
                Compare::version(spec_key(runbook), CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(step_key(runbook, step, "result"), value, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    async fn close(&self, runbook: &str) -> Result<(), CoordError> {
        let txn = Txn::new()
            .when([
                Compare::version(spec_key(runbook), CompareOp::Greater, 0),
                Compare::version(closed_key(runbook), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(closed_key(runbook), "", None),
                TxnOp::delete(active_key(runbook), None),
            ]);
        let response = self.txn(txn).await?;
        if !response.succeeded()
            && self
                .kv_get(spec_key(runbook), false, true)
                .await?
                .0
                .is_empty()
        {
            return Err(CoordError::NotFound(runbook.to_string()));
        }
        Ok(())
    }

    async fn watch(&self, runbook: &str, from_revision: i64) -> Result<EventStream, CoordError> {
        let prefix = runbook_prefix(runbook);
        let mut options = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let stream = self.open_watch(prefix.clone(), options).await?;
        let endpoints = self.endpoints.clone();
        let runbook = runbook.to_string();
        Ok(forward(
            stream,
            256,
            false,
            move |response| {
                if response.compact_revision() > 0 {
                    return Err(CoordError::Invalid(format!(
                        "revision {from_revision} is compacted; the oldest kept is {}",
                        response.compact_revision()
                    )));
                }
                if response.canceled() {
                    return Err(CoordError::Unavailable {
                        endpoints: endpoints.clone(),
                        message: format!("etcd cancelled the watch: {}", response.cancel_reason()),
                    });
                }
                Ok(response
                    .events()
                    .iter()
                    .filter_map(|event| {
                        let kv = event.kv()?;
                        match to_change(event.event_type(), kv, &prefix) {
                            Ok(Some(change)) => Some(Ok(StepEvent {
                                revision: kv.mod_revision(),
                                runbook: runbook.clone(),
                                change,
                            })),
                            Ok(None) => None,
                            Err(e) => Some(Err(e)),
                        }
                    })
                    .collect())
            },
            self.endpoints.clone(),
        ))
    }

    async fn changes(&self) -> Result<EventStream, CoordError> {
        let stream = self
            .open_watch(
                format!("{PREFIX}runbooks/"),
                WatchOptions::new().with_prefix(),
            )
            .await?;
        Ok(forward(
            stream,
            16,
            true,
            |response| {
                Ok(vec![Ok(StepEvent {
                    revision: response.header().map_or(0, |h| h.revision()),
                    runbook: String::new(),
                    change: Change::Submitted,
                })])
            },
            self.endpoints.clone(),
        ))
    }
}

/// Runs an etcd watch in its own task, turning each response into events
/// with `translate`. The stream ends after an error item when the watch
/// fails or `translate` refuses a response. `lossy` drops events while the
/// reader is behind (wake-ups, where one pending is as good as many).
fn forward(
    mut stream: etcd_client::WatchStream,
    capacity: usize,
    lossy: bool,
    mut translate: impl FnMut(
        &etcd_client::WatchResponse,
    ) -> Result<Vec<Result<StepEvent, CoordError>>, CoordError>
    + Send
    + 'static,
    endpoints: String,
) -> EventStream {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                () = tx.closed() => return,
            };
            let items = match message {
                Ok(Some(response)) => match translate(&response) {
                    Ok(items) => items,
                    Err(e) => vec![Err(e)],
                },
                Ok(None) => return,
                Err(e) => vec![Err(CoordError::Unavailable {
                    endpoints: endpoints.clone(),
                    message: format!("the watch ended: {e}"),
                })],
            };
            for item in items {
                let last = item.is_err();
                if lossy && !last {
                    if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                        tx.try_send(item)
                    {
                        return;
                    }
                } else if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
