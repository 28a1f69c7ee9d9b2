//! The TCC fence: the state machine that keeps a participant's Try, Confirm
//! and Cancel safe against the network's reorderings, and names every
//! anomaly it stops.
//!
//! The rules, per branch (global transaction id + branch id):
//!
//! | phase | no record | `Tried` | `Confirmed` | `Cancelled` | `RolledBackEmpty` |
//! |---|---|---|---|---|---|
//! | Try | record `Tried`, **run** | skip (repeat) | skip (repeat) | reject `hanging_try` | reject `hanging_try` |
//! | Confirm | reject `confirm_without_try` | `Confirmed`, **run** | skip `duplicate_confirm` | reject `confirm_after_cancel` | reject `confirm_after_cancel` |
//! | Cancel | record `RolledBackEmpty`, skip `empty_rollback` | `Cancelled`, **run** | reject `cancel_after_confirm` | skip `duplicate_cancel` | skip `duplicate_cancel` |
//!
//! The business handler runs only on **run**. If it then fails, the branch
//! goes back to the state it had, so the coordinator's retry can run it again.
//!
//! # Holding a branch: cancellation and crashes
//!
//! "Skipped" tells the coordinator that the phase's business effect is
//! done. So the fence keeps these rules while a handler runs:
//!
//! 1. **A run holds its branch** from the decision to run until the
//!    handler's result is recorded. Any other call for the branch meanwhile
//!    gets [`FenceError::Busy`] (answer "retry later"), never `Skipped`: the
//!    first call may still fail or be dropped.
//! 2. **A dropped call puts the branch back.** When [`TccResource::run`]'s
//!    future is dropped before its handler returned (an outer `timeout`, a
//!    client that hung up, `select!`), the branch goes back to the state it
//!    had before, at once, and `paytrace_tcc_phase_total` counts the call
//!    `cancelled`. The coordinator's retry then decides afresh and runs the
//!    handler again. Dropped after the handler returned, its result is
//!    recorded as if the call had finished.
//! 3. **A crashed holder is undone by its lease** (shared stores). The
//!    Redis fence keeps the hold in the branch's record with a lease
//!    (`RedisFence::with_lease`, feature `redis`, 60 s unless set);
//!    a process killed while holding leaves the branch busy until the lease
//!    passes, then the next call puts the branch back as in rule 2.
//!
//! What the fence cannot know is whether a handler that was dropped or
//! killed had already committed its effect in another store. Rules 2 and 3
//! then run it again: make the handler's effect idempotent by branch, or
//! commit it at its last await. Or keep the fence where the effect is:
//! `SqlFence` (features `sqlx-postgres`, `sqlx-mysql`, `sqlx-sqlite`;
//! `ServiceTelemetry::tcc_sql`) decides in the business
//! transaction, so that the branch's state and the effect commit together. The memory fence ([`MemoryFence`]) keeps
//! everything in the process: nothing survives a restart, and it guards
//! one process only. `docs/tcc-fence.md` says which store gives which
//! guarantee.
//!
//! The phases, states, anomaly kinds and this table ([`decide`]) live in the
//! `paytrace-tcc` crate, which the aggregator's replay of participants
//! without a fence follows too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cardinality::OTHER;

#[cfg(feature = "redis")]
pub use crate::tcc_redis::{RedisEffect, RedisFence, RedisResource};
#[cfg(any(
    feature = "sqlx-postgres",
    feature = "sqlx-mysql",
    feature = "sqlx-sqlite"
))]
pub use crate::tcc_sql::{DEFAULT_TABLE, FenceDatabase, MAX_ID_LEN, SqlFence};

pub use paytrace_tcc::{Anomaly, BranchState, Decision, Phase, decide};

/// Identifies a branch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BranchKey {
    /// The global transaction id.
    pub xid: String,
    /// The branch id.
    pub branch_id: String,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    state: BranchState,
    since: Instant,
}

/// A branch a `Run` decision holds, until its result is recorded.
#[derive(Clone, Copy, Debug)]
struct Hold {
    phase: Phase,
    run: RunId,
    /// What the branch was before.
    previous: Option<Record>,
}

/// Why the fence store could not decide.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FenceError {
    /// The store holds its maximum of records, all of them frozen branches.
    #[error("the fence holds {0} records, all tried and waiting: refusing new branches")]
    Full(usize),
    /// The store could not be reached or refused the transition.
    #[error("the fence store failed: {0}")]
    Store(String),
    /// Another call holds the branch: its handler for this phase is running
    /// (or, in a shared store, its process died and its lease has not
    /// passed). Answer "retry later"; the retry decides afresh.
    #[error("another call holds this branch for its {}: retry later", .0.as_str())]
    Busy(Phase),
    /// The call or the fence's settings cannot be stored as given (an id
    /// longer than the store's column, a table name that is not one).
    #[error("the TCC fence cannot take this: {0}")]
    Invalid(String),
}

