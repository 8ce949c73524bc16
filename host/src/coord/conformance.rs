//! The claim-store conformance suite: what every [`ClaimStore`] must do.
//!
//! Both stores run it: the in-process store in this crate's unit tests, the
//! etcd store against a real `etcd` in `host/tests/coord_etcd.rs`. Each
//! check uses fresh runbook ids, so one store can run them all. A failed
//! check panics with what went wrong (this module is test support that
//! ships with the library so out-of-crate tests can run it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;

use super::runbook::{RunbookSpec, StepSpec};
use super::store::{Change, ClaimStore, CoordError, StepOutcome, StepRecord, StepState};

/// A lease no check outlives. Only the expiry check joins with the short
/// `ttl`; the others never renew, and on a loaded machine a short lease ran
/// out mid-check (six racing hosts doing 80 etcd writes each lost their
/// 1 s session on a 2-core CI box), which failed them for the wrong reason.
const LIVE_TTL: Duration = Duration::from_secs(60);

/// Runs every check against `store`. `ttl` is the shortest lease the store
/// honours (etcd rounds small TTLs up to its minimum, about 2 s); it is
/// used where expiry is the point, and [`LIVE_TTL`] everywhere else.
pub async fn run_all(store: Arc<dyn ClaimStore>, ttl: Duration) {
    submit_and_read(&*store).await;
    claims_are_exclusive(&*store, LIVE_TTL).await;
    finish_is_fenced_and_exactly_once(&*store, LIVE_TTL).await;
    release_counts_failures_and_refuses_stale_views(&*store, LIVE_TTL).await;
    an_uncounted_hand_back_can_be_claimed_again(&*store, LIVE_TTL).await;
    a_lost_session_cannot_write(&*store, LIVE_TTL).await;
    claims_expire_with_their_lease(&*store, ttl).await;
    skip_and_close(&*store, LIVE_TTL).await;
    watch_replays_and_follows(&*store, LIVE_TTL).await;
    racing_hosts_claim_each_step_once(store.clone(), LIVE_TTL).await;
}

fn unique(name: &str) -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    format!("conf-{name}-{}", hex::encode(b))
}

/// A runbook of `steps` independent steps `s000`, `s001`, ... (one retry
/// each) for exercising a store; benches use it too.
pub fn spec(steps: usize) -> RunbookSpec {
    RunbookSpec {
        name: "conformance".into(),
        description: String::new(),
        caller: "local".into(),
        traceparent: None,
        steps: (0..steps)
            .map(|i| {
                (
                    format!("s{i:03}"),
                    StepSpec {
                        module: "0".repeat(64),
                        policy: None,
                        input: String::new(),
                        depends_on: Vec::new(),
                        retries: 1,
                        timeout_ms: None,
                    },
                )
            })
            .collect(),
    }
}

fn done(output: &str, host: &str, fence: i64) -> StepRecord {
    StepRecord {
        outcome: StepOutcome::Completed {
            output: output.as_bytes().to_vec(),
        },
        host: host.into(),
        fence,
        attempts: 1,
        run_id: "r".into(),
    }
}

/// Stored runbooks read back whole; ids are unique; modules are kept.
pub async fn submit_and_read(store: &dyn ClaimStore) {
    let id = unique("submit");
    let module = (format!("{:064}", 7), b"\0asm-bytes".to_vec());
    let rev = store
        .submit(&id, &spec(3), std::slice::from_ref(&module))
        .await
        .unwrap();
    assert!(rev > 0, "submit returns the revision it was stored at");
    let view = store
        .runbook(&id)
        .await
        .unwrap()
        .expect("the runbook reads back");
    assert_eq!(view.spec, spec(3));
    assert_eq!(view.steps.len(), 3);
    assert!(view.steps.values().all(|s| s.state() == StepState::Pending));
    assert!(view.revision >= rev);
    assert!(!view.closed);
    assert!(store.active().await.unwrap().contains(&id));
    assert_eq!(store.module(&module.0).await.unwrap(), Some(module.1));
    assert_eq!(store.module(&"f".repeat(64)).await.unwrap(), None);
    assert_eq!(
        store.submit(&id, &spec(1), &[]).await,
        Err(CoordError::AlreadyExists(id.clone())),
        "a second submit with the same id is refused"
    );
    assert_eq!(store.runbook(&unique("absent")).await.unwrap(), None);
}

