//! Capability denials: recorded per run for the report and audit, counted
//! per kind for the whole host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// What kind of capability was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenialKind {
    /// An outbound connection, bind or listen.
    Network,
    /// A secret the policy does not grant.
    Secret,
}

impl DenialKind {
    /// Every kind.
    pub const ALL: [DenialKind; 2] = [DenialKind::Network, DenialKind::Secret];

    /// The name used in reports and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialKind::Network => "network",
            DenialKind::Secret => "secret",
        }
    }
}

/// One refused capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// What kind.
    pub kind: DenialKind,
    /// What the guest reached for: an address, a secret name.
    pub target: String,
    /// Why it was refused.
    pub reason: String,
}

/// Most denials kept per run; past it they are only counted.
const MAX_DENIALS_KEPT: usize = 100;

/// Host-wide denial counters by kind.
#[derive(Debug, Default)]
pub struct DenialCounters {
    counts: [AtomicU64; 2],
}

impl DenialCounters {
    /// How many denials of `kind` so far.
    pub fn get(&self, kind: DenialKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    fn bump(&self, kind: DenialKind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The denials of one run, shared with callbacks outside the store.
#[derive(Debug, Clone)]
pub(crate) struct DenialLog {
    kept: Arc<Mutex<(Vec<Denial>, u64)>>,
    counters: Arc<DenialCounters>,
}

impl DenialLog {
    pub(crate) fn new(counters: Arc<DenialCounters>) -> Self {
        Self {
            kept: Arc::new(Mutex::new((Vec::new(), 0))),
            counters,
        }
    }

    pub(crate) fn record(
        &self,
        kind: DenialKind,
        target: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.counters.bump(kind);
        let target = target.into();
        let reason = reason.into();
        tracing::info!(kind = kind.as_str(), %target, %reason, "capability denied");
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.0.len() < MAX_DENIALS_KEPT {
            kept.0.push(Denial {
                kind,
                target,
                reason,
            });
        } else {
            kept.1 += 1;
        }
    }

    /// The denials kept and how many more were only counted.
    pub(crate) fn take(&self) -> (Vec<Denial>, u64) {
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
