//! The kernel's cap on memory mappings, which caps live sandboxes.
//!
//! Linux limits how many separate mappings (VMAs) one process may hold
//! (`vm.max_map_count`, 65,530 by default). A live sandbox of the pooling
//! allocator splits its slot's reservations into about
//! [`MAPPINGS_PER_LIVE_SANDBOX`] mappings: its async stack (read-write) and
//! guard page, its linear memory's accessible part, copy-on-write image
//! page(s) and inaccessible rest, and its table's accessible part. Measured:
//! 5,000 live `sleeper` sandboxes held 30,063 mappings against 67 for an
//! idle host, so 6 each. At 65,530 that is about 10,900 live sandboxes; past
//! it `mprotect` fails with ENOMEM, which wasmtime reports as "Cannot
//! allocate memory". That is the host's limit, never the guest's fault, so
//! it is reported as `overloaded` naming the setting, and the host warns at
//! start when its pool could outgrow it.
//!
//! Of the 6, 2 are held by every pool slot from the start (its stack and
//! the guard page protected when the pool is created) and 4 by a live one.
//! The host itself needs mappings too (the allocator maps every large
//! allocation), and at the limit an allocation failing aborts the process,
//! so a [`MappingBudget`] stops admitting sandboxes while
//! [`BASE_MAPPINGS`] remain for the host: a run past it is refused
//! `overloaded` before its sandbox is made.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Mappings one live sandbox holds (measured; see the module docs).
pub const MAPPINGS_PER_LIVE_SANDBOX: u64 = 6;

/// Mappings a host holds besides its sandboxes (binary, libraries, heap,
/// threads, the pool's reservations), with headroom for what it allocates
/// while serving.
pub const BASE_MAPPINGS: u64 = 4_000;

/// Mappings every pool slot holds, live or not (stack and guard page).
const PER_SLOT_AT_REST: u64 = 2;

/// `vm.max_map_count`, if readable.
pub fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// About how many sandboxes can be live at once under `limit` mappings.
pub fn live_sandbox_ceiling(limit: u64) -> u64 {
    limit.saturating_sub(BASE_MAPPINGS) / MAPPINGS_PER_LIVE_SANDBOX
}

/// How many of `slots` sandboxes may be live at once under `limit`
/// mappings, leaving [`BASE_MAPPINGS`] to the host.
pub fn live_ceiling(slots: u64, limit: u64) -> u64 {
    let free = limit.saturating_sub(BASE_MAPPINGS + slots * PER_SLOT_AT_REST);
    (free / (MAPPINGS_PER_LIVE_SANDBOX - PER_SLOT_AT_REST)).min(slots)
}

/// Admits sandboxes while the mapping budget lasts.
#[derive(Debug)]
pub struct MappingBudget {
    live: AtomicUsize,
    ceiling: usize,
}

/// One admitted sandbox; dropping it gives its share back.
#[derive(Debug)]
pub struct Admitted(Arc<MappingBudget>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl MappingBudget {
    /// The budget of a pool of `slots` under this machine's
    /// `vm.max_map_count` (unbounded when it cannot be read).
    pub fn for_pool(slots: u64) -> Arc<Self> {
        let ceiling = max_map_count().map_or(u64::MAX, |limit| live_ceiling(slots, limit));
        Arc::new(Self {
            live: AtomicUsize::new(0),
            ceiling: usize::try_from(ceiling).unwrap_or(usize::MAX),
        })
    }

    /// No budget: the on-demand allocator maps per instance and its
    /// failures are the ENOMEM path.
    pub fn unbounded() -> Arc<Self> {
        Arc::new(Self {
            live: AtomicUsize::new(0),
            ceiling: usize::MAX,
        })
    }

    /// Sandboxes that may be live at once.
    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// A share of the budget, or `None` when it is spent.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let previous = self.live.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(self.clone());
        (previous < self.ceiling).then_some(admitted)
    }
}

