//! The live pipeline: decoded spans in; complete traces, stitched flows,
//! rolling-window breakdowns, slow flows and Prometheus metrics out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use paytrace_semconv::{
    DEFAULT_LATENCY_BUCKETS, OVERFLOW_LABEL_VALUE, aggregator_drop_reason, label, metric,
};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use serde::Serialize;

use crate::analysis::{FlowAnalysis, analyze_flow_with};
use crate::assembler::{Assembler, AssemblerLimits};
use crate::breakdown::{Breakdown, Groups};
use crate::decode::Decoded;
use crate::flows::{FinishedFlow, FlowBuffer, FlowSettings};
use crate::tcc::{GlobalAnomaly, Observed, TccSettings, TccTracker, Unfinished};

/// How spans reached the aggregator: the `protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    HttpProtobuf,
    /// OTLP/HTTP with a JSON body.
    HttpJson,
}

impl Protocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http_protobuf",
            Self::HttpJson => "http_json",
        }
    }
}

/// Settings of the pipeline.
#[derive(Clone, Debug, Default)]
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
    /// [`DEFAULT_LATENCY_BUCKETS`].
    pub buckets: Option<Vec<f64>>,
    /// The critical-path walk's clock tolerance; `None` for
    /// [`DEFAULT_CLOCK_TOLERANCE_NS`](crate::tree::DEFAULT_CLOCK_TOLERANCE_NS).
    pub clock_tolerance: Option<std::time::Duration>,
}

/// The windows the API offers, in minutes.
pub const WINDOWS_MINUTES: [u64; 4] = [1, 5, 15, 60];

const RECENT_PER_FLOW: usize = 500;
/// Recent instances per flow that keep their spans (for the waterfall):
/// the slowest, and always the newest few.
const HELD_PER_FLOW: usize = 100;
const NEWEST_HELD: usize = 20;
const RELEASE_SLACK: usize = 20;

/// The recent instances of one flow, oldest first, and how many hold spans.
#[derive(Debug, Default)]
struct RecentFlows {
    items: VecDeque<Recent>,
    held: usize,
}

/// A recent flow instance: its analysis and, while held, its spans.
#[derive(Debug)]
struct Recent {
    analysis: FlowAnalysis,
    spans: Option<Vec<Vec<crate::span::Span>>>,
}

/// One span of a slow flow, for a waterfall.
#[derive(Clone, Debug, Serialize)]
pub struct SpanView {
    /// Its trace.
    pub trace_id: String,
    /// Its id.
    pub span_id: String,
    /// Its parent, if any.
    pub parent_span_id: Option<String>,
    /// The span name.
    pub name: String,
    /// `service.name`.
    pub service: String,
    /// Its stage, if it is one.
    pub stage: Option<String>,
    /// Start, seconds after the flow's start.
    pub offset_seconds: f64,
    /// Duration, seconds.
    pub duration_seconds: f64,
    /// Whether its status is an error.
    pub error: bool,
    /// Whether part of it is on the flow's critical path.
    pub critical: bool,
}

/// One minute of a flow's end-to-end latency.
#[derive(Clone, Debug, Serialize)]
pub struct MinutePoint {
    /// The minute's start, seconds since the epoch.
    pub start_unix_seconds: u64,
    /// Complete instances that ended in the minute.
    pub traces: u64,
    /// End-to-end median, seconds.
    pub p50: f64,
    /// End-to-end 99th percentile, seconds.
    pub p99: f64,
}

/// One flow instance kept for the slow-flows view.
#[derive(Clone, Debug, Serialize)]
pub struct SlowFlow {
    /// The flow.
    pub flow: String,
    /// Its flow id, if any.
    pub flow_id: Option<String>,
    /// Payment method, if any.
    pub payment_method: Option<String>,
    /// Payment channel, if any.
    pub payment_channel: Option<String>,
    /// Start, seconds since the epoch.
    pub start_unix_seconds: f64,
    /// End to end, seconds.
    pub duration_seconds: f64,
    /// Whether a trace root ended in error.
    pub error: bool,
    /// Its traces, earliest first.
    pub trace_ids: Vec<String>,
    /// The critical path, earliest first.
    pub critical_path: Vec<PathStep>,
    /// Per stage: seconds on the critical path.
    pub stages: Vec<(String, f64)>,
    /// Every span, earliest first, while the aggregator still holds them
    /// (it holds the slowest and the newest instances of each flow).
    pub spans: Option<Vec<SpanView>>,
}

/// One step of a slow flow's critical path.
#[derive(Clone, Debug, Serialize)]
pub struct PathStep {
    /// Its trace.
    pub trace_id: String,
    /// The span, absent for an async wait.
    pub span_id: Option<String>,
    /// The stage the time counts for.
    pub stage: String,
    /// Offset from the flow's start, seconds.
    pub offset_seconds: f64,
    /// Length, seconds.
    pub duration_seconds: f64,
}

