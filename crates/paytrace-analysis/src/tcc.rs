//! Global TCC transactions, followed across traces and services.
//!
//! Each participant's fence sees only its own branches. The aggregator sees
//! the spans of every participant and of the coordinator, so it can tell
//! what no single service can: a branch whose Confirm never came anywhere
//! (`frozen`), a branch that ran the opposite of what the coordinator decided
//! (`decision_violated`), and the fence's own anomalies for participants
//! that have no fence, or whose phases arrive in different traces.
//!
//! A span takes part when it carries `tcc.*` attributes:
//! - a *phase span* has `tcc.xid`, `tcc.phase` and `tcc.branch_id` or
//!   `tcc.resource` (a branch without an id is named by its resource);
//! - a *decision span* has `tcc.xid` and `tcc.decision` (`confirm` or
//!   `cancel`): the coordinator starting phase two.
//!
//! Once no span of a transaction has arrived for [`TccSettings::settle`],
//! each branch's phases are replayed in start-time order with the fence's
//! rules. Anomalies are reported once each; a span that arrives later is
//! replayed with the rest. Clock skew between services larger than the gap
//! between two phases can misorder them: the replay trusts span timestamps.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paytrace_semconv::{outcome, tcc as names};
use paytrace_tcc::{BranchState, Phase};
use serde::Serialize;

use crate::format::v1;

use crate::span::{Span, SpanId, TraceId, seconds};

/// Settings of the TCC tracker.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TccSettings {
    /// A transaction is replayed once none of its spans arrived for this long.
    pub settle: Duration,
    /// A branch tried this long ago with no Confirm or Cancel is frozen.
    pub timeout: Duration,
    /// A finished transaction is kept this long after its last span, so that
    /// a late phase (a recovery job's Cancel) is still compared with it.
    pub retention: Duration,
    /// An unfinished transaction is forgotten this long after its last span.
    pub max_age: Duration,
    /// Most transactions followed at once; spans of new ones past it are
    /// counted as dropped (`tcc_limit`).
    pub max_transactions: usize,
    /// Most phase spans kept per transaction.
    pub max_spans_per_transaction: usize,
    /// How many recent anomalies the API lists.
    pub max_listed: usize,
}

impl Default for TccSettings {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(30),
            timeout: Duration::from_secs(15 * 60),
            retention: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(24 * 3600),
            max_transactions: 100_000,
            max_spans_per_transaction: 256,
            max_listed: 1_000,
        }
    }
}

#[derive(Clone, Debug)]
struct Observation {
    branch: Arc<str>,
    resource: Arc<str>,
    phase: Phase,
    ok: bool,
    start_ns: u64,
    end_ns: u64,
    trace_id: TraceId,
    span_id: SpanId,
    service: Arc<str>,
    /// Kinds already reported for this span, as bits of
    /// [`names::GLOBAL_ANOMALY_KINDS`].
    reported: u16,
    /// The span carried the fence's event.
    fenced: bool,
}

impl Observation {
    fn to_v1(&self) -> v1::Observation {
        v1::Observation {
            branch: self.branch.clone(),
            resource: self.resource.clone(),
            phase: self.phase,
            ok: self.ok,
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            trace_id: self.trace_id.0,
            span_id: self.span_id.0,
            service: self.service.clone(),
            reported: self.reported,
            fenced: self.fenced,
        }
    }

    fn from_v1(o: v1::Observation) -> Self {
        Self {
            branch: o.branch,
            resource: o.resource,
            phase: o.phase,
            ok: o.ok,
            start_ns: o.start_ns,
            end_ns: o.end_ns,
            trace_id: TraceId(o.trace_id),
            span_id: SpanId(o.span_id),
            service: o.service,
            reported: o.reported,
            fenced: o.fenced,
        }
    }
}

#[derive(Clone, Debug)]
struct Decision {
    phase: Phase,
    start_ns: u64,
    trace_id: TraceId,
}

