//! W3C trace context and baggage on the wire, and the business [`Flow`] they carry.

use std::future::Future;

use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt, BaggageMetadata, KeyValueMetadata};
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{FutureExt, TraceContextExt, WithContext};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use paytrace_semconv::attr;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The SDK's W3C trace context + baggage propagator, which paytrace's own
/// reading and writing of the headers ([`headers`]) is tested against.
#[cfg(test)]
pub(crate) static PROPAGATOR: std::sync::LazyLock<TextMapCompositePropagator> =
    std::sync::LazyLock::new(propagator);

/// A new W3C trace context + baggage propagator.
pub(crate) fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

mod headers;

pub(crate) use headers::{extract, extract_from, inject, inject_into};

/// The span context a W3C `traceparent` value names, if it is valid, with
/// the `tracestate` that travelled with it (its sampling threshold and
/// randomness among others).
pub(crate) fn span_context_of(
    traceparent: &str,
    tracestate: Option<&str>,
) -> Option<opentelemetry::trace::SpanContext> {
    headers::remote_span(&W3cValues {
        traceparent: traceparent.trim(),
        tracestate: tracestate.map(str::trim),
    })
}

/// A `traceparent` and its `tracestate` given as values, not headers.
struct W3cValues<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl opentelemetry::propagation::Extractor for W3cValues<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The `traceparent` value of the span that is current now (the stage or
/// request being handled), for a message or callback to carry; `None`
/// outside any span.
///
/// ```
/// assert_eq!(paytrace::current_traceparent(), None);
/// ```
pub fn current_traceparent() -> Option<String> {
    current_w3c().remove("traceparent")
}

/// The `tracestate` value of the span that is current now, to carry with
/// [`current_traceparent`]: it holds the sampling threshold and randomness a
/// linked trace decides by (see [`crate::FlowSampler`]). `None` outside any
/// span, or when the state is empty.
///
/// ```
/// assert_eq!(paytrace::current_tracestate(), None);
/// ```
pub fn current_tracestate() -> Option<String> {
    current_w3c().remove("tracestate").filter(|s| !s.is_empty())
}

fn current_w3c() -> std::collections::HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier
}

/// The context a new span of ours should start from: the active OpenTelemetry
/// context (the entered tracing span, with context activation, plus any
/// baggage a [`Flow`] scope attached).
pub(crate) fn ambient() -> Context {
    Context::current()
}

/// The context to send downstream from inside `span`, a span just parented
/// on `ambient`: the span's own context when it is recorded by
/// OpenTelemetry (it carries `ambient`'s baggage, its parent's), else the
/// ambient one (so a service without an exporter still passes the caller's
/// trace and baggage through).
///
/// The baggage is not rebuilt: OpenTelemetry validates every key of a new
/// baggage, which cost a send a fifth of its time (BENCHMARKS.md, issue 29).
pub(crate) fn outgoing(span: &tracing::Span, ambient: &Context) -> Context {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        ambient.clone()
    }
}

/// A context with `cx`'s baggage and no span: the parent of a span that
/// starts a new trace but continues the flow (a message's consumer).
pub(crate) fn baggage_only(cx: &Context) -> Context {
    Context::new().with_baggage(copied(cx.baggage()))
}

/// A copy of `baggage`'s entries, for a context built from another.
fn copied(baggage: &Baggage) -> Vec<KeyValueMetadata> {
    baggage
        .iter()
        .map(|(k, (v, meta))| KeyValueMetadata::new(k.clone(), v.clone(), meta.clone()))
        .collect()
}

/// One instance of a business flow, as carried in W3C baggage: which flow,
/// which order, which payment method and channel.
///
/// A service that *starts* a flow (the gateway) sets it with [`Flow::scope`];
/// every span, stage and outgoing call inside the scope carries it, and
/// downstream services read it back with [`Flow::current`].
///
/// ```
/// use paytrace::Flow;
/// use paytrace::semconv::{flow, payment};
///
/// # async fn demo() {
/// let checkout = Flow::new(flow::CHECKOUT)
///     .id("ord_7f3a")
///     .payment_method(payment::ALIPAY)
///     .payment_channel(payment::ALIPAY);
/// checkout
///     .scope(async {
///         assert_eq!(Flow::current().flow.as_deref(), Some("checkout"));
///     })
///     .await;
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// `paytrace.flow`, such as `checkout`.
    pub flow: Option<String>,
    /// `paytrace.flow_id`, the business key (order id). Never a metric label.
    pub flow_id: Option<String>,
    /// `payment.method`, such as `alipay`.
    pub payment_method: Option<String>,
    /// `payment.channel`, such as `wxpay`.
    pub payment_channel: Option<String>,
}

impl Flow {
    /// A flow named `flow` with nothing else set.
    pub fn new(flow: impl Into<String>) -> Self {
        Self {
            flow: Some(flow.into()),
            ..Self::default()
        }
    }

