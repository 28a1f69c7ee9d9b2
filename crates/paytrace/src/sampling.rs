//! Head sampling that keeps flows whole: OpenTelemetry's consistent
//! probability sampling, with every trace of one flow given one randomness.
//!
//! [`FlowSampler`] is what `OTEL_TRACES_SAMPLER=parentbased_traceidratio`
//! (and `traceidratio`) build under [`crate::init`]. A span with a parent
//! follows the parent's decision (parent-based) and carries its `tracestate`
//! on. A span that starts a trace decides `R >= T` ([`paytrace_sampling`])
//! and writes `ot=th:…` (and `rv:…` when `R` is not its own trace id's) into
//! its `tracestate`, so that every span downstream, any SDK that implements
//! the specification, and the aggregator know the probability. `R` is, in
//! order:
//!
//! 1. the randomness of the span it links to (that span's `rv`, else its
//!    trace id's last 56 bits): a callback or a queue consumer linked to
//!    the request that caused it takes the request's decision;
//! 2. the randomness of the flow id in its baggage (`paytrace.flow_id`): a
//!    trace that joins a flow by its id alone;
//! 3. its own trace id's last 56 bits.
//!
//! Links come first: the flow's first trace often starts before anyone knows
//! the flow id (the gateway mints the order id inside its request), so its
//! decision came from its trace id, and only a link can carry that on. When
//! the flow id is in baggage from the flow's first span, the two agree.

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{Link, SpanContext, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};
use paytrace_sampling::{OtState, Randomness, TRACESTATE_KEY, Threshold, flow_randomness};
use paytrace_semconv::attr;

/// A consistent probability sampler whose randomness is shared by the traces
/// of one flow. The rules: `docs/sampling.md`.
///
/// ```
/// use opentelemetry_sdk::trace::SdkTracerProvider;
/// let provider = SdkTracerProvider::builder()
///     .with_sampler(paytrace::FlowSampler::parent_based(0.1))
///     .build();
/// # drop(provider);
/// ```
#[derive(Clone, Debug)]
pub struct FlowSampler {
    threshold: Threshold,
    parent_based: bool,
}

impl FlowSampler {
    /// Follows a parent's decision; samples `probability` of the traces that
    /// start here (`parentbased_traceidratio`).
    pub fn parent_based(probability: f64) -> Self {
        Self {
            threshold: Threshold::from_probability(probability),
            parent_based: true,
        }
    }

    /// Decides every span by `probability`, a parent's included
    /// (`traceidratio`); spans of one trace still agree, their randomness
    /// being the same.
    pub fn ratio(probability: f64) -> Self {
        Self {
            parent_based: false,
            ..Self::parent_based(probability)
        }
    }

    /// The threshold spans are sampled with.
    pub fn threshold(&self) -> Threshold {
        self.threshold
    }
}

/// The `ot` entry of `state`.
fn ot_of(state: &TraceState) -> OtState {
    state
        .get(TRACESTATE_KEY)
        .map(OtState::parse)
        .unwrap_or_default()
}

/// `state` with its `ot` entry replaced by `ot` (removed when empty); left
/// as it was if the result would not be a valid `tracestate`.
fn with_ot(state: TraceState, ot: &OtState) -> TraceState {
    let value = ot.to_string();
    let updated = if value.is_empty() {
        state.delete(TRACESTATE_KEY)
    } else {
        state.insert(TRACESTATE_KEY, value)
    };
    updated.unwrap_or(state)
}

/// The randomness of a span that starts a trace, and whether it must be
/// written as `rv` (it is not the trace id's own).
fn root_randomness(
    parent: Option<&Context>,
    trace_id: TraceId,
    links: &[Link],
) -> (Randomness, bool) {
    if let Some(linked) = links
        .iter()
        .map(|l| &l.span_context)
        .find(|sc| sc.is_valid())
    {
        return (randomness_of(linked), true);
    }
    if let Some(id) = parent.and_then(|cx| {
        cx.baggage()
            .get(attr::FLOW_ID)
            .map(|v| v.as_str().to_owned())
    }) && !id.is_empty()
    {
        return (flow_randomness(&id), true);
    }
    (Randomness::of_trace_id(trace_id.to_bytes()), false)
}

/// The randomness a span decided with: its `rv`, else its trace id's.
fn randomness_of(span: &SpanContext) -> Randomness {
    ot_of(span.trace_state())
        .randomness
        .unwrap_or_else(|| Randomness::of_trace_id(span.trace_id().to_bytes()))
}

