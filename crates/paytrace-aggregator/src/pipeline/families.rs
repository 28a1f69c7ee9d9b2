//! The aggregator's Prometheus families, and the histogram handles cached
//! by bounded label values that record each flow instance in them.

use std::sync::Arc;

use paytrace_semconv::{aggregator_drop_reason, label, metric};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::Protocol;
use super::weighted::{WeightedHistogram, WeightedHistogramVec};
use crate::span::seconds;
use paytrace_analysis::critical_path::FlowAnalysis;

/// The address of a bounded label value (0 for none). [`LabelValues`] keeps
/// every bounded value alive as long as the pipeline, so an address names
/// one value and is never reused for another.
pub(super) fn label_addr(value: Option<&Arc<str>>) -> usize {
    value.map_or(0, |v| Arc::as_ptr(v).cast::<u8>() as usize)
}

/// A hash map with foldhash (the keys are a few pointers).
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Histogram handles by the addresses of their bounded label values:
/// `with_label_values` hashes every label string under a lock, a few times
/// per flow instance. Equal strings behind different pointers only cost a
/// second entry for the same series; the cache is dropped whole past a size.
#[derive(Debug, Default)]
pub(super) struct SeriesCache {
    /// (flow, stage, method, channel) -> critical path, self.
    stages: FastMap<[usize; 4], [Arc<WeightedHistogram>; 2]>,
    /// (flow, method, channel), is_error -> end to end.
    flows: FastMap<([usize; 3], bool), Arc<WeightedHistogram>>,
}

impl SeriesCache {
    const MAX: usize = 16_384;
}

/// The aggregator's Prometheus families.
pub(super) struct Metrics {
    pub(super) registry: Registry,
    pub(super) flow_duration: WeightedHistogramVec,
    pub(super) stage_critical_path: WeightedHistogramVec,
    pub(super) stage_self: WeightedHistogramVec,
    pub(super) flows_incomplete: IntCounterVec,
    pub(super) flows_sampled_inconsistently: IntCounterVec,
    pub(super) flows_split: IntCounterVec,
    pub(super) spans_received: IntCounterVec,
    pub(super) spans_dropped: IntCounterVec,
    pub(super) spans_truncated: IntCounterVec,
    pub(super) traces_live: IntGauge,
    pub(super) traces_completed: IntCounter,
    pub(super) traces_evicted: IntCounterVec,
    pub(super) series_overflow: IntCounter,
    pub(super) tcc_unfinished: IntGauge,
    pub(super) tcc_unfinished_oldest: prometheus::Gauge,
    pub(super) tcc_anomalies: IntCounterVec,
    pub(super) clock_skew_adjusted: IntCounterVec,
    pub(super) clock_skew: prometheus::GaugeVec,
}

impl Metrics {
    pub(super) fn new(buckets: &[f64]) -> prometheus::Result<Self> {
        // Each observation weighs what the flow instance stands for: the
        // series estimate the unsampled population.
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            WeightedHistogramVec::new(name, help, labels, buckets)
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
                    "Flow instances reported incomplete, by reason (estimated: each weighs what it stands for under sampling).",
                ),
                &[label::FLOW, label::REASON],
            )?,
            flows_sampled_inconsistently: IntCounterVec::new(
                Opts::new(
                    metric::AGGREGATOR_FLOWS_SAMPLED_INCONSISTENTLY_TOTAL,
                    "Flow instances whose spans carried different sampling thresholds; each was counted with the lowest probability.",
                ),
                &[label::FLOW],
            )?,
            flows_split: IntCounterVec::new(
                Opts::new(
                    metric::AGGREGATOR_FLOWS_SPLIT_TOTAL,
                    "Flow instances finished with a link to a trace this aggregator never received (routed to another replica, or lost).",
                ),
                &[label::FLOW],
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
            clock_skew_adjusted: IntCounterVec::new(
                Opts::new(
                    metric::AGGREGATOR_CLOCK_SKEW_ADJUSTED_TOTAL,
                    "Spans of a service moved to fit inside their caller's span of another service: its clock disagrees with its callers'.",
                ),
                &[label::SERVICE_NAME],
            )?,
            clock_skew: prometheus::GaugeVec::new(
                Opts::new(
                    metric::AGGREGATOR_CLOCK_SKEW_SECONDS,
                    "How far the service's clock was last estimated to be ahead of its caller's (negative: behind).",
                ),
                &[label::SERVICE_NAME],
            )?,
        };
        let r = &m.registry;
        r.register(Box::new(m.flow_duration.clone()))?;
        r.register(Box::new(m.stage_critical_path.clone()))?;
        r.register(Box::new(m.stage_self.clone()))?;
        r.register(Box::new(m.flows_incomplete.clone()))?;
        r.register(Box::new(m.flows_sampled_inconsistently.clone()))?;
        r.register(Box::new(m.flows_split.clone()))?;
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
        r.register(Box::new(m.clock_skew_adjusted.clone()))?;
        r.register(Box::new(m.clock_skew.clone()))?;
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

    /// Observes a bounded analysis in the Prometheus histograms, `weight`
    /// times (what it stands for under sampling).
    pub(super) fn observe(&self, series: &mut SeriesCache, a: &FlowAnalysis, weight: u64) {
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
                self.flow_duration
                    .with_label_values(&[flow, method, channel, outcome])
            })
            .observe(seconds(a.duration_ns()), weight);
        for s in &a.stages {
            let key = [key[0], label_addr(Some(&s.stage)), key[1], key[2]];
            let [critical_path, self_time] = series.stages.entry(key).or_insert_with(|| {
                let labels = [flow, &s.stage, method, channel];
                [
                    self.stage_critical_path.with_label_values(&labels),
                    self.stage_self.with_label_values(&labels),
                ]
            });
            critical_path.observe(seconds(s.critical_path_ns), weight);
            self_time.observe(seconds(s.self_ns), weight);
        }
    }
}
