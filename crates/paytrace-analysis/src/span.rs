//! The aggregator's own span model: only what the analysis needs, decoded
//! once from OTLP.

use std::fmt;
use std::sync::Arc;

/// A 16-byte trace id, never all zeros.
///
/// ```
/// use paytrace_analysis::TraceId;
/// let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
/// assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(TraceId::from_hex("00000000000000000000000000000000").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id, never all zeros.
///
/// ```
/// use paytrace_analysis::SpanId;
/// assert_eq!(SpanId::from_bytes(&[0, 0, 0, 0, 0, 0, 0, 7]).unwrap().to_string(), "0000000000000007");
/// assert!(SpanId::from_bytes(&[1, 2, 3]).is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

fn hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

impl TraceId {
    /// The id from its 16 bytes; `None` for another length or all zeros.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let id: [u8; 16] = bytes.try_into().ok()?;
        (id != [0; 16]).then_some(Self(id))
    }

    /// The id from 32 hex digits; `None` if malformed or all zeros.
    pub fn from_hex(s: &str) -> Option<Self> {
        unhex::<16>(s).and_then(|b| Self::from_bytes(&b))
    }
}

impl SpanId {
    /// The id from its 8 bytes; `None` for another length or all zeros.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let id: [u8; 8] = bytes.try_into().ok()?;
        (id != [0; 8]).then_some(Self(id))
    }

    /// The id from 16 hex digits; `None` if malformed or all zeros.
    pub fn from_hex(s: &str) -> Option<Self> {
        unhex::<8>(s).and_then(|b| Self::from_bytes(&b))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

/// A link from a span to a span of (usually) another trace: how an async hop
/// (callback, queue consumer) names what triggered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Link {
    /// The linked span's trace.
    pub trace_id: TraceId,
    /// The linked span.
    pub span_id: SpanId,
}

/// The business attributes of a span, as paytrace names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Business {
    /// `paytrace.stage`, or a stage a mapping rule assigned.
    pub stage: Option<Arc<str>>,
    /// `paytrace.flow`.
    pub flow: Option<Arc<str>>,
    /// `paytrace.flow_id`.
    pub flow_id: Option<Arc<str>>,
    /// `payment.method`.
    pub payment_method: Option<Arc<str>>,
    /// `payment.channel`.
    pub payment_channel: Option<Arc<str>>,
    /// `paytrace.outcome`.
    pub outcome: Option<Arc<str>>,
    /// The `tcc.*` attributes, when the span has any.
    pub tcc: Option<Box<Tcc>>,
    /// What a plain span did, from the OpenTelemetry HTTP and RPC
    /// conventions: `"POST /pay"` (`http.request.method` and `http.route`)
    /// or the RPC method. Names the stage of a span without `paytrace.stage`.
    pub operation: Option<Arc<str>>,
    /// Whether the span is where a request entered a service (span kind
    /// SERVER or CONSUMER). Such a span with no stage below it is a stage of
    /// its own: a service instrumented only automatically still shows up.
    pub entry: bool,
    /// The span's kind. A CONSUMER child of a PRODUCER does not block it:
    /// the critical path treats the edge as an async hop.
    pub kind: SpanKind,
}

/// The kind of a span, as OTLP sends it (`Span.kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpanKind {
    /// Not said (0), or a value OTLP does not define.
    #[default]
    Unspecified,
    /// An operation inside a process (1).
    Internal,
    /// The server side of a call (2).
    Server,
    /// The client side of a call (3).
    Client,
    /// Sending a message that something else processes later (4).
    Producer,
    /// Processing a message (5).
    Consumer,
}

impl SpanKind {
    /// The kind of OTLP's `Span.kind` value.
    ///
    /// ```
    /// use paytrace_analysis::span::SpanKind;
    /// assert_eq!(SpanKind::from_otlp(4), SpanKind::Producer);
    /// assert_eq!(SpanKind::from_otlp(9), SpanKind::Unspecified);
    /// ```
    pub fn from_otlp(kind: i32) -> Self {
        match kind {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }
}

/// The `tcc.*` attributes of a span, as sent: the TCC tracker classifies
/// them, so nothing here is validated beyond its length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tcc {
    /// `tcc.xid`: the global transaction.
    pub xid: Option<Arc<str>>,
    /// `tcc.branch_id`.
    pub branch_id: Option<Arc<str>>,
    /// `tcc.resource`.
    pub resource: Option<Arc<str>>,
    /// `tcc.phase`.
    pub phase: Option<Arc<str>>,
    /// `tcc.decision`: the coordinator's decision.
    pub decision: Option<Arc<str>>,
    /// The span carries the fence's `tcc.fence` event: the participant runs
    /// its phases through the TCC fence.
    pub fenced: bool,
    /// That event names an anomaly the fence found (`tcc.fence.anomaly`).
    pub fence_anomaly: bool,
}

/// A span as it was sent, kept for forwarding (`serve --forward-otlp`):
/// its OTLP `Span` message and the `Resource` and `InstrumentationScope`
/// messages it came with, encoded (the latter two shared by the spans of one
/// request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsSent {
    /// The `Span` message.
    pub span: Box<[u8]>,
    /// Its `Resource` message (empty when it had none).
    pub resource: Arc<[u8]>,
    /// Its `InstrumentationScope` message (empty when it had none).
    pub scope: Arc<[u8]>,
}

