//! Format version 1 of the snapshot and of the peer windows. Frozen: a
//! change is a new version (see [`crate::format`]).
//!
//! Ids are byte arrays (16 for a trace, 8 for a span), times nanoseconds
//! (`*_ns`; ages are how long before the snapshot), sampling thresholds
//! their `th` text (`"c"` for 25%), TCC phases their names. A sketch is
//! sketches-ddsketch 0.4's own serde form of a DDSketch (1% relative
//! accuracy, 2,048 bins): upgrading that crate is checked against the
//! version-1 fixtures before it lands.

use std::collections::BTreeMap;
use std::sync::Arc;

use paytrace_sampling::Threshold;
use paytrace_tcc::Phase;
use serde::{Deserialize, Serialize};

/// A trace id.
pub(crate) type TraceId = [u8; 16];
/// A span id.
pub(crate) type SpanId = [u8; 8];

/// Everything a restart would otherwise lose.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The rolling windows, oldest minute first.
    pub(crate) minutes: Vec<Minute>,
    /// Per flow, its recent instances.
    pub(crate) recent: Vec<(Arc<str>, RecentFlows)>,
    /// The traces still assembling.
    pub(crate) assembler: Assembler,
    /// The flows waiting for more traces.
    pub(crate) flows: Vec<PendingFlow>,
    /// The TCC transactions followed.
    pub(crate) tcc: Tcc,
    /// The TCC anomaly counters, so the counts go on across the restart.
    #[serde(default)]
    pub(crate) tcc_anomaly_counts: Vec<AnomalyCount>,
    /// What the fence would have prevented at participants without it.
    #[serde(default)]
    pub(crate) tcc_shadow_counts: Vec<AnomalyCount>,
}

/// The windows one replica sends another: its minutes, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Windows {
    /// The format version; absent in what builds before versioned windows
    /// sent, which was version 1.
    #[serde(default = "one")]
    pub(crate) version: u32,
    /// The minutes.
    #[serde(default)]
    pub(crate) minutes: Vec<Minute>,
}

pub(crate) fn one() -> u32 {
    1
}

/// One minute of the windows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Minute {
    /// Minutes since the epoch.
    pub(crate) minute: u64,
    /// The accumulators per group.
    pub(crate) groups: Groups,
    /// Failed instances per flow, weighted.
    pub(crate) errors: BTreeMap<Arc<str>, f64>,
    /// Incomplete instances per flow, weighted.
    pub(crate) incomplete: BTreeMap<Arc<str>, f64>,
}

/// Accumulators per group.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Groups {
    /// (group, accumulator) pairs.
    pub(crate) groups: Vec<(GroupKey, Accumulator)>,
}

/// A group: flow, payment method and channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GroupKey {
    pub(crate) flow: Arc<str>,
    pub(crate) payment_method: Option<Arc<str>>,
    pub(crate) payment_channel: Option<Arc<str>>,
}

/// The flow instances of one group, accumulated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Accumulator {
    pub(crate) end_to_end: Distribution,
    pub(crate) stages: BTreeMap<Arc<str>, StageAccumulator>,
    pub(crate) estimated: f64,
    pub(crate) weighted_end_to_end: f64,
    #[serde(default)]
    pub(crate) end_to_end_moments: Moments,
    #[serde(default)]
    pub(crate) failed: u64,
}

/// One stage's times in a group, accumulated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StageAccumulator {
    pub(crate) duration: Distribution,
    pub(crate) self_time: Distribution,
    pub(crate) critical_path: Distribution,
    pub(crate) weighted_critical_path: f64,
    #[serde(default)]
    pub(crate) critical_path_moments: Moments,
}

/// A distribution of seconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Distribution {
    pub(crate) sketch: Sketch,
}

/// A DDSketch in sketches-ddsketch 0.4's serde form.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Sketch(pub(crate) sketches_ddsketch::DDSketch);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("count", &self.0.count())
            .finish_non_exhaustive()
    }
}

/// Count, sum and sum of squares.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Moments {
    pub(crate) n: u64,
    pub(crate) sum: f64,
    pub(crate) sum_sq: f64,
}

/// A flow's recent instances.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RecentFlows {
    /// Oldest first.
    pub(crate) items: Vec<Recent>,
    /// How many hold their spans.
    pub(crate) held: usize,
}

/// A recent instance: its analysis and, while held, its spans per trace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Recent {
    pub(crate) analysis: FlowAnalysis,
    pub(crate) spans: Option<Vec<Vec<Span>>>,
}

/// The analysis of one flow instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FlowAnalysis {
    pub(crate) flow: Arc<str>,
    pub(crate) flow_id: Option<Arc<str>>,
    pub(crate) payment_method: Option<Arc<str>>,
    pub(crate) payment_channel: Option<Arc<str>>,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    pub(crate) is_error: bool,
    pub(crate) traces: Vec<TraceId>,
    pub(crate) stages: Vec<StageTimes>,
    pub(crate) critical_path: Vec<PathSegment>,
    pub(crate) sampling: FlowSampling,
    #[serde(default)]
    pub(crate) clock_skew: Vec<ClockSkew>,
}

/// One stage's times in one instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StageTimes {
    pub(crate) stage: Arc<str>,
    pub(crate) spans: u32,
    pub(crate) duration_ns: u64,
    pub(crate) self_ns: u64,
    pub(crate) critical_path_ns: u64,
}

/// A piece of the critical path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PathSegment {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: Option<SpanId>,
    pub(crate) stage: Arc<str>,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

