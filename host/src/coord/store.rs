//! The claim store: where runbooks, step claims and step results live.
//!
//! Two implementations pass the same conformance suite
//! ([`super::conformance`]): [`super::EtcdStore`] for hosts that share work
//! and [`super::MemoryStore`] for the embedded default.
//!
//! A host first [`ClaimStore::join`]s, getting a [`Session`]: a lease of
//! `task_claim_ttl_seconds` that the host keeps alive. Every claim the host
//! takes is attached to that lease, so when the host dies (or is cut off
//! for longer than the TTL) its claims vanish together and other hosts
//! take the steps over. A claim's revision is its fencing token: results
//! and releases are written only while the claim with that revision still
//! exists, so a host that lost its claim cannot record anything, and a
//! step's result is written exactly once.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_stream::Stream;

use super::runbook::RunbookSpec;
use crate::ErrorKind;

/// Why the claim store could not do what was asked.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoordError {
    /// The store cannot be reached (etcd down, partitioned, timed out).
    #[error("the claim store at {endpoints} is unavailable: {message}")]
    Unavailable {
        /// Where the store is.
        endpoints: String,
        /// What failed.
        message: String,
    },
    /// A runbook with this id was submitted before.
    #[error("runbook `{0}` already exists")]
    AlreadyExists(String),
    /// No runbook has this id.
    #[error("no runbook `{0}`")]
    NotFound(String),
    /// The claim no longer holds: its lease expired or another host took
    /// the step over. Nothing was written.
    #[error(
        "the claim on step `{step}` of runbook `{runbook}` with fence {fence} no longer holds; nothing was written"
    )]
    Fenced {
        /// The runbook.
        runbook: String,
        /// The step.
        step: String,
        /// The fencing token that was refused.
        fence: i64,
    },
    /// The session's lease is gone; join again.
    #[error("the session lease {0} expired")]
    SessionLost(i64),
    /// Stored data could not be decoded.
    #[error("stored record {key} is corrupt: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The request is malformed (bad id, too large).
    #[error("{0}")]
    Invalid(String),
}

impl CoordError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable { .. } | Self::SessionLost(_) => ErrorKind::Unavailable,
            Self::AlreadyExists(_) | Self::Invalid(_) => ErrorKind::InvalidRequest,
            Self::NotFound(_) => ErrorKind::InvalidRequest,
            Self::Fenced { .. } => ErrorKind::Unavailable,
            Self::Corrupt { .. } => ErrorKind::Internal,
        }
    }
}

/// A host's membership: the lease its claims hang on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The host's name, recorded in its claims.
    pub holder: String,
    /// The lease id.
    pub lease: i64,
    /// The lease's time to live.
    pub ttl: Duration,
}

/// A step this host holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The runbook.
    pub runbook: String,
    /// The step.
    pub step: String,
    /// The holder.
    pub holder: String,
    /// The fencing token: the revision that created the claim.
    pub fence: i64,
    /// 1 for the first attempt, 2 after one failure, ...
    pub attempt: u32,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum StepOutcome {
    /// The module returned output.
    Completed {
        /// The output bytes.
        #[serde(with = "b64")]
        output: Vec<u8>,
    },
    /// Every attempt failed.
    Failed {
        /// The error kind of the last attempt.
        kind: ErrorKind,
        /// The last attempt's error.
        error: String,
    },
    /// Not run because a dependency did not complete.
    Skipped {
        /// The dependency that failed or was skipped.
        because: String,
    },
}

impl StepOutcome {
    /// `completed`, `failed` or `skipped`.
    pub fn state(&self) -> StepState {
        match self {
            Self::Completed { .. } => StepState::Completed,
            Self::Failed { .. } => StepState::Failed,
            Self::Skipped { .. } => StepState::Skipped,
        }
    }
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// A step's recorded result, written once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// How it ended.
    #[serde(flatten)]
    pub outcome: StepOutcome,
    /// The host that wrote it (empty for skipped steps).
    #[serde(default)]
    pub host: String,
    /// The fence of the claim it was written under (0 for skipped steps).
    #[serde(default)]
    pub fence: i64,
    /// Attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// The sandbox run id of the last attempt.
    #[serde(default)]
    pub run_id: String,
}

/// Where a step is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    /// Waiting for its dependencies or a host.
    Pending,
    /// A host holds its claim.
    Running,
    /// Done, with output.
    Completed,
    /// Done, every attempt failed.
    Failed,
    /// Done, not run.
    Skipped,
}

impl StepState {
    /// Whether the step will not change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Skipped)
    }

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// A claim as stored, seen by anyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimInfo {
    /// The holder.
    pub holder: String,
    /// The attempt it runs.
    pub attempt: u32,
    /// Its fence (filled from the store's revision, not stored).
    #[serde(skip)]
    pub fence: i64,
}

/// What the store knows of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepView {
    /// Its current claim.
    pub claim: Option<ClaimInfo>,
    /// Failed attempts so far that were released for a retry.
    pub failures: u32,
    /// Its result, once written.
    pub result: Option<StepRecord>,
}

impl StepView {
    /// The step's state.
    pub fn state(&self) -> StepState {
        match (&self.result, &self.claim) {
            (Some(r), _) => r.outcome.state(),
            (None, Some(_)) => StepState::Running,
            (None, None) => StepState::Pending,
        }
    }
}