    /// Sets the flow id (the order id).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.flow_id = Some(id.into());
        self
    }

    /// Sets the payment method.
    pub fn payment_method(mut self, method: impl Into<String>) -> Self {
        self.payment_method = Some(method.into());
        self
    }

    /// Sets the payment channel.
    pub fn payment_channel(mut self, channel: impl Into<String>) -> Self {
        self.payment_channel = Some(channel.into());
        self
    }

    /// The flow in the current context's baggage (empty fields where absent).
    ///
    /// ```
    /// assert_eq!(paytrace::Flow::current(), paytrace::Flow::default());
    /// ```
    pub fn current() -> Self {
        Self::from_context(&Context::current())
    }

    pub(crate) fn from_context(cx: &Context) -> Self {
        let baggage = cx.baggage();
        let get = |key: &str| baggage.get(key).map(|v| v.as_str().to_owned());
        Self {
            flow: get(attr::FLOW),
            flow_id: get(attr::FLOW_ID),
            payment_method: get(attr::PAYMENT_METHOD),
            payment_channel: get(attr::PAYMENT_CHANNEL),
        }
    }

    /// The flow in `cx`'s baggage, each value [redacted](crate::redact::redact)
    /// for a span attribute (baggage comes from the caller), borrowed from
    /// the baggage where redaction changes nothing.
    pub(crate) fn redacted_from_context(cx: &Context) -> RedactedFlow<'_> {
        // One pass over the baggage (a caller's holds a few entries) costs
        // less than four hashed look-ups.
        let mut flow = RedactedFlow::default();
        for (key, (value, _)) in cx.baggage() {
            let field = match key.as_str() {
                attr::FLOW => &mut flow.flow,
                attr::FLOW_ID => &mut flow.flow_id,
                attr::PAYMENT_METHOD => &mut flow.payment_method,
                attr::PAYMENT_CHANNEL => &mut flow.payment_channel,
                _ => continue,
            };
            *field = Some(crate::redact::redact(value.as_str()));
        }
        flow
    }

    /// `cx` with this flow's fields merged into its baggage (fields left
    /// unset keep the values `cx` already had).
    pub fn merge_into(&self, cx: &Context) -> Context {
        let own = [
            (attr::FLOW, &self.flow),
            (attr::FLOW_ID, &self.flow_id),
            (attr::PAYMENT_METHOD, &self.payment_method),
            (attr::PAYMENT_CHANNEL, &self.payment_channel),
        ];
        let overridden = |key: &str| own.iter().any(|(k, v)| v.is_some() && key == *k);
        let kept = cx
            .baggage()
            .iter()
            .filter(|(k, _)| !overridden(k.as_str()))
            .map(|(k, (v, meta))| KeyValueMetadata::new(k.clone(), v.clone(), meta.clone()));
        let added = own.iter().filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| KeyValueMetadata::new(*k, v.clone(), BaggageMetadata::default()))
        });
        cx.with_baggage(kept.chain(added))
    }

    /// Runs `fut` with this flow in its baggage: every span, stage and
    /// outgoing call inside carries it. The span current now (the request's
    /// server span, when a handler starts the flow) takes its fields too, so
    /// that every span of the flow carries its id.
    pub fn scope<F: Future>(&self, fut: F) -> WithContext<F> {
        let current = tracing::Span::current();
        for (key, value) in [
            (attr::FLOW, &self.flow),
            (attr::FLOW_ID, &self.flow_id),
            (attr::PAYMENT_METHOD, &self.payment_method),
            (attr::PAYMENT_CHANNEL, &self.payment_channel),
        ] {
            if let Some(value) = value {
                // A no-op on spans that do not declare the field.
                current.record(key, crate::redact::redact(value).as_ref());
            }
        }
        fut.with_context(self.merge_into(&Context::current()))
    }
}

/// A caller's flow as a server span records it: each field of its baggage
/// redacted, borrowed from the baggage unless redaction changed it.
#[derive(Default)]
pub(crate) struct RedactedFlow<'a> {
    pub(crate) flow: Option<std::borrow::Cow<'a, str>>,
    pub(crate) flow_id: Option<std::borrow::Cow<'a, str>>,
    pub(crate) payment_method: Option<std::borrow::Cow<'a, str>>,
    pub(crate) payment_channel: Option<std::borrow::Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_context_keeps_its_tracestate() {
        let sc = span_context_of(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("ot=th:e666;rv:0123456789abcd,vendor=x"),
        )
        .expect("a valid traceparent");
        assert_eq!(
            sc.trace_state().get("ot"),
            Some("th:e666;rv:0123456789abcd")
        );
    }

    #[test]
    fn a_traceparent_names_its_span_and_garbage_names_none() {
        let sc = span_context_of(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        )
        .expect("a valid traceparent");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote());
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(span_context_of(bad, None).is_none(), "{bad:?}");
        }
    }
}