/// How many TCC anomalies of one kind one resource had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AnomalyCount {
    /// The TCC resource (bounded: `other` past the label limit).
    pub resource: String,
    /// The anomaly kind.
    pub kind: String,
    /// Since the aggregator started.
    pub count: u64,
}

/// One line of the flows overview.
#[derive(Clone, Debug, Serialize)]
pub struct FlowSummary {
    /// The flow.
    pub flow: String,
    /// Complete flow instances in the window.
    pub traces: u64,
    /// End-to-end median, seconds.
    pub p50: f64,
    /// End-to-end 99th percentile, seconds.
    pub p99: f64,
    /// Share of instances whose root ended in error.
    pub error_share: f64,
    /// Instances reported incomplete in the window.
    pub incomplete: u64,
    /// Payment methods seen in the window.
    pub payment_methods: Vec<String>,
    /// Payment channels seen in the window.
    pub payment_channels: Vec<String>,
}

#[derive(Debug, Default)]
struct Minute {
    minute: u64,
    groups: Groups,
    errors: HashMap<Arc<str>, u64>,
    incomplete: HashMap<Arc<str>, u64>,
}

struct State {
    assembler: Assembler,
    flows: FlowBuffer,
    minutes: VecDeque<Minute>,
    recent: HashMap<Arc<str>, RecentFlows>,
    labels: LabelValues,
    series: SeriesCache,
    tcc: TccTracker,
}

/// The distinct values seen per metric label, up to the label limit. Every
/// bounded value is the one `Arc` kept here, so its pointer identifies it.
#[derive(Debug)]
struct LabelValues {
    flow: crate::FastSet<Arc<str>>,
    payment_method: crate::FastSet<Arc<str>>,
    payment_channel: crate::FastSet<Arc<str>>,
    stage: crate::FastSet<Arc<str>>,
    /// TCC resources.
    resource: crate::FastSet<Arc<str>>,
    overflow: Arc<str>,
}

impl Default for LabelValues {
    fn default() -> Self {
        Self {
            flow: Default::default(),
            payment_method: Default::default(),
            payment_channel: Default::default(),
            stage: Default::default(),
            resource: Default::default(),
            overflow: Arc::from(OVERFLOW_LABEL_VALUE),
        }
    }
}

/// The address of a bounded label value (0 for none). [`LabelValues`] keeps
/// every bounded value alive as long as the pipeline, so an address names
/// one value and is never reused for another.
fn label_addr(value: Option<&Arc<str>>) -> usize {
    value.map_or(0, |v| Arc::as_ptr(v).cast::<u8>() as usize)
}

/// Histogram handles by the addresses of their bounded label values:
/// `with_label_values` hashes every label string under a lock, a few times
/// per flow instance. Equal strings behind different pointers only cost a
/// second entry for the same series; the cache is dropped whole past a size.
#[derive(Debug, Default)]
struct SeriesCache {
    /// (flow, stage, method, channel) -> critical path, self.
    stages: crate::FastMap<[usize; 4], [prometheus::Histogram; 2]>,
    /// (flow, method, channel), is_error -> end to end.
    flows: crate::FastMap<([usize; 3], bool), prometheus::Histogram>,
}

impl SeriesCache {
    const MAX: usize = 16_384;
}

/// The aggregator's Prometheus families.
struct Metrics {
    registry: Registry,
    flow_duration: HistogramVec,
    stage_critical_path: HistogramVec,
    stage_self: HistogramVec,
    flows_incomplete: IntCounterVec,
    spans_received: IntCounterVec,
    spans_dropped: IntCounterVec,
    spans_truncated: IntCounterVec,
    traces_live: IntGauge,
    traces_completed: IntCounter,
    traces_evicted: IntCounterVec,
    series_overflow: IntCounter,
    tcc_unfinished: IntGauge,
    tcc_unfinished_oldest: prometheus::Gauge,
    tcc_anomalies: IntCounterVec,
}

