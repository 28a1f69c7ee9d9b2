//! OTLP trace requests, as any OpenTelemetry SDK sends them, into [`Span`]s.
//!
//! Each span is checked on its own; an invalid one is rejected with a reason
//! (for `partial_success.rejected_spans`) and the rest of the request is kept.
//!
//! Two decoders share that check, so they agree: [`decode_protobuf`]
//! reads protobuf bytes directly and is what the receivers use;
//! [`decode`] takes OTLP messages, for OTLP/JSON and files.

use std::sync::Arc;

use prost::Message as _;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use paytrace_semconv::attr;

use crate::config::StageRules;
use crate::span::{Business, Link, Span, SpanId, SpanKind, TraceId};

mod wire;

pub use wire::{MalformedRequest, decode_protobuf};

/// Limits a span is cut to (and counted, see [`Truncation`]): only a
/// structurally invalid span is rejected, an over-long one is kept.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SpanLimits {
    /// Longest span name, in bytes; a longer one keeps its start.
    pub max_name_bytes: usize,
    /// Most attributes read of one span; the rest are ignored.
    pub max_attributes: usize,
    /// Most links kept of one span.
    pub max_links: usize,
    /// Longest value of a paytrace attribute (stage, flow, flow id, method,
    /// channel, `tcc.*`); a longer one keeps its start.
    pub max_business_value_bytes: usize,
    /// Keep each span as sent ([`crate::span::AsSent`]), to forward the
    /// flows worth keeping (`serve --forward-otlp`).
    pub keep_as_sent: bool,
}

impl Default for SpanLimits {
    fn default() -> Self {
        Self {
            max_name_bytes: 1024,
            max_attributes: 1024,
            max_links: 128,
            max_business_value_bytes: 256,
            keep_as_sent: false,
        }
    }
}

/// What was cut from a span that was kept: the `reason` label of
/// `paytrace_aggregator_spans_truncated_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Truncation {
    /// The name was longer than [`SpanLimits::max_name_bytes`].
    NameTooLong,
    /// A paytrace value was longer than [`SpanLimits::max_business_value_bytes`].
    ValueTooLong,
    /// More attributes than [`SpanLimits::max_attributes`].
    TooManyAttributes,
    /// More links than [`SpanLimits::max_links`].
    TooManyLinks,
}

impl Truncation {
    /// Every kind, in the order of [`Decoded::truncated`].
    pub const ALL: [Self; 4] = [
        Self::NameTooLong,
        Self::ValueTooLong,
        Self::TooManyAttributes,
        Self::TooManyLinks,
    ];

    /// The label value.
    ///
    /// ```
    /// use paytrace_analysis::decode::Truncation;
    /// assert_eq!(Truncation::ValueTooLong.as_str(), "value_too_long");
    /// ```
    pub fn as_str(self) -> &'static str {
        use paytrace_semconv::aggregator_truncation as t;
        match self {
            Self::NameTooLong => t::NAME_TOO_LONG,
            Self::ValueTooLong => t::VALUE_TOO_LONG,
            Self::TooManyAttributes => t::TOO_MANY_ATTRIBUTES,
            Self::TooManyLinks => t::TOO_MANY_LINKS,
        }
    }
}

/// The result of decoding one request.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// The valid spans.
    pub spans: Vec<Span>,
    /// How many spans were rejected.
    pub rejected: u64,
    /// Why the first rejected span was rejected, naming the field.
    pub first_error: Option<String>,
    /// Spans kept with something cut, by [`Truncation`] (indexed as
    /// [`Truncation::ALL`]).
    pub truncated: [u64; 4],
    /// What the first cut was, naming the field: a warning for the sender.
    pub first_truncation: Option<String>,
}