/// The `vm.max_map_count` that `slots` live sandboxes need.
pub fn needed_for(slots: u64) -> u64 {
    BASE_MAPPINGS + slots * MAPPINGS_PER_LIVE_SANDBOX
}

/// A warning when `slots` live sandboxes would exceed `limit` mappings.
pub fn pool_warning(slots: u64, limit: u64) -> Option<String> {
    (needed_for(slots) > limit).then(|| {
        format!(
            "{slots} sandbox slots need about {} memory mappings when all are live, but vm.max_map_count is {limit}: \
             about {} can be live at once and further runs end `overloaded`; raise it with \
             `sysctl -w vm.max_map_count={}` (and in /etc/sysctl.d/) or lower the pool size",
            needed_for(slots),
            live_sandbox_ceiling(limit),
            needed_for(slots).next_power_of_two()
        )
    })
}

/// What to change when the pool of `slots` could not even be set up under
/// `limit` mappings.
pub fn raise_hint(slots: u64, limit: u64) -> String {
    format!(
        "vm.max_map_count is {limit} and {slots} slots need about {} mappings: raise it with \
         `sysctl -w vm.max_map_count={}` (and in /etc/sysctl.d/), or lower the pool size to at most {}",
        needed_for(slots),
        needed_for(slots).next_power_of_two(),
        live_sandbox_ceiling(limit)
    )
}

/// Whether `err` is the kernel refusing a mapping (ENOMEM): the host ran
/// out of mappings or address space, not the guest of anything.
pub(crate) fn is_out_of_mappings(err: &wasmtime::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(ENOMEM))
            || cause.to_string().contains("os error 12")
    })
}

/// What to tell the caller of a run refused because `ceiling` sandboxes
/// are live already.
pub(crate) fn budget_spent_message(ceiling: usize) -> String {
    let limit = max_map_count().map_or_else(|| "unreadable".to_string(), |l| l.to_string());
    format!(
        "at most {ceiling} sandboxes can be live at once on this host (vm.max_map_count is {limit}; a live sandbox takes about {MAPPINGS_PER_LIVE_SANDBOX} memory mappings) and that many are: retry later, or have the operator raise vm.max_map_count"
    )
}

/// What to tell the caller of a run refused by the mapping limit.
pub(crate) fn out_of_mappings_message() -> String {
    match max_map_count() {
        Some(limit) => format!(
            "the host ran out of memory mappings (vm.max_map_count is {limit}, enough for about {} live sandboxes); \
             retry later, or have the operator raise vm.max_map_count",
            live_sandbox_ceiling(limit)
        ),
        None => "the host ran out of memory mappings or address space; retry later".into(),
    }
}

const ENOMEM: i32 = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_fits_about_ten_thousand_and_fifty_thousand_need_three_hundred_thousand() {
        assert_eq!(live_sandbox_ceiling(65_530), 10_255);
        assert_eq!(needed_for(50_000), 304_000);
        // 15,000 slots hold 30,000 at rest; 7,882 of them can go live.
        assert_eq!(live_ceiling(15_000, 65_530), 7_882);
        assert_eq!(live_ceiling(1_000, 65_530), 1_000);
        assert!(pool_warning(10_000, 65_530).is_none());
        let warning = pool_warning(50_000, 65_530).unwrap();
        assert!(
            warning.contains("vm.max_map_count is 65530") && warning.contains("=524288"),
            "{warning}"
        );
    }

    #[test]
    fn enomem_anywhere_in_the_chain_is_out_of_mappings() {
        let err = wasmtime::Error::from(std::io::Error::from_raw_os_error(ENOMEM))
            .context("failed to protect stack guard page");
        assert!(is_out_of_mappings(&err));
        let other = wasmtime::Error::from(std::io::Error::from_raw_os_error(13));
        assert!(!is_out_of_mappings(&other));
    }
}
