//! Capability denials: recorded per run for the report and audit, counted
//! per kind for the whole host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::bounded::bounded;
use crate::secrets::Redactor;

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
/// Longest denial target kept (an address, a URL, a secret name).
pub const MAX_DENIAL_TARGET: usize = 256;
/// Longest denial reason kept.
pub const MAX_DENIAL_REASON: usize = 512;
/// Denials per run written to the host's log; the rest are counted in the
/// metrics and the run report only, so a guest cannot flood the log.
const MAX_DENIALS_TRACED: u64 = 10;

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

#[derive(Debug, Default)]
struct Kept {
    denials: Vec<Denial>,
    /// Denials past [`MAX_DENIALS_KEPT`], only counted.
    dropped: u64,
    /// Every denial so far, for the tracing cap.
    seen: u64,
}

/// The denials of one run, shared with callbacks outside the store.
///
/// What a denial keeps comes from the guest (a secret name, a host name, a
/// URL), so it is cut to [`MAX_DENIAL_TARGET`] / [`MAX_DENIAL_REASON`] bytes
/// and passed through the run's redactor before it is kept, traced, audited
/// or returned to a caller: a guest that asks for `secret(<granted value>)`
/// leaks nothing.
#[derive(Debug, Clone)]
pub(crate) struct DenialLog {
    /// The run the denials are of, for the log line of each (the log
    /// leaves the run's span out; see `telemetry::traces::log_filter`).
    run_id: Option<crate::audit::RunId>,
    kept: Arc<Mutex<Kept>>,
    counters: Arc<DenialCounters>,
    redactor: Arc<Redactor>,
}

impl DenialLog {
    pub(crate) fn new(counters: Arc<DenialCounters>, redactor: Arc<Redactor>) -> Self {
        Self {
            run_id: None,
            kept: Arc::new(Mutex::new(Kept::default())),
            counters,
            redactor,
        }
    }

    /// This log, naming run `run_id` on each denial's log line.
    pub(crate) fn for_run(mut self, run_id: crate::audit::RunId) -> Self {
        self.run_id = Some(run_id);
        self
    }

    /// `target` as a denial would keep it: clipped and redacted. For
    /// building a reason that names what was refused.
    pub(crate) fn clip_target(&self, target: &str) -> String {
        bounded(target, MAX_DENIAL_TARGET, Some(&self.redactor))
    }

    /// Records that `target` was refused for `reason`.
    pub(crate) fn record(&self, kind: DenialKind, target: &str, reason: &str) {
        self.counters.bump(kind);
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.seen += 1;
        let traced = kept.seen <= MAX_DENIALS_TRACED;
        if !traced && kept.denials.len() >= MAX_DENIALS_KEPT {
            kept.dropped += 1;
            return;
        }
        let denial = Denial {
            kind,
            target: self.clip_target(target),
            reason: bounded(reason, MAX_DENIAL_REASON, Some(&self.redactor)),
        };
        if traced {
            tracing::info!(
                run_id = self.run_id.as_ref().map(crate::audit::RunId::as_str),
                kind = kind.as_str(),
                target = %denial.target,
                reason = %denial.reason,
                "capability denied"
            );
            if kept.seen == MAX_DENIALS_TRACED {
                tracing::info!(
                    run_id = self.run_id.as_ref().map(crate::audit::RunId::as_str),
                    "{MAX_DENIALS_TRACED} denials in this run; further ones are counted, not logged"
                );
            }
        }
        if kept.denials.len() < MAX_DENIALS_KEPT {
            kept.denials.push(denial);
        } else {
            kept.dropped += 1;
        }
    }

    /// The denials kept and how many more were only counted.
    pub(crate) fn take(&self) -> (Vec<Denial>, u64) {
        let kept = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()));
        (kept.denials, kept.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denial_kind_has_its_metric_label() {
        let names: Vec<&str> = DenialKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, crate::telemetry::DENIAL_KINDS);
    }
    use crate::secrets::SecretValue;

    fn log(value: &str) -> DenialLog {
        let v = SecretValue::new(value.to_string());
        DenialLog::new(
            Arc::new(DenialCounters::default()),
            Arc::new(Redactor::new([("smtp", &v)])),
        )
    }

    /// The log leaves the run's span out, so a denial's line names its run
    /// itself, and redacts like the record.
    #[test]
    fn a_denials_log_line_names_its_run_and_no_secret() {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let run_id = crate::audit::RunId::new("0123456789abcdef0123456789abcdef").unwrap();
        tracing::subscriber::with_default(subscriber, || {
            log("s3cret-value").for_run(run_id).record(
                DenialKind::Secret,
                "s3cret-value",
                "asked for s3cret-value",
            );
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["fields"]["message"], "capability denied", "{text}");
        assert_eq!(line["fields"]["run_id"], run_id.as_str(), "{text}");
        assert_eq!(line["fields"]["target"], "[REDACTED:smtp]", "{text}");
        assert!(!text.contains("s3cret-value"), "{text}");
    }

    #[test]
    fn targets_and_reasons_are_clipped_and_redacted() {
        let log = log("s3cret-value");
        let huge = "n".repeat(4 << 20);
        log.record(DenialKind::Secret, &huge, &huge);
        log.record(DenialKind::Secret, "s3cret-value", "asked for s3cret-value");
        let (kept, dropped) = log.take();
        assert_eq!(dropped, 0);
        assert!(kept[0].target.len() <= MAX_DENIAL_TARGET + 3);
        assert!(kept[0].reason.len() <= MAX_DENIAL_REASON + 3);
        assert!(kept[0].target.capacity() <= MAX_DENIAL_TARGET + 3);
        assert_eq!(kept[1].target, "[REDACTED:smtp]");
        assert_eq!(kept[1].reason, "asked for [REDACTED:smtp]");
    }

    #[test]
    fn past_the_cap_denials_are_counted_not_kept() {
        let log = log("x-value");
        for i in 0..250 {
            log.record(DenialKind::Network, &format!("10.0.0.{i}:443"), "no");
        }
        let (kept, dropped) = log.take();
        assert_eq!(kept.len(), MAX_DENIALS_KEPT);
        assert_eq!(dropped, 150);
        assert_eq!(log.counters.get(DenialKind::Network), 250);
    }
}
