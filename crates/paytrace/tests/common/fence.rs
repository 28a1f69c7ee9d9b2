//! The fence's cancellation rules, checked against any store: a call of
//! `TccResource::run` dropped at each of its await points, then retried as a
//! coordinator does, must leave the business effect done exactly once and
//! never answer "done" before it is.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use paytrace::tcc::{
    BoxFuture, BranchError, BranchKey, BranchOutcome, Decision, FenceError, FenceStore, Phase,
    RunId, TccResource,
};

/// Where a [`Stalling`] store stops answering, so that the test can drop
/// the call there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// In `begin`, before the store decided.
    BeginBefore,
    /// In `begin`, after the store decided (and held the branch): the
    /// answer never reaches the caller.
    BeginAfter,
    /// The handler's `n`th await (of [`HANDLER_AWAITS`]).
    Handler(usize),
    /// In `finish`, before the store recorded the result.
    FinishBefore,
    /// In `finish`, after it did.
    FinishAfter,
}

/// How many times the test handler awaits before its effect.
pub const HANDLER_AWAITS: usize = 3;

/// Every await point of a call.
pub fn points() -> Vec<Point> {
    let mut out = vec![Point::BeginBefore, Point::BeginAfter];
    out.extend((0..HANDLER_AWAITS).map(Point::Handler));
    out.extend([Point::FinishBefore, Point::FinishAfter]);
    out
}

/// A store that never returns from the chosen point of `begin` or `finish`
/// while `armed` (the next call through it), and otherwise passes through.
#[derive(Debug)]
pub struct Stalling<S> {
    pub inner: S,
    pub at: std::sync::Mutex<Option<Point>>,
}

impl<S: FenceStore> Stalling<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            at: std::sync::Mutex::new(None),
        }
    }

    fn stalls(&self, point: Point) -> bool {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) == Some(point)
    }
}

impl<S: FenceStore> FenceStore for Stalling<S> {
    fn begin<'a>(
        &'a self,
        key: &'a BranchKey,
        phase: Phase,
        run: RunId,
    ) -> BoxFuture<'a, Result<Decision, FenceError>> {
        Box::pin(async move {
            if self.stalls(Point::BeginBefore) {
                std::future::pending::<()>().await;
            }
            let decision = self.inner.begin(key, phase, run).await;
            if self.stalls(Point::BeginAfter) {
                std::future::pending::<()>().await;
            }
            decision
        })
    }

    fn finish<'a>(
        &'a self,
        key: &'a BranchKey,
        phase: Phase,
        run: RunId,
        succeeded: bool,
    ) -> BoxFuture<'a, Result<(), FenceError>> {
        Box::pin(async move {
            if self.stalls(Point::FinishBefore) {
                std::future::pending::<()>().await;
            }
            let done = self.inner.finish(key, phase, run, succeeded).await;
            if self.stalls(Point::FinishAfter) {
                std::future::pending::<()>().await;
            }
            done
        })
    }

    fn abandon(&self, key: &BranchKey, phase: Phase, run: RunId, handler_succeeded: Option<bool>) {
        self.inner.abandon(key, phase, run, handler_succeeded);
    }

    fn pending_now(&self) -> (usize, Duration) {
        self.inner.pending_now()
    }
}