/// One holder at a time; the fence is a fresh revision.
pub async fn claims_are_exclusive(store: &dyn ClaimStore, ttl: Duration) {
    let id = unique("exclusive");
    let rev = store.submit(&id, &spec(1), &[]).await.unwrap();
    let a = store.join("host-a", ttl).await.unwrap();
    let b = store.join("host-b", ttl).await.unwrap();
    let claim = store
        .claim(&a, &id, "s000", 1)
        .await
        .unwrap()
        .expect("a free step is claimed");
    assert!(claim.fence > rev, "the fence is newer than the submission");
    assert_eq!(claim.attempt, 1);
    assert_eq!(
        store.claim(&b, &id, "s000", 1).await.unwrap(),
        None,
        "a held step cannot be claimed"
    );
    assert_eq!(
        store.claim(&a, &id, "s000", 1).await.unwrap(),
        None,
        "nor claimed twice by its holder"
    );
    let view = store.runbook(&id).await.unwrap().unwrap();
    let info = view.steps["s000"]
        .claim
        .clone()
        .expect("the claim is visible");
    assert_eq!(
        (info.holder.as_str(), info.fence, info.attempt),
        ("host-a", claim.fence, 1)
    );
    assert!(store.hosts().await.unwrap().contains(&"host-a".to_string()));
    store.leave(&a).await.unwrap();
    store.leave(&b).await.unwrap();
}

/// Results are written once, only under the claim's fence.
pub async fn finish_is_fenced_and_exactly_once(store: &dyn ClaimStore, ttl: Duration) {
    let id = unique("finish");
    store.submit(&id, &spec(1), &[]).await.unwrap();
    let a = store.join("host-a", ttl).await.unwrap();
    let claim = store.claim(&a, &id, "s000", 1).await.unwrap().unwrap();
    let mut forged = claim.clone();
    forged.fence += 1000;
    assert!(
        matches!(
            store
                .finish(&forged, &done("x", "host-a", forged.fence))
                .await,
            Err(CoordError::Fenced { .. })
        ),
        "a wrong fence writes nothing"
    );
    store
        .finish(&claim, &done("out", "host-a", claim.fence))
        .await
        .unwrap();
    let view = store.runbook(&id).await.unwrap().unwrap();
    assert_eq!(view.steps["s000"].state(), StepState::Completed);
    assert_eq!(view.steps["s000"].claim, None, "finishing drops the claim");
    assert_eq!(view.outputs()["s000"], b"out");
    assert!(
        matches!(
            store
                .finish(&claim, &done("again", "host-a", claim.fence))
                .await,
            Err(CoordError::Fenced { .. })
        ),
        "a second result is refused"
    );
    assert_eq!(
        store.claim(&a, &id, "s000", 1).await.unwrap(),
        None,
        "a finished step cannot be claimed"
    );
    assert_eq!(
        store.runbook(&id).await.unwrap().unwrap().outputs()["s000"],
        b"out"
    );
    store.leave(&a).await.unwrap();
}

/// Releasing records failures; a claim must agree with them.
pub async fn release_counts_failures_and_refuses_stale_views(
    store: &dyn ClaimStore,
    ttl: Duration,
) {
    let id = unique("release");
    store.submit(&id, &spec(1), &[]).await.unwrap();
    let a = store.join("host-a", ttl).await.unwrap();
    let first = store.claim(&a, &id, "s000", 1).await.unwrap().unwrap();
    store.release(&first, 1).await.unwrap();
    assert!(matches!(
        store.release(&first, 1).await,
        Err(CoordError::Fenced { .. })
    ));
    let view = store.runbook(&id).await.unwrap().unwrap();
    assert_eq!(view.steps["s000"].failures, 1);
    assert_eq!(view.steps["s000"].state(), StepState::Pending);
    assert_eq!(
        store.claim(&a, &id, "s000", 1).await.unwrap(),
        None,
        "a claim from a view that missed a failure is refused"
    );
    let second = store
        .claim(&a, &id, "s000", 2)
        .await
        .unwrap()
        .expect("the retry is claimed");
    assert_eq!(second.attempt, 2);
    assert!(second.fence > first.fence);
    store
        .finish(&second, &done("ok", "host-a", second.fence))
        .await
        .unwrap();
    store.leave(&a).await.unwrap();
}