impl Metrics {
    fn new(buckets: &[f64]) -> prometheus::Result<Self> {
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
        };
        let stage_labels = [
            label::FLOW,
            label::STAGE,
            label::PAYMENT_METHOD,
            label::PAYMENT_CHANNEL,
        ];
        let m = Self {
            registry: Registry::new(),
            flow_duration: histogram(
                metric::FLOW_DURATION_SECONDS,
                "End-to-end duration of complete flow instances, stitched across traces.",
                &[
                    label::FLOW,
                    label::PAYMENT_METHOD,
                    label::PAYMENT_CHANNEL,
                    label::OUTCOME,
                ],
            )?,
            stage_critical_path: histogram(
                metric::STAGE_CRITICAL_PATH_SECONDS,
                "Per flow instance, a stage's time on the flow's critical path.",
                &stage_labels,
            )?,
            stage_self: histogram(
                metric::STAGE_SELF_SECONDS,
                "Per flow instance, a stage's self time (duration minus the union of its children).",
                &stage_labels,
            )?,
            flows_incomplete: IntCounterVec::new(
                Opts::new(
                    metric::FLOWS_INCOMPLETE_TOTAL,
                    "Flow instances reported incomplete, by reason.",
                ),
                &[label::FLOW, label::REASON],
            )?,
            spans_received: IntCounterVec::new(
                Opts::new(
                    metric::AGGREGATOR_SPANS_RECEIVED_TOTAL,
                    "Spans received, by protocol (valid or not).",
                ),
                &[label::PROTOCOL],
            )?,
            spans_dropped: IntCounterVec::new(
                Opts::new(
                    metric::AGGREGATOR_SPANS_DROPPED_TOTAL,
                    "Spans not analysed, by reason.",
                ),
                &[label::REASON],
            )?,
            spans_truncated: IntCounterVec::new(
                Opts::new(
                    metric::AGGREGATOR_SPANS_TRUNCATED_TOTAL,
                    "Spans kept with part of them cut to the aggregator's limits, by reason.",
                ),
                &[label::REASON],
            )?,
            traces_live: IntGauge::new(metric::AGGREGATOR_TRACES_LIVE, "Traces being assembled.")?,
            traces_completed: IntCounter::new(
                metric::AGGREGATOR_TRACES_COMPLETED_TOTAL,
                "Traces assembled and handed to flow stitching.",
            )?,
            traces_evicted: IntCounterVec::new(
                Opts::new(
                    metric::AGGREGATOR_TRACES_EVICTED_TOTAL,
                    "Traces handed on before they were idle, by reason.",
                ),
                &[label::REASON],
            )?,
            series_overflow: IntCounter::new(
                metric::AGGREGATOR_SERIES_OVERFLOW_TOTAL,
                "Label values folded into `other` because a label reached its limit.",
            )?,
            tcc_unfinished: IntGauge::new(
                metric::TCC_TRANSACTIONS_UNFINISHED,
                "Global TCC transactions with a branch tried and waiting past the TCC timeout.",
            )?,
            tcc_unfinished_oldest: prometheus::Gauge::new(
                metric::TCC_UNFINISHED_OLDEST_SECONDS,
                "Age of the oldest waiting Try among unfinished TCC transactions (0 when none).",
            )?,
            tcc_anomalies: IntCounterVec::new(
                Opts::new(
                    metric::TCC_GLOBAL_ANOMALIES_TOTAL,
                    "TCC anomalies found across services from span timestamps, by resource and kind.",
                ),
                &[label::RESOURCE, label::KIND],
            )?,
        };
        let r = &m.registry;
        r.register(Box::new(m.flow_duration.clone()))?;
        r.register(Box::new(m.stage_critical_path.clone()))?;
        r.register(Box::new(m.stage_self.clone()))?;
        r.register(Box::new(m.flows_incomplete.clone()))?;
        r.register(Box::new(m.spans_received.clone()))?;
        r.register(Box::new(m.spans_dropped.clone()))?;
        r.register(Box::new(m.spans_truncated.clone()))?;
        r.register(Box::new(m.traces_live.clone()))?;
        r.register(Box::new(m.traces_completed.clone()))?;
        r.register(Box::new(m.traces_evicted.clone()))?;
        r.register(Box::new(m.series_overflow.clone()))?;
        r.register(Box::new(m.tcc_unfinished.clone()))?;
        r.register(Box::new(m.tcc_unfinished_oldest.clone()))?;
        r.register(Box::new(m.tcc_anomalies.clone()))?;
        // Series exist from the start at zero, so that `increase()` and
        // `rate()` see the first event.
        for reason in aggregator_drop_reason::ALL {
            m.spans_dropped.with_label_values(&[reason]);
        }
        for reason in paytrace_semconv::aggregator_truncation::ALL {
            m.spans_truncated.with_label_values(&[reason]);
        }
        for reason in [
            crate::assembler::Overflow::MaxTraces,
            crate::assembler::Overflow::MaxBytes,
        ] {
            m.traces_evicted.with_label_values(&[reason.as_str()]);
        }
        for p in [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson] {
            m.spans_received.with_label_values(&[p.as_str()]);
        }
        Ok(m)
    }
}