/// Identifies one call of [`TccResource::run`] to its fence store, so that
/// `finish` and `abandon` release only the hold that call took (a shared
/// store's hold may pass to another call once its lease ran out).
///
/// ```
/// use paytrace::tcc::RunId;
/// assert_ne!(RunId::new(), RunId::new());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunId(u64);

impl RunId {
    /// A new id, unique in this process.
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

/// A boxed future, so that [`FenceStore`] can be used as a trait object.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where a fence keeps its branch records. Each transition must be atomic:
/// concurrent calls for one branch, from any number of processes sharing
/// the store, see one order; and a [`Decision::Run`] holds the branch until
/// `finish` or `abandon` (the module's rules 1 to 3).
///
/// [`MemoryFence`] keeps them in the process; with the `redis` feature,
/// `RedisFence` shares them between processes.
pub trait FenceStore: Send + Sync + std::fmt::Debug + 'static {
    /// Decides `phase` for `key` and records the new state (see [`decide`]);
    /// on [`Decision::Run`], holds the branch for `run`. A branch another
    /// call holds is [`FenceError::Busy`].
    fn begin<'a>(
        &'a self,
        key: &'a BranchKey,
        phase: Phase,
        run: RunId,
    ) -> BoxFuture<'a, Result<Decision, FenceError>>;

    /// Completes `run`'s [`Decision::Run`] and releases its hold: on failure
    /// the branch goes back to the state it had.
    fn finish<'a>(
        &'a self,
        key: &'a BranchKey,
        phase: Phase,
        run: RunId,
        succeeded: bool,
    ) -> BoxFuture<'a, Result<(), FenceError>>;

    /// `run` was dropped after `begin` was called and before `finish`
    /// completed. `handler_succeeded` is `None` while the handler had not
    /// returned: put the branch back as it was before `begin` (nothing when
    /// `run` holds nothing); `Some(ok)` once it had: record it as `finish`
    /// would. Called from `Drop`, so it must not block; a store that needs
    /// I/O does it in the background, and its lease covers what a dying
    /// process leaves undone.
    fn abandon(&self, key: &BranchKey, phase: Phase, run: RunId, handler_succeeded: Option<bool>);

    /// Tried branches waiting for phase two and the age of the oldest, as
    /// last known (read at every scrape, so it must not block).
    fn pending_now(&self) -> (usize, Duration);
}

impl FenceStore for MemoryFence {
    fn begin<'a>(
        &'a self,
        key: &'a BranchKey,
        phase: Phase,
        run: RunId,
    ) -> BoxFuture<'a, Result<Decision, FenceError>> {
        Box::pin(std::future::ready(self.decide_for(
            key,
            phase,
            run,
            Instant::now(),
        )))
    }

    fn finish<'a>(
        &'a self,
        key: &'a BranchKey,
        _phase: Phase,
        run: RunId,
        succeeded: bool,
    ) -> BoxFuture<'a, Result<(), FenceError>> {
        self.release(key, |hold| hold.run == run, succeeded);
        Box::pin(std::future::ready(Ok(())))
    }

    fn abandon(&self, key: &BranchKey, _phase: Phase, run: RunId, handler_succeeded: Option<bool>) {
        self.release(
            key,
            |hold| hold.run == run,
            handler_succeeded.unwrap_or(false),
        );
    }

    fn pending_now(&self) -> (usize, Duration) {
        self.pending(Instant::now())
    }
}

/// An in-memory fence store: bounded, finished records cleaned after a
/// retention period, tried records never cleaned (they are what "frozen"
/// means). Every transition is atomic under one lock.
///
/// What it is: one process's fence, without durability. Two replicas of a
/// participant each have their own (so a repeat that reaches the other
/// replica runs again), and a restart forgets every branch (a Confirm after
/// it is `confirm_without_try`). Use the Redis fence, or the barrier in the
/// business database, for anything that runs more than one process.
///
/// ```
/// use std::time::{Duration, Instant};
/// use paytrace::tcc::{BranchKey, Decision, MemoryFence, Phase};
///
/// let fence = MemoryFence::new(1000, Duration::from_secs(600));
/// let key = BranchKey { xid: "ord_1".into(), branch_id: "inventory".into() };
/// let now = Instant::now();
/// assert_eq!(fence.begin(&key, Phase::Try, now).unwrap(), Decision::Run);
/// fence.finish(&key, Phase::Try, true);
/// assert_eq!(fence.pending(now).0, 1);
/// ```
#[derive(Debug)]
pub struct MemoryFence {
    records: Mutex<HashMap<BranchKey, Record>>,
    /// The branches a `Run` decision holds, until `finish`.
    held: Mutex<HashMap<BranchKey, Hold>>,
    max_records: usize,
    retention: Duration,
}