/// A step handed back without counting an attempt (it never ran: the
/// module could not be fetched, the lease lapsed mid-run, the claim's
/// answer was lost) is claimed again as attempt 1, by any host.
pub async fn an_uncounted_hand_back_can_be_claimed_again(store: &dyn ClaimStore, ttl: Duration) {
    let id = unique("handback");
    store.submit(&id, &spec(1), &[]).await.unwrap();
    let a = store.join("host-a", ttl).await.unwrap();
    let b = store.join("host-b", ttl).await.unwrap();
    let first = store.claim(&a, &id, "s000", 1).await.unwrap().unwrap();
    store.release(&first, 0).await.unwrap();
    let view = store.runbook(&id).await.unwrap().unwrap();
    assert_eq!(view.steps["s000"].failures, 0);
    assert_eq!(view.steps["s000"].state(), StepState::Pending);
    let again = store
        .claim(&b, &id, "s000", 1)
        .await
        .unwrap()
        .expect("a step handed back uncounted is claimed again as attempt 1");
    assert_eq!(again.attempt, 1);
    assert!(again.fence > first.fence);
    store
        .finish(&again, &done("ok", "host-b", again.fence))
        .await
        .unwrap();
    store.leave(&a).await.unwrap();
    store.leave(&b).await.unwrap();
}

/// A host whose session ended cannot claim, renew or write.
pub async fn a_lost_session_cannot_write(store: &dyn ClaimStore, ttl: Duration) {
    let id = unique("lost");
    store.submit(&id, &spec(1), &[]).await.unwrap();
    let stale = store.join("stale", ttl).await.unwrap();
    let claim = store.claim(&stale, &id, "s000", 1).await.unwrap().unwrap();
    store.leave(&stale).await.unwrap();
    assert_eq!(
        store.runbook(&id).await.unwrap().unwrap().steps["s000"].claim,
        None,
        "its claims went with it"
    );
    assert!(matches!(
        store.keep_alive(&stale).await,
        Err(CoordError::SessionLost(_))
    ));
    assert!(matches!(
        store.claim(&stale, &id, "s000", 1).await,
        Err(CoordError::SessionLost(_))
    ));
    let fresh = store.join("fresh", ttl).await.unwrap();
    let taken = store
        .claim(&fresh, &id, "s000", 1)
        .await
        .unwrap()
        .expect("another host takes the step");
    assert!(taken.fence > claim.fence);
    assert!(
        matches!(
            store
                .finish(&claim, &done("stale", "stale", claim.fence))
                .await,
            Err(CoordError::Fenced { .. })
        ),
        "the stale host's result is refused"
    );
    assert!(matches!(
        store.release(&claim, 1).await,
        Err(CoordError::Fenced { .. })
    ));
    store
        .finish(&taken, &done("fresh", "fresh", taken.fence))
        .await
        .unwrap();
    assert_eq!(
        store.runbook(&id).await.unwrap().unwrap().outputs()["s000"],
        b"fresh"
    );
    store.leave(&fresh).await.unwrap();
}

/// A session that is not kept alive loses its claims after the TTL, and
/// one that is kept alive does not.
pub async fn claims_expire_with_their_lease(store: &dyn ClaimStore, ttl: Duration) {
    let id = unique("expire");
    store.submit(&id, &spec(2), &[]).await.unwrap();
    let dying = store.join("dying", ttl).await.unwrap();
    let living = store.join("living", ttl).await.unwrap();
    store.claim(&dying, &id, "s000", 1).await.unwrap().unwrap();
    let kept = store.claim(&living, &id, "s001", 1).await.unwrap().unwrap();
    let give_up = tokio::time::Instant::now() + ttl * 4 + Duration::from_secs(5);
    loop {
        store.keep_alive(&living).await.unwrap();
        let view = store.runbook(&id).await.unwrap().unwrap();
        assert!(
            view.steps["s001"].claim.is_some(),
            "a kept-alive claim must not expire"
        );
        if view.steps["s000"].claim.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the unrenewed claim never expired"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    assert!(matches!(
        store.keep_alive(&dying).await,
        Err(CoordError::SessionLost(_))
    ));
    store
        .finish(&kept, &done("kept", "living", kept.fence))
        .await
        .unwrap();
    store.leave(&living).await.unwrap();
}

