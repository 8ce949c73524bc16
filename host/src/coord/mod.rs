//! Runbooks and the claims that share their steps among hosts.
//!
//! A runbook ([`runbook`]) is a set of named steps, each a sandboxed module
//! run, ordered by dependencies. Submitting one stores it in a
//! [`ClaimStore`]; every host's [`Coordinator`] then claims ready steps,
//! runs them and records results under the claim's fence. A step runs at
//! least once (a host that dies mid-step loses its claim with its lease and
//! another host runs the step again) and completes exactly once (a result is
//! written only while the claim that produced it holds, and only if the
//! step has none).

#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
mod etcd;
mod lease;
mod memory;
pub mod runbook;
mod store;
mod worker;

pub use etcd::{EtcdOptions, EtcdStore, PREFIX as ETCD_PREFIX};
pub use memory::MemoryStore;
pub use runbook::{RunbookError, RunbookFile, RunbookSpec, StepSpec};
pub use store::{
    Change, Claim, ClaimInfo, ClaimStore, CoordError, EventStream, RunbookState, RunbookView,
    Session, StepEvent, StepOutcome, StepRecord, StepState, StepView,
};
pub use worker::{
    Coordinator, CoordinatorOptions, CoordinatorTask, MAX_STEP_OUTPUT, SubmitError, default_holder,
    wait_closed,
};

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_in_process_store_passes_the_conformance_suite() {
        super::conformance::run_all(
            Arc::new(super::MemoryStore::new()),
            Duration::from_millis(300),
        )
        .await;
    }
}