impl MemoryFence {
    /// A fence holding at most `max_records`, cleaning finished records
    /// older than `retention`.
    pub fn new(max_records: usize, retention: Duration) -> Self {
        Self {
            records: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            max_records,
            retention,
        }
    }

    /// Decides `phase` for `key` at `now` and records the new state. After
    /// a [`Decision::Run`], which holds the branch, call
    /// [`MemoryFence::finish`] with the business handler's result; until
    /// then every call for the branch is [`FenceError::Busy`].
    pub fn begin(
        &self,
        key: &BranchKey,
        phase: Phase,
        now: Instant,
    ) -> Result<Decision, FenceError> {
        self.decide_for(key, phase, RunId::new(), now)
    }

    /// [`MemoryFence::begin`] for the call `run`.
    fn decide_for(
        &self,
        key: &BranchKey,
        phase: Phase,
        run: RunId,
        now: Instant,
    ) -> Result<Decision, FenceError> {
        let mut records = crate::sync::lock(&self.records);
        // Lock order: records, then held, everywhere.
        let mut held = crate::sync::lock(&self.held);
        if let Some(hold) = held.get(key) {
            return Err(FenceError::Busy(hold.phase));
        }
        let previous = records.get(key).copied();
        if previous.is_none() && records.len() >= self.max_records {
            self.expire(&mut records, &held, now);
            if records.len() >= self.max_records {
                // Make room from the oldest finished records before refusing
                // (never one a run holds: its handler is still running).
                let mut finished: Vec<(BranchKey, Instant)> = records
                    .iter()
                    .filter(|(k, r)| r.state.is_finished() && !held.contains_key(*k))
                    .map(|(k, r)| (k.clone(), r.since))
                    .collect();
                finished.sort_by_key(|(_, since)| *since);
                let excess = records.len() + 1 - self.max_records;
                for (k, _) in finished.into_iter().take(excess) {
                    records.remove(&k);
                }
                if records.len() >= self.max_records {
                    return Err(FenceError::Full(self.max_records));
                }
            }
        }
        let (decision, next) = decide(previous.map(|r| r.state), phase);
        match next {
            Some(state) if Some(state) != previous.map(|r| r.state) => {
                records.insert(key.clone(), Record { state, since: now });
            }
            _ => {}
        }
        if decision == Decision::Run {
            held.insert(
                key.clone(),
                Hold {
                    phase,
                    run,
                    previous,
                },
            );
        }
        Ok(decision)
    }

    /// Completes a [`Decision::Run`] and releases the branch: when the
    /// business handler failed, the branch goes back to the state it had, so
    /// a retry runs it again. Nothing when `phase` holds nothing.
    pub fn finish(&self, key: &BranchKey, phase: Phase, succeeded: bool) {
        self.release(key, |hold| hold.phase == phase, succeeded);
    }

    /// Releases `key`'s hold if `ours` says it is the caller's; puts the
    /// branch back unless `succeeded`.
    fn release(&self, key: &BranchKey, ours: impl Fn(&Hold) -> bool, succeeded: bool) {
        let mut records = crate::sync::lock(&self.records);
        let mut held = crate::sync::lock(&self.held);
        if !held.get(key).is_some_and(&ours) {
            return;
        }
        let Some(Hold { previous, .. }) = held.remove(key) else {
            return;
        };
        drop(held);
        if succeeded {
            return;
        }
        match previous {
            Some(r) => {
                records.insert(key.clone(), r);
            }
            None => {
                records.remove(key);
            }
        }
    }

    /// The state of `key`, if recorded.
    pub fn state(&self, key: &BranchKey) -> Option<BranchState> {
        crate::sync::lock(&self.records).get(key).map(|r| r.state)
    }

    /// Tried branches waiting for phase two, and the age of the oldest.
    pub fn pending(&self, now: Instant) -> (usize, Duration) {
        let records = crate::sync::lock(&self.records);
        let tried = records.values().filter(|r| r.state == BranchState::Tried);
        let (count, oldest) = tried.fold((0, None::<Instant>), |(n, oldest), r| {
            (n + 1, Some(oldest.map_or(r.since, |o| o.min(r.since))))
        });
        (
            count,
            oldest.map_or(Duration::ZERO, |o| now.saturating_duration_since(o)),
        )
    }

