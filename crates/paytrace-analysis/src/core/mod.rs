//! The analysis as a state machine, free of I/O: decoded spans, the
//! clock's ticks and queries in; what happened out, through an
//! [`Observer`] the caller passes, and answers to the queries.
//!
//! ```text
//! decoded spans ─ingest─▶ assembler ─complete─▶ flows ─finish─▶ analysis ─▶ windows, recent
//!                               │                                  │
//!                               └─────────── TCC replay ◀──────────┘
//! ```
//!
//! Nothing here reads a clock (the caller passes [`Now`]), opens a socket,
//! spawns a task or writes a metric: `paytrace-aggregator`'s `Pipeline`
//! wraps a [`Core`] for the server, turning what the observer hears into Prometheus
//! series and kept flows into forwarded ones; `analyze` runs one over files.
//! This module and its children import no network, runtime, metrics or CLI
//! crate (a test checks their sources).
//!
//! - `query`: the time it runs at ([`Now`]) and what a reader asks
//!   ([`Query`]);
//! - `labels`: the bounded label values every key uses;
//! - `minutes`: the ring of minutes the windows read;
//! - `windows`, `changes`: what the windows answer;
//! - `recent`: the recent instances per flow, with the spans of the slowest;
//! - `keep`: which final flows are kept whole for a trace store;
//! - `views`: what the API and the page show.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use paytrace_sampling::Threshold;
use paytrace_semconv::aggregator_drop_reason;

mod changes;
mod keep;
mod labels;
mod minutes;
mod query;
pub(crate) mod recent;
mod views;
mod windows;

pub use changes::{
    Baseline, ChangeQuery, Changes, ErrorFinding, InfraSignal, LatencyFinding, Side,
};
pub use keep::KeepPolicy;
pub use minutes::WINDOWS_MINUTES;
pub use query::{Now, Query};
pub use views::{AnomalyCount, FlowSummary, MinutePoint, PathStep, SlowFlow, SpanView};
pub use windows::{Windows, WindowsError};

use crate::assembler::{Assembler, AssemblerLimits};
use crate::breakdown::{Breakdown, Groups};
use crate::critical_path::{FlowAnalysis, analyze_flow_with};
use crate::decode::Decoded;
use crate::flows::{FinishedFlow, FlowBuffer, FlowSettings};
use crate::span::{Span, TraceId};
pub use crate::tcc::{GlobalAnomaly, Unfinished};
use crate::tcc::{Observed, TccSettings, TccTracker};
use labels::LabelValues;
use minutes::{Minute, in_window, slot};
use recent::{Recent, RecentFlows};
use views::slow_flow;

/// Settings of the analysis.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PipelineConfig {
    /// Trace assembly.
    pub assembler: AssemblerLimits,
    /// Flow stitching.
    pub flows: FlowSettings,
    /// Following TCC transactions.
    pub tcc: TccSettings,
    /// Distinct values allowed per metric label (flow, stage, method, channel).
    pub label_limit: Option<usize>,
    /// Bucket boundaries (seconds) of the flow and stage histograms, strictly
    /// increasing (the configuration file checks them); `None` for
    /// [`paytrace_semconv::DEFAULT_LATENCY_BUCKETS`].
    pub buckets: Option<Vec<f64>>,
    /// The critical-path walk's clock tolerance; `None` for the default,
    /// 1 ms (`docs/critical-path.md`).
    pub clock_tolerance: Option<std::time::Duration>,
    /// The probability a span was sampled with when its `tracestate` says
    /// none (no `ot=th:…`): `None` for 1, every span kept. Set it to the
    /// head-sampling ratio of SDKs that do not write the threshold.
    pub default_sampling_probability: Option<f64>,
}

/// A flow instance recorded in the windows, as the observer hears of it.
#[derive(Debug)]
pub struct RecordedFlow<'a> {
    /// Its analysis, every name bounded (`other` past the label limit).
    pub analysis: &'a FlowAnalysis,
    /// What it stands for under head sampling, rounded to a whole number of
    /// observations at random without bias.
    pub whole: u64,
}

/// What the core tells the edge as it happens: the counts a metrics
/// exporter keeps, the flows recorded and the flows kept. Every method does
/// nothing by default; `()` hears nothing.
pub trait Observer {
    /// `spans` spans were not analysed, for `reason` (one of
    /// [`aggregator_drop_reason::ALL`]).
    fn spans_dropped(&mut self, reason: &'static str, spans: u64) {
        let _ = (reason, spans);
    }

    /// A trace was assembled and handed on; `evicted` says why before it
    /// was idle, if so.
    fn trace_completed(&mut self, evicted: Option<&'static str>) {
        let _ = evicted;
    }