/// One finished span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its id.
    pub span_id: SpanId,
    /// Its parent, if any (the parent may be in another process, or lost).
    pub parent_span_id: Option<SpanId>,
    /// The span name.
    pub name: Arc<str>,
    /// `service.name` of the resource that sent it.
    pub service: Arc<str>,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End, in nanoseconds since the Unix epoch; never before `start_ns`.
    pub end_ns: u64,
    /// Whether its status is an error.
    pub is_error: bool,
    /// Links to other spans.
    pub links: Vec<Link>,
    /// The threshold it was sampled with (`th` of the `ot` entry of its
    /// `tracestate`); `None` when it says none.
    pub sampling_threshold: Option<paytrace_sampling::Threshold>,
    /// The paytrace attributes.
    pub business: Business,
    /// The span as sent, when the aggregator forwards kept flows; snapshots
    /// do not keep it.
    pub as_sent: Option<Arc<AsSent>>,
}

/// Nanoseconds as seconds: what the metrics, the API and the page show.
pub fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Span {
    /// `end_ns - start_ns`.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

/// The spans in format version 1 ([`crate::format`]).
mod format_v1 {
    use super::*;
    use crate::format::v1;

    impl From<&Span> for v1::Span {
        fn from(s: &Span) -> Self {
            Self {
                trace_id: s.trace_id.0,
                span_id: s.span_id.0,
                parent_span_id: s.parent_span_id.map(|p| p.0),
                name: s.name.clone(),
                service: s.service.clone(),
                start_ns: s.start_ns,
                end_ns: s.end_ns,
                is_error: s.is_error,
                links: s
                    .links
                    .iter()
                    .map(|l| v1::Link {
                        trace_id: l.trace_id.0,
                        span_id: l.span_id.0,
                    })
                    .collect(),
                sampling_threshold: s.sampling_threshold,
                business: v1::Business::from(&s.business),
            }
        }
    }

    impl From<&Business> for v1::Business {
        fn from(b: &Business) -> Self {
            Self {
                stage: b.stage.clone(),
                flow: b.flow.clone(),
                flow_id: b.flow_id.clone(),
                payment_method: b.payment_method.clone(),
                payment_channel: b.payment_channel.clone(),
                outcome: b.outcome.clone(),
                tcc: b.tcc.as_deref().map(|t| v1::TccAttributes {
                    xid: t.xid.clone(),
                    branch_id: t.branch_id.clone(),
                    resource: t.resource.clone(),
                    phase: t.phase.clone(),
                    decision: t.decision.clone(),
                    fenced: t.fenced,
                    fence_anomaly: t.fence_anomaly,
                }),
                operation: b.operation.clone(),
                entry: b.entry,
                kind: match b.kind {
                    SpanKind::Internal => v1::SpanKind::Internal,
                    SpanKind::Server => v1::SpanKind::Server,
                    SpanKind::Client => v1::SpanKind::Client,
                    SpanKind::Producer => v1::SpanKind::Producer,
                    SpanKind::Consumer => v1::SpanKind::Consumer,
                    _ => v1::SpanKind::Unspecified,
                },
            }
        }
    }

    impl From<v1::Span> for Span {
        fn from(s: v1::Span) -> Self {
            Self {
                trace_id: TraceId(s.trace_id),
                span_id: SpanId(s.span_id),
                parent_span_id: s.parent_span_id.map(SpanId),
                name: s.name,
                service: s.service,
                start_ns: s.start_ns,
                end_ns: s.end_ns,
                is_error: s.is_error,
                links: s
                    .links
                    .into_iter()
                    .map(|l| Link {
                        trace_id: TraceId(l.trace_id),
                        span_id: SpanId(l.span_id),
                    })
                    .collect(),
                sampling_threshold: s.sampling_threshold,
                business: s.business.into(),
                as_sent: None,
            }
        }
    }

    impl From<v1::Business> for Business {
        fn from(b: v1::Business) -> Self {
            Self {
                stage: b.stage,
                flow: b.flow,
                flow_id: b.flow_id,
                payment_method: b.payment_method,
                payment_channel: b.payment_channel,
                outcome: b.outcome,
                tcc: b.tcc.map(|t| {
                    Box::new(Tcc {
                        xid: t.xid,
                        branch_id: t.branch_id,
                        resource: t.resource,
                        phase: t.phase,
                        decision: t.decision,
                        fenced: t.fenced,
                        fence_anomaly: t.fence_anomaly,
                    })
                }),
                operation: b.operation,
                entry: b.entry,
                kind: match b.kind {
                    v1::SpanKind::Unspecified => SpanKind::Unspecified,
                    v1::SpanKind::Internal => SpanKind::Internal,
                    v1::SpanKind::Server => SpanKind::Server,
                    v1::SpanKind::Client => SpanKind::Client,
                    v1::SpanKind::Producer => SpanKind::Producer,
                    v1::SpanKind::Consumer => SpanKind::Consumer,
                },
            }
        }
    }

    /// The spans of one trace, in version 1.
    pub(crate) fn to_v1(spans: &[Span]) -> Vec<v1::Span> {
        spans.iter().map(v1::Span::from).collect()
    }

    /// Version-1 spans back as the analysis's.
    pub(crate) fn from_v1(spans: Vec<v1::Span>) -> Vec<Span> {
        spans.into_iter().map(Span::from).collect()
    }
}

pub(crate) use format_v1::{from_v1, to_v1};
