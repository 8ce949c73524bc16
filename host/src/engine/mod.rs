//! The shared wasmtime engine every sandbox of a host runs on.
//!
//! One [`Engine`] per host process: cranelift compilation, the component
//! model, async execution (so thousands of sandboxes share the tokio
//! runtime), fuel metering, epoch interruption driven by one ticker thread,
//! and the pooling instance allocator sized from the host limits.

pub mod maps;
mod ticker;

use std::time::Duration;

use thiserror::Error;

pub use ticker::EpochTicker;

/// How often the epoch ticker advances. A deadline can overshoot by up to one
/// tick, and a busy guest yields its thread to other sandboxes once a tick.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);

/// Stack available to wasm code; deep recursion past it is a `trap`.
const MAX_WASM_STACK: usize = 512 * 1024;
/// Host stack per running sandbox: the wasm stack plus room for host calls.
const ASYNC_STACK: usize = MAX_WASM_STACK + 512 * 1024;
/// Guard pages after each linear memory so small static offsets need no
/// explicit bounds check.
const MEMORY_GUARD: u64 = 2 * 1024 * 1024;
/// Elements per pooled table slot. Rust components use a few hundred.
const TABLE_ELEMENTS: usize = 10_000;
/// What one pool slot provides, and so the most one component may use: a
/// component needing more is refused when it is loaded (`invalid-module`,
/// wasmtime names the numbers), and the pool's totals are these times the
/// slot count, so `max_size` runs of any admitted module always fit and no
/// module can take other tenants' share.
pub const CORE_INSTANCES_PER_SLOT: u32 = 16;
/// How much of a freed slot's linear memory stays resident, by default
/// (`sandbox_pool.keep_resident_kib`). Within it, the pages a run dirtied
/// are found with Linux's `PAGEMAP_SCAN` (kernel 6.7 or later) and reset in
/// place, with no `madvise`: an `madvise` per run makes the kernel shoot
/// down the TLBs of every other core running sandboxes, and the next run
/// page-faults every page in again. Dirty pages past it are released. A
/// host keeps at most this much per slot it has used (`max_size` times it
/// at worst); older kernels fall back to zeroing the first this many bytes.
pub const DEFAULT_KEEP_RESIDENT: u64 = 16 * 1024 * 1024;
/// A freed slot's table stays resident whole (10,000 8-byte elements).
const TABLE_KEEP_RESIDENT: usize = TABLE_ELEMENTS * 8;
/// Linear memories per slot (see [`CORE_INSTANCES_PER_SLOT`]).
pub const MEMORIES_PER_SLOT: u32 = 2;
/// Tables per slot (see [`CORE_INSTANCES_PER_SLOT`]).
pub const TABLES_PER_SLOT: u32 = 4;