impl Decoded {
    fn push(&mut self, span: Result<Span, String>) {
        match span {
            Ok(span) => self.spans.push(span),
            Err(reason) => {
                self.rejected += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(reason);
                }
            }
        }
    }

    fn truncate(&mut self, kind: Truncation, what: impl FnOnce() -> String) {
        let at = Truncation::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.truncated[at] += 1;
        if self.first_truncation.is_none() {
            self.first_truncation = Some(what());
        }
    }

    /// The message for `partial_success.error_message`: the first rejection,
    /// or else the first truncation as a warning; `None` when neither.
    ///
    /// ```
    /// use paytrace_analysis::decode::Decoded;
    /// assert_eq!(Decoded::default().message(), None);
    /// ```
    pub fn message(&self) -> Option<String> {
        let cut: u64 = self.truncated.iter().sum();
        match (&self.first_error, &self.first_truncation) {
            (Some(error), _) => Some(error.clone()),
            (None, Some(cut_first)) => Some(format!(
                "all spans accepted; {cut} cut to the aggregator's limits, first: {cut_first}"
            )),
            (None, None) => None,
        }
    }
}

/// Where a span sits in its request, written as OTLP/JSON names the fields:
/// `resourceSpans[0].scopeSpans[1].spans[3]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SpanPath {
    resource: usize,
    scope: usize,
    span: usize,
}

impl std::fmt::Display for SpanPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resourceSpans[{}].scopeSpans[{}].spans[{}]",
            self.resource, self.scope, self.span
        )
    }
}

/// Why a body is not an OTLP/JSON `ExportTraceServiceRequest`: the field
/// it is about, as the OTLP/JSON names it, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}{}", at(field), hint.unwrap_or(""))]
#[non_exhaustive]
pub struct JsonError {
    /// The field (`resourceSpans[0].scopeSpans[1].spans[3].traceId`); empty
    /// when the document itself is not JSON or not an object.
    pub field: String,
    /// What the JSON parser said.
    pub message: String,
    /// What to do about it, when known (ids that are base64 where the
    /// OTLP/JSON encoding wants hex).
    pub hint: Option<&'static str>,
}

fn at(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// Parses an OTLP/JSON `ExportTraceServiceRequest`; an error names the
/// field it is about, as the OTLP/JSON names it
/// (`resourceSpans[0].scopeSpans[1].spans[3].traceId: ...`), and says so
/// when ids are base64 where the OTLP/JSON encoding wants hex.
///
/// ```
/// use paytrace_analysis::decode::parse_json;
/// let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"S/kvNXezTaajzpKdDg5HNg=="}]}]}]}"#;
/// let err = parse_json(body).unwrap_err();
/// assert_eq!(err.field, "resourceSpans[0].scopeSpans[0].spans[0].traceId");
/// let text = err.to_string();
/// assert!(text.starts_with("resourceSpans[0].scopeSpans[0].spans[0].traceId: "), "{text}");
/// assert!(text.contains("hex"), "{text}");
/// ```
pub fn parse_json(body: &[u8]) -> Result<ExportTraceServiceRequest, JsonError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let hint = (path.ends_with("traceId") || path.ends_with("spanId"))
            .then_some(" (OTLP/JSON ids are hex strings, not base64)");
        JsonError {
            field: if path == "." { String::new() } else { path },
            message,
            hint,
        }
    })
}

/// Shares one allocation among equal strings (service names, stages, flows),
/// up to a bounded number of distinct values.
#[derive(Debug, Default)]
pub struct Interner {
    values: crate::FastSet<Arc<str>>,
}

impl Interner {
    const MAX: usize = 65_536;

    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(v) = self.values.get(s) {
            return v.clone();
        }
        let v: Arc<str> = Arc::from(s);
        if self.values.len() < Self::MAX {
            self.values.insert(v.clone());
        }
        v
    }
}

const UNKNOWN_SERVICE: &str = "unknown_service";

pub use crate::attribute::{Attr, AttrValue};

/// One span as either decoder saw it, borrowed: the one place where spans
/// are validated and turned into [`Span`]s, so both decoders agree.
struct RawSpan<'a, 's> {
    at: SpanPath,
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    /// The W3C `tracestate`, unchecked.
    trace_state: &'a [u8],
    name: &'a [u8],
    start_ns: u64,
    end_ns: u64,
    /// `status.code` (0 unset, 1 ok, 2 error).
    status_code: i32,
    /// `kind` (2 is a server span).
    kind: i32,
    attributes: &'s [Attr<'a>],
    /// (trace id, span id) of each link, unchecked.
    links: &'s [(&'a [u8], &'a [u8])],
    /// One of its events is the fence's `tcc.fence`.
    fence_event: bool,
    /// One of its fence events names an anomaly (`tcc.fence.anomaly`).
    fence_anomaly: bool,
    /// The span's message as sent, with its resource and scope, when kept.
    as_sent: Option<AsSentParts<'a>>,
}

