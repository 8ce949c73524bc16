//! How much of the machine compiling modules for remote callers may take.
//!
//! Compiling a component with cranelift takes from milliseconds to tens of
//! seconds (a 20-40 MB Python or JavaScript agent: 2-30 s on 2 cores), and
//! wasmtime spreads one compile over every core. Unbounded, a burst of
//! `RegisterModule` calls (or runbook submissions carrying module files, or
//! steps fetching modules from the claim store) takes every core and every
//! run on the host stalls behind it. So a compile for a caller:
//!
//! - waits for one of `runtime.max_concurrent_compiles` compile slots
//!   (default half the cores, at least one), in turn among callers
//!   ([`crate::slots`]) and at most one per caller at a time, for at most
//!   `runtime.compile_queue_timeout_ms`, then is refused `overloaded`
//!   (RESOURCE_EXHAUSTED);
//! - runs on a blocking thread, never on an async worker;
//! - spreads over a dedicated pool of that many compile threads instead of
//!   every core, so the remaining cores keep running sandboxes.
//!
//! The CLI (`chassis compile`, `chassis run`) compiles without these bounds:
//! there the compile is the only work.

use std::sync::Arc;
use std::time::Duration;

use crate::slots::{FairSlots, Slot, SlotsBusy};

/// Bounds on compiling for remote callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Compiles at once, and threads they spread over.
    pub concurrency: usize,
    /// How long a compile waits for a slot before it is refused.
    pub queue_timeout: Duration,
}

impl Default for CompileLimits {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            queue_timeout: Duration::from_secs(60),
        }
    }
}

/// Half the cores, at least one.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

const SETTING: &str = "one compile per caller at a time";

/// The compile slots and threads of one module store.
pub(super) struct Compiles {
    slots: FairSlots,
    queue_timeout: Duration,
    threads: Option<Arc<rayon::ThreadPool>>,
}

impl std::fmt::Debug for Compiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiles")
            .field("slots", &self.slots.capacity())
            .field("queue_timeout", &self.queue_timeout)
            .field("bounded_threads", &self.threads.is_some())
            .finish()
    }
}

impl Compiles {
    /// Slots as `limits` say; compiles spread over every core (the CLI's
    /// choice) until [`Compiles::bounded`].
    pub(super) fn new(limits: CompileLimits) -> Self {
        Self {
            slots: FairSlots::new("compile", limits.concurrency, 1, SETTING),
            queue_timeout: limits.queue_timeout,
            threads: None,
        }
    }

    /// As `limits` say, with compiles on `limits.concurrency` threads of
    /// their own.
    pub(super) fn bounded(limits: CompileLimits) -> Result<Self, String> {
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(limits.concurrency.max(1))
            .thread_name(|i| format!("chassis-compile-{i}"))
            .build()
            .map_err(|e| format!("starting {} compile threads: {e}", limits.concurrency))?;
        Ok(Self {
            threads: Some(Arc::new(threads)),
            ..Self::new(limits)
        })
    }

    /// A compile slot for `caller`.
    pub(super) async fn slot(&self, caller: &str) -> Result<Slot, SlotsBusy> {
        self.slots.acquire(caller, self.queue_timeout).await
    }

    /// Runs `compile` on the compile threads (or the caller's thread when
    /// unbounded).
    pub(super) fn run<T: Send>(&self, compile: impl FnOnce() -> T + Send) -> T {
        match &self.threads {
            Some(threads) => threads.install(compile),
            None => compile(),
        }
    }
}
