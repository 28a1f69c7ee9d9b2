//! What the API and the page show of the pipeline: serialisable views of
//! flows, slow instances with their waterfalls, minutes and TCC counts.

use std::collections::HashSet;

use serde::Serialize;

use crate::critical_path::FlowAnalysis;
use crate::span::{Span, SpanId, seconds};

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// Complete flow instances seen in the window.
    pub traces: u64,
    /// The flows they stand for under sampling (see
    /// [`Breakdown::estimated_flows`](crate::breakdown::Breakdown::estimated_flows)).
    pub estimated_flows: f64,
    /// End-to-end median, seconds.
    pub p50: f64,
    /// End-to-end 99th percentile, seconds.
    pub p99: f64,
    /// Share of flows whose root ended in error (weighted by what each
    /// instance stands for).
    pub error_share: f64,
    /// Flows reported incomplete in the window (weighted alike).
    pub incomplete: f64,
    /// Payment methods seen in the window.
    pub payment_methods: Vec<String>,
    /// Payment channels seen in the window.
    pub payment_channels: Vec<String>,
}

pub(crate) fn span_views(a: &FlowAnalysis, traces: &[Vec<Span>]) -> Vec<SpanView> {
    let critical: HashSet<SpanId> = a
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
            offset_seconds: seconds(span.start_ns.saturating_sub(a.start_ns)),
            duration_seconds: seconds(span.duration_ns()),
            error: span.is_error,
            critical: critical.contains(&span.span_id),
        })
        .collect();
    spans.sort_by(|x, y| x.offset_seconds.total_cmp(&y.offset_seconds));
    spans
}

pub(crate) fn slow_flow(a: &FlowAnalysis, traces: Option<&[Vec<Span>]>) -> SlowFlow {
    let s = seconds;
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

mod format_v1 {
    use super::AnomalyCount;
    use crate::format::v1;

    impl From<&AnomalyCount> for v1::AnomalyCount {
        fn from(c: &AnomalyCount) -> Self {
            Self {
                resource: c.resource.clone(),
                kind: c.kind.clone(),
                count: c.count,
            }
        }
    }

    impl From<v1::AnomalyCount> for AnomalyCount {
        fn from(c: v1::AnomalyCount) -> Self {
            Self {
                resource: c.resource,
                kind: c.kind,
                count: c.count,
            }
        }
    }
}
