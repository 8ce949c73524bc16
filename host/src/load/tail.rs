//! Why a slow run was slow (`chassis load --explain-tail`).
//!
//! A run in the tail (over 10x the median) took that long either because
//! it did not have its thread, or because its thread did not have the CPU,
//! or because the work itself took that long. The kernel keeps the
//! evidence per thread: its CPU time (`CLOCK_THREAD_CPUTIME_ID`, which
//! leaves out time the hypervisor ran another guest on this virtual CPU
//! when the kernel accounts steal time, as KVM guests' kernels do), its
//! involuntary and voluntary context switches, and its page faults
//! (`getrusage(RUSAGE_THREAD)`). Read before and after a run, these say
//! which [`TailCause`] each run had, and the report counts them over the
//! tail, so a load tester can tell the host's slowness from the machine's.
//!
//! Reading them costs four system calls per run (~1 µs on the 2-vCPU VM of
//! BENCHMARKS.md, on runs of ~7 µs), which is why it is asked for, not
//! always on.

use std::time::Duration;

use serde::Serialize;

/// What one thread had been through at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThreadMarks {
    /// CPU time the thread has had.
    pub(crate) cpu: Duration,
    /// Times another thread or process took its CPU.
    pub(crate) preempted: u64,
    /// Times it slept in the kernel (a contended lock, a blocking call).
    pub(crate) blocked: u64,
    /// Page faults it has taken (minor and major).
    pub(crate) faults: u64,
}

impl ThreadMarks {
    /// The calling thread's marks now; `None` if the kernel will not say.
    pub(crate) fn now() -> Option<Self> {
        let mut cpu = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `cpu` is a valid, writable timespec for the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut cpu) } != 0 {
            return None;
        }
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage for the call.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
            return None;
        }
        let count = |n: libc::c_long| u64::try_from(n).unwrap_or(0);
        Some(Self {
            cpu: Duration::new(
                u64::try_from(cpu.tv_sec).unwrap_or(0),
                u32::try_from(cpu.tv_nsec).unwrap_or(0),
            ),
            preempted: count(usage.ru_nivcsw),
            blocked: count(usage.ru_nvcsw),
            faults: count(usage.ru_minflt) + count(usage.ru_majflt),
        })
    }
}

/// Why a run took as long as it did, as its thread's marks tell it.
///
/// A run has the first of these that applies, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TailCause {
    /// The run gave up its thread at least once (it yielded at an epoch
    /// tick, or waited on I/O, a timer or a pool slot) and waited its turn
    /// while other tasks ran.
    Suspended,
    /// Another thread or process took its thread's CPU during the run.
    Preempted,
    /// Its thread slept in the kernel during the run (a contended lock, a
    /// blocking call).
    Blocked,
    /// Its thread kept the CPU, by the kernel's account, yet had less than
    /// half the run's wall time on it: the virtual CPU itself was not
    /// running (hypervisor steal time).
    Stolen,
    /// On the CPU throughout, taking page faults.
    PageFaults,
    /// On the CPU throughout with no page fault, by the kernel's account.
    /// Either the work itself took that long (cold caches, cache lines
    /// other cores were writing), or time went where the guest kernel
    /// charges it to whichever thread was running: interrupt handlers
    /// (unless the kernel accounts IRQ time apart) and, on a VM, the
    /// hypervisor's own work on the vCPU's core, which is not steal time.
    /// On the 2-vCPU VM of BENCHMARKS.md these runs took 70-200 µs of CPU
    /// for work of 7 µs, their profile was an ordinary run's, and a bare
    /// busy loop there pauses as often.
    OnCpu,
}

impl TailCause {
    /// Every cause, in the order a run is given the first that applies.
    pub const ALL: [Self; 6] = [
        Self::Suspended,
        Self::Preempted,
        Self::Blocked,
        Self::Stolen,
        Self::PageFaults,
        Self::OnCpu,
    ];

    /// The name reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Suspended => "suspended",
            Self::Preempted => "preempted",
            Self::Blocked => "blocked",
            Self::Stolen => "stolen",
            Self::PageFaults => "page-faults",
            Self::OnCpu => "on-cpu",
        }
    }

    /// The cause of a run that took `wall`, was polled `polls` times, and
    /// ran between its thread's marks `before` and `after` (both taken on
    /// the thread that polled it last; a run polled more than once is
    /// `Suspended` whatever the marks say, as it may have moved threads).
    pub(crate) fn of(wall: Duration, polls: u32, before: ThreadMarks, after: ThreadMarks) -> Self {
        if polls > 1 {
            Self::Suspended
        } else if after.preempted > before.preempted {
            Self::Preempted
        } else if after.blocked > before.blocked {
            Self::Blocked
        } else if after.cpu.saturating_sub(before.cpu) * 2 < wall {
            Self::Stolen
        } else if after.faults > before.faults {
            Self::PageFaults
        } else {
            Self::OnCpu
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn marks(cpu_ms: u64, preempted: u64, blocked: u64, faults: u64) -> ThreadMarks {
        ThreadMarks {
            cpu: MS * cpu_ms as u32,
            preempted,
            blocked,
            faults,
        }
    }

    #[test]
    fn each_cause_is_told_from_the_marks_in_order() {
        let before = marks(100, 5, 7, 11);
        let of = |polls, after| TailCause::of(4 * MS, polls, before, after);
        // Polled twice: whatever the thread did, the run waited its turn.
        assert_eq!(of(2, marks(104, 5, 7, 11)), TailCause::Suspended);
        assert_eq!(of(1, marks(101, 6, 8, 12)), TailCause::Preempted);
        assert_eq!(of(1, marks(101, 5, 8, 12)), TailCause::Blocked);
        // 1 ms of CPU in a 4 ms run, never switched out.
        assert_eq!(of(1, marks(101, 5, 7, 12)), TailCause::Stolen);
        assert_eq!(of(1, marks(103, 5, 7, 12)), TailCause::PageFaults);
        assert_eq!(of(1, marks(104, 5, 7, 11)), TailCause::OnCpu);
        // Exactly half the wall on the CPU is not stolen.
        assert_eq!(of(1, marks(102, 5, 7, 11)), TailCause::OnCpu);
    }

    #[test]
    fn names_are_the_serialized_names() {
        for cause in TailCause::ALL {
            assert_eq!(
                serde_json::to_value(cause).unwrap(),
                serde_json::json!(cause.as_str())
            );
        }
    }

    #[test]
    fn this_thread_has_marks_that_move_forward() {
        let before = ThreadMarks::now().unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let after = ThreadMarks::now().unwrap();
        assert!(after.cpu > before.cpu, "{before:?} {after:?}");
        assert!(after.preempted >= before.preempted);
        assert!(after.blocked >= before.blocked);
        assert!(after.faults >= before.faults);
    }
}