/// The business handler: awaits [`HANDLER_AWAITS`] times (stalling at
/// `stall`, if it is one of them), then does its effect once.
async fn handler(effects: &AtomicUsize, stall: Option<Point>) -> Result<(), std::io::Error> {
    for n in 0..HANDLER_AWAITS {
        if stall == Some(Point::Handler(n)) {
            std::future::pending::<()>().await;
        }
        tokio::task::yield_now().await;
    }
    effects.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Brings `branch` to where `phase` runs: nothing for a Try, a Try done for
/// Confirm and Cancel.
async fn prepare(resource: &TccResource, branch: &BranchKey, phase: Phase) {
    if phase != Phase::Try {
        let tried = resource
            .run(Phase::Try, branch, || async { Ok::<_, std::io::Error>(()) })
            .await;
        assert!(matches!(tried, Ok(BranchOutcome::Ran(()))), "{tried:?}");
    }
}

/// For each phase and each await point: a call dropped there (an outer
/// timeout), then the coordinator's retries until an answer. The effect is
/// done exactly once, no answer says "done" before it is, and a call that
/// found the branch held was told to retry (`Busy`), never "done".
///
/// `store` must be a [`Stalling`] around the store under test, shared with
/// `resource`.
pub async fn dropped_at_every_await_point<S: FenceStore>(
    resource: &TccResource,
    store: &Stalling<S>,
    name: &str,
) {
    for phase in [Phase::Try, Phase::Confirm, Phase::Cancel] {
        for point in points() {
            let branch = BranchKey {
                xid: format!("{name}-{}-{point:?}", phase.as_str()),
                branch_id: "b".into(),
            };
            prepare(resource, &branch, phase).await;
            let effects = AtomicUsize::new(0);
            *store.at.lock().unwrap_or_else(|e| e.into_inner()) = Some(point);
            let stalled_handler = matches!(point, Point::Handler(_)).then_some(point);
            let call = resource.run(phase, &branch, || handler(&effects, stalled_handler));
            let dropped = tokio::time::timeout(Duration::from_millis(200), call).await;
            assert!(dropped.is_err(), "{phase:?} at {point:?} did not stall");
            *store.at.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let done_before = effects.load(Ordering::SeqCst);
            assert!(done_before <= 1);

            // The coordinator retries until it gets an answer.
            let deadline = Instant::now() + Duration::from_secs(10);
            let answer = loop {
                let answer = resource
                    .run(phase, &branch, || handler(&effects, None))
                    .await;
                match answer {
                    Err(BranchError::Fence(FenceError::Busy(_))) => {
                        assert!(
                            Instant::now() < deadline,
                            "{name}: {phase:?} dropped at {point:?} stays busy"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => break other,
                }
            };
            let effects = effects.load(Ordering::SeqCst);
            match answer {
                Ok(BranchOutcome::Ran(())) => assert_eq!(
                    (done_before, effects),
                    (0, 1),
                    "{name}: {phase:?} at {point:?} ran again after its effect was done"
                ),
                Ok(BranchOutcome::Skipped(anomaly)) => {
                    assert_eq!(
                        effects, 1,
                        "{name}: {phase:?} at {point:?}: answered done with nothing done"
                    );
                    assert!(
                        anomaly.is_none() || matches!(phase, Phase::Confirm | Phase::Cancel),
                        "{anomaly:?}"
                    );
                }
                other => panic!("{name}: {phase:?} at {point:?}: {other:?}"),
            }
        }
    }
}

/// While one call's handler runs, a second call for the branch is told to
/// retry, whatever its phase; once the first is done, a repeat is skipped.
pub async fn a_held_branch_is_busy(resource: &TccResource, name: &str) {
    let branch = BranchKey {
        xid: format!("{name}-busy"),
        branch_id: "b".into(),
    };
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel::<()>();
    let first = {
        let (resource, branch) = (resource.clone(), branch.clone());
        tokio::spawn(async move {
            resource
                .run(Phase::Try, &branch, || async move {
                    let _ = started.send(());
                    let _ = released.await;
                    Ok::<_, std::io::Error>(())
                })
                .await
                .map_err(|e| e.to_string())
        })
    };
    running.await.expect("the first handler runs");
    for phase in [Phase::Try, Phase::Confirm, Phase::Cancel] {
        let second = resource
            .run(phase, &branch, || async { Ok::<_, std::io::Error>(()) })
            .await;
        assert!(
            matches!(
                second,
                Err(BranchError::Fence(FenceError::Busy(Phase::Try)))
            ),
            "{name}: {phase:?} while the Try runs: {second:?}"
        );
    }
    let _ = release.send(());
    let first = first.await.expect("no panic");
    assert!(matches!(first, Ok(BranchOutcome::Ran(()))), "{first:?}");
    let repeat = resource
        .run(Phase::Try, &branch, || async {
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert!(
        matches!(repeat, Ok(BranchOutcome::Skipped(None))),
        "{repeat:?}"
    );
}
