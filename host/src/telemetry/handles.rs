//! The per-run metric handles, resolved once per thread and recorder.
//!
//! A run used to look up about ten metrics by name and labels through the
//! `metrics` facade (build the key, hash it, find it in the recorder's
//! registry), which was ~2% of a served run. Handles are what the facade
//! hands back; each worker thread keeps its own here, so a run touches no
//! lock and no shared table.
//!
//! A handle taken before `chassis serve` installs the Prometheus recorder
//! belongs to the no-op recorder and would stay silent forever, so
//! [`super::install_prometheus`] bumps [`recorder_installed`]'s
//! generation once its recorder is in place, and a thread whose handles
//! are from an older generation takes them again.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram};

use super::{
    DENIALS_TOTAL, MEMORY_USAGE_MB, MODULE_FUEL, MODULE_PEAK_MEMORY_MB, RUN_DURATION, RUN_FUEL,
    RUNS_TOTAL, SANDBOX_COUNT, SANDBOX_ESCAPES, SLO_VIOLATIONS,
};

/// Bumped each time a recorder is installed.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Most modules (and outcomes, and denial kinds) one thread keeps handles
/// for; past it the oldest entry makes room.
const KEPT: usize = 16;

/// Call once a recorder is installed, after it is: handles cached before
/// are taken again.
pub(crate) fn recorder_installed() {
    GENERATION.fetch_add(1, Ordering::Release);
}

/// One thread's handles, for the recorder of `generation`.
pub(crate) struct Handles {
    generation: u64,
    pub(crate) duration: Histogram,
    pub(crate) fuel: Histogram,
    pub(crate) slo_violations: Counter,
    pub(crate) escapes: Counter,
    pub(crate) sandboxes: Gauge,
    pub(crate) memory: Gauge,
    outcomes: Labelled<&'static str, Counter>,
    denials: Labelled<&'static str, Counter>,
    modules: Labelled<String, (Counter, Gauge)>,
}

/// A few labelled handles, found by their label.
struct Labelled<K, V> {
    entries: Vec<(K, V)>,
    next: usize,
}

impl<K, V: Clone> Labelled<K, V> {
    fn new() -> Self {
        Self {
            entries: Vec::new(),
            next: 0,
        }
    }

    fn get(&mut self, matches: impl Fn(&K) -> bool, make: impl FnOnce() -> (K, V)) -> V {
        if let Some((_, v)) = self.entries.iter().find(|(k, _)| matches(k)) {
            return v.clone();
        }
        let (k, v) = make();
        if self.entries.len() < KEPT {
            self.entries.push((k, v.clone()));
        } else {
            self.entries[self.next] = (k, v.clone());
            self.next = (self.next + 1) % KEPT;
        }
        v
    }
}

impl Handles {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            duration: metrics::histogram!(RUN_DURATION),
            fuel: metrics::histogram!(RUN_FUEL),
            slo_violations: metrics::counter!(SLO_VIOLATIONS),
            escapes: metrics::counter!(SANDBOX_ESCAPES),
            sandboxes: metrics::gauge!(SANDBOX_COUNT),
            memory: metrics::gauge!(MEMORY_USAGE_MB),
            outcomes: Labelled::new(),
            denials: Labelled::new(),
            modules: Labelled::new(),
        }
    }

    /// `if_chassis_runs_total{outcome}`.
    pub(crate) fn runs(&mut self, outcome: &'static str) -> Counter {
        self.outcomes.get(
            |k| *k == outcome,
            || (outcome, metrics::counter!(RUNS_TOTAL, "outcome" => outcome)),
        )
    }

    /// `if_chassis_denials_total{kind}`.
    pub(crate) fn denials(&mut self, kind: &'static str) -> Counter {
        self.denials.get(
            |k| *k == kind,
            || (kind, metrics::counter!(DENIALS_TOTAL, "kind" => kind)),
        )
    }

    /// The module's fuel counter and peak memory gauge; `module` is its
    /// label (the id's first 12 characters).
    pub(crate) fn module(&mut self, module: &str) -> (Counter, Gauge) {
        self.modules.get(
            |k| k == module,
            || {
                let label = module.to_string();
                (
                    label.clone(),
                    (
                        metrics::counter!(MODULE_FUEL, "module" => label.clone()),
                        metrics::gauge!(MODULE_PEAK_MEMORY_MB, "module" => label),
                    ),
                )
            },
        )
    }
}

thread_local! {
    static HANDLES: RefCell<Option<Handles>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's handles, taking them first when the thread
/// has none for the installed recorder. `f` must not call back here.
pub(crate) fn with<R>(f: impl FnOnce(&mut Handles) -> R) -> R {
    let generation = GENERATION.load(Ordering::Acquire);
    let mut f = Some(f);
    let kept = HANDLES.try_with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|h| h.generation != generation) {
            *slot = Some(Handles::new(generation));
        }
        let f = f.take().expect("called once");
        f(slot.as_mut().expect("filled above"))
    });
    match kept {
        Ok(r) => r,
        // The thread is exiting and its handles are gone: take them for
        // this one call.
        Err(_) => (f.take().expect("not called"))(&mut Handles::new(generation)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_handles_are_kept_per_label_and_bounded() {
        let mut made = 0;
        let mut kept: Labelled<String, u32> = Labelled::new();
        for round in 0..2 {
            for i in 0..KEPT as u32 {
                let v = kept.get(
                    |k| *k == i.to_string(),
                    || {
                        made += 1;
                        (i.to_string(), i)
                    },
                );
                assert_eq!(v, i, "round {round}");
            }
        }
        assert_eq!(made, KEPT, "the second round found every label");
        kept.get(|k| k == "new", || ("new".into(), 99));
        assert_eq!(kept.entries.len(), KEPT);
        assert!(
            !kept.entries.iter().any(|(k, _)| k == "0"),
            "the oldest went"
        );
    }

    #[test]
    fn a_new_recorder_generation_takes_the_handles_again() {
        let before = with(|h| h.generation);
        recorder_installed();
        let after = with(|h| h.generation);
        assert!(after > before);
        assert_eq!(with(|h| h.generation), after, "kept until the next one");
    }
}