#[derive(Clone, Debug)]
struct Pending {
    branch: Arc<str>,
    resource: Arc<str>,
    tried_end_ns: u64,
    trace_id: TraceId,
    frozen_reported: bool,
}

#[derive(Debug)]
struct Transaction {
    observations: Vec<Observation>,
    decision: Option<Decision>,
    last_arrival: Instant,
    dirty: bool,
    /// Branches left tried by the last replay.
    pending: Vec<Pending>,
}

/// One anomaly of a global transaction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlobalAnomaly {
    /// The global transaction id (empty when the span had none).
    pub xid: String,
    /// The TCC resource (empty when the span had none).
    pub resource: String,
    /// The branch: its `tcc.branch_id`, else its resource.
    pub branch: String,
    /// One of [`paytrace_semconv::tcc::GLOBAL_ANOMALY_KINDS`].
    pub kind: &'static str,
    /// The service that sent the offending span.
    pub service: String,
    /// When the offending span started (for `frozen`: when the Try ended),
    /// seconds since the epoch.
    pub time_unix_seconds: f64,
    /// The offending span's trace first, then the traces it is compared with.
    pub trace_ids: Vec<String>,
    /// The offending span.
    pub span_id: String,
    /// Whether the offending span's participant runs the TCC fence (its
    /// span carried the `tcc.fence` event). An anomaly of the fence's kinds
    /// at a participant without it is one the fence would have prevented.
    pub fenced: bool,
}

/// A transaction with branches tried and waiting past the timeout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unfinished {
    /// The global transaction id.
    pub xid: String,
    /// The branches still tried, by resource.
    pub resources: Vec<String>,
    /// Since its oldest waiting Try ended, seconds.
    pub age_seconds: f64,
    /// The traces of the waiting Tries.
    pub trace_ids: Vec<String>,
}

/// What became of one span handed to [`TccTracker::observe`].
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub(crate) enum Observed {
    /// No `tcc.*` attributes, or none that take part (an xid alone).
    Ignored,
    /// Followed.
    Tracked,
    /// Not followed: the tracker is at one of its limits.
    Limit,
    /// The attributes cannot be classified.
    Malformed(GlobalAnomaly),
}

fn bit(kind: &str) -> u16 {
    let i = names::GLOBAL_ANOMALY_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(0);
    1 << i
}

/// Follows global transactions and finds their anomalies.
#[derive(Debug)]
pub(crate) struct TccTracker {
    settings: TccSettings,
    transactions: HashMap<Arc<str>, Transaction>,
    recent: VecDeque<GlobalAnomaly>,
}

impl TccTracker {
    /// A tracker with `settings`.
    pub(crate) fn new(settings: TccSettings) -> Self {
        Self {
            settings,
            transactions: HashMap::new(),
            recent: VecDeque::new(),
        }
    }

