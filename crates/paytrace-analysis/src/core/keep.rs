//! Which final flows to keep whole for the trace store (`serve
//! --forward-otlp`): the decision, made where the flow is analysed; the
//! forwarder at the server's edge sends what is kept.

use std::collections::HashMap;

use paytrace_semconv::keep_reason;

use crate::critical_path::FlowAnalysis;
use crate::span::Span;

/// Which final flows to keep.
///
/// ```
/// use paytrace_analysis::core::KeepPolicy;
/// let policy = KeepPolicy::default()
///     .keep_normal(0.01)
///     .slower_than("checkout", 2.5);
/// assert_eq!(policy.threshold("checkout"), Some(2.5));
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct KeepPolicy {
    /// Seconds end to end past which a flow is slow, by flow name; a flow
    /// not named uses its p99 of the last 5 minutes.
    pub slower_than: HashMap<String, f64>,
    /// Share of the other flows kept as a sample (0 to 1), chosen by trace
    /// id, so that replicas keep the same ones.
    pub keep_normal: f64,
}

impl KeepPolicy {
    /// Keeps `share` (0 to 1) of the flows that are not kept for another
    /// reason, as a sample.
    pub fn keep_normal(mut self, share: f64) -> Self {
        self.keep_normal = share;
        self
    }

    /// `flow` is slow past `seconds`.
    pub fn slower_than(mut self, flow: &str, seconds: f64) -> Self {
        self.slower_than.insert(flow.to_owned(), seconds);
        self
    }

    /// The configured threshold of `flow`, if any.
    pub fn threshold(&self, flow: &str) -> Option<f64> {
        self.slower_than.get(flow).copied()
    }
}

/// A final flow, as the keep decision reads it.
pub(crate) struct Candidate<'a> {
    pub(crate) analysis: &'a FlowAnalysis,
    pub(crate) traces: &'a [Vec<Span>],
    /// The slow threshold in force for its flow, seconds.
    pub(crate) slow_threshold: Option<f64>,
    /// Whether the TCC replay found an anomaly in a transaction of it.
    pub(crate) tcc_anomaly: bool,
}

/// Why `flow` is kept, the strongest reason first; `None` when it is not.
pub(crate) fn keep_reason(flow: &Candidate<'_>, keep_normal: f64) -> Option<&'static str> {
    if flow.analysis.is_error {
        return Some(keep_reason::ERROR);
    }
    let fence_anomaly = flow
        .traces
        .iter()
        .flatten()
        .any(|s| s.business.tcc.as_ref().is_some_and(|t| t.fence_anomaly));
    if flow.tcc_anomaly || fence_anomaly {
        return Some(keep_reason::TCC);
    }
    let seconds = flow.analysis.duration_ns() as f64 / 1e9;
    if flow.slow_threshold.is_some_and(|t| seconds > t) {
        return Some(keep_reason::SLOW);
    }
    let first = flow.analysis.traces.first()?;
    (uniform(&first.0) < keep_normal).then_some(keep_reason::SAMPLE)
}

/// A number in [0, 1) drawn from a trace id: the same on every replica, and
/// uniform even for ids that are not random (a counter, a test's).
fn uniform(trace_id: &[u8; 16]) -> f64 {
    fn mix(mut z: u64) -> u64 {
        // splitmix64's finaliser.
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let hi = u64::from_be_bytes(trace_id[..8].try_into().unwrap_or_default());
    let lo = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default());
    (mix(hi ^ mix(lo)) >> 11) as f64 / (1u64 << 53) as f64
}