/// A span's message as sent (borrowed from the request when it can be),
/// its resource's and its scope's.
type AsSentParts<'a> = (std::borrow::Cow<'a, [u8]>, Arc<[u8]>, Arc<[u8]>);

fn string_value(value: &Option<AnyValue>) -> Option<&str> {
    match value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attr_of(kv: &KeyValue) -> Attr<'_> {
    Attr {
        key: kv.key.as_bytes(),
        value: match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.as_bytes()),
            Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
            _ => AttrValue::Other,
        },
    }
}

/// Decodes `request` into spans, rejecting invalid spans one by one.
///
/// This is for requests already decoded into OTLP messages (OTLP/JSON, the
/// file exporter's output); protobuf bytes go faster through
/// [`decode_protobuf`], with the same result.
///
/// ```
/// use paytrace_analysis::config::StageRules;
/// use paytrace_analysis::decode::{Interner, SpanLimits, decode};
/// use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
///
/// let decoded = decode(
///     &ExportTraceServiceRequest::default(),
///     &SpanLimits::default(),
///     &StageRules::default(),
///     &mut Interner::default(),
/// );
/// assert!(decoded.spans.is_empty() && decoded.rejected == 0);
/// ```
pub fn decode(
    request: &ExportTraceServiceRequest,
    limits: &SpanLimits,
    rules: &StageRules,
    interner: &mut Interner,
) -> Decoded {
    let mut out = Decoded::default();
    // One allocation for the request's spans, not a doubling per power of two.
    out.spans.reserve(
        request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum(),
    );
    let mut attributes = Vec::new();
    let mut links = Vec::new();
    for (r, resource_spans) in request.resource_spans.iter().enumerate() {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| string_value(&kv.value))
            .unwrap_or(UNKNOWN_SERVICE);
        let service = interner.intern(service);
        let encoded_resource: Arc<[u8]> = match (&resource_spans.resource, limits.keep_as_sent) {
            (Some(r), true) => r.encode_to_vec().into(),
            _ => Arc::from(&[][..]),
        };
        let encoded_scopes: Vec<Arc<[u8]>> = resource_spans
            .scope_spans
            .iter()
            .map(|s| match (&s.scope, limits.keep_as_sent) {
                (Some(scope), true) => scope.encode_to_vec().into(),
                _ => Arc::from(&[][..]),
            })
            .collect();
        let spans = (resource_spans.scope_spans.iter().enumerate()).flat_map(|(sc, s)| {
            s.spans
                .iter()
                .enumerate()
                .map(move |(k, span)| (sc, k, span))
        });
        for (scope, k, span) in spans {
            attributes.clear();
            attributes.extend(span.attributes.iter().map(attr_of));
            links.clear();
            links.extend(
                span.links
                    .iter()
                    .map(|l| (l.trace_id.as_slice(), l.span_id.as_slice())),
            );
            let raw = RawSpan {
                at: SpanPath {
                    resource: r,
                    scope,
                    span: k,
                },
                trace_id: &span.trace_id,
                span_id: &span.span_id,
                parent_span_id: &span.parent_span_id,
                trace_state: span.trace_state.as_bytes(),
                name: span.name.as_bytes(),
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
                status_code: span.status.as_ref().map_or(0, |s| s.code),
                kind: span.kind,
                attributes: &attributes,
                links: &links,
                fence_event: span.events.iter().any(|e| e.name == attr::TCC_FENCE_EVENT),
                fence_anomaly: span.events.iter().any(|e| {
                    e.name == attr::TCC_FENCE_EVENT
                        && e.attributes
                            .iter()
                            .any(|kv| kv.key == attr::TCC_FENCE_ANOMALY)
                }),
                as_sent: limits.keep_as_sent.then(|| {
                    (
                        std::borrow::Cow::Owned(span.encode_to_vec()),
                        encoded_resource.clone(),
                        encoded_scopes[scope].clone(),
                    )
                }),
            };
            let built = build(&raw, &service, limits, rules, interner, &mut out);
            out.push(built);
        }
    }
    out
}

