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

/// Mappings one live sandbox holds (measured; see the module docs).
pub const MAPPINGS_PER_LIVE_SANDBOX: u64 = 6;

/// Mappings a host holds before any sandbox (binary, libraries, heap,
/// threads, the pool's reservations), with headroom.
const BASE_MAPPINGS: u64 = 2_000;

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
        assert_eq!(live_sandbox_ceiling(65_530), 10_588);
        assert_eq!(needed_for(50_000), 302_000);
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