/// Engine settings derived from the host's limits.
///
/// Built with [`EngineConfig::new`] and the `with_*` methods; the defaults
/// are production values (fuel, epoch tick, pool size).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    max_memory_bytes: u64,
    pool_slots: u32,
    pooling: bool,
    epoch_tick: Duration,
    warm_slots: u32,
    keep_resident: u64,
    metering: crate::limits::Metering,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineConfig {
    /// Production defaults: 512 MiB per sandbox, 100 pooled slots.
    pub fn new() -> Self {
        Self {
            max_memory_bytes: 512 * 1024 * 1024,
            pool_slots: 100,
            pooling: true,
            epoch_tick: DEFAULT_EPOCH_TICK,
            warm_slots: 10,
            keep_resident: DEFAULT_KEEP_RESIDENT,
            metering: crate::limits::Metering::Fuel,
        }
    }

    /// How busy guest code is metered (`runtime.metering`): fuel is
    /// compiled into every module, so an engine without it cannot load
    /// artifacts compiled with it (the [`Engine::compatibility_hash`]
    /// differs) and its runs have no fuel budget.
    pub fn with_metering(mut self, metering: crate::limits::Metering) -> Self {
        self.metering = metering;
        self
    }

    /// How busy guest code is metered.
    pub fn metering(&self) -> crate::limits::Metering {
        self.metering
    }

    /// The largest linear memory any sandbox may have (`runtime.max_memory_mb`).
    /// Pool slots reserve exactly this much address space, not wasmtime's 4 GiB.
    pub fn with_max_memory_bytes(mut self, bytes: u64) -> Self {
        self.max_memory_bytes = bytes;
        self
    }

    /// How many sandboxes can be live at once (`sandbox_pool.max_size`).
    pub fn with_pool_slots(mut self, slots: u32) -> Self {
        self.pool_slots = slots;
        self
    }

    /// How many freed slots stay warm for reuse (`sandbox_pool.min_size`).
    pub fn with_warm_slots(mut self, slots: u32) -> Self {
        self.warm_slots = slots;
        self
    }

    /// How much of a freed slot's linear memory stays resident for the next
    /// run (`sandbox_pool.keep_resident_kib`; see [`DEFAULT_KEEP_RESIDENT`]).
    /// 0 releases every dirty page with `madvise` after each run.
    pub fn with_keep_resident(mut self, bytes: u64) -> Self {
        self.keep_resident = bytes;
        self
    }

    /// Use the pooling allocator (default) or allocate each instance on demand.
    /// On-demand is for tools that compile but never run, like `chassis compile`.
    pub fn with_pooling(mut self, pooling: bool) -> Self {
        self.pooling = pooling;
        self
    }

    /// How often the epoch advances; the granularity of deadlines and yields.
    pub fn with_epoch_tick(mut self, tick: Duration) -> Self {
        self.epoch_tick = tick;
        self
    }

    /// The per-sandbox memory cap in bytes.
    pub fn max_memory_bytes(&self) -> u64 {
        self.max_memory_bytes
    }

    /// The number of sandboxes that can be live at once.
    pub fn pool_slots(&self) -> u32 {
        self.pool_slots
    }

    /// The epoch tick.
    pub fn epoch_tick(&self) -> Duration {
        self.epoch_tick
    }

    /// The wasmtime configuration these settings produce. Public so
    /// benchmarks can build a peer engine that differs in one setting only.
    pub fn wasmtime_config(&self) -> wasmtime::Config {
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(self.metering == crate::limits::Metering::Fuel)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK)
            .async_stack_size(ASYNC_STACK)
            .memory_reservation(self.max_memory_bytes)
            .memory_guard_size(MEMORY_GUARD)
            .memory_reservation_for_growth(0)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        if self.pooling {
            let slots = self.pool_slots.max(1);
            let mut pool = wasmtime::PoolingAllocationConfig::new();
            pool.total_component_instances(slots)
                .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
                .total_memories(slots.saturating_mul(MEMORIES_PER_SLOT))
                .total_tables(slots.saturating_mul(TABLES_PER_SLOT))
                .total_stacks(slots)
                .max_memories_per_component(MEMORIES_PER_SLOT)
                .max_tables_per_component(TABLES_PER_SLOT)
                .max_core_instances_per_component(CORE_INSTANCES_PER_SLOT)
                .max_memory_size(self.max_memory_bytes as usize)
                .table_elements(TABLE_ELEMENTS)
                .max_unused_warm_slots(self.warm_slots.min(slots))
                .linear_memory_keep_resident(self.keep_resident.min(self.max_memory_bytes) as usize)
                .table_keep_resident(if self.keep_resident > 0 {
                    TABLE_KEEP_RESIDENT
                } else {
                    0
                })
                .pagemap_scan(wasmtime::Enabled::Auto);
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        config
    }
}

/// Why the engine could not be created.
#[derive(Debug, Error)]
pub enum EngineError {
    /// wasmtime refused the configuration (for example, not enough address
    /// space for the pool).
    #[error("creating the wasmtime engine ({slots} pool slots of {memory_mb} MiB): {source}")]
    Create {
        /// Pool slots asked for.
        slots: u32,
        /// Per-slot memory in MiB.
        memory_mb: u64,
        /// wasmtime's reason.
        #[source]
        source: wasmtime::Error,
    },
    /// The kernel refused the pool's mappings: too many slots for
    /// `vm.max_map_count` (or for the address space).
    #[error(
        "creating the wasmtime engine ({slots} pool slots of {memory_mb} MiB): the kernel refused the mappings ({source}); {hint}"
    )]
    OutOfMappings {
        /// Pool slots asked for.
        slots: u32,
        /// Per-slot memory in MiB.
        memory_mb: u64,
        /// What to raise or lower.
        hint: String,
        /// wasmtime's reason.
        #[source]
        source: wasmtime::Error,
    },
    /// The epoch ticker thread could not be started.
    #[error("starting the epoch ticker thread: {0}")]
    Ticker(#[source] std::io::Error),
}