/// Skipping writes a result only for a free step; closing ends the runbook.
pub async fn skip_and_close(store: &dyn ClaimStore, ttl: Duration) {
    let id = unique("skip");
    store.submit(&id, &spec(2), &[]).await.unwrap();
    let a = store.join("host-a", ttl).await.unwrap();
    store.claim(&a, &id, "s000", 1).await.unwrap().unwrap();
    let skipped = StepRecord {
        outcome: StepOutcome::Skipped {
            because: "x".into(),
        },
        host: String::new(),
        fence: 0,
        attempts: 0,
        run_id: String::new(),
    };
    assert!(
        !store.skip(&id, "s000", &skipped).await.unwrap(),
        "a claimed step is not skipped"
    );
    assert!(store.skip(&id, "s001", &skipped).await.unwrap());
    assert!(
        !store.skip(&id, "s001", &skipped).await.unwrap(),
        "nor skipped twice"
    );
    assert_eq!(
        store.runbook(&id).await.unwrap().unwrap().steps["s001"].state(),
        StepState::Skipped
    );
    store.close(&id).await.unwrap();
    store.close(&id).await.unwrap();
    assert!(!store.active().await.unwrap().contains(&id));
    assert!(store.runbook(&id).await.unwrap().unwrap().closed);
    assert!(matches!(
        store.close(&unique("absent")).await,
        Err(CoordError::NotFound(_))
    ));
    store.leave(&a).await.unwrap();
}

/// Watching from a revision replays what happened since, in order, then
/// follows live changes.
pub async fn watch_replays_and_follows(store: &dyn ClaimStore, ttl: Duration) {
    let id = unique("watch");
    let rev = store.submit(&id, &spec(2), &[]).await.unwrap();
    let a = store.join("host-a", ttl).await.unwrap();
    let c = store.claim(&a, &id, "s000", 1).await.unwrap().unwrap();
    store
        .finish(&c, &done("one", "host-a", c.fence))
        .await
        .unwrap();
    let mut events = store.watch(&id, rev).await.unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream stays open")
            .unwrap()
    };
    assert_eq!(next().await.change, Change::Submitted);
    let claimed = next().await;
    assert!(
        matches!(&claimed.change, Change::Claimed { step, holder, attempt: 1, fence } if step == "s000" && holder == "host-a" && *fence == c.fence),
        "{claimed:?}"
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next().await.change);
    }
    assert!(
        seen.contains(&Change::Unclaimed {
            step: "s000".into()
        }),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|c| matches!(c, Change::Finished { step, record } if step == "s000" && record.outcome == StepOutcome::Completed { output: b"one".to_vec() })),
        "{seen:?}"
    );
    // Live: a claim made after the watch started arrives too.
    let c2 = store.claim(&a, &id, "s001", 1).await.unwrap().unwrap();
    let live = next().await;
    assert!(live.revision >= c2.fence);
    assert!(
        matches!(live.change, Change::Claimed { ref step, .. } if step == "s001"),
        "{live:?}"
    );
    store
        .finish(&c2, &done("two", "host-a", c2.fence))
        .await
        .unwrap();
    store.close(&id).await.unwrap();
    let mut closed = false;
    for _ in 0..3 {
        if next().await.change == Change::Closed {
            closed = true;
            break;
        }
    }
    assert!(closed, "closing is an event");
    store.leave(&a).await.unwrap();
}

/// Hosts racing for the same steps each get a disjoint share, and every
/// step is claimed exactly once.
pub async fn racing_hosts_claim_each_step_once(store: Arc<dyn ClaimStore>, ttl: Duration) {
    let id = unique("race");
    let steps = 40;
    store.submit(&id, &spec(steps), &[]).await.unwrap();
    let mut tasks = Vec::new();
    for h in 0..6 {
        let store = store.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let session = store.join(&format!("racer-{h}"), ttl).await.unwrap();
            let mut won = Vec::new();
            for i in 0..steps {
                let step = format!("s{i:03}");
                if let Some(c) = store.claim(&session, &id, &step, 1).await.unwrap() {
                    store
                        .finish(&c, &done(&format!("racer-{h}"), &c.holder, c.fence))
                        .await
                        .unwrap();
                    won.push(step);
                }
            }
            store.leave(&session).await.unwrap();
            won
        }));
    }
    let mut all: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for step in t.await.unwrap() {
            *all.entry(step).or_default() += 1;
        }
    }
    assert_eq!(all.len(), steps, "every step was claimed");
    assert!(
        all.values().all(|n| *n == 1),
        "no step was claimed twice: {all:?}"
    );
    let view = store.runbook(&id).await.unwrap().unwrap();
    assert!(
        view.steps
            .values()
            .all(|s| s.state() == StepState::Completed)
    );
}
