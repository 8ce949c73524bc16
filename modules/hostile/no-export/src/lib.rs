//! Hostile: a component that exports nothing at all. Must be refused as
//! `invalid-module`, listing the exports found (none).

/// Present so the crate is not empty; not exported to the component.
pub fn unused() -> u32 {
    7
}