/// A wasmtime engine with its epoch ticker; cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: wasmtime::Engine,
    config: EngineConfig,
    budget: std::sync::Arc<maps::MappingBudget>,
    _ticker: std::sync::Arc<EpochTicker>,
}

impl Engine {
    /// Creates the engine and starts its epoch ticker thread. The ticker stops
    /// when the last clone of the engine is dropped.
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let memory_mb = config.max_memory_bytes / (1024 * 1024);
        let inner = wasmtime::Engine::new(&config.wasmtime_config()).map_err(|source| {
            if maps::is_out_of_mappings(&source) {
                let slots = u64::from(config.pool_slots);
                let hint = match maps::max_map_count() {
                    Some(limit) if maps::needed_for(slots) > limit => {
                        maps::raise_hint(slots, limit)
                    }
                    Some(limit) => format!(
                        "vm.max_map_count is {limit}, enough for the pool: the address space may be limited (ulimit -v)"
                    ),
                    None => "check vm.max_map_count and ulimit -v".into(),
                };
                EngineError::OutOfMappings {
                    slots: config.pool_slots,
                    memory_mb,
                    hint,
                    source,
                }
            } else {
                EngineError::Create {
                    slots: config.pool_slots,
                    memory_mb,
                    source,
                }
            }
        })?;
        if config.pooling
            && let Some(warning) = maps::max_map_count()
                .and_then(|limit| maps::pool_warning(u64::from(config.pool_slots), limit))
        {
            tracing::warn!("{warning}");
        }
        let ticker =
            EpochTicker::start(inner.clone(), config.epoch_tick).map_err(EngineError::Ticker)?;
        let budget = if config.pooling {
            maps::MappingBudget::for_pool(u64::from(config.pool_slots))
        } else {
            maps::MappingBudget::unbounded()
        };
        Ok(Self {
            inner,
            budget,
            config,
            _ticker: std::sync::Arc::new(ticker),
        })
    }

    /// Admits one more live sandbox while the memory-mapping budget lasts
    /// (see [`maps`]); `Err` carries the message for the refused caller.
    pub(crate) fn admit(&self) -> Result<maps::Admitted, String> {
        self.budget
            .admit()
            .ok_or_else(|| maps::budget_spent_message(self.budget.ceiling()))
    }

    /// The underlying wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// The settings this engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A short hex string that changes whenever compiled artifacts from this
    /// engine stop being loadable (wasmtime version, target, settings).
    pub fn compatibility_hash(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner.precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_slots_fit_in_the_address_space() {
        let engine = Engine::new(
            EngineConfig::new()
                .with_pool_slots(10_000)
                .with_max_memory_bytes(64 * 1024 * 1024),
        );
        assert!(engine.is_ok(), "{:?}", engine.err());
    }

    #[test]
    fn artifacts_of_one_metering_do_not_load_under_the_other() {
        let fuel = Engine::new(EngineConfig::new().with_pool_slots(2)).unwrap();
        let epoch = Engine::new(
            EngineConfig::new()
                .with_pool_slots(2)
                .with_metering(crate::limits::Metering::Epoch),
        )
        .unwrap();
        assert_ne!(fuel.compatibility_hash(), epoch.compatibility_hash());
        let cwasm = fuel
            .wasmtime()
            .precompile_module(b"\0asm\x01\0\0\0")
            .unwrap();
        // SAFETY: the bytes were just produced by `precompile_module` above.
        let loaded = unsafe { wasmtime::Module::deserialize(epoch.wasmtime(), &cwasm) };
        assert!(
            loaded.is_err(),
            "a fuel-metered artifact loaded without fuel"
        );
    }

    #[test]
    fn compatibility_hash_is_stable_for_one_config() {
        let a = Engine::new(EngineConfig::new().with_pool_slots(2)).unwrap();
        let b = Engine::new(EngineConfig::new().with_pool_slots(2)).unwrap();
        assert_eq!(a.compatibility_hash(), b.compatibility_hash());
    }
}