/// `Span.kind`: a server span.
const KIND_SERVER: i32 = 2;
/// `Status.code`: unset.
const STATUS_UNSET: i32 = 0;
/// `Status.code`: error.
const STATUS_ERROR: i32 = 2;

fn build(
    span: &RawSpan<'_, '_>,
    service: &Arc<str>,
    limits: &SpanLimits,
    rules: &StageRules,
    interner: &mut Interner,
    out: &mut Decoded,
) -> Result<Span, String> {
    let at = span.at;
    let trace_id = TraceId::from_bytes(span.trace_id)
        .ok_or_else(|| format!("{at}.traceId: {}", id_problem(span.trace_id.len(), 16)))?;
    let span_id = SpanId::from_bytes(span.span_id)
        .ok_or_else(|| format!("{at}.spanId: {}", id_problem(span.span_id.len(), 8)))?;
    let parent_span_id = match span.parent_span_id.len() {
        0 => None,
        8 => SpanId::from_bytes(span.parent_span_id),
        n => {
            return Err(format!(
                "{at}.parentSpanId: must be empty or 8 bytes (got {n})"
            ));
        }
    };
    if span.start_ns == 0 {
        return Err(format!("{at}.startTimeUnixNano: missing"));
    }
    if span.end_ns < span.start_ns {
        return Err(format!(
            "{at}.endTimeUnixNano: before the start ({} < {})",
            span.end_ns, span.start_ns
        ));
    }
    let Ok(mut name) = std::str::from_utf8(span.name) else {
        return Err(format!("{at}.name: not UTF-8"));
    };
    if name.len() > limits.max_name_bytes {
        let bytes = name.len();
        name = cut(name, limits.max_name_bytes);
        out.truncate(Truncation::NameTooLong, || {
            format!("{at}.name: {bytes} bytes cut to {}", limits.max_name_bytes)
        });
    }
    let mut attributes = span.attributes;
    if attributes.len() > limits.max_attributes {
        let n = attributes.len();
        attributes = &attributes[..limits.max_attributes];
        out.truncate(Truncation::TooManyAttributes, || {
            format!(
                "{at}.attributes: {n} attributes, the first {} read",
                limits.max_attributes
            )
        });
    }
    let mut links = span.links;
    if links.len() > limits.max_links {
        let n = links.len();
        links = &links[..limits.max_links];
        out.truncate(Truncation::TooManyLinks, || {
            format!("{at}.links: {n} links, the first {} kept", limits.max_links)
        });
    }
    let read = read_attributes(attributes, limits, interner)
        .map_err(|key| format!("{at}.attributes[{key}]: not UTF-8"))?;
    if let Some((key, bytes)) = read.first_cut {
        out.truncate(Truncation::ValueTooLong, || {
            format!(
                "{at}.attributes[{key}]: a value of {bytes} bytes cut to {}",
                limits.max_business_value_bytes
            )
        });
    }
    let mut business = read.business;
    if let Some(tcc) = business.tcc.as_deref_mut() {
        tcc.fenced = span.fence_event;
        tcc.fence_anomaly = span.fence_anomaly;
    }
    business.kind = SpanKind::from_otlp(span.kind);
    business.entry = matches!(business.kind, SpanKind::Server | SpanKind::Consumer);
    if business.stage.is_none()
        && let Some((stage, flow)) = rules.stage_for(service, name, attributes)
    {
        business.stage = Some(stage.clone());
        if business.flow.is_none() {
            business.flow = flow.cloned();
        }
    }
    // A server that answered 5xx failed, whether or not its instrumentation
    // set the status (the HTTP conventions say it should).
    let is_error = span.status_code == STATUS_ERROR
        || (span.status_code == STATUS_UNSET
            && span.kind == KIND_SERVER
            && read.http_status.is_some_and(|c| c >= 500));
    let links = links
        .iter()
        .filter_map(|(trace_id, span_id)| {
            Some(Link {
                trace_id: TraceId::from_bytes(trace_id)?,
                span_id: SpanId::from_bytes(span_id)?,
            })
        })
        .collect();
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        // Span names repeat: within a request, they share one allocation.
        name: interner.intern(name),
        service: service.clone(),
        start_ns: span.start_ns,
        end_ns: span.end_ns,
        is_error,
        links,
        // A `tracestate` that is not UTF-8, or an `ot` entry whose `th` is
        // malformed, says nothing: the configured default probability applies.
        // Most spans carry no `tracestate`: nothing to read then.
        sampling_threshold: (!span.trace_state.is_empty())
            .then(|| std::str::from_utf8(span.trace_state).ok())
            .flatten()
            .and_then(|s| paytrace_sampling::OtState::from_tracestate(s).threshold),
        business,
        as_sent: span.as_sent.as_ref().map(|(bytes, resource, scope)| {
            Arc::new(crate::span::AsSent {
                span: bytes.as_ref().into(),
                resource: resource.clone(),
                scope: scope.clone(),
            })
        }),
    })
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn id_problem(len: usize, expected: usize) -> String {
    if len == expected {
        "is all zeros".to_owned()
    } else {
        format!("must be {expected} bytes (got {len})")
    }
}