/// A runbook and every step's state, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunbookView {
    /// Its id.
    pub id: String,
    /// What was submitted.
    pub spec: RunbookSpec,
    /// Steps by name (every step of the spec is present).
    pub steps: BTreeMap<String, StepView>,
    /// The store revision the view was read at (watch from `revision + 1`).
    pub revision: i64,
    /// Whether a host has closed it (every step terminal).
    pub closed: bool,
}

impl RunbookView {
    /// `completed` when every step completed, `failed` when every step is
    /// terminal and one is not completed, `running` otherwise.
    pub fn state(&self) -> RunbookState {
        let states: Vec<StepState> = self.steps.values().map(StepView::state).collect();
        if states.iter().all(|s| *s == StepState::Completed) {
            RunbookState::Completed
        } else if states.iter().all(|s| s.is_terminal()) {
            RunbookState::Failed
        } else {
            RunbookState::Running
        }
    }

    /// Completed steps' outputs by name.
    pub fn outputs(&self) -> BTreeMap<String, Vec<u8>> {
        self.steps
            .iter()
            .filter_map(|(n, v)| match &v.result {
                Some(StepRecord {
                    outcome: StepOutcome::Completed { output },
                    ..
                }) => Some((n.clone(), output.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Where a runbook is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunbookState {
    /// Steps remain.
    Running,
    /// Every step completed.
    Completed,
    /// Every step is done and at least one failed or was skipped.
    Failed,
}

impl RunbookState {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// One change to a runbook, in store order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepEvent {
    /// The store revision of the change; resume after it with `revision + 1`.
    pub revision: i64,
    /// The runbook.
    pub runbook: String,
    /// What happened.
    pub change: Change,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The runbook was stored.
    Submitted,
    /// A host claimed a step.
    Claimed {
        /// The step.
        step: String,
        /// The host.
        holder: String,
        /// The attempt.
        attempt: u32,
        /// The fence.
        fence: i64,
    },
    /// A claim ended without a result: released for a retry (`failures`
    /// counted), or dropped with its lease (host gone).
    Unclaimed {
        /// The step.
        step: String,
    },
    /// Failed attempts recorded for a retry.
    Retrying {
        /// The step.
        step: String,
        /// Failed attempts so far.
        failures: u32,
    },
    /// A step's result was written.
    Finished {
        /// The step.
        step: String,
        /// The result.
        record: StepRecord,
    },
    /// Every step is terminal and a host closed the runbook.
    Closed,
}

/// A stream of a runbook's changes.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StepEvent, CoordError>> + Send>>;

/// The operations hosts coordinate through. See the module docs.
#[async_trait::async_trait]
pub trait ClaimStore: Send + Sync + std::fmt::Debug {
    /// `etcd` or `in-process`, for logs.
    fn backend(&self) -> &'static str;

    /// Registers `holder` under a new lease of `ttl`.
    async fn join(&self, holder: &str, ttl: Duration) -> Result<Session, CoordError>;

    /// Renews the session's lease. `SessionLost` once it has expired.
    async fn keep_alive(&self, session: &Session) -> Result<(), CoordError>;

    /// Ends the session: its lease and every claim on it go at once.
    async fn leave(&self, session: &Session) -> Result<(), CoordError>;

    /// The holders with a live session.
    async fn hosts(&self) -> Result<Vec<String>, CoordError>;

    /// Stores a new runbook and the module bytes it needs (by id).
    /// Returns the revision it was stored at.
    async fn submit(
        &self,
        id: &str,
        spec: &RunbookSpec,
        modules: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError>;

    /// Module bytes stored with some runbook.
    async fn module(&self, id: &str) -> Result<Option<Vec<u8>>, CoordError>;

    /// A runbook and its steps, or `None`.
    async fn runbook(&self, id: &str) -> Result<Option<RunbookView>, CoordError>;

    /// Ids of runbooks not yet closed.
    async fn active(&self) -> Result<Vec<String>, CoordError>;

    /// Claims a step for the session to run `attempt` (failed attempts
    /// seen + 1) if nobody holds it, it has no result and no other attempt
    /// failed since. `None` when it is taken, done, or the view was stale.
    async fn claim(
        &self,
        session: &Session,
        runbook: &str,
        step: &str,
        attempt: u32,
    ) -> Result<Option<Claim>, CoordError>;

    /// Writes the step's result and drops the claim, only if the claim
    /// still holds (`Fenced` otherwise).
    async fn finish(&self, claim: &Claim, record: &StepRecord) -> Result<(), CoordError>;

    /// Records `failures` and drops the claim so the step can be claimed
    /// again, only if the claim still holds (`Fenced` otherwise).
    async fn release(&self, claim: &Claim, failures: u32) -> Result<(), CoordError>;

    /// Writes a result for an unclaimed, unfinished step (a skipped step).
    /// `false` when it is claimed or already has one.
    async fn skip(
        &self,
        runbook: &str,
        step: &str,
        record: &StepRecord,
    ) -> Result<bool, CoordError>;

    /// Marks a runbook closed and drops it from the active list.
    async fn close(&self, runbook: &str) -> Result<(), CoordError>;

    /// The runbook's changes from `from_revision` on (0: from now).
    async fn watch(&self, runbook: &str, from_revision: i64) -> Result<EventStream, CoordError>;

    /// A stream that yields whenever anything under the store changes, so
    /// idle hosts wake at once rather than on their next poll.
    async fn changes(&self) -> Result<EventStream, CoordError>;
}
