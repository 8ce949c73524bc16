//! This host's own view of how long its session lease still holds.
//!
//! The claim store expires a lease `ttl` after the last renewal *it
//! received*; this host sends that renewal before it hears back, so the
//! instant "renewal sent + ttl" is never later than the store's expiry. A
//! step run that outlives that instant may already be running on another
//! host (the store handed the step on when the lease lapsed), so the run is
//! cancelled there, and no new step starts on a lease with less than a
//! margin left. A host that stops (SIGSTOP, a long GC-like pause of the
//! whole process, a VM freeze) sees the instant passed on the monotonic
//! clock as soon as it runs again, before it can touch the sandbox.
//!
//! The promise this keeps: a step runs at least once, and never on two
//! hosts at once for longer than the time it takes to drop a sandbox
//! (plus clock-rate drift between this host and the store over one TTL).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The lease a session holds and the instant this host must assume it
/// lapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    lease: i64,
    until: Instant,
}

/// Shared by the coordinator loop (which renews) and every running step
/// (which must stop when the lease lapses).
#[derive(Debug)]
pub(super) struct LeaseClock {
    held: watch::Sender<Option<Held>>,
}

impl LeaseClock {
    pub(super) fn new() -> Self {
        Self {
            held: watch::Sender::new(None),
        }
    }

    /// `lease` was granted or renewed by a request sent at `sent`; it holds
    /// until at least `sent + ttl`.
    pub(super) fn renewed(&self, lease: i64, sent: Instant, ttl: Duration) {
        let until = sent + ttl;
        self.held.send_if_modified(|held| match held {
            // Answers can arrive out of order; never move the instant back.
            Some(h) if h.lease == lease && h.until >= until => false,
            _ => {
                *held = Some(Held { lease, until });
                true
            }
        });
    }

    /// The session is gone (the store said so, or it was left).
    pub(super) fn lost(&self) {
        self.held.send_replace(None);
    }

    /// How long `lease` still holds by this host's reckoning; zero when it
    /// has lapsed or was replaced.
    pub(super) fn remaining(&self, lease: i64) -> Duration {
        match *self.held.borrow() {
            Some(h) if h.lease == lease => h.until.saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        }
    }

    /// Resolves once `lease` lapses by this host's reckoning (its instant
    /// passes without a renewal) or the session is lost or replaced.
    pub(super) async fn lapsed(&self, lease: i64) {
        let mut rx = self.held.subscribe();
        loop {
            let until = match *rx.borrow_and_update() {
                Some(h) if h.lease == lease => h.until,
                _ => return,
            };
            if until <= Instant::now() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_renewed_lease_holds_and_an_unrenewed_one_lapses_at_its_instant() {
        let clock = LeaseClock::new();
        let ttl = Duration::from_millis(300);
        let start = Instant::now();
        clock.renewed(7, start, ttl);
        assert!(clock.remaining(7) <= ttl && clock.remaining(7) > Duration::ZERO);
        assert_eq!(clock.remaining(8), Duration::ZERO, "another lease");
        tokio::time::sleep(Duration::from_millis(120)).await;
        let renewed = Instant::now();
        clock.renewed(7, renewed, ttl);
        // An older answer arriving late does not shorten it.
        clock.renewed(7, start, ttl);
        clock.lapsed(7).await;
        // Never before the renewed instant (timers do not fire early).
        assert!(Instant::now() >= renewed + ttl);
        assert_eq!(clock.remaining(7), Duration::ZERO);
    }

    #[tokio::test]
    async fn losing_or_replacing_the_session_lapses_it_at_once() {
        let clock = std::sync::Arc::new(LeaseClock::new());
        clock.renewed(1, Instant::now(), Duration::from_secs(60));
        let waiter = tokio::spawn({
            let clock = clock.clone();
            async move { clock.lapsed(1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        clock.lost();
        waiter.await.unwrap();
        clock.renewed(2, Instant::now(), Duration::from_secs(60));
        // A step holding lease 1 sees lease 2 as its own loss.
        tokio::time::timeout(Duration::from_millis(1), clock.lapsed(1))
            .await
            .expect("lapsed at once");
    }
}