/// What a span's attributes tell the aggregator.
struct Read {
    business: Business,
    /// `http.response.status_code` (or the older `http.status_code`).
    http_status: Option<i64>,
    /// The first value cut to the limit: its key and its length.
    first_cut: Option<(&'static str, usize)>,
}

/// Reads the paytrace attributes of a span, and the HTTP and RPC ones that
/// name a plain span's operation. Values over the limit keep their start;
/// `Err` names a paytrace attribute whose value is not UTF-8.
fn read_attributes(
    attributes: &[Attr<'_>],
    limits: &SpanLimits,
    interner: &mut Interner,
) -> Result<Read, &'static str> {
    let mut b = Business::default();
    let mut first_cut = None;
    let mut http = HttpNames::default();
    for a in attributes {
        let (slot, key) = match a.key {
            k if k == attr::STAGE.as_bytes() => (&mut b.stage, attr::STAGE),
            k if k == attr::FLOW.as_bytes() => (&mut b.flow, attr::FLOW),
            k if k == attr::FLOW_ID.as_bytes() => (&mut b.flow_id, attr::FLOW_ID),
            k if k == attr::PAYMENT_METHOD.as_bytes() => {
                (&mut b.payment_method, attr::PAYMENT_METHOD)
            }
            k if k == attr::PAYMENT_CHANNEL.as_bytes() => {
                (&mut b.payment_channel, attr::PAYMENT_CHANNEL)
            }
            k if k == attr::OUTCOME.as_bytes() => (&mut b.outcome, attr::OUTCOME),
            k if k.starts_with(b"tcc.") => {
                let tcc = b.tcc.get_or_insert_with(Box::default);
                match k {
                    k if k == attr::TCC_XID.as_bytes() => (&mut tcc.xid, attr::TCC_XID),
                    k if k == attr::TCC_BRANCH_ID.as_bytes() => {
                        (&mut tcc.branch_id, attr::TCC_BRANCH_ID)
                    }
                    k if k == attr::TCC_RESOURCE.as_bytes() => {
                        (&mut tcc.resource, attr::TCC_RESOURCE)
                    }
                    k if k == attr::TCC_PHASE.as_bytes() => (&mut tcc.phase, attr::TCC_PHASE),
                    k if k == attr::TCC_DECISION.as_bytes() => {
                        (&mut tcc.decision, attr::TCC_DECISION)
                    }
                    _ => continue,
                }
            }
            _ => {
                http.read(a);
                continue;
            }
        };
        let is_id = matches!(key, attr::FLOW_ID | attr::TCC_XID | attr::TCC_BRANCH_ID);
        let number;
        let value: &str = match a.value {
            AttrValue::Str(s) => {
                let whole = std::str::from_utf8(s).map_err(|_| key)?;
                if whole.len() > limits.max_business_value_bytes {
                    first_cut.get_or_insert((key, whole.len()));
                }
                cut(whole, limits.max_business_value_bytes)
            }
            // Some SDKs send numeric transaction ids.
            AttrValue::Int(i) if is_id => {
                number = i.to_string();
                &number
            }
            _ => continue,
        };
        // Ids are unique per span: interning them would only grow the table.
        *slot = Some(if is_id {
            Arc::from(value)
        } else {
            interner.intern(value)
        });
    }
    b.operation = http.operation(interner);
    Ok(Read {
        business: b,
        http_status: http.status,
        first_cut,
    })
}

/// The HTTP and RPC attributes that name a plain span's operation, as the
/// OpenTelemetry conventions define them (current names first, the names
/// before HTTP semconv 1.23 where those are missing).
#[derive(Default)]
struct HttpNames<'a> {
    method: Option<&'a [u8]>,
    legacy_method: Option<&'a [u8]>,
    route: Option<&'a [u8]>,
    rpc_method: Option<&'a [u8]>,
    rpc_service: Option<&'a [u8]>,
    status: Option<i64>,
    legacy_status: Option<i64>,
}