    /// Drops finished records older than the retention period; returns how many.
    pub fn clean(&self, now: Instant) -> usize {
        let mut records = crate::sync::lock(&self.records);
        let held = crate::sync::lock(&self.held);
        let before = records.len();
        self.expire(&mut records, &held, now);
        before - records.len()
    }

    /// Drops the finished records older than the retention period, but for
    /// those a run holds.
    fn expire(
        &self,
        records: &mut HashMap<BranchKey, Record>,
        held: &HashMap<BranchKey, Hold>,
        now: Instant,
    ) {
        let retention = self.retention;
        records.retain(|k, r| {
            !(r.state.is_finished()
                && now.saturating_duration_since(r.since) >= retention
                && !held.contains_key(k))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: &str) -> BranchKey {
        BranchKey {
            xid: "x".into(),
            branch_id: b.into(),
        }
    }

    #[test]
    fn every_transition_of_the_table() {
        use Anomaly::*;
        use BranchState::*;
        use Decision::*;
        let table = [
            (None, Phase::Try, Run, Some(Tried)),
            (Some(Tried), Phase::Try, Skip(None), Some(Tried)),
            (Some(Confirmed), Phase::Try, Skip(None), Some(Confirmed)),
            (
                Some(Cancelled),
                Phase::Try,
                Reject(HangingTry),
                Some(Cancelled),
            ),
            (
                Some(RolledBackEmpty),
                Phase::Try,
                Reject(HangingTry),
                Some(RolledBackEmpty),
            ),
            (None, Phase::Confirm, Reject(ConfirmWithoutTry), None),
            (Some(Tried), Phase::Confirm, Run, Some(Confirmed)),
            (
                Some(Confirmed),
                Phase::Confirm,
                Skip(Some(DuplicateConfirm)),
                Some(Confirmed),
            ),
            (
                Some(Cancelled),
                Phase::Confirm,
                Reject(ConfirmAfterCancel),
                Some(Cancelled),
            ),
            (
                Some(RolledBackEmpty),
                Phase::Confirm,
                Reject(ConfirmAfterCancel),
                Some(RolledBackEmpty),
            ),
            (
                None,
                Phase::Cancel,
                Skip(Some(EmptyRollback)),
                Some(RolledBackEmpty),
            ),
            (Some(Tried), Phase::Cancel, Run, Some(Cancelled)),
            (
                Some(Confirmed),
                Phase::Cancel,
                Reject(CancelAfterConfirm),
                Some(Confirmed),
            ),
            (
                Some(Cancelled),
                Phase::Cancel,
                Skip(Some(DuplicateCancel)),
                Some(Cancelled),
            ),
            (
                Some(RolledBackEmpty),
                Phase::Cancel,
                Skip(Some(DuplicateCancel)),
                Some(RolledBackEmpty),
            ),
        ];
        for (state, phase, decision, next) in table {
            assert_eq!(
                decide(state, phase),
                (decision, next),
                "{state:?} {phase:?}"
            );
        }
    }

    #[test]
    fn a_failed_handler_puts_the_branch_back() {
        let fence = MemoryFence::new(10, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(fence.begin(&key("a"), Phase::Try, now), Ok(Decision::Run));
        fence.finish(&key("a"), Phase::Try, false);
        assert_eq!(fence.state(&key("a")), None, "the Try can run again");
        assert_eq!(fence.begin(&key("a"), Phase::Try, now), Ok(Decision::Run));
        fence.finish(&key("a"), Phase::Try, true);
        assert_eq!(
            fence.begin(&key("a"), Phase::Confirm, now),
            Ok(Decision::Run)
        );
        fence.finish(&key("a"), Phase::Confirm, false);
        assert_eq!(
            fence.state(&key("a")),
            Some(BranchState::Tried),
            "the Confirm can be retried"
        );
    }

    #[test]
    fn an_empty_rollback_blocks_the_late_try() {
        let fence = MemoryFence::new(10, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(
            fence.begin(&key("b"), Phase::Cancel, now),
            Ok(Decision::Skip(Some(Anomaly::EmptyRollback)))
        );
        assert_eq!(
            fence.begin(&key("b"), Phase::Try, now),
            Ok(Decision::Reject(Anomaly::HangingTry))
        );
    }

    #[test]
    fn finished_records_are_cleaned_tried_ones_never() {
        let fence = MemoryFence::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for b in ["a", "b"] {
            fence.begin(&key(b), Phase::Try, t0).expect("room");
            fence.finish(&key(b), Phase::Try, true);
        }
        fence.begin(&key("a"), Phase::Confirm, t0).expect("room");
        fence.finish(&key("a"), Phase::Confirm, true);
        assert_eq!(fence.clean(t0 + Duration::from_secs(61)), 1);
        assert_eq!(fence.state(&key("b")), Some(BranchState::Tried));
        assert_eq!(
            fence.pending(t0 + Duration::from_secs(61)),
            (1, Duration::from_secs(61))
        );

        // Full of frozen branches: a new branch is refused, not dropped silently.
        for b in ["c", "d"] {
            fence.begin(&key(b), Phase::Try, t0).expect("room");
            fence.finish(&key(b), Phase::Try, true);
        }
        assert_eq!(
            fence.begin(&key("e"), Phase::Try, t0),
            Err(FenceError::Full(3))
        );
    }
}

/// How a branch call ended when the fence let it through or skipped it.
#[derive(Debug, PartialEq, Eq)]
pub enum BranchOutcome<T> {
    /// The business handler ran and returned this.
    Ran(T),
    /// The fence skipped the handler: a repeat, or an empty rollback (with
    /// the anomaly, if it is one). Answer success.
    Skipped(Option<Anomaly>),
}

/// Why a branch call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BranchError<E> {
    /// The fence refused the call; answer failure, do not retry.
    #[error("the TCC fence rejected the call: {}", .0.as_str())]
    Rejected(Anomaly),
    /// The business handler failed; the branch is as before, retry.
    #[error("the TCC handler failed: {0}")]
    Handler(E),
    /// The fence could not record the branch.
    #[error(transparent)]
    Fence(#[from] FenceError),
}

/// A TCC resource of one service (`inventory`, `coupon`, …) guarded by a
/// fence, with its metrics. Made by [`crate::ServiceTelemetry::tcc`].
///
/// ```
/// # #[tokio::main] async fn main() {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use paytrace::tcc::{BranchError, BranchKey, BranchOutcome, MemoryFence, Phase};
///
/// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
/// let stock = svc.tcc("inventory", Arc::new(MemoryFence::new(10_000, Duration::from_secs(600))));
/// let branch = BranchKey { xid: "ord_1".into(), branch_id: "inventory".into() };
///
/// // A Cancel overtakes its Try: an empty rollback, then a hanging Try.
/// let cancel = stock.run(Phase::Cancel, &branch, || async { Ok::<_, std::io::Error>(()) }).await;
/// assert!(matches!(cancel, Ok(BranchOutcome::Skipped(Some(_)))));
/// let r#try = stock.run(Phase::Try, &branch, || async { Ok::<_, std::io::Error>(()) }).await;
/// assert!(matches!(r#try, Err(BranchError::Rejected(_))));
/// assert!(svc.metrics().render().contains(r#"kind="hanging_try""#));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TccResource {
    meter: Meter,
    fence: std::sync::Arc<dyn FenceStore>,
}

/// The metrics and span events of one TCC resource of a service, whatever
/// its fence keeps records in.
#[derive(Clone, Debug)]
pub(crate) struct Meter {
    service: crate::ServiceTelemetry,
    /// The resource's name as given (a SQL fence's `resource` column).
    #[cfg_attr(
        not(any(
            feature = "sqlx-postgres",
            feature = "sqlx-mysql",
            feature = "sqlx-sqlite"
        )),
        allow(dead_code)
    )]
    name: String,
    /// Its `resource` label: the name, or `other` past the cardinality cap.
    label: String,
}

impl Meter {
    /// Admits `resource`'s label and makes every series of it exist at
    /// zero, so that `increase()` sees the first anomaly.
    pub(crate) fn new(service: crate::ServiceTelemetry, resource: &str) -> Self {
        let f = service.families();
        let label = f
            .admit(service.name(), |g| &g.resource, resource)
            .unwrap_or(OTHER)
            .to_owned();
        for kind in paytrace_semconv::tcc::ANOMALY_KINDS {
            f.tcc_anomalies
                .with_label_values(&[service.name(), label.as_str(), kind]);
        }
        for phase in [Phase::Try, Phase::Confirm, Phase::Cancel] {
            for outcome in paytrace_semconv::tcc_phase_outcome::ALL {
                f.tcc_phases.with_label_values(&[
                    service.name(),
                    label.as_str(),
                    phase.as_str(),
                    outcome,
                ]);
            }
        }
        Self {
            service,
            name: resource.to_owned(),
            label,
        }
    }