impl ShouldSample for FlowSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().clone());
        if let Some(parent) = parent.as_ref().filter(|_| self.parent_based) {
            return SamplingResult {
                decision: if parent.is_sampled() {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                },
                attributes: Vec::new(),
                trace_state: parent.trace_state().clone(),
            };
        }
        let (state, randomness, explicit) = match &parent {
            // Not parent-based: the parent's randomness, the same for the
            // whole trace, so that its spans agree.
            Some(parent) => {
                let ot = ot_of(parent.trace_state());
                let r = randomness_of(parent);
                (parent.trace_state().clone(), r, ot.randomness.is_some())
            }
            None => {
                let (r, explicit) = root_randomness(parent_context, trace_id, links);
                (TraceState::default(), r, explicit)
            }
        };
        let sampled = self.threshold.samples(randomness);
        let mut ot = ot_of(&state);
        // A sampled span says how many it stands for; an unsampled one carries
        // no threshold, only the randomness its flow decides with.
        ot.threshold = sampled.then_some(self.threshold);
        ot.randomness = explicit.then_some(randomness);
        SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: with_ot(state, &ot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags};

    fn decide(
        sampler: &FlowSampler,
        parent: Option<&Context>,
        trace_id: u128,
        links: &[Link],
    ) -> SamplingResult {
        sampler.should_sample(
            parent,
            TraceId::from(trace_id),
            "s",
            &SpanKind::Internal,
            &[],
            links,
        )
    }

    fn ot(result: &SamplingResult) -> OtState {
        ot_of(&result.trace_state)
    }

    #[test]
    fn a_root_decides_by_its_trace_id_and_says_its_threshold() {
        let half = FlowSampler::parent_based(0.5);
        // Randomness is the last 56 bits: high half sampled, low half not.
        let kept = decide(&half, None, 0x00ff_0000_0000_0000_0080_0000_0000_0000, &[]);
        assert_eq!(kept.decision, SamplingDecision::RecordAndSample);
        assert_eq!(ot(&kept).threshold, Some(half.threshold()));
        assert_eq!(
            ot(&kept).randomness,
            None,
            "the trace id's own randomness is not written"
        );
        let dropped = decide(&half, None, 0x00ff_0000_0000_0000_007f_ffff_ffff_ffff, &[]);
        assert_eq!(dropped.decision, SamplingDecision::Drop);
        assert_eq!(ot(&dropped).threshold, None);
    }

    #[test]
    fn a_linked_root_takes_the_decision_of_the_span_it_links_to() {
        let tenth = FlowSampler::parent_based(0.1);
        for request in 1..2_000u128 {
            let request_trace = request.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            let first = decide(&tenth, None, request_trace, &[]);
            let linked = SpanContext::new(
                TraceId::from(request_trace),
                SpanId::from(7u64),
                if first.decision == SamplingDecision::RecordAndSample {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                first.trace_state.clone(),
            );
            // The callback's own trace id is unrelated.
            let callback = decide(&tenth, None, !request_trace, &[Link::with_context(linked)]);
            assert_eq!(callback.decision, first.decision, "request {request}");
            // ... and the consumer linked to the callback agrees again.
            let cb_span = SpanContext::new(
                TraceId::from(!request_trace),
                SpanId::from(8u64),
                TraceFlags::default(),
                false,
                callback.trace_state.clone(),
            );
            let consumer = decide(
                &tenth,
                None,
                request_trace ^ 0x5555,
                &[Link::with_context(cb_span)],
            );
            assert_eq!(consumer.decision, first.decision, "request {request}");
        }
    }

    #[test]
    fn roots_with_one_flow_id_agree_and_write_the_randomness() {
        let tenth = FlowSampler::parent_based(0.1);
        let mut kept = 0;
        for order in 0..2_000 {
            let cx =
                Context::new().with_baggage([KeyValue::new(attr::FLOW_ID, format!("ord_{order}"))]);
            let a = decide(&tenth, Some(&cx), 0x1234 + order as u128, &[]);
            let b = decide(
                &tenth,
                Some(&cx),
                0xfeed_0000_0000_0000_0000 + order as u128 * 7919,
                &[],
            );
            assert_eq!(a.decision, b.decision);
            assert_eq!(
                ot(&a).randomness,
                Some(flow_randomness(&format!("ord_{order}")))
            );
            kept += usize::from(a.decision == SamplingDecision::RecordAndSample);
        }
        // 10% of 2,000: 200, within five standard deviations (sqrt(180) ~ 13.4).
        assert!(
            (kept as f64 - 200.0).abs() < 5.0 * 180f64.sqrt(),
            "kept {kept}"
        );
    }

    #[test]
    fn a_child_follows_its_parent_and_keeps_its_tracestate() {
        let tenth = FlowSampler::parent_based(0.1);
        let state =
            TraceState::from_key_value([("ot", "th:e666;rv:00000000000001"), ("vendor", "x")])
                .expect("valid");
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            let parent = SpanContext::new(
                TraceId::from(9u128),
                SpanId::from(1u64),
                flags,
                true,
                state.clone(),
            );
            let cx = Context::new().with_remote_span_context(parent);
            let child = decide(&tenth, Some(&cx), 9, &[]);
            assert_eq!(
                child.decision == SamplingDecision::RecordAndSample,
                flags.is_sampled()
            );
            assert_eq!(child.trace_state.header(), state.header());
        }
    }
}