/// The live pipeline; share it behind an `Arc`.
pub struct Pipeline {
    state: Mutex<State>,
    metrics: Metrics,
    label_limit: usize,
    clock_tolerance_ns: u64,
    buffered_bytes: AtomicUsize,
    max_bytes: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

/// Nanoseconds since the epoch, by the wall clock.
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Minutes since the epoch, by the wall clock.
pub fn wall_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl Pipeline {
    /// A pipeline with `config`.
    pub fn new(config: PipelineConfig) -> Self {
        let max_bytes = config.assembler.max_bytes;
        Self {
            buffered_bytes: AtomicUsize::new(0),
            max_bytes,
            state: Mutex::new(State {
                assembler: Assembler::new(config.assembler),
                flows: FlowBuffer::new(config.flows),
                minutes: VecDeque::new(),
                recent: HashMap::new(),
                labels: LabelValues::default(),
                series: SeriesCache::default(),
                tcc: TccTracker::new(config.tcc),
            }),
            metrics: Metrics::new(config.buckets.as_deref().unwrap_or(DEFAULT_LATENCY_BUCKETS))
                .expect("the aggregator's families are distinct and their buckets checked"),
            label_limit: config.label_limit.unwrap_or(200),
            clock_tolerance_ns: config
                .clock_tolerance
                .map_or(crate::tree::DEFAULT_CLOCK_TOLERANCE_NS, |t| {
                    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
                }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The registry holding the aggregator's metrics.
    pub fn registry(&self) -> &Registry {
        &self.metrics.registry
    }

    /// Counts spans dropped for `reason` (one of
    /// [`paytrace_semconv::aggregator_drop_reason::ALL`]).
    fn count_dropped(&self, reason: &str, spans: u64) {
        self.metrics
            .spans_dropped
            .with_label_values(&[reason])
            .inc_by(spans);
    }

    /// Buffers the spans of one decoded request that arrived at `now`.
    pub fn ingest(&self, protocol: Protocol, decoded: Decoded, now: Instant) {
        let received = decoded.spans.len() as u64 + decoded.rejected;
        self.metrics
            .spans_received
            .with_label_values(&[protocol.as_str()])
            .inc_by(received);
        if decoded.rejected > 0 {
            self.count_dropped(aggregator_drop_reason::INVALID, decoded.rejected);
        }
        for (kind, n) in crate::decode::Truncation::ALL.iter().zip(decoded.truncated) {
            if n > 0 {
                self.metrics
                    .spans_truncated
                    .with_label_values(&[kind.as_str()])
                    .inc_by(n);
            }
        }
        let mut state = self.state();
        let added = state.assembler.add(decoded.spans, now);
        for (reason, n) in added.dropped {
            self.count_dropped(reason.as_str(), n);
        }
        let mut late = 0;
        for span in added.late {
            // The TCC tracker sees a span that joins its flow, as it saw
            // the rest of the trace.
            if span.business.tcc.is_some() && state.flows.waits_for(span.trace_id) {
                self.follow_tcc(&mut state, std::slice::from_ref(&span), now);
            }
            if !state.flows.add_late(span, now) {
                late += 1;
            }
        }
        if late > 0 {
            self.count_dropped(aggregator_drop_reason::LATE, late);
        }
        self.publish_size(&state);
    }

    /// Moves time forward: completes idle traces, finishes idle flows,
    /// records them. Call it about once a second.
    pub fn tick(&self, now: Instant, minute: u64) {
        let mut state = self.state();
        let completed = state.assembler.complete_idle(now);
        let mut finished = Vec::new();
        for trace in completed {
            self.metrics.traces_completed.inc();
            if let Some(reason) = trace.evicted {
                self.metrics
                    .traces_evicted
                    .with_label_values(&[reason.as_str()])
                    .inc();
            }
            self.follow_tcc(&mut state, &trace.spans, now);
            finished.extend(state.flows.add(trace.spans, trace.last_arrival.max(now)));
        }
        finished.extend(state.flows.finish_idle(now));
        for flow in finished {
            self.record(&mut state, flow, minute);
        }
        let wall = wall_ns();
        let found = state.tcc.tick(now, wall);
        self.count_tcc(&mut state, &found, wall);
        self.publish_size(&state);
    }

    /// Hands the TCC spans of one completed trace to the tracker.
    fn follow_tcc(&self, state: &mut State, spans: &[crate::span::Span], now: Instant) {
        for span in spans.iter().filter(|s| s.business.tcc.is_some()) {
            if let Some(resource) = span.business.tcc.as_ref().and_then(|t| t.resource.as_ref()) {
                // A resource's anomaly series start at zero when it is first
                // seen, before any anomaly of it can be counted.
                if !state.labels.resource.contains(resource) {
                    let labels = &mut state.labels;
                    let bounded = self.bounded(&mut labels.resource, &labels.overflow, resource);
                    for kind in paytrace_semconv::tcc::GLOBAL_ANOMALY_KINDS {
                        self.metrics
                            .tcc_anomalies
                            .with_label_values(&[bounded.as_ref(), *kind]);
                    }
                }
            }
            match state.tcc.observe(span, now) {
                Observed::Ignored | Observed::Tracked => {}
                Observed::Limit => self.count_dropped(aggregator_drop_reason::TCC_LIMIT, 1),
                Observed::Malformed(anomaly) => {
                    self.count_tcc_anomaly(state, &anomaly);
                    state.tcc.list(anomaly);
                }
            }
        }
    }

    fn count_tcc_anomaly(&self, state: &mut State, a: &GlobalAnomaly) {
        let labels = &mut state.labels;
        let resource = self.bounded(
            &mut labels.resource,
            &labels.overflow,
            &Arc::from(a.resource.as_str()),
        );
        self.metrics
            .tcc_anomalies
            .with_label_values(&[&resource, a.kind])
            .inc();
    }

    /// TCC anomalies counted since start, by resource and kind (what
    /// `paytrace_tcc_global_anomalies_total` holds).
    pub fn tcc_anomaly_counts(&self) -> Vec<AnomalyCount> {
        use prometheus::core::Collector;
        let mut counts: Vec<AnomalyCount> = self
            .metrics
            .tcc_anomalies
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter_map(|m| {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                };
                let count = m.get_counter().get_value() as u64;
                (count > 0).then(|| AnomalyCount {
                    resource: label(label::RESOURCE).unwrap_or_default(),
                    kind: label(label::KIND).unwrap_or_default(),
                    count,
                })
            })
            .collect();
        counts.sort_by(|a, b| (&a.resource, &a.kind).cmp(&(&b.resource, &b.kind)));
        counts
    }

    /// Counts anomalies a replay found and refreshes the unfinished gauges.
    fn count_tcc(&self, state: &mut State, found: &[GlobalAnomaly], wall: u64) {
        for a in found {
            self.count_tcc_anomaly(state, a);
        }
        let (unfinished, oldest) = state.tcc.unfinished_summary(wall);
        self.metrics
            .tcc_unfinished
            .set(i64::try_from(unfinished).unwrap_or(i64::MAX));
        self.metrics.tcc_unfinished_oldest.set(oldest);
    }

    /// The most recent TCC anomalies, newest first, that match the filters.
    pub fn tcc_anomalies(
        &self,
        kind: Option<&str>,
        resource: Option<&str>,
        limit: usize,
    ) -> Vec<GlobalAnomaly> {
        self.state()
            .tcc
            .recent()
            .filter(|a| kind.is_none_or(|k| a.kind == k))
            .filter(|a| resource.is_none_or(|r| a.resource == r))
            .take(limit)
            .cloned()
            .collect()
    }

    /// TCC transactions waiting past the timeout, oldest first.
    pub fn tcc_unfinished(&self, limit: usize) -> Vec<Unfinished> {
        let mut all = self.state().tcc.unfinished(wall_ns());
        all.truncate(limit);
        all
    }

    /// Finishes everything buffered now (at shutdown, or in tests).
    pub fn flush(&self, minute: u64) {
        let mut state = self.state();
        let completed = state.assembler.drain();
        let mut finished = Vec::new();
        let now = Instant::now();
        for trace in completed {
            self.metrics.traces_completed.inc();
            self.follow_tcc(&mut state, &trace.spans, now);
            finished.extend(state.flows.add(trace.spans, now));
        }
        finished.extend(state.flows.drain());
        for flow in finished {
            self.record(&mut state, flow, minute);
        }
        let wall = wall_ns();
        let found = state.tcc.flush(wall);
        self.count_tcc(&mut state, &found, wall);
        self.publish_size(&state);
    }

    fn record(&self, state: &mut State, finished: FinishedFlow, minute: u64) {
        let Some(mut analysis) = analyze_flow_with(&finished.traces, self.clock_tolerance_ns)
        else {
            return;
        };
        // Every name used as a key from here on is bounded: metric labels,
        // window groups and the recent-flows lists alike.
        self.bound(&mut state.labels, &mut analysis);
        let slot = slot(&mut state.minutes, minute);
        if let Some(reason) = finished.incomplete {
            self.metrics
                .flows_incomplete
                .with_label_values(&[&analysis.flow, reason])
                .inc();
            *slot.incomplete.entry(analysis.flow.clone()).or_default() += 1;
            return;
        }
        slot.groups.add(&analysis);
        if analysis.is_error {
            *slot.errors.entry(analysis.flow.clone()).or_default() += 1;
        }
        self.observe(&mut state.series, &analysis);
        let recent = state.recent.entry(analysis.flow.clone()).or_default();
        if recent.items.len() >= RECENT_PER_FLOW
            && recent.items.pop_front().is_some_and(|r| r.spans.is_some())
        {
            recent.held -= 1;
        }
        recent.items.push_back(Recent {
            analysis,
            spans: Some(finished.traces),
        });
        recent.held += 1;
        release_spans(recent);
    }

    /// The kept copy of `value`, or `other` once `seen` has reached the
    /// label limit.
    fn bounded(
        &self,
        seen: &mut crate::FastSet<Arc<str>>,
        overflow: &Arc<str>,
        value: &Arc<str>,
    ) -> Arc<str> {
        if let Some(v) = seen.get(value) {
            return v.clone();
        }
        if seen.len() < self.label_limit {
            seen.insert(value.clone());
            value.clone()
        } else {
            self.metrics.series_overflow.inc();
            overflow.clone()
        }
    }

    fn bound(&self, labels: &mut LabelValues, a: &mut FlowAnalysis) {
        let overflow = labels.overflow.clone();
        a.flow = self.bounded(&mut labels.flow, &overflow, &a.flow);
        if let Some(m) = &a.payment_method {
            a.payment_method = Some(self.bounded(&mut labels.payment_method, &overflow, m));
        }
        if let Some(c) = &a.payment_channel {
            a.payment_channel = Some(self.bounded(&mut labels.payment_channel, &overflow, c));
        }
        let mut folded = false;
        for st in &mut a.stages {
            let bounded = self.bounded(&mut labels.stage, &overflow, &st.stage);
            folded |= Arc::ptr_eq(&bounded, &overflow);
            st.stage = bounded;
        }
        if folded {
            // Stages folded into `other` become one stage of the flow.
            let mut merged: Vec<crate::analysis::StageTimes> = Vec::with_capacity(a.stages.len());
            for st in a.stages.drain(..) {
                match merged.iter_mut().find(|m| m.stage == st.stage) {
                    Some(m) => {
                        m.spans += st.spans;
                        m.duration_ns += st.duration_ns;
                        m.self_ns += st.self_ns;
                        m.critical_path_ns += st.critical_path_ns;
                    }
                    None => merged.push(st),
                }
            }
            a.stages = merged;
        }
    }

    /// Observes a bounded analysis in the Prometheus histograms.
    fn observe(&self, series: &mut SeriesCache, a: &FlowAnalysis) {
        if series.stages.len() + series.flows.len() > SeriesCache::MAX {
            *series = SeriesCache::default();
        }
        let flow: &str = &a.flow;
        let method = a.payment_method.as_deref().unwrap_or("");
        let channel = a.payment_channel.as_deref().unwrap_or("");
        let key = [
            label_addr(Some(&a.flow)),
            label_addr(a.payment_method.as_ref()),
            label_addr(a.payment_channel.as_ref()),
        ];
        series
            .flows
            .entry((key, a.is_error))
            .or_insert_with(|| {
                let outcome = if a.is_error { "error" } else { "ok" };
                self.metrics
                    .flow_duration
                    .with_label_values(&[flow, method, channel, outcome])
            })
            .observe(a.duration_ns() as f64 / 1e9);
        for s in &a.stages {
            let key = [key[0], label_addr(Some(&s.stage)), key[1], key[2]];
            let [critical_path, self_time] = series.stages.entry(key).or_insert_with(|| {
                let labels = [flow, &s.stage, method, channel];
                [
                    self.metrics.stage_critical_path.with_label_values(&labels),
                    self.metrics.stage_self.with_label_values(&labels),
                ]
            });
            critical_path.observe(s.critical_path_ns as f64 / 1e9);
            self_time.observe(s.self_ns as f64 / 1e9);
        }
    }

    /// The breakdown of `flow` over the last `window_minutes` (the current
    /// minute and the whole minutes before it), optionally for one method
    /// and channel.
    pub fn breakdown(
        &self,
        flow: &str,
        window_minutes: u64,
        payment_method: Option<&str>,
        payment_channel: Option<&str>,
        now_minute: u64,
    ) -> Breakdown {
        let state = self.state();
        let mut acc = crate::breakdown::Accumulator::default();
        for m in in_window(&state.minutes, now_minute, window_minutes) {
            acc.merge(&m.groups.select(flow, payment_method, payment_channel));
        }
        acc.breakdown(
            flow,
            payment_method,
            payment_channel,
            Some(window_minutes * 60),
        )
    }

    /// Every group recorded in the window, merged: what the offline
    /// `analyze` reports after [`Pipeline::flush`].
    pub fn groups(&self, window_minutes: u64, now_minute: u64) -> Groups {
        let state = self.state();
        let mut all = Groups::default();
        for m in in_window(&state.minutes, now_minute, window_minutes) {
            all.merge(&m.groups);
        }
        all
    }

    /// Every flow with traffic in the window.
    pub fn flows(&self, window_minutes: u64, now_minute: u64) -> Vec<FlowSummary> {
        let state = self.state();
        let minutes: Vec<&Minute> = in_window(&state.minutes, now_minute, window_minutes).collect();
        let mut names: Vec<Arc<str>> = minutes
            .iter()
            .flat_map(|m| {
                m.groups
                    .flows()
                    .into_iter()
                    .chain(m.incomplete.keys().cloned())
            })
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|flow| {
                let mut acc = crate::breakdown::Accumulator::default();
                let mut errors = 0;
                let mut incomplete = 0;
                for m in &minutes {
                    acc.merge(&m.groups.select(&flow, None, None));
                    errors += m.errors.get(&flow).copied().unwrap_or(0);
                    incomplete += m.incomplete.get(&flow).copied().unwrap_or(0);
                }
                let b = acc.breakdown(&flow, None, None, None);
                let mut payment_methods = std::collections::BTreeSet::new();
                let mut payment_channels = std::collections::BTreeSet::new();
                for m in &minutes {
                    for key in m.groups.keys().filter(|k| k.flow == flow) {
                        payment_methods.extend(key.payment_method.as_deref().map(str::to_owned));
                        payment_channels.extend(key.payment_channel.as_deref().map(str::to_owned));
                    }
                }
                FlowSummary {
                    payment_methods: payment_methods.into_iter().collect(),
                    payment_channels: payment_channels.into_iter().collect(),
                    flow: flow.to_string(),
                    traces: b.traces,
                    p50: b.end_to_end.p50,
                    p99: b.end_to_end.p99,
                    error_share: if b.traces == 0 {
                        0.0
                    } else {
                        errors as f64 / b.traces as f64
                    },
                    incomplete,
                }
            })
            .collect()
    }

    /// The slowest recent instances of `flow`, by end-to-end time, or by
    /// `stage`'s critical-path time when given.
    pub fn slow(&self, flow: &str, stage: Option<&str>, limit: usize) -> Vec<SlowFlow> {
        let state = self.state();
        let Some(recent) = state.recent.get(flow) else {
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
            .filter_map(|r| key(&r.analysis).map(|k| (k, r)))
            .collect();
        matching.sort_by_key(|m| std::cmp::Reverse(m.0));
        matching
            .into_iter()
            .take(limit)
            .map(|(_, r)| slow_flow(&r.analysis, r.spans.as_deref()))
            .collect()
    }

    /// End-to-end latency of `flow` per minute over the window, oldest first.
    pub fn timeseries(
        &self,
        flow: &str,
        window_minutes: u64,
        payment_method: Option<&str>,
        payment_channel: Option<&str>,
        now_minute: u64,
    ) -> Vec<MinutePoint> {
        let state = self.state();
        in_window(&state.minutes, now_minute, window_minutes)
            .map(|m| {
                let b = m
                    .groups
                    .select(flow, payment_method, payment_channel)
                    .breakdown(flow, payment_method, payment_channel, Some(60));
                MinutePoint {
                    start_unix_seconds: m.minute * 60,
                    traces: b.traces,
                    p50: b.end_to_end.p50,
                    p99: b.end_to_end.p99,
                }
            })
            .collect()
    }

    /// Whether the assembly buffer is within 10% of its byte budget: new
    /// requests should be told to retry later. Reads a copy kept up to date
    /// by every change, so receivers do not take the pipeline's lock for it.
    pub fn near_capacity(&self) -> bool {
        self.buffered_bytes.load(Ordering::Relaxed) >= self.max_bytes / 10 * 9
    }

    /// Publishes the assembler's size: the live-traces gauge and the byte
    /// count [`Pipeline::near_capacity`] reads.
    fn publish_size(&self, state: &State) {
        self.metrics
            .traces_live
            .set(state.assembler.live_traces() as i64);
        self.buffered_bytes
            .store(state.assembler.bytes(), Ordering::Relaxed);
    }
}

fn slot(minutes: &mut VecDeque<Minute>, minute: u64) -> &mut Minute {
    match minutes.back() {
        // The same minute, or the wall clock went back: the latest slot.
        Some(last) if last.minute >= minute => {}
        _ => {
            minutes.push_back(Minute {
                minute,
                ..Minute::default()
            });
            while minutes.len() > 60 || minutes.front().is_some_and(|m| m.minute + 60 <= minute) {
                minutes.pop_front();
            }
        }
    }
    let last = minutes.len() - 1;
    &mut minutes[last]
}

fn in_window(
    minutes: &VecDeque<Minute>,
    now_minute: u64,
    window_minutes: u64,
) -> impl Iterator<Item = &Minute> {
    minutes
        .iter()
        .filter(move |m| m.minute + window_minutes > now_minute && m.minute <= now_minute)
}

/// Keeps the spans of about [`HELD_PER_FLOW`] instances: once
/// [`RELEASE_SLACK`] more hold theirs, the fastest of those that are not
/// among the newest [`NEWEST_HELD`] let go, in one pass (amortised O(1) per
/// recorded instance).
fn release_spans(recent: &mut RecentFlows) {
    if recent.held <= HELD_PER_FLOW + RELEASE_SLACK {
        return;
    }
    let older = recent.items.len().saturating_sub(NEWEST_HELD);
    let mut candidates: Vec<(u64, usize)> = recent
        .items
        .iter()
        .take(older)
        .enumerate()
        .filter(|(_, r)| r.spans.is_some())
        .map(|(i, r)| (r.analysis.duration_ns(), i))
        .collect();
    let excess = (recent.held - HELD_PER_FLOW).min(candidates.len());
    if excess == 0 {
        return;
    }
    candidates.select_nth_unstable(excess - 1);
    for &(_, i) in &candidates[..excess] {
        recent.items[i].spans = None;
    }
    recent.held -= excess;
}

fn span_views(a: &FlowAnalysis, traces: &[Vec<crate::span::Span>]) -> Vec<SpanView> {
    let critical: HashSet<crate::span::SpanId> = a
        .critical_path
        .iter()
        .filter_map(|seg| seg.span_id)
        .collect();
    let mut spans: Vec<SpanView> = traces
        .iter()
        .flatten()
        .map(|span| SpanView {
            trace_id: span.trace_id.to_string(),
            span_id: span.span_id.to_string(),
            parent_span_id: span.parent_span_id.map(|p| p.to_string()),
            name: span.name.to_string(),
            service: span.service.to_string(),
            stage: span.business.stage.as_deref().map(str::to_owned),
            offset_seconds: span.start_ns.saturating_sub(a.start_ns) as f64 / 1e9,
            duration_seconds: span.duration_ns() as f64 / 1e9,
            error: span.is_error,
            critical: critical.contains(&span.span_id),
        })
        .collect();
    spans.sort_by(|x, y| x.offset_seconds.total_cmp(&y.offset_seconds));
    spans
}

fn slow_flow(a: &FlowAnalysis, traces: Option<&[Vec<crate::span::Span>]>) -> SlowFlow {
    let s = |ns: u64| ns as f64 / 1e9;
    let mut path: Vec<PathStep> = a
        .critical_path
        .iter()
        .map(|seg| PathStep {
            trace_id: seg.trace_id.to_string(),
            span_id: seg.span_id.map(|id| id.to_string()),
            stage: seg.stage.to_string(),
            offset_seconds: s(seg.start_ns - a.start_ns),
            duration_seconds: s(seg.end_ns - seg.start_ns),
        })
        .collect();
    path.reverse();
    SlowFlow {
        flow: a.flow.to_string(),
        flow_id: a.flow_id.as_deref().map(str::to_owned),
        payment_method: a.payment_method.as_deref().map(str::to_owned),
        payment_channel: a.payment_channel.as_deref().map(str::to_owned),
        start_unix_seconds: s(a.start_ns),
        duration_seconds: s(a.duration_ns()),
        error: a.is_error,
        trace_ids: a.traces.iter().map(ToString::to_string).collect(),
        critical_path: path,
        stages: a
            .stages
            .iter()
            .map(|st| (st.stage.to_string(), s(st.critical_path_ns)))
            .collect(),
        spans: traces.map(|t| span_views(a, t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoded;
    use crate::span::TraceId;
    use crate::testing::{numbered, span, stage};

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
        let p = Pipeline::new(PipelineConfig::default());
        // 150 instances; durations 1..=150 ms, except the oldest, the slowest.
        for i in 0..150u64 {
            let ms = if i == 0 { 10_000 } else { i };
            let mut t = one_trace(0, "checkout", ms);
            t.spans[0].trace_id = TraceId((i as u128 + 1).to_be_bytes());
            p.ingest(Protocol::Grpc, t, Instant::now());
            p.flush(100);
        }
        let slow = p.slow("checkout", None, 500);
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
        let points = p.timeseries("checkout", 15, None, None, 100);
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].traces, 150);
        assert_eq!(points[0].start_unix_seconds, 6_000);
    }

    #[test]
    fn windows_cover_the_last_minutes_only() {
        let p = Pipeline::new(PipelineConfig::default());
        p.ingest(
            Protocol::Grpc,
            one_trace(1, "checkout", 100),
            Instant::now(),
        );
        p.flush(100);
        p.ingest(
            Protocol::Grpc,
            one_trace(2, "checkout", 300),
            Instant::now(),
        );
        p.flush(110);
        assert_eq!(p.breakdown("checkout", 5, None, None, 110).traces, 1);
        assert_eq!(p.breakdown("checkout", 15, None, None, 110).traces, 2);
        assert_eq!(
            p.breakdown("checkout", 60, None, None, 170).traces,
            0,
            "an hour later"
        );
        let flows = p.flows(15, 110);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].traces, 2);
    }

    #[test]
    fn flow_and_stage_names_past_the_limit_fold_into_other() {
        let p = Pipeline::new(PipelineConfig {
            label_limit: Some(2),
            ..PipelineConfig::default()
        });
        for i in 0..5u8 {
            p.ingest(
                Protocol::Grpc,
                one_trace(i + 1, &format!("flow{i}"), 10),
                Instant::now(),
            );
        }
        p.flush(1);
        let names: Vec<String> = p.flows(1, 1).into_iter().map(|f| f.flow).collect();
        assert_eq!(names, vec!["flow0", "flow1", "other"]);
        let other = p.breakdown("other", 1, None, None, 1);
        assert_eq!(other.traces, 3);
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &p.registry().gather(),
                &mut buf,
            )
            .expect("encodes");
            String::from_utf8(buf).expect("utf-8")
        };
        assert!(
            text.contains("paytrace_aggregator_series_overflow_total 6"),
            "3 flows and 3 stages folded:\n{text}"
        );
    }
}