    /// The resource's name as given.
    #[cfg_attr(
        not(any(
            feature = "sqlx-postgres",
            feature = "sqlx-mysql",
            feature = "sqlx-sqlite"
        )),
        allow(dead_code)
    )]
    pub(crate) fn resource(&self) -> &str {
        &self.name
    }

    /// Reads `pending` (tried branches, the oldest's age) into
    /// `paytrace_tcc_pending` at every scrape, while it answers `Some`.
    pub(crate) fn sample_pending(
        &self,
        pending: impl Fn() -> Option<(usize, Duration)> + Send + Sync + 'static,
    ) {
        self.service
            .families()
            .sampled
            .add(Box::new(PendingSampler {
                service: self.service.name().to_owned(),
                resource: self.label.clone(),
                pending: Box::new(pending),
            }));
    }

    pub(crate) fn stage(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        phase: Phase,
        branch: &BranchKey,
    ) -> crate::Stage {
        self.service.stage(name).tcc(branch, &self.label, phase)
    }

    /// Counts the decision's anomaly and records the decision as a span
    /// event (`tcc.fence`) on the current span.
    pub(crate) fn note_decision(&self, phase: Phase, decision: Decision) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let anomaly = match decision {
            Decision::Skip(a) => a,
            Decision::Reject(a) => Some(a),
            Decision::Run => None,
        };
        if let Some(a) = anomaly {
            self.service
                .families()
                .tcc_anomalies
                .with_label_values(&[self.service.name(), self.label.as_str(), a.as_str()])
                .inc();
        }
        let decision_name = match decision {
            Decision::Run => "run",
            Decision::Skip(_) => "skip",
            Decision::Reject(_) => "reject",
        };
        let mut attributes = vec![
            opentelemetry::KeyValue::new(paytrace_semconv::attr::TCC_PHASE, phase.as_str()),
            opentelemetry::KeyValue::new(paytrace_semconv::attr::TCC_RESOURCE, self.label.clone()),
            opentelemetry::KeyValue::new(paytrace_semconv::attr::TCC_FENCE_DECISION, decision_name),
        ];
        if let Some(a) = anomaly {
            attributes.push(opentelemetry::KeyValue::new(
                paytrace_semconv::attr::TCC_FENCE_ANOMALY,
                a.as_str(),
            ));
        }
        tracing::Span::current().add_event(paytrace_semconv::attr::TCC_FENCE_EVENT, attributes);
    }

    /// `e`, after counting the call `busy` when it is [`FenceError::Busy`].
    pub(crate) fn fence_failed(&self, phase: Phase, e: FenceError) -> FenceError {
        if matches!(e, FenceError::Busy(_)) {
            self.count_phase(phase, paytrace_semconv::tcc_phase_outcome::BUSY);
        }
        e
    }

    /// The answer to a skipped phase, counted `skipped`.
    pub(crate) fn skipped<T, E>(
        &self,
        phase: Phase,
        anomaly: Option<Anomaly>,
    ) -> Result<BranchOutcome<T>, BranchError<E>> {
        self.count_phase(phase, paytrace_semconv::tcc_phase_outcome::SKIPPED);
        Ok(BranchOutcome::Skipped(anomaly))
    }

    /// The answer to a refused phase, counted `rejected`.
    pub(crate) fn rejected<T, E>(
        &self,
        phase: Phase,
        anomaly: Anomaly,
    ) -> Result<BranchOutcome<T>, BranchError<E>> {
        self.count_phase(phase, paytrace_semconv::tcc_phase_outcome::REJECTED);
        // Inside `Stage::run`, the stage's outcome is `rejected`.
        crate::stage::note_refused();
        Err(BranchError::Rejected(anomaly))
    }

    /// Counts one call of `phase` with `outcome`.
    pub(crate) fn count_phase(&self, phase: Phase, outcome: &str) {
        self.service
            .families()
            .tcc_phases
            .with_label_values(&[
                self.service.name(),
                self.label.as_str(),
                phase.as_str(),
                outcome,
            ])
            .inc();
    }

    /// Counts one retry of `phase` by this service.
    pub(crate) fn retried(&self, phase: Phase) {
        self.service.count_tcc_retry(&self.label, phase);
    }
}