impl<'a> HttpNames<'a> {
    fn read(&mut self, a: &Attr<'a>) {
        if !(a.key.starts_with(b"http.") || a.key.starts_with(b"rpc.")) {
            return;
        }
        let text = || a.str_value().filter(|v| !v.is_empty() && v.len() <= 256);
        let number = || match a.value {
            AttrValue::Int(i) => Some(i),
            AttrValue::Str(s) => std::str::from_utf8(s).ok()?.parse().ok(),
            AttrValue::Other => None,
        };
        match a.key {
            k if k == attr::HTTP_REQUEST_METHOD.as_bytes() => self.method = text(),
            k if k == attr::HTTP_METHOD_LEGACY.as_bytes() => self.legacy_method = text(),
            k if k == attr::HTTP_ROUTE.as_bytes() => self.route = text(),
            k if k == attr::RPC_METHOD.as_bytes() => self.rpc_method = text(),
            k if k == attr::RPC_SERVICE.as_bytes() => self.rpc_service = text(),
            k if k == attr::HTTP_RESPONSE_STATUS_CODE.as_bytes() => self.status = number(),
            k if k == attr::HTTP_STATUS_CODE_LEGACY.as_bytes() => self.legacy_status = number(),
            _ => {}
        }
        if self.status.is_none() {
            self.status = self.legacy_status;
        }
    }

