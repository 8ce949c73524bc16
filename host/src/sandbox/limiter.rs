//! Enforces a run's memory and table limits and records peak usage.

use wasmtime::ResourceLimiter;

/// Most table elements a sandbox may grow a table to.
pub const MAX_TABLE_ELEMENTS: usize = 10_000;
/// Most core instances, tables and memories a component may create.
const MAX_INSTANCES: usize = 16;
const MAX_TABLES: usize = 8;
const MAX_MEMORIES: usize = 4;

/// Which limit the guest ran into, first time only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// Linear memory would have grown past the limit to `requested` bytes in total.
    Memory {
        /// Total bytes the growth asked for.
        requested: u64,
    },
    /// A table would have grown past [`MAX_TABLE_ELEMENTS`].
    Table {
        /// Elements asked for.
        requested: u64,
    },
}

/// The per-store resource limiter.
///
/// A denied growth is reported to the guest as a failed `memory.grow` (as
/// the wasm spec allows), and remembered: if the guest then traps, the run's
/// outcome is `memory-limit` rather than a bare trap.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory_limit: u64,
    memory_total: u64,
    peak_memory: u64,
    hit: Option<LimitHit>,
}

impl Limiter {
    /// A limiter allowing `memory_limit` bytes of linear memory in total.
    pub(crate) fn new(memory_limit: u64) -> Self {
        Self {
            memory_limit,
            memory_total: 0,
            peak_memory: 0,
            hit: None,
        }
    }

    /// The largest total linear memory seen, in bytes.
    pub(crate) fn peak_memory(&self) -> u64 {
        self.peak_memory
    }

    /// The first limit the guest ran into, if any.
    pub(crate) fn hit(&self) -> Option<LimitHit> {
        self.hit
    }

    fn record(&mut self, hit: LimitHit) {
        self.hit.get_or_insert(hit);
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        crate::telemetry::live_memory_delta(-(self.memory_total as i64));
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_total - current as u64 + desired as u64;
        if total > self.memory_limit {
            self.record(LimitHit::Memory { requested: total });
            return Ok(false);
        }
        crate::telemetry::live_memory_delta(total as i64 - self.memory_total as i64);
        self.memory_total = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.record(LimitHit::Table {
                requested: desired as u64,
            });
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_limit_is_refused_and_remembered() {
        let mut limiter = Limiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 65536, None).unwrap());
        assert!(limiter.memory_growing(65536, 1 << 20, None).unwrap());
        assert!(!limiter.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert_eq!(limiter.peak_memory(), 1 << 20);
        assert_eq!(limiter.hit(), Some(LimitHit::Memory { requested: 2 << 20 }));
    }

    #[test]
    fn tables_are_capped() {
        let mut limiter = Limiter::new(1 << 20);
        assert!(limiter.table_growing(0, 100, None).unwrap());
        assert!(
            !limiter
                .table_growing(100, MAX_TABLE_ELEMENTS + 1, None)
                .unwrap()
        );
        assert!(matches!(limiter.hit(), Some(LimitHit::Table { .. })));
    }
}