    /// `n` label values were folded into `other`.
    fn series_overflow(&mut self, n: u64) {
        let _ = n;
    }

    /// A TCC resource was seen for the first time (bounded).
    fn tcc_resource(&mut self, resource: &str) {
        let _ = resource;
    }

    /// `n` TCC anomalies of `kind` at `resource` (bounded) were found.
    fn tcc_anomalies(&mut self, resource: &str, kind: &str, n: u64) {
        let _ = (resource, kind, n);
    }

    /// Transactions waiting past the TCC timeout, and the age in seconds
    /// of the oldest waiting Try (0 when none).
    fn tcc_unfinished(&mut self, transactions: usize, oldest_seconds: f64) {
        let _ = (transactions, oldest_seconds);
    }

    /// A span of `service` (bounded) was moved `offset_seconds` for clock
    /// skew.
    fn clock_skew(&mut self, service: &str, offset_seconds: f64) {
        let _ = (service, offset_seconds);
    }

    /// A final flow instance of `flow` is about to be recorded: whether its
    /// spans were sampled inconsistently, and whether part of it went
    /// elsewhere (a link to a trace this core never received).
    fn flow_finished(&mut self, flow: &str, sampled_inconsistently: bool, split: bool) {
        let _ = (flow, sampled_inconsistently, split);
    }

    /// A flow instance of `flow` was incomplete for `reason`, standing for
    /// `whole` flows.
    fn flow_incomplete(&mut self, flow: &str, reason: &'static str, whole: u64) {
        let _ = (flow, reason, whole);
    }

    /// A complete flow instance was recorded.
    fn flow_recorded(&mut self, flow: &RecordedFlow<'_>) {
        let _ = flow;
    }

    /// A final flow is kept whole for the trace store, for `reason`
    /// (one of `keep_reason::ALL`); `traces` are its spans.
    fn flow_kept(&mut self, reason: &'static str, traces: &[Vec<Span>]) {
        let _ = (reason, traces);
    }
}

impl Observer for () {}

/// Whether a flow's spans link to a trace that is not among its own and
/// that this core never received: part of the flow went elsewhere.
fn split_from(traces: &[Vec<Span>], assembler: &Assembler) -> bool {
    let own: crate::FastSet<TraceId> = traces
        .iter()
        .filter_map(|spans| spans.first().map(|s| s.trace_id))
        .collect();
    traces
        .iter()
        .flatten()
        .flat_map(|s| s.links.iter())
        .any(|link| !own.contains(&link.trace_id) && !assembler.has_seen(&link.trace_id))
}

/// Whether `a` is one the TCC fence would have prevented: one of the
/// fence's kinds, at a participant that runs without it.
fn shadowed(a: &GlobalAnomaly) -> bool {
    !a.fenced && paytrace_semconv::tcc::ANOMALY_KINDS.contains(&a.kind)
}

/// A service whose clock the analysis corrected: how many of its spans
/// were moved to fit their callers', and the last offset estimated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ClockSkewSeen {
    /// `service.name`.
    pub service: Arc<str>,
    /// Spans moved.
    pub adjusted_spans: u64,
    /// How far its clock was last estimated to be ahead of its caller's,
    /// in seconds (negative: behind).
    pub last_offset_seconds: f64,
}