    /// Transactions followed now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.transactions.len()
    }

    /// Whether no transaction is followed.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }

    /// The transactions followed and the recent anomalies, for a snapshot.
    pub(crate) fn snapshot(&self, now: Instant) -> v1::Tcc {
        v1::Tcc {
            transactions: self
                .transactions
                .iter()
                .map(|(xid, t)| v1::Transaction {
                    xid: xid.clone(),
                    observations: t.observations.iter().map(Observation::to_v1).collect(),
                    decision: t.decision.as_ref().map(|d| v1::Decision {
                        phase: d.phase,
                        start_ns: d.start_ns,
                        trace_id: d.trace_id.0,
                    }),
                    last_arrival_age_ns: crate::ages::age_ns(now, t.last_arrival),
                    dirty: t.dirty,
                    pending: t
                        .pending
                        .iter()
                        .map(|p| v1::PendingBranch {
                            branch: p.branch.clone(),
                            resource: p.resource.clone(),
                            tried_end_ns: p.tried_end_ns,
                            trace_id: p.trace_id.0,
                            frozen_reported: p.frozen_reported,
                        })
                        .collect(),
                })
                .collect(),
            recent: self
                .recent
                .iter()
                .map(|a| v1::Anomaly {
                    xid: a.xid.clone(),
                    resource: a.resource.clone(),
                    branch: a.branch.clone(),
                    kind: a.kind.to_owned(),
                    service: a.service.clone(),
                    time_unix_seconds: a.time_unix_seconds,
                    trace_ids: a.trace_ids.clone(),
                    span_id: a.span_id.clone(),
                    fenced: a.fenced,
                })
                .collect(),
        }
    }

    /// Takes back what [`TccTracker::snapshot`] kept, into an empty tracker.
    pub(crate) fn restore(&mut self, snapshot: v1::Tcc, ago: &crate::ages::Ago) {
        for t in snapshot.transactions {
            self.transactions.insert(
                t.xid,
                Transaction {
                    observations: t
                        .observations
                        .into_iter()
                        .map(Observation::from_v1)
                        .collect(),
                    decision: t.decision.map(|d| Decision {
                        phase: d.phase,
                        start_ns: d.start_ns,
                        trace_id: TraceId(d.trace_id),
                    }),
                    last_arrival: ago.instant(t.last_arrival_age_ns),
                    dirty: t.dirty,
                    pending: t
                        .pending
                        .into_iter()
                        .map(|p| Pending {
                            branch: p.branch,
                            resource: p.resource,
                            tried_end_ns: p.tried_end_ns,
                            trace_id: TraceId(p.trace_id),
                            frozen_reported: p.frozen_reported,
                        })
                        .collect(),
                },
            );
        }
        // A kind this build does not know (a snapshot of another build)
        // is left out of the list.
        self.recent = snapshot
            .recent
            .into_iter()
            .filter_map(|a| {
                Some(GlobalAnomaly {
                    kind: names::GLOBAL_ANOMALY_KINDS
                        .iter()
                        .copied()
                        .find(|k| *k == a.kind)?,
                    xid: a.xid,
                    resource: a.resource,
                    branch: a.branch,
                    service: a.service,
                    time_unix_seconds: a.time_unix_seconds,
                    trace_ids: a.trace_ids,
                    span_id: a.span_id,
                    fenced: a.fenced,
                })
            })
            .collect();
        while self.recent.len() > self.settings.max_listed {
            self.recent.pop_front();
        }
    }

    /// Takes in one span of a completed trace that arrived at `now`.
    pub(crate) fn observe(&mut self, span: &Span, now: Instant) -> Observed {
        let Some(t) = span.business.tcc.as_deref() else {
            return Observed::Ignored;
        };
        if t.phase.is_none() && t.decision.is_none() {
            return Observed::Ignored;
        }
        let resource = t.resource.clone().unwrap_or_else(|| Arc::from(""));
        let malformed = |problem: &str| {
            tracing::debug!(span = %span.span_id, problem, "malformed tcc attributes");
            let anomaly = GlobalAnomaly {
                xid: t.xid.as_deref().unwrap_or("").to_owned(),
                resource: resource.to_string(),
                branch: t.branch_id.as_deref().unwrap_or(&resource).to_owned(),
                kind: names::MALFORMED,
                service: span.service.to_string(),
                time_unix_seconds: seconds(span.start_ns),
                trace_ids: vec![span.trace_id.to_string()],
                span_id: span.span_id.to_string(),
                fenced: t.fenced,
            };
            Observed::Malformed(anomaly)
        };
        let Some(xid) = t.xid.clone().filter(|x| !x.trim().is_empty()) else {
            return malformed("no tcc.xid");
        };
        let decision = match t.decision.as_deref().map(|p| p.parse::<Phase>().ok()) {
            None => None,
            Some(Some(p @ (Phase::Confirm | Phase::Cancel))) => Some(p),
            Some(_) => return malformed("tcc.decision is neither confirm nor cancel"),
        };
        let phase = match t.phase.as_deref().map(|p| p.parse::<Phase>().ok()) {
            None => None,
            Some(Some(p)) => Some(p),
            Some(None) => return malformed("tcc.phase is not try, confirm or cancel"),
        };
        let branch = t.branch_id.clone().or_else(|| t.resource.clone());
        if phase.is_some() && branch.is_none() {
            return malformed("neither tcc.branch_id nor tcc.resource");
        }
        let at_limit = self.transactions.len() >= self.settings.max_transactions;
        let max_spans = self.settings.max_spans_per_transaction;
        let tx = match self.transactions.get_mut(&xid) {
            Some(tx) => tx,
            None if at_limit => return Observed::Limit,
            None => self.transactions.entry(xid).or_insert(Transaction {
                observations: Vec::new(),
                decision: None,
                last_arrival: now,
                dirty: false,
                pending: Vec::new(),
            }),
        };
        tx.last_arrival = now;
        tx.dirty = true;
        if let Some(p) = decision
            && tx
                .decision
                .as_ref()
                .is_none_or(|d| span.start_ns < d.start_ns)
        {
            tx.decision = Some(Decision {
                phase: p,
                start_ns: span.start_ns,
                trace_id: span.trace_id,
            });
        }
        if let (Some(phase), Some(branch)) = (phase, branch) {
            if tx.observations.len() >= max_spans {
                return Observed::Limit;
            }
            let ok = match span.business.outcome.as_deref() {
                Some(o) => o == outcome::OK,
                None => !span.is_error,
            };
            tx.observations.push(Observation {
                branch,
                resource,
                phase,
                ok,
                start_ns: span.start_ns,
                end_ns: span.end_ns,
                trace_id: span.trace_id,
                span_id: span.span_id,
                service: span.service.clone(),
                reported: 0,
                fenced: t.fenced,
            });
        }
        Observed::Tracked
    }

    /// Replays the transactions idle for `settle`, reports frozen branches
    /// and forgets old transactions. `now_unix_ns` is the wall clock, to
    /// compare with span times. Returns the anomalies found, each once.
    pub(crate) fn tick(&mut self, now: Instant, now_unix_ns: u64) -> Vec<GlobalAnomaly> {
        self.advance(Some(now), now_unix_ns)
    }

    /// Replays every transaction now, settled or not (at shutdown, or in tests).
    pub(crate) fn flush(&mut self, now_unix_ns: u64) -> Vec<GlobalAnomaly> {
        self.advance(None, now_unix_ns)
    }

    fn advance(&mut self, now: Option<Instant>, now_unix_ns: u64) -> Vec<GlobalAnomaly> {
        let s = &self.settings;
        let timeout_ns = u64::try_from(s.timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut found = Vec::new();
        self.transactions.retain(|xid, tx| {
            let settled = now.is_none_or(|n| n.duration_since(tx.last_arrival) >= s.settle);
            if tx.dirty && settled {
                tx.dirty = false;
                replay(xid, tx, &mut found);
            }
            for p in &mut tx.pending {
                if !p.frozen_reported && p.tried_end_ns.saturating_add(timeout_ns) <= now_unix_ns {
                    p.frozen_reported = true;
                    let service = tx
                        .observations
                        .iter()
                        .find(|o| o.branch == p.branch && o.phase == Phase::Try)
                        .map(|o| o.service.to_string())
                        .unwrap_or_default();
                    found.push(GlobalAnomaly {
                        xid: xid.to_string(),
                        resource: p.resource.to_string(),
                        branch: p.branch.to_string(),
                        kind: names::FROZEN,
                        service,
                        time_unix_seconds: seconds(p.tried_end_ns),
                        trace_ids: vec![p.trace_id.to_string()],
                        span_id: String::new(),
                        fenced: tx
                            .observations
                            .iter()
                            .any(|o| o.branch == p.branch && o.fenced),
                    });
                }
            }
            let Some(now) = now else {
                return true;
            };
            let idle = now.duration_since(tx.last_arrival);
            let keep_for = if tx.pending.is_empty() {
                s.retention.max(s.settle)
            } else {
                s.max_age
            };
            tx.dirty || idle < keep_for
        });
        for a in &found {
            self.list(a.clone());
        }
        found
    }

    /// Records an anomaly found outside a replay (a malformed span) in the list.
    pub(crate) fn list(&mut self, anomaly: GlobalAnomaly) {
        if self.recent.len() >= self.settings.max_listed {
            self.recent.pop_front();
        }
        self.recent.push_back(anomaly);
    }

    /// The most recent anomalies, newest first.
    /// Whether the replay found an anomaly in transaction `xid` (a branch
    /// of it reported, or frozen).
    pub(crate) fn anomalous(&self, xid: &str) -> bool {
        self.transactions.get(xid).is_some_and(|tx| {
            tx.observations.iter().any(|o| o.reported != 0)
                || tx.pending.iter().any(|p| p.frozen_reported)
        })
    }

    pub(crate) fn recent(&self) -> impl Iterator<Item = &GlobalAnomaly> {
        self.recent.iter().rev()
    }

    /// The branches of `tx` tried at least `timeout` before `now_unix_ns`.
    fn waiting<'t>(
        &self,
        tx: &'t Transaction,
        now_unix_ns: u64,
    ) -> impl Iterator<Item = &'t Pending> {
        let timeout_ns = u64::try_from(self.settings.timeout.as_nanos()).unwrap_or(u64::MAX);
        tx.pending
            .iter()
            .filter(move |p| p.tried_end_ns.saturating_add(timeout_ns) <= now_unix_ns)
    }

    /// How many transactions [`TccTracker::unfinished`] would list, and the
    /// age of the oldest in seconds (0 when none), without building the list.
    pub(crate) fn unfinished_summary(&self, now_unix_ns: u64) -> (usize, f64) {
        let mut count = 0;
        let mut oldest = u64::MAX;
        for tx in self.transactions.values() {
            if let Some(t) = self.waiting(tx, now_unix_ns).map(|p| p.tried_end_ns).min() {
                count += 1;
                oldest = oldest.min(t);
            }
        }
        let age = if count == 0 {
            0.0
        } else {
            seconds(now_unix_ns.saturating_sub(oldest))
        };
        (count, age)
    }

    /// Transactions with a branch tried at least `timeout` before
    /// `now_unix_ns` and still waiting, oldest first.
    pub(crate) fn unfinished(&self, now_unix_ns: u64) -> Vec<Unfinished> {
        let mut out: Vec<Unfinished> = self
            .transactions
            .iter()
            .filter_map(|(xid, tx)| {
                let waiting: Vec<&Pending> = self.waiting(tx, now_unix_ns).collect();
                let oldest = waiting.iter().map(|p| p.tried_end_ns).min()?;
                let mut resources: Vec<String> =
                    waiting.iter().map(|p| p.resource.to_string()).collect();
                resources.sort();
                resources.dedup();
                let mut trace_ids: Vec<String> =
                    waiting.iter().map(|p| p.trace_id.to_string()).collect();
                trace_ids.sort();
                trace_ids.dedup();
                Some(Unfinished {
                    xid: xid.to_string(),
                    resources,
                    age_seconds: seconds(now_unix_ns.saturating_sub(oldest)),
                    trace_ids,
                })
            })
            .collect();
        out.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
        out
    }
}

