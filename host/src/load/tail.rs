//! Why a slow run was slow (`chassis load --explain-tail`).
//!
//! A run in the tail (over 10x the median) took that long either because
//! it did not have its thread, or because its thread did not have the CPU,
//! or because the work itself took that long. The kernel keeps the
//! evidence per thread: its CPU time (`CLOCK_THREAD_CPUTIME_ID`, which
//! leaves out time the hypervisor ran another guest on this virtual CPU
//! when the kernel accounts steal time, as KVM guests' kernels do), its
//! involuntary and voluntary context switches, and its page faults
//! (`getrusage(RUSAGE_THREAD)`). Read before and after each poll of a run
//! (so each pair is read on one thread, wherever the run's task moves),
//! these say which [`TailCause`] each run had, and the report counts them
//! over the tail, so a load tester can tell the host's slowness from the
//! machine's. Linux only, as the host is.
//!
//! Reading them costs four system calls per poll (~1 µs on the 2-vCPU VM of
//! BENCHMARKS.md, on runs of ~7 µs that finish in one poll), which is why
//! it is asked for, not always on.

use std::time::Duration;

use serde::Serialize;

/// What one thread had been through at an instant.
#[derive(Debug, Clone, Copy)]
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
        // The kernel's counters are never negative.
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

/// What the threads that polled one run went through while they did: the
/// sums over its polls of the change between the marks around each.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spent {
    polls: u32,
    cpu: Duration,
    preempted: u64,
    blocked: u64,
    faults: u64,
    /// A poll whose marks could not both be read.
    unread: bool,
}

impl Spent {
    /// Adds one poll, read as `before` and `after` on the thread that
    /// polled (`None`: the kernel would not say).
    pub(crate) fn add(&mut self, before: Option<ThreadMarks>, after: Option<ThreadMarks>) {
        self.polls = self.polls.saturating_add(1);
        let (Some(before), Some(after)) = (before, after) else {
            self.unread = true;
            return;
        };
        self.cpu += after.cpu.saturating_sub(before.cpu);
        self.preempted += after.preempted.saturating_sub(before.preempted);
        self.blocked += after.blocked.saturating_sub(before.blocked);
        self.faults += after.faults.saturating_sub(before.faults);
    }
}

/// Why a run took as long as it did, as its threads' marks tell it.
///
/// A run has the first of these that applies, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TailCause {
    /// Another thread or process took the CPU from the thread polling the
    /// run, during one of its polls.
    Preempted,
    /// The thread polling it slept in the kernel during a poll (a contended
    /// lock, a blocking call).
    Blocked,
    /// The run gave up its thread at least once (it yielded at an epoch
    /// tick, or waited on I/O, a timer or a pool slot) and waited its turn
    /// while other tasks ran.
    Suspended,
    /// Its thread kept the CPU, by the kernel's account, yet had less than
    /// half the run's wall time on it: the virtual CPU itself was not
    /// running (hypervisor steal time; also interrupt time, on a kernel
    /// that accounts IRQ time apart from the thread's).
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
    /// The kernel would not give the thread's counters.
    Unexplained,
}

impl TailCause {
    /// Every cause, in the order a run is given the first that applies.
    pub const ALL: [Self; 7] = [
        Self::Preempted,
        Self::Blocked,
        Self::Suspended,
        Self::Stolen,
        Self::PageFaults,
        Self::OnCpu,
        Self::Unexplained,
    ];

    /// The name reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preempted => "preempted",
            Self::Blocked => "blocked",
            Self::Suspended => "suspended",
            Self::Stolen => "stolen",
            Self::PageFaults => "page-faults",
            Self::OnCpu => "on-cpu",
            Self::Unexplained => "unexplained",
        }
    }

    /// The cause of a run that took `wall` and went through `spent`.
    pub(crate) fn of(wall: Duration, spent: &Spent) -> Self {
        if spent.unread {
            Self::Unexplained
        } else if spent.preempted > 0 {
            Self::Preempted
        } else if spent.blocked > 0 {
            Self::Blocked
        } else if spent.polls > 1 {
            Self::Suspended
        } else if spent.cpu * 2 < wall {
            Self::Stolen
        } else if spent.faults > 0 {
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

    fn marks(cpu_ms: u64, preempted: u64, blocked: u64, faults: u64) -> Option<ThreadMarks> {
        Some(ThreadMarks {
            cpu: MS * cpu_ms as u32,
            preempted,
            blocked,
            faults,
        })
    }

    /// One poll from `marks(100, 5, 7, 11)` to `after`.
    fn one_poll(after: Option<ThreadMarks>) -> Spent {
        let mut spent = Spent::default();
        spent.add(marks(100, 5, 7, 11), after);
        spent
    }

    #[test]
    fn each_cause_is_told_from_the_marks_in_order() {
        let of = |spent: Spent| TailCause::of(4 * MS, &spent);
        assert_eq!(of(one_poll(marks(101, 6, 8, 12))), TailCause::Preempted);
        assert_eq!(of(one_poll(marks(101, 5, 8, 12))), TailCause::Blocked);
        // 1 ms of CPU in a 4 ms run, never switched out.
        assert_eq!(of(one_poll(marks(101, 5, 7, 12))), TailCause::Stolen);
        assert_eq!(of(one_poll(marks(103, 5, 7, 12))), TailCause::PageFaults);
        assert_eq!(of(one_poll(marks(104, 5, 7, 11))), TailCause::OnCpu);
        // Exactly half the wall on the CPU is not stolen.
        assert_eq!(of(one_poll(marks(102, 5, 7, 11))), TailCause::OnCpu);
        assert_eq!(of(one_poll(None)), TailCause::Unexplained);
    }

    #[test]
    fn a_run_polled_twice_is_suspended_unless_a_poll_lost_its_cpu() {
        // Two quick polls on two threads whose counters differ: the
        // changes are summed per poll, never across threads.
        let mut waited = Spent::default();
        waited.add(marks(100, 5, 7, 11), marks(100, 5, 7, 11));
        waited.add(marks(900, 50, 70, 110), marks(900, 50, 70, 110));
        assert_eq!(TailCause::of(4 * MS, &waited), TailCause::Suspended);
        // Preempted in its first poll (and so yielding at the next epoch
        // tick): preempted.
        let mut preempted = Spent::default();
        preempted.add(marks(100, 5, 7, 11), marks(101, 6, 7, 11));
        preempted.add(marks(900, 50, 70, 110), marks(900, 50, 70, 110));
        assert_eq!(TailCause::of(4 * MS, &preempted), TailCause::Preempted);
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