impl TccResource {
    pub(crate) fn new(
        service: crate::ServiceTelemetry,
        resource: &str,
        fence: std::sync::Arc<dyn FenceStore>,
    ) -> Self {
        let meter = Meter::new(service, resource);
        let weak = std::sync::Arc::downgrade(&fence);
        meter.sample_pending(move || weak.upgrade().map(|f| f.pending_now()));
        Self { meter, fence }
    }

    /// The stage of `phase` of `branch` on this resource, named `name`,
    /// with every `tcc.*` attribute the aggregator needs. Run the phase in
    /// it: `resource.stage(..).run(resource.run(..))`. The stage's outcome
    /// is `ok` when the phase ran or was skipped as a repeat, `rejected`
    /// when the fence refused it, `error` when the handler failed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use paytrace::tcc::{BranchError, BranchKey, MemoryFence, Phase};
    ///
    /// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
    /// let inventory = svc.tcc("inventory", Arc::new(MemoryFence::new(100, Duration::from_secs(600))));
    /// let branch = BranchKey { xid: "ord_1".into(), branch_id: "b1".into() };
    ///
    /// // The Cancel overtook the Try: an empty rollback, then a late Try.
    /// let cancel = inventory.run(Phase::Cancel, &branch, || async { Ok::<_, std::io::Error>(()) });
    /// inventory.stage("inventory.cancel", Phase::Cancel, &branch).run(cancel).await.expect("recorded");
    /// let late = inventory.run(Phase::Try, &branch, || async { Ok::<_, std::io::Error>(()) });
    /// let refused = inventory.stage("inventory.try", Phase::Try, &branch).run(late).await;
    /// assert!(matches!(refused, Err(BranchError::Rejected(_))));
    /// let recorded = |outcome: &str| {
    ///     svc.metrics().render().lines().any(|l| {
    ///         l.starts_with("paytrace_stage_duration_seconds_count")
    ///             && l.contains(r#"stage="inventory.try""#)
    ///             && l.contains(&format!(r#"outcome="{outcome}""#))
    ///     })
    /// };
    /// assert!(recorded("rejected") && !recorded("error"));
    /// # }
    /// ```
    pub fn stage(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        phase: Phase,
        branch: &BranchKey,
    ) -> crate::Stage {
        self.meter.stage(name, phase, branch)
    }

