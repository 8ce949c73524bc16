//! Holds a sandbox to its CPU share (`cpu_percent`).
//!
//! At every epoch tick the meter adds the time since the guest last resumed
//! to its busy time. When busy time is more than `percent` of the wall time
//! so far, the guest is paused (its future sleeps, its thread serves other
//! sandboxes) until it is back under its share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The least a guest must have held its thread since it last resumed for
/// an epoch tick to make it yield. A run of a few microseconds that a tick
/// happens to fall in is not sent to the back of its thread's queue, where
/// it waited for every other task's turn (hundreds of microseconds under
/// load: the runs over 10x the median in `chassis load`); a guest that
/// keeps its thread longer yields at the next tick as before, and its busy
/// time is accounted then, so its CPU share is enforced at most one tick
/// later.
pub(crate) const MIN_SLICE: Duration = Duration::from_millis(1);

/// Busy-time accounting for one run.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    started: Instant,
    percent: u8,
    busy: Duration,
    /// Nanoseconds after `started` when the guest last resumed; written by
    /// the yield future once the executor polls the guest again.
    resumed_ns: Arc<AtomicU64>,
}

impl CpuMeter {
    pub(crate) fn new(started: Instant, percent: u8) -> Self {
        Self {
            started,
            percent: percent.clamp(1, 100),
            busy: Duration::ZERO,
            resumed_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    fn since_start(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_nanos() as u64
    }

    /// Accounts the slice that ends `now`; returns how long to pause, if at all.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Duration> {
        let now_ns = self.since_start(now);
        let resumed = self.resumed_ns.load(Ordering::Relaxed).min(now_ns);
        self.busy += Duration::from_nanos(now_ns - resumed);
        // Until the yield future marks the real resume, nothing is busy.
        self.resumed_ns.store(u64::MAX, Ordering::Relaxed);
        if self.percent >= 100 {
            return None;
        }
        let owed = self.busy.mul_f64(100.0 / f64::from(self.percent));
        let wall = Duration::from_nanos(now_ns);
        owed.checked_sub(wall).filter(|d| !d.is_zero())
    }

    /// How long the guest has run since it last resumed (its start, or
    /// the end of its last yield).
    pub(crate) fn slice(&self, now: Instant) -> Duration {
        let now_ns = self.since_start(now);
        let resumed = self.resumed_ns.load(Ordering::Relaxed).min(now_ns);
        Duration::from_nanos(now_ns - resumed)
    }

    /// A future that yields (after `pause`, if any) and then marks the resume.
    pub(crate) fn yield_then_resume(
        &self,
        pause: Option<Duration>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let resumed = self.resumed_ns.clone();
        let started = self.started;
        Box::pin(async move {
            match pause {
                Some(d) => tokio::time::sleep(d).await,
                None => tokio::task::yield_now().await,
            }
            resumed.store(
                Instant::now().saturating_duration_since(started).as_nanos() as u64,
                Ordering::Relaxed,
            );
        })
    }

    /// Busy time including the last slice, up to `now`.
    pub(crate) fn busy_until(&self, now: Instant) -> Duration {
        let now_ns = self.since_start(now);
        let resumed = self.resumed_ns.load(Ordering::Relaxed).min(now_ns);
        self.busy + Duration::from_nanos(now_ns - resumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_share_never_pauses() {
        let start = Instant::now();
        let mut meter = CpuMeter::new(start, 100);
        assert_eq!(meter.tick(start + Duration::from_millis(50)), None);
        assert_eq!(
            meter.busy_until(start + Duration::from_millis(50)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn a_slice_runs_from_the_start_or_the_last_resume() {
        let start = Instant::now();
        let mut meter = CpuMeter::new(start, 100);
        assert_eq!(
            meter.slice(start + Duration::from_micros(7)),
            Duration::from_micros(7)
        );
        assert!(meter.slice(start + Duration::from_micros(7)) < MIN_SLICE);
        // Accounted at a tick: until the yield future marks the resume,
        // the guest is not running, so no slice has begun.
        meter.tick(start + Duration::from_millis(12));
        assert_eq!(
            meter.slice(start + Duration::from_millis(13)),
            Duration::ZERO
        );
        meter.resumed_ns.store(
            Duration::from_millis(14).as_nanos() as u64,
            Ordering::Relaxed,
        );
        assert_eq!(
            meter.slice(start + Duration::from_millis(16)),
            Duration::from_millis(2)
        );
    }

    #[test]
    fn a_quarter_share_pauses_for_three_times_the_busy_slice() {
        let start = Instant::now();
        let mut meter = CpuMeter::new(start, 25);
        let pause = meter.tick(start + Duration::from_millis(10)).unwrap();
        assert_eq!(pause, Duration::from_millis(30));
    }
}
