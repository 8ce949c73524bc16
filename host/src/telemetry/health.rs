//! What `GET /health` on the metrics port reports: one probe per part of
//! the host whose failure a load balancer or an operator's `curl` should see.
//!
//! Parts register a probe when they start (`chassis serve` registers the
//! claim store, the secret provider and the audit log); [`report`] asks each
//! at request time. The board is process-wide, like the metrics registry,
//! and a part registered again replaces its earlier probe.

use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

/// One part's state as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartState {
    /// Whether the part works; any part that does not makes the host
    /// unhealthy (HTTP 503).
    pub ok: bool,
    /// The word shown for the part, e.g. `connected` or `disconnected`.
    pub shown: &'static str,
}

impl PartState {
    /// A working part, shown as `shown`.
    pub fn up(shown: &'static str) -> Self {
        Self { ok: true, shown }
    }

    /// A failing part, shown as `shown`.
    pub fn down(shown: &'static str) -> Self {
        Self { ok: false, shown }
    }
}

type Probe = Arc<dyn Fn() -> PartState + Send + Sync>;

fn board() -> &'static Mutex<Vec<(&'static str, Probe)>> {
    static BOARD: OnceLock<Mutex<Vec<(&'static str, Probe)>>> = OnceLock::new();
    BOARD.get_or_init(|| Mutex::new(Vec::new()))
}

/// Registers (or replaces) the probe of `part` (`claim_store`, `secrets`,
/// `audit`, ...).
pub fn register(part: &'static str, probe: impl Fn() -> PartState + Send + Sync + 'static) {
    let mut board = board().lock().unwrap_or_else(|p| p.into_inner());
    board.retain(|(name, _)| *name != part);
    board.push((part, Arc::new(probe)));
}

/// The answer to `GET /health`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `healthy` when every part is, else `unhealthy`.
    pub status: &'static str,
    /// The chassis version.
    pub version: &'static str,
    /// Each registered part and its state, in registration order.
    #[serde(flatten)]
    pub parts: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Whether every part is up.
    pub fn healthy(&self) -> bool {
        self.status == "healthy"
    }
}

/// Asks every probe now.
pub fn report() -> Report {
    let probes: Vec<(&'static str, Probe)> = board()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(n, p)| (*n, p.clone()))
        .collect();
    let mut parts = serde_json::Map::new();
    let mut healthy = true;
    for (name, probe) in probes {
        let state = probe();
        healthy &= state.ok;
        parts.insert(name.to_string(), state.shown.into());
    }
    Report {
        status: if healthy { "healthy" } else { "unhealthy" },
        version: env!("CARGO_PKG_VERSION"),
        parts,
    }
}