/// The analysis's state: every trace assembling, flow waiting, window,
/// recent instance and TCC transaction.
pub struct Core {
    assembler: Assembler,
    flows: FlowBuffer,
    /// The windows' hour of minutes, shared with the published [`View`].
    minutes: VecDeque<Arc<Minute>>,
    /// Per flow, its recent instances, shared with the published [`View`].
    recent: HashMap<Arc<str>, Arc<RecentFlows>>,
    labels: LabelValues,
    tcc: TccTracker,
    /// Per (resource, kind), the anomalies found since start (bounded).
    tcc_counts: BTreeMap<(Arc<str>, &'static str), u64>,
    /// Per (resource, kind), the anomalies of the fence's kinds found at
    /// participants that run without the fence: what adopting it would
    /// have prevented (the shadow fence report).
    shadow: BTreeMap<(Arc<str>, &'static str), u64>,
    /// Per flow, its end-to-end p99 of the last 5 minutes as of when it was
    /// computed (the slow threshold of a flow with none configured).
    p99s: HashMap<Arc<str>, (Instant, Option<f64>)>,
    /// Per service, the spans moved for clock skew and the last offset.
    clock_skew: BTreeMap<Arc<str>, ClockSkewSeen>,
    /// Which final flows to keep, once asked to.
    keep: Option<KeepPolicy>,
    label_limit: usize,
    clock_tolerance_ns: u64,
    default_threshold: Threshold,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("live_traces", &self.assembler.live_traces())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// An empty core with `config`.
    ///
    /// ```
    /// let core = paytrace_analysis::core::Core::new(&Default::default());
    /// assert_eq!(core.live_traces(), 0);
    /// ```
    pub fn new(config: &PipelineConfig) -> Self {
        Self {
            assembler: Assembler::new(config.assembler.clone()),
            flows: FlowBuffer::new(config.flows.clone()),
            minutes: VecDeque::new(),
            recent: HashMap::new(),
            labels: LabelValues::default(),
            tcc: TccTracker::new(config.tcc.clone()),
            tcc_counts: BTreeMap::new(),
            shadow: BTreeMap::new(),
            p99s: HashMap::new(),
            clock_skew: BTreeMap::new(),
            keep: None,
            label_limit: config.label_limit.unwrap_or(200),
            clock_tolerance_ns: config
                .clock_tolerance
                .map_or(crate::tree::DEFAULT_CLOCK_TOLERANCE_NS, |t| {
                    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
                }),
            default_threshold: config
                .default_sampling_probability
                .map_or(Threshold::ALWAYS, Threshold::from_probability),
        }
    }

    /// Decides, from now on, which final flows are kept whole
    /// ([`Observer::flow_kept`]).
    pub fn keep(&mut self, policy: KeepPolicy) {
        self.keep = Some(policy);
    }

    /// Traces being assembled.
    pub fn live_traces(&self) -> usize {
        self.assembler.live_traces()
    }

    /// Bytes of the spans being assembled.
    pub fn buffered_bytes(&self) -> usize {
        self.assembler.bytes()
    }

    /// Buffers the spans of one decoded request that arrived at `now`.
    pub fn ingest(&mut self, decoded: Decoded, now: Instant, out: &mut impl Observer) {
        if decoded.rejected > 0 {
            out.spans_dropped(aggregator_drop_reason::INVALID, decoded.rejected);
        }
        let added = self.assembler.add(decoded.spans, now);
        for (reason, n) in added.dropped {
            out.spans_dropped(reason.as_str(), n);
        }
        let mut late = 0;
        for span in added.late {
            // The TCC tracker sees a span that joins its flow, as it saw
            // the rest of the trace.
            if span.business.tcc.is_some() && self.flows.waits_for(span.trace_id) {
                self.follow_tcc(std::slice::from_ref(&span), now, out);
            }
            if !self.flows.add_late(span, now) {
                late += 1;
            }
        }
        if late > 0 {
            out.spans_dropped(aggregator_drop_reason::LATE, late);
        }
    }

    /// Moves time forward: completes idle traces, finishes idle flows,
    /// records them. Call it about once a second.
    pub fn tick(&mut self, now: Now, out: &mut impl Observer) {
        let completed = self.assembler.complete_idle(now.instant);
        let mut finished = self.hand_on(completed, now.instant, out);
        finished.extend(self.flows.finish_idle(now.instant));
        // The TCC replay first, so that a flow final now is judged with the
        // anomalies of its transactions (they settle as its traces idle).
        let found = self.tcc.tick(now.instant, now.wall_ns());
        self.count_tcc(&found, now.wall_ns(), out);
        for flow in finished {
            self.record(flow, now, out);
        }
    }

    /// Finishes everything buffered now (at shutdown, at the end of the
    /// `analyze` input, or in tests).
    pub fn flush(&mut self, now: Now, out: &mut impl Observer) {
        let completed = self.assembler.drain();
        let mut finished = self.hand_on(completed, now.instant, out);
        finished.extend(self.flows.drain());
        let found = self.tcc.flush(now.wall_ns());
        self.count_tcc(&found, now.wall_ns(), out);
        for flow in finished {
            self.record(flow, now, out);
        }
    }

    /// A copy of everything a restart would otherwise lose
    /// ([`crate::format::Snapshot`]).
    pub fn snapshot(&self, now: Now) -> crate::format::Snapshot {
        let counts = |c: Vec<AnomalyCount>| c.iter().map(Into::into).collect();
        crate::format::Snapshot(crate::format::v1::Snapshot {
            minutes: self.minutes.iter().map(|m| (&**m).into()).collect(),
            recent: self
                .recent
                .iter()
                .map(|(flow, r)| (flow.clone(), (&**r).into()))
                .collect(),
            assembler: self.assembler.snapshot(now.instant),
            flows: self.flows.snapshot(now.instant),
            tcc: self.tcc.snapshot(now.instant),
            tcc_anomaly_counts: counts(tally(&self.tcc_counts)),
            tcc_shadow_counts: counts(tally(&self.shadow)),
        })
    }

    /// Takes back a snapshot into this (new, empty) core, the process
    /// having been down for `down`; the anomaly counts it held are told to
    /// `out` as found now, so that counters go on from them.
    pub fn restore(
        &mut self,
        snapshot: crate::format::Snapshot,
        now: Now,
        down: std::time::Duration,
        out: &mut impl Observer,
    ) {
        let snapshot = snapshot.0;
        let ago = crate::ages::Ago::new(now.instant, down);
        self.minutes = snapshot
            .minutes
            .into_iter()
            .map(|m| Arc::new(m.into()))
            .collect();
        self.recent = snapshot
            .recent
            .into_iter()
            .map(|(flow, r)| (flow, Arc::new(r.into())))
            .collect();
        self.assembler.restore(snapshot.assembler, &ago);
        self.flows.restore(snapshot.flows, &ago);
        self.tcc.restore(snapshot.tcc, &ago);
        for c in snapshot.tcc_anomaly_counts {
            let Some(kind) = known_kind(&c.kind) else {
                continue;
            };
            let resource = self.bounded_resource(&c.resource, out);
            *self.tcc_counts.entry((resource.clone(), kind)).or_default() += c.count;
            out.tcc_anomalies(&resource, kind, c.count);
        }
        for c in snapshot.tcc_shadow_counts {
            self.count_shadow(&c.resource, &c.kind, c.count, out);
        }
    }

    /// Hands completed traces on to the TCC tracker and to flow stitching;
    /// returns the flows final because of them.
    fn hand_on(
        &mut self,
        completed: Vec<crate::assembler::CompletedTrace>,
        now: Instant,
        out: &mut impl Observer,
    ) -> Vec<FinishedFlow> {
        let mut finished = Vec::new();
        for trace in completed {
            out.trace_completed(trace.evicted.map(|r| r.as_str()));
            self.follow_tcc(&trace.spans, now, out);
            finished.extend(self.flows.add(trace.spans, trace.last_arrival.max(now)));
        }
        finished
    }

    /// `resource` bounded like every label.
    fn bounded_resource(&mut self, resource: &str, out: &mut impl Observer) -> Arc<str> {
        let mut overflowed = 0;
        let bounded = self
            .labels
            .resource(&Arc::from(resource), self.label_limit, &mut overflowed);
        if overflowed > 0 {
            out.series_overflow(overflowed);
        }
        bounded
    }

    /// Hands the TCC spans of one completed trace to the tracker.
    fn follow_tcc(&mut self, spans: &[Span], now: Instant, out: &mut impl Observer) {
        for span in spans.iter().filter(|s| s.business.tcc.is_some()) {
            if let Some(resource) = span.business.tcc.as_ref().and_then(|t| t.resource.as_ref())
                && !self.labels.resource.contains(resource)
            {
                let bounded = self.bounded_resource(resource, out);
                out.tcc_resource(&bounded);
            }
            match self.tcc.observe(span, now) {
                Observed::Ignored | Observed::Tracked => {}
                Observed::Limit => out.spans_dropped(aggregator_drop_reason::TCC_LIMIT, 1),
                Observed::Malformed(anomaly) => {
                    self.count_tcc_anomaly(&anomaly, out);
                    self.tcc.list(anomaly);
                }
            }
        }
    }

    fn count_tcc_anomaly(&mut self, a: &GlobalAnomaly, out: &mut impl Observer) {
        let resource = self.bounded_resource(&a.resource, out);
        *self
            .tcc_counts
            .entry((resource.clone(), a.kind))
            .or_default() += 1;
        out.tcc_anomalies(&resource, a.kind, 1);
        if shadowed(a) {
            self.count_shadow(&a.resource, a.kind, 1, out);
        }
    }

    /// Adds `n` to what the fence would have prevented at `resource`; a
    /// kind that is not the fence's is ignored.
    fn count_shadow(&mut self, resource: &str, kind: &str, n: u64, out: &mut impl Observer) {
        let Some(kind) = paytrace_semconv::tcc::ANOMALY_KINDS
            .iter()
            .copied()
            .find(|k| *k == kind)
        else {
            return;
        };
        let resource = self.bounded_resource(resource, out);
        *self.shadow.entry((resource, kind)).or_default() += n;
    }

    /// Counts anomalies a replay found and tells the unfinished summary.
    fn count_tcc(&mut self, found: &[GlobalAnomaly], wall: u64, out: &mut impl Observer) {
        for a in found {
            self.count_tcc_anomaly(a, out);
        }
        let (unfinished, oldest) = self.tcc.unfinished_summary(wall);
        out.tcc_unfinished(unfinished, oldest);
    }

    /// Tells `out` whether the final, complete flow `analysis` (its spans
    /// `traces`) is kept, and why.
    fn keep_if_worth_it(
        &mut self,
        analysis: &FlowAnalysis,
        traces: &[Vec<Span>],
        now: Now,
        out: &mut impl Observer,
    ) {
        let Some(policy) = &self.keep else {
            return;
        };
        let configured = policy.threshold(&analysis.flow);
        let keep_normal = policy.keep_normal;
        let slow_threshold = configured.or_else(|| self.recent_p99(&analysis.flow, now));
        let tcc_anomaly = traces
            .iter()
            .flatten()
            .filter_map(|s| s.business.tcc.as_ref()?.xid.as_deref())
            .any(|xid| self.tcc.anomalous(xid));
        let candidate = keep::Candidate {
            analysis,
            traces,
            slow_threshold,
            tcc_anomaly,
        };
        if let Some(reason) = keep::keep_reason(&candidate, keep_normal) {
            out.flow_kept(reason, traces);
        }
    }

    /// `flow`'s end-to-end p99 of the last 5 minutes, recomputed at most
    /// every 10 s; `None` under 100 instances (too few to call one slow).
    fn recent_p99(&mut self, flow: &Arc<str>, now: Now) -> Option<f64> {
        if let Some((at, p99)) = self.p99s.get(flow)
            && now.instant.saturating_duration_since(*at) < std::time::Duration::from_secs(10)
        {
            return *p99;
        }
        let mut acc = crate::breakdown::Accumulator::default();
        for m in in_window(&self.minutes, now.minute(), 5) {
            acc.merge(&m.groups.select(flow, None, None));
        }
        let (moments, p99) = acc.end_to_end();
        let p99 = (moments.n >= 100).then_some(p99);
        self.p99s.insert(flow.clone(), (now.instant, p99));
        p99
    }

    fn record(&mut self, finished: FinishedFlow, now: Now, out: &mut impl Observer) {
        let Some(mut analysis) = analyze_flow_with(&finished.traces, self.clock_tolerance_ns)
        else {
            return;
        };
        let split = split_from(&finished.traces, &self.assembler);
        let mut overflowed = 0;
        for skew in &analysis.clock_skew {
            let service = self
                .labels
                .service(&skew.service, self.label_limit, &mut overflowed);
            let offset = skew.offset_ns as f64 / 1e9;
            out.clock_skew(&service, offset);
            let seen = self
                .clock_skew
                .entry(service.clone())
                .or_insert_with(|| ClockSkewSeen {
                    service,
                    adjusted_spans: 0,
                    last_offset_seconds: 0.0,
                });
            seen.adjusted_spans += 1;
            seen.last_offset_seconds = offset;
        }
        // Every name used as a key from here on is bounded: metric labels,
        // window groups and the recent-flows lists alike.
        self.labels
            .bound(&mut analysis, self.label_limit, &mut overflowed);
        if overflowed > 0 {
            out.series_overflow(overflowed);
        }
        // What this instance stands for under head sampling; counts of
        // observations are whole, rounded at random without bias.
        let weight = analysis.sampling.weight(self.default_threshold);
        let seed = u64::from_be_bytes(analysis.traces[0].0[8..].try_into().unwrap_or_default());
        let whole = whole(weight, seed);
        out.flow_finished(&analysis.flow, analysis.sampling.mixed, split);
        let minute = now.minute();
        if let Some(reason) = finished.incomplete {
            out.flow_incomplete(&analysis.flow, reason, whole);
            let slot = slot(&mut self.minutes, minute);
            *slot.incomplete.entry(analysis.flow.clone()).or_default() += weight;
            return;
        }
        self.keep_if_worth_it(&analysis, &finished.traces, now, out);
        let slot = slot(&mut self.minutes, minute);
        slot.groups.add(&analysis, weight);
        if analysis.is_error {
            *slot.errors.entry(analysis.flow.clone()).or_default() += weight;
        }
        out.flow_recorded(&RecordedFlow {
            analysis: &analysis,
            whole,
        });
        let flow = analysis.flow.clone();
        Arc::make_mut(self.recent.entry(flow).or_default()).push(analysis, finished.traces);
    }

    /// What queries read from now on: the windows, the recent instances
    /// and the TCC findings as of `now`. Cheap: minutes and instances are
    /// shared, not copied; the writes after it copy what they change.
    pub fn view(&self, now: Now) -> View {
        View {
            minutes: self.minutes.iter().cloned().collect(),
            recent: self.recent.clone(),
            tcc_recent: self.tcc.recent().cloned().collect(),
            tcc_unfinished: self.tcc.unfinished(now.wall_ns()),
            tcc_counts: tally(&self.tcc_counts),
            shadow: tally(&self.shadow),
            clock_skew: self.clock_skew.values().cloned().collect(),
            as_of: Some(now),
        }
    }
}

/// What the queries read: the analysis's results as of one tick, immutable
/// and shared. Queries never wait for ingest or for a tick, and a slow
/// query never holds them up: the pipeline publishes a new view after
/// every tick and answers from the last one (at most a tick old).
#[derive(Debug, Default)]
pub struct View {
    minutes: Vec<Arc<Minute>>,
    recent: HashMap<Arc<str>, Arc<RecentFlows>>,
    /// Newest first.
    tcc_recent: Vec<GlobalAnomaly>,
    /// Oldest first.
    tcc_unfinished: Vec<Unfinished>,
    tcc_counts: Vec<AnomalyCount>,
    shadow: Vec<AnomalyCount>,
    clock_skew: Vec<ClockSkewSeen>,
    /// The time it was taken at (`None` for the empty view at start).
    as_of: Option<Now>,
}

impl View {
    /// What the fence would have prevented at participants without it, by
    /// resource and kind, since start (the shadow fence report's counts).
    pub fn tcc_shadow_counts(&self) -> Vec<AnomalyCount> {
        self.shadow.clone()
    }

    /// TCC anomalies counted since start, by resource and kind.
    pub fn tcc_anomaly_counts(&self) -> Vec<AnomalyCount> {
        self.tcc_counts.clone()
    }

    /// The most recent anomalies the fence would have prevented, newest
    /// first (the shadow fence report's examples).
    pub fn tcc_shadow_examples(&self, resource: Option<&str>, limit: usize) -> Vec<GlobalAnomaly> {
        self.tcc_recent
            .iter()
            .filter(|a| shadowed(a))
            .filter(|a| resource.is_none_or(|r| a.resource == r))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The most recent TCC anomalies, newest first, that match the filters.
    pub fn tcc_anomalies(
        &self,
        kind: Option<&str>,
        resource: Option<&str>,
        limit: usize,
    ) -> Vec<GlobalAnomaly> {
        self.tcc_recent
            .iter()
            .filter(|a| kind.is_none_or(|k| a.kind == k))
            .filter(|a| resource.is_none_or(|r| a.resource == r))
            .take(limit)
            .cloned()
            .collect()
    }

    /// TCC transactions waiting past the timeout as of the view, oldest
    /// first, their ages as of `now`.
    pub fn tcc_unfinished(&self, limit: usize, now: Now) -> Vec<Unfinished> {
        let since = self.as_of.map_or(0.0, |then| {
            now.wall
                .duration_since(then.wall)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        self.tcc_unfinished
            .iter()
            .take(limit)
            .cloned()
            .map(|mut u| {
                u.age_seconds += since;
                u
            })
            .collect()
    }

    /// The services whose spans were stage `stage` in the recent instances
    /// of `flow` (the service that runs a stage, for its USE signals).
    pub fn stage_services(&self, flow: &str, stage: &str) -> Vec<String> {
        let mut services: Vec<String> = self
            .recent
            .get(flow)
            .into_iter()
            .flat_map(|r| r.items.iter())
            .filter_map(|r| r.spans.as_ref())
            .flatten()
            .flatten()
            .filter(|s| s.business.stage.as_deref() == Some(stage))
            .map(|s| s.service.to_string())
            .collect();
        services.sort();
        services.dedup();
        services
    }

    /// The services whose clocks the analysis corrected, by name.
    pub fn clock_skew(&self) -> Vec<ClockSkewSeen> {
        self.clock_skew.clone()
    }

    /// The breakdown [`Query`] asks for.
    pub fn breakdown(&self, q: &Query<'_>) -> Breakdown {
        windows::breakdown(
            &in_window(&self.minutes, q.now_minute, q.window_minutes).collect::<Vec<_>>(),
            q,
        )
    }

    /// Every group recorded in the window, merged.
    pub fn groups(&self, window_minutes: u64, now_minute: u64) -> Groups {
        let mut all = Groups::default();
        for m in in_window(&self.minutes, now_minute, window_minutes) {
            all.merge(&m.groups);
        }
        all
    }

    /// Every flow with traffic in the window.
    pub fn flows(&self, window_minutes: u64, now_minute: u64) -> Vec<FlowSummary> {
        windows::flows(&in_window(&self.minutes, now_minute, window_minutes).collect::<Vec<_>>())
    }

    /// The slowest recent instances of `flow`, by end-to-end time, or by
    /// `stage`'s critical-path time when given.
    pub fn slow(&self, flow: &str, stage: Option<&str>, limit: usize) -> Vec<SlowFlow> {
        let Some(recent) = self.recent.get(flow) else {
            return Vec::new();
        };
        let key = |f: &FlowAnalysis| match stage {
            None => Some(f.duration_ns()),
            Some(s) => f
                .stages
                .iter()
                .find(|st| &*st.stage == s)
                .map(|st| st.critical_path_ns),
        };
        let mut matching: Vec<(u64, &Recent)> = recent
            .items
            .iter()
            .filter_map(|r| key(&r.analysis).map(|k| (k, &**r)))
            .collect();
        matching.sort_by_key(|m| std::cmp::Reverse(m.0));
        matching
            .into_iter()
            .take(limit)
            .map(|(_, r)| slow_flow(&r.analysis, r.spans.as_deref()))
            .collect()
    }

    /// End-to-end latency of `flow` per minute over the window, oldest first.
    pub fn timeseries(&self, q: &Query<'_>) -> Vec<MinutePoint> {
        windows::timeseries(
            &in_window(&self.minutes, q.now_minute, q.window_minutes).collect::<Vec<_>>(),
            q,
        )
    }

    /// The minutes of the last `window_minutes` up to `now_minute`.
    pub fn windows(&self, window_minutes: u64, now_minute: u64) -> Windows {
        Windows::from_minutes(
            in_window(&self.minutes, now_minute, window_minutes)
                .cloned()
                .collect(),
        )
    }
}

/// The kind among the global anomaly kinds named `kind`.
fn known_kind(kind: &str) -> Option<&'static str> {
    paytrace_semconv::tcc::GLOBAL_ANOMALY_KINDS
        .iter()
        .copied()
        .find(|k| *k == kind)
}

fn tally(map: &BTreeMap<(Arc<str>, &'static str), u64>) -> Vec<AnomalyCount> {
    map.iter()
        .filter(|(_, n)| **n > 0)
        .map(|((resource, kind), count)| AnomalyCount {
            resource: resource.to_string(),
            kind: (*kind).to_owned(),
            count: *count,
        })
        .collect()
}

/// `weight` as a whole number of observations, rounded up or down at random
/// in proportion (so the expected count is exact): `seed` picks, the same
/// seed the same way.
pub(crate) fn whole(weight: f64, seed: u64) -> u64 {
    let floor = weight.floor();
    let fraction = weight - floor;
    // SplitMix64 of the seed as a uniform number in [0, 1).
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let uniform = (z >> 11) as f64 / (1u64 << 53) as f64;
    floor as u64 + u64::from(uniform < fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::decode::Decoded;
    use crate::span::TraceId;
    use crate::testing::{numbered, span, stage};
    use recent::{HELD_PER_FLOW, RELEASE_SLACK};

    /// The start of minute `m` since the epoch, on both clocks.
    fn at_minute(m: u64) -> Now {
        Now::at(
            Instant::now(),
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(m * 60),
        )
    }

    fn one_trace(id: u8, flow: &str, ms: u64) -> Decoded {
        let mut spans = numbered(vec![stage(span(flow, 0, ms * 1_000_000))]);
        spans[0].trace_id = TraceId([id; 16]);
        spans[0].business.flow = Some(Arc::from(flow));
        Decoded {
            spans,
            ..Decoded::default()
        }
    }

    #[test]
    fn spans_are_held_for_the_slowest_and_the_newest_instances_only() {
        let mut core = Core::new(&PipelineConfig::default());
        // 150 instances; durations 1..=150 ms, except the oldest, the slowest.
        for i in 0..150u64 {
            let ms = if i == 0 { 10_000 } else { i };
            let mut t = one_trace(0, "checkout", ms);
            t.spans[0].trace_id = TraceId((i as u128 + 1).to_be_bytes());
            core.ingest(t, Instant::now(), &mut ());
            core.flush(at_minute(100), &mut ());
        }
        let view = core.view(at_minute(100));
        let slow = view.slow("checkout", None, 500);
        assert_eq!(slow.len(), 150);
        let held: Vec<&SlowFlow> = slow.iter().filter(|f| f.spans.is_some()).collect();
        assert!(
            (HELD_PER_FLOW..=HELD_PER_FLOW + RELEASE_SLACK).contains(&held.len()),
            "{} held",
            held.len()
        );
        assert!(
            slow[0].spans.is_some(),
            "the slowest keeps its spans however old"
        );
        assert!(
            (130..150).all(|ms| slow
                .iter()
                .any(|f| (f.duration_seconds - ms as f64 / 1e3).abs() < 1e-9 && f.spans.is_some())),
            "the newest keep theirs"
        );
        let spans = slow[0].spans.as_ref().expect("held");
        assert_eq!(spans.len(), 1);
        assert!(spans[0].critical, "a lone root is its own critical path");
        // Per minute: one point with all of them.
        let points = view.timeseries(&Query::new("checkout", 15, 100));
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].traces, 150);
        assert_eq!(points[0].start_unix_seconds, 6_000);
    }

    /// Two pipelines fed alike, one of them through a snapshot (serialised
    /// and read back as a file would be) halfway: every answer agrees at
    /// every later tick. The snapshot is taken with a finished flow in the
    /// windows, a trace still assembling, a flow waiting for its callback
    /// and a TCC branch tried and not yet confirmed.
    /// The version-1 windows a peer of the build before versioned windows
    /// sent (no `version` field) are still read; a newer version is
    /// refused, never misread.
    #[test]
    fn a_version_1_windows_fixture_is_still_read_and_a_newer_one_refused() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/windows-v1.json");
        let bytes = std::fs::read(path).expect("the fixture");
        let message: crate::format::v1::Windows =
            serde_json::from_slice(&bytes).expect("version 1 parses");
        assert_eq!(message.version, 1, "no version field means version 1");
        let windows = Windows::from_message(&bytes).expect("version 1 is read");
        let b = windows.breakdown(&Query::new("checkout", 5, 100));
        assert_eq!(b.traces, 2);
        assert!((b.estimated_flows - 5.0).abs() < 1e-9);
        let overview = windows.flows(5, 100);
        let checkout = overview.iter().find(|f| f.flow == "checkout");
        assert_eq!(
            checkout.map(|f| (f.traces, f.payment_methods.clone(), f.error_share > 0.0)),
            Some((2, vec!["alipay".to_owned()], true)),
            "the failed instance is counted"
        );

        // A newer version whose minutes version 1 could not even parse.
        let newer = br#"{"version":2,"minutes":[{"minute":1,"sketches":"opaque"}]}"#;
        let refused = Windows::from_message(newer).expect_err("version 2 is refused");
        assert!(
            refused.to_string().contains("format version 2"),
            "{refused}"
        );
    }

    /// Queries read the view published by the last tick: they answer
    /// while ingest or a tick holds the core (here, the test holds it),
    /// and what arrived since the last tick shows after the next one.
    #[test]
    fn whole_weights_are_right_on_average() {
        let n = 100_000u64;
        let total: u64 = (0..n).map(|i| whole(3.3, i)).sum();
        let mean = total as f64 / n as f64;
        assert!((mean - 3.3).abs() < 0.01, "mean {mean}");
        assert_eq!(whole(10.0, 7), 10);
    }

    /// The core and the modules it runs stay free of I/O: none of their
    /// sources names a crate of the network, the runtime, metrics export
    /// or the command line (`opentelemetry_proto::tonic::…` is the protobuf
    /// types' module, not the tonic crate).
    #[test]
    fn the_core_imports_no_io_crate() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<std::path::PathBuf> = [
            "assembler.rs",
            "attribute.rs",
            "breakdown.rs",
            "config.rs",
            "critical_path.rs",
            "decode.rs",
            "flows.rs",
            "span.rs",
            "tcc.rs",
            "tree.rs",
        ]
        .iter()
        .map(|f| src.join(f))
        .collect();
        for dir in ["core", "decode", "format"] {
            for entry in std::fs::read_dir(src.join(dir)).expect("a source directory") {
                files.push(entry.expect("an entry").path());
            }
        }
        let forbidden = [
            "tokio",
            "axum",
            "tonic",
            "reqwest",
            "prometheus",
            "clap",
            "indicatif",
            "hyper",
        ];
        for path in &files {
            let text = std::fs::read_to_string(path).expect("a source file");
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for name in forbidden {
                    let path_start = format!("{name}::");
                    let named = line.match_indices(&path_start).any(|(at, _)| {
                        !line[..at].ends_with(|c: char| c == ':' || c == '_' || c.is_alphanumeric())
                    });
                    assert!(!named, "{} uses {name}: {line}", path.display());
                }
            }
        }
        assert!(files.len() >= 20, "only {} files read", files.len());
    }
}