    /// Runs `phase` of `branch` through the fence: `handler` runs only when
    /// the fence allows it. The decision is a span event (`tcc.fence`) on the
    /// current span and is counted in `paytrace_tcc_phase_total`; anomalies
    /// in `paytrace_tcc_anomalies_total`.
    ///
    /// Cancellation-safe: dropped before `handler` returned, the branch goes
    /// back to the state it had and the call counts as `cancelled` (the
    /// module's "Holding a branch" rules). A call for a branch another call
    /// holds is [`FenceError::Busy`], counted as `busy`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use paytrace::tcc::{BranchKey, BranchOutcome, MemoryFence, Phase};
    ///
    /// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
    /// let stock = svc.tcc("inventory", Arc::new(MemoryFence::new(100, Duration::from_secs(600))));
    /// let branch = BranchKey { xid: "ord_1".into(), branch_id: "inventory".into() };
    ///
    /// // The coordinator's call times out while the reservation is still running.
    /// let slow = stock.run(Phase::Try, &branch, || async {
    ///     tokio::time::sleep(Duration::from_secs(60)).await;
    ///     Ok::<_, std::io::Error>(())
    /// });
    /// assert!(tokio::time::timeout(Duration::from_millis(10), slow).await.is_err());
    /// // Its retry runs the handler: nothing was reserved, so "done" would be a lie.
    /// let retried = stock.run(Phase::Try, &branch, || async { Ok::<_, std::io::Error>(7) }).await;
    /// assert!(matches!(retried, Ok(BranchOutcome::Ran(7))));
    /// # }
    /// ```
    pub async fn run<T, E, F, Fut>(
        &self,
        phase: Phase,
        branch: &BranchKey,
        handler: F,
    ) -> Result<BranchOutcome<T>, BranchError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        // Armed before `begin`: a shared store may take the hold and this
        // future be dropped before the answer arrives.
        let mut held = Held {
            resource: self,
            branch,
            phase,
            run: RunId::new(),
            handler_succeeded: None,
            armed: true,
        };
        let decision = match self.fence.begin(branch, phase, held.run).await {
            Ok(d) => d,
            Err(e) => {
                held.armed = false;
                return Err(self.meter.fence_failed(phase, e).into());
            }
        };
        if decision != Decision::Run {
            held.armed = false;
        }
        self.meter.note_decision(phase, decision);
        match decision {
            Decision::Skip(a) => return self.meter.skipped(phase, a),
            Decision::Reject(a) => return self.meter.rejected(phase, a),
            Decision::Run => {}
        }
        let result = handler().await;
        held.handler_succeeded = Some(result.is_ok());
        let finished = self
            .fence
            .finish(branch, phase, held.run, result.is_ok())
            .await;
        held.armed = false;
        if let Err(e) = finished {
            tracing::warn!(error = %e, "the TCC fence could not record the handler's result");
        }
        self.meter.count_phase(phase, ran_outcome(result.is_ok()));
        result.map(BranchOutcome::Ran).map_err(BranchError::Handler)
    }

    /// Counts one retry of `phase` on this resource by this service.
    pub fn retried(&self, phase: Phase) {
        self.meter.retried(phase);
    }
}