/// How an instance was sampled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FlowSampling {
    #[serde(with = "threshold")]
    pub(crate) highest: Option<Threshold>,
    pub(crate) unknown: bool,
    pub(crate) mixed: bool,
}

/// A service whose span was moved for clock skew.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ClockSkew {
    pub(crate) service: Arc<str>,
    pub(crate) offset_ns: i64,
}

/// A span, as decoded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Span {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) parent_span_id: Option<SpanId>,
    pub(crate) name: Arc<str>,
    pub(crate) service: Arc<str>,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    pub(crate) is_error: bool,
    pub(crate) links: Vec<Link>,
    #[serde(with = "threshold")]
    pub(crate) sampling_threshold: Option<Threshold>,
    pub(crate) business: Business,
}

/// A span link.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Link {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
}

/// A span's business attributes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Business {
    pub(crate) stage: Option<Arc<str>>,
    pub(crate) flow: Option<Arc<str>>,
    pub(crate) flow_id: Option<Arc<str>>,
    pub(crate) payment_method: Option<Arc<str>>,
    pub(crate) payment_channel: Option<Arc<str>>,
    pub(crate) outcome: Option<Arc<str>>,
    pub(crate) tcc: Option<TccAttributes>,
    pub(crate) operation: Option<Arc<str>>,
    pub(crate) entry: bool,
    #[serde(default)]
    pub(crate) kind: SpanKind,
}

/// The span kind.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// A span's TCC attributes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TccAttributes {
    pub(crate) xid: Option<Arc<str>>,
    pub(crate) branch_id: Option<Arc<str>>,
    pub(crate) resource: Option<Arc<str>>,
    pub(crate) phase: Option<Arc<str>>,
    pub(crate) decision: Option<Arc<str>>,
    #[serde(default)]
    pub(crate) fenced: bool,
    #[serde(default)]
    pub(crate) fence_anomaly: bool,
}

/// The traces assembling.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Assembler {
    /// Least recently added to first.
    pub(crate) live: Vec<LiveTrace>,
    /// Traces completed lately (a late span of one is late, not new).
    pub(crate) completed: Vec<TraceId>,
}

/// A trace assembling.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LiveTrace {
    pub(crate) spans: Vec<Span>,
    pub(crate) first_age_ns: u64,
    pub(crate) last_age_ns: u64,
}

/// A flow waiting for more traces.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PendingFlow {
    pub(crate) traces: Vec<Vec<Span>>,
    pub(crate) trace_ids: Vec<TraceId>,
    pub(crate) flow_ids: Vec<Arc<str>>,
    pub(crate) flow: Option<Arc<str>>,
    pub(crate) stages: Vec<Arc<str>>,
    /// (start, is error) of the earliest trace root.
    pub(crate) first_root: Option<(u64, bool)>,
    pub(crate) first_age_ns: u64,
    pub(crate) last_age_ns: u64,
}

/// The TCC transactions followed and the recent anomalies.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Tcc {
    pub(crate) transactions: Vec<Transaction>,
    pub(crate) recent: Vec<Anomaly>,
}

/// A global transaction followed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Transaction {
    pub(crate) xid: Arc<str>,
    pub(crate) observations: Vec<Observation>,
    pub(crate) decision: Option<Decision>,
    pub(crate) last_arrival_age_ns: u64,
    pub(crate) dirty: bool,
    pub(crate) pending: Vec<PendingBranch>,
}

/// A branch phase seen.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Observation {
    pub(crate) branch: Arc<str>,
    pub(crate) resource: Arc<str>,
    #[serde(with = "phase")]
    pub(crate) phase: Phase,
    pub(crate) ok: bool,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) service: Arc<str>,
    /// Kinds already reported, as bits of the global anomaly kinds' list.
    pub(crate) reported: u16,
    #[serde(default)]
    pub(crate) fenced: bool,
}

/// The coordinator's decision.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Decision {
    #[serde(with = "phase")]
    pub(crate) phase: Phase,
    pub(crate) start_ns: u64,
    pub(crate) trace_id: TraceId,
}

/// A branch left tried by the last replay.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PendingBranch {
    pub(crate) branch: Arc<str>,
    pub(crate) resource: Arc<str>,
    pub(crate) tried_end_ns: u64,
    pub(crate) trace_id: TraceId,
    pub(crate) frozen_reported: bool,
}

/// A TCC anomaly listed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Anomaly {
    pub(crate) xid: String,
    pub(crate) resource: String,
    pub(crate) branch: String,
    pub(crate) kind: String,
    pub(crate) service: String,
    pub(crate) time_unix_seconds: f64,
    pub(crate) trace_ids: Vec<String>,
    pub(crate) span_id: String,
    #[serde(default)]
    pub(crate) fenced: bool,
}

/// A count of TCC anomalies of one kind at one resource.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AnomalyCount {
    pub(crate) resource: String,
    pub(crate) kind: String,
    pub(crate) count: u64,
}

/// `Option<Threshold>` as its `th` text (`"c"` for 25%).
mod threshold {
    use paytrace_sampling::Threshold;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &Option<Threshold>, s: S) -> Result<S::Ok, S::Error> {
        t.map(|t| t.to_string()).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Threshold>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A TCC phase as its name (`try`, `confirm`, `cancel`).
mod phase {
    use paytrace_tcc::Phase;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(p: &Phase, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Phase, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom(format!("unknown TCC phase {text:?}")))
    }
}