    /// `"{method} {route}"` for an HTTP span with a known route, the method
    /// (`"{rpc.service}/{rpc.method}"`) for an RPC span.
    fn operation(&self, interner: &mut Interner) -> Option<Arc<str>> {
        let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
        let name = if let Some(route) = self.route.and_then(text) {
            match self.method.or(self.legacy_method).and_then(text) {
                Some(method) => format!("{method} {route}"),
                None => route,
            }
        } else {
            let method = self.rpc_method.and_then(text)?;
            match self.rpc_service.and_then(text) {
                Some(service) if !method.contains('/') => format!("{service}/{method}"),
                _ => method,
            }
        };
        Some(interner.intern(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }),
            ..Default::default()
        }
    }

    fn good_span() -> opentelemetry_proto::tonic::trace::v1::Span {
        opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "inventory.try".into(),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            attributes: vec![
                kv(attr::STAGE, "inventory.try"),
                kv(attr::PAYMENT_METHOD, "alipay"),
            ],
            status: Some(Status {
                message: String::new(),
                code: StatusCode::Error as i32,
            }),
            ..Default::default()
        }
    }

    fn request(
        spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "inventory")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn valid_spans_keep_their_business_attributes() {
        let d = decode(
            &request(vec![good_span()]),
            &SpanLimits::default(),
            &StageRules::default(),
            &mut Interner::default(),
        );
        assert_eq!(d.rejected, 0);
        let s = &d.spans[0];
        assert_eq!(&*s.service, "inventory");
        assert_eq!(s.business.stage.as_deref(), Some("inventory.try"));
        assert_eq!(s.business.payment_method.as_deref(), Some("alipay"));
        assert!(s.is_error);
        assert_eq!(s.duration_ns(), 1_000);
    }

    type Breaker = Box<dyn Fn(&mut opentelemetry_proto::tonic::trace::v1::Span)>;

    #[test]
    fn invalid_spans_are_rejected_one_by_one_with_a_reason() {
        let at = "resourceSpans[0].scopeSpans[0].spans[1]";
        let broken: Vec<(&str, Breaker)> = vec![
            (
                ".traceId: is all zeros",
                Box::new(|s| s.trace_id = vec![0; 16]),
            ),
            (
                ".traceId: must be 16 bytes (got 3)",
                Box::new(|s| s.trace_id = vec![1; 3]),
            ),
            (
                ".spanId: is all zeros",
                Box::new(|s| s.span_id = vec![0; 8]),
            ),
            (
                ".parentSpanId: must be empty or 8 bytes",
                Box::new(|s| s.parent_span_id = vec![1; 5]),
            ),
            (
                ".endTimeUnixNano: before the start",
                Box::new(|s| s.end_time_unix_nano = 10),
            ),
            (
                ".startTimeUnixNano: missing",
                Box::new(|s| s.start_time_unix_nano = 0),
            ),
        ];
        for (expected, breaker) in broken {
            let mut bad = good_span();
            breaker(&mut bad);
            let d = decode(
                &request(vec![good_span(), bad]),
                &SpanLimits::default(),
                &StageRules::default(),
                &mut Interner::default(),
            );
            assert_eq!((d.spans.len(), d.rejected), (1, 1), "{expected}");
            let reason = d.first_error.expect("a reason");
            assert!(
                reason.starts_with(&format!("{at}{expected}")),
                "{reason:?} should name the field: {at}{expected}"
            );
        }
    }

    #[test]
    fn over_long_and_over_full_spans_are_cut_and_counted_not_rejected() {
        let mut big = good_span();
        big.name = "é".repeat(600); // 1,200 bytes: cut on a character boundary
        big.attributes = vec![kv("k", "v"); 1500];
        big.attributes
            .push(kv(attr::STAGE, "never read: past the limit"));
        big.attributes
            .insert(0, kv(attr::FLOW_ID, &"9".repeat(1000)));
        big.links = (0..200)
            .map(|i| opentelemetry_proto::tonic::trace::v1::span::Link {
                trace_id: vec![3; 16],
                span_id: vec![i as u8 + 1; 8],
                ..Default::default()
            })
            .collect();
        let d = decode(
            &request(vec![good_span(), big]),
            &SpanLimits::default(),
            &StageRules::default(),
            &mut Interner::default(),
        );
        assert_eq!((d.spans.len(), d.rejected), (2, 0));
        let s = &d.spans[1];
        assert_eq!(s.name.len(), 1024);
        assert_eq!(s.business.flow_id.as_deref().map(str::len), Some(256));
        assert_eq!(s.business.stage, None);
        assert_eq!(s.links.len(), 128);
        assert_eq!(d.truncated, [1, 1, 1, 1]);
        let warning = d.message().expect("a warning");
        assert!(
            warning
                .contains("resourceSpans[0].scopeSpans[0].spans[1].name: 1200 bytes cut to 1024"),
            "{warning}"
        );
    }

    #[test]
    fn the_fence_event_marks_a_tcc_span_fenced_in_both_decoders() {
        use opentelemetry_proto::tonic::trace::v1::span::Event;
        use prost::Message;
        let phase = |fence: bool, id: u8| {
            let mut s = good_span();
            s.span_id = vec![id; 8];
            s.attributes = vec![
                kv(attr::TCC_XID, "ord_1"),
                kv(attr::TCC_RESOURCE, "inventory"),
                kv(attr::TCC_PHASE, "cancel"),
            ];
            s.events = vec![Event {
                name: if fence {
                    attr::TCC_FENCE_EVENT
                } else {
                    "exception"
                }
                .to_owned(),
                ..Default::default()
            }];
            s
        };
        let req = request(vec![phase(true, 2), phase(false, 3)]);
        let limits = SpanLimits::default();
        let rules = StageRules::default();
        let fenced = |d: &Decoded| -> Vec<bool> {
            d.spans
                .iter()
                .map(|s| s.business.tcc.as_ref().is_some_and(|t| t.fenced))
                .collect()
        };
        let from_messages = decode(&req, &limits, &rules, &mut Interner::default());
        let from_wire = super::wire::decode_protobuf(
            &req.encode_to_vec(),
            &limits,
            &rules,
            &mut Interner::default(),
        )
        .expect("valid protobuf");
        assert_eq!(fenced(&from_messages), [true, false]);
        assert_eq!(fenced(&from_wire), [true, false]);
    }

    #[test]
    fn plain_spans_are_named_by_route_or_rpc_method_and_5xx_servers_fail() {
        fn int(key: &str, value: i64) -> KeyValue {
            KeyValue {
                key: key.to_owned(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(value)),
                }),
                ..Default::default()
            }
        }
        let plain = |attributes: Vec<KeyValue>, kind: i32| {
            let mut s = good_span();
            s.attributes = attributes;
            s.status = None;
            s.kind = kind;
            s
        };
        let server = 2;
        let spans = vec![
            plain(
                vec![
                    kv("http.request.method", "POST"),
                    kv("http.route", "/pay"),
                    int("http.response.status_code", 502),
                ],
                server,
            ),
            // The names before HTTP semconv 1.23, as the JS SDK sends them.
            plain(
                vec![
                    kv("http.method", "GET"),
                    kv("http.route", "/orders/:id"),
                    int("http.status_code", 200),
                ],
                server,
            ),
            plain(
                vec![
                    kv("rpc.service", "inventory.v1.Inventory"),
                    kv("rpc.method", "Try"),
                ],
                server,
            ),
            // A client span that got a 503 is the server's failure, not its own.
            plain(
                vec![
                    kv("http.request.method", "GET"),
                    int("http.response.status_code", 503),
                ],
                3,
            ),
        ];
        let d = decode(
            &request(spans),
            &SpanLimits::default(),
            &StageRules::default(),
            &mut Interner::default(),
        );
        let ops: Vec<Option<&str>> = d
            .spans
            .iter()
            .map(|s| s.business.operation.as_deref())
            .collect();
        assert_eq!(
            ops,
            [
                Some("POST /pay"),
                Some("GET /orders/:id"),
                Some("inventory.v1.Inventory/Try"),
                None
            ]
        );
        let errors: Vec<bool> = d.spans.iter().map(|s| s.is_error).collect();
        assert_eq!(errors, [true, false, false, false]);
    }

    #[test]
    fn rules_name_the_stage_of_plain_spans_but_not_of_marked_ones() {
        let config = crate::config::Config::from_toml(
            "t",
            "[[rules]]\nservice = \"inventory\"\nspan_name = \"*\"\nstage = \"stock.reserve\"\nflow = \"checkout\"\n",
        )
        .expect("valid");
        let mut plain = good_span();
        plain.attributes.clear();
        let d = decode(
            &request(vec![plain, good_span()]),
            &SpanLimits::default(),
            &config.rules,
            &mut Interner::default(),
        );
        assert_eq!(d.spans[0].business.stage.as_deref(), Some("stock.reserve"));
        assert_eq!(d.spans[0].business.flow.as_deref(), Some("checkout"));
        assert_eq!(d.spans[1].business.stage.as_deref(), Some("inventory.try"));
    }

    #[test]
    fn a_missing_service_name_is_unknown_service() {
        let mut req = request(vec![good_span()]);
        req.resource_spans[0].resource = None;
        let d = decode(
            &req,
            &SpanLimits::default(),
            &StageRules::default(),
            &mut Interner::default(),
        );
        assert_eq!(&*d.spans[0].service, "unknown_service");
    }
}