/// Replays each branch of `tx` in start order with the fence's rules;
/// pushes the anomalies not reported before.
fn replay(xid: &str, tx: &mut Transaction, found: &mut Vec<GlobalAnomaly>) {
    tx.observations.sort_by(|a, b| {
        (&a.branch, a.start_ns, a.phase, a.span_id)
            .cmp(&(&b.branch, b.start_ns, b.phase, b.span_id))
    });
    let decision = tx.decision.clone();
    let frozen_before: Vec<Arc<str>> = tx
        .pending
        .iter()
        .filter(|p| p.frozen_reported)
        .map(|p| p.branch.clone())
        .collect();
    tx.pending.clear();
    let mut start = 0;
    while start < tx.observations.len() {
        let branch = tx.observations[start].branch.clone();
        let end = start
            + tx.observations[start..]
                .iter()
                .take_while(|o| o.branch == branch)
                .count();
        let branch_obs = &mut tx.observations[start..end];
        let pending = replay_branch(xid, branch_obs, decision.as_ref(), found);
        if let Some(mut p) = pending {
            p.frozen_reported = frozen_before.contains(&p.branch);
            tx.pending.push(p);
        }
        start = end;
    }
}

/// One branch, its observations sorted by start. Returns the branch's
/// pending Try when it ends tried.
fn replay_branch(
    xid: &str,
    obs: &mut [Observation],
    decision: Option<&Decision>,
    found: &mut Vec<GlobalAnomaly>,
) -> Option<Pending> {
    use names::*;
    let mut branch = paytrace_tcc::Branch::default();
    // The span that set the current state, to name it next to an anomaly.
    let mut cause: Option<TraceId> = None;
    let mut tried: Option<(u64, TraceId)> = None;
    for o in obs.iter_mut() {
        let before = branch.state;
        let seen = paytrace_tcc::observe(&mut branch, o.phase, o.ok);
        let mut kinds: [Option<&'static str>; 2] = [seen.anomaly.map(|a| a.as_str()), None];
        let ran = seen.took_effect;
        if before.is_none() && branch.state.is_some() {
            // A Try that took, or an empty rollback: the span to name.
            cause = Some(o.trace_id);
            if branch.state == Some(BranchState::Tried) {
                tried = Some((o.end_ns, o.trace_id));
            }
        }
        if ran && decision.is_some_and(|d| d.phase != o.phase) {
            kinds[1] = Some(DECISION_VIOLATED);
        }
        for kind in kinds.into_iter().flatten() {
            if o.reported & bit(kind) != 0 {
                continue;
            }
            o.reported |= bit(kind);
            let mut trace_ids = vec![o.trace_id.to_string()];
            let related = if kind == DECISION_VIOLATED {
                decision.map(|d| d.trace_id)
            } else {
                cause
            };
            if let Some(r) = related.filter(|r| *r != o.trace_id) {
                trace_ids.push(r.to_string());
            }
            found.push(GlobalAnomaly {
                xid: xid.to_owned(),
                resource: o.resource.to_string(),
                branch: o.branch.to_string(),
                kind,
                service: o.service.to_string(),
                time_unix_seconds: seconds(o.start_ns),
                trace_ids,
                span_id: o.span_id.to_string(),
                fenced: o.fenced,
            });
        }
        if ran {
            cause = Some(o.trace_id);
        }
    }
    let first = obs.first()?;
    match (branch.state, tried) {
        (Some(BranchState::Tried), Some((tried_end_ns, trace_id))) => Some(Pending {
            branch: first.branch.clone(),
            resource: first.resource.clone(),
            tried_end_ns,
            trace_id,
            frozen_reported: false,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{span, tcc_decision, tcc_phase, with_outcome};

    const S: u64 = 1_000_000_000;

    fn phase(n: u8, resource: &str, phase: &str, start_s: u64) -> Span {
        tcc_phase(
            n,
            "ord_1",
            resource,
            phase,
            start_s * S,
            start_s * S + S / 10,
        )
    }

    fn kinds(spans: Vec<Span>) -> Vec<&'static str> {
        let mut t = TccTracker::new(TccSettings::default());
        let now = Instant::now();
        for s in &spans {
            assert_eq!(t.observe(s, now), Observed::Tracked);
        }
        let mut k: Vec<_> = t.flush(100 * S).into_iter().map(|a| a.kind).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn a_clean_transaction_has_no_anomalies() {
        let spans = vec![
            phase(1, "inventory", "try", 1),
            phase(2, "inventory", "confirm", 2),
            phase(3, "coupon", "try", 1),
            phase(4, "coupon", "confirm", 3),
        ];
        assert!(kinds(spans).is_empty());
    }

    #[test]
    fn phases_are_ordered_by_start_not_by_arrival() {
        // The Confirm's trace arrives first; its span starts later.
        let spans = vec![
            phase(2, "inventory", "confirm", 5),
            phase(1, "inventory", "try", 1),
        ];
        assert!(kinds(spans).is_empty());
    }

    #[test]
    fn a_cancel_overtaking_its_try_is_an_empty_rollback_then_a_hanging_try() {
        let spans = vec![
            phase(1, "inventory", "cancel", 1),
            with_outcome(phase(2, "inventory", "try", 2), "rejected"),
            phase(3, "inventory", "cancel", 3),
        ];
        assert_eq!(
            kinds(spans),
            ["duplicate_cancel", "empty_rollback", "hanging_try"]
        );
    }

    #[test]
    fn cancel_after_a_failed_try_is_a_compensation() {
        let spans = vec![
            with_outcome(phase(1, "payment", "try", 1), "error"),
            phase(2, "payment", "cancel", 2),
        ];
        assert!(kinds(spans).is_empty());
    }

    #[test]
    fn every_forbidden_order_is_named() {
        let spans = vec![
            phase(1, "inventory", "try", 1),
            phase(2, "inventory", "confirm", 2),
            phase(3, "inventory", "confirm", 3),
            with_outcome(phase(4, "inventory", "cancel", 4), "rejected"),
            with_outcome(phase(5, "coupon", "confirm", 1), "rejected"),
            phase(6, "points", "try", 1),
            phase(7, "points", "cancel", 2),
            with_outcome(phase(8, "points", "confirm", 3), "rejected"),
        ];
        assert_eq!(
            kinds(spans),
            [
                "cancel_after_confirm",
                "confirm_after_cancel",
                "confirm_without_try",
                "duplicate_confirm",
            ]
        );
    }

    #[test]
    fn a_branch_that_runs_against_the_decision_violates_it() {
        let decision = tcc_decision(9, "ord_1", "confirm", 2 * S, 3 * S);
        let spans = vec![
            decision,
            phase(1, "inventory", "try", 1),
            // No fence: the Cancel runs and succeeds.
            phase(2, "inventory", "cancel", 2),
            phase(3, "coupon", "try", 1),
            phase(4, "coupon", "confirm", 2),
        ];
        assert_eq!(kinds(spans), ["decision_violated"]);
    }

    #[test]
    fn a_try_left_waiting_past_the_timeout_is_frozen_once() {
        let settings = TccSettings {
            timeout: Duration::from_secs(10),
            settle: Duration::from_secs(1),
            ..TccSettings::default()
        };
        let mut t = TccTracker::new(settings);
        let now = Instant::now();
        t.observe(&phase(1, "inventory", "try", 100), now);
        t.observe(&phase(2, "coupon", "try", 100), now);
        t.observe(&phase(3, "coupon", "confirm", 101), now);
        let later = now + Duration::from_secs(2);
        assert!(
            t.tick(later, 105 * S).is_empty(),
            "not yet past the timeout"
        );
        assert!(t.unfinished(105 * S).is_empty());
        let found = t.tick(later, 111 * S);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].kind, found[0].resource.as_str()),
            ("frozen", "inventory")
        );
        assert!(t.tick(later, 120 * S).is_empty(), "reported once");
        let waiting = t.unfinished(120 * S);
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].resources, ["inventory"]);
        assert!((waiting[0].age_seconds - 19.9).abs() < 1e-6);
        // The Confirm finally comes: no longer unfinished, not re-reported.
        t.observe(&phase(4, "inventory", "confirm", 119), later);
        assert!(t.tick(later + Duration::from_secs(2), 121 * S).is_empty());
        assert!(t.unfinished(121 * S).is_empty());
    }

    #[test]
    fn a_late_span_is_compared_with_the_settled_ones_and_reported_once() {
        let settings = TccSettings {
            settle: Duration::from_secs(1),
            ..TccSettings::default()
        };
        let mut t = TccTracker::new(settings);
        let now = Instant::now();
        t.observe(&phase(1, "inventory", "try", 1), now);
        t.observe(&phase(2, "inventory", "confirm", 2), now);
        assert!(t.tick(now + Duration::from_secs(2), 3 * S).is_empty());
        // A recovery job's Cancel, minutes later, in a new trace.
        let late = now + Duration::from_secs(120);
        t.observe(
            &with_outcome(phase(3, "inventory", "cancel", 120), "rejected"),
            late,
        );
        assert!(t.tick(late, 121 * S).is_empty(), "waits to settle");
        let found = t.tick(late + Duration::from_secs(1), 122 * S);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, "cancel_after_confirm");
        assert_eq!(found[0].trace_ids.len(), 2, "names the confirm's trace too");
        assert!(t.tick(late + Duration::from_secs(5), 126 * S).is_empty());
    }

    #[test]
    fn unclassifiable_attributes_are_malformed_not_a_panic() {
        let mut t = TccTracker::new(TccSettings::default());
        let now = Instant::now();
        let no_xid = tcc_phase(1, "", "inventory", "try", S, 2 * S);
        let bad_phase = tcc_phase(2, "ord_1", "inventory", "prepare", S, 2 * S);
        let no_branch = tcc_phase(3, "ord_1", "", "try", S, 2 * S);
        let bad_decision = tcc_decision(4, "ord_1", "abort", S, 2 * S);
        for s in [no_xid, bad_phase, no_branch, bad_decision] {
            match t.observe(&s, now) {
                Observed::Malformed(a) => assert_eq!(a.kind, "malformed"),
                other => panic!("{other:?}"),
            }
        }
        assert!(t.is_empty());
        let plain = span("x", S, 2 * S);
        assert_eq!(t.observe(&plain, now), Observed::Ignored);
    }

    #[test]
    fn new_transactions_past_the_limit_are_refused() {
        let mut t = TccTracker::new(TccSettings {
            max_transactions: 1,
            max_spans_per_transaction: 2,
            ..TccSettings::default()
        });
        let now = Instant::now();
        let other = tcc_phase(2, "ord_2", "inventory", "try", S, 2 * S);
        assert_eq!(
            t.observe(&phase(1, "inventory", "try", 1), now),
            Observed::Tracked
        );
        assert_eq!(t.observe(&other, now), Observed::Limit);
        assert_eq!(
            t.observe(&phase(3, "inventory", "confirm", 2), now),
            Observed::Tracked
        );
        assert_eq!(
            t.observe(&phase(4, "inventory", "confirm", 3), now),
            Observed::Limit
        );
    }

    #[test]
    fn finished_transactions_are_forgotten_after_the_retention() {
        let mut t = TccTracker::new(TccSettings {
            settle: Duration::from_secs(1),
            retention: Duration::from_secs(10),
            ..TccSettings::default()
        });
        let now = Instant::now();
        t.observe(&phase(1, "inventory", "try", 1), now);
        t.observe(&phase(2, "inventory", "confirm", 2), now);
        t.tick(now + Duration::from_secs(2), 3 * S);
        assert_eq!(t.len(), 1);
        t.tick(now + Duration::from_secs(11), 12 * S);
        assert!(t.is_empty());
    }

    #[test]
    fn a_cancel_without_try_is_an_empty_rollback() {
        use crate::tcc::{TccSettings, TccTracker};
        use crate::testing::tcc_phase;
        use std::time::{Duration, Instant};

        let mut tracker = TccTracker::new(TccSettings::default());
        let now = Instant::now();
        // A Cancel with no Try before it: an empty rollback.
        let cancel = tcc_phase(1, "ord_1", "inventory", "cancel", 1_000, 2_000);
        tracker.observe(&cancel, now);
        let found = tracker.tick(now + Duration::from_secs(60), 3_000);
        assert_eq!(found[0].kind, "empty_rollback");
    }
}