/// A call of [`TccResource::run`] between `begin` and the end of `finish`:
/// dropped while armed (the call's future was dropped), it hands the branch
/// back to the store ([`FenceStore::abandon`]) and counts the call.
struct Held<'a> {
    resource: &'a TccResource,
    branch: &'a BranchKey,
    phase: Phase,
    run: RunId,
    /// The handler's result, once it returned.
    handler_succeeded: Option<bool>,
    armed: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let r = self.resource;
        r.fence
            .abandon(self.branch, self.phase, self.run, self.handler_succeeded);
        let outcome = self
            .handler_succeeded
            .map_or(paytrace_semconv::tcc_phase_outcome::CANCELLED, ran_outcome);
        r.meter.count_phase(self.phase, outcome);
    }
}

/// The phase outcome of a handler that ran: `ok` or `error`.
fn ran_outcome(succeeded: bool) -> &'static str {
    if succeeded {
        paytrace_semconv::tcc_phase_outcome::OK
    } else {
        paytrace_semconv::tcc_phase_outcome::ERROR
    }
}

/// TCC entries of a [`crate::ServiceTelemetry`]: its participant resources, and the
/// retries it makes as a coordinator.
impl crate::ServiceTelemetry {
    /// A TCC resource of this service, guarded by `fence`; see
    /// [`TccResource`] for an example.
    pub fn tcc(&self, resource: &str, fence: std::sync::Arc<dyn FenceStore>) -> TccResource {
        TccResource::new(self.clone(), resource, fence)
    }

    /// A TCC resource of this service whose business state is in Redis
    /// too: `fence`'s decision and the participant's own commands run as
    /// one Lua script (feature `redis`); see `RedisResource`.
    #[cfg(feature = "redis")]
    pub fn tcc_redis(
        &self,
        resource: &str,
        fence: std::sync::Arc<crate::tcc::RedisFence>,
    ) -> crate::tcc::RedisResource {
        crate::tcc::RedisResource::new(Meter::new(self.clone(), resource), fence)
    }

    /// A TCC resource of this service whose fence is a row in its own
    /// database, committed with the business update (features
    /// `sqlx-postgres`, `sqlx-mysql`, `sqlx-sqlite`); see [`SqlFence`].
    #[cfg(any(
        feature = "sqlx-postgres",
        feature = "sqlx-mysql",
        feature = "sqlx-sqlite"
    ))]
    pub fn tcc_sql(&self, resource: &str) -> SqlFence {
        SqlFence::new(Meter::new(self.clone(), resource))
    }

    /// Counts one retry of `phase` on `resource` by this service acting as
    /// the TCC coordinator (`paytrace_tcc_phase_retries_total`).
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::with_metrics("order", "1.0.0", &paytrace::Metrics::new());
    /// svc.count_tcc_retry("inventory", paytrace::tcc::Phase::Confirm);
    /// assert!(svc.metrics().render().contains(
    ///     r#"paytrace_tcc_phase_retries_total{phase="confirm",resource="inventory",service_name="order"} 1"#
    /// ));
    /// ```
    pub fn count_tcc_retry(&self, resource: &str, phase: Phase) {
        let f = self.families();
        let resource = f
            .admit(self.name(), |g| &g.resource, resource)
            .unwrap_or(OTHER);
        f.tcc_retries
            .with_label_values(&[self.name(), resource, phase.as_str()])
            .inc();
    }
}

/// Reads a fence's pending branches at scrape time.
struct PendingSampler {
    service: String,
    resource: String,
    /// Tried branches and the oldest's age; `None` once the fence is gone.
    pending: Box<dyn Fn() -> Option<(usize, Duration)> + Send + Sync>,
}

impl crate::metrics::Sampler for PendingSampler {
    fn sample(&self, gauges: &crate::metrics::SampledGauges) -> bool {
        let Some((count, oldest)) = (self.pending)() else {
            return false;
        };
        let labels = [self.service.as_str(), self.resource.as_str()];
        gauges
            .tcc_pending
            .with_label_values(&labels)
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        gauges
            .tcc_pending_oldest
            .with_label_values(&labels)
            .set(oldest.as_secs_f64());
        true
    }
}
